"""The result files: one wide tidy row per cell (``rows.csv``) and training curves (``curves.csv``).

Both live in ``<out>/<suite>/`` and are only ever rewritten whole and atomically
(temporary file in the same folder, then ``os.replace``, under a lock on the folder),
so a reader never sees half a file and two writers never drop each other's rows.
``read_rows`` refuses a file written under another schema (other version, missing or
extra columns) and checks every row (``check_row``): a damaged line is refused with its
file and line number instead of being carried into the next rewrite. ``write_row``
refuses a row that would not pass the same check (a NaN or inf number, a missing field).

Tables, plots and tracking read rows with ``read_rows(path)``; the runner writes them
with ``write_result`` (per-task scores, curve and row of one cell, under one lock; see
``benchmarks.records.scores``). A row replaces an earlier row of the same ``config_hash``
(when a run cut short by a budget is resumed, or a cell finished at another commit is run
again, see ``completed_hashes``).

Column meanings that are not obvious from the name (see COLUMNS for the order):
- ``first_order``: the outer update uses no second derivatives (Reptile, first-order MAML).
- ``inner_steps`` / ``eval_inner_steps``: inner-loop steps in meta-training / fine-tuning steps at evaluation.
- ``complete``: False when a budget (``--max-minutes``, ``--max-iterations``) stopped training before ``meta_iterations``;
  ``iterations_run`` then says how far it got (the row is still evaluated).
- ``final_train_loss``: mean training loss (``meta_step``'s ``loss``) over the last tenth of the meta-steps run.
- ``metric``: ``accuracy`` (percent, 0..100) or ``mse`` (sine); ``metric_ci95`` = 1.96 * sample std / sqrt(n)
  over the ``eval_tasks`` evaluation tasks (at least 2). Empty for cost-only cells (``eval_tasks`` = 0).
- ``eval_mode``: ``batched`` (tasks fine-tuned together) or ``serial`` (one after another; the reference).
- ``peak_memory_bytes`` with ``memory_kind``: ``cuda_allocator`` (allocator peak of the training process) or
  ``cpu_rss`` (peak resident set of the training process, Python and torch included).
- ``autograd_saved_bytes``: most bytes held in autograd's saved tensors during one outer update (each
  storage once); empty where the backend refuses saved-tensor hooks (torch.func).
- ``step_time_*``: wall time of ``meta_step`` calls only (no task sampling, no evaluation), all attempts kept
  by checkpoints; ``eval_time_s``: this cell's final evaluation; ``total_time_s``: what this cell would cost
  alone: the shared training (loading, meta-steps, measurement) plus this cell's own curve and final
  evaluations, without work lost to an interruption.
- ``training_key``: the shared training this cell's meta-parameters come from (``running.trainings``);
  ``training_cells``: how many cells of the run shared it (they share its step times and memory).
- ``parallel_jobs``: how many trainings the run allowed side by side (``--jobs``; step times shift with it);
  ``world_size``: processes one training was split over (``torchrun``; 1 otherwise).
- ``backend_info``: the library and version behind ``backend`` (e.g. ``higher 0.2.1``) and any mode it ran in.
- ``device``: ``cpu: <model> (<n> thread[s])`` (``, <malloc>`` inside the brackets when one of ``mallocs.KNOWN_MALLOCS``
  was preloaded) or ``cuda: <name>``; ``git_dirty``: files differ from
  ``git_commit`` (the results folder excluded); ``command``: the command line that reproduces the row.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from benchmarks.records import scores as score_files
from benchmarks.records.files import folder_lock, write_csv_atomic

SCHEMA_VERSION = 2

COLUMNS = [
    # identity
    "schema_version", "suite", "cell", "algorithm", "backend", "dataset", "split", "ways", "shots",
    "transductive", "first_order", "inner_steps", "eval_inner_steps", "seed",
    # training
    "meta_iterations", "iterations_run", "complete", "meta_batch", "final_train_loss",
    "training_key", "training_cells",
    # evaluation
    "metric", "metric_mean", "metric_ci95", "eval_tasks", "eval_mode",
    # cost
    "peak_memory_bytes", "memory_kind", "autograd_saved_bytes", "step_time_median_s", "step_time_total_s",
    "eval_time_s", "total_time_s", "parallel_jobs", "world_size",
    # provenance
    "device", "backend_info", "torch_version", "python_version", "cuda_version", "git_commit", "git_dirty",
    "command", "config_json", "config_hash", "date",
]
BOOL_COLUMNS = ("transductive", "first_order", "complete", "git_dirty")
INT_COLUMNS = ("schema_version", "ways", "shots", "inner_steps", "eval_inner_steps", "seed", "meta_iterations",
               "iterations_run", "meta_batch", "training_cells", "eval_tasks", "parallel_jobs", "world_size")
REQUIRED_TEXT = ("suite", "cell", "algorithm", "backend", "dataset", "split", "memory_kind", "device",
                 "torch_version", "python_version", "config_json", "date")
REQUIRED_NUMBERS = ("peak_memory_bytes", "step_time_total_s", "eval_time_s", "total_time_s")
OPTIONAL_NUMBERS = ("final_train_loss", "autograd_saved_bytes", "step_time_median_s")
TEXT_COLUMNS = REQUIRED_TEXT + ("metric", "eval_mode", "backend_info", "cuda_version", "git_commit", "command",
                                "config_hash", "training_key")
"""Read as text whatever they look like ("3.11" is a Python version, not a number)."""
HASH = re.compile(r"^[0-9a-f]{12}$")
METRICS = ("accuracy", "mse")
CURVE_COLUMNS = ["suite", "cell", "seed", "device", "iteration", "train_loss", "eval_metric", "eval_mean", "eval_ci95"]
ROWS_FILE = "rows.csv"
CURVES_FILE = "curves.csv"


class ResultsFormatError(ValueError):
    """A results file does not have the columns or schema version this code writes, or holds a damaged row."""


def _fresh_hint(path: Path) -> str:
    return f"move {path} aside (or pass a fresh --out folder) and rerun; rows of different schemas are never mixed"


def _as_bool(value: Any) -> Any:
    if isinstance(value, str):
        return {"true": True, "false": False}.get(value.strip().lower(), value)
    return value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value == ""


def check_row(row: dict[str, Any]) -> str | None:
    """What is wrong with one row (values as read back or about to be written), or None when it is whole.

    Every field the reports rely on is present and typed; no number is NaN or infinite; the metric
    columns are filled exactly when the cell was evaluated (a CI needs at least two tasks).
    """
    for c in INT_COLUMNS:
        v = row.get(c)
        if _missing(v) or isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer() or v < 0:
            return f"{c} must be an integer >= 0, got {v!r}"
    for c in REQUIRED_TEXT:
        if _missing(row.get(c)) or not isinstance(row.get(c), str):
            return f"{c} is empty"
    for c in ("config_hash", "training_key"):
        if not isinstance(row.get(c), str) or not HASH.match(row[c]):
            return f"{c} must be 12 hexadecimal digits, got {row.get(c)!r}"
    if not str(row["config_json"]).startswith("{") or not str(row["config_json"]).endswith("}"):
        return "config_json is not a whole JSON object"
    for c in ("transductive", "first_order", "complete"):
        if _as_bool(row.get(c)) not in (True, False):
            return f"{c} must be true or false, got {row.get(c)!r}"
    if not _missing(row.get("git_dirty")) and _as_bool(row.get("git_dirty")) not in (True, False):
        return f"git_dirty must be true, false or empty (unknown), got {row.get('git_dirty')!r}"
    for c in REQUIRED_NUMBERS + OPTIONAL_NUMBERS:
        v = row.get(c)
        if _missing(v):
            if c in REQUIRED_NUMBERS:
                return f"{c} is empty"
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (c != "final_train_loss" and v < 0):
            return f"{c} must be a finite number{'' if c == 'final_train_loss' else ' >= 0'}, got {v!r}"
    n = int(row["eval_tasks"])
    if n == 0:
        for c in ("metric", "metric_mean", "metric_ci95", "eval_mode"):
            if not _missing(row.get(c)):
                return f"{c} must be empty for a cell without evaluation (eval_tasks = 0), got {row.get(c)!r}"
        return None
    if row.get("metric") not in METRICS:
        return f"metric must be one of {', '.join(METRICS)}, got {row.get('metric')!r}"
    if row.get("eval_mode") not in ("batched", "serial"):
        return f"eval_mode must be batched or serial, got {row.get('eval_mode')!r}"
    if n < 2:
        return f"eval_tasks = {n}: a 95% CI needs at least two evaluation tasks"
    for c in ("metric_mean", "metric_ci95"):
        v = row.get(c)
        if _missing(v) or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"{c} must be a finite number for an evaluated cell, got {v!r}"
    return None


def read_rows(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ``rows.csv``; raise FileNotFoundError or ResultsFormatError with a message saying what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}; run `python -m benchmarks.cli run --suite NAME` first")
    try:
        df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise ResultsFormatError(f"{path} is not a readable CSV results file ({str(e).strip()}); "
                                 f"{_fresh_hint(path)}") from None
    versions = sorted(set(pd.to_numeric(df["schema_version"], errors="coerce").dropna().astype(int))) \
        if "schema_version" in df.columns else []
    missing = [c for c in COLUMNS if c not in df.columns]
    extra = [c for c in df.columns if c not in COLUMNS]
    if (missing or extra) and versions in ([], [SCHEMA_VERSION]):
        raise ResultsFormatError(
            f"{path} does not have the result columns of schema version {SCHEMA_VERSION} "
            f"(missing: {missing or 'none'}; unexpected: {extra or 'none'}); {_fresh_hint(path)}"
        )
    if any(v != SCHEMA_VERSION for v in versions):
        migrate = (f"; or bring it up to date in place with `python -m benchmarks.running.migrate {path}`"
                   if versions == [1] else "")
        raise ResultsFormatError(
            f"{path} holds rows of schema version(s) {versions}; this code reads and writes version "
            f"{SCHEMA_VERSION}; {_fresh_hint(path)}{migrate}"
        )
    for col in BOOL_COLUMNS:
        df[col] = df[col].map(_as_bool)
    for i, record in enumerate(df.to_dict("records")):
        problem = check_row(record)
        if problem:
            raise ResultsFormatError(
                f"{path}, line {i + 2} (cell {record.get('cell')!r}): {problem}. The row is damaged (for example "
                f"a file cut short by a full disk or an interrupted copy); delete that line or move {path} aside, "
                "then rerun: the cell runs again")
    return df[COLUMNS]


def read_rows_or_empty(path: str | os.PathLike) -> pd.DataFrame:
    """Like ``read_rows`` but an absent file is an empty table (a new results folder)."""
    if not Path(path).exists():
        return pd.DataFrame(columns=COLUMNS)
    return read_rows(path)


def completed_hashes(path: str | os.PathLike, git: dict, device: str | None) -> set[str]:
    """Config hashes of the cells this code version has finished on this device: rows that say
    ``complete``, were written from a clean tree at ``git["git_commit"]`` and name ``device`` (on CPU
    the name carries the thread count). The runner skips those cells and runs every other one.

    Rows of another commit (the committed reference runs in a fresh clone, or older code) do not
    count: skipping them would pass another version's numbers off as this one's, and would make
    ``make benchmark`` in a fresh clone a no-op. Such a cell is run again and its new row replaces
    the old one (same ``config_hash``, see ``write_row``). ``device`` None (a SLURM login node submitting GPU
    jobs cannot name their card) accepts any CUDA device. With uncommitted changes
    (``git["git_dirty"]`` not False) nothing counts: a row does not say which changes it ran with.
    """
    df = read_rows_or_empty(path)
    if git.get("git_dirty") is not False or not git.get("git_commit"):
        return set()
    complete = df["complete"] == True  # noqa: E712 (object column)
    clean = df["git_dirty"].astype(str).str.lower() == "false"
    mine = (complete & clean & (df["git_commit"].fillna("").astype(str) == str(git["git_commit"]))
            & (df["device"].fillna("").astype(str).map(lambda d: d == device if device else d.startswith("cuda"))))
    return set(df.loc[mine, "config_hash"].astype(str))


def _checked(row: dict[str, Any]) -> dict[str, Any]:
    missing = [c for c in COLUMNS if c not in row]
    extra = [c for c in row if c not in COLUMNS]
    if missing or extra:
        raise ValueError(f"result row does not match the schema (missing: {missing}; unexpected: {extra})")
    problem = check_row(row)
    if problem:
        raise ValueError(f"refusing to write the row of cell {row.get('cell')!r}: {problem}")
    return row


def _whole_bytes(df: pd.DataFrame) -> pd.DataFrame:
    # A column with an empty cell (torch.func has no autograd bytes) reads as float; write counts as integers.
    for col in ("peak_memory_bytes", "autograd_saved_bytes"):
        values = pd.to_numeric(df[col], errors="coerce")
        if (values.dropna() % 1 == 0).all():
            df[col] = values.astype("Int64")
    return df


def _add_row(path: Path, row: dict[str, Any], df: pd.DataFrame | None = None) -> None:
    """Write ``row`` into ``path``'s rows (``df``: those rows, already read), replacing its config_hash's."""
    df = read_rows_or_empty(path) if df is None else df
    df = df[df["config_hash"].astype(str) != str(row["config_hash"])]
    new = pd.DataFrame([row], columns=COLUMNS)
    write_csv_atomic(_whole_bytes(new if df.empty else pd.concat([df, new], ignore_index=True)), path)


def write_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Add one row (all of ``COLUMNS``, nothing else), replacing a row with the same ``config_hash``."""
    row = _checked(row)
    path = Path(path)
    with folder_lock(path.parent):
        _add_row(path, row)


