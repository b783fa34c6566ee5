"""Run ONE shared training and every cell it serves: meta-train (resuming), evaluate each cell, write its row.

The CLI (``python -m benchmarks.cli run``) starts this module once per distinct training
(``benchmarks.running.trainings``), in a fresh process, so the CPU peak-RSS column belongs to it alone:

    python -m benchmarks.running.runner --cells-json '[{"suite": "smoke", ...}, ...]' --out results

Every cell still gets its own row, curve (its own protocol's periodic evaluation, run during the shared
training), per-task scores and wandb run; rows name the training (``training_key``).

Resuming: a checkpoint ``<out>/<suite>/checkpoints/<training key>.pt`` is written atomically every
``checkpoint_every`` iterations (the smallest of the cells'), at the end of training and when a
budget (``--deadline``, a Unix time, or ``--stop-iteration``, a meta-iteration) cuts training short (see
``checkpoints``). Training batch ``it`` is
``pool.sample_batch(..., seed=cell.seed, indices=range(it * meta_batch, (it + 1) * meta_batch))``, a pure
function of (seed, iteration), so a resumed run computes exactly what an uninterrupted one does. A
finished training's checkpoint lets cells whose rows are missing be evaluated without retraining.

Divergence: a NaN/inf loss, or a loss above ``diverge_factor`` x the reference loss for
``diverge_patience`` consecutive meta-steps (``CellConfig``), stops the training with no row.

Measurement (see ``measure``): step times around ``meta_step`` only; one extra outer update on a copy
of the learner, on the batch after the last planned one, for the autograd bytes; the CPU peak RSS or CUDA
allocator peak when each row is written.

Exit codes: 0 every row written; 2 bad cell config; 3 data missing or damaged; 4 training or an
evaluation diverged (no row for it); 5 another process is running this training; 130 interrupted.
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
from algorithms.base import task_loss
from algorithms.evaluation import evaluate
from benchmarks.running.allocator import keep_freed_memory
from algorithms.libraries import LibraryMissing
from benchmarks.records import provenance
from benchmarks.records.rows import ROWS_FILE, write_result  # noqa: F401 (ROWS_FILE: for callers)
from benchmarks.running import checkpoints, distributed, measure
from benchmarks.running.config import CellConfig
from benchmarks.running.process import EXIT_BAD_CONFIG, EXIT_BUSY, EXIT_DATA, EXIT_DIVERGED, EXIT_INTERRUPTED, \
    bind_to_parent, pin_cpus, quiet, show_progress
from benchmarks.running.row import make_row
from benchmarks.running.trainings import Training, group, training_key
from datasets import DataError, load_pool


def start_tracker(cell: CellConfig, mode: str, run_id: str | None = None):
    """``benchmarks.running.tracking`` hooks when tracking is not disabled, else None.

    Tracking is a view of the rows, never a reason to lose one: a failing tracker is
    reported and dropped, and the training goes on.
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


def past_deadline(deadline: float | None) -> bool:
    """Checked before every meta-step: has the run's ``--max-minutes`` budget (a Unix time) run out?"""
    return deadline is not None and time.time() >= deadline


def train_batch(pool, cell: CellConfig, iteration: int):
    mb = cell.meta_batch
    return pool.sample_batch(cell.ways, cell.train_shots, cell.train_query, seed=cell.seed,
                             indices=range(iteration * mb, (iteration + 1) * mb)).to(cell.device)


@torch.no_grad()
def reference_loss(model, batch) -> float:
    """The divergence rule's yardstick: the unadapted model's mean loss on the meta-batch's support sets."""
    p = next(model.parameters())
    batch = batch.to(p.device, dtype=p.dtype)
    return float(torch.stack([task_loss(model(batch.support_x[t]), batch.support_y[t]) for t in range(len(batch))]).mean())


def check_divergence(loss: float, state: dict[str, Any], cell: CellConfig, iteration: int) -> None:
    """Raise DivergedError when the loss has stayed above the threshold for ``diverge_patience`` steps."""
    limit = cell.diverge_factor * max(state["reference_loss"], 1e-12)
    state["above"] = state["above"] + 1 if loss > limit else 0
    if state["above"] >= cell.diverge_patience:
        raise DivergedError(
            f"training loss {loss:.3g} at meta-iteration {iteration} has been above {cell.diverge_factor:g} x the "
            f"starting loss {state['reference_loss']:.3g} for {state['above']} consecutive meta-steps "
            f"(diverge_factor / diverge_patience in the cell config); the run is stopped and no result is "
            f"reported: lower the learning rates ({cell.learner.algorithm}: inner_lr={cell.learner.inner_lr}, "
            f"meta_lr={cell.learner.meta_lr})")


