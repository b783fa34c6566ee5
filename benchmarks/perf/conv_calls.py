"""Where a convolution call's time goes at the inner step's sizes: oneDNN's own kernels against the whole call.

    python -m benchmarks.perf.conv_calls [--calls 200] [--rounds 5] [--json results/profile/conv_calls_cpu.json]

Each layer of the Omniglot network as Reptile's learner runs it on CPU (channels-last, float32, 1 thread),
at the evaluator's minibatch (5 images) and the training one (10): the forward call
(``aten.convolution``) and the backward one (``aten.convolution_backward``, input and weight gradients as
the handwritten step asks them; the first layer's input needs none), each timed as the median over rounds
of ``--calls`` calls (thread CPU time). A second process makes the same calls under oneDNN's verbose mode,
which reports the time of every primitive it executes (the convolution kernels and the reorders of
weights and gradients between torch's layouts and oneDNN's blocked ones); their sum per call is the
"kernels" column, and the rest of the call is torch's and ideep's work around them (a primitive
descriptor built per call, tensors wrapped and allocated, the weight gradient copied to channels-last).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch

from benchmarks.records.provenance import REPO_ROOT, device_name, measurement, write_json

LAYERS = [(1, 28), (64, 14), (64, 7), (64, 4)]
"""(input channels, input height = width) of the Omniglot CNN's four 3x3 stride-2 convolutions."""
BATCHES = (5, 10)
aten = torch.ops.aten


def _calls(cin: int, hw: int, batch: int):
    """The forward and backward call of one layer, on tensors laid out as the learner's."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cin, hw, hw, generator=g).contiguous(memory_format=torch.channels_last)
    # A 1-input-channel weight keeps NCHW strides under .contiguous(channels_last); lay it out as models.py does.
    w = torch.empty(64, 3, 3, cin).permute(0, 3, 1, 2).copy_(torch.randn(64, cin, 3, 3, generator=g))
    b = torch.zeros(64)
    forward = lambda: aten.convolution(x, w, b, [2, 2], [1, 1], [1, 1], False, [0, 0], 1)  # noqa: E731
    go = torch.randn(forward().shape, generator=g).contiguous(memory_format=torch.channels_last)
    backward = lambda: aten.convolution_backward(go, x, w, [64], [2, 2], [1, 1], [1, 1], False, [0, 0], 1,  # noqa: E731
                                                 [cin > 1, True, True])
    return {"forward": forward, "backward": backward}


def _cases():
    for batch in BATCHES:
        for layer, (cin, hw) in enumerate(LAYERS, 1):
            for direction, call in _calls(cin, hw, batch).items():
                yield f"batch {batch}, layer {layer} ({cin}->64 channels, {hw}x{hw}), {direction}", call


def time_calls(calls: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of every case (thread CPU time)."""
    out = {}
    for name, call in _cases():
        for _ in range(20):
            call()
        per_round = []
        for _ in range(rounds):
            t0 = time.thread_time()
            for _ in range(calls):
                call()
            per_round.append((time.thread_time() - t0) / calls)
        out[name] = statistics.median(per_round)
    return out


def verbose_child(calls: int) -> None:
    """Print a marker line per case, then that case's calls under oneDNN's verbose mode (read by the parent)."""
    for name, call in _cases():
        for _ in range(5):
            call()
        print(f"case,{name}", flush=True)
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            for _ in range(calls):
                call()
        sys.stdout.flush()


def kernel_times(text: str, calls: int) -> dict[str, dict]:
    """Per case: oneDNN's primitive time per call (seconds; the median over calls of each call's sum) and the
    primitives one call executes."""
    times: dict[str, list[float]] = {}
    kinds: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("case,"):
            name = line[5:]
            times[name], kinds[name] = [], []
        elif name and line.startswith("onednn_verbose,") and ",exec," in line:
            fields = line.split(",")
            times[name].append(float(fields[-1]) / 1e3)  # the last field: milliseconds
            kinds[name].append(fields[fields.index("exec") + 2])
    out = {}
    for name, t in times.items():
        if not t or len(t) % calls:
            out[name] = {"kernels_s": None, "primitives": {}}
            continue
        k = len(t) // calls  # every call executes the same primitives
        per_call = [sum(t[i:i + k]) for i in range(0, len(t), k)]
        out[name] = {"kernels_s": statistics.median(per_call),
                     "primitives": {kind: kinds[name][:k].count(kind) for kind in dict.fromkeys(kinds[name][:k])}}
    return out


def measure(calls: int, rounds: int) -> dict:
    torch.set_num_threads(1)
    totals = time_calls(calls, rounds)
    cmd = [sys.executable, "-m", "benchmarks.perf.conv_calls", "--verbose-child", "--calls", str(min(calls, 50))]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    if p.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed (exit {p.returncode}):\n{p.stderr.strip()[-2000:]}")
    kernels = kernel_times(p.stdout, min(calls, 50))
    missing = [n for n in totals if n not in kernels or kernels[n]["kernels_s"] is None]
    if missing:
        onednn = torch.backends.mkldnn.is_available()
        raise SystemExit(f"error: oneDNN's verbose mode reported no primitive for {missing[0]!r}: is this torch "
                         f"built with oneDNN (torch.backends.mkldnn.is_available() = {onednn})?")
    cases = {n: {"call_s": t, "kernels_s": kernels[n]["kernels_s"], "primitives_per_call": kernels[n]["primitives"]}
             for n, t in totals.items()}
    # One inner step's convolutions: every layer forward and backward.
    steps = {str(b): {k: sum(c[k] for n, c in cases.items() if n.startswith(f"batch {b},"))
                      for k in ("call_s", "kernels_s")} for b in BATCHES}
    return {"calls": calls, "rounds": rounds, "cases": cases, "per_inner_step": steps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf.conv_calls", description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=200, help="calls per round and case")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--verbose-child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.calls < 1 or a.rounds < 1:
        ap.error("--calls and --rounds must be >= 1")
    if a.verbose_child:
        torch.set_num_threads(1)
        verbose_child(a.calls)
        return 0
    report = measurement(device_name("cpu", 1), clock="thread CPU time", **measure(a.calls, a.rounds))
    for name, c in [*report["cases"].items(), *((f"batch {b}: one inner step's convolutions", c)
                                                for b, c in report["per_inner_step"].items())]:
        print(f"{name:<56} call {c['call_s'] * 1e6:6.0f} us, oneDNN kernels {c['kernels_s'] * 1e6:6.0f} us "
              f"({100 * c['kernels_s'] / c['call_s']:.0f}%)")
    write_json(a.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
