"""The cell runner and the cost measurements, in-process on tiny sine cells (seconds).

    .venv/bin/python -m pytest -q tests/test_runner.py
"""
from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch

from algorithms import MetaConfig, build_learner, build_model
from algorithms.evaluation import EvalConfig
from benchmarks.records import provenance
from benchmarks.running import measure, runner
from benchmarks.running.config import CellConfig
from benchmarks.records.rows import COLUMNS, read_curves, read_rows


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two threads on a shared 2-core machine make tiny backward passes 100x slower (PITFALLS.md section 4)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cell(algorithm: str = "maml", **over) -> CellConfig:
    cell = CellConfig(
        suite="t", cell=f"sine-{algorithm}", dataset="sine", split="maml", ways=1, shots=5, train_query=5,
        meta_batch=2, meta_iterations=6, checkpoint_every=2, eval_every=3, curve_tasks=2, device="cpu",
        learner=MetaConfig(algorithm=algorithm, inner_steps=1, inner_lr=0.01, inner_optimizer="sgd", meta_lr=0.01),
        eval=EvalConfig(num_tasks=8, query=20, inner_steps=2, inner_optimizer="sgd", inner_lr=0.01, inner_batch=0, seed=100,
                        mode="serial"),
    )
    return replace(cell, **over).validate()


def run(cell, out, **kw):
    return runner.run_cell(cell, out, wandb="disabled", command="pytest", **kw)


def test_row_curve_and_checkpoint(tmp_path):
    cell = tiny_cell()
    row = run(cell, tmp_path)
    assert list(row) == COLUMNS
    assert (row["iterations_run"], row["complete"], row["eval_tasks"], row["metric"]) == (6, True, 8, "mse")
    assert row["metric_mean"] > 0 and row["metric_ci95"] > 0 and row["memory_kind"] == "cpu_rss"
    assert row["peak_memory_bytes"] > 50 * 2**20  # a Python process with torch loaded
    assert row["autograd_saved_bytes"] > 0 and row["step_time_median_s"] > 0
    assert row["step_time_total_s"] >= 6 * row["step_time_median_s"] * 0.5
    assert row["config_hash"] == cell.config_hash() and row["command"] == "pytest"
    assert row["device"].startswith("cpu: ") and row["torch_version"] == torch.__version__
    saved = read_rows(tmp_path / "t" / "rows.csv")
    assert len(saved) == 1 and saved.iloc[0].metric_mean == pytest.approx(row["metric_mean"])
    curve = read_curves(tmp_path / "t" / "curves.csv")
    assert list(curve.iteration) == [1, 2, 3, 4, 5, 6]
    evaluated = curve.dropna(subset=["eval_mean"])
    assert list(evaluated.iteration) == [3, 6] and set(evaluated.eval_metric) == {"mse"}
    state = torch.load(runner.checkpoint_path(tmp_path, cell), weights_only=True)
    assert state["iteration"] == 6 and len(state["step_times"]) == 6


def test_runs_are_deterministic_and_seed_matters(tmp_path):
    a = run(tiny_cell(), tmp_path / "a")
    b = run(tiny_cell(), tmp_path / "b")
    c = run(tiny_cell(seed=1), tmp_path / "c")
    assert (a["metric_mean"], a["final_train_loss"]) == (b["metric_mean"], b["final_train_loss"])
    assert a["final_train_loss"] != c["final_train_loss"]


