"""Tiny float64 networks and tasks shared by the algorithm tests (small enough for finite differences)."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from datasets.tasks import TaskBatch


def tiny_bn_net(ways: int = 3, seed: int = 0) -> nn.Module:
    """conv(1->2) + batch norm (batch statistics) + ReLU + linear: batch norm couples the examples of a batch."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1),
        nn.BatchNorm2d(2, track_running_stats=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, ways),
    )
    return net.double()


def tiny_classification_batch(tasks: int = 2, ways: int = 3, shots: int = 2, query: int = 2, seed: int = 0) -> TaskBatch:
    """Random 5x5 images with labels 0..ways-1, grouped by class as the samplers do."""
    g = torch.Generator().manual_seed(seed)
    def part(per: int):
        x = torch.randn(tasks, ways * per, 1, 5, 5, generator=g, dtype=torch.float64)
        y = torch.arange(ways).repeat_interleave(per).expand(tasks, -1).contiguous()
        return x, y
    sx, sy = part(shots)
    qx, qy = part(query)
    return TaskBatch(sx, sy, qx, qy)


def linear_regression_batch(tasks: int = 2, n: int = 6, dim: int = 3, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    def part():
        x = torch.randn(tasks, n, dim, generator=g, dtype=torch.float64)
        y = torch.randn(tasks, n, 1, generator=g, dtype=torch.float64)
        return x, y
    return TaskBatch(*part(), *part())


def resumed_from_checkpoint(learner, fresh):
    """``fresh`` after loading ``learner.state_dict()`` through torch.save/torch.load (a real serialisation)."""
    buf = io.BytesIO()
    torch.save(learner.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    return fresh


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.fixture(autouse=True)
def one_thread():
    """Import into a test module to run its tests on one thread: these graphs are tiny, and extra
    threads only fight over the shared CI cores (measured: the finite-difference test took 26 s
    with the default 2 threads under load, 0.8 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
