"""Regenerate README.md's results section from the generated tables and perf JSON.

    python -m benchmarks.reporting.readme [--readme README.md] [--results-dir results] [--check]

Replaces everything between the lines ``<!-- results:start -->`` and ``<!-- results:end -->`` with:
the default suite's table (``results/tables/default_suite.md``, written by ``python -m benchmarks.reporting.tables``;
every number there has its device), links to the paper tables, comparison and plots, and the
performance tables from ``results/limits/*.json`` (``benchmarks.perf.limits``) and ``results/perf/*.json``
(pytest-benchmark JSON), each line naming its device.
Nothing outside the markers changes; running it twice changes nothing the second time.
``--check`` writes nothing and exits 1 when the section is out of date (for tests and CI).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from benchmarks.records.collect import load_rows
from benchmarks.reporting import against_official, implementations, official_accuracy
from benchmarks.reporting.table_format import write_text_atomic

START, END = "<!-- results:start -->", "<!-- results:end -->"
COMMAND = "python -m benchmarks.reporting.readme"


class MarkersError(ValueError):
    """The README lacks the start/end markers (or has them out of order or twice)."""


def _link(target: Path, readme: Path) -> str:
    rel = Path(os.path.relpath(target, readme.parent)).as_posix()
    return f"[{rel}]({rel})"


def _duration(seconds: float) -> str:
    seconds = float(f"{seconds:.3g}")  # round first, so 0.99999 s reads 1.00 s, not 1000 ms
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{_three_digits(seconds / scale)} {unit}"
    return f"{_three_digits(seconds / 1e-9)} ns"


def _three_digits(x: float) -> str:
    """Three significant digits, trailing zeros kept (1.00, 12.3, 152), unlike ``:.3g``."""
    return f"{x:.{max(0, 2 - math.floor(math.log10(x)))}f}" if x > 0 else "0"


def perf_lines(perf_dir: Path, readme: Path) -> list[str]:
    """A Markdown table of every benchmark in ``perf_dir/*.json``; [] if there is none."""
    lines = []
    for path in sorted(perf_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            benches = data["benchmarks"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not pytest-benchmark JSON ({e}); regenerate it with `make perf`") from e
        cpu = data.get("machine_info", {}).get("cpu", {}).get("brand_raw") or data.get("machine_info", {}).get(
            "processor") or "unknown CPU"
        commit = (data.get("commit_info") or {}).get("id", "")[:12] or "unknown"
        for b in benches:
            # A benchmark that ran on a GPU says so in extra_info; otherwise it ran on the machine's CPU.
            device = (b.get("extra_info") or {}).get("device") or f"cpu: {cpu}"
            s = b["stats"]
            lines.append(f"| {b['name']} | {_duration(s['median'])} | {_duration(s['iqr'])} | {s['rounds']} "
                         f"| {device} | {commit} | {_link(path, readme)} |")
    if not lines:
        return []
    return ["| Benchmark | Median | IQR | Rounds | Device | Git commit | File |", "|---|---|---|---|---|---|---|"] + lines


def limits_lines(limits_dir: Path, readme: Path) -> list[str]:
    """Meta-step time over its forward/backward floor, from ``limits_dir/*.json`` (``python -m benchmarks.perf.limits --json``)."""
    lines, mem, comp = [], [], []
    official = against_official.official_median(limits_dir.parent)
    for path in sorted(limits_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            device, timings, memory = data["device"], data["timings"], data["memory"]
            # Older reports carry no clock; the benchmark then used these two.
            clock = data.get("clock") or ("wall time" if device.startswith("cuda") else "thread CPU time")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not `benchmarks.perf.limits --json` output ({e}); regenerate it with `make perf`") from e
        for setting, med in timings.items():
            floor, ref = med["floor (loop)"]["median"], med["reference"]["median"]
            for name, t in med.items():
                if name.startswith("floor"):
                    continue
                sampling = name.startswith("sampling")
                ratio = "—" if sampling else f"×{t['median'] / floor:.2f}"
                vs_ref = "—" if sampling or name == "reference" else f"×{ref / t['median']:.2f}"
                vs_tf = (f"×{t['median'] / official:.2f}" if official and setting == "reptile" and not sampling
                         and "(1 thread" in device else "—")
                lines.append(f"| {setting} | {name} | {_duration(t['median'])} | {ratio} | {vs_ref} | {vs_tf} | {clock} "
                             f"| {device} | {_link(path, readme)} |")
        for setting, med in (data.get("compile") or {}).items():
            gain = f"×{med['batched']['median'] / med['batched+compile']['median']:.2f}" if "batched+compile" in med else "failed"
            compiled = _duration(med["batched+compile"]["median"]) if "batched+compile" in med else "—"
            comp.append(f"| {setting} | {_duration(med['batched']['median'])} | {compiled} | {gain} | {device} |")
        for steps, m in memory.items():
            ref = m["reference"]
            mem.append(f"| {steps} | " + " | ".join(f"{m[k] / 2**20:.1f} MiB" for k in ("reference", "batched", "batched-unrolled"))
                       + f" | ×{m['batched'] / ref:.2f} | {device} |")
    if not lines:
        return []
    out = ["| Setting | Implementation | Median per meta-step | ÷ floor (bare forward/backward, task by task) "
           "| speed-up over reference | ÷ authors' TF code (1 thread) | Clock | Device | File |",
           "|---|---|---|---|---|---|---|---|---|", *lines]
    if official:
        out += ["", "÷ authors' TF code: against the median meta-iteration of openai/supervised-reptile measured by "
                "`make peer-official-reptile` (which includes task sampling; these rows do not), Reptile only."]
    if any("*" in line.split("|")[2] for line in lines):
        out += ["", "\\* torch.func with `vmap` over tasks gives wrong second derivatives through batch norm "
                "(`tests/test_func_maml.py`); it is timed only to show what vmap would buy."]
    if comp:
        out += ["", "torch.compile of the batched learners' forward (first order; `benchmarks.perf.limits --compile`):", "",
                "| Setting | batched | batched + torch.compile | speed-up | Device |", "|---|---|---|---|---|", *comp]
    if mem:
        out += ["", "Second-order MAML memory (CPU: autograd saved-tensor bytes; CUDA: allocator peak):", "",
                "| Inner steps | higher (reference) | batched (HVP chain) | batched (unrolled) | batched ÷ higher | Device |",
                "|---|---|---|---|---|---|", *mem]
    return out


def eval_lines(eval_dir: Path, readme: Path) -> list[str]:
    """Evaluation throughput (batched vs serial) and float32 agreement, from ``benchmarks.perf.eval_throughput``."""
    out = []
    for path in sorted(eval_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not `benchmarks.perf.eval_throughput --json` output ({e})") from e
        if "per_protocol" in data:
            out += ["", f"Evaluation throughput, tasks per second (5-way 1-shot, {data['device']}, {_link(path, readme)}):", "",
                    "| Protocol | Evaluator | Tasks per second | × serial |", "|---|---|---|---|"]
            for protocol, contenders in data["per_protocol"].items():
                out += [f"| {protocol} | {name} | {v['tasks_per_s']:.1f} | ×{v['vs_serial']:.2f} |" for name, v in contenders.items()]
        if "settings" in data:
            out += ["", f"Batched against serial evaluation in float32 on the default suite's pools (600 tasks, a "
                    f"randomly initialised network; {data['device']}, {_link(path, readme)}):", "",
                    "| Setting, evaluator | Tasks with another score | Predictions changed (at least) |", "|---|---|---|"]
            out += [f"| {k} | {v['tasks_changed']} / 600 | {v['predictions_changed_at_least']} / {v['predictions']} |"
                    for k, v in data["settings"].items()]
    return out[1:] if out else []


def distributed_lines(folder: Path, readme: Path) -> list[str]:
    """Data-parallel meta-steps per second against one rank (``benchmarks.perf.data_parallel``)."""
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            results = data["results"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{path} is not `benchmarks.perf.data_parallel --json` output ({e})") from e
        out += [f"One training split over torchrun ranks ({data['setting']}; {data['device']} per rank; "
                f"{data['allreduce_bytes_per_step'] / 1e3:.0f} kB all-reduced per meta-step; {_link(path, readme)}):", "",
                "| Ranks | Median meta-step | Meta-steps per second | × one rank |", "|---|---|---|---|"]
        out += [f"| {n} | {_duration(r['step_s_median'])} | {r['steps_per_s']:.2f} | ×{r['speedup']:.2f} |"
                for n, r in results.items()]
    return out


def build_section(readme: Path, results_dir: Path) -> str:
    """The text between the markers (markers excluded)."""
    tables, plots = results_dir / "tables", results_dir / "plots"
    default = tables / "default_suite.md"
    out = [f"<!-- Generated by `{COMMAND}` from {results_dir.as_posix()}/tables and "
           f"{results_dir.as_posix()}/perf; do not edit by hand. -->", ""]
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
    links = [f"{label}: {_link(tables / name, readme)}" for label, name in (
        ("Paper tables, published beside ours", "paper_tables.md"), ("LaTeX", "paper_tables.tex"),
        ("Measured comparison (gradient order, memory, time, sine MSE)", "comparison.md"))
        if (tables / name).is_file()]
    links += [f"Plot: {_link(p, readme)}" for p in sorted(plots.glob("*.png"))]
    out += [f"- {link}" for link in links] + ([""] if links else [])
    limits = limits_lines(results_dir / "limits", readme)
    if limits:
        out += ["#### Distance to the hardware floor (`python -m benchmarks.perf.limits`; `make perf`)", "", *limits, ""]
    link = lambda p: _link(p, readme)  # noqa: E731
    peers = against_official.peer_lines(results_dir, link)
    rows = load_rows(results_dir)[0] if results_dir.is_dir() else None
    accuracy = official_accuracy.lines(rows, link) if rows is not None else []
    if peers or accuracy:
        out += ["#### Against the authors' code (`make peer-official-reptile`)", "", *peers, ""]
        out += [*accuracy, ""] if accuracy else []
    profile = against_official.profile_lines(results_dir, link)
    if profile:
        out += ["#### Where a Reptile meta-step's time goes (`python -m benchmarks.perf.profile_reptile`; `make perf`)",
                "", *profile, ""]
    variants = against_official.variants_lines(results_dir, link)
    if variants:
        out += [*variants, ""]
    kept = against_official.allocator_lines(results_dir, link)
    if kept:
        out += [*kept, ""]
    layouts = against_official.layouts_lines(results_dir, link)
    if layouts:
        out += [*layouts, ""]
    conv_calls = against_official.conv_calls_lines(results_dir, link)
    if conv_calls:
        out += [*conv_calls, ""]
    evaluation = eval_lines(results_dir / "eval", readme)
    if evaluation:
        out += ["#### Batched evaluation (`python -m benchmarks.perf.eval_throughput`; `make perf`)", "", *evaluation, ""]
    parallel = distributed_lines(results_dir / "distributed", readme)
    if parallel:
        out += ["#### Data-parallel training (`python -m benchmarks.perf.data_parallel`; `make perf`)", "", *parallel, ""]
    compared = implementations.lines(results_dir, rows) if rows is not None else []
    if compared:
        out += ["#### MAML implementations compared (`make perf`, scaling sweep)", "", *compared, ""]
    perf = perf_lines(results_dir / "perf", readme)
    if perf:
        out += ["#### Performance micro-benchmarks (pytest-benchmark; `make perf`)", "", *perf, ""]
    return "\n".join(out).rstrip("\n") + "\n"


def replace_section(text: str, section: str, name: str = "README.md") -> str:
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise MarkersError(f"{name} needs exactly one line `{START}` followed later by one line `{END}`; "
                           "add them where the results section should go")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{section}{END}{tail}"


def update(readme: str | Path = "README.md", results_dir: str | Path = "results", check: bool = False) -> bool:
    """Rewrite the section (unless ``check``); returns True when the file was already up to date."""
    readme, results_dir = Path(readme), Path(results_dir)
    if not readme.is_file():
        raise FileNotFoundError(f"no README at {readme}; pass --readme PATH")
    text = readme.read_text()
    new = replace_section(text, build_section(readme, results_dir), readme.name)
    if new != text and not check:
        write_text_atomic(readme, new)
    return new == text


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Regenerate README.md's results section from results/.")
    p.add_argument("--readme", default="README.md", help="the README to update (default: README.md)")
    p.add_argument("--results-dir", default="results", help="folder with tables/, plots/, perf/ (default: results)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the section is out of date")
    args = p.parse_args(argv)
    try:
        current = update(args.readme, args.results_dir, check=args.check)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check and not current:
        print(f"{args.readme}: the results section is out of date; run `{COMMAND}` and commit the result",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
