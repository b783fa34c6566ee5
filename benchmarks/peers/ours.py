"""This project's side of the peer timings (``benchmarks.peers.official_reptile``, ``official_maml``): one run,
one JSON line.

    python -m benchmarks.peers.ours train --backend reference|batched [--preset reptile] [--threads T] [--iters 60]
    python -m benchmarks.peers.ours train --backend reference|batched --preset maml-5
    python -m benchmarks.peers.ours eval --evaluator serial|batched [--threads T] [--tasks 20]

``train``: meta-iterations of one ``PRESETS`` setting on Omniglot-small 5-way, task sampling included, after
``--warmup`` iterations; per-iteration wall and process-CPU seconds. ``reptile``: the authors' Omniglot settings
(10 shots, 5 inner Adam steps of lr 0.001, beta1 = 0, minibatches of 10, meta-batch 5). ``maml-5``: second-order
MAML as the limit benchmark and the "MAML implementations compared" table time it (5 shots, 15 query images per
class, 5 inner SGD steps of 0.1, outer Adam lr 0.001, meta-batch 5). ``eval``: the evaluator fine-tuning evaluation tasks as the authors'
``Reptile.evaluate`` does (5-way 1-shot, 50 Adam steps of lr 0.001 on minibatches of 5, one query image per
class predicted alone beside the support set, task sampling included), serial (task by task) or batched (the
default suite's evaluator on CPU); ``--repeats`` times ``--tasks`` tasks, after one warm-up task, as seconds per
task. Each run is its own process (the peer harness starts them), so thread settings do not leak between them.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from benchmarks.records.mallocs import malloc_in_use
from benchmarks.running.allocator import keep_freed_memory


def _process_setup(threads: int) -> str:
    """Set the allocator as the cell processes do and torch's threads; return what the allocator does."""
    allocator = keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    return allocator


PRESETS = {  # name -> (meta-batch, shots, query per class, MetaConfig fields)
    "reptile": (5, 10, 0, dict(algorithm="reptile", inner_steps=5, inner_lr=0.001, inner_optimizer="adam",
                               adam_beta1=0.0, inner_batch=10, meta_lr=1.0, meta_lr_final=0.0)),
    "maml-5": (5, 5, 15, dict(algorithm="maml", inner_steps=5, inner_lr=0.1, inner_optimizer="sgd", meta_lr=0.001)),
}


def train(backend: str, threads: int, iters: int, warmup: int, preset: str = "reptile") -> dict:
    """Per-iteration wall and process-CPU seconds of this project's meta-step at ``PRESETS[preset]``."""
    from algorithms import MetaConfig, build_learner, build_model
    from datasets import load_pool

    allocator = _process_setup(threads)
    pool = load_pool("omniglot", "small", "train")
    torch.manual_seed(0)
    mb, train_shots, query, fields = PRESETS[preset]
    # Reptile's reference backend keeps its inner Adam's state across tasks, as the authors' code does.
    persist = {"persist_inner_state": backend == "reference"} if fields["algorithm"] == "reptile" else {}
    config = MetaConfig(backend=backend, **fields, **persist)
    learner = build_learner(config, build_model("omniglot", 5), 100_000, seed=0)
    wall, cpu = [], []
    for i in range(warmup + iters):
        if i == warmup:
            faults = _minor_faults()
        w0, c0 = time.perf_counter(), time.process_time()
        learner.meta_step(pool.sample_batch(5, train_shots, query, seed=0, indices=range(mb * i, mb * i + mb)))
        if i >= warmup:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    return {"implementation": backend, "torch": torch.__version__, "threads": threads, "wall_s": wall, "cpu_s": cpu,
            "minor_faults_per_iteration": (_minor_faults() - faults) / iters, "allocator": allocator,
            "malloc": malloc_in_use(),
            "backend_info": learner.backend_info(),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def evaluation(evaluator: str, threads: int, tasks: int, repeats: int) -> dict:
    """Seconds per evaluation task (wall and process CPU), one figure per repeat of ``tasks`` tasks."""
    from algorithms import build_model
    from algorithms.evaluation import EvalConfig, evaluate
    from datasets import load_pool

    allocator = _process_setup(threads)
    pool = load_pool("omniglot", "small", "test")
    torch.manual_seed(0)
    model = build_model("omniglot", 5)  # untrained: fine-tuning costs the same whatever the weights

    def run(n: int, seed: int) -> None:
        config = EvalConfig(num_tasks=n, query=1, inner_steps=50, inner_lr=0.001, inner_optimizer="adam",
                            adam_beta1=0.0, inner_batch=5, transductive=False, seed=seed, mode=evaluator)
        evaluate(model, pool, 5, 1, config, device="cpu")

    run(2, 255)  # warm-up (first calls allocate), on tasks no timed repeat draws
    wall, cpu = [], []
    for r in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        run(tasks, r)
        wall.append((time.perf_counter() - w0) / tasks)
        cpu.append((time.process_time() - c0) / tasks)
    return {"implementation": evaluator, "torch": torch.__version__, "threads": threads, "wall_s": wall, "cpu_s": cpu,
            "allocator": allocator, "malloc": malloc_in_use(),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers.ours", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train")
    t.add_argument("--backend", required=True, choices=["reference", "batched"])
    t.add_argument("--preset", default="reptile", choices=list(PRESETS))
    t.add_argument("--iters", type=int, default=60)
    t.add_argument("--warmup", type=int, default=10)
    e = sub.add_parser("eval")
    e.add_argument("--evaluator", required=True, choices=["serial", "batched"])
    e.add_argument("--tasks", type=int, default=20)
    e.add_argument("--repeats", type=int, default=3)
    for p in (t, e):
        p.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    a = ap.parse_args(argv)
    if a.what == "train":
        if a.iters < 1 or a.warmup < 0:
            ap.error("--iters must be >= 1 and --warmup >= 0")
        print(json.dumps(train(a.backend, a.threads, a.iters, a.warmup, a.preset)))
    else:
        if a.tasks < 2 or a.repeats < 1:
            ap.error("--tasks must be >= 2 and --repeats >= 1")
        print(json.dumps(evaluation(a.evaluator, a.threads, a.tasks, a.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
