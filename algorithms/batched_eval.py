"""Batched evaluation: fine-tune many evaluation tasks at once, each with its own weights and batch-norm statistics.

The same maths as the serial evaluator (``evaluation.py``, the reference; the config and checks both use are
``eval_protocol.py``), task for task: the same
tasks, the same minibatch order per task (``finetune_generator(seed, index)``), the same optimiser
(``functional.AdamState`` reproduces ``torch.optim.Adam``, ``functional.sgd_`` plain SGD), the same
two protocols. Tasks are processed in chunks of ``task_batch``; each chunk's weights are stacked
``[T, *shape]`` and run through ``functional.TaskNet``, so batch norm computes every task's own
statistics, exactly as the serial evaluator's one-task batches do.

- transductive: one forward of each task's whole query set;
- non-transductive: for each query position j, one forward of [support + query j] for every task of
  the chunk at once (batch statistics of the support plus that one image, per task);
- regression (sine): the MSE of each task's query set.

In float64 the per-task scores equal the serial evaluator's (``tests/test_batched_eval.py``). On CPU the
network runs task by task (``CONV_MODE``) on the serial evaluator's memory layout, and Adam is the fused
kernel on each task's own tensors, so float32 scores and fine-tuned weights are bit-identical too; in loop
mode, where ``handwritten.HandwrittenNet`` supports the net (on CPU, every weight fine-tuned), each task takes
all its steps in turn with the serial evaluator's handwritten inner step, its weights and moments in cache.
On CUDA a grouped convolution rounds differently from T separate ones, which can flip a prediction whose two top logits
are within rounding; ``python -m benchmarks.perf.eval_throughput --agreement`` counts such flips on the
default suite's pools, for both modes.

    per_task, metric = evaluate_batched(model, pool, ways=5, shots=1, config=EvalConfig(...), device="cpu")
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .eval_protocol import EvalConfig, adapted_parameters, check_fine_tuning, check_scores, finetune_generator
from .functional import AdamState, TaskNet, flat_views, sgd_
from .handwritten import HandwrittenNet, laid_out_like
from .minibatch import minibatch_indices
from .models import channels_last_applies

TASK_BATCH = {"cpu": 25, "cuda": 500}
"""Tasks fine-tuned together per device type (memory grows linearly with it)."""
CONV_MODE = {"cpu": "loop", "cuda": "grouped"}
"""``TaskNet`` mode per device type. On CPU, ``loop`` runs each task's own forward (the serial evaluator's
very kernels), so float32 scores stay bit-identical to the serial evaluator's while the optimiser steps,
sampling and bookkeeping are batched; ``grouped`` was faster still here but changes float32 rounding
(``python -m benchmarks.perf.eval_throughput`` measures both)."""


def evaluate_batched(model: nn.Module, pool, ways: int, shots: int, config: EvalConfig, device: torch.device,
                     progress: bool = False, diverge_factor: float | None = None,
                     task_batch: int | None = None, conv_mode: str = "auto") -> tuple[list[float], str]:
    """(per-task scores in task-index order, ``accuracy`` or ``mse``); ``model`` is left untouched.

    ``conv_mode``: ``functional.TaskNet``'s way of batching the network (``auto``: ``CONV_MODE`` of the device).
    """
    net = TaskNet(model, CONV_MODE.get(device.type, "auto") if conv_mode == "auto" else conv_mode)
    theta = [p.detach() for p in model.parameters()]
    size = task_batch or TASK_BATCH.get(device.type, 50)
    starts = range(0, config.num_tasks, size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"evaluate {ways}-way {shots}-shot (batched)", unit="chunk")
    per_task: list[float] = []
    metric = "accuracy"
    for start in starts:
        indices = range(start, min(start + size, config.num_tasks))
        batch = pool.sample_batch(ways, shots, config.query, config.seed, indices).to(device, dtype=theta[0].dtype)
        if batch.query_y.is_floating_point():
            metric = "mse"
        net.check_output_size(batch.support_y[0])
        fast = fine_tune(net, theta, batch, config, indices, diverge_factor)
        per_task += score_chunk(net, fast, batch, config.transductive, start)
    return per_task, metric


def fine_tune(net: TaskNet, theta: list, batch, config: EvalConfig, indices: range, diverge_factor) -> list:
    """Each task's weights after ``config.inner_steps`` optimiser steps on its support set ([T, *shape] each).

    Where the serial evaluator keeps a CNN's weights channels-last (``models.channels_last_applies``), each
    task's slice of a stacked 4-D weight is laid out channels-last too, so the loop mode runs the very same
    kernels on the very same memory layout.
    """
    T = len(indices)
    layout = per_task_channels_last if channels_last_applies(net.model) else torch.Tensor.clone
    fast = [layout(t) if t.dim() == 5 else t.clone() for t in net.stack(theta, T)]
    if config.inner_steps == 0:
        return fast
    x, y = batch.support_x, batch.support_y
    idx = torch.stack([minibatch_indices(x.shape[1], config.inner_batch, config.inner_steps,
                                         finetune_generator(config.seed, i)) for i in indices])
    idx = idx.to(x.device)
    rows = torch.arange(T, device=x.device)[:, None]
    # Only the adapted tensors (all, or the head's: EvalConfig.adapt_head_modules) get gradients and steps.
    n = len(fast) - len(adapted_parameters(net.model, config.adapt_head_modules))
    frozen, fast = fast[:n], fast[n:]
    if net.mode_for(x.device) == "loop" and not frozen and HandwrittenNet.supports(net.model):
        first, last = _fine_tune_task_by_task(net.model, fast, x, y, idx, config)
        check_fine_tuning(first, last, indices.start, diverge_factor)
        return fast
    # On CPU the fused kernel on each task's own tensors: the serial evaluator's very updates, bit for bit
    # (on one flat tensor its vector and scalar parts would fall on other elements). Elsewhere one flat tensor.
    per_task = x.device.type == "cpu"
    if per_task:
        params = [w[t] for w in fast for t in range(T)]
    else:
        flat, fast = flat_views(fast)
        params = [flat]
    adam = AdamState(params, config.inner_lr, config.adam_beta1) if config.inner_optimizer == "adam" else None
    first = last = None
    for k in range(config.inner_steps):
        xk, yk = x[rows, idx[:, k]], y[rows, idx[:, k]]
        leaves = [w.detach().requires_grad_() for w in fast]
        losses, _ = net.task_losses(frozen + leaves, xk, yk)
        grads = torch.autograd.grad(losses.sum(), leaves)
        with torch.no_grad():
            if per_task:  # each gradient in its weight's memory layout, as autograd hands the serial optimiser
                grads = [laid_out_like(w, g) for w, g in zip(fast, grads)]
            if adam is None:
                sgd_(fast, list(grads), config.inner_lr)
            elif per_task:
                adam.step_(params, [g[t] for g in grads for t in range(T)])
            else:
                adam.step_([flat], [torch.cat([g.reshape(-1) for g in grads])])
        last = losses.detach()
        first = last if first is None else first
    check_fine_tuning(first, last, indices.start, diverge_factor)
    return frozen + fast


def _fine_tune_task_by_task(model: nn.Module, fast: list, x: Tensor, y: Tensor, idx: Tensor,
                            config: EvalConfig) -> tuple[Tensor, Tensor]:
    """On CPU: each task's steps in turn on its own slices of ``fast`` (in place), with the serial evaluator's
    handwritten inner step and Adam on that task's tensors, so one task's weights and moments stay in cache;
    the same bits as the serial evaluator. Returns each task's first and last fine-tuning loss."""
    net = HandwrittenNet(model)
    first, last = [], []
    for t in range(x.shape[0]):
        own = [w[t] for w in fast]  # views: the steps update ``fast`` in place
        adam = AdamState(own, config.inner_lr, config.adam_beta1) if config.inner_optimizer == "adam" else None
        xs, ys = x[t][idx[t]], y[t][idx[t]]  # every step's minibatch in one gather
        for k in range(config.inner_steps):
            loss, _, grads = net.loss_and_grads(own, xs[k], ys[k])
            if adam is None:
                sgd_(own, grads, config.inner_lr)
            else:
                adam.step_(own, grads)
            if k == 0:
                first.append(loss)
        last.append(loss)
    return torch.stack(first), torch.stack(last)


def per_task_channels_last(stacked: Tensor) -> Tensor:
    """A copy of stacked 4-D weights ``[T, O, I, kh, kw]`` whose every task slice is channels-last."""
    T, O, I, kh, kw = stacked.shape
    return torch.empty((T, O, kh, kw, I), dtype=stacked.dtype, device=stacked.device).permute(0, 1, 4, 2, 3).copy_(stacked)


@torch.no_grad()
def score_chunk(net: TaskNet, fast: list, batch, transductive: bool, start: int) -> list[float]:
    """Accuracy (percent) or MSE of each task of the chunk on its query set, as ``evaluation.score``."""
    sx, _, qx, qy = batch.tensors()
    if qy.is_floating_point():
        values = F.mse_loss(net(fast, qx), qy, reduction="none").reshape(qy.shape[0], -1).mean(1)
        check_scores(values, start)
        return values.tolist()
    if transductive:
        logits = net(fast, qx)
    else:
        logits = torch.stack([net(fast, torch.cat([sx, qx[:, j:j + 1]], 1))[:, -1] for j in range(qx.shape[1])], 1)
    check_scores(logits.abs().amax(dim=(1, 2)), start)
    return (100.0 * (logits.argmax(-1) == qy).double().mean(1)).tolist()
