"""Formatting helpers of the generated tables: Markdown and LaTeX (booktabs) renderers, number
formats, the atomic text writer every generated file goes through, and the reader of the JSON results.

Used by ``benchmarks/reporting/tables.py`` and ``benchmarks/reporting/readme.py``; nothing here reads rows.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from datasets.archive import atomic_write


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` through a temporary file in the same folder, then ``os.replace``."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def read_json(path: Path):
    """A results JSON file's content, None when it is absent; ValueError naming it when it is not JSON."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not readable JSON ({e}); regenerate it") from e


def fmt_pm(mean, ci, digits: int = 2) -> str:
    if isinstance(mean, str):  # published: keep the paper's decimals
        return f"{mean} ± {ci}"
    return "—" if pd.isna(mean) else f"{mean:.{digits}f} ± {ci:.{digits}f}"


def fmt_bytes(n) -> str:
    return "—" if pd.isna(n) else f"{n / 2 ** 20:,.1f} MiB"


def table_markdown(header: list[str], body: list[list[str]]) -> str:
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, row)) + " |" for row in body]) + "\n"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "±": r"$\pm$", "—": "---", "–": "--", "≤": r"$\leq$", "·": r"$\cdot$", "²": r"$^2$",
                 "✓": "", "✗": "", "−": "-"}


def latex_escape(text: str) -> str:
    out = "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return out.replace(" disjoint", r" \textbf{disjoint}").replace("  ", " ")


def table_latex(header: list[str], body: list[list[str]], caption: str) -> str:
    """A booktabs table; ``group: sub`` headers become a \\multicolumn row over a sub-header row."""
    groups = [h.split(": ", 1) if ": " in h else [h, ""] for h in header]
    top, i = [], 0
    while i < len(groups):
        j = i
        while j + 1 < len(groups) and groups[j + 1][0] == groups[i][0] and groups[i][1]:
            j += 1
        top.append(latex_escape(groups[i][0]) if j == i else
                   rf"\multicolumn{{{j - i + 1}}}{{c}}{{{latex_escape(groups[i][0])}}}")
        i = j + 1
    lines = [r"\begin{table}[ht]", r"\centering\small", rf"\caption{{{latex_escape(caption)}}}",
             r"\begin{tabular}{l" + "l" * (len(header) - 1) + "}", r"\toprule", " & ".join(top) + r" \\"]
    if any(sub for _, sub in groups):
        lines.append(" & ".join(latex_escape(sub) for _, sub in groups) + r" \\")
    lines += [r"\midrule"] + [" & ".join(map(latex_escape, row)) + r" \\" for row in body]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])
