"""Bring a ``rows.csv`` written under an older schema up to the current one, in place (atomically).

    python -m benchmarks.running.migrate results/default/rows.csv [more rows.csv ...]

Schema 1 -> 2 adds the columns of shared trainings, evaluation mode, parallel jobs and backends. Every value
added is what schema-1 code did, not a guess: each cell trained alone (``training_key`` from its own
config, ``training_cells`` = 1), one cell at a time (``parallel_jobs`` = 1) in one process
(``world_size`` = 1), evaluated by the serial evaluator (``eval_mode`` = serial, the only one it had);
``backend_info`` is left empty (not recorded then). Schema-1 rows have no per-task scores; the paired
table says so. A file already at the current schema is left untouched.

It lives in ``running``, not beside the row schema in ``records``, because the training key it fills in is
computed from a cell's config (``running.config``, ``running.trainings``): records never import running.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from benchmarks.records.files import write_csv_atomic
from benchmarks.records.rows import COLUMNS, SCHEMA_VERSION, TEXT_COLUMNS, read_rows
from benchmarks.running.config import CellConfig
from benchmarks.running.trainings import training_key


def migrate(path: Path) -> str:
    """Migrate one file; returns what was done (for the message)."""
    df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False, na_values=[""])
    versions = set(pd.to_numeric(df["schema_version"], errors="coerce").dropna().astype(int))
    if versions == {SCHEMA_VERSION}:
        read_rows(path)  # still checked
        return f"{path}: already schema {SCHEMA_VERSION}, unchanged"
    if versions != {1}:
        raise ValueError(f"{path}: schema version(s) {sorted(versions)}; this tool migrates schema 1 to {SCHEMA_VERSION}")
    keys = [training_key(CellConfig.from_json(j)) for j in df["config_json"]]
    df = df.assign(schema_version=SCHEMA_VERSION, training_key=keys, training_cells=1,
                   eval_mode=["serial" if int(n) > 0 else None for n in df["eval_tasks"]], parallel_jobs=1,
                   world_size=1, backend_info=None)
    write_csv_atomic(df[COLUMNS], path)
    read_rows(path)  # the migrated file must pass every row check
    return f"{path}: {len(df)} rows migrated from schema 1 to {SCHEMA_VERSION}"


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print("usage: python -m benchmarks.running.migrate ROWS_CSV [ROWS_CSV ...]", file=sys.stderr)
        return 2
    for path in paths:
        try:
            print(migrate(path))
        except (OSError, ValueError, KeyError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
