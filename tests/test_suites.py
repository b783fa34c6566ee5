"""Suite files expand into the documented cells; CellConfig round-trips; bad specs fail clearly.

    .venv/bin/python -m pytest -q tests/test_suites.py
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest


from benchmarks.running.config import CellConfig
from benchmarks import cli
from benchmarks.running.suites import SuiteError, available_suites, load_suite, select

REPO = Path(__file__).resolve().parent.parent


def by_name(cells):
    return {c.cell: c for c in cells}


def test_every_suite_loads_with_unique_cells():
    assert {"smoke", "default", "scaling", "paper-omniglot", "paper-miniimagenet"} <= set(available_suites())
    for name in available_suites():
        cells = load_suite(name)
        assert cells, name
        assert len({(c.cell, c.seed) for c in cells}) == len(cells)
        assert all(c.suite == name for c in cells)


def test_config_json_round_trip_and_stable_hash():
    for cell in load_suite("smoke") + load_suite("paper-miniimagenet"):
        again = CellConfig.from_json(cell.to_json())
        assert again == cell and again.config_hash() == cell.config_hash()
    a, b = load_suite("smoke")[:2]
    assert a.config_hash() != b.config_hash()
    changed = replace(a, eval=replace(a.eval, inner_steps=a.eval.inner_steps + 1))
    assert changed.config_hash() != a.config_hash()


def test_from_dict_names_unknown_fields():
    d = load_suite("smoke")[0].to_dict()
    d["eval"]["inner_step"] = 3
    with pytest.raises(ValueError, match="inner_step"):
        CellConfig.from_dict(d)


def test_sine_eval_seed_must_differ_from_training_seed():
    cell = by_name(load_suite("smoke"))["sine-maml"]
    with pytest.raises(ValueError, match="eval.seed"):
        replace(cell, seed=cell.eval.seed).validate()


def test_seeds_and_task_counts_must_fit_the_task_streams():
    cell = by_name(load_suite("smoke"))["omniglot-5w1s-reptile"]
    with pytest.raises(ValueError, match="seed must be < 256"):
        replace(cell, seed=256).validate()
    with pytest.raises(ValueError, match="task indices stop at 2"):
        replace(cell, meta_batch=32, meta_iterations=2**19 + 1).validate()
    replace(cell, meta_batch=32, meta_iterations=2**19).validate()  # exactly 2**24 tasks fit


def test_smoke_covers_every_algorithm_on_both_datasets():
    cells = load_suite("smoke")
    got = {(c.dataset, c.learner.algorithm) for c in cells}
    assert got == {(d, a) for d in ("sine", "omniglot") for a in ("reptile", "fomaml", "maml")}
    assert all(c.meta_iterations <= 10 and c.eval.num_tasks <= 30 for c in cells)


def test_default_suite_contents():
    cells = load_suite("default")
    scaling = [c for c in cells if c.cell.startswith("scaling")]
    accuracy = [c for c in cells if not c.cell.startswith("scaling")]
    assert {(c.learner.algorithm, c.learner.inner_steps) for c in scaling} == {
        (a, k) for a in ("reptile", "fomaml", "maml", "imaml", "anil") for k in (1, 2, 5, 10, 20)}
    assert all(c.eval.num_tasks == 0 and c.suite == "default" for c in scaling)
    assert all(c.eval.num_tasks >= 600 for c in accuracy)
    settings = {(c.dataset, c.split, c.ways, c.shots, c.learner.algorithm) for c in accuracy}
    for alg in ("reptile", "fomaml", "maml", "imaml", "anil"):
        assert ("sine", "maml", 1, 10, alg) in settings
        assert ("omniglot", "small", 5, 1, alg) in settings and ("omniglot", "small", 5, 5, alg) in settings
    # Paired comparison: within a setting every algorithm is scored on the same task pool.
    for shots in (1, 5):
        pool = {(c.eval.seed, c.eval.num_tasks, c.eval.query)
                for c in accuracy if c.dataset == "omniglot" and c.shots == shots}
        assert len(pool) == 1
        # Every algorithm under the shared (transductive) protocol; Reptile also under its own.
        protocols = {(c.learner.algorithm, c.eval.transductive) for c in accuracy if c.dataset == "omniglot" and c.shots == shots}
        assert protocols == {("reptile", True), ("fomaml", True), ("maml", True), ("imaml", True), ("anil", True),
                             ("reptile", False)}
        reptile = [c for c in accuracy if c.dataset == "omniglot" and c.shots == shots and c.learner.algorithm == "reptile"]
        # The two Reptile cells differ only in the evaluation protocol, so the protocol is what the table compares.
        assert reptile[0].learner == reptile[1].learner and reptile[0].train_shots == reptile[1].train_shots


def test_paper_suites_use_each_papers_settings():
    om = by_name(load_suite("paper-omniglot"))
    r, m = om["omniglot-paper-5w1s-reptile-nontrans"], om["omniglot-paper-5w1s-maml-trans"]
    assert (r.train_shots, r.meta_batch, r.meta_iterations, r.learner.inner_steps, r.learner.inner_batch) == (10, 5, 100000, 5, 10)
    assert (r.eval.num_tasks, r.eval.inner_steps, r.eval.query, r.eval.inner_optimizer) == (10000, 50, 1, "adam")
    assert (m.meta_batch, m.learner.inner_steps, m.learner.inner_lr, m.eval.inner_steps, m.eval.num_tasks) == (32, 1, 0.4, 3, 600)
    assert m.learner.first_order is False and om["omniglot-paper-5w1s-fomaml-trans"].learner.first_order is True
    r20 = om["omniglot-paper-20w5s-reptile-trans"]
    assert (r20.learner.inner_lr, r20.learner.inner_steps, r20.learner.inner_batch, r20.meta_iterations) == (0.0005, 10, 20, 200000)
    assert {c.eval.transductive for c in om.values()} == {True, False}
    mi = by_name(load_suite("paper-miniimagenet"))
    m1, m5 = mi["miniimagenet-5w1s-maml-trans"], mi["miniimagenet-5w5s-maml-trans"]
    assert (m1.meta_batch, m5.meta_batch, m1.train_query, m1.learner.inner_steps, m1.eval.inner_steps) == (4, 2, 15, 5, 10)
    assert (mi["miniimagenet-5w1s-reptile-trans"].eval.inner_batch, mi["miniimagenet-5w5s-reptile-trans"].eval.inner_batch) == (5, 15)


def test_seeds_override_multiplies_cells():
    base = load_suite("smoke")
    two = load_suite("smoke", seeds=[0, 1])
    assert len(two) == 2 * len(base) and {c.seed for c in two} == {0, 1}


def test_unknown_suite_lists_the_suites():
    with pytest.raises(SuiteError, match="unknown suite 'nope'.*smoke"):
        load_suite("nope")


def test_select_glob_substring_and_no_match():
    cells = load_suite("smoke")
    assert {c.cell for c in select(cells, "sine-*")} == {"sine-reptile", "sine-fomaml", "sine-maml"}
    assert {c.cell for c in select(cells, "maml")} == {"sine-fomaml", "sine-maml", "omniglot-5w1s-fomaml", "omniglot-5w1s-maml"}
    with pytest.raises(SuiteError, match="matches no cell.*sine-reptile"):
        select(cells, "cifar*")


def write_suite(tmp_path, text):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return str(path)


def test_suite_file_by_path_with_when_overrides(tmp_path):
    path = write_suite(tmp_path, """
