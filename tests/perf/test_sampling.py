"""Micro-benchmark of the task sampler: one meta-batch of 5 tasks from the small Omniglot train split.

Skipped by `make test` (--benchmark-skip); `make perf` runs it:

    OMNIGLOT_ROOT=../shared/data/omniglot .venv/bin/python -m pytest -q tests/perf/test_sampling.py --benchmark-only

Shapes: MAML's 5-way 1-shot with 15 queries per class, and Reptile's training
shape for Omniglot 5-way (10 shots per class, no query set).
"""
from __future__ import annotations

import pytest
import torch

SHAPES = {"maml-5w1s-q15": (5, 1, 15), "reptile-train-5w10s-q0": (5, 10, 0)}


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_sample_meta_batch(benchmark, small_omniglot, shape):
    torch.set_num_threads(1)  # two shared cores: single-thread figures are the stable ones
    ways, shots, query = SHAPES[shape]
    pool = small_omniglot.train
    calls = iter(range(10**9))

    def sample():
        # Fresh task indices per call, as a training loop draws them.
        i = next(calls)
        return pool.sample_batch(ways, shots, query, seed=0, indices=range(5 * i, 5 * i + 5))

    batch = benchmark(sample)
    assert tuple(batch.support_x.shape) == (5, ways * shots, 1, 28, 28)
    assert tuple(batch.query_x.shape) == (5, ways * query, 1, 28, 28)
