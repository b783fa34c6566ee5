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
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
KEEP_BYTES = 1 << 30  # memory freed at the top of the heap is kept up to this much; blocks below it never mmap
ENV = "REPTILE_BENCH_ALLOCATOR"


def keep_freed_memory() -> str:
    """Raise glibc's trim and mmap thresholds to ``KEEP_BYTES``; return what this process now uses (for reports)."""
    if os.environ.get(ENV, "") == "default":
        return "glibc defaults (REPTILE_BENCH_ALLOCATOR=default)"
    if not sys.platform.startswith("linux"):
        return "the platform's defaults"
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return "the platform's defaults"
    ok = mallopt(M_TRIM_THRESHOLD, KEEP_BYTES) == 1 and mallopt(M_MMAP_THRESHOLD, KEEP_BYTES) == 1
    return "freed memory kept (glibc trim and mmap thresholds 1 GiB)" if ok else "glibc defaults (mallopt refused)"
