"""Plots from small fake rows and curves (TEST-ONLY numbers, written to tmp dirs only).

Run: .venv/bin/python -m pytest -q tests/test_plots.py
"""
from __future__ import annotations

import pandas as pd
from PIL import Image

from benchmarks.reporting import plots
from benchmarks.records.files import write_csv_atomic
from benchmarks.records.rows import CURVE_COLUMNS
from test_tables import fake_row, write_suite


def test_scaling_and_curve_plots_are_written(tmp_path):
    res = tmp_path / "results"
    scaling = [fake_row(cell=f"scaling-{alg}-{backend}-k{k}", algorithm=alg, backend=backend, inner_steps=k,
                        metric=None, metric_mean=None, metric_ci95=None, eval_tasks=0,
                        autograd_saved_bytes=None if backend == "batched" else 1000 * k,
                        peak_memory_bytes=k * 2 ** 20, step_time_median_s=0.01 * k, device="cuda: Test GPU")
               for alg in ("maml", "reptile") for backend in ("reference", "batched") for k in (1, 2, 5)]
    write_suite(res, "scaling", scaling)
    write_suite(res, "default", [fake_row(cell="d-rep", seed=s) for s in (0, 1)]
                + [fake_row(cell="d-maml", algorithm="maml", transductive=True)])
    curves = pd.DataFrame([{"suite": "default", "cell": cell, "seed": s, "device": "cpu: TestCPU", "iteration": it, "train_loss": 1.0 / it,
                            "eval_metric": "accuracy" if it % 10 == 0 else None,
                            "eval_mean": 50.0 + it if it % 10 == 0 else None,
                            "eval_ci95": 1.0 if it % 10 == 0 else None}
                           for cell, seeds in (("d-rep", (0, 1)), ("d-maml", (0,))) for s in seeds
                           for it in range(1, 31)], columns=CURVE_COLUMNS)
    write_csv_atomic(curves, res / "default" / "curves.csv")

    paths = plots.main(res, tmp_path / "plots")

    names = sorted(p.name for p in paths)
    assert names == ["curves-default.png", "scaling-cuda-test-gpu.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200
            # A blank canvas has one colour; plotted lines add many more.
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20
    assert not list((tmp_path / "plots").glob(".*"))  # no temporary files left behind


def test_nothing_to_plot_is_not_an_error(tmp_path):
    (tmp_path / "results").mkdir()
    assert plots.main(tmp_path / "results") == []