def test_budget_cut_writes_incomplete_row_then_resume_matches(tmp_path, monkeypatch):
    full = run(tiny_cell("reptile", train_query=0), tmp_path / "full")
    calls = {"n": 0}

    def cut_after_four(deadline):
        calls["n"] += 1
        return calls["n"] > 4

    monkeypatch.setattr(runner, "past_deadline", cut_after_four)
    cut = run(tiny_cell("reptile", train_query=0), tmp_path / "cut", deadline=1.0)
    assert (cut["iterations_run"], cut["complete"], cut["eval_tasks"]) == (4, False, 8)
    assert cut["metric_mean"] != full["metric_mean"]
    monkeypatch.undo()
    resumed = run(tiny_cell("reptile", train_query=0), tmp_path / "cut")
    assert (resumed["iterations_run"], resumed["complete"]) == (6, True)
    for key in ("metric_mean", "metric_ci95", "final_train_loss"):
        assert resumed[key] == full[key], key
    rows = read_rows(tmp_path / "cut" / "t" / "rows.csv")
    assert len(rows) == 1 and bool(rows.iloc[0].complete)  # the incomplete row was replaced
    assert list(read_curves(tmp_path / "cut" / "t" / "curves.csv").iteration) == [1, 2, 3, 4, 5, 6]


def test_an_iteration_budget_cuts_at_that_iteration_whatever_the_clock_and_resume_matches(tmp_path):
    full = run(tiny_cell("reptile", train_query=0), tmp_path / "full")
    cut = run(tiny_cell("reptile", train_query=0), tmp_path / "cut", stop_iteration=4)
    assert (cut["iterations_run"], cut["complete"], cut["eval_tasks"]) == (4, False, 8)
    again = run(tiny_cell("reptile", train_query=0), tmp_path / "cut", stop_iteration=4)  # nothing left to train
    assert (again["iterations_run"], again["complete"], again["metric_mean"]) == (4, False, cut["metric_mean"])
    resumed = run(tiny_cell("reptile", train_query=0), tmp_path / "cut")
    assert (resumed["iterations_run"], resumed["complete"]) == (6, True)
    for key in ("metric_mean", "metric_ci95", "final_train_loss"):
        assert resumed[key] == full[key], key


def test_checkpoint_of_another_config_is_not_reused(tmp_path):
    cell = tiny_cell()
    run(cell, tmp_path)
    other = replace(cell, learner=replace(cell.learner, meta_lr=0.02))
    code, device = provenance.code_state(exclude=tmp_path), provenance.device_name("cpu")
    assert runner.load_checkpoint(runner.checkpoint_path(tmp_path, other), other, code, device) is None
    assert runner.load_checkpoint(runner.checkpoint_path(tmp_path, cell), cell, code, device)["iteration"] == 6


def test_checkpoint_of_other_code_or_device_is_not_resumed(tmp_path, capsys):
    """Else a finished cell's checkpoint, rerun after a code change, would skip training and report old work
    as new; and a cell resumed with another thread count would time its steps on two setups under one name."""
    cell = tiny_cell()
    device = provenance.device_name("cpu")
    run(cell, tmp_path, git={"git_commit": "0ld", "git_dirty": False})
    path = runner.checkpoint_path(tmp_path, cell)
    assert runner.load_checkpoint(path, cell, "0ld", device)["iteration"] == 6
    assert runner.load_checkpoint(path, cell, "new", device) is None
    assert "written by code at 0ld, not this checkout's new" in capsys.readouterr().err
    assert runner.load_checkpoint(path, cell, "0ld+1234abcd", device) is None  # same commit, uncommitted edits
    assert runner.load_checkpoint(path, cell, "0ld", "cpu: Other CPU (7 threads)") is None
    assert f"was written on {device}, not cpu: Other CPU (7 threads)" in capsys.readouterr().err
    row = run(cell, tmp_path, git={"git_commit": "new", "git_dirty": False})
    assert "resuming" not in capsys.readouterr().err and row["git_commit"] == "new"
    assert len(read_rows(tmp_path / "t" / "rows.csv")) == 1  # the new row replaced the old one


def test_cost_only_cell_has_empty_metric(tmp_path):
    row = run(tiny_cell(eval=EvalConfig(num_tasks=0), eval_every=0, curve_tasks=0, meta_iterations=2), tmp_path)
    assert (row["eval_tasks"], row["metric"], row["metric_mean"], row["eval_time_s"]) == (0, "", None, 0.0)
    assert row["autograd_saved_bytes"] > 0
    df = read_rows(tmp_path / "t" / "rows.csv")
    assert pd.isna(df.iloc[0].metric_mean)


