"""Where a result row came from: code version, command line, software versions, device, date.

Every field is read from the running system (git, torch, /proc/cpuinfo); a value
that cannot be read is left empty rather than guessed.

    python -m benchmarks.records.provenance      # prints what a row run here would record
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.records.mallocs import malloc_in_use

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def _code_paths(exclude: str | os.PathLike | None) -> list[str]:
    """A git pathspec for the code: the whole tree except ``results/``, Markdown files and ``exclude`` (a run's
    output folder). ``make benchmark`` rewrites README.md's results section: that must not make its rerun
    (to finish cells a budget cut) start every cell afresh."""
    spec = ["--", ".", ":(exclude)results", ":(exclude)*.md"]
    if exclude is not None:
        try:
            spec.append(f":(exclude){Path(exclude).resolve().relative_to(REPO_ROOT.resolve()).as_posix()}")
        except ValueError:  # outside the repository: cannot make it dirty
            pass
    return spec


def git_dirty(exclude: str | os.PathLike | None = None) -> bool | str:
    """True when the code differs from HEAD (``git status --porcelain``, untracked included); empty if unknown.

    ``results/``, Markdown files and ``exclude`` (the run's output folder) are left out: rows
    written by this or earlier runs, and the documentation regenerated from them, are not code.
    """
    out = _git("status", "--porcelain", *_code_paths(exclude))
    if out is None:  # not a checkout: what the GPU script recorded, else unknown
        return {"true": True, "false": False}.get(os.environ.get("REPTILE_BENCH_GIT_DIRTY", ""), "")
    return bool(out.strip())


def code_state(exclude: str | os.PathLike | None = None) -> str:
    """The commit, plus a hash of the uncommitted changes (tracked diff and untracked files) when there are any.

    A checkpoint is resumed only under the same code state, so a run interrupted and resumed
    while editing the code never mixes two versions in one row.
    """
    spec = _code_paths(exclude)
    diff = _git("diff", "HEAD", "--binary", *spec)
    untracked = _git("ls-files", "--others", "--exclude-standard", "-z", *spec)
    if not diff and not untracked:  # clean, or not a checkout (the GPU script's recorded commit)
        return git_commit()
    h = hashlib.sha256((diff or "").encode())
    for name in sorted(n for n in (untracked or "").split("\0") if n):
        h.update(name.encode())
        try:
            h.update((REPO_ROOT / name).read_bytes())
        except OSError:
            pass
    return f"{git_commit()}+{h.hexdigest()[:16]}"


def git_state(exclude: str | os.PathLike | None = None) -> dict[str, object]:
    """The git columns of a row and the ``code_state``, read once when a run starts (``exclude``: see ``git_dirty``)."""
    return {"git_commit": git_commit(), "git_dirty": git_dirty(exclude), "code_state": code_state(exclude)}


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str, threads: int | None = None, malloc: str | None = None) -> str:
    """E.g. ``cpu: AMD EPYC 7B13 (1 thread)``, ``cpu: AMD EPYC 7B13 (2 threads, tcmalloc)`` or
    ``cuda: NVIDIA H100 80GB HBM3``.

    On CPU the torch thread count (``threads``, else this process's) and a malloc other than glibc's
    (``malloc``, else this process's) are part of the name: each changes every timing.
    """
    if device.startswith("cuda"):
        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    threads = threads or torch.get_num_threads()
    return cpu_device(f"{threads} thread{'s' if threads > 1 else ''}", malloc or malloc_in_use())


def cpu_device(threads: str, malloc: str) -> str:
    """``cpu: <model> (<threads>[, <malloc>])``, the malloc said unless it is glibc's (``mallocs.without_malloc``
    takes it back out); ``threads`` as said, e.g. ``1 thread`` or ``default threads``."""
    return f"cpu: {cpu_model()} ({threads}{'' if malloc == 'glibc' else ', ' + malloc})"


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would retype it from the repository root (``python -m benchmarks.cli ...``)."""
    argv = list(sys.argv if argv is None else argv)
    # ``python -m pkg.mod`` puts the module's file path in argv[0]; turn it back into ``-m pkg.mod``.
    path = Path(argv[0]) if argv else Path()
    if path.suffix == ".py":
        try:
            module = path.resolve().with_suffix("").relative_to(REPO_ROOT.resolve())
        except ValueError:  # a script outside this checkout: keep its path
            module = None
        if module is not None and module.parts[0] == "benchmarks":
            argv = ["-m", ".".join(module.parts)] + argv[1:]
    return shlex.join(["python", *argv])


def measurement(device: str, **fields: object) -> dict[str, object]:
    """What every measurement file (``python -m benchmarks.perf.* --json``) begins with: the device, torch's
    version, the command and the git state (``results/`` excluded), then ``fields``."""
    return {"device": device, "torch": torch.__version__, "command": command_line(),
            **git_state(exclude=REPO_ROOT / "results"), **fields}


def write_json(path: str | os.PathLike | None, report: dict[str, object]) -> None:
    """``report`` as indented JSON at ``path``, atomically (never half-written); nothing when ``path`` is None."""
    from datasets.archive import atomic_write  # here, not at the top: datasets imports nothing of benchmarks

    if path:
        with atomic_write(path, "w") as f:
            json.dump(report, f, indent=1)


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
        **{k: v for k, v in (git if git is not None else git_state()).items() if k in ("git_commit", "git_dirty")},
        "command": command,
        "date": utc_now(),
    }


if __name__ == "__main__":
    for key, value in provenance("cuda" if torch.cuda.is_available() else "cpu", command_line()).items():
        print(f"{key}: {value}")
