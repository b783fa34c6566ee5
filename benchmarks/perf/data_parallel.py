"""Meta-steps per second of one training split over N ranks (torchrun, gloo) against one process, side by side.

    python -m benchmarks.perf.data_parallel [--ranks 1 2] [--rounds 2] [--iterations 40] [--json OUT]

Each round runs, for every rank count in turn, ``python -m benchmarks.cli run --ranks N`` on the same
cost-only cell (second-order MAML, Omniglot-small 5-way 5-shot, 15 queries per class, 4 tasks per
meta-batch, 1 inner step, no evaluation) into a fresh folder, and reads the cell row's median step time
(rank 0's, all-reduce and waiting included). Reported: medians over rounds, meta-steps per second, the
speed-up against one rank, and the bytes each meta-step all-reduces (every parameter once, float32, plus
the metrics). On CPU every rank has one torch thread and its own core (``--cpus``); on a machine with
fewer free cores than ranks the ranks share them, and the speed-up says so.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from algorithms import build_model
from benchmarks.records.provenance import REPO_ROOT, measurement, device_name, write_json
from benchmarks.records.rows import read_rows

SUITE = """
[[group]]
name = "dp-{{algorithm}}"
dataset = "omniglot"
split = "small"
ways = 5
shots = 5
train_query = 15
meta_batch = 4
meta_iterations = {iterations}
checkpoint_every = {iterations}
algorithms = ["maml"]
eval = {{ num_tasks = 0 }}
learner = {{ inner_steps = 1, inner_lr = 0.4, meta_lr = 0.001 }}
"""


def one_run(suite: Path, ranks: int, work: Path) -> float:
    out = work / f"r{ranks}-{len(list(work.iterdir()))}"
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "benchmarks.cli", "run", "--suite", str(suite), "--out", str(out),
                        "--wandb", "disabled", "--device", "cpu", "--ranks", str(ranks), "--jobs", "1"],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"the {ranks}-rank run failed (exit {p.returncode}):\n{p.stdout}{p.stderr}")
    return float(read_rows(out / suite.stem / "rows.csv").iloc[0].step_time_median_s)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=40, help="meta-steps per run (the median skips none)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    floats = sum(p.numel() for p in build_model("omniglot", 5).parameters())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        suite = work / "dp.toml"
        suite.write_text(SUITE.format(iterations=args.iterations))
        times: dict[int, list[float]] = {n: [] for n in args.ranks}
        for _ in range(args.rounds):
            for n in args.ranks:
                times[n].append(one_run(suite, n, work))
    base = statistics.median(times[args.ranks[0]])
    report = measurement(device_name("cpu", 1), setting="maml, Omniglot-small 5-way 5-shot, 15 queries, meta-batch 4, K = 1",
                         allreduce_bytes_per_step=4 * floats, results={})
    for n in args.ranks:
        med = statistics.median(times[n])
        report["results"][str(n)] = {"step_s_median": med, "steps_per_s": 1 / med, "speedup": base / med,
                                     "step_s_all": times[n]}
        print(f"{n} rank(s): {med * 1e3:.0f} ms per meta-step ({1 / med:.2f} steps/s), x{base / med:.2f} vs "
              f"{args.ranks[0]}; all-reduce {4 * floats / 1e3:.0f} kB per step")
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
