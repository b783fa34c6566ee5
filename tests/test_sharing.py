"""Train once, evaluate many: cells whose training is identical share one training, one checkpoint, and
still get their own rows, curves and per-task scores; the suites' sharing; the paired table.

    .venv/bin/python -m pytest -q tests/test_sharing.py
"""
from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch

from _tiny import one_thread  # noqa: F401 (autouse: every test on one thread)
from algorithms import MetaConfig
from algorithms.evaluation import EvalConfig
from benchmarks import cli
from benchmarks.records.collect import load_rows
from benchmarks.records.rows import read_curves, read_rows
from benchmarks.records.scores import NO_SCORES, SCORES_FILE, match, read_scores
from benchmarks.reporting import paired
from benchmarks.running import runner
from benchmarks.running.config import CellConfig
from benchmarks.running.suites import load_suite
from benchmarks.running.trainings import group, training_key


def sine_cell(name: str, **over) -> CellConfig:
    cell = CellConfig(
        suite="t", cell=name, dataset="sine", split="maml", ways=1, shots=5, train_query=5, meta_batch=2,
        meta_iterations=6, checkpoint_every=2, eval_every=3, curve_tasks=4, device="cpu",
        learner=MetaConfig(algorithm="maml", inner_steps=1, inner_lr=0.01, inner_optimizer="sgd", meta_lr=0.01),
        eval=EvalConfig(num_tasks=12, query=20, inner_steps=2, inner_optimizer="sgd", inner_lr=0.01, inner_batch=0,
                        seed=100, mode="serial"))
    return replace(cell, **over).validate()


def two_evaluations() -> list[CellConfig]:
    a = sine_cell("a")
    b = sine_cell("b", shots=10, eval=replace(a.eval, inner_steps=5, mode="batched"), eval_every=2)
    return [a, b]


def test_training_key_ignores_evaluation_and_keeps_training():
    a, b = two_evaluations()
    assert training_key(a) == training_key(b) and a.config_hash() != b.config_hash()
    for change in (dict(seed=1), dict(meta_batch=3), dict(train_query=4), dict(meta_iterations=7),
                   dict(learner=replace(a.learner, meta_lr=0.02)), dict(diverge_factor=50.0), dict(device="cuda")):
        assert training_key(replace(a, **change)) != training_key(a), change


def test_suites_share_what_they_can():
    default = group(cli.with_device(load_suite("default"), "cpu"))
    reptile = [t for t in default if t.first.learner.algorithm == "reptile" and t.first.dataset == "omniglot"
               and t.first.suite == "default" and not t.first.cell.startswith("scaling")]
    assert len(default) == 97 and len(reptile) == 1 and len(reptile[0].cells) == 4
    paper = load_suite("paper-omniglot")
    assert len(group(paper)) <= len(paper) // 2  # 24 cells, 10 trainings


def test_one_training_serves_every_cell_with_its_own_row_curve_and_scores(tmp_path):
    cells = two_evaluations()
    rows = runner.run_training(cells, tmp_path, wandb="disabled", command="pytest")
    assert [r["cell"] for r in rows] == ["a", "b"]
    assert rows[0]["training_key"] == rows[1]["training_key"] == training_key(cells[0])
    assert rows[0]["training_cells"] == rows[1]["training_cells"] == 2
    assert rows[0]["step_time_total_s"] == rows[1]["step_time_total_s"]  # one training, timed once
    assert (rows[0]["eval_mode"], rows[1]["eval_mode"]) == ("serial", "batched")
    state = torch.load(runner.checkpoint_path(tmp_path, cells[0]), weights_only=True)
    assert len(state["step_times"]) == 6  # trained once, not once per cell
    curves = read_curves(tmp_path / "t" / "curves.csv")
    evaluated = curves.dropna(subset=["eval_mean"])
    assert list(evaluated[evaluated.cell == "a"].iteration) == [3, 6]  # each cell's own curve points
    assert list(evaluated[evaluated.cell == "b"].iteration) == [2, 4, 6]
    assert list(curves[curves.cell == "a"].train_loss) == list(curves[curves.cell == "b"].train_loss)
    # Each row equals what its cell gives when trained alone.
    for cell, shared in zip(cells, rows):
        alone = runner.run_cell(cell, tmp_path / cell.cell, wandb="disabled", command="pytest")
        for key in ("metric_mean", "metric_ci95", "final_train_loss", "iterations_run"):
            assert alone[key] == shared[key], (cell.cell, key)
        assert alone["training_cells"] == 1
    scores = read_scores(tmp_path / "t" / SCORES_FILE)
    row = read_rows(tmp_path / "t" / "rows.csv").iloc[0]
    values, problem = match(row, scores)
    assert problem is None and len(values) == 12 and values.mean() == pytest.approx(row.metric_mean)


