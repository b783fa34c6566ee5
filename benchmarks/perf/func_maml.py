"""Second-order MAML written with torch.func, as timing contenders for the limit benchmark.

    from benchmarks.perf.func_maml import func_meta_gradient
    grads = func_meta_gradient(model, batch, inner_lr=0.1, inner_steps=5, vmap_tasks=False)

The textbook torch.func form: ``functional_call`` + ``grad`` for the inner loop,
``grad`` of the mean query loss for the outer step (reverse over reverse), the
tasks either in a Python loop or under ``vmap``. ``python -m benchmarks.perf.limits``
times both beside the higher reference and the batched backend, so the choice
not to build the batched backend on them is measured, not assumed:

- ``vmap_tasks=True`` is WRONG for nets with batch norm: vmap's batch-norm rule
  gives wrong second derivatives in torch 2.13 (PITFALLS section 1, and
  ``tests/test_func_maml.py`` checks it against finite differences). It is timed
  only to show what it would buy.
- ``vmap_tasks=False`` is exact (the test checks it against the reference).

Neither is a registered backend: on this project's CPU both measured slower
than the higher reference (results/limits/cpu.json), and torch.func refuses the
saved-tensor hooks the memory benchmark uses (PITFALLS section 2).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from algorithms import task_loss
from datasets.tasks import TaskBatch


def _loss(model: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
    return task_loss(functional_call(model, params, (x,)), y)


def func_meta_gradient(model: nn.Module, batch: TaskBatch, inner_lr: float, inner_steps: int,
                       vmap_tasks: bool = False) -> list[Tensor]:
    """Mean over tasks of d L_query(theta'_K) / d theta, in ``model.parameters()`` order."""
    names = [n for n, _ in model.named_parameters()]

    def adapted_query_loss(params, xs, ys, xq, yq):
        fast = params
        for _ in range(inner_steps):
            g = grad(lambda p: _loss(model, p, xs, ys))(fast)
            fast = {n: fast[n] - inner_lr * g[n] for n in names}
        return _loss(model, fast, xq, yq)

    def meta_loss(params):
        xs, ys, xq, yq = batch.tensors()
        if vmap_tasks:
            return vmap(adapted_query_loss, in_dims=(None, 0, 0, 0, 0))(params, xs, ys, xq, yq).mean()
        return torch.stack([adapted_query_loss(params, xs[t], ys[t], xq[t], yq[t]) for t in range(len(batch))]).mean()

    theta = {n: p.detach() for n, p in model.named_parameters()}
    g = grad(meta_loss)(theta)
    return [g[n] for n in names]
