"""The submitit launcher: every shared training (with the evaluations of its cells) becomes one SLURM job.

    python -m benchmarks.cli run --suite paper-omniglot --launcher submitit --slurm-partition gpu --slurm-gpus 1
    python -m benchmarks.cli run --suite smoke --launcher submitit --cluster local      # real processes, no SLURM
    python -m benchmarks.cli collect --suite paper-omniglot                           # what finished, failed, runs

submitit (the library the field uses to send Python jobs to SLURM) pickles a ``TrainingJob`` and runs it on
a node; the job runs the same ``runner.run_training`` as the local launcher, writing rows, curves and
per-task scores into the results folder under its lock: the folder must be on a filesystem every node
shares (with working ``flock``). Preemption or a time limit: submitit signals the job, which asks to be
requeued (``TrainingJob.checkpoint``); the requeued job resumes from the training's checkpoint and ends
with the rows an uninterrupted run gives.

Job folders and logs live under ``<out>/<suite>/submitit/``; ``jobs.json`` there records which job runs
which training, so that a rerun of the same command or ``collect`` reports each training as finished
(its rows are complete), failed (with its log), running (its lock is held, or its job says so) or not
started, and a rerun resubmits only what did not finish.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.records.rows import ROWS_FILE, read_rows_or_empty
from benchmarks.running import checkpoints
from benchmarks.running.trainings import Training

JOBS_FILE = "jobs.json"
SLURM_KEYS = ("partition", "gpus", "cpus", "time_minutes", "mem_gb", "array_parallelism", "extra")


class ClusterError(ValueError):
    """The cluster settings are wrong or SLURM is not here; the message names the option."""


@dataclass
class SlurmSettings:
    """SLURM settings of a run: a suite's ``[slurm]`` table, overridden by the CLI's ``--slurm-*`` flags."""

    partition: str | None = None
    """``--partition`` of every job (None: the cluster's default)."""
    gpus: int = 0
    """GPUs per job (one training per job)."""
    cpus: int = 1
    """CPUs per job (the training's torch threads should not exceed it)."""
    time_minutes: int = 240
    """Time limit per job; a job stopped by it is requeued and resumes from its checkpoint."""
    mem_gb: float | None = None
    """Memory per job (None: the cluster's default)."""
    array_parallelism: int = 256
    """Most jobs of the run's job array running at once."""
    extra: dict[str, Any] = field(default_factory=dict)
    """More sbatch options, e.g. {"qos": "high", "account": "lab"}."""

    @classmethod
    def merged(cls, suite_table: dict[str, Any], overrides: dict[str, Any]) -> "SlurmSettings":
        unknown = sorted(set(suite_table) - set(SLURM_KEYS))
        if unknown:
            raise ClusterError(f"[slurm] table: unknown key(s) {unknown}; valid: {', '.join(SLURM_KEYS)}")
        s = cls(**{**suite_table, **{k: v for k, v in overrides.items() if v is not None}})
        for name in ("gpus", "cpus", "time_minutes", "array_parallelism"):
            v = getattr(s, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "gpus" else 1):
                raise ClusterError(f"SLURM setting {name} must be an integer >= {0 if name == 'gpus' else 1}, got {v!r}")
        if not isinstance(s.extra, dict):
            raise ClusterError(f"SLURM setting extra must be a table of sbatch options, got {s.extra!r}")
        return s


def check_slurm() -> None:
    """ClusterError unless SLURM's ``sbatch`` is on this machine's PATH."""
    if shutil.which("sbatch") is None:
        raise ClusterError("--launcher submitit: no SLURM on this machine (sbatch not found); pass --cluster local to "
                           "run the same jobs as local processes, or run on a SLURM login node")


def executor(folder: Path, cluster: str, slurm: SlurmSettings):
    """A submitit executor for ``cluster`` (``slurm``, or ``local``: the same jobs as local processes)."""
    import submitit

    if cluster == "slurm":
        check_slurm()
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)  # one folder per job, named by its id
    params: dict[str, Any] = {"timeout_min": slurm.time_minutes, "cpus_per_task": slurm.cpus,
                              "gpus_per_node": slurm.gpus, "tasks_per_node": 1, "nodes": 1,
                              "name": "reptile-bench"}
    if cluster == "slurm":
        params.update(slurm_array_parallelism=slurm.array_parallelism, slurm_additional_parameters=dict(slurm.extra))
        if slurm.partition:
            params["slurm_partition"] = slurm.partition
        if slurm.mem_gb:
            params["mem_gb"] = slurm.mem_gb
    ex.update_parameters(**params)
    return ex


