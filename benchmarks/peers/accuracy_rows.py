"""The rows of an authors' code trained and scored on this project's tasks, in this project's schema.

Used by ``official_reptile_accuracy`` and ``official_maml``: one row per cell of the training (cell
``official-<cell>``, backend ``official-tf``; its config is the cell's, with the official code's name and commit
and the run's threads), with the per-task scores beside it, so ``reporting.official_accuracy`` and the paired
table pair it with this project's row of the same cell task by task. A driver's result holds ``step_wall_s``
(one wall time per meta-iteration run) and, per cell, ``correct`` (per task) out of ``queries`` per task
(``ways`` for the Reptile driver: one query image per class) and ``wall_s`` of the evaluation.
"""
from __future__ import annotations

import hashlib
import json
import statistics


def accuracy_rows(training, result: dict, implementation: str, official_commit: str, versions: str, threads: int,
                  command: str, git: dict, suite: str, suffix: str = "",
                  extra: dict | None = None) -> list[tuple[dict, list[float]]]:
    """One (row, per-task scores in %) per cell of ``training`` (``benchmarks.running.trainings.Training``)."""
    from algorithms.evaluation import summarize
    from benchmarks.records import provenance
    from benchmarks.records.rows import COLUMNS, SCHEMA_VERSION

    steps = result["step_wall_s"]
    label = "1 thread" if threads == 1 else f"{threads or 'default'} threads"
    out = []
    for cell in training.cells:
        e = result["evaluations"][cell.cell]
        scores = [100.0 * c / (e.get("queries") or e["ways"]) for c in e["correct"]]
        summary = summarize(scores, "accuracy", "serial")  # task by task, as the official codes score
        config = {"implementation": implementation, "official_commit": official_commit, "threads": threads,
                  **(extra or {}), "cell": cell.to_dict(), "cell_config_hash": cell.config_hash()}
        config_json = json.dumps(config, sort_keys=True, separators=(",", ":"))
        row = {
            "schema_version": SCHEMA_VERSION, "suite": suite, "cell": f"official-{cell.cell}{suffix}",
            "algorithm": cell.learner.algorithm, "backend": "official-tf", "dataset": cell.dataset,
            "split": cell.split, "ways": cell.ways, "shots": cell.shots, "transductive": cell.eval.transductive,
            "first_order": cell.first_order, "inner_steps": cell.learner.inner_steps,
            "eval_inner_steps": cell.eval.inner_steps, "seed": cell.seed, "meta_iterations": cell.meta_iterations,
            "iterations_run": len(steps), "complete": len(steps) == cell.meta_iterations,
            "meta_batch": cell.meta_batch, "final_train_loss": None, "training_key": training.key,
            "training_cells": len(training.cells), "metric": "accuracy", "metric_mean": summary.mean,
            "metric_ci95": summary.ci95, "eval_tasks": summary.n, "eval_mode": summary.mode,
            "peak_memory_bytes": result["peak_rss_bytes"], "memory_kind": "cpu_rss", "autograd_saved_bytes": None,
            "step_time_median_s": statistics.median(steps), "step_time_total_s": sum(steps),
            "eval_time_s": e["wall_s"], "total_time_s": sum(steps) + e["wall_s"], "parallel_jobs": 1,
            "world_size": 1, **provenance.provenance("cpu", command, git),
            "device": provenance.cpu_device(label, result.get("malloc", "glibc")),
            "backend_info": versions, "config_json": config_json,
            "config_hash": hashlib.sha256(config_json.encode()).hexdigest()[:12],
        }
        out.append(({c: row[c] for c in COLUMNS}, scores))
    return out
