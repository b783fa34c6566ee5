"""Few-shot tasks and the one task sampler shared by every dataset.

A task is a pure function of (pool, ways, shots, query, seed, index): the
evaluation tasks of a setting are therefore identical for every algorithm and
every run (paired comparison). Sampling never touches files: it indexes tensors
that the loaders preloaded.

    pool = ClassPool(images)            # images: [classes, examples, C, H, W]
    batch = pool.sample_batch(ways=5, shots=1, query=15, seed=0, indices=range(5))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor


@dataclass(frozen=True)
class TaskBatch:
    """T tasks stacked on a leading dimension.

    Classification: ``support_x`` is [T, ways*shots, C, H, W], ``support_y`` is
    [T, ways*shots] int64 with labels 0..ways-1 freshly permuted per task, and
    the query tensors likewise with ``ways*query`` rows (grouped by class).
    Regression (sine): x and y are [T, n, 1] float tensors.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def task(self, i: int) -> "TaskBatch":
        """Task ``i`` as a batch of one (keeps the leading dimension)."""
        return TaskBatch(*(t[i : i + 1] for t in self.tensors()))

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.support_x, self.support_y, self.query_x, self.query_y

    def to(self, device, dtype: torch.dtype | None = None) -> "TaskBatch":
        """Move to ``device``; ``dtype`` (if given) applies to the float inputs/targets only."""

        def move(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return TaskBatch(*(move(t) for t in self.tensors()))

    @property
    def is_classification(self) -> bool:
        return not self.support_y.is_floating_point()


SEED_LIMIT = 2**8
"""Seeds are integers in [0, SEED_LIMIT)."""
INDEX_BITS = 24
INDEX_LIMIT = 2**INDEX_BITS
"""Task indices are integers in [0, INDEX_LIMIT): 16.7M tasks, 8x the most a paper setting draws (MAML's 60,000 x 32)."""


def stream_key(seed: int, index: int) -> int:
    """``seed * 2**24 + index``: a 32-bit integer, distinct for distinct (seed, index) pairs.

    torch's CPU generator keeps only the low 32 bits of its seed, so there are
    2**32 streams in all; packing seed and index into separate bits of them
    means no two pairs share a stream, however many tasks a run draws (a
    multiplier such as ``seed * 1_000_003 + index`` made seed s's task
    1,000,003 seed s + 1's task 0). Seed 0 gives the index itself.
    """
    seed, index = int(seed), int(index)
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed {seed} is out of range: seeds are integers in [0, {SEED_LIMIT})")
    if not 0 <= index < INDEX_LIMIT:
        raise ValueError(f"task index {index} is out of range: task indices are integers in [0, 2**{INDEX_BITS})")
    return seed * INDEX_LIMIT + index


def task_generator(seed: int, index: int) -> torch.Generator:
    """A generator whose stream depends only on (seed, index), and differs for every other pair."""
    return torch.Generator().manual_seed(stream_key(seed, index))


def stack_tasks(tasks: Iterable[TaskBatch]) -> TaskBatch:
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no tasks to stack: sample_batch needs at least one task index (got an empty indices)")
    return TaskBatch(*(torch.cat(parts) for parts in zip(*(t.tensors() for t in tasks))))


def check_counts(name: str, **counts) -> None:
    """Raise a ValueError naming the argument when a count (ways, shots, query) is not an integer."""
    for key, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: {key} must be an integer, got {value!r}")


class ClassPool:
    """Preloaded examples of one split, [classes, examples, C, H, W]: float in [0, 1], or uint8 in 0..255.

    uint8 pools (Mini-ImageNet: 60,000 RGB images would take 5 GB as float32)
    are converted to float32 in [0, 1] when a task is drawn, so tasks are
    always float whatever the storage.

    ``rotations`` > 1 makes each stored class count as that many classes, the
    k-th being the images rotated by k*90 degrees (the Reptile/MAML Omniglot
    augmentation). Rotation is applied when a task is drawn, so the pool holds
    each image once.
    """

    def __init__(self, images: Tensor, rotations: int = 1, name: str = "pool"):
        if images.dim() != 5:
            raise ValueError(f"{name}: expected images of shape [classes, examples, C, H, W], got {tuple(images.shape)}")
        if not (images.is_floating_point() or images.dtype == torch.uint8):
            raise ValueError(f"{name}: images must be float in [0, 1] or uint8 in 0..255, got dtype {images.dtype}")
        if rotations not in (1, 4):
            raise ValueError(f"{name}: rotations must be 1 or 4, got {rotations}")
        self.images = images
        self.rotations = rotations
        self.name = name

    @property
    def num_classes(self) -> int:
        return self.images.shape[0] * self.rotations

    @property
    def examples_per_class(self) -> int:
        return self.images.shape[1]

    def check(self, ways: int, shots: int, query: int) -> None:
        """Raise a ValueError naming the problem if the setting does not fit this pool."""
        check_counts(self.name, ways=ways, shots=shots, query=query)
        if ways < 1 or shots < 1 or query < 0:
            raise ValueError(f"{self.name}: need ways >= 1, shots >= 1, query >= 0 (got ways={ways}, shots={shots}, query={query})")
        if ways > self.num_classes:
            raise ValueError(
                f"{self.name}: ways={ways} is larger than the {self.num_classes} classes in this split; "
                f"use ways <= {self.num_classes} or a larger split"
            )
        if shots + query > self.examples_per_class:
            raise ValueError(
                f"{self.name}: shots + query = {shots} + {query} = {shots + query} is larger than the "
                f"{self.examples_per_class} examples per class; lower shots or query"
            )

    def draw(self, ways: int, per: int, seed: int, index: int) -> tuple[Tensor, Tensor]:
        """The (classes [ways], examples [ways, per]) task ``index`` of ``seed`` takes: a class is a stored class and
        a rotation (``class // rotations``, ``class % rotations``), labels are the positions in ``classes``."""
        g = task_generator(seed, index)
        classes = torch.randperm(self.num_classes, generator=g)[:ways]
        picks = torch.stack([torch.randperm(self.examples_per_class, generator=g)[:per] for _ in range(ways)])
        return classes, picks

    def rotated_images(self) -> Tensor:
        """Every class's images as a task shows them, [num_classes, examples, C, H, W] (rotations applied)."""
        x = self.images.float().div(255) if self.images.dtype == torch.uint8 else self.images
        return torch.stack([torch.rot90(x[c // self.rotations], c % self.rotations, dims=(-2, -1))
                            for c in range(self.num_classes)])

    def sample_task(self, ways: int, shots: int, query: int, seed: int, index: int) -> TaskBatch:
        """One N-way K-shot task with Q query examples per class (a batch of one)."""
        self.check(ways, shots, query)
        per = shots + query
        classes, picks = self.draw(ways, per, seed, index)
        base, rot = classes // self.rotations, classes % self.rotations
        x = self.images[base[:, None], picks]  # [ways, per, C, H, W]
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if self.rotations > 1:
            x = torch.stack([torch.rot90(x[i], int(rot[i]), dims=(-2, -1)) for i in range(ways)])
        # Labels are the positions in `classes`, a fresh random order per task.
        y = torch.arange(ways)[:, None].expand(ways, per)
        sx, qx = x[:, :shots].reshape(1, ways * shots, *x.shape[2:]), x[:, shots:].reshape(1, ways * query, *x.shape[2:])
        sy, qy = y[:, :shots].reshape(1, -1), y[:, shots:].reshape(1, -1)
        return TaskBatch(sx.contiguous(), sy.contiguous(), qx.contiguous(), qy.contiguous())

    def sample_batch(self, ways: int, shots: int, query: int, seed: int, indices: Iterable[int]) -> TaskBatch:
        return stack_tasks(self.sample_task(ways, shots, query, seed, i) for i in indices)
