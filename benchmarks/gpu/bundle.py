"""Bundle a GPU run's outputs into at most 8 flat files, print its summary table, and import them here.

    python -m benchmarks.gpu.bundle bundle --work WORK --out OUT    # on the device, end of gpu_results.sh
    python -m benchmarks.gpu.bundle table OUT/rows.csv              # the short table, again
    python -m benchmarks.gpu.bundle import --files DIR --card h100  # here, after the call (make gpu-import)

``bundle`` reads ``WORK/results/<suite>/{rows,curves}.csv`` (every suite the script ran), the
micro-benchmark and evaluation-throughput JSONs and logs in WORK, and writes into OUT (flat; names of
letters, digits, . _ -):

    rows.csv  curves.csv  benchmarks.json  limits.json  eval.json  scaling.png  provenance.txt  log.txt

(a file whose source is missing, e.g. a step that did not run, is left out and provenance.txt says
so). scaling.png is ``benchmarks.reporting.plots`` on the bundled rows, for a first look at the reply;
the curves plot does not travel (8 files at most), since ``import`` redraws every plot from the rows. The table printed last has one line per
row: algorithm, cell, iterations_run, complete, metric ± 95% CI, peak memory, median step time.

``import`` copies a bundle into this checkout: ``results/<card>/`` gets rows.csv, curves.csv,
limits.json, provenance.txt and log.txt; ``results/perf/<card>-benchmarks.json`` the
pytest-benchmark JSON; ``results/eval/throughput_<card>.json`` the evaluation throughput; then it
regenerates the tables and plots (``python -m benchmarks.cli tables``) and the README's and docs pages' generated blocks
(``python -m benchmarks.reporting.readme``). It refuses rows of another
schema, and an existing ``results/<card>/`` unless ``--force``.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from benchmarks.reporting.table_format import write_text_atomic
from benchmarks.records.files import write_csv_atomic
from benchmarks.records.rows import COLUMNS, CURVE_COLUMNS, ROWS_FILE, CURVES_FILE, read_curves, read_rows

MAX_FILES, MAX_BYTES = 8, 16 * 2**20
SAFE = re.compile(r"^[A-Za-z0-9._-]+$")
REPO = Path(__file__).resolve().parents[2]


def gather(results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All rows and curves under ``results/<suite>/`` (schema-checked), concatenated."""
    rows = [read_rows(p) for p in sorted(results.glob(f"*/{ROWS_FILE}"))]
    curves = [read_curves(p) for p in sorted(results.glob(f"*/{CURVES_FILE}"))]
    rows = [r for r in rows if not r.empty]
    curves = [c for c in curves if not c.empty]
    return (pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=COLUMNS),
            pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS))


def _mib(value) -> str:
    return "—" if pd.isna(value) else f"{float(value) / 2**20:,.0f} MiB"


