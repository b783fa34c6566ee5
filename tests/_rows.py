"""A schema-complete result row for tests; every number here is invented and never leaves tmp_path."""
from __future__ import annotations

import hashlib

from benchmarks.records.rows import COLUMNS, SCHEMA_VERSION


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def valid_row(**kw) -> dict:
    """A row that passes ``rows.check_row``; ``kw`` overrides fields. Without an explicit ``config_hash``,
    one is derived from (cell, seed, inner_steps), and ``training_key`` likewise; ``eval_mode`` is emptied
    for cells without evaluation."""
    row = dict.fromkeys(COLUMNS)
    row.update(schema_version=SCHEMA_VERSION, suite="paper", cell="c", algorithm="reptile", backend="reference",
               dataset="omniglot", split="paper", ways=5, shots=1, transductive=False, first_order=False,
               inner_steps=5, eval_inner_steps=50, seed=0, meta_iterations=1000, iterations_run=1000,
               complete=True, meta_batch=5, final_train_loss=0.5, training_cells=1, metric="accuracy",
               metric_mean=95.0, metric_ci95=0.5, eval_tasks=600, eval_mode="serial", peak_memory_bytes=2 ** 20,
               memory_kind="cpu_rss", autograd_saved_bytes=0, step_time_median_s=0.1, step_time_total_s=100.0,
               eval_time_s=1.0, total_time_s=101.0, parallel_jobs=1, world_size=1, device="cpu: TestCPU",
               backend_info="test", torch_version="2.13.0", python_version="3.11", cuda_version="",
               git_commit="a" * 40, git_dirty=False, command="test", config_json="{}", date="2026-01-01")
    row.update(kw)
    if "config_hash" not in kw:
        row["config_hash"] = _hex(f"{row['cell']}-{row['seed']}-{row['inner_steps']}")
    if "training_key" not in kw:
        row["training_key"] = _hex(f"training-{row['config_hash']}")
    if not row["eval_tasks"] and "eval_mode" not in kw:
        row["eval_mode"] = None
    return row
