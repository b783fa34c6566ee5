"""Run a suite's cells one at a time before a hard deadline, giving each a fair share of the time left.

Used by ``benchmarks/gpu/results.sh`` for the paper protocol (section (c)):

    python -m benchmarks.gpu.cells --suite gpu-omniglot-small --out WORK/results --device cuda \
        --deadline UNIX_TIME --tail reptile=45,fomaml=12,maml=12 [--eval-tasks N] [--log FILE]

Each cell is one ``python -m benchmarks.cli run --cells <that cell> --max-minutes W`` call.
``--max-minutes`` only stops TRAINING (the cell is then written with complete=False and its real
iterations_run); the final evaluation and the row come after it. So every cell costs
W (process start + training) + its *tail* (final checkpoint, one measured extra step, evaluation,
row). With R seconds left and cells i..n pending,

    W_i = (R - sum of the pending cells' tail estimates) / (number of pending cells)

so every pending cell gets the same training window (the fair split), whatever its evaluation costs.
When that window would be under ``--min-window``, the pending cell with the costliest tail (the
later one on ties: 5-shot before 1-shot) is dropped from the plan, until the others fit.
``--tail`` gives the first estimates in seconds per algorithm; after each cell the estimate of its
algorithm becomes 1.25 x the measured tail + 2 s. A dropped cell is not started (listed as
skipped; the exit status is then 1); a cell still running at W + 2.5 x tail + 10 s
(or at the deadline) is killed with its process group (its checkpoint stays; no row).
Cells run 1-shot first, then 5-shot; inside a shot count Reptile, first-order MAML, MAML.

``--iterations N`` (rehearsal) replaces the time windows by a fixed amount of work: every cell trains exactly N
meta-iterations (the CLI's ``--max-iterations``; rows say complete=False, as a cut GPU cell's do), whatever the
machine's speed, no cell is dropped or killed, and ``--deadline`` is not needed.

``--eval-tasks N`` (rehearsal) writes a copy of the suite with every ``num_tasks`` set to N (the
learning-curve sizes shrunk to fit, curve points and checkpoints every 2 iterations) under
``--out``'s parent and runs that copy instead; the suite keeps its name, so rows still go to
``OUT/<suite>/``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from benchmarks.reporting.table_format import write_text_atomic
from benchmarks.records.rows import ROWS_FILE, read_rows_or_empty
from benchmarks.cli_common import with_device
from benchmarks.running.process import EXIT_INCOMPLETE
from benchmarks.running.suites import load_suite, suite_name, suite_path

ALG_ORDER = {"reptile": 0, "fomaml": 1, "maml": 2}


def parse_tail(text: str) -> dict[str, float]:
    """``reptile=75,fomaml=20`` -> {"reptile": 75.0, "fomaml": 20.0}; ValueError with the expected form."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or out[key.strip()] < 0:
            raise ValueError(f"--tail takes algorithm=seconds pairs such as reptile=75,maml=20; got {part!r}")
    return out


def fair_window(remaining: float, pending_tails: list[float]) -> float:
    """Training window of the next cell: (time left - the pending cells' tails) / pending cells."""
    if not pending_tails:
        return 0.0
    return (remaining - sum(pending_tails)) / len(pending_tails)


def plan(remaining: float, planned: list, est: dict[str, float], min_window: float) -> tuple[float, set[str]]:
    """(window, cells dropped): drop the costliest-tail planned cell (the later one on ties) until
    every remaining planned cell gets a window of at least ``min_window`` seconds."""
    planned, dropped = list(planned), set()
    while planned:
        window = fair_window(remaining, [est[c.learner.algorithm] for c in planned])
        if window >= min_window:
            return window, dropped
        worst = max(range(len(planned)), key=lambda j: (est[planned[j].learner.algorithm], j))
        dropped.add(planned.pop(worst).cell)
    return 0.0, dropped


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for the ASCII text suites hold
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def toml_dumps(spec: dict) -> str:
    """A suite dict as TOML: one ``key = value`` line per top-level key, tables written inline."""
    return "".join(f"{key} = {_toml_value(value)}\n" for key, value in spec.items())


