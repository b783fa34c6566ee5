"""Run ONE benchmark cell: meta-train (resuming from its checkpoint), evaluate, measure, write its row.

The CLI (``python -m benchmarks.cli run``) starts this module once per cell, in a
fresh process, so that the CPU peak-RSS column belongs to that cell alone:

    python -m benchmarks.running.runner --cell-json '{"suite": "smoke", ...}' --out results

Resuming: a checkpoint ``<out>/<suite>/checkpoints/<cell>-<seed>.pt`` is written
atomically every ``checkpoint_every`` iterations, at the end of training and when a
``--deadline`` cuts training short. It holds the learner's state, the curve and the
step times so far, the code state and the device: a checkpoint of other code (another commit, or
other uncommitted changes) or of another device or thread count is not resumed.
Training batch ``it`` is ``pool.sample_batch(..., seed=cell.seed, indices=range(it *
meta_batch, (it + 1) * meta_batch))``, a pure function of (seed, iteration), so a
resumed run computes exactly what an uninterrupted one does.

Measurement (see ``benchmarks/running/measure.py``): step times around ``meta_step`` only; one
extra outer update on a copy of the learner, on the batch after the last planned one,
for the autograd bytes; the CPU peak RSS or CUDA allocator peak at the end of the cell.
``--threads`` (the CLI passes 1 by default) fixes torch's CPU thread count.

Exit codes: 0 row written; 2 bad cell config; 3 data missing; 4 training diverged
(no row: no number is reported for a diverged run); 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from algorithms import DivergedError, build_learner, build_model
from algorithms.evaluation import evaluate
from datasets import MissingDataError, load_pool
from datasets.archive import atomic_write

from benchmarks.records import provenance
from benchmarks.running import measure
from benchmarks.running.config import CellConfig
from benchmarks.records.rows import COLUMNS, CURVES_FILE, ROWS_FILE, SCHEMA_VERSION, write_curves, write_row

EXIT_BAD_CONFIG, EXIT_MISSING_DATA, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 4, 130


def quiet() -> bool | None:
    """tqdm's ``disable``: always off under CI, else None (tqdm then hides bars when not a TTY)."""
    return True if os.environ.get("CI") else None


def show_progress() -> bool:
    """For code that takes a plain on/off flag (the evaluator): a TTY and no CI."""
    return quiet() is None and sys.stderr.isatty()


def checkpoint_path(out: Path, cell: CellConfig) -> Path:
    return Path(out) / cell.suite / "checkpoints" / f"{cell.cell}-{cell.seed}.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: never half a checkpoint."""
    with atomic_write(path) as f:
        torch.save(state, f)


def load_checkpoint(path: Path, cell: CellConfig, code_state: str, device: str) -> dict[str, Any] | None:
    """The saved state of this exact cell config written by this code (``provenance.code_state``) on
    ``device`` (``provenance.device_name``, thread count included), or None.

    A checkpoint of other code is not resumed: the row would carry this commit while (part of)
    its training ran on other code. Nor is one of another device or thread count: the row's
    step times would mix two machines under one device name.
    """
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("config_hash") != cell.config_hash():
        print(f"note: {path} was written for another configuration of {cell.cell}; starting it afresh", file=sys.stderr)
        return None
    if state.get("code_state") != code_state:
        print(f"note: {path} was written by code at {str(state.get('code_state'))[:29] or 'unknown'}, not this "
              f"checkout's {code_state[:29] or 'unknown'}; starting {cell.cell} afresh", file=sys.stderr)
        return None
    if state.get("device") != device:
        print(f"note: {path} was written on {state.get('device')}, not {device}; starting {cell.cell} afresh",
              file=sys.stderr)
        return None
    return state


def start_tracker(cell: CellConfig, mode: str, run_id: str | None = None):
    """``benchmarks.running.tracking`` hooks when that module exists and tracking is not disabled, else None.

    Tracking is a view of the rows, never a reason to lose one: a failing tracker is
    reported and dropped, and the cell goes on.
    """
    if mode == "disabled":
        return None
    try:
        from benchmarks.running import tracking

        return tracking.start_cell(cell.to_dict(), cell.suite, cell.cell, mode, run_id=run_id)
    except Exception as e:  # noqa: BLE001 (any tracking failure, e.g. wandb not logged in for "online")
        print(f"warning: wandb tracking ({mode}) unavailable for {cell.cell}, continuing without it: {e}", file=sys.stderr)
        return None


