"""Evaluation throughput, batched against serial, measured side by side; and their float32 agreement.

    python -m benchmarks.perf.eval_throughput [--device cpu|cuda] [--tasks N] [--repeats R] [--json OUT]
    python -m benchmarks.perf.eval_throughput --agreement [--json OUT]

Throughput: tasks per second of the shared evaluator (``algorithms.evaluation.evaluate``) at 5-way
1-shot on Omniglot (the small split's test part; random images of its shape when it is not here), for
Reptile's protocol (50 Adam steps, beta1 0, lr 1e-3, minibatches of 5, non-transductive) and MAML's
(3 SGD steps of 0.4 on the whole support set, transductive), with the serial evaluator, the batched one
in this device's default convolution mode, and the batched one in the other mode. Contenders run in turn,
``--repeats`` times (median reported), on one thread on CPU: the ratio is what counts (PITFALLS section 4).

``--agreement``: on the default suite's evaluation pools (Omniglot small test part, 600 tasks per
setting, the default suite's fine-tuning settings, a randomly initialised network trained by no one,
float32), how many per-task scores and query predictions the batched evaluator changes against the
serial one, in both of TaskNet's modes. In float64 the two are identical (``tests/test_batched_eval.py``).
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
import torch

from algorithms import build_model
from algorithms import batched_eval
from algorithms.evaluation import EvalConfig, evaluate
from benchmarks.records.provenance import measurement, device_name, write_json
from benchmarks.running.allocator import keep_freed_memory
from datasets.tasks import ClassPool

PROTOCOLS = {
    "reptile (50 Adam steps, non-transductive)": dict(query=1, inner_steps=50, inner_lr=1e-3, inner_optimizer="adam",
                                                       inner_batch=5, transductive=False),
    "maml (3 SGD steps, transductive)": dict(query=1, inner_steps=3, inner_lr=0.4, inner_optimizer="sgd",
                                             inner_batch=0, transductive=True),
}
# The default suite's evaluations (benchmarks/suites/default.toml): Reptile 20 Adam steps, MAML 3 SGD steps.
AGREEMENT = {
    "reptile-trans": dict(query=1, inner_steps=20, inner_lr=1e-3, inner_optimizer="adam", inner_batch=5, transductive=True),
    "reptile-nontrans": dict(query=1, inner_steps=20, inner_lr=1e-3, inner_optimizer="adam", inner_batch=5,
                             transductive=False),
    "maml-trans": dict(query=1, inner_steps=3, inner_lr=0.4, inner_optimizer="sgd", inner_batch=0, transductive=True),
}


def test_pool():
    try:
        from datasets import load_pool

        return load_pool("omniglot", "small", "test", download=False), "small Omniglot (test)"
    except Exception as e:  # noqa: BLE001 - fall back to random images of the same shape, and say so
        g = torch.Generator().manual_seed(0)
        return ClassPool(torch.rand(106, 20, 1, 28, 28, generator=g), name="random"), f"RANDOM images ({e})"


def contenders(model, device: str) -> dict:
    """name -> (mode, conv_mode or None): serial, batched in this device's default mode, batched in the other."""
    default = batched_eval.CONV_MODE.get(torch.device(device).type, "loop")
    other = "grouped" if default == "loop" else "loop"
    return {"serial": ("serial", None), f"batched ({default})": ("batched", default),
            f"batched ({other})": ("batched", other)}


def run_eval(model, pool, config: EvalConfig, device: str, conv_mode: str | None, shots: int = 1) -> list[float]:
    """Per-task scores: the serial evaluator (``conv_mode`` None) or the batched one in ``conv_mode``."""
    if conv_mode is None:
        return evaluate(model, pool, 5, shots, replace(config, mode="serial"), device=device).per_task
    return batched_eval.evaluate_batched(model, pool, 5, shots, config, torch.device(device), conv_mode=conv_mode)[0]


def throughput(device: str, tasks: int, repeats: int) -> dict:
    pool, source = test_pool()
    torch.manual_seed(0)
    model = build_model("omniglot", 5).to(device)
    out = {"tasks": source, "per_protocol": {}}
    for name, cfg in PROTOCOLS.items():
        config = EvalConfig(num_tasks=tasks, **cfg)
        fns = contenders(model, device)
        times = {k: [] for k in fns}
        for k, (mode, conv) in fns.items():  # warm-up
            run_eval(model, pool, EvalConfig(num_tasks=2, **cfg), device, conv)
        for _ in range(repeats):
            for k, (mode, conv) in fns.items():
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                run_eval(model, pool, config, device, conv)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[k].append(time.perf_counter() - t0)
        rates = {k: tasks / statistics.median(v) for k, v in times.items()}
        out["per_protocol"][name] = {k: {"tasks_per_s": r, "vs_serial": r / rates["serial"]} for k, r in rates.items()}
        print(f"\n{name}: {tasks} tasks x {repeats} repeats, median")
        for k, r in rates.items():
            print(f"  {k:<20} {r:8.1f} tasks/s   x{r / rates['serial']:.2f} vs serial")
    return out


def agreement(device: str) -> dict:
    pool, source = test_pool()
    torch.manual_seed(0)
    model = build_model("omniglot", 5).to(device)
    out = {"tasks": source, "settings": {}}
    for shots in (1, 5):
        for name, cfg in AGREEMENT.items():
            config = EvalConfig(num_tasks=600, **cfg)
            serial = run_eval(model, pool, config, device, None, shots)
            for conv in ("loop", "grouped"):
                batched = run_eval(model, pool, config, device, conv, shots)
                changed = sum(x != y for x, y in zip(serial, batched))
                # One query image per class: a task's score moves by 20 points per changed prediction.
                flips = round(sum(abs(x - y) for x, y in zip(serial, batched)) / 20)
                key = f"5w{shots}s {name}, batched ({conv})"
                out["settings"][key] = {"tasks_changed": changed, "predictions_changed_at_least": flips,
                                        "predictions": 600 * 5, "serial_mean": sum(serial) / 600,
                                        "batched_mean": sum(batched) / 600}
                print(f"{key:<40} tasks with another score: {changed}/600; predictions changed >= {flips}/3000; "
                      f"mean {sum(serial) / 600:.2f} serial vs {sum(batched) / 600:.2f} batched")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tasks", type=int, default=100, help="evaluation tasks per timed evaluation")
    ap.add_argument("--repeats", type=int, default=3, help="timed evaluations per contender (median)")
    ap.add_argument("--agreement", action="store_true", help="count float32 disagreements instead of timing")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    if args.tasks < 2 or args.repeats < 1:
        raise SystemExit("--tasks must be >= 2 and --repeats >= 1")
    keep_freed_memory()
    if args.device == "cpu":
        torch.set_num_threads(1)
    report = measurement(device_name(args.device), task_batch=batched_eval.TASK_BATCH)
    print(f"evaluation throughput | {report['device']} | torch {torch.__version__}")
    report.update(agreement(args.device) if args.agreement else throughput(args.device, args.tasks, args.repeats))
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
