"""Regenerate the generated blocks of the README and the docs pages from ``results/``.

    python -m benchmarks.reporting.readme [--root .] [--results-dir results] [--check]

Three documents hold generated blocks, each between the lines ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``:

- ``README.md``, block ``results``: the default suite's table (``results/tables/default_suite.md``, written by
  ``python -m benchmarks.reporting.tables``; every number there has its device), the measured comparison of
  gradient order, memory and time, one plot, and links to the paper tables, comparisons and other plots;
- ``docs/performance.md``, block ``performance``: the limit benchmark, where a meta-step's time goes, the allocator
  and layout studies, batched evaluation, data-parallel training, the MAML libraries compared and the
  micro-benchmarks (``results/{limits,profile,eval,distributed,backends,perf}``);
- ``docs/peers.md``, block ``peers``: the authors' codes timed and scored beside ours (``results/peers``, the
  ``official-tf`` rows).

Nothing outside the markers changes; running it twice changes nothing the second time. Links are relative to
each document. ``--check`` writes nothing and exits 1 when a block is out of date (for tests and CI).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from benchmarks.records.collect import load_rows
from benchmarks.reporting import against_official, implementations, official_accuracy
from benchmarks.reporting.perf_tables import distributed_lines, eval_lines, limits_lines, link, perf_lines
from benchmarks.reporting.table_format import write_text_atomic

COMMAND = "python -m benchmarks.reporting.readme"
FRONT_PLOT = "curves-default.png"
"""The plot the README shows (the others are linked)."""


class MarkersError(ValueError):
    """A document lacks a block's start/end markers (or has them out of order or twice)."""


def markers(block: str) -> tuple[str, str]:
    return f"<!-- {block}:start -->", f"<!-- {block}:end -->"


def _rows(results_dir: Path):
    return load_rows(results_dir)[0] if results_dir.is_dir() else None


def results_block(document: Path, results_dir: Path) -> list[str]:
    """The README's: the default suite, the measured comparison, one plot, links to the rest."""
    tables, plots = results_dir / "tables", results_dir / "plots"
    default, out = tables / "default_suite.md", []
    if default.is_file():
        body = default.read_text().splitlines()
        if body and body[0].startswith("# "):  # the file's own title; the README has its heading
            body = body[1:]
        out += ["#### Default suite (accuracy, memory, time; device named per row)", *body, ""]
    else:
        out += [f"_No results yet: run `make benchmark` (then `{COMMAND}`)._", ""]
    comparison = tables / "comparison.md"
    if comparison.is_file():
        # The measured form of the paper's qualitative comparison: its first section, table and legend.
        text = comparison.read_text()
        head = "## Gradient order, memory, time and accuracy"
        if head in text:
            body = text.split(head, 1)[1].split("\n## ", 1)[0].strip("\n")
            out += ["#### Gradient order, memory and time per meta-step (scaling sweep) beside accuracy", "", body, ""]
    shown = plots / FRONT_PLOT
    if shown.is_file():
        rel = link(shown, document).split("](")[1][:-1]
        out += [f"![Periodic evaluation during training, default suite]({rel})", ""]
    links = [f"{label}: {link(tables / name, document)}" for label, name in (
        ("Paper tables, published beside ours", "paper_tables.md"), ("LaTeX", "paper_tables.tex"),
        ("Measured comparison (gradient order, memory, time, sine MSE)", "comparison.md"),
        ("Paired comparisons on the same tasks", "paired.md")) if (tables / name).is_file()]
    links += [f"Plot: {link(p, document)}" for p in sorted(plots.glob("*.png")) if p != shown]
    return out + [f"- {line}" for line in links]


def performance_block(document: Path, results_dir: Path) -> list[str]:
    """docs/performance.md's: every perf measurement's table, each naming its device and file."""
    out: list[str] = []
    to = lambda p: link(p, document)  # noqa: E731
    limits = limits_lines(results_dir / "limits", document)
    if limits:
        out += ["#### Distance to the hardware floor (`python -m benchmarks.perf.limits`; `make perf`)", "", *limits, ""]
    profile = against_official.profile_lines(results_dir, to)
    if profile:
        out += ["#### Where a Reptile meta-step's time goes (`python -m benchmarks.perf.profile_reptile`; `make perf`)",
                "", *profile, ""]
    for part in (against_official.variants_lines, against_official.allocator_lines, against_official.layouts_lines,
                 against_official.conv_calls_lines):
        lines = part(results_dir, to)
        out += [*lines, ""] if lines else []
    evaluation = eval_lines(results_dir / "eval", document)
    if evaluation:
        out += ["#### Batched evaluation (`python -m benchmarks.perf.eval_throughput`; `make perf`)", "", *evaluation, ""]
    parallel = distributed_lines(results_dir / "distributed", document)
    if parallel:
        out += ["#### Data-parallel training (`python -m benchmarks.perf.data_parallel`; `make perf`)", "", *parallel, ""]
    rows = _rows(results_dir)
    compared = implementations.lines(results_dir, rows) if rows is not None else []
    if compared:
        out += ["#### MAML implementations compared (`make perf`, scaling sweep)", "", *compared, ""]
    perf = perf_lines(results_dir / "perf", document)
    if perf:
        out += ["#### Performance micro-benchmarks (pytest-benchmark; `make perf`)", "", *perf, ""]
    return out or [f"_No performance results yet: run `make perf` (then `{COMMAND}`)._"]


