"""Data-parallel meta-batches (torch.distributed, gloo, 2 processes on this CPU): the same meta-parameters as
one process, the same rows through the CLI, and clear refusals.

    .venv/bin/python -m pytest -q tests/test_distributed.py
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from _dist_worker import BACKENDS, CASES, run
from benchmarks import cli
from benchmarks.records.rows import read_rows
from benchmarks.running import distributed, runner

REPO = Path(__file__).resolve().parents[1]


def env() -> dict:
    return {**os.environ, "CI": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_ranks_end_with_the_meta_parameters_of_one_process(tmp_path):
    out = tmp_path / "params.pt"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(REPO / "tests" / "_dist_worker.py"), str(out)], env=env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    got = torch.load(out, weights_only=True)
    for name in CASES:
        for backend in BACKENDS:
            single = run(name, backend, None)
            rel = ((got[f"{name}/{backend}"] - single).norm() / single.norm()).item()
            assert rel < 1e-12, (name, backend, rel)


def test_shares_cover_the_meta_batch_once():
    for tasks in (2, 5, 32):
        for world in range(1, tasks + 1):
            shares = [distributed.share(tasks, distributed.Ranks(r, world, r)) for r in range(world)]
            assert [i for s in shares for i in range(s.start, s.stop)] == list(range(tasks))
            assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1


@pytest.mark.slow
def test_the_cli_with_two_ranks_writes_the_rows_of_one_process(omniglot_root, tmp_path):
    cells = "omniglot-5w1s-fomaml,omniglot-5w1s-maml"
    rows = {}
    for n in ("1", "2"):
        out = tmp_path / f"ranks{n}"
        p = subprocess.run([sys.executable, "-m", "benchmarks.cli", "run", "--suite", "smoke", "--cells", cells, "--out",
                            str(out), "--wandb", "disabled", "--device", "cpu", "--ranks", n],
                           cwd=REPO, env={**env(), "OMNIGLOT_ROOT": str(omniglot_root)}, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        rows[n] = read_rows(out / "smoke" / "rows.csv").set_index("cell").sort_index()
    assert list(rows["2"].world_size) == [2, 2] and list(rows["1"].world_size) == [1, 1]
    pd.testing.assert_series_equal(rows["1"].metric_mean, rows["2"].metric_mean)
    assert (rows["1"].config_hash == rows["2"].config_hash).all()


def test_what_cannot_be_split_is_refused_before_any_work(tmp_path, capsys):
    assert cli.main(["run", "--suite", "smoke", "--cells", "omniglot-5w1s-reptile", "--out", str(tmp_path),
                     "--device", "cpu", "--ranks", "2"]) == 2
    assert "persist_inner_state carries one inner Adam state" in capsys.readouterr().err
    assert cli.main(["run", "--suite", "smoke", "--cells", "sine-maml", "--out", str(tmp_path), "--device", "cpu",
                     "--ranks", "3"]) == 2
    assert "3 ranks for a meta-batch of 2 tasks" in capsys.readouterr().err
    assert cli.main(["run", "--suite", "smoke", "--out", str(tmp_path), "--device", "cpu", "--ranks", "0"]) == 2
    assert not (tmp_path / "smoke" / "rows.csv").exists()


def test_a_rank_without_the_rendezvous_environment_is_told_how_to_start(tmp_path, capsys, monkeypatch):
    for key in distributed.RENDEZVOUS:
        monkeypatch.delenv(key, raising=False)
    from benchmarks.running.suites import load_suite

    cell = cli.with_device(load_suite("smoke"), "cpu")[1]
    assert runner.main(["--cells-json", f"[{cell.to_json()}]", "--out", str(tmp_path), "--distributed"]) == 2
    err = capsys.readouterr().err
    assert "MASTER_ADDR" in err and "torchrun --standalone --nproc-per-node N" in err


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_others_and_no_row_is_written(tmp_path):
    suite = tmp_path / "long.toml"
    suite.write_text("""
[[group]]
name = "long-{algorithm}"
dataset = "sine"
split = "maml"
ways = 1
shots = 5
train_query = 5
meta_batch = 2
meta_iterations = 20000
checkpoint_every = 5
algorithms = ["maml"]
learner = { inner_steps = 1, inner_lr = 0.01, inner_optimizer = "sgd", meta_lr = 0.01 }
eval = { num_tasks = 4, query = 10, inner_steps = 1, inner_optimizer = "sgd", inner_lr = 0.01, inner_batch = 0, seed = 100 }
""")
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.cli", "run", "--suite", str(suite), "--out", str(tmp_path),
                             "--wandb", "disabled", "--device", "cpu", "--ranks", "2"], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    ckpts = tmp_path / "long" / "checkpoints"
    while not list(ckpts.glob("*.pt")):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else "slow"
        time.sleep(0.05)
    ranks = [int(p.name) for p in Path("/proc").glob("[0-9]*") if _is_rank(p, tmp_path)]
    assert len(ranks) == 2
    os.kill(max(ranks), signal.SIGKILL)  # one rank (of two) dies
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 1, out
    assert "failed cells: long-maml" in out
    assert not (tmp_path / "long" / "rows.csv").exists()
    time.sleep(1)
    assert not [p for p in Path("/proc").glob("[0-9]*") if _is_rank(p, tmp_path)]  # the other rank stopped too


def _is_rank(proc_dir: Path, out: Path) -> bool:
    try:
        cmd = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "benchmarks.running.runner" in cmd and "--distributed" in cmd and str(out) in cmd and "torch.distributed.run" not in cmd
