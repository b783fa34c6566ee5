"""The submitit launcher: every shared training (with the evaluations of its cells) becomes one SLURM job.

    python -m benchmarks.cli run --suite paper-omniglot --launcher submitit --slurm-partition gpu --slurm-gpus 1
    python -m benchmarks.cli plan --suite paper-omniglot --launcher submitit --slurm-gpus 1   # the sbatch it would send
    python -m benchmarks.cli run --suite smoke --launcher submitit --cluster local      # real processes, no SLURM
    python -m benchmarks.cli collect --suite paper-omniglot                           # what finished, failed, runs

submitit (the library the field uses to send Python jobs to SLURM) pickles a ``TrainingJob`` and runs it on
a node; the job runs the same ``runner.run_training`` as the local launcher, writing rows, curves and
per-task scores into the results folder under its lock: the folder must be on a filesystem every node
shares (with working ``flock``). The trainings of one run are submitted as one job array (at most
``array_parallelism`` running at once). Preemption, or ``signal_delay_s`` before the time limit: SLURM sends
USR2, submitit asks the job to be requeued (``TrainingJob.checkpoint``), and the requeued job resumes from the
training's checkpoint and ends with the rows an uninterrupted run gives. With ``--ranks N`` a job runs N tasks
on one node, the ranks of one data-parallel training (``running.distributed``; torch.distributed's environment
from SLURM's, through ``submitit.helpers.TorchDistributedEnvironment``).

Job folders and logs live under ``<out>/<suite>/submitit/``; ``jobs.json`` there records which job runs
which training (``cluster_status`` reads it back with SLURM's own account of each job).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.running.cluster_status import ClusterError, registry, save_registry
from benchmarks.running.trainings import Training

SLURM_KEYS = ("partition", "gpus", "cpus", "time_minutes", "mem_gb", "array_parallelism", "signal_delay_s", "extra")
JOB_NAME = "reptile-bench"


@dataclass
class SlurmSettings:
    """SLURM settings of a run: a suite's ``[slurm]`` table, overridden by the CLI's ``--slurm-*`` flags."""

    partition: str | None = None
    """``--partition`` of every job (None: the cluster's default)."""
    gpus: int = 0
    """GPUs per job (one training per job; with ``--ranks N`` on CUDA, N: one per rank)."""
    cpus: int = 1
    """CPUs per task (the training's torch threads should not exceed it; one task per rank)."""
    time_minutes: int = 240
    """Time limit per job; a job reaching it is asked to requeue itself first (``signal_delay_s``) and resumes
    from its checkpoint."""
    mem_gb: float | None = None
    """Memory per job (None: the cluster's default)."""
    array_parallelism: int = 256
    """Most jobs of the run's job array running at once."""
    signal_delay_s: int = 90
    """Seconds before the time limit at which SLURM sends USR2, so the job checkpoints and requeues itself;
    0: none is sent, and a job still running at its limit is killed (state TIMEOUT; rerun to resume it)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """More sbatch options, e.g. {"qos": "high", "account": "lab"}."""

    @classmethod
    def merged(cls, suite_table: dict[str, Any], overrides: dict[str, Any]) -> "SlurmSettings":
        unknown = sorted(set(suite_table) - set(SLURM_KEYS))
        if unknown:
            raise ClusterError(f"[slurm] table: unknown key(s) {unknown}; valid: {', '.join(SLURM_KEYS)}")
        s = cls(**{**suite_table, **{k: v for k, v in overrides.items() if v is not None}})
        for name in ("gpus", "cpus", "time_minutes", "array_parallelism", "signal_delay_s"):
            v = getattr(s, name)
            least = 0 if name in ("gpus", "signal_delay_s") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ClusterError(f"SLURM setting {name} must be an integer >= {least}, got {v!r}")
        if not isinstance(s.extra, dict):
            raise ClusterError(f"SLURM setting extra must be a table of sbatch options, got {s.extra!r}")
        return s


def check_slurm() -> None:
    """ClusterError unless SLURM's ``sbatch`` is on this machine's PATH."""
    if shutil.which("sbatch") is None:
        raise ClusterError("--launcher submitit: no SLURM on this machine (sbatch not found); pass --cluster local to "
                           "run the same jobs as local processes, run on a SLURM login node, or start a local "
                           "cluster with `make slurm-up` (docs/cluster.md)")


def only_this_machine() -> bool:
    """True when every node of the SLURM cluster is this machine (``sinfo``'s node names against its hostname);
    False when sinfo does not answer."""
    import socket
    import subprocess

    try:
        p = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    nodes = set(p.stdout.split())
    return p.returncode == 0 and nodes == {socket.gethostname().split(".")[0]}


def parameters(cluster: str, slurm: SlurmSettings, ranks: int = 1) -> dict[str, Any]:
    """The submitit executor parameters of every job of a run (``ranks`` tasks on one node)."""
    params: dict[str, Any] = {"timeout_min": slurm.time_minutes, "cpus_per_task": slurm.cpus,
                              "gpus_per_node": slurm.gpus, "tasks_per_node": ranks, "nodes": 1, "name": JOB_NAME}
    if cluster == "slurm":
        params.update(slurm_array_parallelism=slurm.array_parallelism, slurm_signal_delay_s=slurm.signal_delay_s,
                      slurm_additional_parameters=dict(slurm.extra))
        if slurm.partition:
            params["slurm_partition"] = slurm.partition
        if slurm.mem_gb:
            params["mem_gb"] = slurm.mem_gb
    return params


def executor(folder: Path, cluster: str, slurm: SlurmSettings, ranks: int = 1):
    """A submitit executor for ``cluster`` (``slurm``, or ``local``: the same jobs as local processes)."""
    import submitit

    if cluster == "slurm":
        check_slurm()
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)  # one folder per job, named by its id
    ex.update_parameters(**parameters(cluster, slurm, ranks))
    return ex


def sbatch_header(jobs: int, slurm: SlurmSettings, folder: Path, ranks: int = 1) -> list[str]:
    """The ``#SBATCH`` lines submitit writes for a run of ``jobs`` trainings (one job array when more than one),
    from submitit's own parameter names and script writer, on any machine (no SLURM needed): what ``plan
    --launcher submitit`` shows before anything is submitted (the slurm tests check it against the script a real
    submission wrote)."""
    from submitit.slurm.slurm import SlurmExecutor, _convert_mem, _make_sbatch_string

    names = SlurmExecutor._equivalence_dict()
    params = {}
    for key, value in parameters("slurm", slurm, ranks).items():
        key = key.removeprefix("slurm_") if key.startswith("slurm_") else names[key]
        params[key] = _convert_mem(value) if key == "mem" else value
    where = str(folder.expanduser().absolute() / "%j")  # as submitit makes its folder
    text = _make_sbatch_string(command="", folder=where, map_count=jobs if jobs > 1 else None, **params)
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


class TrainingJob:
    """One shared training with its cells' evaluations, as a submitit job (picklable; requeued when stopped)."""

    def __init__(self, cells: list[dict], out: str, wandb: str, command: str, git: dict, threads: int, jobs: int,
                 ranks: int = 1):
        self.cells, self.out, self.wandb, self.command, self.git = cells, out, wandb, command, git
        self.threads, self.jobs, self.ranks = threads, jobs, ranks

    def __call__(self) -> list[str]:
        import torch

        from benchmarks.running import distributed
        from benchmarks.running.allocator import keep_freed_memory
        from benchmarks.running.config import CellConfig
        from benchmarks.running.runner import run_training

        keep_freed_memory()
        if self.threads:
            torch.set_num_threads(self.threads)
        cells = [CellConfig.from_dict(d).validate() for d in self.cells]
        ranks = None
        if self.ranks > 1:  # this task is one rank: torch.distributed's variables from SLURM's
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            ranks = distributed.init(cells[0].device)
        try:
            rows = run_training(cells, Path(self.out), None, self.wandb, self.command, self.git, self.jobs, ranks)
        finally:
            if ranks is not None and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        return [r["cell"] for r in rows]

    def checkpoint(self, *args, **kwargs):
        """Preempted or out of time: requeue this very job; it resumes from the training's checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def submit(trainings: list[Training], out: Path, cluster: str, slurm: SlurmSettings, job_for,
           command: str = "", ranks: int = 1) -> dict[str, Any]:
    """Submit one job per training (as one job array); returns {training key: job}; records them in jobs.json
    with ``command``, the command line that resumes them."""
    folder = out / trainings[0].first.suite / "submitit"
    folder.mkdir(parents=True, exist_ok=True)
    ex = executor(folder, cluster, slurm, ranks)
    with ex.batch():
        pending = [(t, ex.submit(job_for(t))) for t in trainings]
    template = folder / "%j"  # submitit creates the folder pattern itself; only the per-job folders are used
    if template.is_dir() and not any(template.iterdir()):
        template.rmdir()
    jobs = registry(folder)
    for t, job in pending:
        jobs[t.key] = {"job_id": str(job.job_id), "folder": str(job.paths.folder), "cluster": cluster,
                       "cells": [c.cell for c in t.cells], "submitted": time.time(), "command": command}
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
