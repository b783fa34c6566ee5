"""The malloc the project's processes preload (benchmarks/running/allocator.py): choice, environment, names.

Where the machine has tcmalloc, one test runs the inner step in a process that preloads it and checks that it
is loaded, that the device's name says so and that not one bit of the step changes; the rest needs no
tcmalloc (the environment is composed, not loaded).

    .venv/bin/python -m pytest -q tests/test_malloc.py
"""
from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys

import pytest

from benchmarks import cli
from benchmarks.perf import allocator as allocator_perf
from benchmarks.records import mallocs, provenance
from benchmarks.records.provenance import REPO_ROOT
from benchmarks.reporting.against_official import allocator_lines, peer_lines
from benchmarks.running import allocator, launch

FAKE = "libtcmalloc_minimal.so.4"


@pytest.fixture
def found(monkeypatch):
    """``auto`` finds tcmalloc (by name, as ``ctypes.util.find_library`` answers) whatever the machine has."""
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: FAKE if name == "tcmalloc_minimal" else None)
    monkeypatch.setattr(sys, "platform", "linux")


def test_auto_preloads_tcmalloc_where_found_and_glibc_preloads_nothing(found):
    assert allocator.preload_library({}) == FAKE  # unset means auto
    assert allocator.preload_library({allocator.MALLOC_ENV: "auto"}) == FAKE
    assert allocator.preload_library({allocator.MALLOC_ENV: "glibc"}) is None
    env = allocator.malloc_env({"LD_PRELOAD": "libmine.so", "PATH": "/bin"})
    assert env["LD_PRELOAD"] == f"{FAKE}:libmine.so" and env["PATH"] == "/bin"
    assert allocator.malloc_env({"LD_PRELOAD": FAKE})["LD_PRELOAD"] == FAKE  # not twice
    assert "LD_PRELOAD" not in allocator.malloc_env({allocator.MALLOC_ENV: "glibc"})
    assert allocator.planned_malloc({}) == "tcmalloc"
    assert allocator.planned_malloc({allocator.MALLOC_ENV: "glibc"}) == "glibc"
    # a malloc the user preloads themselves is the one the processes run with
    mine = {allocator.MALLOC_ENV: "glibc", "LD_PRELOAD": "/opt/libjemalloc.so.2"}
    assert allocator.planned_malloc(mine) == "jemalloc"
    # the environment's own malloc, none added (the authors' code, a cluster job)
    assert allocator.inherited_malloc({}) == "glibc"
    assert allocator.inherited_malloc({"LD_PRELOAD": "/opt/libjemalloc.so.2"}) == "jemalloc"


def test_auto_without_tcmalloc_is_glibc(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert allocator.preload_library({}) is None and allocator.planned_malloc({}) == "glibc"
    assert "LD_PRELOAD" not in allocator.malloc_env({})


def test_a_named_library_must_exist_and_be_a_malloc(tmp_path):
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"")
    assert allocator.preload_library({allocator.MALLOC_ENV: str(lib)}) == str(lib)
    with pytest.raises(ValueError, match="REPTILE_BENCH_MALLOC=/no/such/libtcmalloc.so: no such file"):
        allocator.preload_library({allocator.MALLOC_ENV: "/no/such/libtcmalloc.so"})
    other = tmp_path / "libfoo.so"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="not a malloc this project can name"):
        allocator.preload_library({allocator.MALLOC_ENV: str(other)})


def test_the_env_command_prints_the_preload_or_nothing(found, monkeypatch, capsys):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setenv(allocator.MALLOC_ENV, "auto")
    assert allocator.main(["--env"]) == 0 and capsys.readouterr().out == f"LD_PRELOAD={FAKE}\n"
    monkeypatch.setenv(allocator.MALLOC_ENV, "glibc")
    assert allocator.main(["--env"]) == 0 and capsys.readouterr().out == ""
    monkeypatch.setenv(allocator.MALLOC_ENV, "/no/such/libtcmalloc.so")
    assert allocator.main(["--env"]) == 2 and "no such file" in capsys.readouterr().err
    assert allocator.main([]) == 2


def test_cell_processes_get_the_preload_and_the_device_name_says_it(found, monkeypatch):
    monkeypatch.setenv(allocator.MALLOC_ENV, "auto")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    env = launch.child_env({"CUDA_VISIBLE_DEVICES": "0"})
    assert env["LD_PRELOAD"] == FAKE and env["CUDA_VISIBLE_DEVICES"] == "0" and str(REPO_ROOT) in env["PYTHONPATH"]
    assert provenance.device_name("cpu", 2, "tcmalloc").endswith("(2 threads, tcmalloc)")
    assert provenance.device_name("cpu", 1, "glibc").endswith("(1 thread)")  # the names rows had before
    assert mallocs.malloc_name("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4") == "tcmalloc"
    assert mallocs.malloc_name("libc.so.6") is None


