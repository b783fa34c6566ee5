"""Render the result rows as the Reptile paper's tables, beside the published numbers.

    python -m benchmarks.reporting.tables [--results-dir results] [--out-dir results/tables] [--published PATH]
    (the same as ``python -m benchmarks.cli tables``)

Reads every ``<results-dir>/*/rows.csv`` and writes, atomically, into ``<results-dir>/tables/``:

- ``paper_tables.md`` / ``paper_tables.tex``: Table 1 (Mini-ImageNet) and Table 2 (Omniglot) of
  Nichol et al. (2018), published ``mean ± CI`` beside ours and whether the two 95% intervals overlap;
  plus a companion table for Omniglot's ``small`` split, which is not the paper's split.
- ``comparison.md``: gradient order, memory and time (scaling sweep) and accuracy (default suite)
  per algorithm, and the sine-regression MSE table.
- ``default_suite.md``: every default-suite cell with accuracy, memory, time and device
  (embedded in README.md by ``python -m benchmarks.reporting.readme``).
- ``paired.md``: every pair of cells scored on the same tasks, mean difference ± paired 95% CI
  (``benchmarks.reporting.paired``, from the per-task scores beside the rows).

A pure function of the rows and their per-task scores: the same files give byte-identical tables
(no dates in the output).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.records.collect import latest, load_rows  # noqa: F401 (load_rows: also what tests read)
from benchmarks.reporting import paired
from benchmarks.reporting.table_format import fmt_bytes, fmt_pm, latex_escape, table_latex, table_markdown, write_text_atomic  # noqa: F401

DEFAULT_PUBLISHED = Path(__file__).resolve().parents[2] / "results" / "reference" / "published.csv"
PAPER_SPLITS = {"omniglot": "paper", "miniimagenet": "ravi"}
NAMES = {"maml": "MAML", "fomaml": "1st-order MAML", "reptile": "Reptile", "imaml": "iMAML-GD",
         "imaml-hf": "iMAML-HF", "anil": "ANIL", "foanil": "1st-order ANIL"}
GRADIENT_ORDER = {"reptile": "first", "fomaml": "first", "foanil": "first", "maml": "second",
                  "imaml": "second (implicit: CG on Hessian-vector products)", "anil": "second (head only)"}
PUBLISHED_NAMES = {"imaml-gd": "imaml"}
"""Published algorithm names -> ours (iMAML-GD is our ``imaml``; iMAML-HF is not implemented)."""
PROTOCOLS = [("maml", True), ("fomaml", True), ("reptile", False), ("reptile", True)]  # the Reptile paper's rows
OMNIGLOT = [("omniglot", 5, 1), ("omniglot", 5, 5), ("omniglot", 20, 1), ("omniglot", 20, 5)]


def label(algorithm: str, transductive: bool) -> str:
    return NAMES.get(algorithm, algorithm) + (" + Transduction" if transductive else "")


def protocols(rows: pd.DataFrame, base=PROTOCOLS) -> list[tuple[str, bool]]:
    """The paper's rows, then any other (algorithm, transductive) measured in ``rows`` (published: —)."""
    extra = {(str(a), t == True) for a, t in zip(rows.algorithm, rows.transductive)} - set(base)  # noqa: E712
    return list(base) + sorted(extra)


PAPER_TABLES = [  # (title, paper key in published.csv, settings, the paper's rows, whether to add measured others)
    ("Reptile paper Table 1: Mini-ImageNet, 5-way (accuracy %)", "reptile-2018",
     [("miniimagenet", 5, 1), ("miniimagenet", 5, 5)], PROTOCOLS, True),
    ("Reptile paper Table 2: Omniglot (accuracy %)", "reptile-2018", OMNIGLOT, PROTOCOLS, True),
    ("iMAML paper Table 2: Omniglot (accuracy %)", "imaml-2019", OMNIGLOT,
     [("maml", True), ("fomaml", True), ("reptile", True), ("imaml", True), ("imaml-hf", True)], False),
    ("ANIL paper Table 2 (accuracy %)", "anil-2020",
     [("omniglot", 20, 1), ("omniglot", 20, 5), ("miniimagenet", 5, 1), ("miniimagenet", 5, 5)],
     [("maml", True), ("anil", True)], False),
]
SMALL_SPLIT_TITLE = ("Omniglot small split: train on small1's alphabets, test on small2's unseen alphabets "
                     "— not comparable to the published split")