def shrink_eval(spec, tasks: int):
    """Copy of a suite dict with every eval ``num_tasks`` set to ``tasks`` and curves sized to fit."""
    if isinstance(spec, list):
        return [shrink_eval(v, tasks) for v in spec]
    if not isinstance(spec, dict):
        return spec
    out = {k: shrink_eval(v, tasks) for k, v in spec.items()}
    if isinstance(out.get("eval"), dict) and out["eval"].get("num_tasks", 0):
        out["eval"]["num_tasks"] = tasks
    if "curve_tasks" in out:
        out["curve_tasks"] = min(out["curve_tasks"], tasks)
    for key in ("eval_every", "checkpoint_every"):  # so a few iterations exercise curves and checkpoints
        if out.get(key):
            out[key] = min(out[key], 2)
    return out


def rehearsal_suite(name: str, tasks: int, folder: Path) -> Path:
    """Write ``<folder>/<suite>.toml``: the suite with ``tasks`` evaluation tasks per cell."""
    if tasks < 1:
        raise ValueError(f"--eval-tasks must be >= 1, got {tasks}")
    spec = tomllib.loads(suite_path(name).read_text())
    if spec.get("include"):
        raise ValueError(f"suite {name} includes other suites; --eval-tasks only rewrites a self-contained suite")
    spec = shrink_eval(spec, tasks)
    spec.setdefault("defaults", {})["curve_tasks"] = min(spec.get("defaults", {}).get("curve_tasks", tasks), tasks)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{suite_name(name)}.toml"
    write_text_atomic(path, f"# Written by benchmarks.gpu.cells --eval-tasks {tasks} from suite {name}: rehearsal only.\n"
                      + toml_dumps(spec))
    return path


def exact(name: str) -> str:
    """A --cells pattern matching exactly ``name`` (a glob, so no substring hits other cells)."""
    return f"[{name[0]}]{name[1:]}"