def test_a_finished_training_is_evaluated_without_retraining(tmp_path, capsys):
    a, b = two_evaluations()
    runner.run_training([a], tmp_path, wandb="disabled")
    steps = torch.load(runner.checkpoint_path(tmp_path, a), weights_only=True)["step_times"]
    capsys.readouterr()
    rows = runner.run_training([b], tmp_path, wandb="disabled")  # a new cell of the same training
    assert "resuming b (seed 0) from iteration 6" in capsys.readouterr().err
    assert torch.load(runner.checkpoint_path(tmp_path, a), weights_only=True)["step_times"] == steps
    assert rows[0]["iterations_run"] == 6 and rows[0]["complete"]


def test_cells_of_two_trainings_are_refused_together(tmp_path):
    a = sine_cell("a")
    with pytest.raises(ValueError, match="ONE training"):
        runner.run_training([a, replace(a, cell="c", seed=1)], tmp_path, wandb="disabled")


def test_paired_table_pairs_cells_on_their_common_tasks(tmp_path):
    a = sine_cell("a")
    cells = [a, sine_cell("b", learner=replace(a.learner, algorithm="fomaml"), eval=replace(a.eval, num_tasks=8))]
    for c in cells:
        runner.run_cell(c, tmp_path, wandb="disabled")
    rows, _ = load_rows(tmp_path)
    text, pairs = paired.render(rows)
    assert pairs == 1 and "| 8 |" in text  # the 8 tasks both were scored on
    scores = read_scores(tmp_path / "t" / SCORES_FILE)
    sa, sb = (match(r, scores)[0] for r in rows.sort_values("cell").itertuples())
    d = sb.loc[:7] - sa.loc[:7]  # rows sorted by label: fomaml [b] is A, maml [a] is B
    assert f"{d.mean():+.4f} ± {1.96 * d.std(ddof=1) / 8 ** 0.5:.4f}" in text


def test_rows_without_or_with_foreign_scores_are_named_not_paired(tmp_path):
    a = sine_cell("a")
    for c in (a, sine_cell("b", learner=replace(a.learner, algorithm="fomaml"))):
        runner.run_cell(c, tmp_path, wandb="disabled")
    path = tmp_path / "t" / SCORES_FILE
    scores = pd.read_csv(path)
    hash_b = read_rows(tmp_path / "t" / "rows.csv").set_index("cell").loc["b", "config_hash"]
    scores.loc[scores.config_hash == hash_b, "value"] += 1.0  # scores of another run of b
    scores.to_csv(path, index=False)
    text, pairs = paired.render(load_rows(tmp_path)[0])
    assert pairs == 0 and "they are from other rows" in text
    pd.read_csv(path)[lambda df: df.config_hash != hash_b].to_csv(path, index=False)
    text, _ = paired.render(load_rows(tmp_path)[0])
    assert "t/b (seed 0, cpu" in text and NO_SCORES in text


def test_a_scores_file_of_another_format_stops_the_run_before_any_work(tmp_path, capsys):
    folder = tmp_path / "smoke"
    folder.mkdir()
    (folder / SCORES_FILE).write_text("cell,accuracy\nx,1\n")
    assert cli.main(["run", "--suite", "smoke", "--out", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{folder / SCORES_FILE} has columns" in err and "move" in err
    assert not (folder / "rows.csv").exists()