def run_training(cells: list[CellConfig], out: Path, deadline: float | None = None, wandb: str = "offline",
                 command: str = "", git: dict[str, Any] | None = None, jobs: int = 1,
                 ranks: "distributed.Ranks | None" = None, stop_iteration: int | None = None) -> list[dict[str, Any]]:
    """Train once (resuming), evaluate every cell of ``cells`` (one shared training); write and return their rows.

    ``git``: ``provenance.git_state`` read once by the caller when the whole run started (read now when None).
    ``ranks``: this process's place in a data-parallel training (``distributed``); rank 0 alone locks,
    checkpoints, evaluates and writes rows (the others return []).
    ``deadline`` (a Unix time) and ``stop_iteration`` (a meta-iteration) are budgets: training stops at the first
    one reached, and the rows say ``complete=False`` (a fixed amount of work, for rehearsals and tests, is the latter).
    Raises DivergedError (training), or, after writing every other row, the first evaluation's DivergedError.
    """
    trainings = group([c.validate() for c in cells])
    if len(trainings) != 1:
        raise ValueError(f"run_training takes the cells of ONE training; got {len(trainings)}: "
                         f"{[t.name for t in trainings]}")
    training = trainings[0]
    out = Path(out)
    ckpt = checkpoints.checkpoint_path(out, training.first.suite, training.key)
    if ranks is not None:
        distributed.check_splittable(training.first, ranks.world)
        if not ranks.leader:
            return _run_locked(training, out, ckpt, deadline, wandb, command, git, jobs, ranks, stop_iteration)
    with checkpoints.lock(ckpt.with_suffix(".lock"), f"training {training.name}"):
        return _run_locked(training, out, ckpt, deadline, wandb, command, git, jobs, ranks, stop_iteration)


