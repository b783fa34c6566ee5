"""What the CLI's commands share: the usage error, seed lists, and cells with their device resolved.

Used by ``benchmarks.cli`` (run, plan, list, tables), ``benchmarks.cli_cluster`` (the SLURM side of run, and
collect) and ``benchmarks.gpu``; nothing here starts work.
"""
from __future__ import annotations

from dataclasses import replace

from algorithms.evaluation import resolve_mode
from datasets.tasks import SEED_LIMIT

class UsageError(Exception):
    """Bad input: printed as ``error: ...`` with exit status 2."""


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds takes comma-separated integers such as 0,1,2; got {text!r}") from None
    if not seeds or any(not 0 <= s < SEED_LIMIT for s in seeds):
        raise UsageError(f"--seeds needs at least one integer, each in [0, {SEED_LIMIT}); got {text!r}")
    return seeds


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: this torch build sees no CUDA device; use --device cpu (or auto)")
    return device


def with_device(cells, device_option: str | None, check_cuda: bool = True):
    """Each cell with its device resolved (and evaluation mode for that device), before any hashing.

    A suite may pin a device; ``--device`` must then agree (a silent override would run, and record, a
    cell somewhere its suite says it must not run).
    """
    out = []
    for cell in cells:
        if cell.device != "auto" and device_option not in (None, "auto") and cell.device != device_option:
            raise UsageError(f"cell {cell.suite}/{cell.cell}: its suite sets device = {cell.device!r} but --device is "
                             f"{device_option!r}; drop one of them (or select other cells with --cells)")
        wanted = cell.device if cell.device != "auto" else (device_option or "auto")
        device = resolve_device(wanted) if check_cuda or not wanted.startswith("cuda") else wanted
        ev = replace(cell.eval, mode=resolve_mode(cell.eval.mode, device)) if cell.eval.num_tasks else cell.eval
        out.append(replace(cell, device=device, eval=ev))
    return out
