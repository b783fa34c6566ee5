"""Paper/comparison tables from small fake row frames (TEST-ONLY numbers, written to tmp dirs only).

Run: .venv/bin/python -m pytest -q tests/test_tables.py
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.reporting import tables
from _rows import valid_row
from benchmarks.records.files import write_csv_atomic
from benchmarks.records.rows import COLUMNS

REPO = Path(__file__).resolve().parent.parent


def fake_row(**kw) -> dict:
    """One schema-complete row (``_rows.valid_row``); every number here is invented for the test."""
    return valid_row(**kw)


def write_suite(results: Path, suite: str, rows: list[dict]) -> None:
    (results / suite).mkdir(parents=True, exist_ok=True)
    write_csv_atomic(pd.DataFrame([{**r, "suite": suite} for r in rows], columns=COLUMNS), results / suite / "rows.csv")


def md_row(text: str, label: str) -> list[str]:
    """Cells of the first Markdown table line starting with ``| label |``."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


@pytest.fixture
def rendered(tmp_path):
    res = tmp_path / "results"
    write_suite(res, "paper", [
        # Published Reptile 5-way 1-shot non-transductive: 95.39 ± 0.09 -> [95.30, 95.48]; ours overlaps.
        fake_row(cell="omni-rep-5w1s", metric_mean=95.40, metric_ci95=0.10),
        # Published Reptile + transduction 5-way 5-shot: 99.48 ± 0.06; ours is far below -> disjoint.
        fake_row(cell="omni-rept-5w5s", shots=5, transductive=True, metric_mean=90.0, metric_ci95=1.0),
        # Two seeds of MAML 20-way 1-shot, one cut short by a budget.
        fake_row(cell="omni-maml-20w1s", algorithm="maml", ways=20, transductive=True, seed=0,
                 metric_mean=94.0, metric_ci95=0.4),
        fake_row(cell="omni-maml-20w1s", algorithm="maml", ways=20, transductive=True, seed=1,
                 metric_mean=96.0, metric_ci95=0.4, complete=False, iterations_run=400),
        # Small split: must not fill Table 2.
        fake_row(cell="small-fomaml", algorithm="fomaml", split="small", transductive=True,
                 metric_mean=88.0, metric_ci95=0.7, device="cpu: Odd_Name & 100%"),
        # Not one of the paper's protocols: gets its own row in the table of its split only.
        fake_row(cell="small-maml-nontransductive", algorithm="maml", split="small", metric_mean=80.0),
    ])
    out = tmp_path / "tables"
    tables.main(res, out, REPO / "results" / "reference" / "published.csv")
    return {p.name: p.read_text() for p in out.iterdir()}


def test_overlap_and_disjoint_markers(rendered):
    md = rendered["paper_tables.md"].split("## Reptile paper Table 2")[1]
    reptile = md_row(md, "Reptile")
    assert reptile[1] == "95.39 ± 0.09"
    assert reptile[2].startswith("95.40 ± 0.10 (n=600, 1,000 it, 1 seed)") and reptile[2].endswith("✓ overlap")
    transd = md_row(md, "Reptile + Transduction")
    assert transd[3] == "99.48 ± 0.06" and transd[4].endswith("✗ disjoint")


def test_overlap_boundaries():
    assert tables.overlap(10.0, 1.0, 12.0, 1.0)  # touching intervals count as overlapping
    assert not tables.overlap(10.0, 1.0, 12.01, 1.0)
    assert tables.overlap("95.39", "0.09", 95.2, 0.1)


def test_not_run_cells_and_small_split_kept_out_of_table2(rendered):
    md = rendered["paper_tables.md"]
    table1 = md.split("## Reptile paper Table 1")[1].split("## Reptile paper Table 2")[0]
    assert md_row(table1, "MAML + Transduction")[1:] == ["48.70 ± 1.84", "not run", "63.11 ± 0.92", "not run"]
    table2 = md.split("## Reptile paper Table 2")[1].split("## iMAML paper Table 2")[0]
    assert md_row(table2, "1st-order MAML + Transduction")[2] == "not run"
    companion = md.split("## Omniglot small split")[1]
    assert "not comparable to the published split" in companion.splitlines()[0]
    imaml = md.split("## iMAML paper Table 2")[1].split("## ANIL paper Table 2")[0]
    assert md_row(imaml, "iMAML-GD + Transduction")[1:3] == ["99.16 ± 0.35", "not run"]
    assert md_row(imaml, "iMAML-HF + Transduction")[2] == "not implemented"
    assert md_row(imaml, "MAML + Transduction")[1] == "98.7 ± 0.4"  # the paper's quote of Finn et al.
    anil = md.split("## ANIL paper Table 2")[1].split("## Omniglot small split")[0]
    assert md_row(anil, "ANIL + Transduction")[1:4:2] == ["96.2 ± 0.5", "98.0 ± 0.3"]
    assert md_row(anil, "MAML + Transduction")[1] == "93.7 ± 0.7"  # the ANIL paper's own MAML run, not Finn's
    assert md_row(companion, "1st-order MAML + Transduction")[1].startswith("88.00 ± 0.70 (n=600")
    assert md_row(companion, "MAML")[1].startswith("80.00 ± 0.50")
    assert "| MAML |" not in table2  # no such row where nothing of it was measured