def test_a_bad_setting_stops_a_run_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(allocator.MALLOC_ENV, "/no/such/libtcmalloc.so")
    assert cli.main(["run", "--suite", "smoke", "--out", str(tmp_path)]) == 2
    assert "REPTILE_BENCH_MALLOC=/no/such/libtcmalloc.so: no such file" in capsys.readouterr().err
    assert not (tmp_path / "smoke" / "rows.csv").exists()
    assert cli.main(["plan", "--suite", "smoke", "--no-probe", "--results", str(tmp_path)]) == 2
    assert "REPTILE_BENCH_MALLOC=/no/such/libtcmalloc.so: no such file" in capsys.readouterr().err


def test_the_allocator_command_times_glibc_without_a_preloaded_malloc(found, monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", f"{FAKE}:libmine.so")
    monkeypatch.setenv(allocator.MALLOC_ENV, "auto")
    assert allocator_perf.settings() == ["glibc defaults", "freed memory kept", "tcmalloc"]
    assert allocator_perf.settings({allocator.MALLOC_ENV: "glibc"}) == ["glibc defaults", "freed memory kept"]
    assert allocator_perf.setting_env("glibc defaults")["LD_PRELOAD"] == "libmine.so"
    assert allocator_perf.setting_env("tcmalloc")["LD_PRELOAD"].split(":")[0] == FAKE
    monkeypatch.setenv("LD_PRELOAD", FAKE)
    assert "LD_PRELOAD" not in allocator_perf.setting_env("freed memory kept")


def test_reports_say_the_malloc(tmp_path):
    (tmp_path / "profile").mkdir()
    ms = {"glibc defaults": 0.1, "freed memory kept": 0.08, "tcmalloc": 0.06}
    rnd = {"median_s": ms, "ratio": 0.8, "ratio_tcmalloc": 0.75, "minor_faults_per_iteration": dict.fromkeys(ms, 1.0),
           "eval_median_s": {"freed memory kept": 0.1, "tcmalloc": 0.07}, "ratio_tcmalloc_eval": 0.7}
    (tmp_path / "profile" / "allocator_cpu.json").write_text(json.dumps(
        {"iters": 3, "clock": "process CPU time", "device": "cpu: X (1 thread)", "rounds": [rnd], "ratio_median": 0.8,
         "ratio_tcmalloc_median": 0.75, "eval_tasks": 2, "ratio_tcmalloc_eval_median": 0.7}))
    lines = allocator_lines(tmp_path, str)
    assert "×0.75 tcmalloc / kept" in lines[0] and "tcmalloc preloaded (page faults)" in lines[2]
    assert lines[4] == "| 1 | 100.0 ms (1) | 80.0 ms (1) | ×0.80 | 60.0 ms (1) | ×0.75 |"
    assert "median ×0.70 tcmalloc / kept" in lines[6] and lines[-1] == "| 1 | 100 ms | 70 ms | ×0.70 |"
    (tmp_path / "peers").mkdir()
    run = {"median_s": {"official/1": 0.1, "reference/1": 0.05}, "ratio_to_official": {"reference/1": 0.5}}
    part = {"rounds": [run], "median_s": run["median_s"], "ratio_median": run["ratio_to_official"]}
    (tmp_path / "peers" / "official_reptile.json").write_text(json.dumps(
        {"iters": 3, "warmup": 1, "cpu": "X", "setting": "S", "mallocs": {"glibc": part, "tcmalloc": part}}))
    text = "\n".join(peer_lines(tmp_path, str))
    assert "glibc's malloc (as it ships) on both sides:" in text and "tcmalloc preloaded into both sides:" in text
    assert "tcmalloc preloaded into both sides: reference ×0.50 at 1 thread" in text


@pytest.mark.skipif(not allocator.preload_library({allocator.MALLOC_ENV: "auto"}),
                    reason="no tcmalloc on this machine (Debian/Ubuntu: apt install libtcmalloc-minimal4)")
def test_preloaded_tcmalloc_is_loaded_named_and_changes_no_bit():
    script = """
import hashlib, json, torch
from algorithms import build_model
from algorithms.handwritten import InnerStep
from algorithms.models import channels_last_on_cpu
from algorithms.reptile import make_inner_optimizer
from benchmarks.records.mallocs import malloc_in_use
from benchmarks.records.provenance import device_name
torch.set_num_threads(1)
torch.manual_seed(0)
net = build_model("omniglot", 5)
channels_last_on_cpu(net)
step = InnerStep(net, make_inner_optimizer(list(net.parameters()), "adam", 1e-3, 0.0))
x, y = torch.randn(5, 1, 28, 28), torch.arange(5)
losses = [step(x, y).item() for _ in range(20)]
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest()
print(json.dumps({"malloc": malloc_in_use(), "device": device_name("cpu"), "losses": losses, "digest": digest}))
"""

    def run(setting: str) -> dict:
        env = allocator.malloc_env({**os.environ, allocator.MALLOC_ENV: setting})
        p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                           check=True)
        return json.loads(p.stdout.strip().splitlines()[-1])

    glibc, tcmalloc = run("glibc"), run("auto")
    assert glibc["malloc"] == "glibc" and tcmalloc["malloc"] == "tcmalloc"
    assert tcmalloc["device"].endswith("(1 thread, tcmalloc)") and glibc["device"].endswith("(1 thread)")
    assert tcmalloc["losses"] == glibc["losses"] and tcmalloc["digest"] == glibc["digest"]
