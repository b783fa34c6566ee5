"""Shared pytest fixtures: the Omniglot test data and a hermetic environment.

Every test session runs offline (REPTILE_BENCH_OFFLINE=1: a missing file
raises instead of being downloaded) and caches preprocessed data in a
temporary folder (REPTILE_BENCH_CACHE), so tests never write to the user's
home and always exercise the cold build once.

    OMNIGLOT_ROOT=/path/to/omniglot-zips .venv/bin/python -m pytest -q     (CI: .ci/run sets it)

Tests that need Omniglot are skipped when the zips are not found, except under CI
(``CI`` set), where a missing data folder is an error: CI must exercise them.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OMNIGLOT_ROOT = REPO / "data" / "omniglot"  # the loaders' own default
SMALL_ZIPS = ("images_background_small1.zip", "images_background_small2.zip")

# Tests must never touch the network, whatever the caller's environment says.
os.environ["REPTILE_BENCH_OFFLINE"] = "1"
# The processes tests start keep this one's malloc (none is preloaded for them), so a CPU device has one name
# in every process of a test; tests/test_malloc.py preloads one on purpose.
os.environ["REPTILE_BENCH_MALLOC"] = "glibc"


@pytest.fixture
def restore_threads():
    """For a test of a command that sets torch's thread count (the perf commands pin 1): put it back after."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def hermetic_cache(tmp_path_factory) -> Path:
    """Point REPTILE_BENCH_CACHE at a session-wide temporary folder."""
    cache = tmp_path_factory.mktemp("reptile-bench-cache")
    old = os.environ.get("REPTILE_BENCH_CACHE")
    os.environ["REPTILE_BENCH_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("REPTILE_BENCH_CACHE", None)
    else:
        os.environ["REPTILE_BENCH_CACHE"] = old


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    """Folder with the two official "background small" zips ($OMNIGLOT_ROOT, default ./data/omniglot)."""
    root = Path(os.environ.get("OMNIGLOT_ROOT") or DEFAULT_OMNIGLOT_ROOT).resolve()
    missing = [n for n in SMALL_ZIPS if not (root / n).is_file()]
    if missing:
        message = f"Omniglot test data missing: {missing} not in {root} (set OMNIGLOT_ROOT)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


@dataclass(frozen=True)
class SmallOmniglot:
    train: object  # datasets.ClassPool, rotations=4
    test: object  # datasets.ClassPool, not rotated
    cache_dir: Path
    cold_seconds: float  # time of the first load of both parts (cache built)


@pytest.fixture(scope="session")
def small_omniglot(omniglot_root, tmp_path_factory) -> SmallOmniglot:
    """The small Omniglot split, loaded once per session from a fresh cache folder."""
    from datasets import load_pool

    cache = tmp_path_factory.mktemp("small-omniglot-cache")
    start = time.perf_counter()
    train = load_pool("omniglot", "small", "train", root=omniglot_root, download=False, cache_dir=cache)
    test = load_pool("omniglot", "small", "test", root=omniglot_root, download=False, cache_dir=cache)
    return SmallOmniglot(train, test, cache, time.perf_counter() - start)