class TrainingJob:
    """One shared training with its cells' evaluations, as a submitit job (picklable; requeued when stopped)."""

    def __init__(self, cells: list[dict], out: str, wandb: str, command: str, git: dict, threads: int, jobs: int):
        self.cells, self.out, self.wandb, self.command, self.git = cells, out, wandb, command, git
        self.threads, self.jobs = threads, jobs

    def __call__(self) -> list[str]:
        import torch

        from benchmarks.running.config import CellConfig
        from benchmarks.running.runner import run_training

        from benchmarks.running.allocator import keep_freed_memory

        keep_freed_memory()
        if self.threads:
            torch.set_num_threads(self.threads)
        cells = [CellConfig.from_dict(d).validate() for d in self.cells]
        rows = run_training(cells, Path(self.out), None, self.wandb, self.command, self.git, self.jobs)
        return [r["cell"] for r in rows]

    def checkpoint(self, *args, **kwargs):
        """Preempted or out of time: requeue this very job; it resumes from the training's checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def registry(folder: Path) -> dict[str, dict]:
    path = folder / JOBS_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as e:
        raise ClusterError(f"{path} is not readable JSON ({e}); move it aside (finished rows are kept)") from None


def save_registry(folder: Path, jobs: dict[str, dict]) -> None:
    from datasets.archive import atomic_write

    with atomic_write(folder / JOBS_FILE, "w") as f:
        json.dump(jobs, f, indent=1, sort_keys=True)


def finished_hashes(out: Path, suite: str) -> set[str]:
    """Config hashes of the complete rows of ``suite`` under ``out`` (read once for all its trainings)."""
    rows = read_rows_or_empty(out / suite / ROWS_FILE)
    return set(rows.loc[rows.complete == True, "config_hash"].astype(str))  # noqa: E712


def status(training: Training, out: Path, entry: dict | None, done: set[str]) -> tuple[str, str]:
    """(finished | failed | running | not started, detail) of one training, from its rows (``done``:
    ``finished_hashes``), its lock and its job files."""
    if all(c.config_hash() in done for c in training.cells):
        return "finished", ""
    lock = checkpoints.checkpoint_path(out, training.first.suite, training.key).with_suffix(".lock")
    try:
        with checkpoints.lock(lock, training.name):
            pass
    except checkpoints.TrainingBusy:
        return "running", f"job {entry['job_id']}" if entry else "another run"
    if entry:
        job_dir = Path(entry["folder"])
        result = job_dir / f"{entry['job_id']}_0_result.pkl"
        log = job_dir / f"{entry['job_id']}_0_log.err"
        if result.is_file():
            return "failed", f"job {entry['job_id']} ended without all rows; log: {log}"
        if entry.get("cluster") == "slurm":
            import submitit

            state = submitit.SlurmJob(job_dir, entry["job_id"]).state
            if state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING"):
                return "running", f"job {entry['job_id']} ({state})"
            return "failed", f"job {entry['job_id']} {state}; log: {log}"
        return "failed", f"job {entry['job_id']} is gone without its rows; log: {log}"
    return "not started", ""


def submit(trainings: list[Training], out: Path, cluster: str, slurm: SlurmSettings, job_for) -> dict[str, Any]:
    """Submit one job per training (as one job array); returns {training key: job}; records them in jobs.json."""
    folder = out / trainings[0].first.suite / "submitit"
    folder.mkdir(parents=True, exist_ok=True)
    ex = executor(folder, cluster, slurm)
    with ex.batch():
        pending = [(t, ex.submit(job_for(t))) for t in trainings]
    template = folder / "%j"  # submitit creates the folder pattern itself; only the per-job folders are used
    if template.is_dir() and not any(template.iterdir()):
        template.rmdir()
    jobs = registry(folder)
    for t, job in pending:
        jobs[t.key] = {"job_id": str(job.job_id), "folder": str(job.paths.folder), "cluster": cluster,
                       "cells": [c.cell for c in t.cells], "submitted": time.time()}
    save_registry(folder, jobs)
    return {t.key: job for t, job in pending}


def cause(error: BaseException) -> str:
    """The exception line of a failed job's traceback (submitit wraps it in its own message)."""
    import re

    lines = [line.strip() for line in str(error).splitlines()]
    found = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*", line)]
    return (found[-1] if found else (lines[-1] if lines else type(error).__name__))[:400]


def wait(jobs: dict[str, Any], trainings: list[Training], poll_s: float = 2.0, quiet: bool | None = None) -> list[str]:
    """Wait for every job, with a progress bar of finished cells; returns one line per failed job (with its log)."""
    from tqdm import tqdm

    by_key = {t.key: t for t in trainings}
    left, failures = dict(jobs), []
    with tqdm(total=sum(len(by_key[k].cells) for k in jobs), desc="cells", unit="cell", disable=quiet) as bar:
        while left:
            for key, job in list(left.items()):
                if not job.done():
                    continue
                del left[key]
                bar.update(len(by_key[key].cells))
                error = job.exception()
                if error is not None:
                    failures.append(f"{by_key[key].name}: job {job.job_id} failed ({cause(error)}); log: {job.paths.stderr}")
            if left:
                time.sleep(poll_s)
    return failures


def report(trainings: list[Training], out: Path) -> tuple[dict[str, list[str]], list[str]]:
    """{state: [training lines]} of every training, and the lines to print."""
    if not trainings:
        return {}, ["nothing to report: no cells selected"]
    suite = trainings[0].first.suite
    jobs, done = registry(out / suite / "submitit"), finished_hashes(out, suite)
    states: dict[str, list[str]] = {}
    for t in trainings:
        state, detail = status(t, out, jobs.get(t.key), done)
        states.setdefault(state, []).append(f"{t.name}{f': {detail}' if detail else ''}")
    lines = []
    for state in ("finished", "running", "failed", "not started"):
        for item in states.get(state, []):
            lines.append(f"  {state:<11} {item}")
    counts = ", ".join(f"{len(v)} {k}" for k, v in states.items())
    return states, [f"{len(trainings)} training(s): {counts}"] + lines
