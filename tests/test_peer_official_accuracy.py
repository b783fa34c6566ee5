"""The authors' code at this project's budget, without TensorFlow: the settings taken from a suite and the
refusals, the evaluation tasks handed over (the same images as this project's evaluator, query first), the
driver's whole accuracy run against a fake checkout and a fake TensorFlow, and the README's paired table.

    .venv/bin/python -m pytest -q tests/test_peer_official_accuracy.py
"""
from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from benchmarks.peers import official_reptile as peer
from benchmarks.peers import official_reptile_accuracy as acc
from benchmarks.running.suites import load_suite
from benchmarks.running.trainings import group
from test_peer_official import fake_checkout

SUITE = """
description = "tiny"
[[group]]
name = "omniglot-small-5w{shots}s-{algorithm}-{protocol}"
dataset = "omniglot"
split = "small"
ways = 5
shots = [1, 5]
meta_batch = 2
meta_iterations = 3
transductive = [true, false]
algorithms = ["reptile"]
train_shots = 10
train_query = 0
eval = { num_tasks = 4, query = 1, seed = 7, inner_steps = 6, inner_lr = 0.001, inner_optimizer = "adam", adam_beta1 = 0.0, inner_batch = 5 }
learner = { inner_steps = 2, inner_lr = 0.001, inner_optimizer = "adam", adam_beta1 = 0.0, inner_batch = 10, meta_lr = 1.0, meta_lr_final = 0.0 }
"""

# The fake official modules: the interfaces the driver calls; evaluate logs its arguments and counts as correct
# the classes whose first sampled image (the query, in the official split) is darker than the second.
FAKE = {
    "supervised_reptile/models.py": """
        import json, os
        import tensorflow as tf

        class OmniglotModel:
            def __init__(self, num_classes, learning_rate):
                self.input_ph = self.label_ph = self.minimize_op = self.predictions = None
                with open(os.environ["FAKE_LOG"], "a") as f:
                    f.write(json.dumps({"model": [num_classes, learning_rate]}) + "\\n")
        """,
    "supervised_reptile/omniglot.py": """
        import os

        def read_dataset(path):
            return sorted(os.listdir(path))

        def augment_dataset(dataset):
            return [(d, r) for d in dataset for r in range(4)]
        """,
    "supervised_reptile/reptile.py": """
        import json, os, random
        import tensorflow as tf

        class Reptile:
            def __init__(self, session, transductive=False):
                self.transductive = transductive

            def _log(self, **kw):
                with open(os.environ["FAKE_LOG"], "a") as f:
                    f.write(json.dumps(kw) + "\\n")

            def train_step(self, dataset, input_ph, label_ph, minimize_op, **kw):
                self._log(train=kw, classes=len(dataset))

            def evaluate(self, dataset, input_ph, label_ph, minimize_op, predictions, num_classes, num_shots,
                         inner_batch_size, inner_iters, replacement):
                classes = list(dataset)
                random.shuffle(classes)
                samples = [c.sample(num_shots + 1) for c in classes[:num_classes]]
                self._log(evaluate=[num_classes, num_shots, inner_batch_size, inner_iters, self.transductive],
                          draw=random.random())
                return sum(int(s[0].sum() < s[1].sum()) for s in samples)
        """,
}
FAKE_TF = """
    import json, os
    __version__ = "0.fake"
    def disable_v2_behavior(): pass
    def set_random_seed(seed): pass
    def global_variables_initializer(): return None
    def trainable_variables(): return ["w"]
    def global_variables(): return ["w", "adam_v", "beta2_power"]
    def variables_initializer(variables): return ("reset", tuple(variables))
    class ConfigProto:
        def __init__(self, **kw): pass
    class Session:
        def __init__(self, config=None): pass
        def __enter__(self): return self
        def __exit__(self, *a): return False
        def run(self, op, *a, **kw):
            if op is not None:
                with open(os.environ["FAKE_LOG"], "a") as f:
                    f.write(json.dumps({"run": op}) + "\\n")
    """