def _run_locked(training: Training, out: Path, ckpt: Path, deadline, wandb, command, git, jobs,
                ranks=None, stop_iteration=None) -> list[dict[str, Any]]:
    started = time.perf_counter()
    first = training.first
    git = git if git is not None else provenance.git_state(exclude=out)
    device = first.device
    measure.reset_peak(device)
    train_pool = load_pool(first.dataset, first.split, first.train_part)
    eval_pools = {c.cell: load_pool(c.dataset, c.split, c.eval_part) for c in training.cells if c.eval.num_tasks}

    torch.manual_seed(first.seed)
    model = build_model(first.dataset, first.ways).to(device)
    learner = build_learner(first.learner, model, total_iterations=first.meta_iterations, seed=first.seed)
    code = str(git.get("code_state", git["git_commit"]))
    device_label = provenance.device_name(device)
    leader = ranks is None or ranks.leader
    if ranks is not None and not leader:
        torch.distributed.barrier()  # rank 0 reads first (and moves an unreadable checkpoint aside)
    state = checkpoints.load(ckpt, training.key, code, device_label, training.name)
    if ranks is not None and leader:
        torch.distributed.barrier()
    times = measure.StepTimes()
    run: dict[str, Any] = {"losses": [], "evals": {c.cell: {} for c in training.cells},
                           "curve_s": {c.cell: 0.0 for c in training.cells}, "elapsed_s": 0.0,
                           "wandb": {c.cell: uuid.uuid4().hex[:8] for c in training.cells},
                           "reference_loss": None, "above": 0}
    if state is not None:
        shared = f" (one training for {len(training.cells)} cells)" if len(training.cells) > 1 else ""
        print(f"resuming {first.cell} (seed {first.seed}) from iteration {state['iteration']}{shared}", file=sys.stderr)
        learner.load_state_dict(state["learner"])
        times.seconds = list(state["step_times"])
        saved = state["run"]
        for key in ("losses", "elapsed_s", "reference_loss", "above"):
            run[key] = saved[key]
        for part in ("evals", "curve_s", "wandb"):  # cells new to this training keep their fresh entries
            run[part].update({k: v for k, v in saved[part].items() if k in run[part]})

    def checkpoint() -> None:
        if not leader:
            return
        run["elapsed_s"] = elapsed_before + time.perf_counter() - started
        checkpoints.save(ckpt, {"training_key": training.key, "code_state": code, "device": device_label,
                                "learner": learner.state_dict(), "iteration": learner.iteration,
                                "step_times": times.seconds, "run": run})

    elapsed_before = run["elapsed_s"]
    trackers = {c.cell: start_tracker(c, wandb if leader else "disabled", run["wandb"][c.cell]) for c in training.cells}
    stepper = learner if ranks is None else distributed.DataParallel(learner, ranks)
    if wandb != "online":  # an offline run cannot be resumed: the new one gets the whole curve so far
        for c in training.cells:
            for point in curve_points(run, c.cell):
                trackers[c.cell] = tracked(trackers[c.cell], "log", point["iteration"], logged(point))
    cut_short = False
    bar = tqdm(total=first.meta_iterations, initial=learner.iteration, desc=training.name, unit="it",
               leave=False, position=1, disable=quiet())
    while learner.iteration < first.meta_iterations:
        stop = past_deadline(deadline) or (stop_iteration is not None and learner.iteration >= stop_iteration)
        if ranks is not None:
            stop = distributed.agree_to_stop(stop, device)
        if stop:
            cut_short = True
            break
        batch = train_batch(train_pool, first, learner.iteration)
        if run["reference_loss"] is None:
            run["reference_loss"] = reference_loss(learner.model, batch)
        metrics = times.time(device, lambda: stepper.meta_step(batch))
        it = learner.iteration
        run["losses"].append(metrics["loss"])
        check_divergence(metrics["loss"], run, first, it)
        for c in training.cells if leader else ():
            if c.eval_every and it % c.eval_every == 0:
                t0 = time.perf_counter()
                res = evaluate(learner.model, eval_pools[c.cell], c.ways, c.shots,
                               replace(c.eval, num_tasks=c.curve_tasks), device=device, diverge_factor=c.diverge_factor)
                run["curve_s"][c.cell] += time.perf_counter() - t0
                run["evals"][c.cell][it] = (res.metric, res.mean, res.ci95)
            trackers[c.cell] = tracked(trackers[c.cell], "log", it, logged(curve_point(run, c.cell, it)))
        if it % training.checkpoint_every == 0 or it == first.meta_iterations:
            checkpoint()
        bar.update(1)
    bar.close()
    if cut_short:
        checkpoint()
    if not leader:
        return []  # rank 0 measures, evaluates and writes the rows

    # One extra outer update on a copy, on the batch after the last planned one (never a training batch).
    saved_bytes = measure.autograd_saved_bytes(learner, train_batch(train_pool, first, first.meta_iterations))
    training_s = elapsed_before + time.perf_counter() - started - sum(run["curve_s"].values())
    rows, failure = [], None
    for c in training.cells:
        result, eval_s = None, 0.0
        if c.eval.num_tasks:
            measure.synchronize(device)
            t0 = time.perf_counter()
            try:
                result = evaluate(learner.model, eval_pools[c.cell], c.ways, c.shots, c.eval, device=device,
                                  progress=show_progress(), diverge_factor=c.diverge_factor)
            except DivergedError as e:
                if len(training.cells) > 1:  # which of the training's cells (one cell: the caller says it)
                    print(f"error: cell {c.suite}/{c.cell}: no row written: {e}", file=sys.stderr)
                failure = failure or e
                tracked(trackers[c.cell], "finish", None)
                continue
            measure.synchronize(device)
            eval_s = time.perf_counter() - t0
        peak, kind = measure.peak_memory(device)
        row = make_row(c, learner, training, result, run, times, command, git, device, jobs,
                       world_size=1 if ranks is None else ranks.world,
                       saved_bytes=saved_bytes, peak=(peak, kind), eval_s=eval_s,
                       total_s=training_s + run["curve_s"][c.cell] + eval_s)
        write_result(out / c.suite, row, curve_points(run, c.cell), result.per_task if result else None)
        tracked(trackers[c.cell], "finish", row)
        rows.append(row)
    if failure is not None:
        raise failure
    return rows


def curve_point(run: dict[str, Any], cell: str, iteration: int) -> dict[str, Any]:
    metric, mean, ci = run["evals"][cell].get(iteration, (None, None, None))
    return {"iteration": iteration, "train_loss": run["losses"][iteration - 1], "eval_metric": metric,
            "eval_mean": mean, "eval_ci95": ci}


