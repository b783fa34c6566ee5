"""Options of the micro-benchmarks: ``--perf-device cpu|cuda`` picks where meta-steps are timed.

    .venv/bin/python -m pytest -q tests/perf --benchmark-only --perf-device cuda

(``benchmarks/gpu/results.sh`` passes it on GPU machines.) The sampler benchmark
is CPU-side by nature and ignores it.
"""
from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--perf-device", default="cpu", choices=("cpu", "cuda"),
                     help="device on which tests/perf times the meta-steps (default cpu)")


@pytest.fixture(scope="session")
def perf_device(request) -> str:
    device = request.config.getoption("--perf-device")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.fail("--perf-device cuda: no CUDA device is visible to torch")
    return device
