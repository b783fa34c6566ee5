"""Command line of the benchmark: run suites, price them, list them, render tables and plots.

    python -m benchmarks.cli run --suite default            # what `make benchmark` runs
    python -m benchmarks.cli run --suite smoke --out /tmp/smoke --cells 'sine-*' --seeds 0,1 --jobs 2
    python -m benchmarks.cli plan --suite paper-omniglot     # distinct trainings and projected hours
    python -m benchmarks.cli run --suite paper-omniglot --launcher submitit --device cuda --slurm-gpus 1
    python -m benchmarks.cli plan --suite paper-omniglot --launcher submitit --slurm-gpus 1   # + the sbatch it would send
    python -m benchmarks.cli collect --suite paper-omniglot  # finished / running / failed jobs
    python -m benchmarks.cli list                            # suites and their cells
    python -m benchmarks.cli tables [--results results]      # paper tables + plots from the rows

``run`` checks every cell against its data first (nothing starts if one does not fit), groups the
cells into shared trainings (cells that differ only in evaluation train once), and runs each training
in its own process (``python -m benchmarks.running.runner``), up to ``--jobs`` at once, so the CPU
peak-RSS column measures that training alone. Cells whose row is already complete (same config
hash) at this git commit are skipped; an interrupted training resumes from its checkpoint. Rows of
another commit (the committed results, in a fresh clone) are run again, and the new row replaces
the old one.
Exit status: 0 done; 1 some training failed or diverged; 2 bad input; 3 data missing or damaged;
5 not finished (a --max-minutes or --max-iterations budget cut training, a --max-minutes budget left trainings
unstarted, or another run holds a training): rerun the same command to continue; 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from benchmarks import cli_cluster
from benchmarks.cli_common import UsageError, parse_seeds, with_device
from benchmarks.records import provenance
from benchmarks.records.rows import ROWS_FILE, completed_hashes, read_rows_or_empty
from benchmarks.records.scores import ScoresFormatError, read_scores, SCORES_FILE
from benchmarks.running import checks, launch
from benchmarks.running.allocator import inherited_malloc, planned_malloc
from benchmarks.running.process import EXIT_BAD_CONFIG, EXIT_BUSY, EXIT_DATA, EXIT_DIVERGED, EXIT_FAILED, \
    EXIT_INCOMPLETE, EXIT_INTERRUPTED, quiet
from benchmarks.running.suites import SuiteError, available_suites, describe, format_cells, load_suite, select, suite_name
from benchmarks.running.trainings import Training, group


def check_writable(folder: Path) -> None:
    """Fail before any work if results cannot be written under ``folder``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UsageError(f"cannot write results to {folder} ({e.strerror or e}); pass a writable --out folder") from None