def write_result(folder: str | os.PathLike, row: dict[str, Any], curve: Iterable[dict[str, Any]],
                 scores: list[float] | None) -> None:
    """One cell's per-task scores, curve and row, under one lock on ``folder``, scores first and the row last.

    A reader therefore never sees a row without its scores; an interruption between the files at worst
    leaves scores that no row matches, which the paired table reports (``scores.match``) and the rerun replaces.
    """
    row = _checked(row)
    folder = Path(folder)
    with folder_lock(folder):
        # The row this one replaces (same config_hash) may carry another device name (another thread count or
        # malloc): its scores and curve go with it.
        existing = read_rows_or_empty(folder / ROWS_FILE)
        same = existing["config_hash"].astype(str) == str(row["config_hash"])
        for replaced in existing[same & (existing["device"] != row["device"])].itertuples():
            score_files.remove(folder / score_files.SCORES_FILE, replaced.config_hash, replaced.device)
            _replace_curve(folder / CURVES_FILE, replaced.suite, replaced.cell, int(replaced.seed), replaced.device, [])
        if scores is not None:
            score_files.add(folder / score_files.SCORES_FILE, row, scores)
        _replace_curve(folder / CURVES_FILE, row["suite"], row["cell"], int(row["seed"]), row["device"], curve)
        _add_row(folder / ROWS_FILE, row, existing)


