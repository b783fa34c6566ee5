"""The SLURM side of the CLI: ``run --launcher submitit``, ``plan --launcher submitit`` and ``collect``.

    python -m benchmarks.cli plan --suite paper-omniglot --launcher submitit --slurm-gpus 1     # what it would submit
    python -m benchmarks.cli run --suite paper-omniglot --launcher submitit --slurm-gpus 1 --no-wait
    python -m benchmarks.cli collect --suite paper-omniglot                                    # SLURM's account too

``benchmarks.cli`` parses the arguments (``add_slurm_arguments`` adds the ``--slurm-*`` group to run and plan)
and hands the cluster work here; ``benchmarks.running.cluster`` submits, ``cluster_status`` reports.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.cli_common import UsageError, parse_seeds, with_device
from benchmarks.records import provenance
from benchmarks.running.process import EXIT_FAILED, EXIT_INCOMPLETE, quiet
from benchmarks.running.suites import load_suite, select, suite_name
from benchmarks.running.trainings import Training, group


def add_slurm_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--launcher``, ``--cluster`` and ``--slurm-*`` options (run and plan take the same)."""
    parser.add_argument("--launcher", default="local", choices=["local", "submitit"],
                        help="local: training processes on this machine (default); submitit: one SLURM job per training")
    parser.add_argument("--cluster", default="slurm", choices=["slurm", "local"],
                        help="with --launcher submitit: slurm (default), or local to run the jobs as local processes")
    sl = parser.add_argument_group("SLURM (with --launcher submitit; a suite's [slurm] table sets defaults)")
    sl.add_argument("--slurm-partition", default=None, help="partition of every job")
    sl.add_argument("--slurm-gpus", type=int, default=None, help="GPUs per job (default 0; with --ranks N on CUDA, N)")
    sl.add_argument("--slurm-cpus", type=int, default=None, help="CPUs per task, one task per rank (default 1)")
    sl.add_argument("--slurm-time", type=int, default=None, help="time limit per job in minutes (default 240); "
                    "a job reaching it requeues itself and resumes")
    sl.add_argument("--slurm-mem-gb", type=float, default=None, help="memory per job in GB")
    sl.add_argument("--slurm-array-parallelism", type=int, default=None, help="most jobs running at once (default 256)")
    sl.add_argument("--slurm-signal-delay", type=int, default=None,
                    help="seconds before the time limit at which a job is told to checkpoint and requeue itself "
                         "(default 90; 0: never, a job still running at its limit is killed, state TIMEOUT)")
    sl.add_argument("--slurm-extra", nargs="*", default=None, metavar="KEY=VALUE", help="more sbatch options")


def check_shared(out: Path) -> None:
    """SLURM jobs write from other nodes: refuse a results folder that is node-local by its path, unless the
    cluster's only node is this machine (``cluster.only_this_machine``: a one-node cluster such as make slurm-up's)."""
    from benchmarks.running import cluster

    resolved = str(out.resolve())
    if any(resolved == d or resolved.startswith(d + "/") for d in ("/tmp", "/var/tmp", "/dev/shm")) \
            and not cluster.only_this_machine():
        raise UsageError(f"--out {out} is node-local ({resolved}): jobs on other nodes could not write their rows "
                         "there; pass an --out on a filesystem every node shares")


def cluster_settings(args: argparse.Namespace):
    from benchmarks.running import cluster
    from benchmarks.running.suites import suite_table

    bad = [kv for kv in args.slurm_extra or [] if "=" not in kv]
    if bad:
        raise UsageError(f"--slurm-extra takes sbatch options as KEY=VALUE (e.g. qos=high), got {bad}")
    flags = {"partition": args.slurm_partition, "gpus": args.slurm_gpus, "cpus": args.slurm_cpus,
             "time_minutes": args.slurm_time, "mem_gb": args.slurm_mem_gb, "array_parallelism": args.slurm_array_parallelism,
             "signal_delay_s": args.slurm_signal_delay,
             "extra": dict(kv.split("=", 1) for kv in args.slurm_extra) if args.slurm_extra else None}
    try:
        slurm = cluster.SlurmSettings.merged(suite_table(args.suite, "slurm"), flags)
    except cluster.ClusterError as e:
        raise UsageError(str(e)) from None
    if args.ranks > 1 and args.device and args.device.startswith("cuda") and slurm.gpus != args.ranks:
        raise UsageError(f"--ranks {args.ranks} on CUDA takes one GPU per rank on one node: pass --slurm-gpus "
                         f"{args.ranks} (got {slurm.gpus})")
    return slurm