def kill_group(proc: subprocess.Popen) -> None:
    """TERM, then KILL, the process group that ``proc`` leads (the CLI and its cell process)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def run_cell(cmd: list[str], hard_s: float | None) -> int:
    """Run ``cmd`` in its own process group; kill the group after ``hard_s`` seconds (None: never), or when this
    process is terminated (the script's own `timeout`): a cell never outlives its scheduler."""
    proc = subprocess.Popen(cmd, start_new_session=True)

    def on_term(signum, frame):  # noqa: ARG001
        kill_group(proc)
        sys.exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return proc.wait(timeout=None if hard_s is None else max(1.0, hard_s))
    except subprocess.TimeoutExpired:
        print(f"gpu.cells: hard limit {hard_s:.0f} s reached, killing {shlex.join(cmd[-8:])}", file=sys.stderr)
        kill_group(proc)
        return 124
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu.cells", description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", required=True, help="suite name or .toml path")
    ap.add_argument("--out", required=True, help="results folder passed to the CLI (rows in OUT/<suite>/rows.csv)")
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--deadline", type=float, default=None,
                    help="Unix time by which every cell must be done (required unless --iterations)")
    ap.add_argument("--iterations", type=int, default=None,
                    help="rehearsal: train every cell exactly this many meta-iterations (fixed work, no time windows)")
    ap.add_argument("--tail", default="reptile=45,fomaml=12,maml=12",
                    help="first estimate, in seconds, of each algorithm's time after training (evaluation etc.)")
    ap.add_argument("--min-window", type=float, default=15.0, help="do not start a cell with a smaller training window (s)")
    ap.add_argument("--cells", default=None, help="only these cells (the CLI's --cells syntax)")
    ap.add_argument("--eval-tasks", type=int, default=None, help="rehearsal: evaluation tasks per cell")
    ap.add_argument("--wandb", default="disabled", choices=["offline", "online", "disabled"])
    ap.add_argument("--log", default=None, help="append the schedule (one line per cell) to this file")
    args = ap.parse_args(argv)
    if (args.deadline is None) == (args.iterations is None):
        ap.error("give either --deadline (time windows: the GPU run) or --iterations (fixed work: the rehearsal)")
    if args.iterations is not None and args.iterations < 1:
        ap.error(f"--iterations must be >= 1, got {args.iterations}")
    try:
        tail = parse_tail(args.tail)
        suite = str(rehearsal_suite(args.suite, args.eval_tasks, Path(args.out).parent / "suite")) \
            if args.eval_tasks is not None else args.suite
        from benchmarks.running.suites import select

        cells = select(load_suite(suite), args.cells)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cells.sort(key=lambda c: (c.shots, c.ways, ALG_ORDER.get(c.learner.algorithm, 9), c.cell))
    default_tail = max(tail.values(), default=30.0)
    est = {c.learner.algorithm: tail.get(c.learner.algorithm, default_tail) for c in cells}
    rows_file = Path(args.out) / suite_name(suite) / ROWS_FILE
    lines, failed = [], 0

    def log(line: str) -> None:
        print(f"gpu.cells: {line}", flush=True)
        lines.append(line)
        if args.log:
            with open(args.log, "a") as f:
                f.write(line + "\n")

    fixed = args.iterations is not None
    log(f"{len(cells)} cells, " + (f"{args.iterations} meta-iterations each (fixed work)" if fixed else
                                   f"{args.deadline - time.time():.0f} s left; first tail estimates (s): {json.dumps(est)}"))
    dropped: set[str] = set()
    for i, cell in enumerate(cells):
        alg = cell.learner.algorithm
        cmd = [sys.executable, "-m", "benchmarks.cli", "run", "--suite", suite, "--cells", exact(cell.cell),
               "--out", args.out, "--device", args.device, "--wandb", args.wandb]
        if fixed:
            window, hard = 0.0, None
            cmd += ["--max-iterations", str(args.iterations)]
        else:
            remaining = args.deadline - time.time()
            planned = [c for c in cells[i:] if c.cell not in dropped]
            window, newly = plan(remaining, planned, est, args.min_window)
            dropped |= newly
            if newly:
                log(f"not enough time for every pending cell ({remaining:.0f} s left): dropped {', '.join(sorted(newly))}")
            if cell.cell in dropped:
                log(f"{cell.cell}: skipped (no time left for it; {remaining:.0f} s left)")
                failed += 1
                continue
            hard = min(remaining, window + 2.5 * est[alg] + 10)
            cmd += ["--max-minutes", f"{window / 60:.4f}"]
        started = time.time()
        rc = run_cell(cmd, hard)
        wall = time.time() - started
        rows = read_rows_or_empty(rows_file)
        # The CLI hashes the cell with the device (and evaluation mode) it resolved, so must we.
        resolved = with_device([cell], args.device)[0]
        row = rows[(rows.cell == cell.cell) & (rows.config_hash.astype(str) == resolved.config_hash())]
        if not row.empty:  # a row written just before a kill (rc 124) still counts: it is complete data
            r = row.iloc[-1]
            cut = r["complete"] != True  # noqa: E712 (object column)
            measured = max(0.0, wall - window) if cut else float(r["eval_time_s"] or 0) + 3.0
            est[alg] = 1.25 * measured + 2.0
            timing = f"wall {wall:.0f} s" if fixed else f"window {window:.0f} s, wall {wall:.0f} s, tail {measured:.0f} s"
            log(f"{cell.cell}: {timing}, "
                f"{int(r['iterations_run'])}/{int(r['meta_iterations'])} iterations, complete={not cut}, "
                f"{r['metric']} {r['metric_mean']:.2f} +- {r['metric_ci95']:.2f}"
                + ("" if rc in (0, EXIT_INCOMPLETE) else f" (row written, but the process was stopped at exit: status {rc})"))
        else:
            failed += 1
            log(f"{cell.cell}: FAILED (exit {rc}, wall {wall:.0f} s" + (")" if fixed else
                                                                       f", window {window:.0f} s, hard limit {hard:.0f} s)"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
