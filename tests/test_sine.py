"""Tests of the sine-regression family (datasets/sine.py) and of the registry's name checks.

    .venv/bin/python -m pytest -q tests/test_sine.py
"""
from __future__ import annotations

import math

import pytest
import torch

from datasets import SinePool, load_pool


def fit_amplitude_phase(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Least squares of y = a sin x + b cos x; A sin(x - p) has a = A cos p, b = -A sin p."""
    design = torch.cat([torch.sin(x), torch.cos(x)], dim=1).double()
    a, b = torch.linalg.lstsq(design, y.double()).solution.flatten().tolist()
    return math.hypot(a, b), math.atan2(-b, a)


def test_registry_gives_the_sine_family_and_rejects_val():
    assert isinstance(load_pool("sine", "maml", "train"), SinePool)
    with pytest.raises(ValueError, match="no val part.*valid parts: train, test"):
        load_pool("sine", "maml", "val")
    with pytest.raises(ValueError, match="valid splits: maml"):
        load_pool("sine", "paper", "train")


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid datasets: sine, omniglot, miniimagenet"):
        load_pool("mnist", "x", "train")


def test_tasks_follow_the_maml_distribution_and_are_deterministic():
    pool = SinePool()
    batch = pool.sample_batch(ways=1, shots=10, query=40, seed=0, indices=range(50))
    again = pool.sample_batch(ways=1, shots=10, query=40, seed=0, indices=range(50))
    assert all(torch.equal(a, b) for a, b in zip(batch.tensors(), again.tensors()))
    assert tuple(batch.support_x.shape) == (50, 10, 1) and tuple(batch.query_y.shape) == (50, 40, 1)
    assert not batch.is_classification
    assert batch.support_x.abs().max() <= 5.0
    amps, phases = [], []
    for t in range(50):
        x = torch.cat([batch.support_x[t], batch.query_x[t]])
        y = torch.cat([batch.support_y[t], batch.query_y[t]])
        amp, phase = fit_amplitude_phase(x, y)
        assert torch.allclose(y, amp * torch.sin(x - phase), atol=1e-4)  # noiseless sine, support and query alike
        amps.append(amp)
        phases.append(phase)
    assert 0.1 <= min(amps) and max(amps) <= 5.0 and max(amps) - min(amps) > 2.0
    assert 0.0 <= min(phases) + 1e-6 and max(phases) <= math.pi + 1e-6
    assert len({round(a, 6) for a in amps}) == 50  # every index is a different task


def test_sine_rejects_classification_settings():
    with pytest.raises(ValueError, match="ways=1"):
        SinePool().sample_task(ways=5, shots=10, query=10, seed=0, index=0)
