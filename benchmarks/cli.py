"""Command line of the benchmark: run suites, list them, render tables and plots.

    python -m benchmarks.cli run --suite default            # what `make benchmark` runs
    python -m benchmarks.cli run --suite smoke --out /tmp/smoke --cells 'sine-*' --seeds 0,1
    python -m benchmarks.cli list                            # suites and their cells
    python -m benchmarks.cli tables [--results results]      # paper tables + plots from the rows

``run`` starts one child process per cell (``python -m benchmarks.running.runner``) so the
CPU peak-RSS column measures that cell alone. Cells whose row is already complete
(same config hash) at this git commit are skipped; an interrupted cell resumes from its
checkpoint. Rows of another commit (the committed results, in a fresh clone) are run
again, and the new row replaces the old one.
Exit status: 0 done, 1 some cell failed, 2 bad input, 3 data missing, 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from datasets.tasks import SEED_LIMIT

from benchmarks.records import provenance
from benchmarks.records.rows import ROWS_FILE, completed_hashes
from benchmarks.running.runner import EXIT_BAD_CONFIG, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_MISSING_DATA, quiet
from benchmarks.running.suites import SuiteError, available_suites, describe, format_cells, load_suite, select, suite_name


class UsageError(Exception):
    """Bad input: printed as ``error: ...`` with exit status 2."""


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds takes comma-separated integers such as 0,1,2; got {text!r}") from None
    if not seeds or any(not 0 <= s < SEED_LIMIT for s in seeds):
        raise UsageError(f"--seeds needs at least one integer, each in [0, {SEED_LIMIT}); got {text!r}")
    return seeds


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: this torch build sees no CUDA device; use --device cpu (or auto)")
    return device


def check_writable(folder: Path) -> None:
    """Fail before any work if results cannot be written under ``folder``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UsageError(f"cannot write results to {folder} ({e.strerror or e}); pass a writable --out folder") from None


def child_env() -> dict[str, str]:
    """The cell process finds this checkout's packages whatever the working directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(provenance.REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_child(cmd: list[str]) -> int:
    """Run one cell's process to its end; its exit status.

    No cell outlives the run: a SIGTERM sent to this process is passed on to the cell, and on
    Ctrl-C (or a SIGINT sent to this process alone) the cell gets a SIGINT and 30 s to exit.
    """
    with subprocess.Popen(cmd, env=child_env()) as proc:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            try:
                return proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0 (0 = torch's default), got {args.threads}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise UsageError(f"--max-minutes must be a positive number of minutes, got {args.max_minutes}")
    device = resolve_device(args.device)
    cells = select(load_suite(args.suite, parse_seeds(args.seeds)), args.cells)
    cells = [replace(c, device=device) for c in cells]
    out = Path(args.out)
    suite = suite_name(args.suite)
    folder = out / suite
    check_writable(folder)
    git_state = provenance.git_state(exclude=out)
    # The name each cell's row will carry (the runner sets --threads before naming its device).
    device_label = provenance.device_name(device, args.threads or None)
    # Also refuses a rows file of another schema, before any work.
    done = completed_hashes(folder / ROWS_FILE, git_state, device_label)
    deadline = time.time() + 60 * args.max_minutes if args.max_minutes else None
    command = provenance.command_line(["-m", "benchmarks.cli", *args.argv])
    git = json.dumps(git_state)
    failed, missing, not_started, skipped = [], [], [], 0
    bar = tqdm(cells, desc=f"suite {suite}", unit="cell", position=0, disable=quiet())
    for cell in bar:
        if cell.config_hash() in done:
            skipped += 1
            continue
        if deadline is not None and time.time() >= deadline:
            not_started.append(cell.cell)
            continue
        bar.set_postfix_str(cell.cell)
        cmd = [sys.executable, "-m", "benchmarks.running.runner", "--cell-json", cell.to_json(), "--out", str(out),
               "--wandb", args.wandb, "--command", command, "--git-json", git]
        if deadline is not None:
            cmd += ["--deadline", repr(deadline)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        try:
            rc = run_child(cmd)
        except KeyboardInterrupt:
            rc = EXIT_INTERRUPTED
        if rc in (EXIT_INTERRUPTED, -signal.SIGINT, -signal.SIGTERM):
            print(f"\ninterrupted during {cell.cell}: rerun the same command to resume (finished cells are kept)",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        if rc == EXIT_MISSING_DATA:
            missing.append(cell.cell)
            if not args.skip_missing:
                print(f"error: stopped at cell {cell.cell} because its data is missing (message above); get the "
                      "data, or pass --skip-missing to run the other cells", file=sys.stderr)
                return EXIT_MISSING_DATA
        elif rc != 0:
            failed.append(f"{cell.cell} (exit {rc}{', diverged' if rc == EXIT_DIVERGED else ''})")
    bar.close()
    ran = len(cells) - skipped - len(failed) - len(missing) - len(not_started)
    print(f"suite {suite}: {ran} cell(s) run, {skipped} already complete at this commit on {device_label}; "
          f"rows in {folder / ROWS_FILE}")
    if missing:
        print(f"skipped for missing data (--skip-missing): {', '.join(missing)}")
    if not_started:
        print(f"not started within --max-minutes {args.max_minutes}: {', '.join(not_started)}; rerun to continue")
    if failed:
        print(f"error: failed cells: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def list_suites(args: argparse.Namespace) -> int:
    for name in [args.suite] if args.suite else available_suites():
        cells = load_suite(name)
        print(f"{suite_name(name)} ({len(cells)} cells): {describe(name)}")
        print(format_cells(cells))
    return 0


def tables(args: argparse.Namespace) -> int:
    """Render tables (``benchmarks.reporting.tables.main``) and plots (``benchmarks.reporting.plots.main``) from the rows."""
    results = Path(args.results)
    if not results.is_dir():
        raise UsageError(f"no results folder at {results}; run `python -m benchmarks.cli run --suite NAME` first")
    from benchmarks.reporting import plots, tables as table_files

    for module in (table_files, plots):
        for path in module.main(results) or []:
            print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cli", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run (or resume) the cells of a suite")
    r.add_argument("--suite", required=True, help=f"suite name ({', '.join(available_suites())}) or path of a .toml suite file")
    r.add_argument("--cells", default=None, help="only cells whose name matches: comma-separated globs or substrings")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda when available")
    r.add_argument("--seeds", default=None, help="comma-separated run seeds, replacing the suite's (e.g. 0,1,2)")
    r.add_argument("--out", default="results", help="results folder; rows go to OUT/<suite>/rows.csv")
    r.add_argument("--wandb", default="offline", choices=["offline", "online", "disabled"],
                   help="Weights & Biases mode (offline needs no account; `wandb sync` uploads later)")
    r.add_argument("--max-minutes", type=float, default=None,
                   help="time budget: the running cell is cut short, evaluated and written with complete=False")
    r.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per cell (default 1: timings on shared cores are otherwise unstable; "
                        "0 = torch's default); recorded in the device column")
    r.add_argument("--skip-missing", action="store_true", help="skip cells whose data is missing instead of stopping")
    r.set_defaults(func=run)
    ls = sub.add_parser("list", help="list suites and their cells")
    ls.add_argument("--suite", default=None, help="only this suite")
    ls.set_defaults(func=list_suites)
    t = sub.add_parser("tables", help="render paper tables and plots from the result rows")
    t.add_argument("--results", "--out", dest="results", default="results", help="results folder to read")
    t.set_defaults(func=tables)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in every row as the command to rerun
    try:
        return args.func(args)
    except (UsageError, SuiteError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG


if __name__ == "__main__":
    sys.exit(main())
