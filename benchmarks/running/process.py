"""What every cell process shares with the CLI that starts it: exit codes, progress bars, its ties to the CLI.

- ``bind_to_parent(pid)``: on Linux, the kernel sends this process SIGTERM when the CLI dies, even by
  SIGKILL (``prctl(PR_SET_PDEATHSIG)``), so no training outlives the run that started it; if the CLI is
  already gone when the child starts, the child exits at once.
- ``pin_cpus("0,1")``: restrict this process to those cores (``--jobs`` gives each training its own).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

EXIT_OK, EXIT_FAILED, EXIT_BAD_CONFIG, EXIT_DATA, EXIT_DIVERGED, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 5, 130
EXIT_BUSY = EXIT_INCOMPLETE  # a training held by another run: its cells are not done here
PR_SET_PDEATHSIG = 1


def quiet() -> bool | None:
    """tqdm's ``disable``: always off under CI, else None (tqdm then hides bars when not a TTY)."""
    return True if os.environ.get("CI") else None


def show_progress() -> bool:
    """For code that takes a plain on/off flag (the evaluator): a TTY and no CI."""
    return quiet() is None and sys.stderr.isatty()


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when this process's parent dies (Linux: PR_SET_PDEATHSIG; elsewhere nothing).
    Kept across exec: ``launch.spawn`` calls it in a child before torchrun starts."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the CLI's signal forwarding still applies
            pass


def bind_to_parent(parent_pid: int) -> None:
    """Die with the parent (``die_with_parent``); exit now if the parent is already gone."""
    die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        print(f"the run that started this process (pid {parent_pid}) is gone; exiting", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def pin_cpus(cpus: str) -> None:
    """Pin this process to the comma-separated cores ``cpus`` (where the OS allows it)."""
    cores = {int(c) for c in cpus.split(",") if c.strip()}
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
