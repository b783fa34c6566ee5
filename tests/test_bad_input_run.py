"""Bad input to a run is refused before any work, no result file ever holds a broken or NaN row, and
damaged files are reported by name (and, for checkpoints, moved aside).

    .venv/bin/python -m pytest -q tests/test_bad_input_run.py
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from _rows import valid_row
from _tiny import one_thread  # noqa: F401 (autouse: every test on one thread)
from algorithms import MetaConfig
from algorithms.evaluation import EvalConfig
from benchmarks import cli
from benchmarks.records.rows import ResultsFormatError, read_rows, write_row
from benchmarks.running import checkpoints, runner
from benchmarks.running.config import CellConfig
from benchmarks.running.suites import SuiteError, load_suite
from datasets.tasks import ClassPool

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT = """
[[group]]
name = "{{dataset}}-{{ways}}w{{shots}}s-{{algorithm}}"
dataset = "omniglot"
split = "small"
algorithms = ["fomaml"]
meta_iterations = 2
train_query = 1
{extra}
"""


def suite(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("extra, expected", [
    ("ways = 200\neval = { num_tasks = 4 }",
     ["evaluation part omniglot/small/test has 106 classes, the cell asks for ways = 200"]),
    ("ways = 600\neval = { num_tasks = 4 }",
     ["training part omniglot/small/train has 544 classes, the cell asks for ways = 600",
      "evaluation part omniglot/small/test has 106 classes, the cell asks for ways = 600"]),
    ("ways = 5\ntrain_shots = 25\neval = { num_tasks = 4 }",
     ["training part omniglot/small/train has 20 examples per class, the cell asks for train_shots + train_query = 25 + 1 = 26"]),
    ("ways = 5\nshots = 10\neval = { num_tasks = 4, query = 15 }",
     ["evaluation part omniglot/small/test has 20 examples per class, the cell asks for shots + eval.query = 10 + 15 = 25"]),
])
def test_impossible_task_shapes_are_refused_before_any_cell_starts(omniglot_root, tmp_path, monkeypatch, capsys,
                                                                    extra, expected):
    monkeypatch.setenv("OMNIGLOT_ROOT", str(omniglot_root))
    path = suite(tmp_path, OMNIGLOT.format(extra=extra))
    assert cli.main(["run", "--suite", str(path), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "do not fit their data (nothing was run)" in err
    for line in expected:
        assert line in err
    assert not (tmp_path / "out" / "bad" / "rows.csv").exists() and not (tmp_path / "out" / "bad" / "checkpoints").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_zip_is_one_message_naming_the_file_and_exit_3(omniglot_root, tmp_path, damage):
    root = tmp_path / "omniglot"
    root.mkdir()
    for name in ("images_background_small1.zip", "images_background_small2.zip"):
        shutil.copy(omniglot_root / name, root / name)
    z = root / "images_background_small2.zip"
    data = bytearray(z.read_bytes())
    if damage == "truncate":
        z.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 2] ^= 0xFF
        z.write_bytes(bytes(data))
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO), "OMNIGLOT_ROOT": str(root),
           "REPTILE_BENCH_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-m", "benchmarks.cli", "run", "--suite", "smoke", "--cells", "omniglot",
                        "--out", str(tmp_path / "out"), "--wandb", "disabled", "--device", "cpu"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 3, p.stderr
    assert "Traceback" not in p.stderr
    assert str(z) in p.stderr and "md5 checksum" in p.stderr and "fetch it again" in p.stderr
    assert not (tmp_path / "out" / "smoke" / "rows.csv").exists()


@pytest.mark.parametrize("key, value, message", [
    ("split", '"tiny"', "split: unknown omniglot split 'tiny'; valid splits: paper, small"),
    ("train_part", '"val"', "train_part: unknown part 'val' of omniglot/small (it has no val part)"),
    ("eval_part", '"dev"', "eval_part: unknown part 'dev' of omniglot/small"),
])
def test_unknown_split_or_part_names_stop_the_suite_at_load(tmp_path, key, value, message):
    text = OMNIGLOT.format(extra=f"ways = 5\n{key} = {value}")
    path = suite(tmp_path, text.replace('split = "small"\n', "") if key == "split" else text)
    with pytest.raises(SuiteError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_suite(str(path))


def test_one_evaluation_task_is_refused_at_suite_load(tmp_path):
    path = suite(tmp_path, OMNIGLOT.format(extra="ways = 5\neval = { num_tasks = 1 }"))
    with pytest.raises(SuiteError, match="a 95% CI needs at least two tasks"):
        load_suite(str(path))
    path = suite(tmp_path, OMNIGLOT.format(extra="ways = 5\neval_every = 1\ncurve_tasks = 1"))
    with pytest.raises(SuiteError, match="curve_tasks >= 2"):
        load_suite(str(path))


def omniglot_cell(**learner) -> CellConfig:
    return CellConfig(suite="t", cell="blow", dataset="omniglot", split="small", ways=5, shots=1, train_query=1,
                      meta_batch=2, meta_iterations=12, checkpoint_every=4, device="cpu",
                      learner=MetaConfig(algorithm="fomaml", inner_steps=1, **{"inner_lr": 0.4, "meta_lr": 1e-3, **learner}),
                      eval=EvalConfig(num_tasks=4, inner_steps=1, inner_optimizer="sgd", inner_lr=0.4, inner_batch=0,
                                      mode="serial")).validate()


@pytest.mark.parametrize("learner", [{"inner_lr": 1e6}, {"meta_lr": 1e6}])
def test_a_blown_up_but_finite_training_is_divergence_with_no_row(omniglot_root, tmp_path, monkeypatch, capsys, learner):
    monkeypatch.setenv("OMNIGLOT_ROOT", str(omniglot_root))
    cell = omniglot_cell(**learner)
    rc = runner.main(["--cells-json", f"[{cell.to_json()}]", "--out", str(tmp_path), "--wandb", "disabled"])
    err = capsys.readouterr().err
    assert rc == runner.EXIT_DIVERGED, err
    assert "diverged, no row written" in err and ("x the starting loss" in err or "loss became" in err)
    assert not (tmp_path / "t" / "rows.csv").exists()


def test_a_diverged_evaluation_writes_no_row(tmp_path, capsys):
    cell = CellConfig(suite="t", cell="sine", dataset="sine", split="maml", ways=1, shots=5, train_query=5, meta_batch=2,
                      meta_iterations=2, device="cpu",
                      learner=MetaConfig(algorithm="fomaml", inner_steps=1, inner_lr=0.01, inner_optimizer="sgd", meta_lr=0.01),
                      eval=EvalConfig(num_tasks=4, query=10, inner_steps=10, inner_optimizer="sgd", inner_lr=1e6,
                                      inner_batch=0, seed=100, mode="serial")).validate()
    assert runner.main(["--cells-json", f"[{cell.to_json()}]", "--out", str(tmp_path), "--wandb", "disabled"]) == 4
    assert "evaluation diverged" in capsys.readouterr().err
    assert not (tmp_path / "t" / "rows.csv").exists()


def test_nan_or_partial_rows_are_never_written(tmp_path):
    path = tmp_path / "rows.csv"
    for bad, message in ((dict(metric_mean=float("nan")), "metric_mean must be a finite"),
                         (dict(metric_ci95=float("inf")), "metric_ci95 must be a finite"),
                         (dict(eval_tasks=1), "needs at least two evaluation tasks"),
                         (dict(config_hash=""), "config_hash must be 12 hexadecimal digits"),
                         (dict(step_time_total_s=None), "step_time_total_s is empty")):
        with pytest.raises(ValueError, match=message):
            write_row(path, valid_row(**bad))
    assert not path.exists()


def test_a_rows_file_cut_in_the_middle_of_a_line_is_refused_by_name_and_line(tmp_path, capsys):
    folder = tmp_path / "smoke"
    path = folder / "rows.csv"
    write_row(path, valid_row(cell="one"))
    write_row(path, valid_row(cell="two"))
    text = path.read_text()
    cut = text[: text.rindex("\n", 0, len(text) - 1) + 1] + text.splitlines()[-1][:40]  # outside any quoted field
    path.write_text(cut)
    with pytest.raises(ResultsFormatError, match=rf"{path}, line 3 \(cell 'two'\): .*delete that line or move"):
        read_rows(path)
    with pytest.raises(ResultsFormatError):
        write_row(path, valid_row(cell="three"))  # never rewritten with the partial row inside
    assert path.read_text() == cut
    assert cli.main(["run", "--suite", "smoke", "--out", str(tmp_path), "--device", "cpu"]) == 2
    assert "line 3" in capsys.readouterr().err and path.read_text() == cut


def test_a_csv_that_does_not_parse_names_the_file(tmp_path):
    path = tmp_path / "rows.csv"
    write_row(path, valid_row(cell="one"))
    path.write_text(path.read_text() + '"an unterminated quoted field\n')
    with pytest.raises(ResultsFormatError, match=f"{path} is not a readable CSV"):
        read_rows(path)


def tiny_sine() -> CellConfig:
    return CellConfig(suite="t", cell="sine", dataset="sine", split="maml", ways=1, shots=5, train_query=5, meta_batch=2,
                      meta_iterations=4, checkpoint_every=2, device="cpu",
                      learner=MetaConfig(algorithm="fomaml", inner_steps=1, inner_lr=0.01, inner_optimizer="sgd", meta_lr=0.01),
                      eval=EvalConfig(num_tasks=4, query=10, inner_steps=1, inner_optimizer="sgd", inner_lr=0.01,
                                      inner_batch=0, seed=100, mode="serial")).validate()


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("content", ["garbage", "unsafe"])
def test_an_unreadable_or_unsafe_checkpoint_is_moved_aside_and_the_training_starts_afresh(tmp_path, capsys, content):
    cell = tiny_sine()
    clean = runner.run_cell(cell, tmp_path / "clean", wandb="disabled")
    path = runner.checkpoint_path(tmp_path, cell)
    path.parent.mkdir(parents=True)
    if content == "garbage":
        path.write_bytes(b"PK\x03\x04 not really a checkpoint")
    else:
        torch.save({"learner": Evil()}, path)
    row = runner.run_cell(cell, tmp_path, wandb="disabled")
    err = capsys.readouterr().err
    assert "moved it to" in err and "starting this training afresh" in err
    assert ("refused by torch as unsafe" in err) == (content == "unsafe")
    assert ("it calls posix.system" in err) == (content == "unsafe")  # what the pickle would have run
    assert "weights_only" not in err  # torch's advice to turn the safety off is not passed on
    aside = list(path.parent.glob(f"{path.name}.unreadable-*"))
    assert len(aside) == 1 and aside[0].stat().st_size > 0  # kept, not deleted
    assert row["metric_mean"] == clean["metric_mean"] and row["iterations_run"] == 4


def test_a_training_held_by_another_run_is_skipped_with_a_message(tmp_path, capsys):
    cell = tiny_sine()
    lock = runner.checkpoint_path(tmp_path, cell).with_suffix(".lock")
    with checkpoints.lock(lock, "test"):
        rc = runner.main(["--cells-json", f"[{cell.to_json()}]", "--out", str(tmp_path), "--wandb", "disabled"])
    assert rc == runner.EXIT_BUSY
    assert f"being trained by another run (pid {os.getpid()}" in capsys.readouterr().err
    assert not (tmp_path / "t" / "rows.csv").exists()
    assert runner.main(["--cells-json", f"[{cell.to_json()}]", "--out", str(tmp_path), "--wandb", "disabled"]) == 0


def test_device_conflict_jobs_and_counts_are_refused_clearly(tmp_path, capsys):
    path = suite(tmp_path, OMNIGLOT.format(extra='ways = 5\ndevice = "cuda"'))
    assert cli.main(["run", "--suite", str(path), "--out", str(tmp_path), "--device", "cpu"]) == 2
    assert "its suite sets device = 'cuda' but --device is 'cpu'" in capsys.readouterr().err
    for jobs, message in (("0", "--jobs must be >= 1"), ("two", "--jobs takes a number")):
        assert cli.main(["run", "--suite", "smoke", "--out", str(tmp_path), "--device", "cpu", "--jobs", jobs]) == 2
        assert message in capsys.readouterr().err
    pool = ClassPool(torch.rand(5, 4, 1, 2, 2))
    with pytest.raises(ValueError, match="ways must be an integer, got 5.5"):
        pool.sample_task(5.5, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="needs at least one task index"):
        pool.sample_batch(5, 1, 1, 0, [])


def test_more_jobs_than_cores_is_said(tmp_path, capsys, monkeypatch):
    from benchmarks.running import launch

    monkeypatch.setattr(launch, "spawn", lambda cmd, env: replace_proc(0))
    n = len(launch.available_cpus())
    cli.main(["run", "--suite", "smoke", "--cells", "sine-maml", "--out", str(tmp_path), "--device", "cpu",
              "--jobs", str(n + 1)])
    assert f"--jobs {n + 1} x 1 thread(s) on {n} core(s): trainings will share cores" in capsys.readouterr().err


class replace_proc:  # noqa: N801 - a stand-in Popen
    def __init__(self, code):
        self.returncode = code

    def poll(self):
        return self.returncode


def test_cli_refuses_nothing_it_should_accept(tmp_path):
    cell = replace(tiny_sine(), device="auto")
    assert cli.with_device([cell], None)[0].device == "cpu"  # auto on a machine without CUDA