[[group]]
name = "x-{algorithm}-{shots}"
dataset = "sine"
split = "maml"
ways = 1
shots = [5, 10]
algorithms = ["reptile", "maml"]
eval = { seed = 7, num_tasks = 3 }
[[group.when]]
algorithm = "maml"
set = { train_query = 4, shots = 99, learner = { inner_lr = 0.5 } }
""")
    cells = by_name(load_suite(path))
    assert set(cells) == {"x-reptile-5", "x-reptile-10", "x-maml-5", "x-maml-10"}
    m = cells["x-maml-5"]
    # `when` sets apply, but the cell's own axis value (shots) wins over them.
    assert (m.train_query, m.learner.inner_lr, m.shots, m.suite) == (4, 0.5, 5, "mine")
    assert cells["x-reptile-5"].learner.inner_lr == 1e-3


@pytest.mark.parametrize("text, message", [
    ('[[group]]\ndataset = "sine"\nwayz = 1\n', "group 1.*unknown setting.*wayz"),
    ('[[group]]\ndataset = "sine"\nsplit = "maml"\nways = 2\n', "sine regression has ways = 1"),
    ('[[group]]\ndataset = "omniglot"\nmeta_batch = "5"\n', "meta_batch must be an integer"),
    ('[[group]]\ndataset = "omniglot"\nalgorithms = ["maml"]\n', "train_query >= 1"),
    ('[[group]]\nname = "{colour}"\ndataset = "omniglot"\n', "bad name template"),
    ('include = ["mine.toml"]\n', "includes itself"),
    ('[[group]\n', "not valid TOML"),
    ('groups = []\n', "unknown top-level keys"),
    # Malformed structure: a one-line SuiteError naming the key, never a traceback.
    ('group = 5\n', r"`group` must be \[\[group\]\] blocks.*got 5"),
    ('[group]\ndataset = "omniglot"\n', r"`group` must be \[\[group\]\] blocks.*single \[table\]"),
    ('[[group]]\ndataset = "omniglot"\nwhen = 5\n', r"group 1: `group.when` must be \[\[group.when\]\].*got 5"),
    ('[[group]]\ndataset = "omniglot"\n[group.when]\nalgorithm = "reptile"\nset = { meta_batch = 2 }\n',
     r"group 1: `group.when` must be \[\[group.when\]\].*single \[table\]"),
    ('[[group]]\ndataset = "omniglot"\n[[group.when]]\nalgorithm = "reptile"\nset = 5\n',
     "group 1, when 1: set: expected a table"),
    ('include = 5\n', "include must list suite names"),
    ('defaults = 3\n[[group]]\ndataset = "omniglot"\n', "defaults: expected a table"),
    ('[defaults]\nlearner = 3\n[[group]]\ndataset = "omniglot"\n', "defaults: learner: expected a table"),
    ('[[group]]\ndataset = "omniglot"\neval = 5\n', "group 1: eval: expected a table"),
    ('[[group]]\nname = 5\ndataset = "omniglot"\n', "group 1: name must be a template string"),
    # Wrong types inside learner/eval (their validate() compares values only).
    ('[[group]]\ndataset = "omniglot"\neval = { num_tasks = 5.5 }\n', r"eval.num_tasks must be an integer, got 5.5"),
    ('[[group]]\ndataset = "omniglot"\nlearner = { inner_steps = 2.0 }\n', "learner.inner_steps must be an integer"),
    ('[[group]]\ndataset = "omniglot"\nlearner = { inner_lr = "0.1" }\n', "learner.inner_lr must be a number"),
    ('[[group]]\ndataset = "omniglot"\ntransductive = [1]\n', "eval.transductive must be true or false"),
])
def test_bad_suite_files_fail_with_a_clear_message(tmp_path, text, message):
    with pytest.raises(SuiteError, match=message) as e:
        load_suite(write_suite(tmp_path, text))
    assert "mine" in str(e.value) and "\n" not in str(e.value)  # names the file, on one line


def test_suite_path_is_relative_to_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    smoke = [c.to_dict() for c in load_suite("smoke")]
    assert [c.to_dict() for c in load_suite("benchmarks/suites/smoke.toml")] == smoke
    assert cli.main(["list", "--suite", "benchmarks/suites/smoke.toml"]) == 0
    assert "smoke (6 cells, 6 trainings)" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "smoke.toml").write_text('[[group]]\nname = "mine"\ndataset = "omniglot"\n')
    assert [c.cell for c in load_suite("sub/smoke.toml")] == ["mine"]  # not benchmarks/suites' smoke
    assert [c.to_dict() for c in load_suite("smoke")] == smoke  # a bare name is still a suite of benchmarks/suites
    assert [c.to_dict() for c in load_suite("smoke.toml")] == smoke  # as is a file name found only there
    with pytest.raises(SuiteError, match=r"nope/x.toml not found \(tried .*sub.*nope.*\); available suites: .*smoke"):
        load_suite("sub/nope/x.toml")


def test_when_matches_values_left_to_the_defaults(tmp_path):
    path = write_suite(tmp_path, """