def plan_lines(args: argparse.Namespace, trainings: list[Training]) -> list[str]:
    """What ``run --launcher submitit`` with these options would submit: the job array and its sbatch header."""
    from benchmarks.running import cluster

    slurm = cluster_settings(args)
    n = len(trainings)
    if n == 0:
        return ["SLURM submission: none (no cells selected)"]
    shape = (f"one job array of {n} jobs, at most {min(n, slurm.array_parallelism)} running at once" if n > 1
             else "one job")
    folder = Path(args.results) / suite_name(args.suite) / "submitit"
    return [f"SLURM submission it would make (nothing submitted): {shape}, one per training; each job 1 node, "
            f"{args.ranks} task(s) (--ranks), {slurm.cpus} CPU(s) per task, {slurm.gpus} GPU(s), time limit "
            f"{slurm.time_minutes} min, asked to checkpoint and requeue {slurm.signal_delay_s} s before it"
            + (f", partition {slurm.partition}" if slurm.partition else ", the cluster's default partition")
            + (f", {slurm.mem_gb:g} GB" if slurm.mem_gb else "") + ". The sbatch header, as submitit writes it:",
            *(f"  {line}" for line in cluster.sbatch_header(n, slurm, folder, args.ranks))]


def run_on_cluster(args, trainings: list[Training], out: Path, git_state: dict, already: int) -> int:
    """Submit one submitit job per training not finished nor running; wait for them unless --no-wait."""
    from benchmarks.running import cluster, cluster_status

    slurm = cluster_settings(args)
    command = provenance.command_line(["-m", "benchmarks.cli", *args.argv])
    suite = suite_name(args.suite)
    current = cluster_status.statuses(trainings, out)  # one sacct call for them all
    running = [t for t in trainings if current[t.key][0] == "running"]
    todo = [t for t in trainings if t not in running]
    for t in running:
        print(f"still running, not resubmitted: {t.name} ({current[t.key][1]})")

    def job_for(t: Training):
        return cluster.TrainingJob([c.to_dict() for c in t.cells], str(out), args.wandb, command, git_state,
                                   args.threads, 1, args.ranks)

    try:
        jobs = cluster.submit(todo, out, args.cluster, slurm, job_for, command, args.ranks) if todo else {}
    except cluster.ClusterError as e:
        raise UsageError(str(e)) from None
    print(f"suite {suite}: {len(todo)} training(s) submitted ({sum(len(t.cells) for t in todo)} cells), "
          f"{len(running)} still running, {already} cell(s) already complete at this commit; "
          f"job folders under {out / suite / 'submitit'}")
    for t in todo:
        print(f"  job {jobs[t.key].job_id}: {t.name}")
    if args.no_wait:
        device = f" --device {args.device}" if args.device else ""
        print(f"check on them with: python -m benchmarks.cli collect --suite {args.suite} --out {out}{device}")
        return 0
    failures = cluster.wait(jobs, todo, quiet=quiet())
    states, lines = cluster_status.report(trainings, out)
    print("\n".join(lines))
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    if failures or states.get("failed"):
        return EXIT_FAILED
    return EXIT_INCOMPLETE if set(states) - {"finished"} else 0


def collect(args: argparse.Namespace) -> int:
    """Report each training of the suite as finished, running, failed (with SLURM's state, its log and how to
    resume it) or not started."""
    from benchmarks.running import cluster_status

    cells = with_device(select(load_suite(args.suite, parse_seeds(args.seeds)), args.cells), args.device, check_cuda=False)
    states, lines = cluster_status.report(group(cells), Path(args.out))
    print("\n".join(lines))
    if states.get("failed"):
        return EXIT_FAILED
    return EXIT_INCOMPLETE if set(states) - {"finished"} else 0