class Probe:
    """A stand-in learner whose meta_step runs a given function (for the hook accounting)."""

    def __init__(self, fn):
        self.fn = fn

    def meta_step(self, batch):
        self.fn()


def test_saved_bytes_counts_each_storage_once_and_reports_the_peak():
    w = torch.ones(1000, requires_grad=True)  # 4000 bytes

    def square():  # mul saves both operands: the same storage twice
        (w * w).sum().backward()

    assert measure.autograd_saved_bytes(Probe(square), None) == 4000

    def two_graphs():  # the first graph is freed before the second is built: peak is one graph
        (w * w).sum().backward()
        (w * w).sum().backward()

    assert measure.autograd_saved_bytes(Probe(two_graphs), None) == 4000

    def refused():
        raise RuntimeError("torch.func.grad don't yet support saved tensor hooks")

    assert measure.autograd_saved_bytes(Probe(refused), None) is None


def test_saved_bytes_order_of_algorithms_and_learner_untouched():
    from datasets import SinePool

    batch = SinePool().sample_batch(1, 5, 5, seed=0, indices=range(2))

    def saved(alg, k):
        torch.manual_seed(0)
        learner = build_learner(MetaConfig(algorithm=alg, inner_steps=k, inner_lr=0.01, inner_optimizer="sgd"),
                                build_model("sine", 1), 10)
        before = {n: p.clone() for n, p in learner.model.state_dict().items()}
        n = measure.autograd_saved_bytes(learner, batch)
        assert learner.iteration == 0 and all(torch.equal(before[k2], v) for k2, v in learner.model.state_dict().items())
        return n

    assert saved("maml", 1) > saved("fomaml", 1)
    assert saved("maml", 3) > saved("maml", 1)
    assert saved("fomaml", 3) == saved("fomaml", 1)  # first order keeps no inner graph


def test_main_rejects_bad_cell_json(capsys):
    assert runner.main(["--cells-json", '[{"suite": "t"}]']) == runner.EXIT_BAD_CONFIG
    assert "bad --cells-json" in capsys.readouterr().err
    assert runner.main(["--cells-json", '[]']) == runner.EXIT_BAD_CONFIG


def test_tracker_hooks_are_called_and_a_failing_tracker_loses_nothing(tmp_path, monkeypatch):
    from benchmarks.running import tracking

    events = []

    class Fake:
        def log(self, step, metrics):
            events.append(("log", step, sorted(metrics)))

        def finish(self, row):
            events.append(("finish", row["cell"]))

    def start(config, suite, cell, mode, run_id=None):
        events.append(("start", suite, cell, mode, config["learner"]["algorithm"]))
        return Fake()

    monkeypatch.setattr(tracking, "start_cell", start)
    runner.run_cell(tiny_cell(), tmp_path / "a", wandb="offline")
    assert events[0] == ("start", "t", "sine-maml", "offline", "maml")
    assert [e[1] for e in events if e[0] == "log"] == [1, 2, 3, 4, 5, 6]
    assert ("log", 3, ["eval_ci95", "eval_mean", "eval_metric", "train_loss"]) in events
    assert events[-1] == ("finish", "sine-maml")

    def broken(*args):
        raise RuntimeError("wandb: not logged in")

    # Cut short after 4 iterations, then resumed: the same wandb run id, and the new (offline) run
    # gets the whole curve, replayed, before it goes on.
    events.clear()
    ids = []
    monkeypatch.setattr(tracking, "start_cell", lambda config, suite, cell, mode, run_id=None: ids.append(run_id) or Fake())
    calls = {"n": 0}
    real_deadline = runner.past_deadline
    monkeypatch.setattr(runner, "past_deadline", lambda deadline: (calls.__setitem__("n", calls["n"] + 1), calls["n"] > 4)[1])
    runner.run_cell(tiny_cell(), tmp_path / "c", wandb="offline", deadline=1.0)
    monkeypatch.setattr(runner, "past_deadline", real_deadline)
    runner.run_cell(tiny_cell(), tmp_path / "c", wandb="offline")
    assert len(ids) == 2 and ids[0] == ids[1] and len(ids[0]) == 8
    logged = [e[1] for e in events if e[0] == "log"]
    assert logged == [1, 2, 3, 4] + [1, 2, 3, 4, 5, 6]

    monkeypatch.setattr(tracking, "start_cell", broken)
    row = runner.run_cell(tiny_cell(), tmp_path / "b", wandb="online")
    assert row["complete"] and (tmp_path / "b" / "t" / "rows.csv").exists()


