"""The result row of one cell of a shared training: what it measured, what it cost, where it came from.

``make_row`` is the runner's one place that fills ``benchmarks.records.rows.COLUMNS``; the meaning of
every column is documented there.
"""
from __future__ import annotations

from typing import Any

from algorithms.base import backend_info
from benchmarks.records import provenance
from benchmarks.records.rows import COLUMNS, SCHEMA_VERSION
from benchmarks.running.config import CellConfig


def make_row(cell: CellConfig, learner, training, result, run: dict[str, Any], times, command: str,
             git: dict[str, Any], device: str, jobs: int, *, saved_bytes: int | None, peak: tuple[int, str],
             eval_s: float, total_s: float, world_size: int = 1) -> dict[str, Any]:
    losses = run["losses"]
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
        "training_key": training.key, "training_cells": len(training.cells),
        "metric": result.metric if result else "", "metric_mean": result.mean if result else None,
        "metric_ci95": result.ci95 if result else None, "eval_tasks": result.n if result else 0,
        "eval_mode": result.mode if result else "",
        "peak_memory_bytes": peak[0], "memory_kind": peak[1], "autograd_saved_bytes": saved_bytes,
        "step_time_median_s": times.median, "step_time_total_s": times.total, "eval_time_s": eval_s,
        "total_time_s": total_s, "parallel_jobs": jobs, "world_size": world_size,
        "backend_info": backend_info(learner),
        **provenance.provenance(device, command, git),
        "config_json": cell.to_json(), "config_hash": cell.config_hash(),
    }
    return {c: row[c] for c in COLUMNS}
