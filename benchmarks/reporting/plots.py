"""Plots of the result rows: cost against inner steps, and learning curves.

    python -m benchmarks.reporting.plots [--results-dir results] [--out-dir results/plots]

Writes PNGs (matplotlib, Agg backend), atomically, into ``<results-dir>/plots/``:

- ``scaling-<device>.png``: from the scaling-sweep rows, three panels against inner steps K:
  peak memory, median time per meta-step, and bytes held by autograd for one outer update.
  One colour per algorithm; the ``reference`` backend is dashed, others solid.
- ``curves-<suite>.png``: from ``curves.csv``, the periodic evaluation metric against
  meta-iterations, one panel per setting, one line per algorithm/backend (mean over seeds,
  shaded ± the mean of the seeds' 95% CIs).

Every title names the device(s) of the rows plotted.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.records.rows import read_curves  # noqa: E402
from datasets.archive import atomic_write  # noqa: E402
from benchmarks.records.collect import SKIP_DIRS, load_rows  # noqa: E402
from benchmarks.reporting.tables import is_scaling  # noqa: E402

COLOURS = {"reptile": "tab:blue", "fomaml": "tab:orange", "maml": "tab:red", "imaml": "tab:green",
           "anil": "tab:purple", "foanil": "tab:pink"}
MIB = 2 ** 20


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower() or "unknown"


def save_atomic(fig, path: Path) -> None:
    try:
        with atomic_write(path, suffix=".png") as f:
            fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def _style(algorithm: str, backend: str) -> dict:
    return {"color": COLOURS.get(algorithm, "tab:gray"), "linestyle": "--" if backend == "reference" else "-",
            "marker": "o", "label": f"{algorithm} ({backend})"}


def plot_scaling(rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One figure per device: peak memory, median step time and autograd bytes against inner steps."""
    if rows.empty:
        return []
    sc, written = rows[is_scaling(rows)], []
    for device, d in sc.groupby("device"):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        panels = [("peak_memory_bytes", MIB, "peak memory (MiB, {kind})"),
                  ("step_time_median_s", 1, "median time per meta-step (s)"),
                  ("autograd_saved_bytes", MIB, "autograd-held bytes per outer update (MiB)")]
        kind = "/".join(sorted(set(d.memory_kind.astype(str))))
        for ax, (col, scale, label) in zip(axes, panels):
            for (alg, backend), g in d.groupby(["algorithm", "backend"]):
                # Seeds of one K are summarised by their median, as the tables do.
                pts = g.dropna(subset=[col]).groupby("inner_steps")[col].median() / scale
                if not pts.empty:
                    ax.plot(pts.index, pts.values, **_style(alg, backend))
            ax.set_xlabel("inner steps K")
            ax.set_ylabel(label.format(kind=kind))
            ax.grid(alpha=0.3)
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            axes[0].legend(handles, labels, fontsize=8)
        fig.suptitle(f"Cost of one meta-step against inner steps — {device}")
        path = out_dir / f"scaling-{slug(device)}.png"
        save_atomic(fig, path)
        written.append(path)
    return written


def plot_curves(curves: pd.DataFrame, rows: pd.DataFrame, suite: str, out_dir: Path) -> Path | None:
    """Evaluation metric against meta-iterations for one suite; None if it has no evaluated points."""
    ids = ["suite", "cell", "seed", "device"]
    info = rows[ids + ["algorithm", "backend", "dataset", "split", "ways", "shots", "transductive"]]
    pts = curves.dropna(subset=["eval_mean"]).merge(info.drop_duplicates(ids), on=ids, how="inner")
    if pts.empty:
        return None
    pts["setting"] = [f"{d} {s} {int(w)}-way {int(k)}-shot{' transd.' if t == True else ''}"  # noqa: E712
                      if d != "sine" else f"sine K={int(k)}"
                      for d, s, w, k, t in zip(pts.dataset, pts.split, pts.ways.fillna(0), pts.shots, pts.transductive)]
    settings = sorted(pts.setting.unique())
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4.2), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        s = pts[pts.setting == setting]
        several = s.device.nunique() > 1
        for (alg, backend, cell, device), g in s.groupby(["algorithm", "backend", "cell", "device"]):
            m = g.groupby("iteration")[["eval_mean", "eval_ci95"]].mean()
            style = _style(alg, backend) | {"marker": None}
            if several:  # the same cell on two devices: the device tells the lines apart
                style["label"] = f"{style['label']} ({device})"
                style["marker"] = "s" if device.startswith("cuda") else "o"
            ax.plot(m.index, m.eval_mean, **style)
            ax.fill_between(m.index, m.eval_mean - m.eval_ci95.fillna(0), m.eval_mean + m.eval_ci95.fillna(0),
                            color=style["color"], alpha=0.15)
        metric = "/".join(sorted(set(s.eval_metric.astype(str))))
        ax.set_title(setting, fontsize=10)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel("accuracy (%)" if metric == "accuracy" else metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Periodic evaluation during training, suite {suite} — {'; '.join(sorted(set(pts.device)))}")
    path = out_dir / f"curves-{slug(suite)}.png"
    save_atomic(fig, path)
    return path


def main(results_dir: str | Path = "results", out_dir: str | Path | None = None) -> list[Path]:
    """Write every plot the rows allow; returns their paths (empty when there is nothing to plot)."""
    rows, _ = load_rows(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path(results_dir) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = plot_scaling(rows, out_dir)
    for curves_file in sorted(Path(results_dir).glob("*/curves.csv")):
        if curves_file.parent.name in SKIP_DIRS or rows.empty:
            continue
        path = plot_curves(read_curves(curves_file), rows, curves_file.parent.name, out_dir)
        written += [path] if path else []
    return written


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Plot cost against inner steps and learning curves from result rows.")
    p.add_argument("--results-dir", default="results", help="folder holding <suite>/rows.csv (default: results)")
    p.add_argument("--out-dir", default=None, help="where to write PNGs (default: <results-dir>/plots)")
    args = p.parse_args(argv)
    try:
        paths = main(args.results_dir, args.out_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    if not paths:
        print("nothing to plot yet: run the `scaling` suite or a suite with periodic evaluations", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
