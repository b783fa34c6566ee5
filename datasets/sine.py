"""Sine-wave regression tasks, as in the MAML paper (Finn et al. 2017, section 5.1).

Each task is y = A sin(x - phase) with A ~ U[0.1, 5.0], phase ~ U[0, pi] and
inputs x ~ U[-5, 5]; the loss is mean squared error. The task is a pure
function of (seed, index), like every other source.

    pool = SinePool()
    batch = pool.sample_batch(ways=1, shots=10, query=10, seed=0, indices=range(4))
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from .tasks import TaskBatch, check_counts, stack_tasks, task_generator

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)


class SinePool:
    """Infinite family of sine tasks. ``ways`` must be 1; shots/query count points."""

    name = "sine"
    num_classes = 1

    def check(self, ways: int, shots: int, query: int) -> None:
        check_counts(self.name, ways=ways, shots=shots, query=query)
        if ways != 1:
            raise ValueError(f"sine: regression tasks have ways=1, got ways={ways}")
        if shots < 1 or query < 0:
            raise ValueError(f"sine: need shots >= 1 and query >= 0 (got shots={shots}, query={query})")

    def sample_task(self, ways: int, shots: int, query: int, seed: int, index: int) -> TaskBatch:
        self.check(ways, shots, query)
        g = task_generator(seed, index)
        amp = AMPLITUDE[0] + (AMPLITUDE[1] - AMPLITUDE[0]) * torch.rand((), generator=g)
        phase = PHASE[0] + (PHASE[1] - PHASE[0]) * torch.rand((), generator=g)
        x = X_RANGE[0] + (X_RANGE[1] - X_RANGE[0]) * torch.rand(shots + query, 1, generator=g)
        y = amp * torch.sin(x - phase)
        return TaskBatch(x[None, :shots], y[None, :shots], x[None, shots:], y[None, shots:])

    def sample_batch(self, ways: int, shots: int, query: int, seed: int, indices: Iterable[int]) -> TaskBatch:
        return stack_tasks(self.sample_task(ways, shots, query, seed, i) for i in indices)