[defaults]
ways = 5
[defaults.eval]
num_tasks = 3
[[group]]
name = "d-{ways}w{shots}s-{algorithm}"
dataset = "omniglot"
[[group.when]]
algorithm = "reptile"      # CellConfig's default algorithm
set = { meta_batch = 2 }
[[group.when]]
shots = 1                  # CellConfig's default shots
set = { train_shots = 3 }
[[group.when]]
ways = 5                   # not an axis: refused
set = {}
""")
    with pytest.raises(SuiteError, match="`when` can match on .* not 'ways'"):
        load_suite(path)
    path = write_suite(tmp_path, """
[defaults]
shots = 5
learner = { algorithm = "fomaml" }
[[group]]
name = "d-{shots}s-{algorithm}-{backend}-{protocol}"
dataset = "omniglot"
train_query = 1
[[group.when]]
algorithm = "fomaml"       # from [defaults]
shots = 5                  # from [defaults]
backend = "reference"      # CellConfig's default backend
transductive = false       # CellConfig's default protocol
set = { meta_batch = 2, learner = { inner_steps = 1 } }
[[group.when]]
inner_steps = 5            # matched before any `when` set it to 1
seed = 0
set = { meta_iterations = 7 }
""")
    (cell,) = load_suite(path)
    assert cell.cell == "d-5s-fomaml-reference-nontrans"
    assert (cell.meta_batch, cell.learner.inner_steps, cell.meta_iterations) == (2, 1, 7)


def test_scaling_sweeps_both_backends_for_every_algorithm_and_k():
    cells = load_suite("scaling")
    seen = {(c.learner.algorithm, c.learner.backend, c.learner.inner_steps) for c in cells}
    ks = (1, 2, 5, 10, 20)
    ours = {(a, b, k) for a in ("reptile", "fomaml", "maml", "imaml", "anil") for b in ("reference", "batched") for k in ks}
    libraries = {(a, b, k) for a in ("fomaml", "maml") for b in ("learn2learn", "torchopt", "torch.func") for k in ks}
    assert seen == ours | libraries
    # The batched backend cannot carry Reptile's inner Adam across tasks: both backends run without it.
    assert all(not c.learner.persist_inner_state for c in cells if c.learner.algorithm == "reptile")