def fake_world(tmp_path, monkeypatch):
    """A checkout of fake official modules, a fake TensorFlow on PYTHONPATH, and the log their calls write."""
    checkout = fake_checkout(tmp_path / "supervised-reptile")
    for f, text in FAKE.items():
        (checkout / f).write_text(textwrap.dedent(text))
    site = tmp_path / "site"
    (site / "tensorflow" / "compat").mkdir(parents=True)
    (site / "tensorflow" / "__init__.py").write_text("")
    (site / "tensorflow" / "compat" / "__init__.py").write_text("")
    (site / "tensorflow" / "compat" / "v1.py").write_text(textwrap.dedent(FAKE_TF))
    (site / "tf_keras.py").write_text("")
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("FAKE_LOG", str(log))
    (tmp_path / "tiny.toml").write_text(SUITE)
    return checkout, log


def tiny_cells(tmp_path):
    (tmp_path / "tiny.toml").write_text(SUITE)
    return load_suite(str(tmp_path / "tiny.toml"))


def test_the_settings_are_the_suites_and_cells_the_official_code_cannot_run_are_refused_by_name(tmp_path):
    (training,) = group(tiny_cells(tmp_path))
    assert len(training.cells) == 4  # one training, four evaluations
    assert acc.official_settings(training) == {
        "seed": 0, "ways": 5, "train_shots": 10, "meta_iterations": 3, "meta_batch": 2, "inner_steps": 2,
        "inner_batch": 10, "inner_lr": 0.001, "meta_lr": 1.0, "meta_lr_final": 0.0}
    first = training.cells[0]
    for change, words in [
        (dict(eval=replace(first.eval, query=15)), "eval.query = 15"),
        (dict(eval=replace(first.eval, inner_lr=0.01)), "another optimiser or learning rate"),
        (dict(learner=replace(first.learner, persist_inner_state=False)), "persist_inner_state = false"),
        (dict(learner=replace(first.learner, inner_optimizer="sgd")), "Adam with beta1 0"),
        (dict(split="paper"), "dataset omniglot/paper"),
    ]:
        bad = replace(training, cells=[replace(first, **change)])
        with pytest.raises(peer.PeerError, match=f"{first.cell}: .*{words}"):
            acc.official_settings(bad)


def test_the_handed_over_tasks_are_this_projects_evaluation_tasks_query_first(omniglot_root, tmp_path, monkeypatch):
    from datasets import load_pool

    monkeypatch.setenv("OMNIGLOT_ROOT", str(omniglot_root))
    cell = next(c for c in tiny_cells(tmp_path) if c.shots == 5)
    tasks = np.load(acc.export_tasks(cell, tmp_path / "tasks.npy"))
    assert tasks.shape == (4, 5, 6, 28, 28) and tasks.dtype == np.float32
    pool = load_pool("omniglot", "small", "test")
    for i in range(4):
        sx, sy, qx, qy = (t[0] for t in pool.sample_task(5, 5, 1, cell.eval.seed, i).tensors())
        for c in range(5):
            assert np.array_equal(tasks[i, c, 0], qx[qy == c][0, 0].numpy())
            assert np.array_equal(tasks[i, c, 1:], sx[sy == c][:, 0].numpy())
    assert not np.array_equal(tasks[0], tasks[1])


