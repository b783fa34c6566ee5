"""MAML and first-order MAML written with torch.func: ``backend="torch.func"`` (tasks looped) and
``backend="torch.func-vmap"`` (tasks vmapped; refused on networks with batch norm).

The textbook torch.func form: ``functional_call`` + ``grad`` for the inner loop, ``grad`` of the mean
query loss for the outer step (reverse over reverse); first order detaches the inner gradients.

- ``torch.func`` loops over the tasks: exact (``tests/test_libraries.py`` checks it against the
  reference and against finite differences).
- ``torch.func-vmap`` vmaps the tasks. In this torch, vmap's batch-norm batching rule gives WRONG
  second-order gradients (measured in float64 on a conv net with batch norm: max |vmap - loop| = 1.8e-2,
  finite differences agree with the loop; PITFALLS section 1, ``tests/test_func_maml.py``), so it is
  refused for any network with a BatchNorm layer; on networks without one it agrees with the loop.
torch.func refuses saved-tensor hooks, so rows of these backends have no autograd-bytes figure.

    grads = func_meta_gradient(model, batch, inner_lr=0.1, inner_steps=5, vmap_tasks=False)
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from datasets.tasks import TaskBatch

from ..base import MetaConfig, checked_metrics, register_orders, task_loss
from ..maml import MAML

VMAP_BN_ERROR = (
    "backend 'torch.func-vmap' refuses networks with batch norm: in torch {version}, vmap's batch-norm batching "
    "rule gives wrong second-order gradients (measured in float64: max |vmap - task loop| = 1.8e-2 on a conv net "
    "with batch norm, central finite differences agree with the loop; tests/test_func_maml.py). Use "
    "backend='torch.func' (tasks looped, exact) or a network without BatchNorm layers")


def func_meta_gradient(model: nn.Module, batch: TaskBatch, inner_lr: float, inner_steps: int,
                       vmap_tasks: bool = False, first_order: bool = False) -> tuple[list[Tensor], Tensor]:
    """(mean over tasks of d L_query(theta'_K) / d theta in ``model.parameters()`` order, mean query loss)."""
    names = [n for n, _ in model.named_parameters()]

    def loss_at(params, x, y):
        return task_loss(functional_call(model, params, (x,)), y)

    def adapted_query_loss(params, xs, ys, xq, yq):
        fast = params
        for _ in range(inner_steps):
            g = grad(loss_at)(fast, xs, ys)
            fast = {n: fast[n] - inner_lr * (g[n].detach() if first_order else g[n]) for n in names}
        return loss_at(fast, xq, yq)

    def meta_loss(params):
        xs, ys, xq, yq = batch.tensors()
        if vmap_tasks:
            losses = vmap(adapted_query_loss, in_dims=(None, 0, 0, 0, 0))(params, xs, ys, xq, yq)
        else:
            losses = torch.stack([adapted_query_loss(params, xs[t], ys[t], xq[t], yq[t]) for t in range(len(batch))])
        return losses.mean(), losses.mean()

    theta = {n: p.detach() for n, p in model.named_parameters()}
    g, loss = grad(meta_loss, has_aux=True)(theta)
    return [g[n] for n in names], loss


class FuncMAML(MAML):
    def __init__(self, model: nn.Module, config: MetaConfig, total_iterations: int, seed: int = 0,
                 vmap_tasks: bool = False):
        if vmap_tasks and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ValueError(VMAP_BN_ERROR.format(version=torch.__version__))
        super().__init__(model, config, total_iterations, seed)
        self.vmap_tasks = vmap_tasks

    def backend_info(self) -> str:
        return f"torch {torch.__version__} torch.func ({'vmap over tasks' if self.vmap_tasks else 'task loop'})"

    def meta_gradient(self, batch):
        batch = self._like_model(batch)
        grads, loss = func_meta_gradient(self.model, batch, self.config.inner_lr, self.config.inner_steps,
                                         self.vmap_tasks, self.config.first_order)
        for p, g in zip(self.model.parameters(), grads):
            p.grad = g.clone()
        return grads, checked_metrics(self, grads, [loss])


for _backend, _vmap in (("torch.func", False), ("torch.func-vmap", True)):
    register_orders(FuncMAML, "maml", "fomaml", backend=_backend, vmap_tasks=_vmap)
