"""Nothing is lost: a run killed (SIGKILL or Ctrl-C) and restarted ends with the same rows as an uninterrupted run.

Real processes: ``python -m benchmarks.cli run`` on a three-cell sine suite (two of whose cells share one
training), killed right after the long training's first checkpoint appears, at random moments (the CLI or
the training process, SIGKILL), or run twice at once.

    .venv/bin/python -m pytest -q tests/test_resume.py
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from _suites import sine_suite
from benchmarks.records import provenance
from benchmarks.records.rows import read_curves, read_rows

REPO = Path(__file__).resolve().parents[1]
SUITE = sine_suite(["fomaml"], 300)
CELLS = ["long-maml", "long2-maml", "short-fomaml"]
COMPARED = ["cell", "iterations_run", "complete", "metric_mean", "metric_ci95", "final_train_loss", "config_hash",
            "training_key", "training_cells"]


def cli(suite: Path, out: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "benchmarks.cli", "run", "--suite", str(suite), "--out", str(out), "--wandb", "disabled"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err


def interrupt_after_first_checkpoint(suite: Path, out: Path, sig: int) -> tuple[int, str]:
    proc = cli(suite, out, start_new_session=True)
    ckpt = long_checkpoint(suite, out)
    deadline = time.time() + 240
    while not ckpt.exists():
        assert proc.poll() is None, f"run ended before its first checkpoint:\n{finish(proc)[1]}"
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.01)
    os.killpg(proc.pid, sig)  # the whole group, as a terminal's Ctrl-C or an OOM kill would
    rc, log = finish(proc)
    rows = read_rows(out / "suite" / "rows.csv")
    assert not {"long-maml", "long2-maml"} & set(rows.cell), "the long training finished before the kill: make it longer"
    return rc, log


def long_checkpoint(suite: Path, out: Path) -> Path:
    from benchmarks import cli as cli_module
    from benchmarks.running import runner
    from benchmarks.running.suites import load_suite

    (long,) = [c for c in cli_module.with_device(load_suite(str(suite)), "cpu") if c.cell == "long-maml"]
    return runner.checkpoint_path(out, long)


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suites") / "suite.toml"
    path.write_text(SUITE)
    return path


@pytest.fixture(scope="module")
def uninterrupted(suite_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    rc, log = finish(cli(suite_file, out))
    assert rc == 0, log
    return out


def compare(a: Path, b: Path) -> None:
    ra = read_rows(a / "suite" / "rows.csv").sort_values("cell")[COMPARED].reset_index(drop=True)
    rb = read_rows(b / "suite" / "rows.csv").sort_values("cell")[COMPARED].reset_index(drop=True)
    pd.testing.assert_frame_equal(ra, rb)
    assert list(ra.cell) == CELLS and ra.complete.all()
    assert ra.set_index("cell").training_key["long-maml"] == ra.set_index("cell").training_key["long2-maml"]
    ca, cb = (read_curves(p / "suite" / "curves.csv").sort_values(["cell", "iteration"]).reset_index(drop=True) for p in (a, b))
    pd.testing.assert_frame_equal(ca, cb)


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(suite_file, uninterrupted, tmp_path):
    rc, _ = interrupt_after_first_checkpoint(suite_file, tmp_path, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    rc, log = finish(cli(suite_file, tmp_path))
    assert rc == 0, log
    assert "resuming long-maml (seed 0) from iteration" in log and "from iteration 0" not in log
    assert log.count("resuming long-maml") == 1 and "(one training for 2 cells)" in log  # resumed once, not per cell
    if provenance.git_dirty(exclude=tmp_path) is False:
        assert "1 already complete" in log  # the short cell's row was kept, not recomputed
    else:  # rows do not say which uncommitted changes made them: re-evaluated from the final checkpoint
        assert "resuming short-fomaml (seed 0) from iteration 3" in log
    assert not list((tmp_path / "suite").glob(".*.tmp")), "a temporary file was left behind"
    compare(uninterrupted, tmp_path)


@pytest.mark.slow
def test_sigterm_to_the_run_stops_its_cell_too(suite_file, tmp_path):
    """A SIGTERM sent to the CLI alone (a scheduler, `kill PID`) must not leave the cell's process running
    on, to write its row later or train beside the rerun."""
    proc = cli(suite_file, tmp_path, start_new_session=True)
    ckpt = long_checkpoint(suite_file, tmp_path)
    deadline = time.time() + 240
    while not ckpt.exists():
        assert proc.poll() is None and time.time() < deadline, finish(proc)[1] if proc.poll() is not None else "slow"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGTERM)  # the CLI only, not its process group
    rc, log = finish(proc)
    assert rc == 130 and "rerun the same command to resume" in log
    alive = [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).find(str(tmp_path)) >= 0]
    assert not alive, "the cell's process outlived the run"
    assert "long-maml" not in set(read_rows(tmp_path / "suite" / "rows.csv").cell)


def training_processes(out: Path) -> list[int]:
    """Pids of the training processes of a run into ``out``."""
    return [int(p.name) for p in Path("/proc").glob("[0-9]*")
            if "benchmarks.running.runner" in _cmdline(p) and str(out) in _cmdline(p)]


def wait_gone(out: Path, seconds: float = 15) -> list[int]:
    deadline = time.time() + seconds
    while (alive := training_processes(out)) and time.time() < deadline:
        time.sleep(0.05)
    return alive


@pytest.mark.slow
def test_kill_9_of_the_cli_takes_its_training_with_it(suite_file, uninterrupted, tmp_path):
    """A SIGKILL cannot be forwarded: the kernel's parent-death signal ends the training instead, so it can
    neither write its row later nor train beside the rerun."""
    proc = cli(suite_file, tmp_path)
    ckpt = long_checkpoint(suite_file, tmp_path)
    deadline = time.time() + 240
    while not ckpt.exists():
        assert proc.poll() is None and time.time() < deadline, finish(proc)[1] if proc.poll() is not None else "slow"
        time.sleep(0.01)
    assert training_processes(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)  # the CLI only
    proc.communicate(timeout=60)
    assert wait_gone(tmp_path) == [], "the training outlived the CLI killed with SIGKILL"
    rc, log = finish(cli(suite_file, tmp_path))
    assert rc == 0, log
    compare(uninterrupted, tmp_path)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_equals_uninterrupted(suite_file, uninterrupted, tmp_path):
    """Fault injection: SIGKILL to the CLI or to the training process at random moments (seeded), each
    followed by a rerun of the same command; every non-timing column must end equal to an uninterrupted run's."""
    import random

    rng = random.Random(2026)
    for trial in range(3):
        out = tmp_path / f"trial{trial}"
        target = rng.choice(["cli", "training"])
        delay = rng.uniform(2.0, 9.0)  # process start, the short cell, the long training's steps and evaluations
        proc = cli(suite_file, out)
        time.sleep(delay)
        if target == "cli":
            os.kill(proc.pid, signal.SIGKILL)
        else:
            for pid in training_processes(out):
                os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=300)
        assert wait_gone(out) == []
        rc, log = finish(cli(suite_file, out))
        assert rc == 0, f"trial {trial} ({target} killed after {delay:.1f} s):\n{log}"
        assert not list((out / "suite").glob(".*.tmp")), "a temporary file was left behind"
        compare(uninterrupted, out)


