"""Paired comparisons: for every setting and every pair of cells scored on the same tasks, the mean
per-task difference with its paired 95% confidence interval.

    python -m benchmarks.cli tables        # writes results/tables/paired.md among the others

Every algorithm of a setting is evaluated on the same tasks (same pool, seed and task indices), so the
question "is A better than B here?" is answered on each task: d_i = score_A(task i) - score_B(task i),
mean(d) +- 1.96 * std(d, ddof=1) / sqrt(n) over the tasks both were scored on. This interval is much
narrower than the two cells' own intervals suggest when the tasks' difficulty, which both share, is most
of the variance. A pair is marked as a difference only when its interval excludes 0; otherwise it is a
tie, and shown as one (meta-dataset's discipline). Higher is better for accuracy, lower for MSE.

Setting = (suite, dataset, split, evaluation part, ways, shots, query, evaluation seed, device): the cells
of one setting share their evaluation tasks whatever their protocol. Several seeds of one cell are
averaged per task first. A row without per-task scores (or with scores that are not its own, see
``records.scores.match``) is listed as such instead of being paired.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pandas as pd

from benchmarks.records.scores import SCORES_FILE, match, read_scores
from benchmarks.reporting.table_format import table_markdown

NOTE = ("Every algorithm of a setting is scored on the same evaluation tasks, so each pair is compared task by "
        "task: mean of d_i = score_A(task i) − score_B(task i) ± 1.96 · std(d) / √n over the tasks both were "
        "scored on (seeds of one cell averaged per task first). A verdict names the better cell only when that "
        "interval excludes 0; otherwise the pair is a tie. Higher is better for accuracy, lower for MSE.")
SETTING = ["suite", "dataset", "split", "eval_part", "ways", "shots", "query", "eval_seed", "device"]


def _label(r) -> str:
    if r.metric != "accuracy":  # regression has no batch norm: the protocol changes nothing
        return f"{r.algorithm} ({r.backend}) [{r.cell}]"
    protocol = "transductive" if r.transductive == True else "non-transductive"  # noqa: E712
    return f"{r.algorithm} ({r.backend}, {protocol}) [{r.cell}]"


def row_scores(row, cache: dict) -> tuple[pd.Series | None, str | None]:
    """``records.scores.match`` for a row of ``load_rows`` (its scores beside its ``rows_file``), each folder's
    scores file read once per ``cache``."""
    folder = Path(row.rows_file).parent
    if folder not in cache:
        cache[folder] = read_scores(folder / SCORES_FILE)
    return match(row, cache[folder])


def scored_cells(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One line per (setting, cell) with its per-task values (seeds averaged per task); and the problems seen.

    ``rows`` as ``records.collect.load_rows`` gives them (their ``rows_file`` says where the scores are).
    """
    lines, problems, cache = [], [], {}
    evaluated = rows[rows.eval_tasks.fillna(0).astype(int) > 0] if not rows.empty else rows
    for r in evaluated.itertuples():
        values, problem = row_scores(r, cache)
        if problem:
            problems.append(f"{r.suite}/{r.cell} (seed {r.seed}, {r.device}): {problem}")
            continue
        cfg = json.loads(r.config_json)
        if isinstance(cfg.get("cell"), dict):  # a peer's row keeps the config of the cell it ran under "cell"
            cfg = cfg["cell"]
        ev = cfg.get("eval", {})
        lines.append({"suite": r.suite, "dataset": r.dataset, "split": r.split, "eval_part": cfg.get("eval_part", ""),
                      "ways": int(r.ways), "shots": int(r.shots), "query": ev.get("query"), "eval_seed": ev.get("seed"),
                      "device": r.device, "cell": r.cell, "label": _label(r), "metric": r.metric, "seed": r.seed,
                      "values": values})
    if not lines:
        return pd.DataFrame(columns=SETTING + ["cell", "label", "metric", "values"]), problems
    df = pd.DataFrame(lines)
    merged = []
    for key, g in df.groupby(SETTING + ["cell", "label", "metric"], sort=True):
        per_task = pd.concat(list(g["values"]), axis=1).mean(axis=1)  # seeds averaged per task
        merged.append(dict(zip(SETTING + ["cell", "label", "metric"], key), values=per_task, seeds=len(g)))
    return pd.DataFrame(merged), problems


def paired(a: pd.Series, b: pd.Series) -> tuple[float, float, int]:
    """(mean of a - b, paired 95% CI half-width, n) over the tasks both have."""
    common = a.index.intersection(b.index)
    d = (a.loc[common] - b.loc[common]).astype(float)
    n = len(d)
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    return float(d.mean()), 1.96 * sd / math.sqrt(n) if n > 1 else float("nan"), n


def combine(means: list[float], cis: list[float]) -> tuple[float, float]:
    """Several training seeds' estimates of one quantity (``tables.NOTE``): the mean of the seeds' values
    ± 1.96·sqrt(s²/S + mean(se_i²)), s the standard deviation of the S values and se_i = CI_i/1.96 (not divided
    by S: seeds may share evaluation tasks); one seed: its own value and interval. The training seed is a
    source of variance, not a fixed condition."""
    k = len(means)
    mean = sum(means) / k
    if k == 1:
        return mean, cis[0]
    between = sum((m - mean) ** 2 for m in means) / (k - 1) / k
    return mean, 1.96 * math.sqrt(between + sum((c / 1.96) ** 2 for c in cis) / k)


def verdict(mean: float, ci: float, metric: str, a: str, b: str) -> str:
    if not math.isfinite(ci) or abs(mean) <= ci:
        return "tie (interval includes 0)"
    better = a if (mean > 0) == (metric == "accuracy") else b
    return f"**{better.split(' [')[0]} better**"


def render(rows: pd.DataFrame) -> tuple[str, int]:
    """The paired-comparison Markdown and the number of pairs in it."""
    cells, problems = scored_cells(rows)
    out, pairs = [], 0
    header = ["A", "B", "tasks", "mean A − B ± paired 95% CI", "verdict"]
    for key, g in cells.groupby(SETTING, sort=True):
        s = dict(zip(SETTING, key))
        body = []
        for (_, x), (_, y) in itertools.combinations(g.sort_values("label").iterrows(), 2):
            mean, ci, n = paired(x["values"], y["values"])
            if n < 2:
                continue
            digits = 2 if x["metric"] == "accuracy" else 4
            body.append([x["label"], y["label"], str(n), f"{mean:+.{digits}f} ± {ci:.{digits}f}",
                         verdict(mean, ci, x["metric"], x["label"], y["label"])])
        if not body:
            continue
        pairs += len(body)
        unit = "accuracy points (%)" if g["metric"].iloc[0] == "accuracy" else "MSE (lower is better)"
        title = (f"{s['suite']}: {s['dataset']}/{s['split']} {s['ways']}-way {s['shots']}-shot, {s['query']} query per "
                 f"class, evaluation seed {s['eval_seed']} — {s['device']} ({unit})")
        out.append(f"## {title}\n\n{table_markdown(header, body)}")
    text = "\n".join(out) if out else "_no pairs of cells with per-task scores on the same tasks_\n"
    if problems:
        text += "\n## Rows not paired\n\n" + "".join(f"- {p}\n" for p in problems)
    return text, pairs
