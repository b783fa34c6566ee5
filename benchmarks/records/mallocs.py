"""The mallocs a CPU device's name can say, and which one this process runs with (no imports beyond the
standard library: ``running.allocator`` uses it before anything heavy is loaded, since imports move glibc's
dynamic thresholds).

    from benchmarks.records.mallocs import malloc_in_use
    malloc_in_use()          # 'tcmalloc' where preloaded, else 'glibc'
"""
from __future__ import annotations

from pathlib import Path

KNOWN_MALLOCS = ("tcmalloc", "jemalloc", "mimalloc")
"""Mallocs other than glibc's that a CPU device's name says (``benchmarks.running.allocator`` preloads one)."""


def malloc_name(library: str) -> str | None:
    """``tcmalloc`` for ``/usr/lib/libtcmalloc_minimal.so.4`` (likewise jemalloc, mimalloc); None otherwise."""
    base = Path(library).name
    return next((k for k in KNOWN_MALLOCS if base.startswith(f"lib{k}")), None)


def malloc_in_use() -> str:
    """The malloc this process runs with: a known one mapped into it (``/proc/self/maps``), else ``glibc``."""
    try:
        with open("/proc/self/maps") as f:
            names = {malloc_name(line.split()[-1]) for line in f if "/" in line}
    except OSError:
        return "glibc"
    return next((k for k in KNOWN_MALLOCS if k in names), "glibc")


def without_malloc(device: str) -> str:
    """``cpu: X (1 thread)`` for ``cpu: X (1 thread, tcmalloc)``; any other name as it is."""
    for name in KNOWN_MALLOCS:
        device = device.replace(f", {name})", ")")
    return device