NOTE = ("Our cells: mean ± 95% CI (n = evaluation tasks per seed, meta-iterations run, seeds). Several seeds "
        "of one cell are aggregated as the mean of the per-seed means, ± 1.96·sqrt(s²/S + mean(se_i²)), where "
        "s is the standard deviation of the S seed means and se_i = CI_i/1.96 is seed i's task-sampling "
        "standard error (not divided by S: seeds may share evaluation tasks); with one seed it is that run's "
        "own interval; of several rows of one cell, device and seed, the newest is used. "
        "'overlap': |published − ours| ≤ CI_published + CI_ours; 'disjoint' otherwise. "
        "'incomplete': the run was cut short by a budget. 'not run': no row for that cell; 'not implemented': "
        "an algorithm this benchmark does not have (iMAML-HF, see algorithms/imaml.py). Only rows of the "
        "papers' splits (Omniglot `paper`, Mini-ImageNet `ravi`) fill the paper tables. Each table's sources are "
        "listed under it; the Reptile paper's MAML rows are Finn et al. 2017's, the iMAML paper's MAML, "
        "first-order MAML and Reptile rows are quotes, the ANIL paper's MAML rows are its own runs.")


def load_published(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"published numbers not found at {path}; pass --published PATH "
                                "(the repository ships results/reference/published.csv)")
    df = pd.read_csv(path, dtype=str)  # text, so the numbers print with the paper's own decimals
    needed = {"paper", "dataset", "ways", "shots", "algorithm", "transductive", "accuracy_pct", "ci95_pct", "source"}
    if missing := needed - set(df.columns):
        raise ValueError(f"{path} lacks columns {sorted(missing)}; use the columns of results/reference/published.csv")
    df["ways"], df["shots"] = df["ways"].astype(int), df["shots"].astype(int)
    df["algorithm"] = df["algorithm"].map(lambda a: PUBLISHED_NAMES.get(a, a))
    df["transductive"] = df["transductive"].str.strip().str.lower().map({"true": True, "false": False})
    return df


def is_scaling(df: pd.DataFrame) -> pd.Series:
    return (df["suite"] == "scaling") | df["cell"].astype(str).str.startswith("scaling")


