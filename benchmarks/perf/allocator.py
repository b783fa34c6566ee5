"""What the allocator settings (``benchmarks.running.allocator``) are worth: Reptile's meta-step with each.

    python -m benchmarks.perf.allocator [--rounds 5] [--iters 30] [--eval-tasks 10]
                                        [--json results/profile/allocator_cpu.json]

The default suite's Reptile meta-step (reference backend; ``benchmarks.peers.ours train``:
Omniglot-small 5-way, 10 shots, 5 inner Adam steps on minibatches of 10, meta-batch 5, task sampling
included) at 1 thread, in fresh processes that take turns: one with glibc's default allocator settings
(``REPTILE_BENCH_ALLOCATOR=default``), one with glibc keeping freed memory, and, where the system has
tcmalloc (and ``REPTILE_BENCH_MALLOC`` is not ``glibc``), one preloading it, as every cell process then runs. glibc reads its thresholds once and a malloc
is chosen before a process starts, so each setting needs its own process. Per round: the median
process-CPU time per meta-iteration, the minor page faults per meta-iteration, and the ratios (kept /
defaults, tcmalloc / kept). A setting changes where memory comes from and goes, never a computed value
(``tests/test_allocator.py`` and ``tests/test_malloc.py`` check the bits). Where tcmalloc is timed, each
round also times one evaluation task (the default evaluator, as the peer command does) with glibc keeping
freed memory and with tcmalloc.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks.records.mallocs import malloc_name
from benchmarks.records.provenance import REPO_ROOT, device_name, measurement, write_json
from benchmarks.running.allocator import ENV, malloc_env, preload_entries, preload_library

SETTINGS = {"glibc defaults": "default", "freed memory kept": ""}
TCMALLOC = "tcmalloc"


def settings(env=None) -> list[str]:
    """The settings timed here: glibc's two, and tcmalloc where ``REPTILE_BENCH_MALLOC`` (default ``auto``) finds it.

    ``REPTILE_BENCH_MALLOC=glibc`` times glibc's two alone, as on a machine without tcmalloc (the tests run so).
    """
    env = os.environ if env is None else env
    return [*SETTINGS, *([TCMALLOC] if malloc_name(preload_library(env) or "") == TCMALLOC else [])]


def setting_env(setting: str) -> dict[str, str]:
    """This process's environment for one setting: glibc's malloc (any preloaded malloc taken out of
    ``LD_PRELOAD``) with or without kept memory, or tcmalloc preloaded."""
    if setting == TCMALLOC:
        return malloc_env(os.environ)  # ``settings`` lists tcmalloc only where this environment's choice is it
    env = {**os.environ, ENV: SETTINGS[setting]}
    kept = [e for e in preload_entries(env) if not malloc_name(e)]
    env.pop("LD_PRELOAD", None)
    if kept:
        env["LD_PRELOAD"] = ":".join(kept)
    return env


def one_run(setting: str, iters: int, eval_tasks: int = 0) -> dict:
    """One process of ``setting``: ``iters`` meta-iterations, or (``eval_tasks``) 3 repeats of that many
    evaluation tasks of the default evaluator (the peer command's: 5-way 1-shot, 50 Adam steps on
    minibatches of 5)."""
    env = setting_env(setting)
    ours = [sys.executable, "-m", "benchmarks.peers.ours"]
    cmd = (ours + ["eval", "--evaluator", "batched", "--threads", "1", "--tasks", str(eval_tasks), "--repeats", "3"]
           if eval_tasks else
           ours + ["train", "--backend", "reference", "--threads", "1", "--iters", str(iters), "--warmup", "5"])
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    if p.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed (exit {p.returncode}):\n{p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def measure(rounds: int, iters: int, eval_tasks: int = 0) -> list[dict]:
    out = []
    names = settings()
    for r in range(rounds):
        runs = {name: one_run(name, iters) for name in names}
        # One evaluation task, where tcmalloc is timed: its minibatches of 5 make more allocations per FLOP.
        evals = ({name: one_run(name, iters, eval_tasks) for name in ("freed memory kept", TCMALLOC)}
                 if eval_tasks and TCMALLOC in names else {})
        median = {name: statistics.median(v["cpu_s"]) for name, v in runs.items()}
        out.append({"median_s": median, "ratio": median["freed memory kept"] / median["glibc defaults"],
                    "minor_faults_per_iteration": {n: v["minor_faults_per_iteration"] for n, v in runs.items()},
                    "allocator": {n: v["allocator"] for n, v in runs.items()},
                    "peak_rss_bytes": {n: v["peak_rss_bytes"] for n, v in runs.items()}})
        if TCMALLOC in median:
            out[-1]["ratio_tcmalloc"] = median[TCMALLOC] / median["freed memory kept"]
        if evals:
            task = {name: statistics.median(v["cpu_s"]) for name, v in evals.items()}
            out[-1].update(eval_median_s=task, ratio_tcmalloc_eval=task[TCMALLOC] / task["freed memory kept"])
        print(f"round {r + 1}: " + ", ".join(f"{n} {median[n] * 1e3:.1f} ms "
                                              f"({runs[n]['minor_faults_per_iteration']:.0f} faults)" for n in names)
              + f"; kept / defaults x{out[-1]['ratio']:.2f}"
              + (f", tcmalloc / kept x{out[-1]['ratio_tcmalloc']:.2f}" if TCMALLOC in median else "")
              + (f"; one evaluation task tcmalloc / kept x{out[-1]['ratio_tcmalloc_eval']:.2f}" if evals else ""),
              flush=True)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf.allocator", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30, help="timed meta-iterations per process (after 5 untimed)")
    ap.add_argument("--eval-tasks", type=int, default=10,
                    help="evaluation tasks per timed repeat where tcmalloc is timed (0: no evaluation timing; "
                         "without tcmalloc there is nothing to compare it with and none is timed)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.iters < 1:
        ap.error(f"--rounds and --iters must be at least 1 (got {args.rounds} and {args.iters})")
    if args.eval_tasks == 1 or args.eval_tasks < 0:
        ap.error(f"--eval-tasks must be 0 (no evaluation timing) or at least 2, got {args.eval_tasks}")
    rounds = measure(args.rounds, args.iters, args.eval_tasks)
    report = measurement(device_name("cpu", 1, "glibc"), clock="process CPU time", iters=args.iters, rounds=rounds,
                         ratio_median=statistics.median(r["ratio"] for r in rounds))
    if "ratio_tcmalloc" in rounds[0]:
        report["ratio_tcmalloc_median"] = statistics.median(r["ratio_tcmalloc"] for r in rounds)
    if "ratio_tcmalloc_eval" in rounds[0]:
        report.update(eval_tasks=args.eval_tasks,
                      ratio_tcmalloc_eval_median=statistics.median(r["ratio_tcmalloc_eval"] for r in rounds))
    print(f"median kept / defaults: x{report['ratio_median']:.2f} over {args.rounds} rounds"
          + (f"; tcmalloc / kept: x{report['ratio_tcmalloc_median']:.2f}" if "ratio_tcmalloc_median" in report else ""))
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
