"""What became of each training a run sent to a cluster: its rows, its lock, its job files and SLURM's account.

    python -m benchmarks.cli collect --suite paper-omniglot --out /shared/results     # uses ``report``

A training is *finished* (its cells' rows are complete), *running* (its lock is held, or SLURM says the job is
pending, running or requeued), *failed* (its job ended without all rows: the state SLURM's accounting gives,
``sacct``, what it means, the log, and the command that resumes it from its checkpoint) or *not started*.
``jobs.json`` (written by ``cluster.submit``) records which job runs which training and the command that
submitted it.
"""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.records.rows import ROWS_FILE, read_rows_or_empty
from benchmarks.running import checkpoints
from benchmarks.running.trainings import Training

JOBS_FILE = "jobs.json"
ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "REQUEUE_HOLD", "RESIZING", "SUSPENDED")
"""SLURM states of a job that has not ended (a requeued job passes through REQUEUED and PENDING)."""
MEANING = {"TIMEOUT": "killed at its time limit", "CANCELLED": "cancelled", "PREEMPTED": "preempted, not requeued",
           "NODE_FAIL": "its node failed", "OUT_OF_MEMORY": "out of memory", "FAILED": "failed",
           "BOOT_FAIL": "its node did not boot", "DEADLINE": "past its deadline"}
"""SLURM's end states, in words."""


class ClusterError(ValueError):
    """The cluster settings are wrong or SLURM is not here; the message names the option."""


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


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: SLURM state} from one ``sacct`` call (submitit's reader; ``CANCELLED by 0`` -> ``CANCELLED``);
    a job sacct does not know (yet) is ``UNKNOWN``."""
    if not job_ids:
        return {}
    from submitit.slurm.slurm import SlurmInfoWatcher

    watcher = SlurmInfoWatcher(delay_s=0)
    for job_id in job_ids:
        watcher.register_job(job_id)
    watcher.update()
    return {j: watcher.get_state(j, mode="cache").split()[0] for j in job_ids}


def resume_hint(entry: dict, checkpoint: Path) -> str:
    """How to pick a stopped training up again (from its checkpoint when it has one)."""
    command = entry.get("command") or "the same `python -m benchmarks.cli run ...` command"
    start = "resumes from its checkpoint" if checkpoint.is_file() else "starts afresh"
    return f"rerun {command} and it {start}"


def status(training: Training, out: Path, entry: dict | None, done: set[str],
           states: dict[str, str] | None = None) -> tuple[str, str]:
    """(finished | failed | running | not started, detail) of one training, from its rows (``done``:
    ``finished_hashes``), its lock, its job files and SLURM's state of its job (``states``: ``slurm_states``;
    asked here when not given)."""
    state = None
    if entry and entry.get("cluster") == "slurm":
        state = (states if states is not None else slurm_states([entry["job_id"]])).get(entry["job_id"], "UNKNOWN")
    job = f"job {entry['job_id']}" if entry else ""
    if all(c.config_hash() in done for c in training.cells):
        return "finished", f"{job} {state}" if state else ""
    ckpt = checkpoints.checkpoint_path(out, training.first.suite, training.key)
    try:
        with checkpoints.lock(ckpt.with_suffix(".lock"), training.name):
            pass
    except checkpoints.TrainingBusy:
        if state and state not in ACTIVE:  # SLURM has ended the job; its processes are still exiting
            return "running", f"{job} ({state}; its processes still exiting)"
        return "running", f"{job} ({state})" if state else (job or "another run")
    if not entry:
        return "not started", ""
    job_dir = Path(entry["folder"])
    log = job_dir / f"{entry['job_id']}_0_log.err"
    if state in ACTIVE:
        return "running", f"{job} ({state})"
    if (job_dir / f"{entry['job_id']}_0_result.pkl").is_file():
        return "failed", f"{job} ended without all rows{f' ({state})' if state else ''}; log: {log}"
    if state:
        said = MEANING.get(state, "ended")
        return "failed", f"{job} {state} ({said}); {resume_hint(entry, ckpt)}; log: {log}"
    return "failed", f"{job} is gone without its rows; {resume_hint(entry, ckpt)}; log: {log}"


def statuses(trainings: list[Training], out: Path) -> dict[str, tuple[str, str]]:
    """{training key: ``status``} of trainings of one suite, reading its rows, ``jobs.json`` and SLURM's account
    (one ``sacct`` call) once for them all."""
    if not trainings:
        return {}
    suite = trainings[0].first.suite
    jobs, done = registry(out / suite / "submitit"), finished_hashes(out, suite)
    entries = {t.key: jobs.get(t.key) for t in trainings}
    states = slurm_states([e["job_id"] for e in entries.values() if e and e.get("cluster") == "slurm"])
    return {t.key: status(t, out, entries[t.key], done, states) for t in trainings}


def report(trainings: list[Training], out: Path) -> tuple[dict[str, list[str]], list[str]]:
    """{state: [training lines]} of every training, and the lines to print."""
    if not trainings:
        return {}, ["nothing to report: no cells selected"]
    current = statuses(trainings, out)
    by_state: dict[str, list[str]] = {}
    for t in trainings:
        state, detail = current[t.key]
        by_state.setdefault(state, []).append(f"{t.name}{f': {detail}' if detail else ''}")
    lines = []
    for state in ("finished", "running", "failed", "not started"):
        for item in by_state.get(state, []):
            lines.append(f"  {state:<11} {item}")
    counts = ", ".join(f"{len(v)} {k}" for k, v in by_state.items())
    return by_state, [f"{len(trainings)} training(s): {counts}"] + lines