def _span(values: pd.Series) -> str:
    if values.isna().all():
        return "—"
    lo, hi = int(values.min()), int(values.max())
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def _seed_summary(g: pd.DataFrame) -> pd.Series:
    value, value_ci = paired.combine(list(g["metric_mean"].astype(float)), list(g["metric_ci95"].astype(float)))
    commits = sorted({f"{str(c)[:12]}{'+dirty' if d == True else ''}" for c, d in zip(g.git_commit, g.git_dirty)})
    return pd.Series({
        "value": value, "value_ci": value_ci,
        "n_seeds": int(g["seed"].nunique()), "eval_tasks": _span(g.eval_tasks),
        "eval_tasks_min": g.eval_tasks.fillna(0).min(), "iterations": _span(g.iterations_run),
        "iterations_min": int(g.iterations_run.fillna(0).min()),
        "meta_iterations": int(g.meta_iterations.fillna(0).max()), "complete": bool((g.complete == True).all()),  # noqa: E712
        "peak_memory_bytes": g.peak_memory_bytes.median(), "memory_kind": "/".join(sorted(set(g.memory_kind.astype(str)))),
        "autograd_saved_bytes": g.autograd_saved_bytes.median(), "step_time_median_s": g.step_time_median_s.median(),
        "commits": ", ".join(commits), "rows_file": ", ".join(sorted(set(g.rows_file))),
    })


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per (suite, cell, device): seeds combined as described in NOTE."""
    keys = ["suite", "cell", "device", "algorithm", "backend", "dataset", "split", "ways", "shots", "transductive",
            "first_order", "inner_steps", "eval_inner_steps", "metric"]
    if rows.empty:
        return pd.DataFrame(columns=keys + ["value", "value_ci", "scaling", "setting"])
    r = rows.copy()
    r[keys] = r[keys].astype(object).where(r[keys].notna(), "")  # groupby drops NaN keys (e.g. no metric)
    for col in ("ways", "shots", "inner_steps", "eval_inner_steps"):  # a NaN elsewhere makes the column float
        r[col] = r[col].map(lambda v: int(v) if isinstance(v, float) and v.is_integer() else v)
    out = r.groupby(keys, sort=True).apply(_seed_summary, include_groups=False).reset_index()
    out["scaling"] = is_scaling(out)
    out["setting"] = [f"{d}/{s} {w}-way {k}-shot{' transductive' if t == True else ' non-transductive'}" if d != "sine"
                      else f"sine K={k}" for d, s, w, k, t in zip(out.dataset, out.split, out.ways, out.shots,
                                                                  out.transductive)]
    return out


def fmt_iterations(g) -> str:
    text = f"{g.iterations} it"
    return text if g.complete else f"{text}, incomplete (of {g.meta_iterations:,} planned)"


def ours_text(g) -> str:
    return f"{fmt_pm(g.value, g.value_ci)} (n={g.eval_tasks}, {fmt_iterations(g)}, {int(g.n_seeds)} seed{'s' if g.n_seeds > 1 else ''})"


def overlap(m1: float, c1: float, m2: float, c2: float) -> bool:
    """Whether the intervals [m1 ± c1] and [m2 ± c2] intersect."""
    return abs(float(m1) - float(m2)) <= float(c1) + float(c2)


def pick(groups: pd.DataFrame, dataset: str, splits, ways: int, shots: int, algorithm: str, transductive: bool):
    """The aggregated cell that fills one table cell (or None), and the other candidates left out."""
    if groups.empty:
        return None, []
    # The authors' code's rows (backend official-tf) are shown beside ours in docs/peers.md, never as ours.
    m = groups[(groups.dataset == dataset) & groups.split.isin(splits) & (groups.ways == ways)
               & (groups.shots == shots) & (groups.algorithm == algorithm) & (groups.transductive == transductive)
               & (groups.metric == "accuracy") & ~groups.scaling & (groups.backend != "official-tf")]
    if m.empty:
        return None, []
    # Prefer the longest training actually run (a run cut short at 450 iterations says more than a finished
    # 4-iteration smoke test), then complete runs, the most evaluation tasks, the most seeds.
    m = m.sort_values(["iterations_min", "complete", "eval_tasks_min", "n_seeds", "suite", "cell"],
                      ascending=[False, False, False, False, True, True])
    return m.iloc[0], [f"{r.suite}/{r.cell} ({r.device})" for r in m.iloc[1:].itertuples()]


def paper_table(groups: pd.DataFrame, published: pd.DataFrame, paper: str, settings, base, extras: bool):
    """Header, body, notes and the aggregated cells used, for one paper's table."""
    several = len({d for d, _, _ in settings}) > 1
    name = lambda d, w, s: f"{'Omniglot' if d == 'omniglot' else 'Mini-ImageNet'} {w}-way {s}-shot" if several \
        else f"{w}-way {s}-shot"  # noqa: E731
    header = ["Algorithm"] + [f"{name(d, w, s)}: {side}" for d, w, s in settings for side in ("published", "ours")]
    body, notes, used = [], [], []
    datasets = {d for d, _, _ in settings}
    mine = groups[groups.dataset.isin(datasets) & (groups.split == groups.dataset.map(PAPER_SPLITS))
                  & (groups.metric == "accuracy")] if not groups.empty else groups
    published = published[published.paper == paper]
    for algorithm, transductive in (protocols(mine, base) if extras else base):
        line = [label(algorithm, transductive)]
        for dataset, ways, shots in settings:
            pub = published[(published.dataset == dataset) & (published.ways == ways) & (published.shots == shots)
                            & (published.algorithm == algorithm) & (published.transductive == transductive)]
            pub = pub.iloc[0] if len(pub) else None
            g, others = pick(groups, dataset, [PAPER_SPLITS[dataset]], ways, shots, algorithm, transductive)
            ours = "not run" if algorithm in NAMES and algorithm != "imaml-hf" else "not implemented"
            if g is not None:
                used.append(g)
                ours = ours_text(g)
                if pub is not None:
                    ours += " ✓ overlap" if overlap(pub.accuracy_pct, pub.ci95_pct, g.value, g.value_ci) else " ✗ disjoint"
                notes.append(f"{line[0]}, {name(dataset, ways, shots)}: {g.suite}/{g.cell}, backend {g.backend}, "
                             f"{g.device}" + (f"; also measured, not shown: {', '.join(others)}" if others else ""))
            line += ["—" if pub is None else fmt_pm(pub.accuracy_pct, pub.ci95_pct), ours]
        body.append(line)
    sources = sorted({str(src).split(";")[0] for src in published.source})
    notes.append(f"Published: {'; '.join(sources)} (results/reference/published.csv says where each number is from).")
    return header, body, notes, used


