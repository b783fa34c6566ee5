"""The command line: help, listing, and bad input that must stop with a clear message and a non-zero exit.

Process-level checks run ``python -m benchmarks.cli`` for real (exit status as the
shell sees it); the rest call ``cli.main`` in-process to stay fast.

    .venv/bin/python -m pytest -q tests/test_cli.py
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from _rows import valid_row
from benchmarks import cli
from benchmarks.records.rows import read_rows
from benchmarks.running import launch

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "benchmarks.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


class FakeProc:
    """A training process that has already exited with ``code``."""

    def __init__(self, cmd, code):
        self.cmd, self.code, self.returncode = cmd, code, None

    def poll(self):
        self.returncode = self.code
        return self.code

    def wait(self, timeout=None):
        return self.poll()

    def send_signal(self, signum):
        pass

    kill = send_signal


def fake_spawn(monkeypatch, codes=()) -> list[list[str]]:
    """Replace the launcher's process start; returns the list of argv it was asked to start."""
    started, codes = [], iter(codes)

    def spawn(cmd, env):
        started.append(cmd)
        return FakeProc(cmd, next(codes, 0))

    monkeypatch.setattr(launch, "spawn", spawn)
    return started


def cells_of(cmd: list[str]) -> list[dict]:
    import json

    return json.loads(cmd[cmd.index("--cells-json") + 1])


def test_help_lists_the_commands_and_options():
    p = run_cli("run", "--help")
    assert p.returncode == 0
    for option in ("--suite", "--cells", "--device", "--seeds", "--out", "--wandb", "--max-minutes", "--skip-missing"):
        assert option in p.stdout


def test_unknown_suite_exits_2_listing_suites(tmp_path):
    p = run_cli("run", "--suite", "nope", "--out", str(tmp_path))
    assert p.returncode == 2
    assert "unknown suite 'nope'" in p.stderr and "smoke" in p.stderr and "default" in p.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_missing_data_names_the_cell_and_skip_missing_goes_on(tmp_path):
    suite = tmp_path / "mix.toml"
    suite.write_text("""
[[group]]
name = "mini-{algorithm}"
dataset = "miniimagenet"
split = "ravi"
ways = 5
algorithms = ["reptile"]
meta_iterations = 1
eval = { num_tasks = 2 }

[[group]]
name = "sine-{algorithm}"
dataset = "sine"
split = "maml"
ways = 1
shots = 5
algorithms = ["reptile"]
meta_iterations = 1
learner = { inner_steps = 1, inner_optimizer = "sgd", inner_lr = 0.01, meta_lr = 0.1 }
eval = { num_tasks = 2, query = 5, inner_steps = 1, inner_optimizer = "sgd", inner_lr = 0.01, inner_batch = 0, seed = 100 }
""")
    empty = tmp_path / "no-miniimagenet"
    empty.mkdir()
    env = {"MINIIMAGENET_ROOT": str(empty)}
    out = tmp_path / "out"
    p = run_cli("run", "--suite", str(suite), "--out", str(out), "--wandb", "disabled", env=env)
    assert p.returncode == 3, p.stderr
    assert "mix/mini-reptile" in p.stderr and "--skip-missing" in p.stderr and "Mini-ImageNet" in p.stderr
    assert not (out / "mix" / "rows.csv").exists()
    p = run_cli("run", "--suite", str(suite), "--out", str(out), "--wandb", "disabled", "--skip-missing", env=env)
    assert p.returncode == 0, p.stderr
    assert "skipped for missing data (--skip-missing): mini-reptile" in p.stdout
    assert list(read_rows(out / "mix" / "rows.csv").cell) == ["sine-reptile"]


