"""Wall time of one meta-step of each reference learner at the papers' Omniglot 5-way settings.

- Reptile: meta-batch 5, 5 inner Adam steps (lr 1e-3, beta1 0), inner batch 10, 10 training shots per class.
- First-order and second-order MAML: meta-batch 5 (MAML used 32, too slow for a CPU sweep),
  1-shot and 5-shot support, 15 queries per class, inner SGD alpha = 0.4, with 1 inner step
  (MAML's Omniglot setting) and with 5.

Each row is the median over ``--steps`` meta-steps after ``--warmup`` untimed ones, on the
full-width reference network (OmniglotCNN, 64 filters). Images are random 28x28 tensors in
a ClassPool of Omniglot's shape: pixel values do not change the work done.

    .venv/bin/python -m benchmarks.perf.time_meta_step                 # CPU, 1 thread
    .venv/bin/python -m benchmarks.perf.time_meta_step --device cuda   # synchronises around each step
    .venv/bin/python -m benchmarks.perf.time_meta_step --layouts       # contiguous against channels-last weights
"""
from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

import torch

from algorithms import MetaConfig, build_learner
from algorithms.models import OmniglotCNN
from benchmarks.records.provenance import device_name, measurement, write_json
from benchmarks.running.measure import StepTimes
from benchmarks.running.allocator import keep_freed_memory
from datasets.tasks import ClassPool


@dataclass(frozen=True)
class Setting:
    """One row of the table: the learner config and the task shape it trains on."""

    label: str
    config: MetaConfig
    shots: int
    query: int
    tasks: int = 5
    ways: int = 5


def settings(backend: str = "reference") -> list[Setting]:
    rows = [
        Setting(
            "reptile 10-shot, 5 Adam steps, batch 10",
            MetaConfig(algorithm="reptile", backend=backend, inner_steps=5, inner_lr=1e-3, inner_batch=10),
            shots=10,
            query=0,
        )
    ]
    for algorithm in ("fomaml", "maml"):
        for steps in (1, 5):
            for shots in (1, 5):
                config = MetaConfig(algorithm=algorithm, backend=backend, inner_steps=steps, inner_lr=0.4, meta_lr=1e-3)
                rows.append(Setting(f"{algorithm} {shots}-shot, {steps} SGD step{'s' if steps > 1 else ''}", config, shots, 15))
    return rows


def time_setting(setting: Setting, steps: int, warmup: int, device: torch.device, pool: ClassPool,
                 layout: str | None = None) -> list[float]:
    """Seconds per meta-step; ``layout`` "contiguous" or "channels-last" forces the weights' memory format
    (None: the learner's own choice)."""
    torch.manual_seed(0)
    model = OmniglotCNN(setting.ways).to(device)
    if layout == "channels-last":
        model.to(memory_format=torch.channels_last)
    learner = build_learner(setting.config, model, total_iterations=steps + warmup, seed=0)
    if layout == "contiguous":  # before the first step creates any optimiser state
        learner.model.to(memory_format=torch.contiguous_format)
    times = StepTimes()
    for it in range(steps + warmup):
        batch = pool.sample_batch(setting.ways, setting.shots, setting.query, seed=0, indices=range(it * setting.tasks, (it + 1) * setting.tasks))
        batch = batch.to(device)  # the transfer is not part of the meta-step
        times.time(str(device), lambda: learner.meta_step(batch))
    return times.seconds[warmup:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed meta-steps per setting (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed meta-steps first (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the shared 2-core machines are noisy)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="reference", help="learner backend (default reference)")
    parser.add_argument("--layouts", action="store_true",
                        help="time every setting with contiguous and with channels-last weights, taking turns")
    parser.add_argument("--rounds", type=int, default=3, help="with --layouts: turns per layout (default 3)")
    parser.add_argument("--json", default=None, help="with --layouts: also write the figures to this file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--steps and --rounds must be >= 1 and --warmup >= 0")
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pool = ClassPool(torch.rand(100, 20, 1, 28, 28, generator=torch.Generator().manual_seed(0)), rotations=4, name="random-omniglot")

    if args.layouts:
        compare_layouts(args, device, pool)
        return
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, backend {args.backend}, "
          f"median of {args.steps} meta-steps after {args.warmup} warm-up, meta-batch 5, 5-way")
    print(f"{'setting':<40} {'median s':>9} {'min s':>7} {'max s':>7}")
    for setting in settings(args.backend):
        times = time_setting(setting, args.steps, args.warmup, device, pool)
        print(f"{setting.label:<40} {statistics.median(times):>9.3f} {min(times):>7.3f} {max(times):>7.3f}", flush=True)


def compare_layouts(args, device: torch.device, pool: ClassPool) -> None:
    """Same-round ratios channels-last / contiguous per setting (the median of ``args.steps`` steps per turn)."""
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, backend {args.backend}, "
          f"{args.rounds} rounds of {args.steps} meta-steps per layout after {args.warmup} warm-up")
    print(f"{'setting':<40} {'contiguous s':>12} {'channels-last s':>15}  channels-last / contiguous per round")
    report = measurement(device_name(str(device), torch.get_num_threads()), backend=args.backend, rounds=args.rounds,
                         steps_per_round=args.steps, clock="wall", settings={})
    for setting in settings(args.backend):
        medians = {"contiguous": [], "channels-last": []}
        for _ in range(args.rounds):
            for layout, kept in medians.items():
                kept.append(statistics.median(time_setting(setting, args.steps, args.warmup, device, pool, layout)))
        ratios = [c / n for c, n in zip(medians["channels-last"], medians["contiguous"])]
        print(f"{setting.label:<40} {statistics.median(medians['contiguous']):>12.3f} "
              f"{statistics.median(medians['channels-last']):>15.3f}  " + ", ".join(f"x{r:.2f}" for r in ratios), flush=True)
        report["settings"][setting.label] = {"median_s": medians, "ratio_rounds": ratios,
                                             "ratio_median": statistics.median(ratios)}
    write_json(args.json, report)


if __name__ == "__main__":
    main()