def parse_jobs(text: str, device: str, threads: int, ranks: int = 1) -> tuple[int, list[dict], str | None]:
    """(jobs, slots, warning) for ``--jobs N|auto`` on ``device`` (``threads`` torch threads per rank, ``ranks``
    processes per training)."""
    if device.startswith("cuda"):
        import torch

        units, what = torch.cuda.device_count(), "GPU"
    else:
        units, what = len(launch.available_cpus()), "core"
    per = ranks if device.startswith("cuda") else max(1, threads) * ranks
    if text == "auto":
        jobs = max(1, units // per)
    else:
        try:
            jobs = int(text)
        except ValueError:
            raise UsageError(f"--jobs takes a number of trainings to run at once (>= 1) or 'auto', got {text!r}") from None
        if jobs < 1:
            raise UsageError(f"--jobs must be >= 1 (or 'auto': one per {what}), got {jobs}")
    warning = None
    if jobs * per > units:
        warning = (f"warning: --jobs {jobs} x {per} thread(s) on {units} {what}(s): trainings will share "
                   f"{what}s, so their step times (and the rows' time columns) will be slower than alone")
    slots = (launch.gpu_slots(jobs, units, ranks) if device.startswith("cuda")
             else launch.cpu_slots(jobs, max(1, threads) * ranks if ranks > 1 else threads))
    return jobs, slots, warning


def check_scores_file(folder: Path) -> None:
    """Refuse a per-task scores file of another format before any work (it would fail the first row)."""
    try:
        read_scores(folder / SCORES_FILE)
    except ScoresFormatError as e:
        raise UsageError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0 (0 = torch's default), got {args.threads}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise UsageError(f"--max-minutes must be a positive number of minutes, got {args.max_minutes}")
    if args.max_iterations is not None and args.max_iterations < 1:
        raise UsageError(f"--max-iterations must be a positive number of meta-iterations, got {args.max_iterations}")
    on_cluster = args.launcher == "submitit"
    on_slurm = on_cluster and args.cluster == "slurm"
    if on_cluster and (args.max_minutes is not None or args.max_iterations is not None):
        raise UsageError("--max-minutes and --max-iterations are the local launcher's budgets; on a cluster give "
                         "each job --slurm-time")
    if not on_cluster and (args.no_wait or args.cluster != "slurm"):
        raise UsageError("--no-wait and --cluster go with --launcher submitit")
    # A SLURM login node need not see the GPUs its jobs will run on.
    cells = with_device(select(load_suite(args.suite, parse_seeds(args.seeds)), args.cells), args.device,
                        check_cuda=not on_slurm)
    out = Path(args.out)
    suite = suite_name(args.suite)
    folder = out / suite
    if on_slurm:
        from benchmarks.running import cluster

        try:
            cluster.check_slurm()
        except cluster.ClusterError as e:
            raise UsageError(str(e)) from None
        cli_cluster.check_shared(out)
    check_writable(folder)
    if len({c.device for c in cells}) > 1:
        raise UsageError(f"the selected cells run on several devices ({sorted({c.device for c in cells})}); "
                         "run each device's cells separately (--cells)")
    device = cells[0].device
    if args.ranks < 1:
        raise UsageError(f"--ranks must be >= 1 (processes one training is split over), got {args.ranks}")
    if args.ranks > 1:
        from benchmarks.running import distributed

        for cell in cells:
            try:
                distributed.check_splittable(cell, args.ranks)
            except distributed.DistributedError as e:
                raise UsageError(str(e)) from None
    jobs, slots, warning = (1, [{}], None) if on_cluster else parse_jobs(args.jobs, device, args.threads, args.ranks)
    git_state = provenance.git_state(exclude=out)
    # The name each row will carry (the runner sets --threads before naming its device; the local launcher's
    # processes preload allocator.malloc_env's malloc, a cluster job runs with the environment it is given).
    try:
        malloc = inherited_malloc() if on_cluster else planned_malloc()
    except ValueError as e:
        raise UsageError(str(e)) from None
    device_label = (provenance.device_name(device, args.threads or None, malloc)
                    if not (device.startswith("cuda") and on_slurm) else None)
    done = completed_hashes(folder / ROWS_FILE, git_state, device_label)  # also refuses a rows file of another schema
    check_scores_file(folder)
    pending = [c for c in cells if c.config_hash() not in done]
    try:
        ready = checks.preflight(pending, skip_missing=args.skip_missing)
    except checks.ShapeError as e:
        print("error: these cells do not fit their data (nothing was run):", file=sys.stderr)
        for line in e.lines:
            print(f"  {line}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except checks.DataProblem as e:
        print(f"error: {e}\n(nothing was run; pass --skip-missing to run the cells whose data is there)", file=sys.stderr)
        return EXIT_DATA
    if warning:
        print(warning, file=sys.stderr)
    trainings = group(ready.cells)
    if on_cluster:
        return cli_cluster.run_on_cluster(args, trainings, out, git_state, len(cells) - len(pending))
    deadline = time.time() + 60 * args.max_minutes if args.max_minutes else None
    command = provenance.command_line(["-m", "benchmarks.cli", *args.argv])
    git = json.dumps(git_state)

    def command_for(training: Training, slot: dict) -> list[str]:
        # One process, or torchrun starting --ranks of them (each its share of the meta-batch, see distributed.py).
        start = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.ranks),
                  "-m", "benchmarks.running.runner", "--distributed"] if args.ranks > 1
                 else [sys.executable, "-m", "benchmarks.running.runner", "--parent-pid", str(os.getpid())])
        cmd = [*start, "--cells-json", json.dumps([c.to_dict() for c in training.cells], sort_keys=True), "--out",
               str(out), "--wandb", args.wandb, "--command", command, "--git-json", git, "--jobs", str(jobs)]
        if deadline is not None:
            cmd += ["--deadline", repr(deadline)]
        if args.max_iterations is not None:
            cmd += ["--stop-iteration", str(args.max_iterations)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if slot.get("cpus"):
            cmd += ["--cpus", slot["cpus"]]
        return cmd

    bar = tqdm(total=len(ready.cells), desc=f"suite {suite}", unit="cell", position=0, disable=quiet())
    failed, busy = [], []

    def on_done(training: Training, rc: int) -> None:
        bar.update(len(training.cells))
        names = ", ".join(c.cell for c in training.cells)
        if rc == EXIT_BUSY:
            busy.append(names)
        elif rc != 0:
            failed.append(f"{names} (exit {rc}{', diverged' if rc == EXIT_DIVERGED else ''})")

    try:
        codes = launch.run_local(trainings, command_for, jobs, slots, on_done,
                                 stop_starting=lambda: deadline is not None and time.time() >= deadline)
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to resume (finished cells are kept)", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        bar.close()
    not_started = [c.cell for t in trainings if codes[t.key] is None for c in t.cells]
    rows = read_rows_or_empty(folder / ROWS_FILE)
    by_hash = dict(zip(rows.config_hash.astype(str), rows.complete))
    cut = [c.cell for t in trainings if codes[t.key] == 0 for c in t.cells if by_hash.get(c.config_hash()) is not True]
    print(f"suite {suite}: {len(ready.cells) - len(not_started)} cell(s) in "
          f"{sum(codes[t.key] is not None for t in trainings)} training(s) run, {len(cells) - len(pending)} already "
          f"complete at this commit on {device_label}; rows in {folder / ROWS_FILE}")
    if ready.missing:
        print(f"skipped for missing data (--skip-missing): {', '.join(ready.missing)}")
    if cut:
        budget = " and ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                              (("max_minutes", args.max_minutes), ("max_iterations", args.max_iterations)) if v is not None)
        print(f"cut short by {budget} (rows say complete=False): {', '.join(cut)}; rerun to continue")
    if not_started:
        print(f"not started within --max-minutes {args.max_minutes}: {', '.join(not_started)}; rerun to continue")
    if busy:
        print(f"skipped, being trained by another run: {'; '.join(busy)}; rerun when it has finished")
    if failed:
        print(f"error: failed cells: {'; '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_INCOMPLETE if (cut or not_started or busy) else 0


def list_suites(args: argparse.Namespace) -> int:
    for name in [args.suite] if args.suite else available_suites():
        cells = load_suite(name)
        print(f"{suite_name(name)} ({len(cells)} cells, {len(group(cells))} trainings): {describe(name)}")
        print(format_cells(cells))
    return 0


def tables(args: argparse.Namespace) -> int:
    """Render tables (``benchmarks.reporting.tables``) and plots (``benchmarks.reporting.plots``) from the rows."""
    results = Path(args.results)
    if not results.is_dir():
        raise UsageError(f"no results folder at {results}; run `python -m benchmarks.cli run --suite NAME` first")
    from benchmarks.reporting import plots, tables as table_files

    for module in (table_files, plots):
        for path in module.main(results) or []:
            print(f"wrote {path}")
    return 0


def plan(args: argparse.Namespace) -> int:
    from benchmarks.running import plan as planning

    cells = with_device(select(load_suite(args.suite, parse_seeds(args.seeds)), args.cells), args.device)
    try:
        malloc = planned_malloc()  # the cell processes'
    except ValueError as e:  # a REPTILE_BENCH_MALLOC that names no malloc
        raise UsageError(str(e)) from None
    print(planning.report(cells, Path(args.results), probe=not args.no_probe, threads=args.threads, malloc=malloc))
    if args.launcher == "submitit":
        print("\n".join(cli_cluster.plan_lines(args, group(cells))))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cli", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run (or resume) the cells of a suite")
    suite_help = f"suite name ({', '.join(available_suites())}) or path of a .toml suite file"
    r.add_argument("--suite", required=True, help=suite_help)
    r.add_argument("--cells", default=None, help="only cells whose name matches: comma-separated globs or substrings")
    r.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="default: the suite's device, else auto (cuda when available)")
    r.add_argument("--seeds", default=None, help="comma-separated run seeds, replacing the suite's (e.g. 0,1,2)")
    r.add_argument("--out", default="results", help="results folder; rows go to OUT/<suite>/rows.csv")
    r.add_argument("--wandb", default="offline", choices=["offline", "online", "disabled"],
                   help="Weights & Biases mode (offline needs no account; `wandb sync` uploads later)")
    r.add_argument("--max-minutes", type=float, default=None,
                   help="time budget: running trainings are cut short, evaluated and written with complete=False; "
                        "the run then exits 5")
    r.add_argument("--max-iterations", type=int, default=None,
                   help="work budget: every training stops at this meta-iteration (if it plans more), is evaluated "
                        "and written with complete=False, and the run exits 5; the same cut on any machine "
                        "(rehearsals and tests use it where a time budget would depend on the machine's speed)")
    r.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per training (default 1: timings on shared cores are otherwise unstable; "
                        "0 = torch's default); recorded in the device column")
    r.add_argument("--jobs", default="1",
                   help="trainings run side by side, each pinned to its own cores (CPU) or GPU: N, or 'auto' "
                        "(one per core on CPU, one per GPU); default 1")
    r.add_argument("--skip-missing", action="store_true", help="skip cells whose data is missing instead of stopping")
    r.add_argument("--ranks", type=int, default=1,
                   help="split each training's meta-batch over N processes (torchrun; gloo on CPU, NCCL on GPU; with "
                        "--launcher submitit, N tasks of one SLURM job on one node); default 1")
    r.add_argument("--no-wait", action="store_true", help="with --launcher submitit: print the job ids and return")
    cli_cluster.add_slurm_arguments(r)
    r.set_defaults(func=run)
    c = sub.add_parser("collect", help="report the trainings of a suite run with --launcher submitit")
    c.add_argument("--suite", required=True, help=suite_help)
    c.add_argument("--cells", default=None, help="only cells whose name matches (as for run)")
    c.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="as given to run")
    c.add_argument("--seeds", default=None, help="as given to run")
    c.add_argument("--out", default="results", help="results folder given to run")
    c.set_defaults(func=cli_cluster.collect)
    p = sub.add_parser("plan", help="distinct trainings, evaluation tasks and projected hours of a suite")
    p.add_argument("--suite", required=True, help=suite_help)
    p.add_argument("--cells", default=None, help="only cells whose name matches (as for run)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="the device to price (default auto)")
    p.add_argument("--seeds", default=None, help="comma-separated run seeds, replacing the suite's")
    p.add_argument("--results", default="results", help="results folder whose rows give measured costs")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads the probe uses (as run's --threads)")
    p.add_argument("--no-probe", action="store_true", help="use committed rows only; never time a short probe")
    p.add_argument("--ranks", type=int, default=1, help="as given to run (with --launcher submitit: tasks per job)")
    cli_cluster.add_slurm_arguments(p)
    p.set_defaults(func=plan)
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
