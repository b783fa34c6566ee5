"""What keeping freed memory (``benchmarks.running.allocator``) is worth: Reptile's meta-step with and without it.

    python -m benchmarks.perf.allocator [--rounds 5] [--iters 30] [--json results/profile/allocator_cpu.json]

The default suite's Reptile meta-step (reference backend; ``benchmarks.peers.official_reptile_ours train``:
Omniglot-small 5-way, 10 shots, 5 inner Adam steps on minibatches of 10, meta-batch 5, task sampling
included) at 1 thread, in fresh processes that take turns: one with glibc's default allocator settings
(``REPTILE_BENCH_ALLOCATOR=default``), one as every cell process runs. glibc reads its thresholds once, so
each setting needs its own process. Per round: the median process-CPU time per meta-iteration, the minor
page faults per meta-iteration, and the ratio of the two settings. The setting changes where freed
memory goes, never a computed value (``tests/test_allocator.py`` checks the meta-step's bits).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks.records.provenance import REPO_ROOT, device_name, measurement, write_json
from benchmarks.running.allocator import ENV

SETTINGS = {"glibc defaults": "default", "freed memory kept": ""}


def one_run(setting: str, iters: int) -> dict:
    env = {**os.environ, ENV: SETTINGS[setting]}
    cmd = [sys.executable, "-m", "benchmarks.peers.official_reptile_ours", "train", "--backend", "reference",
           "--threads", "1", "--iters", str(iters), "--warmup", "5"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    if p.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed (exit {p.returncode}):\n{p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def measure(rounds: int, iters: int) -> list[dict]:
    out = []
    for r in range(rounds):
        runs = {name: one_run(name, iters) for name in SETTINGS}
        median = {name: statistics.median(v["cpu_s"]) for name, v in runs.items()}
        out.append({"median_s": median, "ratio": median["freed memory kept"] / median["glibc defaults"],
                    "minor_faults_per_iteration": {n: v["minor_faults_per_iteration"] for n, v in runs.items()},
                    "allocator": {n: v["allocator"] for n, v in runs.items()},
                    "peak_rss_bytes": {n: v["peak_rss_bytes"] for n, v in runs.items()}})
        print(f"round {r + 1}: " + ", ".join(f"{n} {median[n] * 1e3:.1f} ms "
                                              f"({runs[n]['minor_faults_per_iteration']:.0f} faults)" for n in SETTINGS)
              + f"; kept / defaults x{out[-1]['ratio']:.2f}", flush=True)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf.allocator", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30, help="timed meta-iterations per process (after 5 untimed)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.iters < 1:
        ap.error(f"--rounds and --iters must be at least 1 (got {args.rounds} and {args.iters})")
    rounds = measure(args.rounds, args.iters)
    report = measurement(device_name("cpu", 1), clock="process CPU time", iters=args.iters, rounds=rounds,
                         ratio_median=statistics.median(r["ratio"] for r in rounds))
    print(f"median kept / defaults: x{report['ratio_median']:.2f} over {args.rounds} rounds")
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
