"""How result files are written: whole and atomically, under a lock on their folder.

    from benchmarks.records.files import folder_lock, write_csv_atomic
    with folder_lock(folder):
        write_csv_atomic(df, folder / "rows.csv")

Every results file (rows, curves, per-task scores) goes through these two, so a reader never sees half a
file and two writers into one folder never drop each other's lines. ``rows`` and ``scores`` both build on
this module; neither needs the other to write.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import pandas as pd

from datasets.archive import atomic_write


def write_csv_atomic(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``df`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    with atomic_write(path, "w", newline="") as f:
        df.to_csv(f, index=False)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock on a results folder for a read-modify-write, so two runs writing rows into
    the same folder (two shells, two scripts, --jobs) cannot drop each other's rows. No lock file is
    left: the lock is held on the folder itself (flock; where unavailable, no locking)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