def read_curves(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ``curves.csv`` (an absent file is an empty table); refuses other columns."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=CURVE_COLUMNS)
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ResultsFormatError(f"{path} is not a readable CSV curves file ({str(e).strip()}); {_fresh_hint(path)}") from None
    if list(df.columns) != CURVE_COLUMNS:
        raise ResultsFormatError(f"{path} has columns {list(df.columns)}, expected {CURVE_COLUMNS}; {_fresh_hint(path)}")
    return df


def _replace_curve(path: Path, suite: str, cell: str, seed: int, device: str, points: Iterable[dict[str, Any]]) -> None:
    df = read_curves(path)
    keep = ~((df["suite"] == suite) & (df["cell"] == cell) & (df["seed"] == seed) & (df["device"] == device))
    new = pd.DataFrame([{"suite": suite, "cell": cell, "seed": seed, "device": device, **p} for p in points],
                       columns=CURVE_COLUMNS)
    parts = [part for part in (df[keep], new) if not part.empty]
    write_csv_atomic(pd.concat(parts, ignore_index=True) if parts else new, path)


def write_curves(path: str | os.PathLike, suite: str, cell: str, seed: int, device: str,
                 points: Iterable[dict[str, Any]]) -> None:
    """Replace the curve of (suite, cell, seed, device) by ``points`` (dicts with the per-point columns).

    ``device`` is the rows' device name: a cell run on CPU and on a GPU into one folder keeps both curves.
    """
    path = Path(path)
    with folder_lock(path.parent):
        _replace_curve(path, suite, cell, seed, device, points)