def _seconds(value) -> str:
    if pd.isna(value):
        return "—"
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def table(rows: pd.DataFrame) -> str:
    """One fixed-width line per row; cost-only rows (no evaluation) first, evaluated cells last."""
    if rows.empty:
        return "(no result rows)"
    rows = rows.assign(_eval=rows["eval_tasks"].fillna(0).astype(int) > 0).sort_values(
        ["_eval", "suite", "cell"], kind="stable")
    header = ("algorithm", "cell", "iters run", "complete", "metric ± 95% CI", "peak memory", "step time")
    body = []
    for _, r in rows.iterrows():
        metric = "—" if not r["_eval"] else (
            f"{r['metric_mean']:.2f} ± {r['metric_ci95']:.2f} {'%' if r['metric'] == 'accuracy' else r['metric']}"
            f" (n={int(r['eval_tasks'])})")
        body.append((str(r["algorithm"]), str(r["cell"]), f"{int(r['iterations_run']):,}/{int(r['meta_iterations']):,}",
                     str(r["complete"] == True), metric, _mib(r["peak_memory_bytes"]),  # noqa: E712
                     _seconds(r["step_time_median_s"])))
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    fmt = lambda cols: "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()  # noqa: E731
    devices = "; ".join(sorted(set(rows["device"].astype(str))))
    return "\n".join([f"device: {devices}", fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


def render_plots(rows: pd.DataFrame, curves: pd.DataFrame, out: Path) -> list[str]:
    """scaling.png in ``out`` from ``benchmarks.reporting.plots``; returns notes on what was not drawn."""
    from benchmarks.reporting import plots

    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gpu"
        folder.mkdir()
        write_csv_atomic(rows, folder / ROWS_FILE)
        write_csv_atomic(curves, folder / CURVES_FILE)
        written = plots.main(tmp, Path(tmp) / "plots")
        for prefix, name in (("scaling-", "scaling.png"),):
            found = [p for p in written if p.name.startswith(prefix)]
            if found:
                shutil.copyfile(found[0], out / name)
            if len(found) != 1:
                notes.append(f"{name}: {len(found)} plot(s) of that kind ({', '.join(p.name for p in found) or 'none'})"
                             + ("; kept the first" if found else ""))
    return notes


def bundle(work: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    rows, curves = gather(work / "results")
    if not rows.empty:
        write_csv_atomic(rows, out / "rows.csv")
    else:
        notes.append("rows.csv: no result rows were written")
    if not curves.empty:
        write_csv_atomic(curves, out / "curves.csv")
    for name in ("benchmarks.json", "limits.json", "eval.json"):
        if (work / name).is_file() and (work / name).stat().st_size:
            shutil.copyfile(work / name, out / name)
        else:
            notes.append(f"{name}: not produced (see log.txt)")
    if not rows.empty:
        try:
            notes += render_plots(rows, curves, out)
        except Exception as e:  # noqa: BLE001 - plots are a view; the rows are what must come back
            notes.append(f"plots failed: {type(e).__name__}: {e}")
    summary = table(rows)
    prov = (work / "provenance.txt").read_text() if (work / "provenance.txt").is_file() else ""
    extra = "".join(f"- {n}\n" for n in notes)
    write_text_atomic(out / "provenance.txt",
        prov + ("\n== bundle notes ==\n" + extra if extra else "") + "\n== summary ==\n" + summary + "\n")
    log = work / "log.txt"
    if log.is_file():
        data = log.read_bytes()
        if len(data) > MAX_BYTES - 4096:
            data = b"[... head cut to fit 16 MiB ...]\n" + data[-(MAX_BYTES - 8192):]
        (out / "log.txt").write_bytes(data)
    problems = check_out(out)
    for n in notes:
        print(f"note: {n}")
    print(f"\n{len(list(out.iterdir()))} files in {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    print(summary)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


def check_out(out: Path) -> list[str]:
    """What would keep files from coming back from the device: count, size, names, folders."""
    entries = list(out.iterdir())
    problems = [f"{p.name}: not a plain file" for p in entries if not p.is_file() or p.is_symlink()]
    problems += [f"{p.name}: name has characters other than letters, digits, . _ -" for p in entries if not SAFE.match(p.name)]
    problems += [f"{p.name}: {p.stat().st_size} bytes > 16 MiB" for p in entries if p.is_file() and p.stat().st_size > MAX_BYTES]
    if len(entries) > MAX_FILES:
        problems.append(f"{len(entries)} entries in {out}, at most {MAX_FILES} come back")
    return problems


def import_bundle(files: Path, card: str, results: Path, force: bool, root: Path = REPO) -> int:
    if not SAFE.match(card) or card in ("reference", "tables", "plots", "perf"):
        raise ValueError(f"--card {card!r}: use a short name such as h100 or h200 (letters, digits, . _ -)")
    if not (files / "rows.csv").is_file():
        raise FileNotFoundError(f"no rows.csv in {files}; pass the folder the device call's files were copied to")
    rows = read_rows(files / "rows.csv")  # refuses another schema before anything is copied
    if (files / "curves.csv").is_file():
        read_curves(files / "curves.csv")
    dest = results / card
    if dest.exists() and any(dest.iterdir()) and not force:
        raise FileExistsError(f"{dest} already holds results; move it aside or pass --force (FORCE=1) to replace them")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("rows.csv", "curves.csv", "limits.json", "provenance.txt", "log.txt"):
        if (files / name).is_file():
            shutil.copyfile(files / name, dest / name)
            print(f"copied {files / name} -> {dest / name}")
    for name, target in (("benchmarks.json", results / "perf" / f"{card}-benchmarks.json"),
                         ("eval.json", results / "eval" / f"throughput_{card}.json")):
        if (files / name).is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files / name, target)
            print(f"copied {files / name} -> {target}")
    print(table(rows))
    for cmd in ([sys.executable, "-m", "benchmarks.cli", "tables", "--results", str(results)],
                [sys.executable, "-m", "benchmarks.reporting.readme", "--root", str(root), "--results-dir", str(results)]):
        print("$", " ".join(cmd))
        rc = subprocess.run(cmd, cwd=REPO).returncode
        if rc:
            print(f"error: {' '.join(cmd)} failed (exit {rc})", file=sys.stderr)
            return rc
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu.bundle", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bundle", help="WORK -> OUT (at most 8 flat files) and print the table")
    b.add_argument("--work", required=True)
    b.add_argument("--out", required=True)
    t = sub.add_parser("table", help="print the short table of a rows.csv")
    t.add_argument("rows")
    i = sub.add_parser("import", help="copy a bundle to results/<card>/ and regenerate tables, plots, README and docs")
    i.add_argument("--files", required=True, help="folder holding the bundle (the device call's files_at)")
    i.add_argument("--card", required=True, help="short card name: h100, h200, ...")
    i.add_argument("--results", default=str(REPO / "results"))
    i.add_argument("--force", action="store_true", help="replace an existing results/<card>/")
    i.add_argument("--root", default=str(REPO), help="folder of the README and docs/ whose generated blocks are regenerated")
    args = ap.parse_args(argv)
    try:
        if args.command == "bundle":
            return bundle(Path(args.work), Path(args.out))
        if args.command == "table":
            print(table(read_rows(args.rows)))
            return 0
        return import_bundle(Path(args.files), args.card, Path(args.results), args.force, Path(args.root))
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
