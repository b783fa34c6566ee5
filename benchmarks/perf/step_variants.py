"""What was tried to make Reptile's meta-step faster, timed side by side, and whether each keeps the maths.

    python -m benchmarks.perf.step_variants [--rounds 5] [--steps 8] [--json results/profile/step_variants_cpu.json]

The meta-step of ``benchmarks.perf.profile_reptile`` (the default suite's Reptile: reference backend, inner
Adam kept across tasks, Omniglot-small 5-way, 10 shots, meta-batch 5, 5 inner Adam steps on minibatches of
10), at 1 thread, under each variant:

- ``as run``: what the default suite runs (the handwritten inner step of ``algorithms/handwritten.py``, torch's
  fused Adam kernel, weights channels-last on CPU);
- ``autograd``: the same step through autograd and ``optimizer.step()`` (the same bits: only the time differs);
- ``foreach Adam``: the inner Adam as ``torch._foreach_*`` ops (the per-tensor kernels of its default path);
- ``contiguous``: the network's weights (so its activations) in the default NCHW format;
- ``before``: autograd, the foreach Adam and the contiguous layout together: the meta-step as the default suite
  ran it before those three choices;
- ``oneDNN off``: ``torch.backends.mkldnn`` disabled (PyTorch's own CPU convolutions);
- ``compiled step``: the whole inner step compiled: ``torch.compile`` of the network (its forward and, through
  AOTAutograd, its backward) and of the inner Adam's ``step`` (one fused kernel instead of a loop over tensors).

Each variant's warm-up (2 meta-steps, wall time) is reported too: it holds ``compiled step``'s compilation
(with an empty Inductor cache), a cost every training process pays once. A variant that fails (say, no C++ compiler for Inductor) is reported with
its error, and the others are still timed.

Every variant has its own learner, built from the same seed, and trains on the same meta-batches. The
variants take turns, ``--steps`` meta-steps each per round (thread CPU time), so the machine's drift hits
all alike; each reports its median per-step time over the rounds, the ratio to ``as run`` in the same
round, and the largest difference of its meta-parameters from ``as run``'s after the same steps
(float32): 0 means the same numbers, anything else means the default suite's results would change.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
import warnings

import torch

from benchmarks.perf.profile_reptile import setup
from benchmarks.records.provenance import measurement, device_name, write_json


def _autograd(learner):
    learner.handwritten = False
    return contextlib.nullcontext


def _foreach_adam(learner):
    c = learner.config
    learner.inner_optimizer = torch.optim.Adam(learner.model.parameters(), lr=c.inner_lr,
                                               betas=(c.adam_beta1, 0.999), foreach=True)
    return contextlib.nullcontext


def _contiguous(learner):
    learner.model.to(memory_format=torch.contiguous_format)  # before the first step creates Adam's state
    return contextlib.nullcontext


def _before(learner):
    _autograd(learner)
    _contiguous(learner)
    return _foreach_adam(learner)


@contextlib.contextmanager
def _no_onednn():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about Intel-GPU TF32 whenever the flags are set
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def _onednn_off(learner):
    return _no_onednn


def _compiled_step(learner):
    _autograd(learner)  # what is compiled is the module and the optimiser's step
    learner.model = torch.compile(learner.model)  # shares the parameters: the inner Adam keeps its tensors
    learner.inner_optimizer.step = torch.compile(learner.inner_optimizer.step)
    return contextlib.nullcontext


VARIANTS = {"as run": lambda learner: contextlib.nullcontext, "autograd": _autograd, "foreach Adam": _foreach_adam,
            "contiguous": _contiguous, "before": _before, "oneDNN off": _onednn_off, "compiled step": _compiled_step}


def measure(rounds: int, steps: int, warmup: int = 2) -> dict:
    runs, warm, failed = {}, {}, {}
    for name, make in VARIANTS.items():
        learner, batches = setup(warmup + rounds * steps)
        runs[name] = (learner, make(learner), iter(batches))
    for name, (learner, context, batches) in list(runs.items()):
        t0 = time.perf_counter()
        try:
            with context():
                for _ in range(warmup):
                    learner.meta_step(next(batches))
        except Exception as e:  # noqa: BLE001 - one variant that cannot run here must not hide the others
            if name == "as run":
                raise
            failed[name] = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"}
            del runs[name]
            continue
        warm[name] = time.perf_counter() - t0
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (learner, context, batches) in runs.items():
            with context():
                t0 = time.thread_time()
                for _ in range(steps):
                    learner.meta_step(next(batches))
                times[name].append((time.thread_time() - t0) / steps)
    base = [p.detach() for p in runs["as run"][0].model.parameters()]
    out = {}
    for name, (learner, _, _) in runs.items():
        diff = max((p.detach() - b).abs().max().item() for p, b in zip(learner.model.parameters(), base))
        ratios = [t / b for t, b in zip(times[name], times["as run"])]
        out[name] = {"step_s_median": statistics.median(times[name]), "step_s_rounds": times[name],
                     "ratio_to_as_run_median": statistics.median(ratios), "ratio_to_as_run_rounds": ratios,
                     "max_param_diff_vs_as_run": diff, "warmup_s": warm[name], "warmup_steps": warmup}
    return {**out, **failed}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8, help="meta-steps per variant per round")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        ap.error(f"--rounds and --steps must be at least 1 (got {args.rounds} and {args.steps})")
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="inductor-cache-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # a cold cache: the compilation a fresh machine pays
        try:
            variants = measure(args.rounds, args.steps)
        finally:
            if before is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = before
    report = measurement(device_name("cpu", 1), clock="thread CPU time", rounds=args.rounds,
                         steps_per_round=args.steps, variants=variants)
    print(f"Reptile meta-step variants, 1 thread, {args.rounds} rounds of {args.steps} steps (thread CPU time)")
    for name, v in variants.items():
        if "error" in v:
            print(f"  {name:<14} failed: {v['error']}")
            continue
        print(f"  {name:<14} {v['step_s_median'] * 1e3:6.1f} ms  x{v['ratio_to_as_run_median']:.2f} of as run  "
              f"max |param - as run's| {v['max_param_diff_vs_as_run']:.1e}")
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
