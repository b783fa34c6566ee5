"""The result files: one wide tidy row per cell (``rows.csv``) and training curves (``curves.csv``).

Both live in ``<out>/<suite>/`` and are only ever rewritten whole and atomically
(temporary file in the same folder, then ``os.replace``, under a lock on the folder),
so a reader never sees half a file and two writers never drop each other's rows.
``read_rows`` refuses a file written under another schema (other version, missing or
extra columns) instead of silently mixing rows.

Tables, plots and tracking read rows with ``read_rows(path)``; the runner writes
them with ``write_row`` (which replaces an earlier row of the same
``config_hash``: when a run cut short by a budget is resumed, or when a cell
finished at another commit is run again, see ``completed_hashes``).

Column meanings that are not obvious from the name (see COLUMNS for the order):
- ``first_order``: the outer update uses no second derivatives (Reptile, first-order MAML).
- ``inner_steps`` / ``eval_inner_steps``: inner-loop steps in meta-training / fine-tuning steps at evaluation.
- ``complete``: False when a ``--max-minutes`` budget stopped training before ``meta_iterations``;
  ``iterations_run`` then says how far it got (the row is still evaluated).
- ``final_train_loss``: mean training loss (``meta_step``'s ``loss``) over the last tenth of the meta-steps run.
- ``metric``: ``accuracy`` (percent, 0..100) or ``mse`` (sine); ``metric_ci95`` = 1.96 * sample std / sqrt(n)
  over the ``eval_tasks`` evaluation tasks. Empty for cost-only cells (``eval_tasks`` = 0).
- ``peak_memory_bytes`` with ``memory_kind``: ``cuda_allocator`` (allocator peak of the cell) or ``cpu_rss``
  (peak resident set of the cell's own process, Python and torch included).
- ``autograd_saved_bytes``: most bytes held in autograd's saved tensors during one outer update (each
  storage once); empty where the backend refuses saved-tensor hooks (torch.func).
- ``step_time_*``: wall time of ``meta_step`` calls only (no task sampling, no evaluation), all attempts kept
  by checkpoints; ``eval_time_s``: the final evaluation; ``total_time_s``: the cell's whole work (loading,
  training, curve evaluations, measurement, evaluation), without work lost to an interruption.
- ``device``: ``cpu: <model> (<n> thread[s])`` or ``cuda: <name>``; ``git_dirty``: files differ from
  ``git_commit`` (the results folder excluded); ``command``: the command line that reproduces the row.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from datasets.archive import atomic_write

SCHEMA_VERSION = 1

COLUMNS = [
    # identity
    "schema_version", "suite", "cell", "algorithm", "backend", "dataset", "split", "ways", "shots",
    "transductive", "first_order", "inner_steps", "eval_inner_steps", "seed",
    # training
    "meta_iterations", "iterations_run", "complete", "meta_batch", "final_train_loss",
    # evaluation
    "metric", "metric_mean", "metric_ci95", "eval_tasks",
    # cost
    "peak_memory_bytes", "memory_kind", "autograd_saved_bytes", "step_time_median_s", "step_time_total_s",
    "eval_time_s", "total_time_s",
    # provenance
    "device", "torch_version", "python_version", "cuda_version", "git_commit", "git_dirty", "command",
    "config_json", "config_hash", "date",
]
BOOL_COLUMNS = ("transductive", "first_order", "complete", "git_dirty")
CURVE_COLUMNS = ["suite", "cell", "seed", "device", "iteration", "train_loss", "eval_metric", "eval_mean", "eval_ci95"]
ROWS_FILE = "rows.csv"
CURVES_FILE = "curves.csv"


class ResultsFormatError(ValueError):
    """A results file does not have the columns or schema version this code writes."""


def _fresh_hint(path: Path) -> str:
    return f"move {path} aside (or pass a fresh --out folder) and rerun; rows of different schemas are never mixed"


def _as_bool(value: Any) -> Any:
    if isinstance(value, str):
        return {"true": True, "false": False}.get(value.strip().lower(), value)
    return value


def read_rows(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ``rows.csv``; raise FileNotFoundError or ResultsFormatError with a message saying what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}; run `python -m benchmarks.cli run --suite NAME` first")
    df = pd.read_csv(path, dtype={"config_hash": str, "git_commit": str, "cuda_version": str})
    missing = [c for c in COLUMNS if c not in df.columns]
    extra = [c for c in df.columns if c not in COLUMNS]
    if missing or extra:
        raise ResultsFormatError(
            f"{path} does not have the result columns of schema version {SCHEMA_VERSION} "
            f"(missing: {missing or 'none'}; unexpected: {extra or 'none'}); {_fresh_hint(path)}"
        )
    versions = sorted(set(df["schema_version"].dropna().astype(int)))
    if any(v != SCHEMA_VERSION for v in versions):
        raise ResultsFormatError(
            f"{path} holds rows of schema version(s) {versions}; this code reads and writes version "
            f"{SCHEMA_VERSION}; {_fresh_hint(path)}"
        )
    for col in BOOL_COLUMNS:
        df[col] = df[col].map(_as_bool)
    return df[COLUMNS]


def read_rows_or_empty(path: str | os.PathLike) -> pd.DataFrame:
    """Like ``read_rows`` but an absent file is an empty table (a new results folder)."""
    if not Path(path).exists():
        return pd.DataFrame(columns=COLUMNS)
    return read_rows(path)


def completed_hashes(path: str | os.PathLike, git: dict, device: str) -> set[str]:
    """Config hashes of the cells this code version has finished on this device: rows that say
    ``complete``, were written from a clean tree at ``git["git_commit"]`` and name ``device`` (on CPU
    the name carries the thread count). The runner skips those cells and runs every other one.

    Rows of another commit (the committed reference runs in a fresh clone, or older code) do not
    count: skipping them would pass another version's numbers off as this one's, and would make
    ``make benchmark`` in a fresh clone a no-op. Such a cell is run again and its new row replaces
    the old one (same ``config_hash``, see ``write_row``). With uncommitted changes
    (``git["git_dirty"]`` not False) nothing counts: a row does not say which changes it ran with.
    """
    df = read_rows_or_empty(path)
    if git.get("git_dirty") is not False or not git.get("git_commit"):
        return set()
    complete = df["complete"] == True  # noqa: E712 (object column)
    clean = df["git_dirty"].astype(str).str.lower() == "false"
    mine = (complete & clean & (df["git_commit"].fillna("").astype(str) == str(git["git_commit"]))
            & (df["device"].fillna("").astype(str) == device))
    return set(df.loc[mine, "config_hash"].astype(str))


def write_csv_atomic(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``df`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    with atomic_write(path, "w", newline="") as f:
        df.to_csv(f, index=False)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock on a results folder for a read-modify-write, so two runs writing rows into
    the same folder (two shells, two scripts) cannot drop each other's rows. No lock file is left:
    the lock is held on the folder itself (flock; where unavailable, no locking)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Add one row (all of ``COLUMNS``, nothing else), replacing a row with the same ``config_hash``."""
    missing = [c for c in COLUMNS if c not in row]
    extra = [c for c in row if c not in COLUMNS]
    if missing or extra:
        raise ValueError(f"result row does not match the schema (missing: {missing}; unexpected: {extra})")
    path = Path(path)
    with folder_lock(path.parent):
        df = read_rows_or_empty(path)
        df = df[df["config_hash"].astype(str) != str(row["config_hash"])]
        new = pd.DataFrame([row], columns=COLUMNS)
        df = new if df.empty else pd.concat([df, new], ignore_index=True)
        write_csv_atomic(df, path)


def read_curves(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ``curves.csv`` (an absent file is an empty table); refuses other columns."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=CURVE_COLUMNS)
    df = pd.read_csv(path)
    if list(df.columns) != CURVE_COLUMNS:
        raise ResultsFormatError(f"{path} has columns {list(df.columns)}, expected {CURVE_COLUMNS}; {_fresh_hint(path)}")
    return df


def write_curves(path: str | os.PathLike, suite: str, cell: str, seed: int, device: str,
                 points: Iterable[dict[str, Any]]) -> None:
    """Replace the curve of (suite, cell, seed, device) by ``points`` (dicts with the per-point columns).

    ``device`` is the rows' device name: a cell run on CPU and on a GPU into one folder keeps both curves.
    """
    path = Path(path)
    with folder_lock(path.parent):
        df = read_curves(path)
        keep = ~((df["suite"] == suite) & (df["cell"] == cell) & (df["seed"] == seed) & (df["device"] == device))
        new = pd.DataFrame([{"suite": suite, "cell": cell, "seed": seed, "device": device, **p} for p in points],
                           columns=CURVE_COLUMNS)
        parts = [part for part in (df[keep], new) if not part.empty]
        write_csv_atomic(pd.concat(parts, ignore_index=True) if parts else new, path)