def test_the_whole_run_writes_scored_rows_that_pair_with_ours(omniglot_root, tmp_path, monkeypatch):
    from benchmarks.records.collect import load_rows
    from benchmarks.reporting import official_accuracy

    monkeypatch.setenv("OMNIGLOT_ROOT", str(omniglot_root))
    checkout, log = fake_world(tmp_path, monkeypatch)
    out = tmp_path / "results"
    args = ["--checkout", str(checkout), "--python", sys.executable, "--suite", str(tmp_path / "tiny.toml"),
            "--out", str(out)]
    assert acc.main(args) == 0
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    trains = [c["train"] for c in calls if "train" in c]
    assert [t["meta_step_size"] for t in trains] == pytest.approx([1.0, 2 / 3, 1 / 3])  # the official schedule
    assert trains[0] | {"meta_step_size": 0} == {"num_classes": 5, "num_shots": 10, "inner_batch_size": 10,
                                                 "inner_iters": 2, "replacement": False, "meta_step_size": 0,
                                                 "meta_batch_size": 2}
    assert {"model": [5, 0.001]} in calls
    evaluations = [c["evaluate"] for c in calls if "evaluate" in c]
    assert len(evaluations) == 16 and {tuple(e[2:4]) for e in evaluations} == {(5, 6)}
    assert {(e[1], e[4]) for e in evaluations} == {(1, True), (1, False), (5, True), (5, False)}

    rows, _ = load_rows(out)
    assert len(rows) == 4 and set(rows.backend) == {"official-tf"} and set(rows.eval_tasks) == {4}
    # The fake scores a class when its query image is darker than its first support image: recompute that.
    from datasets import load_pool

    pool = load_pool("omniglot", "small", "test")
    for r in rows.itertuples():
        values = pd.read_csv(out / acc.SUITE / "scores.csv").query("cell == @r.cell").sort_values("task")["value"]
        k = int(r.shots)
        expected = []
        for i in range(4):
            sx, sy, qx, qy = (t[0] for t in pool.sample_task(5, k, 1, 7, i).tensors())
            expected.append(100.0 * sum(int(qx[qy == c].sum() < sx[sy == c][0].sum()) for c in range(5)) / 5)
        assert list(values) == expected
        assert r.metric_mean == pytest.approx(np.mean(expected))

    from benchmarks.reporting import paired

    text, pairs = paired.render(rows)  # the peer's cells pair among themselves too (same tasks)
    assert pairs == 2 and "peer-official-reptile-tiny: omniglot/small 5-way 1-shot, 1 query per class, evaluation seed 7" in text

    # Ours: a row of the same cell and config, scored 20 points below on every task: a paired difference of +20.
    ours = fake_ours(rows.iloc[:1], out, lambda seed: 20.0)
    table = "\n".join(official_accuracy.lines(pd.concat([rows, ours], ignore_index=True), str))
    line = next(t for t in table.splitlines() if "(bbbbbbb)" in t)
    assert "+20.00 ± 0.00 (n=4)" in line and "authors' code better" in line and "| tiny |" in line
    assert table.count("no row of") == 3  # the other three cells have no row of ours


def fake_ours(official: pd.DataFrame, out, below) -> pd.DataFrame:
    """Rows of ours for ``official``'s rows (same cell, config and seed), scored ``below(seed)`` points lower."""
    scores = pd.read_csv(out / acc.SUITE / "scores.csv")
    made, kept = [], []
    for i, theirs in enumerate(official.itertuples()):
        cell = json.loads(theirs.config_json)["cell"]
        row = official.iloc[i].copy()
        row["suite"], row["cell"], row["backend"] = cell["suite"], cell["cell"], "reference"
        row["config_json"] = json.dumps({**cell, "device": "cpu", "eval": {**cell["eval"], "mode": "batched"}})
        row["config_hash"], row["git_commit"] = f"ours{i:08d}", "b" * 40
        mine = scores[(scores.cell == theirs.cell) & (scores.seed == theirs.seed)].sort_values("task")["value"]
        values = list(mine - below(theirs.seed))
        row["metric_mean"], row["rows_file"] = sum(values) / len(values), str(out / "ours" / "rows.csv")
        kept.append(pd.DataFrame({"suite": row["suite"], "cell": row["cell"], "seed": theirs.seed,
                                  "device": row["device"], "config_hash": row["config_hash"],
                                  "task": range(len(values)), "value": values}))
        made.append(row.to_frame().T)
    (out / "ours").mkdir(exist_ok=True)
    pd.concat(kept).to_csv(out / "ours" / "scores.csv", index=False)
    return pd.concat(made, ignore_index=True)


def test_seeds_of_one_cell_make_one_line_their_variance_in_the_interval(omniglot_root, tmp_path, monkeypatch):
    from benchmarks.records.collect import load_rows
    from benchmarks.reporting import official_accuracy

    monkeypatch.setenv("OMNIGLOT_ROOT", str(omniglot_root))
    checkout, _ = fake_world(tmp_path, monkeypatch)
    (tmp_path / "tiny.toml").write_text(SUITE.replace('algorithms = ["reptile"]', 'algorithms = ["reptile"]\nseeds = [0, 1]'))
    out = tmp_path / "results"
    assert acc.main(["--checkout", str(checkout), "--python", sys.executable, "--suite", str(tmp_path / "tiny.toml"),
                     "--out", str(out)]) == 0
    rows, _ = load_rows(out)
    assert len(rows) == 8 and set(rows.seed) == {0, 1} and set(rows.suite) == {"peer-official-reptile-tiny"}
    ours = fake_ours(rows, out, lambda seed: 10.0 * (seed + 1))  # 10 points below at seed 0, 20 at seed 1
    table = "\n".join(official_accuracy.lines(pd.concat([rows, ours], ignore_index=True), str)).splitlines()
    body = [t for t in table if t.startswith("| tiny |")]
    assert len(body) == 4 and all("| 0, 1 |" in t for t in body)
    # Seeds combined as the tables combine them: 15 ± 1.96 * sqrt(var(10, 20) / 2 + 0) = 15 ± 9.80.
    assert all("+15.00 ± 9.80 (n=4) (per seed: +10.00 ± 0.00, +20.00 ± 0.00)" in t for t in body)
    assert all("authors' code better" in t for t in body)
    assert official_accuracy.combine([3.0], [1.5]) == (3.0, 1.5)  # one seed: its own interval


