"""The submitit launcher with submitit's local executor: real processes, real job folders, real pickling.

    .venv/bin/python -m pytest -q tests/test_cluster.py

Rows of a suite run as jobs equal the local launcher's (every non-timing column); a job killed mid-training
and resubmitted, or preempted and requeued, resumes and gives the same rows; a failing job is reported with
its log; `collect` reports what finished; no SLURM and no `--cluster local` is a clear refusal.
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

from _suites import sine_suite
from benchmarks.records.rows import read_rows

REPO = Path(__file__).resolve().parents[1]
SUITE = sine_suite(["fomaml", "reptile"], 1500)
COMPARED = ["cell", "iterations_run", "complete", "metric_mean", "metric_ci95", "final_train_loss", "config_hash",
            "training_key", "training_cells", "eval_tasks"]


def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "benchmarks.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=400)
    return proc.returncode, out + err


def run_args(suite: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--suite", str(suite), "--out", str(out), "--wandb", "disabled", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suites") / "jobs.toml"
    path.write_text(SUITE)
    return path


@pytest.fixture(scope="module")
def local_rows(suite_file, tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("local")
    rc, log = finish(cli(*run_args(suite_file, out)))
    assert rc == 0, log
    return read_rows(out / "jobs" / "rows.csv")


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.sort_values("cell")[COMPARED].reset_index(drop=True),
                                  b.sort_values("cell")[COMPARED].reset_index(drop=True))


def job_processes(out: Path) -> list[int]:
    pids = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            environ = (p / "environ").read_bytes()
            cmdline = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if b"submitit.core._submit" in cmdline and str(out).encode() in cmdline + environ:
            pids.append(int(p.name))
    return pids


@pytest.mark.slow
def test_jobs_give_the_rows_of_the_local_launcher_and_collect_reports_them(suite_file, local_rows, tmp_path):
    rc, log = finish(cli(*run_args(suite_file, tmp_path, "--launcher", "submitit", "--cluster", "local")))
    assert rc == 0, log
    assert "3 training(s) submitted (4 cells)" in log  # long-maml and long2-maml share a training
    same_rows(local_rows, read_rows(tmp_path / "jobs" / "rows.csv"))
    jobs = list((tmp_path / "jobs" / "submitit").glob("*/*_0_log.out"))
    assert len(jobs) == 3
    rc, log = finish(cli("collect", "--suite", str(suite_file), "--out", str(tmp_path), "--device", "cpu"))
    assert rc == 0 and "3 training(s): 3 finished" in log, log
    rc, log = finish(cli(*run_args(suite_file, tmp_path, "--launcher", "submitit", "--cluster", "local")))
    from benchmarks.records import provenance

    if provenance.git_dirty(exclude=tmp_path) is False:  # (with uncommitted changes no row counts as finished)
        assert rc == 0 and "0 training(s) submitted" in log, log  # finished work is not resubmitted


@pytest.mark.slow
def test_a_job_killed_mid_training_is_resubmitted_and_resumes(suite_file, local_rows, tmp_path):
    # The local jobs inherit the CLI's output: read it from a file, not a pipe (a pipe stays open while they run).
    log_path = tmp_path / "submit.log"
    with open(log_path, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "benchmarks.cli",
                             *run_args(suite_file, tmp_path, "--launcher", "submitit", "--cluster", "local", "--no-wait")],
                            cwd=REPO, env={**os.environ, "CI": "1", "PYTHONPATH": str(REPO)}, stdout=f, stderr=f,
                            timeout=120).returncode
    assert rc == 0 and "collect" in log_path.read_text(), log_path.read_text()
    ckpt = long_checkpoint(suite_file, tmp_path)
    deadline = time.time() + 120
    while not ckpt.exists():
        assert time.time() < deadline, "no checkpoint of the long training within 120 s"
        time.sleep(0.02)
    for pid in job_processes(tmp_path):
        os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    rc, log = finish(cli("collect", "--suite", str(suite_file), "--out", str(tmp_path), "--device", "cpu"))
    assert rc == 1 and "failed      long-maml" in log and "log: " in log, log
    assert "long-maml" not in read_rows(tmp_path / "jobs" / "rows.csv").cell.tolist()
    rc, log = finish(cli(*run_args(suite_file, tmp_path, "--launcher", "submitit", "--cluster", "local")))
    assert rc == 0, log
    assert "training(s) submitted" in log and "0 training(s) submitted" not in log
    same_rows(local_rows, read_rows(tmp_path / "jobs" / "rows.csv"))


def long_checkpoint(suite: Path, out: Path) -> Path:
    from benchmarks import cli as cli_module
    from benchmarks.running import runner
    from benchmarks.running.suites import load_suite

    (long,) = [c for c in cli_module.with_device(load_suite(str(suite)), "cpu") if c.cell == "long-maml"]
    return runner.checkpoint_path(out, long)


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_resumes_with_the_same_rows(suite_file, local_rows, tmp_path):
    from benchmarks import cli as cli_module
    from benchmarks.records import provenance
    from benchmarks.running import cluster
    from benchmarks.running.suites import load_suite
    from benchmarks.running.trainings import group

    cells = cli_module.with_device(load_suite(str(suite_file)), "cpu")
    (long,) = [t for t in group(cells) if t.first.cell == "long-maml"]
    git = provenance.git_state(exclude=tmp_path)
    job_for = lambda t: cluster.TrainingJob([c.to_dict() for c in t.cells], str(tmp_path), "disabled", "pytest",  # noqa: E731
                                            git, 1, 1)
    jobs = cluster.submit([long], tmp_path, "local", cluster.SlurmSettings(time_minutes=10), job_for)
    job = jobs[long.key]
    ckpt = tmp_path / "jobs" / "checkpoints" / f"{long.key}.pt"
    deadline = time.time() + 120
    while not ckpt.exists():
        assert time.time() < deadline and not job.done(), "no checkpoint within 120 s"
        time.sleep(0.05)
    # What SLURM does on preemption or near the time limit: signal the job's task (submitit then asks
    # TrainingJob.checkpoint, saves the requeue and exits; the local controller starts the task again).
    from submitit.local.local import LocalJobEnvironment

    (task,) = job_processes(tmp_path)
    os.kill(task, LocalJobEnvironment._usr_sig())
    assert job.result() == ["long-maml", "long2-maml"]
    log = Path(job.paths.stdout).read_text() + Path(job.paths.stderr).read_text()
    assert "Caught signal" in log and "Requeued job" in log and "resuming long-maml" in log, log
    rows = read_rows(tmp_path / "jobs" / "rows.csv")
    same_rows(local_rows[local_rows.cell.str.startswith("long")], rows)


@pytest.mark.slow
def test_a_failing_job_is_reported_with_its_log(tmp_path):
    suite = tmp_path / "bad.toml"
    suite.write_text(SUITE.replace('meta_lr = 0.01 }', 'meta_lr = 0.01 }\ndiverge_patience = 1').replace(
        'algorithms = ["maml"]\nmeta_iterations = 1500\n\n[[group]]', 'algorithms = ["maml"]\nmeta_iterations = 1500\n'
        'learner = { inner_steps = 1, inner_lr = 1e30, inner_optimizer = "sgd", meta_lr = 0.01 }\n\n[[group]]', 1))
    rc, log = finish(cli(*run_args(suite, tmp_path, "--launcher", "submitit", "--cluster", "local")))
    assert rc == 1, log
    line = next(line for line in log.splitlines() if line.startswith("error: long-maml"))
    assert "failed (algorithms.base.DivergedError: " in line, line
    log_file = Path(line.split("log: ")[1])
    assert log_file.is_file() and "DivergedError" in log_file.read_text()
    assert "short-fomaml" in set(read_rows(tmp_path / "bad" / "rows.csv").cell)  # the other jobs finished


def test_no_slurm_and_no_cluster_local_is_refused_naming_the_option(tmp_path, capsys, monkeypatch):
    import shutil

    from benchmarks import cli as cli_module

    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert cli_module.main(["run", "--suite", "smoke", "--out", str(tmp_path), "--device", "cpu",
                            "--launcher", "submitit"]) == 2
    err = capsys.readouterr().err
    assert "no SLURM on this machine (sbatch not found); pass --cluster local" in err
    assert cli_module.main(["run", "--suite", "smoke", "--out", str(tmp_path), "--device", "cpu", "--no-wait"]) == 2
    assert "--no-wait and --cluster go with --launcher submitit" in capsys.readouterr().err
    assert cli_module.main(["run", "--suite", "smoke", "--out", str(tmp_path), "--device", "cpu", "--launcher",
                            "submitit", "--cluster", "local", "--slurm-extra", "qos"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_a_node_local_results_folder_is_refused_for_slurm(tmp_path, capsys, monkeypatch):
    import shutil

    from benchmarks import cli as cli_module

    from benchmarks import cli_cluster
    from benchmarks.running import cluster

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/sbatch")  # as if on a SLURM login node
    monkeypatch.setattr(cluster, "only_this_machine", lambda: False)  # ... of a cluster of other nodes
    assert cli_module.main(["run", "--suite", "smoke", "--out", "/tmp/results-here", "--device", "cpu",
                            "--launcher", "submitit"]) == 2
    assert "is node-local" in capsys.readouterr().err
    monkeypatch.setattr(cluster, "only_this_machine", lambda: True)  # a one-node cluster: /tmp is what its jobs see
    cli_cluster.check_shared(Path("/tmp/results-here"))


def test_plan_shows_the_job_array_and_sbatch_header_it_would_submit_without_submitting(tmp_path, capsys):
    from benchmarks import cli as cli_module

    args = ["plan", "--suite", "smoke", "--device", "cpu", "--no-probe", "--results", str(tmp_path), "--launcher",
            "submitit", "--slurm-partition", "gpu", "--slurm-time", "30", "--slurm-array-parallelism", "3",
            "--slurm-signal-delay", "45", "--slurm-extra", "account=lab"]
    assert cli_module.main(args) == 0
    out = capsys.readouterr().out
    from benchmarks.running.suites import load_suite
    from benchmarks.running.trainings import group

    trainings = len(group(cli_module.with_device(load_suite("smoke"), "cpu")))
    header = [line.strip() for line in out.splitlines() if line.strip().startswith("#SBATCH")]
    assert f"one job array of {trainings} jobs, at most 3 running at once" in out and "partition gpu" in out, out
    assert {"#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --signal=USR2@45", "#SBATCH --account=lab",
            "#SBATCH --cpus-per-task=1", "#SBATCH --ntasks-per-node=1"} <= set(header), header
    assert f"#SBATCH --array=0-{trainings - 1}%3" in header
    assert not (tmp_path / "smoke").exists()  # nothing submitted, nothing written
    assert cli_module.main(args[:-4] + ["--slurm-signal-delay", "-1"]) == 2
    assert "signal_delay_s must be an integer >= 0" in capsys.readouterr().err