PEERS = [("openai/supervised-reptile (TF compat)", "official_reptile", official_accuracy.REPTILE),
         ("cbfinn/maml (TF compat)", "official_maml", official_accuracy.MAML)]
"""(title, timing JSON under results/peers, implementation its accuracy rows name) of every authors' code."""


def peers_block(document: Path, results_dir: Path) -> list[str]:
    """docs/peers.md's: each authors' code timed round by round (each malloc on both sides) and scored on our tasks."""
    to = lambda p: link(p, document)  # noqa: E731
    rows, out = _rows(results_dir), []
    for title, peer, implementation in PEERS:
        timing = against_official.peer_lines(results_dir, to, peer)
        accuracy = official_accuracy.lines(rows, to, implementation) if rows is not None else []
        if timing or accuracy:
            out += [f"#### {title}", "", *timing, *([""] if timing and accuracy else []), *accuracy, ""]
    return out or ["_No peer results yet: run `make peer-official-reptile` or `make peer-official-maml` (see above)._"]


BLOCKS: dict[str, Callable[[Path, Path], list[str]]] = {
    "results": results_block, "performance": performance_block, "peers": peers_block}
DOCUMENTS = {"README.md": "results", "docs/performance.md": "performance", "docs/peers.md": "peers"}
"""Each document of the project (relative to its root) and the block it holds."""


def replace_block(text: str, block: str, section: str, name: str) -> str:
    start, end = markers(block)
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise MarkersError(f"{name} needs exactly one line `{start}` followed later by one line `{end}`; "
                           "add them where the generated block should go")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{section}{end}{tail}"


def render(document: Path, block: str, results_dir: Path) -> tuple[str, str]:
    """(the document's text, its text with ``block`` regenerated); FileNotFoundError, MarkersError."""
    if not document.is_file():
        raise FileNotFoundError(f"no {document}; pass --root, the folder holding README.md and docs/")
    text = document.read_text()
    note = f"<!-- Generated by `{COMMAND}` from {results_dir.as_posix()}/; do not edit by hand. -->"
    section = "\n".join([note, "", *BLOCKS[block](document, results_dir)]).rstrip("\n") + "\n"
    return text, replace_block(text, block, section, document.name)


def update(document: str | Path, block: str, results_dir: str | Path = "results", check: bool = False) -> bool:
    """Rewrite ``block`` of ``document`` (unless ``check``); returns True when it was already up to date."""
    return not update_documents({Path(document): block}, Path(results_dir), check)


def update_documents(documents: dict[Path, str], results_dir: Path, check: bool = False) -> list[Path]:
    """Render every document's block before writing any (one that fails leaves them all as they were); write the
    changed ones unless ``check``; returns the documents that were out of date."""
    rendered = {path: render(path, block, results_dir) for path, block in documents.items()}
    stale = [path for path, (old, new) in rendered.items() if old != new]
    if not check:
        for path in stale:
            write_text_atomic(path, rendered[path][1])
    return stale


def update_all(root: str | Path = ".", results_dir: str | Path = "results", check: bool = False) -> list[Path]:
    """``update_documents`` of every document of the project under ``root``."""
    return update_documents({Path(root) / name: block for name, block in DOCUMENTS.items()}, Path(results_dir), check)


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=COMMAND, description="Regenerate the README's and docs pages' generated blocks.")
    p.add_argument("--root", default=".", help="folder holding README.md and docs/ (default: the current folder)")
    p.add_argument("--results-dir", default="results", help="folder with tables/, plots/, perf/, ... (default: results)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block is out of date")
    args = p.parse_args(argv)
    try:
        stale = update_all(args.root, args.results_dir, check=args.check)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check and stale:
        print(f"out of date: {', '.join(map(str, stale))}; run `{COMMAND}` and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
