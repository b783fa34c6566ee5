"""Know the price first: a suite's distinct trainings, evaluation tasks and projected hours on a device.

    python -m benchmarks.cli plan --suite paper-omniglot [--device cpu|cuda] [--no-probe]

Costs come from measurements, never from guesses:
- *rows*: committed (or your own) rows in ``--results`` measured on the same device (on CPU, the same
  thread count): seconds per meta-step of a training with the same cost (same task shape, meta-batch
  and learner, learning rates aside), and evaluation seconds per task of an evaluation of the same shape;
- else a *probe*: 2 timed meta-steps (after 1 warm-up) and 3 timed evaluation tasks (after 1) of that
  very configuration on random images of the pool's shape (pixel values do not change the work done),
  here, now. A probe of 2 steps is rough (this machine's noise is 20%, PITFALLS.md section 4); rows win.
Hours per cell = its training's meta-steps (counted once per shared training) + its curve evaluations +
its final evaluation. "Without sharing" is what the suite would cost if every cell trained its own model.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from algorithms import build_learner, build_model
from algorithms.evaluation import evaluate
from benchmarks.records import provenance
from benchmarks.running.allocator import keep_freed_memory, planned_malloc
from benchmarks.records.collect import load_rows
from benchmarks.running.config import CellConfig
from benchmarks.running.trainings import group
from datasets.sine import SinePool
from datasets.tasks import ClassPool

SHAPES = {"omniglot": (1, 28, 28), "miniimagenet": (3, 84, 84)}
LEARNER_COST = ("algorithm", "backend", "inner_steps", "inner_batch", "inner_optimizer", "first_order",
                "persist_inner_state")
EVAL_COST = ("query", "inner_steps", "inner_batch", "inner_optimizer", "transductive", "mode")


def training_cost_key(cell: CellConfig) -> str:
    learner = cell.learner.to_dict()
    return json.dumps([cell.dataset, cell.ways, cell.train_shots, cell.train_query, cell.meta_batch,
                       {k: learner[k] for k in LEARNER_COST}], sort_keys=True)


def eval_cost_key(cell: CellConfig) -> str:
    ev = cell.eval.to_dict()
    return json.dumps([cell.dataset, cell.ways, cell.shots, {k: ev[k] for k in EVAL_COST}], sort_keys=True)


def measured_costs(results: Path, device_label: str) -> tuple[dict[str, float], dict[str, float]]:
    """{training cost key: s per meta-step}, {eval cost key: s per task} from rows measured on ``device_label``."""
    steps: dict[str, list[float]] = {}
    tasks: dict[str, list[float]] = {}
    try:
        rows, _ = load_rows(results)
    except (FileNotFoundError, ValueError):
        return {}, {}
    if rows.empty:
        return {}, {}
    for r in rows[rows.device == device_label].itertuples():
        try:
            cell = CellConfig.from_json(r.config_json)
        except (ValueError, TypeError):
            continue
        if r.step_time_median_s == r.step_time_median_s and r.iterations_run >= 3:  # not NaN; a warm median
            steps.setdefault(training_cost_key(cell), []).append(float(r.step_time_median_s))
        if r.eval_tasks and r.eval_time_s > 0:
            tasks.setdefault(eval_cost_key(cell), []).append(float(r.eval_time_s) / int(r.eval_tasks))
    return ({k: statistics.median(v) for k, v in steps.items()}, {k: statistics.median(v) for k, v in tasks.items()})


def probe_pool(cell: CellConfig, shots: int, query: int):
    if cell.dataset == "sine":
        return SinePool()
    g = torch.Generator().manual_seed(0)
    return ClassPool(torch.rand(cell.ways, shots + query, *SHAPES[cell.dataset], generator=g), name="probe")


def probe_training(cell: CellConfig) -> float:
    """Median seconds of 2 meta-steps (after 1 warm-up) of ``cell``'s training, on random data."""
    pool = probe_pool(cell, cell.train_shots, cell.train_query)
    torch.manual_seed(0)
    learner = build_learner(cell.learner, build_model(cell.dataset, cell.ways).to(cell.device), 10**6)
    times = []
    for i in range(3):
        batch = pool.sample_batch(cell.ways, cell.train_shots, cell.train_query, 0, range(i * cell.meta_batch,
                                                                                       (i + 1) * cell.meta_batch))
        batch = batch.to(cell.device)
        _sync(cell.device)
        t0 = time.perf_counter()
        learner.meta_step(batch)
        _sync(cell.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def probe_eval(cell: CellConfig) -> float:
    """Seconds per task of ``cell``'s evaluation: 3 tasks timed after 1 warm-up, on random data."""
    pool = probe_pool(cell, cell.shots, cell.eval.query)
    model = build_model(cell.dataset, cell.ways).to(cell.device)
    evaluate(model, pool, cell.ways, cell.shots, replace(cell.eval, num_tasks=2), device=cell.device)
    _sync(cell.device)
    t0 = time.perf_counter()
    evaluate(model, pool, cell.ways, cell.shots, replace(cell.eval, num_tasks=3), device=cell.device)
    _sync(cell.device)
    return (time.perf_counter() - t0) / 3


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.2f} h" if seconds >= 36 else f"{seconds:,.1f} s"


