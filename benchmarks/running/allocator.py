"""Keep freed memory in the process instead of handing it back to the OS after every step (glibc only).

    from benchmarks.running.allocator import keep_freed_memory
    keep_freed_memory()   # once, at a process's start: the cell processes, the perf and peer commands

An inner step of the Omniglot net allocates and frees a few MB of activations and gradients (0.5 MB
for one activation of the first layer at minibatch 10). glibc serves blocks of this size from the top
of its heap or from mmap, and frees them by trimming the heap or unmapping: every step then touches
fresh pages, hundreds of page faults per meta-iteration, each page zeroed by the kernel. Raising glibc's
trim and mmap thresholds (``mallopt``, the settings behind ``MALLOC_TRIM_THRESHOLD_`` and
``MALLOC_MMAP_THRESHOLD_``) keeps those pages for the next step: no fault, and not one bit of any
result changes (the same kernels run on the same values). Peak memory (``ru_maxrss``) is a high-water
mark either way. ``python -m benchmarks.perf.allocator`` times Reptile's meta-step both ways.

Set ``REPTILE_BENCH_ALLOCATOR=default`` to leave glibc's own settings (that command does, for its
baseline). Elsewhere than glibc (macOS, musl) this does nothing.

A faster malloc: where the system has tcmalloc (Debian and Ubuntu: ``apt install
libtcmalloc-minimal4``), the processes this project starts to train and to time (the cell processes,
the peer command's and ``benchmarks.perf.allocator``'s; ``make perf`` runs its commands so) preload it
(``malloc_env``): at the evaluator's minibatch of 5, glibc's malloc and free took 14 % of an inner
step's samples under Linux ``perf`` (more than the step's batch norms), and tcmalloc's are faster
(``python -m benchmarks.perf.allocator`` times the settings side by side), while every computed value
stays the same bit for bit (``tests/test_malloc.py``). ``REPTILE_BENCH_MALLOC`` chooses: ``auto`` (the
default: tcmalloc when found, else glibc's), ``glibc``, or a library to preload (a path, or a name the
dynamic loader finds). The malloc a process runs with is part of its device's name
(``provenance.device_name``), as its thread count is: it changes every timing.

    python -m benchmarks.running.allocator --env     # prints LD_PRELOAD=... (nothing for glibc's malloc)
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

from benchmarks.records.mallocs import KNOWN_MALLOCS, malloc_in_use, malloc_name

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
KEEP_BYTES = 1 << 30  # memory freed at the top of the heap is kept up to this much; blocks below it never mmap
ENV = "REPTILE_BENCH_ALLOCATOR"
MALLOC_ENV = "REPTILE_BENCH_MALLOC"
TCMALLOC = ("tcmalloc_minimal", "tcmalloc")  # the libraries ``auto`` looks for, best first


def keep_freed_memory() -> str:
    """Raise glibc's trim and mmap thresholds to ``KEEP_BYTES``; return what this process now uses (for reports)."""
    if os.environ.get(ENV, "") == "default":
        # Before anything else: even reading /proc/self/maps (below) can move glibc's dynamic thresholds, and
        # this is the baseline of glibc left alone.
        return "glibc defaults (REPTILE_BENCH_ALLOCATOR=default)"
    preloaded = malloc_in_use()
    if preloaded != "glibc":  # glibc's thresholds then govern nothing
        return f"{preloaded} (preloaded)"
    if not sys.platform.startswith("linux"):
        return "the platform's defaults"
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return "the platform's defaults"
    ok = mallopt(M_TRIM_THRESHOLD, KEEP_BYTES) == 1 and mallopt(M_MMAP_THRESHOLD, KEEP_BYTES) == 1
    return "freed memory kept (glibc trim and mmap thresholds 1 GiB)" if ok else "glibc defaults (mallopt refused)"


def preload_library(env=None) -> str | None:
    """The malloc library ``REPTILE_BENCH_MALLOC`` asks the processes to preload; None for glibc's malloc.

    ValueError naming the setting when it names a file that is not there, or a library that is not a malloc
    this project knows how to name.
    """
    choice = (os.environ if env is None else env).get(MALLOC_ENV, "auto") or "auto"
    if choice == "glibc":
        return None
    if choice == "auto":
        if not sys.platform.startswith("linux"):
            return None
        return next((lib for lib in map(ctypes.util.find_library, TCMALLOC) if lib), None)
    if "/" in choice and not Path(choice).is_file():
        raise ValueError(f"{MALLOC_ENV}={choice}: no such file; give a malloc library's path (e.g. "
                         f"/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4), 'auto' or 'glibc'")
    if malloc_name(choice) is None:
        raise ValueError(f"{MALLOC_ENV}={choice}: not a malloc this project can name "
                         f"({', '.join(KNOWN_MALLOCS)}); give such a library, 'auto' or 'glibc'")
    return choice


def preload_entries(env) -> list[str]:
    """The libraries ``env``'s ``LD_PRELOAD`` names, in order (the loader takes colons or spaces between them)."""
    return [e for e in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if e]


def malloc_env(env=None) -> dict[str, str]:
    """A copy of ``env`` (default: this process's) whose ``LD_PRELOAD`` starts with ``preload_library``'s choice
    (unchanged for glibc's malloc, or when it is there already)."""
    out = dict(os.environ if env is None else env)
    lib = preload_library(out)
    entries = preload_entries(out)
    if lib and lib not in entries:
        out["LD_PRELOAD"] = ":".join([lib, *entries])
    return out


def planned_malloc(env=None) -> str:
    """The malloc a process started with ``malloc_env(env)`` runs with: its preloaded malloc's name, or glibc."""
    return next((name for name in map(malloc_name, preload_entries(malloc_env(env))) if name), "glibc")


def inherited_malloc(env=None) -> str:
    """The malloc a process started with ``env`` as it is runs with (none added: ``LD_PRELOAD``'s, else glibc)."""
    return planned_malloc({**(os.environ if env is None else env), MALLOC_ENV: "glibc"})


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["--env"]:
        print("usage: python -m benchmarks.running.allocator --env", file=sys.stderr)
        return 2
    try:
        env = malloc_env()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if env.get("LD_PRELOAD") and env.get("LD_PRELOAD") != os.environ.get("LD_PRELOAD"):
        print(f"LD_PRELOAD={env['LD_PRELOAD']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