@pytest.mark.parametrize("args, message", [
    (["--cells", "cifar*"], "matches no cell; cells of this suite: "),
    (["--seeds", "0,x"], "--seeds takes comma-separated integers"),
    (["--seeds", "-1"], "--seeds needs at least one integer, each in [0, 256)"),
    (["--seeds", "0,256"], "--seeds needs at least one integer, each in [0, 256)"),
    (["--max-minutes", "0"], "--max-minutes must be a positive number"),
    (["--max-iterations", "0"], "--max-iterations must be a positive number of meta-iterations"),
    (["--max-iterations", "3", "--launcher", "submitit", "--cluster", "local"],
     "--max-minutes and --max-iterations are the local launcher's budgets"),
    (["--threads", "-2"], "--threads must be >= 0"),
])
def test_bad_run_options_exit_2(tmp_path, capsys, args, message):
    assert cli.main(["run", "--suite", "smoke", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "smoke" / "rows.csv").exists()


def test_unwritable_output_fails_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli.main(["run", "--suite", "smoke", "--out", str(blocker / "results")]) == 2
    assert "cannot write results to" in capsys.readouterr().err


def test_rows_of_another_schema_stop_the_run_untouched(tmp_path, capsys):
    folder = tmp_path / "smoke"
    folder.mkdir()
    pd.DataFrame({"schema_version": [0], "cell": ["old"]}).to_csv(folder / "rows.csv", index=False)
    before = (folder / "rows.csv").read_bytes()
    assert cli.main(["run", "--suite", "smoke", "--out", str(tmp_path)]) == 2
    assert "move" in capsys.readouterr().err
    assert (folder / "rows.csv").read_bytes() == before


def test_interrupted_child_stops_the_run_with_130(tmp_path, capsys, monkeypatch):
    calls = fake_spawn(monkeypatch, [130])
    assert cli.main(["run", "--suite", "smoke", "--out", str(tmp_path), "--device", "cpu"]) == 130
    assert len(calls) == 1 and "rerun the same command to resume" in capsys.readouterr().err


def test_failed_cell_is_reported_and_others_run(tmp_path, capsys, monkeypatch):
    calls = fake_spawn(monkeypatch, [4, 0, 0, 0, 0, 0])
    assert cli.main(["run", "--suite", "smoke", "--out", str(tmp_path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "failed cells: sine-reptile (exit 4, diverged)" in err and len(calls) == 6


def test_list_shows_suites_and_cells(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "smoke (6 cells, 6 trainings)" in out and "omniglot-5w1s-maml" in out and "scaling-reference-maml-k20" in out
    assert "default (100 cells, 97 trainings)" in out  # the four Omniglot Reptile cells share one training


def test_tables_without_results_exits_2(tmp_path, capsys):
    assert cli.main(["tables", "--results", str(tmp_path / "none")]) == 2
    assert "no results folder" in capsys.readouterr().err


def test_budget_spent_before_a_cell_starts_lists_it_and_exits_5(tmp_path, capsys, monkeypatch):
    started = fake_spawn(monkeypatch)
    assert cli.main(["run", "--suite", "smoke", "--out", str(tmp_path), "--device", "cpu", "--max-minutes", "1e-9"]) == 5
    out = capsys.readouterr().out
    assert started == [] and "not started within --max-minutes" in out and "sine-reptile" in out


def test_child_command_carries_budget_threads_and_provenance(tmp_path, monkeypatch):
    import json

    from benchmarks.running.config import CellConfig

    cmds = fake_spawn(monkeypatch)
    assert cli.main(["run", "--suite", "smoke", "--cells", "sine-maml", "--out", str(tmp_path), "--device", "cpu",
                     "--max-minutes", "5", "--max-iterations", "7", "--threads", "2", "--seeds", "3"]) in (0, 5)  # no row: the fake trains nothing
    (cmd,) = cmds
    args = dict(zip(cmd[3::2], cmd[4::2]))
    (cell,) = [CellConfig.from_dict(d) for d in cells_of(cmd)]
    assert (cell.cell, cell.seed, cell.device, cell.eval.mode) == ("sine-maml", 3, "cpu", "batched")
    assert args["--threads"] == "2" and float(args["--deadline"]) > 0 and args["--out"] == str(tmp_path)
    assert args["--stop-iteration"] == "7"
    assert set(json.loads(args["--git-json"])) == {"git_commit", "git_dirty", "code_state"}
    assert "--seeds 3" in args["--command"] and int(args["--parent-pid"]) == os.getpid()


@pytest.mark.parametrize("threads, dirty, skipped", [(1, False, {"sine-reptile"}), (2, False, set()), (1, True, set())])
def test_only_cells_finished_at_this_commit_on_this_device_are_skipped(tmp_path, capsys, monkeypatch,
                                                                      threads, dirty, skipped):
    """A fresh clone holds rows of an earlier commit: `make benchmark` must run those cells, not print them.
    Nor is a cell done for a run with another thread count, or for code with uncommitted changes."""
    from benchmarks.records import provenance
    from benchmarks.records.rows import write_row
    from benchmarks.running.suites import load_suite

    commit = "c" * 40
    monkeypatch.setattr(provenance, "git_state", lambda exclude=None: {
        "git_commit": commit, "git_dirty": dirty, "code_state": commit + ("+0123abcd" if dirty else "")})
    cells = {c.cell: c for c in cli.with_device(load_suite("smoke"), "cpu")}
    (tmp_path / "smoke").mkdir()
    for name, at in (("sine-reptile", commit), ("sine-fomaml", "an-older-commit")):
        row = valid_row(suite="smoke", cell=name, complete=True, git_commit=at, git_dirty=False,
                        device=provenance.device_name("cpu", 1), config_hash=cells[name].config_hash())
        write_row(tmp_path / "smoke" / "rows.csv", row)
    started = fake_spawn(monkeypatch)
    assert cli.main(["run", "--suite", "smoke", "--out", str(tmp_path), "--device", "cpu", "--threads", str(threads)]) in (0, 5)
    ran = {c["cell"] for cmd in started for c in cells_of(cmd)}
    assert ran == set(cells) - skipped
    assert f"{len(skipped)} already complete at this commit" in capsys.readouterr().out


def test_jobs_pin_each_training_to_its_own_core(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "available_cpus", lambda: [0, 1])
    started = fake_spawn(monkeypatch)
    cli.main(["run", "--suite", "smoke", "--out", str(tmp_path), "--device", "cpu", "--jobs", "2"])
    cpus = [cmd[cmd.index("--cpus") + 1] for cmd in started]
    assert len(started) == 6 and set(cpus) == {"0", "1"}
    assert all(cmd[cmd.index("--jobs") + 1] == "2" for cmd in started)
    assert launch.cpu_slots(2, 2) == [{"cpus": "0,1"}, {"cpus": "0,1"}]  # 4 threads on 2 cores wrap around
    started.clear()
    cli.main(["run", "--suite", "smoke", "--out", str(tmp_path / "b"), "--device", "cpu", "--jobs", "auto"])
    assert {cmd[cmd.index("--jobs") + 1] for cmd in started} == {"2"}  # one per core


@pytest.mark.slow
def test_jobs_2_gives_the_rows_of_a_serial_run(tmp_path):
    cols = ["cell", "iterations_run", "complete", "metric_mean", "metric_ci95", "final_train_loss", "config_hash",
            "training_key", "eval_tasks"]
    frames = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        p = run_cli("run", "--suite", "smoke", "--out", str(out), "--wandb", "disabled", "--device", "cpu", "--jobs", jobs)
        assert p.returncode == 0, p.stderr
        rows = read_rows(out / "smoke" / "rows.csv")
        assert set(rows.parallel_jobs) == {int(jobs)} and len(rows) == 6
        frames[jobs] = rows.sort_values("cell")[cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(frames["1"], frames["2"])