def tracked(tracker, method: str, *args) -> object:
    """Call ``tracker.<method>(*args)``; on failure warn and return None (the tracker is then dropped)."""
    if tracker is None:
        return None
    try:
        getattr(tracker, method)(*args)
        return tracker
    except Exception as e:  # noqa: BLE001
        print(f"warning: wandb tracking failed ({e}); continuing without it", file=sys.stderr)
        return None


def _logged(point: dict[str, Any]) -> dict[str, Any]:
    """A curve point as logged to wandb: the metrics it has, keyed by iteration elsewhere."""
    return {k: v for k, v in point.items() if v is not None and k != "iteration"}


def past_deadline(deadline: float | None) -> bool:
    """Checked before every meta-step: has the run's ``--max-minutes`` budget (a Unix time) run out?"""
    return deadline is not None and time.time() >= deadline


def train_batch(pool, cell: CellConfig, iteration: int):
    mb = cell.meta_batch
    return pool.sample_batch(cell.ways, cell.train_shots, cell.train_query, seed=cell.seed,
                             indices=range(iteration * mb, (iteration + 1) * mb)).to(cell.device)


def run_cell(cell: CellConfig, out: Path, deadline: float | None = None, wandb: str = "offline",
             command: str = "", git: dict[str, Any] | None = None) -> dict[str, Any]:
    """Meta-train, evaluate and measure ``cell``; write its curve and row under ``out``; return the row.

    ``git``: ``provenance.git_state`` read once by the caller when the whole run started (read now when None).
    """
    cell.validate()
    started = time.perf_counter()
    out = Path(out)
    git = git if git is not None else provenance.git_state(exclude=out)
    device = cell.device
    measure.reset_peak(device)
    train_pool = load_pool(cell.dataset, cell.split, cell.train_part)
    eval_pool = load_pool(cell.dataset, cell.split, cell.eval_part) if cell.eval.num_tasks else None

    torch.manual_seed(cell.seed)
    model = build_model(cell.dataset, cell.ways).to(device)
    learner = build_learner(cell.learner, model, total_iterations=cell.meta_iterations, seed=cell.seed)
    ckpt = checkpoint_path(out, cell)
    code = str(git.get("code_state", git["git_commit"]))
    device_label = provenance.device_name(device)
    state = load_checkpoint(ckpt, cell, code, device_label)
    curve: list[dict[str, Any]] = []
    times = measure.StepTimes()
    elapsed_before = 0.0
    wandb_id = uuid.uuid4().hex[:8]  # one wandb run per cell: kept in the checkpoint, reused on resume
    if state is not None:
        print(f"resuming {cell.cell} (seed {cell.seed}) from iteration {state['iteration']}", file=sys.stderr)
        learner.load_state_dict(state["learner"])
        curve, times.seconds, elapsed_before = list(state["curve"]), list(state["step_times"]), float(state["elapsed_s"])
        wandb_id = str(state.get("wandb_id") or wandb_id)

    def checkpoint() -> None:
        save_checkpoint(ckpt, {"config_hash": cell.config_hash(), "code_state": code, "device": device_label,
                               "wandb_id": wandb_id,
                               "learner": learner.state_dict(),
                               "iteration": learner.iteration, "curve": curve, "step_times": times.seconds,
                               "elapsed_s": elapsed_before + time.perf_counter() - started})

    tracker = start_tracker(cell, wandb, wandb_id)
    if wandb != "online":  # an offline run cannot be resumed: the new one gets the whole curve so far
        for point in curve:
            tracker = tracked(tracker, "log", point["iteration"], _logged(point))
    curve_eval = replace(cell.eval, num_tasks=cell.curve_tasks)
    cut_short = False
    bar = tqdm(total=cell.meta_iterations, initial=learner.iteration, desc=cell.cell, unit="it",
               leave=False, position=1, disable=quiet())
    while learner.iteration < cell.meta_iterations:
        if past_deadline(deadline):
            cut_short = True
            break
        batch = train_batch(train_pool, cell, learner.iteration)
        metrics = times.time(device, lambda: learner.meta_step(batch))
        point: dict[str, Any] = {"iteration": learner.iteration, "train_loss": metrics["loss"],
                                 "eval_metric": None, "eval_mean": None, "eval_ci95": None}
        if cell.eval_every and learner.iteration % cell.eval_every == 0:
            res = evaluate(learner.model, eval_pool, cell.ways, cell.shots, curve_eval, device=device)
            point.update(eval_metric=res.metric, eval_mean=res.mean, eval_ci95=res.ci95)
        curve.append(point)
        tracker = tracked(tracker, "log", learner.iteration, _logged(point))
        if learner.iteration % cell.checkpoint_every == 0 or learner.iteration == cell.meta_iterations:
            checkpoint()
        bar.update(1)
    bar.close()
    if cut_short:
        checkpoint()

    # One extra outer update on a copy, on the batch after the last planned one (never a training batch).
    saved = measure.autograd_saved_bytes(learner, train_batch(train_pool, cell, cell.meta_iterations))
    result, eval_s = None, 0.0
    if cell.eval.num_tasks:
        measure.synchronize(device)
        t0 = time.perf_counter()
        result = evaluate(learner.model, eval_pool, cell.ways, cell.shots, cell.eval, device=device, progress=show_progress())
        measure.synchronize(device)
        eval_s = time.perf_counter() - t0
    peak, kind = measure.peak_memory(device)
    losses = [p["train_loss"] for p in curve]
    tail = losses[-max(1, len(losses) // 10):] if losses else []
    row = {
        "schema_version": SCHEMA_VERSION, "suite": cell.suite, "cell": cell.cell,
        "algorithm": cell.learner.algorithm, "backend": cell.learner.backend, "dataset": cell.dataset,
        "split": cell.split, "ways": cell.ways, "shots": cell.shots, "transductive": cell.eval.transductive,
        "first_order": cell.first_order, "inner_steps": cell.learner.inner_steps,
        "eval_inner_steps": cell.eval.inner_steps, "seed": cell.seed,
        "meta_iterations": cell.meta_iterations, "iterations_run": learner.iteration,
        "complete": learner.iteration == cell.meta_iterations, "meta_batch": cell.meta_batch,
        # Mean over the last tenth of the meta-steps run: one step's loss is too noisy to compare.
        "final_train_loss": sum(tail) / len(tail) if tail else None,
        "metric": result.metric if result else "", "metric_mean": result.mean if result else None,
        "metric_ci95": result.ci95 if result else None, "eval_tasks": result.n if result else 0,
        "peak_memory_bytes": peak, "memory_kind": kind, "autograd_saved_bytes": saved,
        "step_time_median_s": times.median, "step_time_total_s": times.total, "eval_time_s": eval_s,
        "total_time_s": elapsed_before + time.perf_counter() - started,
        **provenance.provenance(device, command, git),
        "config_json": cell.to_json(), "config_hash": cell.config_hash(),
    }
    row = {c: row[c] for c in COLUMNS}
    folder = out / cell.suite
    write_curves(folder / CURVES_FILE, cell.suite, cell.cell, cell.seed, device_label, curve)
    write_row(folder / ROWS_FILE, row)
    tracked(tracker, "finish", row)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m benchmarks.running.runner")
    parser.add_argument("--cell-json", required=True, help="the cell's CellConfig as JSON (CellConfig.to_json())")
    parser.add_argument("--out", default="results", help="results folder (rows go to OUT/<suite>/rows.csv)")
    parser.add_argument("--deadline", type=float, default=None, help="stop training at this Unix time (budget)")
    parser.add_argument("--wandb", default="offline", choices=["offline", "online", "disabled"])
    parser.add_argument("--command", default="", help="the user's command line, recorded in the row")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--git-json", default=None, help="git_commit/git_dirty read by the caller at the run's start")
    args = parser.parse_args(argv)
    try:
        cell = CellConfig.from_json(args.cell_json).validate()
    except (ValueError, TypeError) as e:
        print(f"error: bad --cell-json: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    git = json.loads(args.git_json) if args.git_json else provenance.git_state(exclude=args.out)
    try:
        run_cell(cell, Path(args.out), args.deadline, args.wandb, args.command or provenance.command_line(), git)
    except MissingDataError as e:
        print(f"error: cell {cell.suite}/{cell.cell} needs data that is not here:\n{e}", file=sys.stderr)
        return EXIT_MISSING_DATA
    except DivergedError as e:
        print(f"error: cell {cell.suite}/{cell.cell} diverged, no row written: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print(f"\ninterrupted: {cell.cell} resumes from its last checkpoint when the same command is rerun", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
