"""The local launcher: run each shared training as its own process, up to ``jobs`` at once.

Each training process (``python -m benchmarks.running.runner``) gets a *slot*: on CPU its own cores
(``--cpus``: slot i takes cores i*threads .. (i+1)*threads - 1, so two trainings never share a core
unless there are more slots than cores), on CUDA its own card (``CUDA_VISIBLE_DEVICES``, round robin).
Memory and time therefore stay per training; rows are written under the results folder's lock. Each
process preloads the malloc ``allocator.malloc_env`` picks (tcmalloc where the system has it).

No process outlives the run: children die with the CLI (``process.bind_to_parent``), a SIGTERM to the
CLI is passed on to every child, and on Ctrl-C every child gets SIGINT and 30 s to save and exit.

    codes = run_local(trainings, command_for, jobs=2, slots=cpu_slots(2, threads=1), on_done=...)
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from typing import Callable

from benchmarks.records import provenance
from benchmarks.running.allocator import malloc_env
from benchmarks.running.process import die_with_parent
from benchmarks.running.trainings import Training

POLL_S = 0.05


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The training process finds this checkout's packages whatever the working directory, and runs with the
    malloc ``allocator.malloc_env`` chooses (tcmalloc where installed)."""
    env = malloc_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(provenance.REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def available_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def cpu_slots(jobs: int, threads: int) -> list[dict]:
    """Per slot: the ``--cpus`` to pin to (cores wrap around when there are more slots than cores)."""
    cores = available_cpus()
    per = max(1, threads)
    if threads == 0 and jobs == 1:
        return [{}]  # torch's default threads on every core: nothing to pin
    return [{"cpus": ",".join(str(cores[(i * per + k) % len(cores)]) for k in range(per))} for i in range(jobs)]


def gpu_slots(jobs: int, gpus: int, ranks: int = 1) -> list[dict]:
    """Per slot: the cards it sees (``CUDA_VISIBLE_DEVICES``: ``ranks`` of them), round robin over ``gpus`` cards."""
    n = max(1, gpus)
    return [{"env": {"CUDA_VISIBLE_DEVICES": ",".join(str((i * ranks + k) % n) for k in range(ranks))}}
            for i in range(jobs)]


def spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start one training process (tests replace this). torchrun, which cannot be told to die with the CLI,
    gets the kernel's parent-death signal before it starts (its ranks in turn die with it)."""
    torchrun = "torch.distributed.run" in cmd
    return subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent if torchrun else None)


def run_local(trainings: list[Training], command_for: Callable[[Training, dict], list[str]], jobs: int,
              slots: list[dict], on_done: Callable[[Training, int], None], stop_starting: Callable[[], bool],
              ) -> dict[str, int | None]:
    """Run every training (``command_for(training, slot)`` is its argv), at most ``jobs`` at once.

    ``on_done(training, exit_code)`` is called as each ends; ``stop_starting()`` is asked before each start
    (a spent budget). Returns {training key: exit code, or None if never started}. A Ctrl-C (or an
    interrupted child) stops the run: KeyboardInterrupt is raised after every child has exited.
    """
    pending = deque(trainings)
    free = list(range(jobs))
    running: dict[subprocess.Popen, tuple[Training, int]] = {}
    codes: dict[str, int | None] = {t.key: None for t in trainings}

    def forward(signum, frame):
        for proc in running:
            proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while pending or running:
            while pending and free and not stop_starting():
                training, slot = pending.popleft(), free.pop(0)
                spec = slots[slot % len(slots)]
                proc = spawn(command_for(training, spec), child_env(spec.get("env")))
                running[proc] = (training, slot)
            if not running:
                break  # nothing may start any more (budget spent)
            time.sleep(POLL_S)
            for proc in [p for p in running if p.poll() is not None]:
                training, slot = running.pop(proc)
                codes[training.key] = proc.returncode
                free.append(slot)
                on_done(training, proc.returncode)
                if proc.returncode in (130, -signal.SIGINT, -signal.SIGTERM):
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        _stop(running)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return codes


def _stop(running: dict) -> None:
    """SIGINT to every child, 30 s to save a checkpoint and exit, then SIGKILL."""
    for proc in running:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.time() + 30
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
