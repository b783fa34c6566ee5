"""Where the time of one Reptile meta-step goes, at 1 thread: a torch.profiler breakdown by kind of work.

    python -m benchmarks.perf.profile_reptile [--steps 5] [--json results/profile/reptile_cpu.json]

The default suite's Reptile (reference backend, inner Adam kept across tasks): Omniglot-small 5-way,
10 shots, meta-batch 5, 5 inner Adam steps (lr 0.001, beta1 0) on minibatches of 10. The profiler's self
CPU time of every op is summed into kinds: convolution forward / backward, batch norm forward / backward,
ReLU, the linear head and loss, the inner Adam (everything under ``Optimizer.step``, or under the handwritten
step's ``DirectAdam.step``, labelled for the profiled steps only), copies and indexing, other ops. The
profiler adds a few microseconds to every op, which inflates the kinds made of many small ops; so the same
steps are also timed unprofiled, and both totals are reported.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.profiler import ProfilerActivity, profile

from algorithms import MetaConfig, build_learner, build_model
from algorithms.handwritten import DirectAdam
from benchmarks.records.provenance import measurement, device_name, write_json
from benchmarks.running.allocator import keep_freed_memory

KINDS = [  # (kind, op names it covers); first match wins
    ("convolution backward", ("aten::convolution_backward",)),
    ("convolution forward", ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution", "aten::conv2d",
                             "aten::_slow_conv2d_forward", "aten::thnn_conv2d")),
    ("batch norm backward", ("aten::native_batch_norm_backward",)),
    ("batch norm forward", ("aten::native_batch_norm", "aten::batch_norm", "aten::_batch_norm_impl_index")),
    ("ReLU", ("aten::relu", "aten::clamp_min", "aten::threshold_backward")),
    ("linear head and loss", ("aten::addmm", "aten::mm", "aten::linear", "aten::_log_softmax", "aten::nll_loss",
                              "aten::_log_softmax_backward_data", "aten::nll_loss_backward", "aten::nll_loss_forward",
                              "aten::log_softmax", "aten::cross_entropy_loss", "aten::t", "aten::sum")),
    ("copies and indexing", ("aten::copy_", "aten::index", "aten::clone", "aten::_to_copy", "aten::to",
                             "aten::empty", "aten::empty_strided", "aten::zeros_like", "aten::zero_")),
]


def setup(num_batches: int = 64):
    """The default suite's Reptile learner (seed 0) and ``num_batches`` meta-batches of its tasks."""
    from datasets import load_pool

    keep_freed_memory()
    torch.set_num_threads(1)
    pool = load_pool("omniglot", "small", "train")
    torch.manual_seed(0)
    config = MetaConfig(algorithm="reptile", inner_steps=5, inner_lr=0.001, inner_optimizer="adam", adam_beta1=0.0,
                        inner_batch=10, meta_lr=1.0, persist_inner_state=True)
    learner = build_learner(config, build_model("omniglot", 5), 100_000)
    batches = [pool.sample_batch(5, 10, 0, seed=0, indices=range(5 * i, 5 * i + 5)) for i in range(num_batches)]
    return learner, batches


ADAM_ROOTS = ("Optimizer.step", "DirectAdam.step")
"""Where the inner Adam's time is: ``torch.optim``'s step, or the handwritten step's direct kernel calls."""


@contextlib.contextmanager
def direct_adam_labelled():
    """``DirectAdam.step`` under a profiler label of that name while profiling (it makes plain kernel calls)."""
    step = DirectAdam.step

    def labelled(self, grads):
        with torch.profiler.record_function("DirectAdam.step"):
            step(self, grads)

    DirectAdam.step = labelled
    try:
        yield
    finally:
        DirectAdam.step = step


def _under_adam(event) -> bool:
    while event is not None:
        if event.name.startswith(ADAM_ROOTS):
            return True
        event = event.cpu_parent
    return False


def breakdown(steps: int) -> dict:
    learner, batches = setup()
    for b in batches[:5]:
        learner.meta_step(b)
    t0 = time.thread_time()
    for b in batches[5:5 + 4 * steps]:
        learner.meta_step(b)
    per_step = (time.thread_time() - t0) / (4 * steps)
    with direct_adam_labelled(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[5 + 4 * steps:5 + 5 * steps]:
            learner.meta_step(b)
    kinds = {kind: 0.0 for kind, _ in KINDS}
    kinds["inner Adam"] = 0.0
    other = 0.0
    for e in prof.events():
        if e.name.startswith(("autograd::", "torch::autograd")):
            continue  # autograd's engine frames (under the ``autograd`` variant): their ops are counted themselves
        t = e.self_cpu_time_total / steps / 1e6
        if _under_adam(e):
            kinds["inner Adam"] += t
            continue
        for kind, names in KINDS:
            if e.name in names:
                kinds[kind] += t
                break
        else:
            other += t
    kinds["other ops"] = other
    return {"step_s": per_step, "profiled_step_s": sum(kinds.values()), "kinds_s": kinds}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="profiled meta-steps (4x as many timed unprofiled)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    result = breakdown(args.steps)
    report = measurement(device_name("cpu", 1), clock="thread CPU time", **result)
    print(f"Reptile meta-step, 1 thread: {result['step_s'] * 1e3:.1f} ms unprofiled, "
          f"{result['profiled_step_s'] * 1e3:.1f} ms of op time under the profiler")
    for kind, t in sorted(result["kinds_s"].items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<24} {t * 1e3:6.1f} ms  {100 * t / result['profiled_step_s']:5.1f}%")
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
