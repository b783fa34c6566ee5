"""Limit benchmark: each meta-step's time against the floor it cannot beat, and second-order MAML's memory.

    python -m benchmarks.perf.limits [--device cpu|cuda] [--repeats N] [--json OUT] [--compile] [--threads N] [--no-memory]

Settings (Omniglot 5-way, meta-batch 5, the paper's values): Reptile 10 shots,
5 inner Adam steps (beta1 = 0) on minibatches of 10; FOMAML / MAML 5-shot
support, 15 queries per class, 5 inner SGD steps (alpha 0.1), and the MAML
paper's 1 step (alpha 0.4). Tasks come from the small Omniglot split
(``$OMNIGLOT_ROOT``), else random tensors of the same shape (the output says which).

Floor = the bare forward and backward passes the algorithm's maths needs on the
same batches, with nothing else (no optimiser, sampling, copying or outer step):
- Reptile: T x K forward + backward on the pre-gathered minibatches: on CPU without autograd's graph
  (``algorithms/handwritten.py``, the kernels autograd calls, as the learners run them), else ``autograd.grad``
  of the module.
- FOMAML: per task, K support forward+backward, then one query forward+backward.
- MAML (second order): per task, K support forward + backward with ``create_graph``
  through the functional net, the query forward, and one backward through the
  whole unrolled graph (the forward + double-backward work; the smallest exact way).
"floor (loop)" runs it task by task on the plain net (the reference's form);
"floor (batched)" runs the same passes in the batched backend's task chunks
(all tasks through grouped convolutions on CUDA; on CPU one task at a time
through the functional net, so there the two floors differ only by noise).
Every contender runs once per repeat, in turn, so the ratios are measured side
by side (PITFALLS section 4). On CPU the clock is this thread's CPU time
(``time.thread_time``, one torch thread), which leaves out the time other
processes hold the shared cores; wall time on CUDA and with ``--threads N``
above 1 (to see the ratios at a CPU's full thread count). Medians and minima
are both printed.
"batched (grouped)" / "batched (loop)" is the batched backend with the other
way of batching convolutions than this device's default (``functional.py``).
"learn2learn", "torchopt", "torch.func" (first and second order) are the library backends
(``algorithms/libraries``), whole meta-steps like the others; a library that is not installed is
skipped with a note. "torch.func vmap*" (second order only) is the meta-gradient with the tasks
under ``vmap``; * marks vmap's WRONG second derivatives through batch norm (PITFALLS section 1):
it is timed to show what vmap would buy, not offered as a backend (meta-gradient only, no outer step).
The second-order floor is the unrolled computation; the batched backend's
default (a Hessian-vector-product chain, see ``algorithms/batched.py``) does
more work than it by design, to keep memory flat in K.
``--compile``: a last pass times each first-order batched learner against itself
with its functional forward ``torch.compile``'d (``"compile"`` in the JSON).
Memory: bytes held by autograd (saved-tensor hooks, ``benchmarks.running.measure``) on
CPU, the CUDA allocator's peak on CUDA, for second-order MAML at K = 5 and 10.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time

import torch

from algorithms import MetaConfig, build_learner
from algorithms.batched import BatchedMAML, BatchedReptile, _draw_minibatches, chunks
from algorithms.functional import TaskNet, flat_views
from algorithms.handwritten import HandwrittenNet
from algorithms.models import OmniglotCNN, channels_last_applies, channels_last_on_cpu
from algorithms.libraries import LibraryMissing
from algorithms.libraries.func_maml import func_meta_gradient
from benchmarks.running.measure import autograd_saved_bytes, synchronize
from benchmarks.records.provenance import measurement, device_name, write_json
from benchmarks.running.allocator import keep_freed_memory
from datasets.tasks import TaskBatch

T, WAYS = 5, 5
LIBRARY_BACKENDS = ("learn2learn", "torchopt", "torch.func")
SETTINGS = {  # name -> (shots, query, config)
    "reptile": (10, 0, dict(algorithm="reptile", inner_steps=5, inner_batch=10, inner_lr=1e-3, persist_inner_state=False)),
    "fomaml-5": (5, 15, dict(algorithm="fomaml", inner_steps=5, inner_lr=0.1, meta_lr=1e-3)),
    "maml-5": (5, 15, dict(algorithm="maml", inner_steps=5, inner_lr=0.1, meta_lr=1e-3)),
    "fomaml-1": (5, 15, dict(algorithm="fomaml", inner_steps=1, inner_lr=0.4, meta_lr=1e-3)),
    "maml-1": (5, 15, dict(algorithm="maml", inner_steps=1, inner_lr=0.4, meta_lr=1e-3)),
}
# Medians of the cheap settings move most with the shared cores' noise, and their repeats cost least.
DEFAULT_REPEATS = {"reptile": 45, "fomaml-5": 15, "maml-5": 15, "fomaml-1": 30, "maml-1": 15}


def task_source():
    """(sample(shots, query, index) -> TaskBatch, description)."""
    try:
        from datasets import load_pool

        pool = load_pool("omniglot", "small", "train", download=False)
        return (lambda s, q, i: pool.sample_batch(WAYS, s, q, seed=0, indices=range(i * T, (i + 1) * T))), "small Omniglot (train)"
    except Exception as e:  # noqa: BLE001 - any failure to load falls back, and is reported
        def rand(s, q, i):
            g = torch.Generator().manual_seed(i)
            y = lambda n: torch.arange(WAYS).repeat_interleave(n).expand(T, -1).contiguous()  # noqa: E731
            return TaskBatch(torch.rand(T, WAYS * s, 1, 28, 28, generator=g), y(s), torch.rand(T, WAYS * q, 1, 28, 28, generator=g), y(q))
        return rand, f"RANDOM tensors of Omniglot's shape (small Omniglot not loaded: {type(e).__name__}: {e})"


def floor_fn(kind: str, model, cfg: dict, batch: TaskBatch, batched: bool):
    """A closure doing only the bare passes of one meta-step on ``batch`` (inputs pre-gathered).

    Reptile's minibatches are drawn as the learners draw theirs (same procedure
    and sizes; a generator of its own, since the learners' streams move on).
    """
    net = TaskNet(model)
    params = list(model.parameters())
    K, second = cfg["inner_steps"], kind == "maml"
    xs, ys, xq, yq = batch.tensors()
    grad, ce = torch.autograd.grad, torch.nn.functional.cross_entropy
    if kind == "reptile":
        idx = _draw_minibatches(xs.shape[1], T, cfg["inner_batch"], K, torch.Generator().manual_seed(0))
        rows = torch.arange(T)[:, None]
        xs, ys = xs[rows, idx].contiguous(), ys[rows, idx].contiguous()  # [T, K, batch, ...]
    if kind == "reptile" and HandwrittenNet.supports(model) and (not batched or net.mode_for(xs.device) == "loop"):
        # Without autograd's graph (the kernels it would call: algorithms/handwritten.py), as the learners run it;
        # the batched form on each task's weights in the batched learner's layout.
        hand = HandwrittenNet(model)
        laid_out = copy.deepcopy(model)
        channels_last_on_cpu(laid_out)  # the reference learner's layout
        weights = ([[p.detach() for p in laid_out.parameters()]] * T if not batched else
                   [flat_views(c.init(params), channels_last=channels_last_applies(model))[1]
                    for c in chunks(net, T, xs.device)])
        return lambda: [hand.loss_and_grads(weights[t], xs[t, k], ys[t, k]) for t in range(T) for k in range(K)]
    if not batched:
        if kind == "reptile":
            return lambda: [grad(ce(model(xs[t, k]), ys[t, k]), params) for t in range(T) for k in range(K)]

        def one_task(t):
            fast = params
            for _ in range(K):
                g = grad(ce(net.forward_one(fast, xs[t]), ys[t]), fast, create_graph=second)
                if second:
                    fast = [w - cfg["inner_lr"] * gi for w, gi in zip(fast, g)]
            return grad(ce(net.forward_one(fast, xq[t]), yq[t]), params)
        return lambda: [one_task(t) for t in range(T)]
    # The batched backend's form: its task chunks (all tasks, grouped, on CUDA; one per task in loop mode).
    parts = [(chunk, [w.requires_grad_() for w in chunk.init(params)]) for chunk in chunks(net, T, xs.device)]
    if kind == "reptile":
        return lambda: [grad(c.losses(w, xs[:, k], ys[:, k]).sum(), w) for k in range(K) for c, w in parts]

    def chunk_step(chunk, base):
        fast = base
        for _ in range(K):
            g = grad(chunk.losses(fast, xs, ys).sum(), fast, create_graph=second)
            if second:
                fast = [w - cfg["inner_lr"] * gi for w, gi in zip(fast, g)]
        return grad(chunk.losses(fast, xq, yq).sum(), base)
    return lambda: [chunk_step(c, w) for c, w in parts]


def stepper(learner, batches):
    """A closure running one meta-step of ``learner`` per call, cycling through ``batches``."""
    cycle = itertools.cycle(batches)
    return lambda: learner.meta_step(next(cycle))


def setting_batches(sample, name: str, device: str) -> list[TaskBatch]:
    """The three meta-batches every contender of setting ``name`` cycles through."""
    shots, query, _ = SETTINGS[name]
    return [sample(shots, query, i).to(device) for i in range(3)]


def contenders(name: str, model, batches) -> dict:
    """name -> closure running one meta-step (or one floor), cycling through ``batches``."""
    _, _, cfg = SETTINGS[name]
    kind = cfg["algorithm"]
    out = {}
    for backend in ("reference", "batched"):
        out[backend] = stepper(build_learner(MetaConfig(**cfg, backend=backend), copy.deepcopy(model), 10**6, seed=0), batches)
    # The other way of batching convolutions, so the choice of the default is checked on this device.
    other = "loop" if TaskNet(model).mode_for(next(model.parameters()).device) == "grouped" else "grouped"
    cls = BatchedReptile if kind == "reptile" else BatchedMAML
    config = MetaConfig(**cfg, backend="batched", first_order=kind == "fomaml")
    out[f"batched ({other})"] = stepper(cls(copy.deepcopy(model), config, 10**6, conv_mode=other), batches)
    if kind in ("maml", "fomaml"):
        # The libraries researchers use, as backends behind the same interface (skipped, and said, if not installed).
        for backend in LIBRARY_BACKENDS:
            try:
                learner = build_learner(MetaConfig(**cfg, backend=backend), copy.deepcopy(model), 10**6, seed=0)
            except LibraryMissing as e:
                print(f"  {backend}: not timed ({e})")
                continue
            out[backend] = stepper(learner, batches)
    if kind == "maml":
        out["batched-unrolled"] = stepper(BatchedMAML(copy.deepcopy(model), MetaConfig(**cfg, backend="batched"), 10**6, unrolled=True), batches)
        # vmap over tasks, which the torch.func-vmap backend refuses on this net: timed only (meta-gradient
        # only, no outer step), to show what vmap would buy; its batch-norm second derivatives are wrong.
        cycle = itertools.cycle(batches)
        out["torch.func vmap*"] = lambda c=cycle: func_meta_gradient(model, next(c), cfg["inner_lr"], cfg["inner_steps"], True)
    for label, batched in (("floor (loop)", False), ("floor (batched)", True)):
        floors = itertools.cycle([floor_fn(kind, model, cfg, batch, batched) for batch in batches])
        out[label] = lambda floors=floors: next(floors)()
    return out


def compile_contenders(name: str, model, batches) -> dict:
    """The batched learner as is, and with its functional forward ``torch.compile``'d (first order only:
    double backward through compiled graphs is unsupported). Timed in a pass of their own, after the
    rest, so a slow compilation cannot cost the other numbers."""
    _, _, cfg = SETTINGS[name]
    out = {}
    for label, compiled in (("batched", False), ("batched+compile", True)):
        learner = build_learner(MetaConfig(**cfg, backend="batched"), copy.deepcopy(model), 10**6, seed=0)
        if compiled:
            learner.net._forward_grouped = torch.compile(learner.net._forward_grouped, dynamic=False)
            learner.net.forward_one = torch.compile(learner.net.forward_one, dynamic=False)
        out[label] = stepper(learner, batches)
    return out


def time_round_robin(fns: dict, repeats: int, device: str, clock) -> dict[str, dict[str, float]]:
    """{contender: {"median": s, "min": s}}; every repeat runs each contender once, in turn, timed by ``clock``."""
    for k, f in list(fns.items()):  # warm-up (and compilation) outside the timings
        try:
            f()
        except Exception as e:  # noqa: BLE001 - an optional compiled variant may fail; report and go on
            if "compile" not in k:
                raise
            print(f"  {k}: failed, left out ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            del fns[k]
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            synchronize(device)
            start = clock()
            f()
            synchronize(device)
            times[k].append(clock() - start)
    return {k: {"median": statistics.median(v), "min": min(v)} for k, v in times.items()}


def memory(model, sample, device: str, steps: int) -> dict[str, int]:
    cfg = dict(SETTINGS["maml-5"][2], inner_steps=steps)
    batch = sample(5, 15, 0).to(device)
    learners = {
        "reference": build_learner(MetaConfig(**cfg), copy.deepcopy(model), 10),
        "batched": build_learner(MetaConfig(**cfg, backend="batched"), copy.deepcopy(model), 10),
        "batched-unrolled": BatchedMAML(copy.deepcopy(model), MetaConfig(**cfg, backend="batched"), 10, unrolled=True),
    }
    for backend in LIBRARY_BACKENDS:
        try:
            learners[backend] = build_learner(MetaConfig(**cfg, backend=backend), copy.deepcopy(model), 10)
        except LibraryMissing:
            pass
    result = {}
    for name, learner in learners.items():
        if device.startswith("cuda"):
            learner.meta_step(batch)  # allocator warm-up
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            learner.meta_step(batch)
            torch.cuda.synchronize()
            result[name] = torch.cuda.max_memory_allocated() - base
        else:
            result[name] = autograd_saved_bytes(learner, batch)
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed meta-steps per contender (median reported); default: more for cheaper settings, "
                         f"{DEFAULT_REPEATS}")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    ap.add_argument("--compile", action="store_true",
                    help="last, also time the first-order batched learners with a torch.compile'd forward (slow to compile)")
    ap.add_argument("--only", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU only: torch intra-op threads (default 1); above 1 the clock is wall time")
    ap.add_argument("--no-memory", action="store_true", help="skip the second-order memory part (it does not depend on threads)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: give 1 or more timed meta-steps per contender")
    if args.threads < 1:
        raise SystemExit(f"--threads {args.threads}: give 1 or more (torch intra-op threads on CPU)")
    keep_freed_memory()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)  # 1 by default: PITFALLS section 4, shared noisy cores
    # With one intra-op thread torch computes in this thread, and its CPU time leaves out the time other
    # processes hold the shared cores. With more, it would miss the other threads' work; CUDA runs
    # asynchronously. Both need wall time.
    wall = args.device == "cuda" or args.threads > 1
    tick = time.perf_counter if wall else time.thread_time
    torch.manual_seed(0)
    model = OmniglotCNN(WAYS).to(args.device)
    sample, source = task_source()
    dev = device_name(args.device)  # the same name as the result rows' device column
    clock_name = "wall time" if wall else "thread CPU time"
    repeats = {name: args.repeats or DEFAULT_REPEATS[name] for name in args.only}
    print(f"limit benchmark | torch {torch.__version__} | {dev} | tasks: {source} | meta-batch {T} | repeats of {clock_name}: {repeats}")
    report = measurement(dev, tasks=source, repeats=repeats, clock=clock_name, timings={}, memory={})

    def save(report):  # after every part, so a run stopped by a time limit keeps what it finished
        write_json(args.json, report)
    for name in args.only:
        shots, query, _ = SETTINGS[name]
        batches = setting_batches(sample, name, args.device)
        med = time_round_robin(contenders(name, model, batches), repeats[name], args.device, tick)
        report["timings"][name] = med
        print(f"\n{name}: {SETTINGS[name][2]}")
        print(f"  {'':<18} {'median':>9}    {'min':>7}     median / floor (loop, batched)    min / min floor (loop, batched)")
        fl, fb = med["floor (loop)"], med["floor (batched)"]
        for k, v in med.items():
            extra = "" if k.startswith("floor") else (
                f"     x{v['median'] / fl['median']:.2f}  x{v['median'] / fb['median']:.2f}"
                f"                      x{v['min'] / fl['min']:.2f}  x{v['min'] / fb['min']:.2f}")
            print(f"  {k:<18} {v['median'] * 1e3:7.1f} ms {v['min'] * 1e3:7.1f} ms{extra}")
        ratio = lambda a, b, q: med[a][q] / med[b][q]  # noqa: E731
        if name.startswith("maml"):
            for k in [k for k in med if not k.startswith(("floor", "reference", "sampling"))]:
                print(f"  speed-up {k} vs higher (reference): x{ratio('reference', k, 'median'):.2f} (medians), "
                      f"x{ratio('reference', k, 'min'):.2f} (minima)")
        if name == "reptile":
            # Drawing a meta-batch should cost under 5% of a Reptile meta-step (else sampling, not maths, sets the pace).
            # Fresh task indices per call, as training draws them; the same clock as the steps.
            draws = iter(range(10**9))
            samp = time_round_robin({"sampling": lambda: sample(shots, query, next(draws))}, repeats[name], "cpu", tick)["sampling"]
            report["timings"][name]["sampling (CPU)"] = samp
            for k in ("reference", "batched"):
                print(f"  sampling a meta-batch (CPU): {samp['median'] * 1e3:.2f} ms = "
                      f"{100 * samp['median'] / med[k]['median']:.1f}% of a {k} Reptile meta-step (target < 5%)")
        save(report)
    if not args.no_memory:
        kind = "CUDA allocator peak" if args.device == "cuda" else "autograd saved-tensor bytes (peak)"
        print(f"\nsecond-order MAML memory, {kind}:")
        for steps in (5, 10):
            mem = memory(model, sample, args.device, steps)
            report["memory"][steps] = mem
            row = "  ".join(f"{k} {v / 2**20:7.1f} MiB" if v is not None else f"{k} (refuses the hooks)" for k, v in mem.items())
            print(f"  K={steps:<3} {row}  batched/reference x{mem['batched'] / mem['reference']:.2f}")
            save(report)
    if args.compile:
        report["compile"] = {}
        print("\ntorch.compile of the batched learners' forward (first order only):")
        for name in [n for n in args.only if not n.startswith("maml")]:
            batches = setting_batches(sample, name, args.device)
            med = time_round_robin(compile_contenders(name, model, batches), repeats[name], args.device, tick)
            report["compile"][name] = med
            gain = (f"gain x{med['batched']['median'] / med['batched+compile']['median']:.2f} (medians)"
                    if "batched+compile" in med else "compilation failed")
            print(f"  {name}: batched {med['batched']['median'] * 1e3:.1f} ms, {gain}")
            save(report)
    return report


if __name__ == "__main__":
    main()
