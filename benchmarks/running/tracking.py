"""Weights & Biases tracking: one wandb run per benchmark cell, grouped by suite.

    tracker = start_cell(config, suite="default", cell="omniglot-reptile-5w1s", mode="offline", dir="runs")
    tracker.log(step, {"train_loss": 0.7})
    tracker.finish(row)          # final metrics into the run summary, the result row as a wandb.Table

Offline is the default: nothing leaves the machine and no account is needed; ``wandb sync <dir>/wandb/
offline-run-*`` uploads later. ``mode="online"`` only when the user asks for it; ``mode="disabled"``
returns a no-op tracker without importing wandb. wandb's service may hold the offline log in a
buffer after ``finish()`` until it shuts down (at process exit, or ``wandb.teardown()``). The rows CSV stays the source of truth: tracking is a
view of the same numbers, and a tracking failure never changes a result.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

MODES = ("offline", "online", "disabled")
PROJECT = os.environ.get("WANDB_PROJECT", "reptile-bench")
SUMMARY_KEYS = ("metric_mean", "metric_ci95", "eval_tasks", "final_train_loss", "iterations_run", "complete",
                "peak_memory_bytes", "autograd_saved_bytes", "step_time_median_s", "total_time_s")


def _plain(value: Any) -> Any:
    """JSON-friendly scalars: NaN/None become None, numpy scalars become Python ones."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Tracker:
    """No-op tracker (mode ``disabled``); ``WandbTracker`` does the real work."""

    run = None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def finish(self, row: dict[str, Any] | None = None) -> None:
        pass


def _warn(what: str, error: BaseException) -> None:
    print(f"warning: wandb {what} failed ({type(error).__name__}: {error}); the run goes on untracked, "
          "its result row is unaffected", file=sys.stderr)


class WandbTracker(Tracker):
    def __init__(self, run):
        self.run = run

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.log({k: _plain(v) for k, v in metrics.items()}, step=int(step))
        except Exception as e:  # tracking is a view of the numbers: never let it stop a benchmark
            _warn("log", e)
            self.run = None

    def finish(self, row: dict[str, Any] | None = None) -> None:
        import wandb

        if self.run is None:
            return
        try:
            if row is not None:
                self.run.summary.update({k: _plain(row[k]) for k in SUMMARY_KEYS if k in row})
                cols = list(row)
                # Strings keep every column loggable whatever its type (bools, empty cells, JSON text).
                self.run.log({"result_row": wandb.Table(columns=cols, data=[[str(_plain(row[c])) for c in cols]])})
        except Exception as e:
            _warn("summary", e)
        finally:
            try:
                self.run.finish()
            except Exception as e:
                _warn("finish", e)


def _silence() -> None:
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")


def start_cell(config: dict[str, Any], suite: str, cell: str, mode: str = "offline",
               dir: str | os.PathLike | None = None, run_id: str | None = None) -> Tracker:
    """Start the wandb run of one cell (``group=suite``, ``name=cell``, ``job_type="benchmark"``).

    ``run_id``: the id kept in the cell's checkpoint, so a resumed cell continues its run. Online,
    wandb appends to it. Offline, wandb cannot resume: the resumed part is a new offline folder
    under the same id, into which the runner replays the curve so far. Syncing the folders oldest
    first (``wandb sync wandb/offline-run-*``) leaves the last one, the whole run: a later sync
    of an id replaces the earlier one (wandb issue #3841).
    """
    if mode not in MODES:
        raise ValueError(f"wandb mode must be one of {', '.join(MODES)}, got {mode!r} (offline needs no account)")
    if mode == "disabled":
        return Tracker()
    _silence()
    import wandb

    if dir is not None:
        Path(dir).mkdir(parents=True, exist_ok=True)
    try:
        run = wandb.init(project=PROJECT, group=suite, name=cell, job_type="benchmark", config=config, mode=mode,
                         dir=None if dir is None else str(dir), reinit="create_new", id=run_id,
                         resume="allow" if run_id and mode == "online" else None,
                         settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
    except Exception as e:  # e.g. online without credentials: warn, keep benchmarking
        _warn(f"init ({mode})", e)
        return Tracker()
    return WandbTracker(run)


def log_suite_table(rows_df, suite: str, mode: str = "offline", dir: str | os.PathLike | None = None) -> None:
    """One extra run (``name=<suite>-rows``) holding the suite's whole rows table, for side-by-side viewing."""
    if mode == "disabled" or rows_df.empty:
        return
    tracker = start_cell({"suite": suite, "rows": len(rows_df)}, suite, f"{suite}-rows", mode, dir)
    import wandb

    table = wandb.Table(dataframe=rows_df.astype(str))
    tracker.run.log({"rows": table})
    tracker.finish(None)
