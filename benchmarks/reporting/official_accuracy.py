"""The tables of accuracy against the authors' codes (docs/peers.md): each ``official-tf`` row of
``benchmarks.peers.official_reptile_accuracy`` (openai/supervised-reptile) or ``benchmarks.peers.official_maml``
(cbfinn/maml) beside this project's row of the same cell, paired task by task; one table per code.

The official rows score this project's evaluation tasks, so the comparison is paired (``reporting.paired``):
mean of d_i = authors'(task i) − ours(task i) ± 1.96 · std(d) / √n, a tie unless that interval excludes 0.
Ours is the newest row of the cell the official row names (suite, cell, seed) whose config is the one the
official code ran (the device and the evaluator's batching aside: they do not change the numbers). The rows
of several training seeds of one cell make one line: each seed's paired difference, combined over the seeds as
the tables combine seeds (``combine``), so that a difference between two trainings is not taken for one between
the implementations; the per-seed differences are listed beside it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from benchmarks.reporting.paired import combine, paired, row_scores, verdict
from benchmarks.reporting.table_format import fmt_pm, table_markdown

BACKEND = "official-tf"
REPTILE, MAML = "openai/supervised-reptile", "cbfinn/maml"
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


def _pair(o, rows: pd.DataFrame, cache: dict):
    """Ours for official row ``o`` (same suite, cell, seed and config) and both per-task scores, or a problem."""
    cell = json.loads(o.config_json)["cell"]
    mine = rows[(rows.suite == cell["suite"]) & (rows.cell == cell["cell"]) & (rows.seed == o.seed)
                & (rows.backend != BACKEND)]
    mine = [m for m in mine.itertuples() if _comparable(json.loads(m.config_json)) == _comparable(cell)]
    if not mine:
        return None, None, None, f"no row of {cell['suite']}/{cell['cell']} (seed {o.seed}) with this config"
    a, problem_a = row_scores(o, cache)
    b, problem_b = row_scores(mine[0], cache)
    return mine[0], a, b, (f"not paired: {problem_a or problem_b}" if problem_a or problem_b else None)


def _side(rs) -> str:
    """One side's accuracy over its seeds (``combine``), with each seed's mean when there are several."""
    mean, ci = combine([r.metric_mean for r in rs], [r.metric_ci95 for r in rs])
    text = f"{fmt_pm(mean, ci)} (n={rs[0].eval_tasks}"
    return text + (")" if len(rs) == 1 else f"; seeds {', '.join(f'{r.metric_mean:.2f}' for r in rs)})")


def _legend(implementation: str, first, cfg: dict, sources: str) -> str:
    common = (f"and scored on this project's {int(first.eval_tasks)} evaluation tasks, so each pair is compared task "
              f"by task; with several training seeds, each seed's paired difference and each side's accuracy are "
              f"combined as the tables combine seeds (mean ± 1.96·sqrt(s²/S + mean(se_i²)): the seed's variance "
              f"counts); {first.backend_info}; the time per meta-iteration is the first seed's rows' own (wall "
              f"clock, not the same round: the timing rounds compare speed); {sources}:")
    lr, ev = cfg["learner"], cfg["eval"]
    if implementation == MAML:
        return (f"Accuracy on the same tasks (`make peer-official-maml`): the authors' code trained on the very "
                f"training tasks this project's learner trained on ({cfg['meta_iterations']} meta-iterations of "
                f"{cfg['meta_batch']} tasks, {lr['inner_steps']} inner SGD step(s) on the support set, as many query "
                f"images per class as shots; the step size is each cell's, applied by each code to its own loss), then "
                f"fine-tuned {ev['inner_steps']} SGD steps per evaluation task, as many query images per class as "
                f"shots predicted in one batch, " + common)
    return (f"Accuracy at the same budget (`make peer-official-reptile-accuracy`): the authors' code trained with "
            f"the suite's Reptile settings ({cfg['meta_iterations']} meta-iterations, meta-batch "
            f"{cfg['meta_batch']}, {lr['inner_steps']} inner Adam steps on minibatches of "
            f"{lr['inner_batch']}, {cfg['train_shots']} training shots; fine-tuned "
            f"{ev['inner_steps']} steps on minibatches of {ev['inner_batch']}) " + common)


def lines(rows: pd.DataFrame, link, implementation: str = REPTILE) -> list[str]:
    """The table of ``implementation``'s rows (with its legend), or [] without any.

    One line per (suite, cell, how the authors' code evaluated), its seeds combined (``combine``).
    """
    if rows.empty:
        return []
    official = rows[(rows.backend == BACKEND) & (rows.metric == "accuracy")]
    official = official[[json.loads(c).get("implementation", REPTILE) == implementation for c in official.config_json]]
    if official.empty:
        return []
    header = ["Suite", "Setting", "Seeds", "This project (reference backend)", "Authors' code (TensorFlow)",
              "Authors' − ours (paired 95% CI)", "Verdict", "Training per meta-iteration: ours / authors'"]
    groups: dict[tuple, list] = {}
    for o in official.sort_values(["seed"]).itertuples():
        config = json.loads(o.config_json)
        groups.setdefault((config["cell"]["suite"], int(o.shots), o.transductive != True, o.cell,  # noqa: E712
                           config.get("eval_optimizer", "trained")), []).append(o)
    body, cache, files = [], {}, set()
    for (suite, _, _, _, how), members in sorted(groups.items()):
        o = members[0]
        setting = (f"{o.algorithm}, {o.dataset}/{o.split} {o.ways}-way {o.shots}-shot, "
                   f"{'transductive' if o.transductive == True else 'non-transductive'}")  # noqa: E712
        seeds = ", ".join(str(m.seed) for m in members)
        pairs = [(m, *_pair(m, rows, cache)) for m in members]
        files.update(m.rows_file for m in members)
        theirs = _side(members) + ("" if implementation != REPTILE else "; Adam reset per task, as ours"
                                   if how == "fresh" else "; as released: fine-tunes from the training Adam's moments")
        problems = [p[4] for p in pairs if p[4]]
        if problems:
            body.append([suite, setting, seeds, problems[0], theirs, "—", "—", "—"])
            continue
        files.update(p[1].rows_file for p in pairs)
        per_seed = [paired(p[2], p[3]) for p in pairs]  # (mean, CI, n) of each seed's task-by-task difference
        mean, ci = combine([d[0] for d in per_seed], [d[1] for d in per_seed])
        diff = f"{mean:+.2f} ± {ci:.2f} (n={per_seed[0][2]})"
        if len(pairs) > 1:
            diff += " (per seed: " + ", ".join(f"{d[0]:+.2f} ± {d[1]:.2f}" for d in per_seed) + ")"
        ours = [p[1] for p in pairs]
        body.append([suite, setting, seeds, _side(ours) + f" ({ours[0].git_commit[:7]})", theirs, diff,
                     verdict(mean, ci, "accuracy", "authors' code", "ours"),
                     f"{ours[0].step_time_median_s * 1e3:.0f} / {o.step_time_median_s * 1e3:.0f} ms"])
    first = official.iloc[0]
    cfg = json.loads(first.config_json)["cell"]
    sources = ", ".join(link(Path(f)) for f in sorted(files))
    return [_legend(implementation, first, cfg, sources), "", table_markdown(header, body).rstrip("\n")]