def test_seed_aggregation_and_incomplete_flag(rendered):
    cell = md_row(rendered["paper_tables.md"].split("## Reptile paper Table 2")[1], "MAML + Transduction")[6]
    # mean of means (94 + 96) / 2; CI = 1.96 * sqrt(var/S + mean(se^2)) with var = 2, S = 2, se = 0.4/1.96
    ci = 1.96 * math.sqrt(2.0 / 2 + (0.4 / 1.96) ** 2)
    assert cell.startswith(f"95.00 ± {ci:.2f} (n=600, 400–1,000 it, incomplete (of 1,000 planned), 2 seeds)")


def test_a_rerun_under_another_config_supersedes_the_old_row(tmp_path):
    """Same cell, device and seed at two dates (e.g. a default changed between commits): the newest is
    shown, not an average of the two as if they were seeds; another device's row stays beside it."""
    res = tmp_path / "results"
    write_suite(res, "default", [
        fake_row(cell="omni-rep-5w1s", metric_mean=90.0, date="2026-11-27T09:00:00+00:00", inner_steps=4),
        fake_row(cell="omni-rep-5w1s", metric_mean=95.40, metric_ci95=0.10, date="2026-11-27T10:00:00+00:00"),
        fake_row(cell="omni-rep-5w1s", metric_mean=80.0, date="2026-11-26T10:00:00+00:00", inner_steps=3),
        fake_row(cell="omni-rep-5w1s", metric_mean=70.0, device="cuda: TestGPU", date="2026-11-20T10:00:00+00:00"),
    ])
    rows, _ = tables.load_rows(res)
    assert sorted(zip(rows.device, rows.metric_mean)) == [("cpu: TestCPU", 95.40), ("cuda: TestGPU", 70.0)]
    tables.main(res, tmp_path / "t", REPO / "results" / "reference" / "published.csv")
    md = (tmp_path / "t" / "default_suite.md").read_text()
    assert "95.40 ± 0.10" in md and "70.00" in md and "90.00" not in md and "80.00" not in md


def test_a_longer_run_cut_short_beats_a_finished_smoke_run(tmp_path):
    res = tmp_path / "results"
    write_suite(res, "smoke", [fake_row(cell="omni-rep", meta_iterations=4, iterations_run=4, metric_mean=30.0)])
    write_suite(res, "default", [fake_row(cell="omni-rep", meta_iterations=500, iterations_run=450, complete=False,
                                          metric_mean=95.40, metric_ci95=0.10)])
    tables.main(res, tmp_path / "t", REPO / "results" / "reference" / "published.csv")
    reptile = md_row((tmp_path / "t" / "paper_tables.md").read_text().split("## Reptile paper Table 2")[1], "Reptile")
    assert reptile[2].startswith("95.40 ± 0.10 (n=600, 450 it, incomplete (of 500 planned)")
    assert "also measured, not shown: smoke/omni-rep" in (tmp_path / "t" / "paper_tables.md").read_text()


def test_latex_escapes_and_provenance(rendered):
    tex = rendered["paper_tables.tex"]
    assert r"Odd\_Name \& 100\%" in tex
    assert r"95.40 $\pm$ 0.10" in tex and r"\textbf{disjoint}" in tex
    assert r"\multicolumn{2}{c}{5-way 1-shot}" in tex
    for body_line in (l for l in tex.splitlines() if l.endswith(r"\\")):
        assert "_" not in body_line.replace(r"\_", "") and "%" not in body_line.replace(r"\%", "")
    md = rendered["paper_tables.md"]
    assert "Generated by `python -m benchmarks.reporting.tables --results-dir" in md
    assert "cpu: TestCPU" in md and "a" * 12 in md


def test_comparison_from_scaling_rows(tmp_path):
    res = tmp_path / "results"
    # Second-order MAML's autograd-held bytes grow linearly in K (invented slope 1000 B/step, intercept 500).
    write_suite(res, "scaling", [
        fake_row(cell=f"scaling-maml-k{k}", algorithm="maml", inner_steps=k, metric=None, metric_mean=None,
                 metric_ci95=None, eval_tasks=0, autograd_saved_bytes=500 + 1000 * k * 2 ** 10,
                 peak_memory_bytes=k * 2 ** 20, step_time_median_s=0.01 * k)
        for k in (1, 2, 5, 10, 20)])
    write_suite(res, "default", [fake_row(cell="d-maml", algorithm="maml", split="small", transductive=True,
                                          metric_mean=91.0, metric_ci95=1.0),
                                 # A cost-only row (no metric) beside them must not turn "5-way" into "5.0-way".
                                 fake_row(cell="d-sine", dataset="sine", split="maml", ways=1, shots=10,
                                          metric="mse", metric_mean=0.12345, metric_ci95=0.01)])
    tables.main(res, tmp_path / "t", REPO / "results" / "reference" / "published.csv")
    cmp = (tmp_path / "t" / "comparison.md").read_text()
    row = md_row(cmp, "maml")
    assert row[2] == "second"
    assert row[5] == f"{1000 / 1024:.1f} MiB"  # the fitted slope, in MiB per inner step
    assert row[6] == "5.0 MiB (cpu_rss)" and row[7] == "20.0 MiB (cpu_rss)"
    assert row[8] == "0.05 s" and row[9] == "0.2 s"
    assert row[10] == "omniglot/small 5-way 1-shot transductive: 91.00 ± 1.00"
    assert md_row(cmp.split("## Sine")[1], "default/d-sine")[5] == "0.1235 ± 0.0100"
    default = (tmp_path / "t" / "default_suite.md").read_text()
    assert md_row(default, "d-maml")[-1] == "cpu: TestCPU"


def test_cli_reports_missing_results_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.reporting.tables", "--results-dir", str(tmp_path / "nope")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
