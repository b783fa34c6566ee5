"""Per-task scores (``scores.csv``): the metric of every evaluation task of every row, for paired comparisons.

Every algorithm of a setting is scored on the same tasks (``algorithms.evaluation``), so "is A better
than B here?" is a paired question: the difference on each task, not the difference of two means.
One file per results folder, beside ``rows.csv``, long format (readable with ``pandas.read_csv``):

    suite, cell, seed, device, config_hash, task, value

keyed by (config_hash, device, task): ``config_hash`` and ``device`` identify the row the scores belong
to (a rerun replaces them with its row, see ``rows.write_result``), ``task`` is the evaluation task index
(the same index means the same task for every cell of a setting). ``value`` is accuracy in percent or MSE.

    from benchmarks.records.scores import read_scores, match
    scores = read_scores("results/default/scores.csv")
    per_task, problem = match(row, scores)      # a Series indexed by task, or None and why
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.records.files import write_csv_atomic

SCORES_FILE = "scores.csv"
SCORE_COLUMNS = ["suite", "cell", "seed", "device", "config_hash", "task", "value"]
NO_SCORES = "no per-task scores"


class ScoresFormatError(ValueError):
    """A scores file is not of this format; the message names the file and says what to do."""


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    """The scores of ``path`` (an absent file is an empty table); refuses another format with a message."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=SCORE_COLUMNS)
    hint = f"move {path} aside and rerun the cells whose paired comparisons you need"
    try:
        df = pd.read_csv(path, dtype={"config_hash": str, "device": str, "suite": str, "cell": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise ScoresFormatError(f"{path} is not a readable per-task scores CSV ({str(e).strip()}); {hint}") from None
    if list(df.columns) != SCORE_COLUMNS:
        raise ScoresFormatError(f"{path} has columns {list(df.columns)}, not the per-task score columns "
                                f"{SCORE_COLUMNS}; {hint}")
    values = pd.to_numeric(df["value"], errors="coerce")
    tasks = pd.to_numeric(df["task"], errors="coerce")
    bad = values.isna() | ~values.map(lambda v: math.isfinite(v) if v == v else False) | tasks.isna() | (tasks < 0)
    if bad.any():
        line = int(bad.to_numpy().nonzero()[0][0]) + 2
        raise ScoresFormatError(f"{path}, line {line}: task index or value is missing or not a finite number; {hint}")
    return df.assign(task=tasks.astype(int), value=values.astype(float))


def add(path: Path, row: dict[str, Any], values: list[float]) -> None:
    """Replace the scores of ``row`` (same config_hash and device) by ``values`` (task 0, 1, ...); caller holds the lock."""
    if len(values) != int(row["eval_tasks"]) or not all(math.isfinite(v) for v in values):
        raise ValueError(f"cell {row['cell']}: {len(values)} per-task scores for {row['eval_tasks']} evaluation tasks, "
                         "or a score that is not finite; refusing to write them")
    df = read_scores(path)
    keep = ~((df["config_hash"] == row["config_hash"]) & (df["device"] == row["device"]))
    new = pd.DataFrame({"suite": row["suite"], "cell": row["cell"], "seed": int(row["seed"]), "device": row["device"],
                        "config_hash": row["config_hash"], "task": range(len(values)), "value": values},
                       columns=SCORE_COLUMNS)
    parts = [p for p in (df[keep], new) if not p.empty]
    write_csv_atomic(pd.concat(parts, ignore_index=True), path)


def remove(path: Path, config_hash: str, device: str) -> None:
    """Drop the scores of the row (config_hash, device), if the file has any; caller holds the lock."""
    df = read_scores(path)
    gone = (df["config_hash"] == str(config_hash)) & (df["device"] == str(device))
    if gone.any():
        write_csv_atomic(df[~gone], path)


def match(row, scores: pd.DataFrame) -> tuple[pd.Series | None, str | None]:
    """The per-task values of ``row`` (a Series indexed by task), or (None, why not).

    Scores belong to a row when they carry its config_hash and device, cover tasks 0..eval_tasks-1
    once each, and average to its ``metric_mean`` (to rounding): scores left by another run of the
    same cell (an interrupted rewrite, a file copied from elsewhere) are refused, not paired.
    """
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    mine = scores[(scores["config_hash"] == str(get("config_hash"))) & (scores["device"] == str(get("device")))]
    if mine.empty:
        return None, NO_SCORES
    n = int(get("eval_tasks"))
    tasks = sorted(mine["task"])
    if tasks != list(range(n)):
        return None, f"per-task scores cover {len(tasks)} tasks, the row {n}: they are from other rows"
    values = mine.set_index("task")["value"].sort_index()
    mean = float(get("metric_mean"))
    if abs(values.mean() - mean) > 1e-9 * max(1.0, abs(mean)):
        return None, (f"per-task scores average {values.mean():.6g}, the row says {mean:.6g}: "
                      "they are from other rows")
    return values, None