def test_the_seeds_suite_is_the_default_suites_reptile_cells_with_more_seeds():
    default = {c.cell: c for c in load_suite("default")}
    cells = load_suite("reptile-seeds")
    assert sorted({c.seed for c in cells}) == [0, 1, 2] and len(cells) == 12
    for c in cells:
        assert replace(c, suite="default", seed=0) == replace(default[c.cell], seed=0)


def test_a_failing_official_run_is_a_message_and_writes_nothing(omniglot_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMNIGLOT_ROOT", str(omniglot_root))
    checkout, _ = fake_world(tmp_path, monkeypatch)
    (checkout / "supervised_reptile" / "reptile.py").write_text("import tensorflow as tf\nraise SystemExit('boom')\n")
    out = tmp_path / "results"
    args = ["--checkout", str(checkout), "--python", sys.executable, "--suite", str(tmp_path / "tiny.toml"),
            "--out", str(out)]
    assert acc.main(args) == 2
    assert "the official accuracy run failed" in capsys.readouterr().err and not out.exists()


def test_fresh_adam_resets_the_optimiser_state_before_every_evaluation_task(omniglot_root, tmp_path, monkeypatch):
    from benchmarks.records.collect import load_rows

    monkeypatch.setenv("OMNIGLOT_ROOT", str(omniglot_root))
    checkout, log = fake_world(tmp_path, monkeypatch)
    out = tmp_path / "results"
    assert acc.main(["--checkout", str(checkout), "--python", sys.executable, "--suite", str(tmp_path / "tiny.toml"),
                     "--out", str(out), "--eval-optimizer", "fresh"]) == 0
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    order = ["reset" if "run" in c else "evaluate" for c in calls if "run" in c or "evaluate" in c]
    assert order == ["reset", "evaluate"] * 16  # every task starts from fresh moments
    assert {"run": ["reset", ["adam_v", "beta2_power"]]} in calls  # the optimiser's variables, not the weights
    rows, _ = load_rows(out)
    assert len(rows) == 4 and all(c.endswith("-fresh-adam") for c in rows.cell)
    assert {json.loads(c)["eval_optimizer"] for c in rows.config_json} == {"fresh"}


def test_missing_omniglot_is_said_before_a_tensorflow_environment_is_made(tmp_path, monkeypatch, capsys):
    checkout, _ = fake_world(tmp_path, monkeypatch)
    monkeypatch.setenv("OMNIGLOT_ROOT", str(tmp_path / "no-data"))
    args = ["--checkout", str(checkout), "--env", str(tmp_path / "env"), "--suite", str(tmp_path / "tiny.toml"),
            "--out", str(tmp_path / "results")]
    assert acc.main(args) == 2
    assert "images_background_small1.zip" in capsys.readouterr().err
    assert not (tmp_path / "env").exists() and not (tmp_path / "results").exists()


def test_a_cells_draws_do_not_depend_on_the_cells_scored_before_it(omniglot_root, tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIGLOT_ROOT", str(omniglot_root))
    checkout, log = fake_world(tmp_path, monkeypatch)

    def draws(cells: str) -> dict:
        log.write_text("")
        assert acc.main(["--checkout", str(checkout), "--python", sys.executable, "--suite",
                         str(tmp_path / "tiny.toml"), "--cells", cells, "--out", str(tmp_path / cells.strip("*"))]) == 0
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        out: dict = {}
        for c in calls:
            if "evaluate" in c:
                out.setdefault(tuple(c["evaluate"][1:2] + c["evaluate"][4:]), []).append(c["draw"])
        return out

    every, alone = draws("*reptile*"), draws("*5w5s-reptile-nontrans*")
    assert list(alone) == [(5, False)] and alone[(5, False)] == every[(5, False)]
