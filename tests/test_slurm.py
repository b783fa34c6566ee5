"""``--launcher submitit`` against a real SLURM cluster: sbatch, job arrays, sacct, requeue, scancel, time limits.

    make slurm-up && make test-slurm && make slurm-down       # the local one-node cluster (benchmarks/slurm/local.sh)

Every test drives the project's own CLI, whose jobs go through ``sbatch`` to the cluster ``SLURM_CONF`` names
(default: the local one under ``.slurm/``). Without a running cluster the tests are skipped with the reason.
Results go under ``.slurm/work/`` (git-ignored), beside the cluster's own files.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from _suites import sine_defaults
from benchmarks.records.rows import read_rows
from benchmarks.running.cluster_status import slurm_states

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_env")]

REPO = Path(__file__).resolve().parents[1]
LOCAL_CONF = REPO / ".slurm" / "etc" / "slurm.conf"
HANG_GUARD_S = 900  # catches a hang only: no test depends on how fast the cluster is
COMPARED = ["cell", "iterations_run", "complete", "metric_mean", "metric_ci95", "final_train_loss", "config_hash",
            "training_key", "eval_tasks"]


def suite_text(groups: dict[str, tuple[str, int]], meta_batch: int = 2) -> str:
    """A sine suite: one cell per group name, {name: (algorithm, meta-iterations)}."""
    return sine_defaults(meta_batch, ", persist_inner_state = false") + "".join(f'\n[[group]]\nname = "{name}"\nalgorithms = ["{alg}"]\nmeta_iterations = {its}\n'
                          for name, (alg, its) in groups.items())


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    """The environment of a command that reaches the cluster; skips every test of this file without one."""
    conf = os.environ.get("SLURM_CONF") or str(LOCAL_CONF)
    if shutil.which("sbatch") is None:
        pytest.skip("no SLURM commands on this machine: `make slurm-up` installs and starts a local cluster")
    if not Path(conf).is_file():
        pytest.skip(f"no SLURM cluster configured ({conf} not found): start one with `make slurm-up`")
    env = {**os.environ, "SLURM_CONF": conf, "CI": "1", "PYTHONPATH": str(REPO)}
    ping = subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True, timeout=60)
    if "UP" not in ping.stdout:
        pytest.skip(f"the SLURM cluster of {conf} does not answer ({(ping.stdout + ping.stderr).strip()[:200]}): "
                    "start it with `make slurm-up`")
    os.environ["SLURM_CONF"] = conf  # for what the tests themselves ask (sacct through cluster_status)
    return env


@pytest.fixture
def work(request) -> Path:
    """A results folder the cluster's jobs can write (not node-local), removed after the test."""
    path = REPO / ".slurm" / "work" / f"{request.node.name[:40]}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cli(env: dict, *args: str, timeout: float = HANG_GUARD_S) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-m", "benchmarks.cli", *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def run_args(suite: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--suite", str(suite), "--out", str(out), "--wandb", "disabled", "--device", "cpu", *extra]


def write_suite(folder: Path, groups: dict, **kw) -> Path:
    path = folder / "jobs.toml"
    path.write_text(suite_text(groups, **kw))
    return path


def local_rows(env: dict, suite: Path, tmp_path: Path, *extra: str) -> pd.DataFrame:
    rc, log = cli(env, *run_args(suite, tmp_path / "local", *extra))
    assert rc == 0, log
    return read_rows(tmp_path / "local" / "jobs" / "rows.csv")


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.sort_values("cell")[COMPARED].reset_index(drop=True),
                                  b.sort_values("cell")[COMPARED].reset_index(drop=True))


def job_ids(out: Path) -> dict[str, str]:
    """{first cell: SLURM job id} from the run's jobs.json."""
    import json

    jobs = json.loads((out / "jobs" / "submitit" / "jobs.json").read_text())
    return {e["cells"][0]: e["job_id"] for e in jobs.values()}


def wait_until(check, what: str) -> None:
    end = time.time() + HANG_GUARD_S
    while not check():
        assert time.time() < end, f"hang guard: {what} did not happen within {HANG_GUARD_S} s"
        time.sleep(0.5)


def sacct(env: dict, job: str, *fields: str, duplicates: bool = False) -> list[dict[str, str]]:
    cmd = ["sacct", "-j", job, "-P", "-X", "-o", ",".join(fields)] + (["--duplicates"] if duplicates else [])
    lines = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    return [dict(zip(fields, line.split("|"))) for line in lines[1:]]


def test_a_suite_is_one_throttled_job_array_with_the_rows_of_a_local_run(slurm_env, work, tmp_path):
    suite = write_suite(work, {"a-fomaml": ("fomaml", 30), "b-maml": ("maml", 30)})
    local = local_rows(slurm_env, suite, tmp_path)
    slurm = ["--launcher", "submitit", "--slurm-array-parallelism", "1", "--slurm-time", "10"]
    rc, planned = cli(slurm_env, "plan", "--suite", str(suite), "--device", "cpu", "--no-probe", "--results", str(work),
                      *slurm)
    assert rc == 0 and "one job array of 2 jobs, at most 1 running at once" in planned, planned
    rc, log = cli(slurm_env, *run_args(suite, work, *slurm))
    assert rc == 0, log
    same_rows(local, read_rows(work / "jobs" / "rows.csv"))
    # What was submitted is what plan showed: one array, throttled to one job at a time.
    (script,) = (work / "jobs" / "submitit").glob("*/*_submission.sh")
    submitted = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --array=0-1%1" in submitted
    assert submitted == [line.strip() for line in planned.splitlines() if line.strip().startswith("#SBATCH")]
    # SLURM's own account: both tasks of the array completed, the second started after the first ended.
    ids = job_ids(work)
    assert slurm_states(list(ids.values())) == {ids["a-fomaml"]: "COMPLETED", ids["b-maml"]: "COMPLETED"}
    array = ids["a-fomaml"].split("_")[0]
    tasks = sorted(sacct(slurm_env, array, "JobID", "State", "Start", "End"), key=lambda r: r["JobID"])
    assert [t["State"] for t in tasks] == ["COMPLETED", "COMPLETED"]
    assert tasks[0]["End"] <= tasks[1]["Start"], tasks  # ISO times: --array=...%1 held the second back
    rc, log = cli(slurm_env, "collect", "--suite", str(suite), "--out", str(work), "--device", "cpu")
    assert rc == 0 and f"finished    a-fomaml: job {ids['a-fomaml']} COMPLETED" in log, log


