"""Where a result row came from: code version, command line, software versions, device, date.

Every field is read from the running system (git, torch, /proc/cpuinfo); a value
that cannot be read is left empty rather than guessed.

    python -m benchmarks.provenance      # prints what a row run here would record
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str:
    """Full hash of HEAD; outside a git checkout, $REPTILE_BENCH_GIT_COMMIT (set by the GPU script
    from what `make gpu-prepare` recorded), else empty."""
    out = _git("rev-parse", "HEAD")
    return out.strip() if out else os.environ.get("REPTILE_BENCH_GIT_COMMIT", "")


def git_dirty(exclude: str | os.PathLike | None = None) -> bool | str:
    """True when files differ from HEAD (``git status --porcelain``, untracked included); empty if unknown.

    ``exclude`` (the results folder) is left out, so rows written by the run itself
    do not mark the code as modified.
    """
    spec: list[str] = []
    if exclude is not None:
        try:
            rel = Path(exclude).resolve().relative_to(REPO_ROOT)
            spec = ["--", ".", f":(exclude){rel.as_posix()}"]
        except ValueError:  # outside the repository: cannot make it dirty
            pass
    out = _git("status", "--porcelain", *spec)
    if out is None:  # not a checkout: what the GPU script recorded, else unknown
        return {"true": True, "false": False}.get(os.environ.get("REPTILE_BENCH_GIT_DIRTY", ""), "")
    return bool(out.strip())


def git_state(exclude: str | os.PathLike | None = None) -> dict[str, object]:
    """The git columns of a row, read once when a run starts (see ``git_dirty`` for ``exclude``)."""
    return {"git_commit": git_commit(), "git_dirty": git_dirty(exclude)}


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    """E.g. ``cpu: AMD EPYC 7B13 (1 thread)`` or ``cuda: NVIDIA H100 80GB HBM3``.

    On CPU the torch thread count is part of the name: it changes every timing.
    """
    if device.startswith("cuda"):
        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    threads = torch.get_num_threads()
    return f"cpu: {cpu_model()} ({threads} thread{'s' if threads > 1 else ''})"


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would retype it from the repository root (``python -m benchmarks.cli ...``)."""
    argv = list(sys.argv if argv is None else argv)
    # ``python -m pkg.mod`` puts the module's file path in argv[0]; turn it back into ``-m pkg.mod``.
    path = Path(argv[0]) if argv else Path()
    if path.suffix == ".py" and path.resolve().parent == REPO_ROOT / "benchmarks":
        argv = ["-m", f"benchmarks.{path.stem}"] + argv[1:]
    return shlex.join(["python", *argv])


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def provenance(device: str, command: str, git: dict[str, object] | None = None) -> dict[str, object]:
    """The provenance columns of a result row except ``config_json``/``config_hash``.

    ``git``: the ``git_state`` read when the run started (read now when None).
    """
    return {
        "device": device_name(device),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "cuda_version": (torch.version.cuda or "") if device.startswith("cuda") else "",
        **(git if git is not None else git_state()),
        "command": command,
        "date": utc_now(),
    }


if __name__ == "__main__":
    for key, value in provenance("cuda" if torch.cuda.is_available() else "cpu", command_line()).items():
        print(f"{key}: {value}")