def curve_points(run: dict[str, Any], cell: str) -> list[dict[str, Any]]:
    """The curve of ``cell``: every meta-step's training loss, and its own periodic evaluations."""
    return [curve_point(run, cell, i) for i in range(1, len(run["losses"]) + 1)]


def logged(point: dict[str, Any]) -> dict[str, Any]:
    """A curve point as logged to wandb: the metrics it has, keyed by iteration elsewhere."""
    return {k: v for k, v in point.items() if v is not None and k != "iteration"}


def checkpoint_path(out: Path, cell: CellConfig) -> Path:
    """Where ``cell``'s training keeps its checkpoint (shared with every cell of the same training)."""
    return checkpoints.checkpoint_path(out, cell.suite, training_key(cell))


def load_checkpoint(path: Path, cell: CellConfig, code_state: str, device: str) -> dict[str, Any] | None:
    """``checkpoints.load`` for ``cell``'s training."""
    return checkpoints.load(path, training_key(cell), code_state, device, cell.cell)


def run_cell(cell: CellConfig, out: Path, deadline: float | None = None, wandb: str = "offline",
             command: str = "", git: dict[str, Any] | None = None, stop_iteration: int | None = None) -> dict[str, Any]:
    """One cell alone (a training of its own): ``run_training([cell], ...)``'s row."""
    return run_training([cell], out, deadline, wandb, command, git, stop_iteration=stop_iteration)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m benchmarks.running.runner")
    parser.add_argument("--cells-json", required=True, help="JSON list of the cells' CellConfig (one shared training)")
    parser.add_argument("--out", default="results", help="results folder (rows go to OUT/<suite>/rows.csv)")
    parser.add_argument("--deadline", type=float, default=None, help="stop training at this Unix time (budget)")
    parser.add_argument("--stop-iteration", type=int, default=None,
                        help="stop training at this meta-iteration (budget in work, not time)")
    parser.add_argument("--wandb", default="offline", choices=["offline", "online", "disabled"])
    parser.add_argument("--command", default="", help="the user's command line, recorded in the row")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--cpus", default=None, help="comma-separated CPU cores this process is pinned to")
    parser.add_argument("--jobs", type=int, default=1, help="trainings the run allows side by side (recorded in rows)")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process (the CLI) dies")
    parser.add_argument("--git-json", default=None, help="git_commit/git_dirty read by the caller at the run's start")
    parser.add_argument("--distributed", action="store_true",
                        help="one rank of a data-parallel training started by torchrun (benchmarks.running.distributed)")
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        bind_to_parent(args.parent_pid)
    elif args.distributed:
        bind_to_parent(os.getppid())  # torchrun's agent: a rank does not outlive it
    try:
        cells = [CellConfig.from_dict(d).validate() for d in json.loads(args.cells_json)]
        if not cells:
            raise ValueError("no cells given")
    except (ValueError, TypeError, AttributeError) as e:
        print(f"error: bad --cells-json: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    ranks = None
    if args.distributed:
        try:
            ranks = distributed.init(cells[0].device)
        except distributed.DistributedError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_CONFIG
    if args.cpus:
        cores = args.cpus.split(",")
        if ranks is not None:  # each rank its own share of the training's cores
            per = max(1, args.threads)
            cores = [cores[(ranks.local_rank * per + k) % len(cores)] for k in range(per)]
        pin_cpus(",".join(cores))
    keep_freed_memory()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    git = json.loads(args.git_json) if args.git_json else provenance.git_state(exclude=args.out)
    names = ", ".join(f"{c.suite}/{c.cell}" for c in cells)
    try:
        run_training(cells, Path(args.out), args.deadline, args.wandb, args.command or provenance.command_line(), git,
                     args.jobs, ranks, args.stop_iteration)
        if ranks is not None:
            torch.distributed.barrier()  # the other ranks wait for rank 0's evaluations and rows
    except DataError as e:
        print(f"error: {names}: data problem, nothing trained:\n{e}", file=sys.stderr)
        return EXIT_DATA
    except LibraryMissing as e:
        print(f"error: {names}: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except DivergedError as e:
        print(f"error: {names}: diverged, no row written for it: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except checkpoints.TrainingBusy as e:
        print(f"skipped: {e}", file=sys.stderr)
        return EXIT_BUSY
    except distributed.DistributedError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except KeyboardInterrupt:
        print(f"\ninterrupted: {names} resume from the last checkpoint when the same command is rerun", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if ranks is not None and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
