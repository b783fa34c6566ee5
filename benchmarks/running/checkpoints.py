"""Checkpoints and locks of shared trainings: ``<out>/<suite>/checkpoints/<training key>.pt`` and ``.lock``.

- A checkpoint is written atomically (temporary file, then rename) and read with ``weights_only=True``
  (no pickle runs). It is resumed only for the same training key, by the same code (commit plus a hash
  of uncommitted changes) on the same device and thread count; otherwise the training starts afresh.
- A checkpoint that cannot be read, or that torch refuses as unsafe, is moved aside
  (``<name>.unreadable-<UTC time>``, kept for inspection, never deleted) and the training starts afresh.
- The lock (``flock`` on the ``.lock`` file, released by the kernel when its process dies, even by
  SIGKILL) makes sure two runs never train the same shared training at once: the second is refused
  with ``TrainingBusy`` and the pid of the holder.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import torch

from datasets.archive import atomic_write


class TrainingBusy(RuntimeError):
    """Another process holds this training's lock."""


def checkpoint_path(out: Path, suite: str, key: str) -> Path:
    return Path(out) / suite / "checkpoints" / f"{key}.pt"


def save(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: never half a checkpoint."""
    with atomic_write(path) as f:
        torch.save(state, f)


def move_aside(path: Path, why: str) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.unreadable-{stamp}")
    os.replace(path, target)
    print(f"warning: checkpoint {path} is {why}; moved it to {target} (kept, not deleted) and starting this "
          "training afresh", file=sys.stderr)
    return target


def load(path: Path, key: str, code_state: str, device: str, name: str) -> dict[str, Any] | None:
    """The saved state of training ``key`` written by this code (``provenance.code_state``) on ``device``
    (``provenance.device_name``, thread count included), or None (``name`` is for messages).

    A checkpoint of other code is not resumed: the row would carry this commit while (part of) its
    training ran on other code. Nor is one of another device or thread count: the row's step times
    would mix two machines under one device name.
    """
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read (truncated, not a checkpoint, unsafe pickle)
        # torch's first sentence says what is wrong; the rest is advice (turn weights_only off) not to follow
        reason = str(e).strip().splitlines()[0].split(". ")[0][:200] if str(e).strip() else type(e).__name__
        unsafe = "weights_only" in str(e) or "Unsupported global" in str(e)
        called = re.search(r"(?:unsupported|Unsupported global:) GLOBAL (\S+)", str(e))
        if called:  # what the pickle would have run
            reason += f": it calls {called.group(1)}"
        move_aside(path, f"{'refused by torch as unsafe to load' if unsafe else 'unreadable'} ({reason})")
        return None
    if not isinstance(state, dict) or "learner" not in state:
        move_aside(path, "not a checkpoint of this benchmark (no learner state)")
        return None
    if state.get("training_key") != key:
        print(f"note: {path} was written for another training; starting {name} afresh", file=sys.stderr)
        return None
    if state.get("code_state") != code_state:
        print(f"note: {path} was written by code at {str(state.get('code_state'))[:29] or 'unknown'}, not this "
              f"checkout's {code_state[:29] or 'unknown'}; starting {name} afresh", file=sys.stderr)
        return None
    if state.get("device") != device:
        print(f"note: {path} was written on {state.get('device')}, not {device}; starting {name} afresh",
              file=sys.stderr)
        return None
    return state


@contextlib.contextmanager
def lock(path: Path, name: str) -> Iterator[None]:
    """Hold ``path`` (a ``.lock`` file) exclusively for the block; TrainingBusy if another process holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise TrainingBusy(f"{name} is being trained by another run (pid {holder}, lock {path}); "
                               "its cells are skipped here: rerun when that run has finished") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
