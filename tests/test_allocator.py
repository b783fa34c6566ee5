"""Keeping freed memory (benchmarks/running/allocator.py): page faults go, results stay bit for bit.

Each setting runs in its own process (glibc's thresholds are per process): 30 inner Adam steps of the
Omniglot net on random images, about 2 s each.

    .venv/bin/python -m pytest -q tests/test_allocator.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks.perf import allocator as allocator_perf
from benchmarks.records.provenance import REPO_ROOT
from benchmarks.reporting.against_official import allocator_lines
from benchmarks.running import allocator

STEPS = """
import hashlib, json, resource, torch
import torch.nn.functional as F
from algorithms import build_model
from benchmarks.running.allocator import keep_freed_memory
said = keep_freed_memory()
torch.set_num_threads(1)
torch.manual_seed(0)
net = build_model("omniglot", 5)
adam = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.0, 0.999))
x, y = torch.randn(10, 1, 28, 28), torch.arange(5).repeat(2)
def step():
    loss = F.cross_entropy(net(x), y)
    adam.zero_grad()
    loss.backward()
    adam.step()
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    step()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 30
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest()
print(json.dumps({"said": said, "faults": faults, "digest": digest}))
"""


def _run(setting: str) -> dict:
    env = {**os.environ, allocator.ENV: setting}
    p = subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keeping_freed_memory_removes_the_page_faults_of_a_step_and_changes_no_bit():
    default, kept = _run("default"), _run("")
    assert default["said"].startswith("glibc defaults") and kept["said"].startswith("freed memory kept")
    assert default["faults"] > 50, default  # the trimmed heap is faulted back in at every step
    assert kept["faults"] < default["faults"] / 10, (kept, default)
    assert kept["digest"] == default["digest"]


def test_the_environment_variable_leaves_the_defaults(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "default")
    assert allocator.keep_freed_memory() == "glibc defaults (REPTILE_BENCH_ALLOCATOR=default)"


GLIBC_SETTINGS = {"glibc defaults": "glibc defaults (REPTILE_BENCH_ALLOCATOR=default)",
                  "freed memory kept": "freed memory kept (glibc trim and mmap thresholds 1 GiB)"}
HAS_TCMALLOC = allocator_perf.settings({allocator.MALLOC_ENV: "auto"})[-1] == allocator_perf.TCMALLOC


def _side_by_side(tmp_path, capsys) -> tuple[dict, dict, list[str]]:
    path = tmp_path / "profile" / "allocator_cpu.json"
    report = allocator_perf.main(["--rounds", "1", "--iters", "2", "--eval-tasks", "2", "--json", str(path)])
    assert report["ratio_median"] > 0 and "kept / defaults" in capsys.readouterr().out
    lines = allocator_lines(tmp_path, str)
    assert lines[0].startswith("Allocator settings") and lines[4].startswith("| 1 | ")
    assert allocator_lines(tmp_path / "nothing", str) == []
    return report, json.loads(path.read_text()), lines


@pytest.mark.usefixtures("omniglot_root")  # the timed processes read the small split
def test_without_tcmalloc_the_command_times_glibcs_two_settings_and_no_evaluation(tmp_path, capsys, monkeypatch):
    """The normal machine: tcmalloc absent (REPTILE_BENCH_MALLOC=glibc says so wherever it is installed)."""
    monkeypatch.setenv(allocator.MALLOC_ENV, "glibc")
    assert allocator_perf.settings() == list(GLIBC_SETTINGS)
    _, saved, lines = _side_by_side(tmp_path, capsys)  # --eval-tasks 2 asked for: nothing to compare, so none timed
    assert saved["rounds"][0]["allocator"] == GLIBC_SETTINGS
    assert "eval_median_s" not in saved["rounds"][0] and "ratio_tcmalloc_median" not in saved
    assert lines[4].count("|") == 5 and "One evaluation task in the same rounds" not in "\n".join(lines)


@pytest.mark.skipif(not HAS_TCMALLOC, reason="no tcmalloc on this machine (Debian/Ubuntu: apt install libtcmalloc-minimal4)")
@pytest.mark.usefixtures("omniglot_root")
def test_with_tcmalloc_the_command_times_it_beside_glibc_and_one_evaluation_task(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(allocator.MALLOC_ENV, "auto")
    _, saved, lines = _side_by_side(tmp_path, capsys)
    assert saved["rounds"][0]["allocator"] == {**GLIBC_SETTINGS, "tcmalloc": "tcmalloc (preloaded)"}
    assert saved["ratio_tcmalloc_median"] > 0 and saved["ratio_tcmalloc_eval_median"] > 0
    assert set(saved["rounds"][0]["eval_median_s"]) == {"freed memory kept", "tcmalloc"}
    assert lines[4].count("|") == 7 and "One evaluation task in the same rounds" in "\n".join(lines)


@pytest.mark.parametrize("flag, value, message", [("--rounds", "0", "must be at least 1"),
                                                  ("--iters", "0", "must be at least 1"),
                                                  ("--eval-tasks", "1", "--eval-tasks must be 0")])
def test_fewer_than_one_round_or_iteration_is_refused(flag, value, message, capsys):
    with pytest.raises(SystemExit) as e:
        allocator_perf.main([flag, value])
    assert e.value.code == 2 and message in capsys.readouterr().err