def small_split_table(groups: pd.DataFrame):
    small = groups[(groups.dataset == "omniglot") & groups.split.astype(str).str.startswith("small")] \
        if not groups.empty else groups
    settings = sorted({(int(r.ways), int(r.shots)) for r in small.itertuples() if r.metric == "accuracy"})
    header = ["Algorithm"] + [f"{w}-way {s}-shot: ours" for w, s in settings]
    body, used = [], []
    for algorithm, transductive in protocols(small[small.metric == "accuracy"]):
        line = [label(algorithm, transductive)]
        for ways, shots in settings:
            g, _ = pick(small, "omniglot", list(small.split.unique()), ways, shots, algorithm, transductive)
            line.append("not run" if g is None else ours_text(g) + f" [{g.device}]")
            used += [] if g is None else [g]
        body.append(line)
    return header, body, used


def comparison_table(groups: pd.DataFrame):
    """Per algorithm/backend/device: gradient order, memory and time at 5 and 20 inner steps, accuracy."""
    header = ["Algorithm", "Backend", "Gradient order", "Autograd-held K=5", "Autograd-held K=20",
              "Growth per inner step", "Peak memory K=5", "Peak memory K=20", "Median step K=5",
              "Median step K=20", "Accuracy (default suite)", "Device"]
    if groups.empty:
        return header, [], []
    sc, default = groups[groups.scaling], groups[(groups.suite == "default") & ~groups.scaling
                                                 & (groups.metric == "accuracy")]
    body, used = [], list(sc.itertuples())
    for (alg, backend, device), g in sc.groupby(["algorithm", "backend", "device"]):
        at = {k: g[g.inner_steps == k] for k in (5, 20)}
        pts = g.dropna(subset=["autograd_saved_bytes"])
        slope = np.polyfit(pts.inner_steps.astype(float), pts.autograd_saved_bytes.astype(float), 1)[0] \
            if pts.inner_steps.nunique() >= 2 else float("nan")
        slope = 0.0 if abs(slope) < 1 else slope  # flat lines fit to a few bytes either way: show 0, not -0.0
        acc = default[(default.algorithm == alg) & (default.backend == backend)]
        used += list(acc.itertuples())
        order = GRADIENT_ORDER.get(alg, "first" if g.first_order.iloc[0] == True else "second")  # noqa: E712
        kind = g.memory_kind.iloc[0]
        body.append([alg, backend, order,
                     *[fmt_bytes(at[k].autograd_saved_bytes.median()) for k in (5, 20)], fmt_bytes(slope),
                     *[f"{fmt_bytes(at[k].peak_memory_bytes.median())} ({kind})" if len(at[k]) else "—" for k in (5, 20)],
                     *[f"{at[k].step_time_median_s.median():.3g} s" if len(at[k]) else "—" for k in (5, 20)],
                     "; ".join(f"{a.setting}: {fmt_pm(a.value, a.value_ci)}" + ("" if a.device == device else f" [{a.device}]")
                               for a in acc.itertuples()) or "not run", device])
    return header, body, used


def default_suite_table(groups: pd.DataFrame):
    d = groups[(groups.suite == "default") & ~groups.scaling] if not groups.empty else groups
    header = ["Cell", "Algorithm", "Backend", "Setting", "Metric", "Mean ± 95% CI", "Eval tasks", "Iterations",
              "Peak memory", "Median step time", "Device"]
    body = [[g.cell, g.algorithm, g.backend, g.setting, "accuracy %" if g.metric == "accuracy" else str(g.metric),
             fmt_pm(g.value, g.value_ci, 2 if g.metric == "accuracy" else 4), g.eval_tasks, fmt_iterations(g),
             f"{fmt_bytes(g.peak_memory_bytes)} ({g.memory_kind})", f"{g.step_time_median_s:.3g} s", g.device]
            for g in d.sort_values(["dataset", "ways", "shots", "algorithm", "backend", "cell"]).itertuples()]
    return header, body, list(d.itertuples())


def sine_table(groups: pd.DataFrame):
    s = groups[(groups.dataset == "sine") & ~groups.scaling] if not groups.empty else groups
    header = ["Suite/cell", "Algorithm", "Backend", "K shots", "Eval inner steps", "MSE ± 95% CI", "Eval tasks",
              "Iterations", "Device"]
    body = [[f"{g.suite}/{g.cell}", g.algorithm, g.backend, str(g.shots), str(g.eval_inner_steps),
             fmt_pm(g.value, g.value_ci, 4), g.eval_tasks, fmt_iterations(g), g.device]
            for g in s.sort_values(["shots", "algorithm", "backend", "suite", "cell"]).itertuples()]
    return header, body, list(s.itertuples())


