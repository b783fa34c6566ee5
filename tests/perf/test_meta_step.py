"""Micro-benchmarks: one meta-step of each algorithm x backend at the Omniglot 5-way paper settings.

Skipped by ``make test`` (pytest's addopts carry ``--benchmark-skip``); run with

    make perf      # = pytest tests/perf --benchmark-only --benchmark-json=results/perf/cpu-benchmarks.json
                   #   then python -m benchmarks.perf.limits (floors, ratios, memory)
    .venv/bin/python -m pytest -q tests/perf/test_meta_step.py --benchmark-only --perf-device cuda

Settings are ``benchmarks.perf.limits.SETTINGS`` (meta-batch 5; Reptile: 10 shots,
5 inner Adam steps on minibatches of 10; FOMAML/MAML: 5 shots + 15 queries per
class, 5 inner steps at alpha 0.1, and the MAML paper's 1 step at alpha 0.4).
Tasks come from the small Omniglot split when it loads, else from random
tensors of the same shape; ``extra_info["tasks"]`` in the JSON says which.
Reptile runs with ``persist_inner_state=False`` on both backends (the batched
one refuses persistent Adam), so both time the same maths. One thread, as the
shared CI cores are noisy (PITFALLS section 4): compare backends within one run.
"""
from __future__ import annotations

import pytest
import torch

from algorithms import MetaConfig, build_learner
from algorithms.models import OmniglotCNN
from benchmarks.perf.limits import SETTINGS, T, WAYS, task_source
from benchmarks.records.provenance import device_name


@pytest.fixture(scope="module")
def tasks():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sample, source = task_source()
    yield sample, source
    torch.set_num_threads(threads)


@pytest.mark.parametrize("backend", ["reference", "batched"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_meta_step(benchmark, tasks, perf_device, setting, backend):
    if perf_device == "cpu":
        torch.set_num_threads(1)  # PITFALLS section 4: one thread gives the stable figures on shared cores
    sample, source = tasks
    shots, query, cfg = SETTINGS[setting]
    torch.manual_seed(0)
    model = OmniglotCNN(WAYS).to(perf_device)
    learner = build_learner(MetaConfig(**cfg, backend=backend), model, 10**6, seed=0)
    batch = sample(shots, query, 0).to(perf_device)
    assert batch.support_x.shape == (T, WAYS * shots, 1, 28, 28)
    benchmark.group = setting
    benchmark.extra_info.update(tasks=source, backend=backend, device=device_name(perf_device), config=cfg)

    def step():
        metrics = learner.meta_step(batch)
        if perf_device == "cuda":  # kernels are asynchronous: wait for them inside the timed call
            torch.cuda.synchronize()
        return metrics

    metrics = benchmark.pedantic(step, rounds=5, warmup_rounds=1, iterations=1)
    assert torch.isfinite(torch.tensor(metrics["loss"]))
