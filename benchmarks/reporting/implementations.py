"""The "MAML implementations compared" table of docs/performance.md: per library and version, is it correct, how fast, how
much memory, and what it took to install; every figure from a committed file.

Sources (all under ``results/``):
- ``backends/correctness.json`` (``python -m benchmarks.perf.backend_check``): float64 relative error
  of the second-order meta-gradient against the higher reference and against central finite differences,
  the worst over 1 and 3 inner steps;
- ``limits/cpu.json`` (``python -m benchmarks.perf.limits``): median time of one second-order meta-step
  at 5 inner steps (maml-5), and its ratio to the forward/backward floor measured in the same run;
- the scaling sweep's rows (``scaling-<backend>-maml-k*``): autograd-held bytes and peak memory at K = 5 and
  20, growth of the autograd bytes per inner step, and the library version the rows recorded;
- ``peers/official_maml.json`` (``make peer-official-maml``): the authors' own code, cbfinn/maml, patched for
  TensorFlow 2, timed at the same setting (maml-5) in rounds beside this project's reference; its network is its own
  (no learned batch-norm scale, a head over spatially averaged features), so no gradient of it is compared.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.reporting.table_format import fmt_bytes, read_json, table_markdown

BACKENDS = ["reference", "batched", "learn2learn", "torchopt", "torch.func", "torch.func vmap*"]
INSTALL = {
    "reference": "higher 0.2.1 wheel (a core dependency)",
    "batched": "none (this project's code on plain torch)",
    "learn2learn": "sdist only; its C files do not compile on Python 3.11 and its `__init__` imports gym and "
                   "torchvision: `make setup` rebuilds it with Cython < 3 and installs it off the import path",
    "torchopt": "wheel (`pip install torchopt==0.7.3`); its compiled ops do not load against torch 2.13, so its "
                "Python ops run",
    "torch.func": "part of torch",
    "torch.func vmap*": "part of torch; refused as a backend on batch-norm nets (wrong second derivatives)",
}
LIBRARY = {"reference": "higher", "batched": "this project (task-batched autograd)", "learn2learn": "learn2learn",
           "torchopt": "TorchOpt", "torch.func": "torch.func (task loop)", "torch.func vmap*": "torch.func (vmap)"}


def _worst(entries: dict, key: str):
    values = [e[key] for e in entries.values() if isinstance(e, dict) and key in e]
    return max(values) if values else None


def lines(results_dir: Path, rows: pd.DataFrame) -> list[str]:
    """The table's Markdown lines, or [] when the correctness file is missing."""
    correct = read_json(results_dir / "backends" / "correctness.json")
    if not correct:
        return []
    limits = read_json(results_dir / "limits" / "cpu.json") or {}
    timing = (limits.get("timings") or {}).get("maml-5", {})
    floor = (timing.get("floor (loop)") or {}).get("median")
    sweep = rows[rows.cell.astype(str).str.startswith("scaling") & (rows.algorithm == "maml")] if not rows.empty else rows
    header = ["Implementation", "Version (as run)", "Max rel. error vs higher", "Max rel. error vs finite differences",
              "Time per meta-step (K=5)", "÷ floor", "Autograd-held K=5", "Autograd-held K=20",
              "Growth per inner step", "Peak memory K=5", "Peak memory K=20", "Install"]
    body = []
    for backend in BACKENDS:
        entries = {k: v for k, v in correct["backends"].get(backend, {}).items() if k.startswith("maml-")}
        if not entries:
            continue
        if any("missing" in e for e in entries.values()):
            body.append([LIBRARY[backend], "not installed"] + ["—"] * 9 + [INSTALL[backend]])
            continue
        vs_ref, vs_fd = _worst(entries, "vs_reference"), _worst(entries, "vs_finite_difference")
        t = timing.get(backend, {}).get("median")
        g = sweep[sweep.backend == backend] if not sweep.empty else sweep
        at = {k: g[g.inner_steps == k] for k in (5, 20)}
        pts = g.dropna(subset=["autograd_saved_bytes"])
        slope = (np.polyfit(pts.inner_steps.astype(float), pts.autograd_saved_bytes.astype(float), 1)[0]
                 if pts.inner_steps.nunique() >= 2 else float("nan"))
        version = "; ".join(sorted(set(g.backend_info.dropna().astype(str)))) if not g.empty else "—"
        body.append([
            LIBRARY[backend], version or "—", f"{vs_ref:.1e}", f"{vs_fd:.1e}",
            f"{t * 1e3:.0f} ms" if t else "—", f"×{t / floor:.2f}" if t and floor else "—",
            *[fmt_bytes(at[k].autograd_saved_bytes.median()) if len(at[k]) else "—" for k in (5, 20)],
            "—" if g.empty else fmt_bytes(0.0 if abs(slope) < 1 else slope) if slope == slope else "— (refuses the hooks)",
            *[f"{fmt_bytes(at[k].peak_memory_bytes.median())}" if len(at[k]) else "—" for k in (5, 20)],
            INSTALL[backend]])
    official = read_json(results_dir / "peers" / "official_maml.json")
    if official:
        glibc = official["mallocs"]["glibc"]
        t, ratio = glibc["median_s"]["official/1"], glibc["ratio_median"]["reference/1"]
        body.append(["cbfinn/maml (TF compat)", official["versions"]["official"], "— (another network)",
                     "— (another network)", f"{t * 1e3:.0f} ms (reference ×{ratio:.2f} of it, same rounds)", "—",
                     "—", "—", "—", fmt_bytes(glibc["peak_rss_bytes"]["official/1"]), "—",
                     "its own TensorFlow environment (`make setup-peers`); `make peer-official-maml` applies "
                     "`benchmarks/peers/official_maml.patch` (tf.compat.v1; tf.contrib's batch norm, Glorot "
                     "initialiser and accuracy rewritten with their semantics)"])
    note = (f"Second-order MAML, float64 errors from `results/backends/correctness.json` "
            f"({correct.get('device', '?')}); time from `results/limits/cpu.json` "
            f"({limits.get('device', '?')}, {limits.get('clock', '?')}); memory from the scaling sweep's rows "
            "(peak memory: the cell process's peak RSS on CPU). The finite-difference error is that of a central "
            "difference (eps = 1e-7), the floor of what it can resolve. * vmap's batch-norm rule is wrong here."
            + (" cbfinn/maml: `results/peers/official_maml.json` (process CPU time at 1 thread, glibc's malloc on both "
               "sides, medians of the rounds; its peak memory is its TensorFlow process's peak RSS); the ratio is "
               "this project's reference ÷ the authors' code, per round, its median." if official else ""))
    return table_markdown(header, body).splitlines() + ["", note]