@pytest.mark.slow
def test_two_runs_at_once_never_train_the_same_training_twice(suite_file, uninterrupted, tmp_path):
    first, second = cli(suite_file, tmp_path), cli(suite_file, tmp_path)
    (rc1, log1), (rc2, log2) = finish(first), finish(second)
    assert {rc1, rc2} <= {0, 5}, log1 + log2
    assert "being trained by another run" in log1 + log2
    rc, log = finish(cli(suite_file, tmp_path))  # whatever was skipped is finished now
    assert rc == 0, log
    rows = read_rows(tmp_path / "suite" / "rows.csv")
    assert sorted(rows.cell) == CELLS  # one row per cell: nothing duplicated, nothing lost
    compare(uninterrupted, tmp_path)


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_ctrl_c_in_a_cell_keeps_its_checkpoint_and_resumes(suite_file, uninterrupted, tmp_path, monkeypatch, capsys):
    """In-process (cheap): Ctrl-C during a meta-step exits 130; the rerun resumes from the last checkpoint
    and ends where the uninterrupted run did."""
    import torch
    from algorithms.maml import MAML
    from benchmarks.running import runner
    from benchmarks.running.suites import load_suite

    torch.set_num_threads(1)
    from benchmarks import cli as cli_module

    short = replace(cli_module.with_device(load_suite(str(suite_file)), "cpu")[0], checkpoint_every=2)
    assert short.cell == "short-fomaml" and short.meta_iterations == 3
    args = ["--cells-json", f"[{short.to_json()}]", "--out", str(tmp_path), "--wandb", "disabled"]
    real_step = MAML.meta_step

    def ctrl_c_in_third_step(self, batch):
        if self.iteration == 2:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(MAML, "meta_step", ctrl_c_in_third_step)
    assert runner.main(args) == runner.EXIT_INTERRUPTED
    assert "resume from the last checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "suite" / "rows.csv").exists()
    monkeypatch.undo()
    assert runner.main(args) == 0
    assert "resuming short-fomaml (seed 0) from iteration 2" in capsys.readouterr().err
    mine = read_rows(tmp_path / "suite" / "rows.csv").iloc[0]
    clean = read_rows(uninterrupted / "suite" / "rows.csv").set_index("cell").loc["short-fomaml"]
    for key in ("iterations_run", "metric_mean", "metric_ci95", "final_train_loss"):
        assert mine[key] == clean[key], key
