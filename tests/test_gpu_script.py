"""The prepared GPU script (benchmarks/gpu/results.sh) and its helpers, checked on CPU.

    OMNIGLOT_ROOT=../shared/data/omniglot .venv/bin/python -m pytest -q tests/test_gpu_script.py

- shell syntax (``bash -n``) and the dry-run listing of every step, in GPU and rehearsal modes;
- benchmarks.gpu.cells: the fair split, exact cell patterns, the rehearsal copy of the suite;
- end to end: the rehearsal mode on a fixed amount of work (one scaling cell, the evaluation throughput on
  2 tasks, one paper cell of 3 meta-iterations with 4 evaluation tasks; no clock decides anything, so a loaded
  machine runs exactly what an idle one does), then the bundle it leaves in OUT (at most 8 flat files, rows of
  the result schema, the table printed last) and ``gpu_bundle import`` of that bundle into a temporary results
  folder (tables, plots and a README copy regenerated).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu import bundle as gpu_bundle, cells as gpu_cells
from benchmarks.records.rows import COLUMNS, CURVE_COLUMNS, read_curves, read_rows
from benchmarks.running.suites import load_suite, select

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu" / "results.sh"
SUITE = "gpu-omniglot-small"


def test_shell_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize("mode", ["gpu", "rehearse"])
def test_dry_run_lists_every_step(mode):
    env = dict(os.environ, DRY_RUN="1", REHEARSE="1" if mode == "rehearse" else "0", PYTHON=sys.executable)
    out = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for step in ("scaling", "perf", "limits", "eval", "paper", "bundle"):
        assert f"[dry-run] {step}" in out.stdout, out.stdout
    assert "'--device' '" + ("cuda" if mode == "gpu" else "cpu") + "'" in out.stdout  # printed shell-quoted
    assert 'run(command="bash benchmarks/gpu/results.sh", carry=[".whl", ".gpu-data"], timeout_s=600)' in out.stdout


def test_bad_argument_is_refused():
    out = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "unknown argument" in out.stderr


def test_suite_is_the_paper_protocol():
    cells = load_suite(SUITE)
    assert len(cells) == 6
    for c in cells:
        assert (c.dataset, c.split, c.ways, c.eval.num_tasks) == ("omniglot", "small", 5, 600)
        if c.learner.algorithm == "reptile":
            assert (c.meta_iterations, c.meta_batch, c.train_shots, c.learner.inner_steps, c.eval.inner_steps) == (100000, 5, 10, 5, 50)
            assert not c.eval.transductive
        else:
            assert (c.meta_iterations, c.meta_batch, c.learner.inner_lr, c.eval.inner_steps) == (60000, 32, 0.4, 3)
            assert c.eval.transductive and c.train_query == c.shots == c.eval.query


def test_fair_window_and_tails():
    assert gpu_cells.fair_window(100, [10, 20, 10]) == pytest.approx(20)
    assert gpu_cells.fair_window(10, [10, 20]) < 0
    assert gpu_cells.parse_tail("reptile=45, maml=12") == {"reptile": 45.0, "maml": 12.0}
    with pytest.raises(ValueError, match="algorithm=seconds"):
        gpu_cells.parse_tail("reptile:45")


def test_plan_drops_the_costliest_pending_cells_first():
    cells = load_suite(SUITE)  # 1-shot reptile, fomaml, maml, then 5-shot
    est = {"reptile": 45.0, "fomaml": 12.0, "maml": 12.0}
    window, dropped = gpu_cells.plan(300, cells, est, 15)
    assert dropped == set() and window == pytest.approx((300 - 138) / 6)
    window, dropped = gpu_cells.plan(170, cells, est, 15)  # the 5-shot Reptile cell goes first
    assert dropped == {"omniglot-small-5w5s-reptile-batched-nontrans"} and window >= 15
    assert gpu_cells.plan(5, cells, est, 15) == (0.0, {c.cell for c in cells})


def test_the_scheduler_takes_a_deadline_or_a_fixed_number_of_iterations(capsys):
    for args in ([], ["--deadline", "1", "--iterations", "3"]):
        with pytest.raises(SystemExit) as e:
            gpu_cells.main(["--suite", SUITE, "--out", "x", *args])
        assert e.value.code == 2 and "give either --deadline" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_cells.main(["--suite", SUITE, "--out", "x", "--iterations", "0"])
    assert "--iterations must be >= 1" in capsys.readouterr().err


def test_exact_pattern_matches_one_cell():
    cells = load_suite(SUITE)
    for c in cells:
        assert [s.cell for s in select(cells, gpu_cells.exact(c.cell))] == [c.cell]


def test_rehearsal_copy_keeps_cells_and_shrinks_evaluation(tmp_path):
    path = gpu_cells.rehearsal_suite(SUITE, 7, tmp_path)
    assert path.name == f"{SUITE}.toml"
    original, copy = load_suite(SUITE), load_suite(str(path))
    assert [c.cell for c in copy] == [c.cell for c in original]
    assert {c.suite for c in copy} == {SUITE}
    for a, b in zip(original, copy):
        assert b.eval.num_tasks == 7 and b.curve_tasks <= 7 and b.eval_every == 2
        assert (a.learner, a.meta_iterations, a.train_shots) == (b.learner, b.meta_iterations, b.train_shots)


PAPER_ITERS = 3
HANG_GUARD_S = 1800  # only catches a hang: the rehearsal's work is fixed, never cut by a clock


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, omniglot_root, hermetic_cache):
    """Run the rehearsal once on a small fixed amount of work; returns (OUT folder, the finished process)."""
    out, work = tmp_path_factory.mktemp("gpu-out"), tmp_path_factory.mktemp("gpu-work")
    env = dict(os.environ, REHEARSE="1", PYTHON=sys.executable, OUT=str(out), GPU_WORK=str(work),
               OMNIGLOT_ROOT=str(omniglot_root), REPTILE_BENCH_CACHE=str(hermetic_cache),
               BUDGET_S="1", STEPS="scaling eval paper",  # a spent budget: the rehearsal must not look at it
               EVAL_ARGS="--tasks 2 --repeats 1", SCALING_CELLS="[s]caling-reference-reptile-k1",
               PAPER_CELLS="5w1s-fomaml", EVAL_TASKS="4", PAPER_ITERS=str(PAPER_ITERS))
    proc = subprocess.run(["bash", str(SCRIPT), "--rehearse"], env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    return out, proc


@pytest.mark.slow
def test_rehearsal_end_to_end(rehearsal):
    out, proc = rehearsal
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"rows.csv", "curves.csv", "eval.json", "provenance.txt", "log.txt", "scaling.png"} <= set(files)
    assert gpu_bundle.check_out(out) == []
    rows = read_rows(out / "rows.csv")
    assert list(rows.columns) == COLUMNS
    assert sorted(rows.cell) == ["omniglot-small-5w1s-fomaml-batched-trans", "scaling-reference-reptile-k1"]
    paper = rows[rows.suite == SUITE].iloc[0]
    assert paper.eval_tasks == 4 and paper.iterations_run == PAPER_ITERS and paper.meta_iterations == 60000
    assert paper.complete == False and 0 <= paper.metric_mean <= 100  # noqa: E712 (cut short by --max-iterations)
    scaling = rows[rows.suite == "scaling"].iloc[0]
    assert scaling.complete == True and scaling.step_time_median_s > 0  # noqa: E712
    assert list(read_curves(out / "curves.csv").columns) == CURVE_COLUMNS
    prov = (out / "provenance.txt").read_text()
    assert "== steps" in prov and "== summary ==" in prov and "omniglot-small-5w1s-fomaml-batched-trans" in prov
    # The table is the last thing printed before the closing line.
    tail = proc.stdout.strip().splitlines()
    assert tail[-1].startswith("results.sh: rehearse run done") and "step time" in "\n".join(tail[-6:])


@pytest.mark.slow
def test_import_into_results(rehearsal, tmp_path):
    out = rehearsal[0]
    results = tmp_path / "results"
    shutil.copyfile(REPO / "README.md", tmp_path / "README.md")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    args = ["import", "--files", str(out), "--card", "cpu-rehearsal", "--results", str(results), "--root", str(tmp_path)]
    assert gpu_bundle.main(args) == 0
    assert read_rows(results / "cpu-rehearsal" / "rows.csv").shape[0] == 2
    assert (results / "tables" / "paper_tables.md").is_file()
    assert any(p.name.startswith("scaling-") for p in (results / "plots").iterdir())
    throughput = results / "eval" / "throughput_cpu-rehearsal.json"
    assert json.loads(throughput.read_text())["per_protocol"]  # the batched-evaluation table reads it
    assert "../results/eval/throughput_cpu-rehearsal.json" in (tmp_path / "docs" / "performance.md").read_text()
    assert "throughput_cpu-rehearsal" not in (REPO / "docs" / "performance.md").read_text()  # the real page untouched
    assert gpu_bundle.main(args) == 2  # refuses to overwrite without --force
    assert gpu_bundle.main(args + ["--force"]) == 0
