"""All the rows of a results folder: every ``<results>/*/rows.csv``, the newest row of each cell kept.

Tables, plots, the paired comparison and the cost planner read rows through ``load_rows``.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks.records.mallocs import without_malloc
from benchmarks.records.rows import read_rows

SKIP_DIRS = {"reference", "tables", "plots", "perf", "limits"}
"""Folders of a results folder that hold no suite's rows."""


def load_rows(results_dir: str | Path) -> tuple[pd.DataFrame, list[Path]]:
    """The rows of ``<results_dir>/*/rows.csv`` (not reference/, tables/, plots/, perf/) and the files read.

    Only the newest row of each (suite, cell, device, seed) is kept (``latest``).
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder {results_dir} does not exist; run "
                                "`python -m benchmarks.cli run --suite default` first, or pass --results-dir")
    files = sorted(p for p in results_dir.glob("*/rows.csv") if p.parent.name not in SKIP_DIRS)
    frames = [f for f in (read_rows(p).assign(rows_file=str(p)) for p in files) if not f.empty]
    return (latest(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame()), files


def latest(rows: pd.DataFrame) -> pd.DataFrame:
    """The newest row (by ``date``) of each (suite, cell, device, seed); the others stay in the files as history.

    A rerun of a cell under the same config replaces its row in the file (``results.write_row``); a
    rerun under another config (new code changed a default, a suite was edited) adds a row with
    another hash. Without this, both would be averaged as if they were two seeds. The device is compared
    without its malloc (``provenance.device_name``): a malloc moves times, never a computed value, so a
    rerun with another one supersedes the older row rather than standing beside it.
    """
    keyed = rows.assign(_device=rows["device"].astype(str).map(without_malloc))
    # ISO-8601 UTC dates sort as text; a row without a date counts as the oldest.
    ordered = keyed.sort_values("date", kind="stable", na_position="first")
    kept = ordered.drop_duplicates(["suite", "cell", "_device", "seed"], keep="last")
    return kept.sort_index().drop(columns="_device")
