"""The README table of accuracy against the authors' code: each ``official-tf`` row of
``benchmarks.peers.official_reptile_accuracy`` beside this project's row of the same cell, paired task by task.

The official rows score this project's evaluation tasks, so the comparison is paired (``reporting.paired``):
mean of d_i = authors'(task i) − ours(task i) ± 1.96 · std(d) / √n, a tie unless that interval excludes 0.
Ours is the newest row of the cell the official row names (suite, cell, seed) whose config is the one the
official code ran (the device and the evaluator's batching aside: they do not change the numbers).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from benchmarks.records.scores import SCORES_FILE, match, read_scores
from benchmarks.reporting.paired import paired, verdict
from benchmarks.reporting.table_format import fmt_pm, table_markdown

BACKEND = "official-tf"
IGNORED = ("device", "eval.mode")
"""Config fields that may differ between the two rows: where it ran, and whether the evaluator batched tasks."""


def _comparable(config: dict) -> dict:
    out = json.loads(json.dumps(config))
    for name in IGNORED:
        *parents, leaf = name.split(".")
        d = out
        for p in parents:
            d = d.get(p, {})
        d.pop(leaf, None)
    return out


def _scores(row, cache: dict):
    folder = Path(row.rows_file).parent
    if folder not in cache:
        cache[folder] = read_scores(folder / SCORES_FILE)
    return match(row, cache[folder])


def lines(rows: pd.DataFrame, link) -> list[str]:
    """The table's Markdown lines (with its legend), or [] without official accuracy rows."""
    if rows.empty:
        return []
    official = rows[(rows.backend == BACKEND) & (rows.metric == "accuracy")]
    if official.empty:
        return []
    header = ["Setting", "This project (reference backend)", "Authors' code (TensorFlow)",
              "Authors' − ours (paired 95% CI)", "Verdict", "Training per meta-iteration: ours / authors'"]
    body, cache, files = [], {}, set()
    for o in official.sort_values(["shots", "transductive", "cell"]).itertuples():
        config = json.loads(o.config_json)
        cell = config["cell"]
        files.add(o.rows_file)
        mine = rows[(rows.suite == cell["suite"]) & (rows.cell == cell["cell"]) & (rows.seed == o.seed)
                    & (rows.backend != BACKEND)]
        mine = [m for m in mine.itertuples() if _comparable(json.loads(m.config_json)) == _comparable(cell)]
        setting = (f"{o.dataset}/{o.split} {o.ways}-way {o.shots}-shot, "
                   f"{'transductive' if o.transductive == True else 'non-transductive'}")  # noqa: E712
        how = ("Adam reset per task, as ours" if config.get("eval_optimizer") == "fresh"
               else "as released: fine-tunes from the training Adam's moments")
        theirs = f"{fmt_pm(o.metric_mean, o.metric_ci95)} (n={o.eval_tasks}; {how})"
        if not mine:
            body.append([setting, f"no row of {cell['suite']}/{cell['cell']} with this config", theirs, "—", "—", "—"])
            continue
        m = mine[0]
        files.add(m.rows_file)
        a, problem_a = _scores(o, cache)
        b, problem_b = _scores(m, cache)
        if problem_a or problem_b:
            diff, word = "—", f"not paired: {problem_a or problem_b}"
        else:
            mean, ci, n = paired(a, b)
            diff, word = f"{mean:+.2f} ± {ci:.2f} (n={n})", verdict(mean, ci, "accuracy", "authors' code", "ours")
        body.append([setting, f"{fmt_pm(m.metric_mean, m.metric_ci95)} (n={m.eval_tasks}, {m.git_commit[:7]})", theirs,
                     diff, word, f"{m.step_time_median_s * 1e3:.0f} / {o.step_time_median_s * 1e3:.0f} ms"])
    first = official.iloc[0]
    cfg = json.loads(first.config_json)["cell"]
    sources = ", ".join(link(Path(f)) for f in sorted(files))
    return [f"Accuracy at the same budget (`make peer-official-reptile-accuracy`): the authors' code trained with "
            f"the {cfg['suite']} suite's Reptile settings ({cfg['meta_iterations']} meta-iterations, meta-batch "
            f"{cfg['meta_batch']}, {cfg['learner']['inner_steps']} inner Adam steps on minibatches of "
            f"{cfg['learner']['inner_batch']}, {cfg['train_shots']} training shots; fine-tuned "
            f"{cfg['eval']['inner_steps']} steps on minibatches of {cfg['eval']['inner_batch']}) and scored on this "
            f"project's {int(first.eval_tasks)} evaluation tasks, so each pair is compared task by task; one training "
            f"seed each; {first.backend_info}; the time per meta-iteration is each row's own (wall clock, not the same "
            f"round: the rounds above compare speed); {sources}:", "", table_markdown(header, body).rstrip("\n")]
