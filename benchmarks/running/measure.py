"""Cost measurements of a cell: wall time of meta-steps, peak memory, bytes held by autograd.

- Time: ``time.perf_counter`` around each meta-step, after ``torch.cuda.synchronize()``
  on CUDA (kernels are asynchronous, so without it a step's time lands in the next one).
- Peak memory: on CUDA the caching allocator's peak since ``reset_peak(device)``; on CPU
  the peak resident set size of the whole process (``ru_maxrss``), which is why the
  runner gives every cell a fresh process. It includes the Python + torch baseline.
- Autograd bytes: the most bytes that autograd holds in saved tensors at any moment of
  one outer update, through ``torch.autograd.graph.saved_tensors_hooks``. Each storage is
  counted once however many saved tensors share it, and is released when the graph
  drops its last saved tensor. torch.func backends refuse the hooks (PITFALLS.md §2):
  the measurement then returns None (an empty column) instead of a number.
"""
from __future__ import annotations

import copy
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


@dataclass
class StepTimes:
    """Durations (seconds) of the meta-steps run so far, kept across resumes through checkpoints."""

    seconds: list[float] = field(default_factory=list)

    def time(self, device: str, fn: Callable[[], object]) -> object:
        synchronize(device)
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        self.seconds.append(time.perf_counter() - start)
        return out

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def total(self) -> float:
        return float(sum(self.seconds))


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_memory(device: str) -> tuple[int, str]:
    """(bytes, kind): CUDA allocator peak since ``reset_peak``, or this process's peak RSS."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(torch.device(device))), "cuda_allocator"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_rss"


class _SavedBytes:
    """Live and peak bytes of the distinct storages that autograd currently holds."""

    def __init__(self) -> None:
        self.refs: dict[tuple, int] = {}
        self.sizes: dict[tuple, int] = {}
        self.live = 0
        self.peak = 0

    def pack(self, t: torch.Tensor) -> "_Held":
        storage = t.untyped_storage()
        key = (t.device.type, t.device.index, storage.data_ptr())
        if self.refs.get(key, 0) == 0:
            self.sizes[key] = storage.nbytes()
            self.live += self.sizes[key]
            self.peak = max(self.peak, self.live)
        self.refs[key] = self.refs.get(key, 0) + 1
        return _Held(self, key, t)

    def release(self, key: tuple) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.live -= self.sizes.pop(key)
            del self.refs[key]


class _Held:
    """What autograd stores instead of the tensor; dropping it (graph freed) releases the storage."""

    __slots__ = ("counter", "key", "tensor")

    def __init__(self, counter: _SavedBytes, key: tuple, tensor: torch.Tensor):
        self.counter, self.key, self.tensor = counter, key, tensor

    def __del__(self) -> None:
        self.counter.release(self.key)


def autograd_saved_bytes(learner, batch) -> int | None:
    """Peak bytes saved for backward during one ``meta_step`` on a deep copy of ``learner``.

    The copy keeps the real learner (weights, optimiser state, generator) untouched,
    so measuring does not change the results. None when the backend refuses the hooks.
    """
    probe = copy.deepcopy(learner)
    counter = _SavedBytes()
    try:
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda held: held.tensor):
            probe.meta_step(batch)
    except RuntimeError as e:
        if "saved tensor hooks" in str(e):
            return None
        raise
    return counter.peak