def test_a_job_preempted_mid_training_is_requeued_and_resumes_to_the_rows_of_an_uninterrupted_run(
        slurm_env, work, tmp_path):
    suite = write_suite(work, {"long-maml": ("maml", 3000)})
    local = local_rows(slurm_env, suite, tmp_path)
    rc, log = cli(slurm_env, *run_args(suite, work, "--launcher", "submitit", "--no-wait"))
    assert rc == 0 and "collect --suite" in log and "--device cpu" in log, log
    job = job_ids(work)["long-maml"]
    ckpts = work / "jobs" / "checkpoints"
    wait_until(lambda: any(ckpts.glob("*.pt")), "a first checkpoint")
    # What SLURM does to a preempted job (or one near its time limit) under submitit's --signal=USR2@...
    subprocess.run(["scancel", "--signal=USR2", job], env=slurm_env, check=True)
    wait_until(lambda: slurm_states([job])[job] == "COMPLETED", "the requeued job's completion")
    same_rows(local, read_rows(work / "jobs" / "rows.csv"))
    runs = sacct(slurm_env, job, "JobID", "State", duplicates=True)
    assert [r["State"] for r in runs] == ["REQUEUED", "COMPLETED"], runs
    logs = "".join(p.read_text() for p in (work / "jobs" / "submitit").glob(f"{job}/*_log.*"))
    assert "Requeued job" in logs and "resuming long-maml" in logs, logs


def test_scancel_of_a_whole_suite_leaves_whole_files_and_says_how_to_resume(slurm_env, work):
    suite = write_suite(work, {"long-maml": ("maml", 30000), "long-fomaml": ("fomaml", 30000)})
    rc, log = cli(slurm_env, *run_args(suite, work, "--launcher", "submitit", "--no-wait"))
    assert rc == 0, log
    ids = job_ids(work)
    ckpts = work / "jobs" / "checkpoints"
    wait_until(lambda: len(list(ckpts.glob("*.pt"))) == 2, "a checkpoint of both trainings")
    subprocess.run(["scancel", ids["long-maml"].split("_")[0]], env=slurm_env, check=True)  # the whole array
    wait_until(lambda: set(slurm_states(list(ids.values())).values()) == {"CANCELLED"}, "both jobs cancelled")
    rows = work / "jobs" / "rows.csv"
    if rows.exists():  # whole, every row checked, and none of a cancelled training
        assert not set(read_rows(rows).cell) & set(ids)
    collect = ["collect", "--suite", str(suite), "--out", str(work), "--device", "cpu"]
    # SLURM says CANCELLED at once; the jobs' processes hold their trainings' locks until KillWait's SIGKILL.
    wait_until(lambda: cli(slurm_env, *collect)[0] == 1, "collect reporting the cancelled trainings as failed")
    rc, log = cli(slurm_env, *collect)
    for cell, job in ids.items():
        line = next(line for line in log.splitlines() if line.strip().startswith(f"failed      {cell}"))
        assert f"job {job} CANCELLED (cancelled); rerun python -m benchmarks.cli run --suite {suite}" in line, line
        assert "and it resumes from its checkpoint; log: " in line, line


def test_a_job_killed_at_its_time_limit_is_reported_with_its_state_and_the_command_that_resumes_it(slurm_env, work):
    suite = write_suite(work, {"long-maml": ("maml", 1_000_000)})
    # --slurm-signal-delay 0: no warning before the limit, so SLURM kills the job at it (state TIMEOUT).
    args = run_args(suite, work, "--launcher", "submitit", "--slurm-time", "1", "--slurm-signal-delay", "0")
    rc, log = cli(slurm_env, *args)
    assert rc == 1, log
    (job,) = job_ids(work).values()
    assert slurm_states([job]) == {job: "TIMEOUT"}
    line = next(line for line in log.splitlines() if line.strip().startswith("failed      long-maml"))
    assert f"job {job} TIMEOUT (killed at its time limit); rerun python -m benchmarks.cli {' '.join(args)}" in line
    assert "and it resumes from its checkpoint" in line and any((work / "jobs" / "checkpoints").glob("*.pt"))


def test_ranks_run_as_tasks_of_one_job_and_give_the_rows_of_local_ranks(slurm_env, work, tmp_path):
    suite = write_suite(work, {"dp-maml": ("maml", 20)}, meta_batch=4)
    local = local_rows(slurm_env, suite, tmp_path, "--ranks", "2")
    rc, log = cli(slurm_env, *run_args(suite, work, "--launcher", "submitit", "--ranks", "2"))
    assert rc == 0, log
    rows = read_rows(work / "jobs" / "rows.csv")
    same_rows(local, rows)
    assert rows.world_size.tolist() == [2]
    (script,) = (work / "jobs" / "submitit").glob("*/*_submission.sh")
    assert "#SBATCH --ntasks-per-node=2" in script.read_text()
