"""Data-parallel meta-batches over torch.distributed ranks (torchrun; gloo on CPU, NCCL on GPU).

    python -m benchmarks.cli run --suite default --cells omniglot-small-5w5s-maml --ranks 2     # starts torchrun
    torchrun --standalone --nproc-per-node 2 -m benchmarks.running.runner --cells-json '[...]' --distributed

The tasks of a meta-batch are independent, so a training spans N ranks by splitting them: rank r takes a
contiguous share of the meta-batch's tasks (the same task stream as one process), forms the mean
meta-gradient of its tasks (MAML-family) or mean task displacement (Reptile), weighted by its share, and
one ``all_reduce`` (SUM) of the flattened parameters' size gives every rank the whole meta-batch's mean.
Every rank then takes the same outer step, so the meta-parameters stay identical on every rank (float64:
equal to one process to rounding, ``tests/test_distributed.py``). Per-task randomness stays the
single-process stream: Reptile's minibatch draws of the other ranks' tasks are drawn and discarded.

What cannot be split: Reptile with ``persist_inner_state`` carries one inner Adam state from task to task,
a sequential chain across the meta-batch; it is refused (set ``persist_inner_state = false``).

Communication per meta-step: one all-reduce of every parameter (the Omniglot net: 112,005 floats, 448 kB)
plus one of the metrics, and one one-byte flag for a shared stop decision (budget) so all ranks leave the
loop together. Rank 0 alone checkpoints, evaluates and writes rows; a rank that dies makes torchrun stop
the others (no row is written).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from algorithms.base import MetaLearner
from datasets.tasks import TaskBatch

RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedError(RuntimeError):
    """A data-parallel run cannot start or go on; the message says why and what to do."""


@dataclass
class Ranks:
    rank: int
    world: int
    local_rank: int

    @property
    def leader(self) -> bool:
        return self.rank == 0


def init(device: str) -> Ranks:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA); the device of this rank."""
    missing = [k for k in RENDEZVOUS if k not in os.environ]
    if missing:
        raise DistributedError(
            f"--distributed needs the rendezvous environment torchrun sets ({', '.join(missing)} unset): start it with "
            "`torchrun --standalone --nproc-per-node N -m benchmarks.running.runner ... --distributed`, or give the "
            "CLI `--ranks N`")
    ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    if device.startswith("cuda"):
        torch.cuda.set_device(ranks.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return ranks


def check_splittable(cell, world: int) -> None:
    """Refuse what cannot be split over ``world`` ranks, naming the setting."""
    if world > cell.meta_batch:
        raise DistributedError(f"cell {cell.cell}: {world} ranks for a meta-batch of {cell.meta_batch} tasks: every "
                               f"rank needs at least one task; use at most {cell.meta_batch} ranks")
    c = cell.learner
    if c.algorithm == "reptile" and c.persist_inner_state and c.inner_optimizer == "adam":
        raise DistributedError(
            f"cell {cell.cell}: Reptile with persist_inner_state carries one inner Adam state from task to task, a "
            "chain across the whole meta-batch, which splitting the tasks over ranks would break; set "
            "persist_inner_state = false (as the batched backend does) to train it data-parallel")


def share(tasks: int, ranks: Ranks) -> slice:
    """The contiguous block of a meta-batch's tasks that this rank works on (sizes differ by at most one)."""
    base, extra = divmod(tasks, ranks.world)
    start = ranks.rank * base + min(ranks.rank, extra)
    return slice(start, start + base + (ranks.rank < extra))


class DataParallel:
    """A learner whose meta-steps are split over the ranks; otherwise the learner itself (same state dict)."""

    def __init__(self, learner: MetaLearner, ranks: Ranks):
        self.learner, self.ranks = learner, ranks
        self.params = list(learner.model.parameters())

    def __getattr__(self, name):
        return getattr(self.learner, name)

    def meta_step(self, batch: TaskBatch) -> dict[str, float]:
        T = len(batch)
        mine = share(T, self.ranks)
        self.learner.skip_tasks(batch, mine.start)
        grads, metrics = self.learner.meta_gradient(TaskBatch(*(t[mine] for t in batch.tensors())))
        self.learner.skip_tasks(batch, T - mine.stop)
        weight = (mine.stop - mine.start) / T
        flat = torch.cat([g.reshape(-1) for g in grads]) * weight
        names = sorted(metrics)
        values = torch.tensor([metrics[k] * weight for k in names], dtype=torch.float64, device=flat.device)
        dist.all_reduce(flat)
        dist.all_reduce(values)
        mean = [v.view_as(p) for v, p in zip(flat.split([p.numel() for p in self.params]), self.params)]
        out = self.learner.apply_meta_gradient(mean)
        return {**dict(zip(names, values.tolist())), **out}


def agree_to_stop(stop: bool, device: str) -> bool:
    """True when any rank wants to stop (a spent budget): every rank leaves the training loop together."""
    flag = torch.tensor([1 if stop else 0], dtype=torch.int32, device=torch.device(device))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