def test_smoke_suite_omniglot_cells_end_to_end(omniglot_root, tmp_path, monkeypatch):
    """Every algorithm on Omniglot-small through the real loader, in-process (the CLI adds only processes)."""
    from benchmarks.running.suites import load_suite

    monkeypatch.setenv("OMNIGLOT_ROOT", str(omniglot_root))
    rows = {c.learner.algorithm: run(replace(c, device="cpu"), tmp_path) for c in load_suite("smoke") if c.dataset == "omniglot"}
    assert set(rows) == {"reptile", "fomaml", "maml"}
    for row in rows.values():
        assert row["metric"] == "accuracy" and 0 <= row["metric_mean"] <= 100 and row["eval_tasks"] == 20
        assert row["complete"] and row["split"] == "small"
    assert rows["maml"]["autograd_saved_bytes"] > max(rows["fomaml"]["autograd_saved_bytes"], rows["reptile"]["autograd_saved_bytes"])
    assert len(read_rows(tmp_path / "smoke" / "rows.csv")) == 3


def test_provenance_git_state_ignores_results_and_docs(tmp_path, monkeypatch):
    import subprocess

    from benchmarks.records import provenance

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    monkeypatch.setattr(provenance, "REPO_ROOT", tmp_path)
    (tmp_path / "results" / "s").mkdir(parents=True)
    (tmp_path / "results" / "s" / "rows.csv").write_text("rows written by the run itself\n")
    state = provenance.git_state(exclude=tmp_path / "results")
    assert len(state["git_commit"]) == 40 and state["git_dirty"] is False
    (tmp_path / "README.md").write_text("results section regenerated by make benchmark\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("untracked documentation\n")
    state = provenance.git_state(exclude=tmp_path / "results")
    assert state["git_dirty"] is False and state["code_state"] == state["git_commit"]
    (tmp_path / "code.py").write_text("x = 2\n")
    state = provenance.git_state(exclude=tmp_path / "results")
    assert state["git_dirty"] is True and state["code_state"].startswith(state["git_commit"] + "+")
    (tmp_path / "code.py").write_text("x = 3\n")  # other uncommitted changes: another code state
    assert provenance.git_state(exclude=tmp_path / "results")["code_state"] != state["code_state"]


def test_command_line_is_retypeable():
    from benchmarks.records import provenance

    argv = [str(provenance.REPO_ROOT / "benchmarks" / "cli.py"), "run", "--suite", "default", "--cells", "a b"]
    assert provenance.command_line(argv) == "python -m benchmarks.cli run --suite default --cells 'a b'"


def test_diverged_cell_exits_4_and_writes_no_row(tmp_path, capsys):
    cell = tiny_cell()
    cell = replace(cell, learner=replace(cell.learner, inner_lr=1e30))
    args = ["--cells-json", f"[{cell.to_json()}]", "--out", str(tmp_path), "--wandb", "disabled"]
    assert runner.main(args) == runner.EXIT_DIVERGED
    assert "diverged, no row written" in capsys.readouterr().err
    assert not (tmp_path / "t" / "rows.csv").exists()