def provenance(used: list, files: list[Path], command: str, comment: str = "") -> str:
    """Who generated the file, from which rows, on which devices and commits (one line each)."""
    devices = sorted({g.device for g in used}) or ["none (no rows used)"]
    commits = sorted({c for g in used for c in g.commits.split(", ") if c}) or ["none"]
    lines = [f"Generated by `{command}` — do not edit by hand; rerun the command instead.",
             f"Rows files read: {', '.join(str(f) for f in files) or 'none'}.",
             f"Devices of the rows used: {'; '.join(devices)}.",
             f"Git commits of the rows used: {', '.join(commits)}."]
    return "".join(f"{comment}{line}\n" for line in lines) if comment else "\n\n".join(lines) + "\n"


def render(rows: pd.DataFrame, published: pd.DataFrame, files: list[Path], command: str) -> dict[str, str]:
    """File name -> text of every generated table file (pure; nothing is written)."""
    groups = aggregate(rows)
    md, tex, used_paper = [], [], []
    for title, paper, settings, base, extras in PAPER_TABLES:
        header, body, notes, used = paper_table(groups, published, paper, settings, base, extras)
        md.append(f"## {title}\n\n{table_markdown(header, body)}" + "".join(f"\n- {n}" for n in notes))
        tex.append(table_latex(header, body, title))
        used_paper += used
    header, body, used_small = small_split_table(groups)
    md.append(f"## {SMALL_SPLIT_TITLE}\n\n" + (table_markdown(header, body) if used_small else "_no rows_\n"))
    if used_small:
        tex.append(table_latex(header, body, SMALL_SPLIT_TITLE))
    md.append(f"## How cells are filled\n\n{NOTE}\n")
    used = used_paper + used_small
    out = {"paper_tables.md": "# Paper tables: published vs ours\n\n" + provenance(used, files, command)
           + "\n" + "\n\n".join(md),
           "paper_tables.tex": provenance(used, files, command, comment="% ")
           + "% Needs \\usepackage{booktabs}.\n" + "% " + NOTE.replace("\n", " ") + "\n\n" + "\n".join(tex)}
    ch, cb, used_c = comparison_table(groups)
    sh, sb, used_s = sine_table(groups)
    out["comparison.md"] = (
        "# Reptile vs first- and second-order MAML: measured comparison\n\n" + provenance(used_c + used_s, files, command)
        + "\n## Gradient order, memory, time and accuracy\n\n"
        + (table_markdown(ch, cb) if cb else "_no scaling-sweep rows: run the `scaling` suite_\n")
        + "\nAutograd-held: bytes saved by autograd for one outer update. Growth per inner step: slope of a "
          "least-squares line through autograd-held bytes against inner steps. K = inner steps.\n"
        + "\n## Sine regression (MSE, lower is better)\n\n" + (table_markdown(sh, sb) if sb else "_no sine rows_\n"))
    dh, db, used_d = default_suite_table(groups)
    out["default_suite.md"] = ("# Default suite\n\n" + provenance(used_d, files, command) + "\n"
                               + (table_markdown(dh, db) if db else "_no default-suite rows yet: run `make benchmark`_\n"))
    paired_text, _ = paired.render(rows) if not rows.empty else ("_no rows_\n", 0)
    out["paired.md"] = ("# Paired comparisons on the same evaluation tasks\n\n"
                        + provenance(list(aggregate(rows).itertuples()) if not rows.empty else [], files, command)
                        + "\n" + paired.NOTE + "\n\n" + paired_text)
    return out


def main(results_dir: str | Path = "results", out_dir: str | Path | None = None,
         published: str | Path = DEFAULT_PUBLISHED) -> list[Path]:
    """Write every table file into ``out_dir`` (default ``<results_dir>/tables``); returns their paths."""
    rows, files = load_rows(results_dir)
    command = "python -m benchmarks.reporting.tables" + ("" if str(results_dir) == "results" else f" --results-dir {results_dir}")
    texts = render(rows, load_published(published), files, command)
    out_dir = Path(out_dir) if out_dir is not None else Path(results_dir) / "tables"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        write_text_atomic(out_dir / name, text)
    return [out_dir / name for name in texts]


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Render result rows as the paper tables beside published numbers.")
    p.add_argument("--results-dir", default="results", help="folder holding <suite>/rows.csv (default: results)")
    p.add_argument("--out-dir", default=None, help="where to write the tables (default: <results-dir>/tables)")
    p.add_argument("--published", default=str(DEFAULT_PUBLISHED), help="published numbers CSV")
    args = p.parse_args(argv)
    try:
        for path in main(args.results_dir, args.out_dir, args.published):
            print(path)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