def report(cells: list[CellConfig], results: Path, probe: bool = True, threads: int = 1,
           malloc: str | None = None) -> str:
    """The plan as text: trainings and their cells, with the source of every cost figure, and the totals.

    ``malloc``: the one the cell processes will run with (default ``allocator.planned_malloc()``'s)."""
    if not cells:
        return "no cells"
    device = cells[0].device
    keep_freed_memory()  # the probe times steps as the cell processes run them
    if device == "cpu" and threads:
        torch.set_num_threads(threads)
    label = provenance.device_name(device, threads or None, malloc or planned_malloc())
    steps, tasks = measured_costs(results, label)
    trainings = group(cells)
    lines = [f"plan of suite {cells[0].suite} on {label}: {len(cells)} cells in {len(trainings)} distinct trainings",
             "costs: 'rows' = measured in committed rows on this device; 'probe' = timed here now; "
             "'unknown' = no rows and --no-probe", ""]
    total = unshared = 0.0
    unknown = 0
    for t in trainings:
        first = t.first
        key = training_cost_key(first)
        step, src = steps.get(key), "rows"
        if step is None and probe:
            step, src = probe_training(first), "probe"
            steps[key] = step
        train_s = None if step is None else step * first.meta_iterations
        unknown += train_s is None
        lines.append(f"training {t.key} ({len(t.cells)} cell{'s' if len(t.cells) > 1 else ''}): "
                     f"{first.meta_iterations:,} meta-steps x "
                     + (f"{step:.3g} s ({src}) = {_hours(train_s)}" if step is not None else "unknown"))
        total += train_s or 0.0
        for c in t.cells:
            unshared += train_s or 0.0
            n_eval = c.eval.num_tasks + (c.meta_iterations // c.eval_every) * c.curve_tasks if c.eval_every else c.eval.num_tasks
            per, esrc = None, "rows"
            if n_eval:
                ekey = eval_cost_key(c)
                per = tasks.get(ekey)
                if per is None and probe:
                    per, esrc = probe_eval(c), "probe"
                    tasks[ekey] = per
            eval_s = 0.0 if not n_eval else (None if per is None else per * n_eval)
            unknown += eval_s is None
            total += eval_s or 0.0
            unshared += eval_s or 0.0
            lines.append(f"  {c.cell}: {n_eval:,} evaluation tasks"
                         + ("" if not n_eval else f" x {per:.3g} s ({esrc}) = {_hours(eval_s)}" if per is not None
                            else " x unknown"))
    at_least = "at least " if unknown else ""
    lines += ["", f"total: {at_least}{_hours(total)} for {len(trainings)} trainings and {len(cells)} cells "
                  f"(without sharing trainings: {at_least}{_hours(unshared)}); with --jobs N, wall time is about "
                  "total / N when N trainings fit the machine"]
    if unknown:
        lines.append(f"{unknown} cost(s) unknown (no rows measured on {label}; rerun without --no-probe to time them)")
    return "\n".join(lines)
