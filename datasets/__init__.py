"""Few-shot data sources and the registry that names them.

    from datasets import load_pool
    pool = load_pool("omniglot", "small", "train")            # root from $OMNIGLOT_ROOT or ./data/omniglot
    batch = pool.sample_batch(ways=5, shots=1, query=15, seed=0, indices=range(5))

Valid (dataset, split, part) names are in ``VALID``. Roots: the ``root``
argument, else $OMNIGLOT_ROOT / $MINIIMAGENET_ROOT, else ./data/<dataset>.
The sine family has no fixed data: its train and test tasks are the same
distribution, kept apart by the sampling seed the caller picks.
"""
from __future__ import annotations

import os

from .archive import DataError, MissingDataError
from .sine import SinePool
from .tasks import ClassPool, TaskBatch, stack_tasks, task_generator

VALID: dict[str, dict[str, tuple[str, ...]]] = {
    "sine": {"maml": ("train", "test")},
    "omniglot": {"paper": ("train", "test"), "small": ("train", "test")},
    "miniimagenet": {"ravi": ("train", "val", "test")},
}


def check_names(dataset: str, split: str, part: str) -> None:
    """Raise a ValueError listing the valid names if (dataset, split, part) is not one of VALID."""
    if dataset not in VALID:
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(VALID)}")
    splits = VALID[dataset]
    if split not in splits:
        raise ValueError(f"unknown {dataset} split {split!r}; valid splits: {', '.join(splits)}")
    if part not in splits[split]:
        note = " (it has no val part)" if part == "val" else ""
        raise ValueError(f"unknown part {part!r} of {dataset}/{split}{note}; valid parts: {', '.join(splits[split])}")


def load_pool(
    dataset: str,
    split: str,
    part: str,
    root: str | os.PathLike | None = None,
    *,
    download: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ClassPool | SinePool:
    """The task pool of one part of one split.

    ``download`` (Omniglot only): None downloads missing zips unless
    $REPTILE_BENCH_OFFLINE is set; False never downloads. ``cache_dir``
    overrides where the preprocessed arrays are cached.
    """
    check_names(dataset, split, part)
    if dataset == "sine":
        return SinePool()
    if dataset == "omniglot":
        from .omniglot import load_omniglot

        return load_omniglot(split, part, root, download=download, cache_dir=cache_dir)
    from .miniimagenet import load_miniimagenet

    return load_miniimagenet(split, part, root, cache_dir=cache_dir)


def pool_counts(dataset: str, split: str, part: str, root: str | os.PathLike | None = None) -> tuple[int, int] | None:
    """(classes, examples per class) of one part, or None for sine (unlimited); cheap, checks the data.

    Omniglot loads its (cached) arrays, verifying the zips' checksums when the cache is built;
    Mini-ImageNet reads only its csv, so the counts are known before the images are decoded.
    Raises MissingDataError / DataError with the message a user needs.
    """
    check_names(dataset, split, part)
    if dataset == "sine":
        return None
    if dataset == "miniimagenet":
        from .miniimagenet import part_counts

        return part_counts(split, part, root)
    pool = load_pool(dataset, split, part, root)
    return pool.num_classes, pool.examples_per_class


__all__ = [
    "VALID", "ClassPool", "DataError", "MissingDataError", "SinePool", "TaskBatch",
    "check_names", "load_pool", "pool_counts", "stack_tasks", "task_generator",
]
