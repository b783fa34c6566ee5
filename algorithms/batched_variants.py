"""The batched backend of iMAML and ANIL: the tasks of a meta-batch in chunks, as ``batched.py`` does for MAML.

Selected with ``MetaConfig(backend="batched")``; the maths, checkpoints and metrics are the reference
learners' (``imaml.py``, ``anil.py``), which ``tests/test_imaml.py`` / ``tests/test_anil.py`` check
these against in float64.

- iMAML: each chunk's inner gradient descent runs on stacked per-task weights (first-order gradients,
  nothing kept), then conjugate gradient solves every task's system at once: Hessian-vector products of
  the chunk's summed support loss give each task its own H_t v_t (the tasks share no weights), and the
  CG step sizes are per task (``cg.conjugate_gradient`` with a per-task dot product).
- ANIL: the body runs through ``functional.TaskNet`` on the chunk's tasks (the same body weights for
  every task, per-task batch-norm statistics), and the head's inner loop is one batched linear map per
  step for the whole chunk (``baddbmm``), differentiated (second order) or not (first order).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from datasets.tasks import TaskBatch

from .anil import ANIL, split_head
from .base import MetaConfig, checked_metrics, register, register_orders
from .batched import Chunk, _batched_info, chunks
from .cg import conjugate_gradient
from .functional import TaskNet
from .imaml import IMAML


def _per_task(chunk: Chunk):
    """(dot, scale) for ``conjugate_gradient`` over the chunk's tasks: one CG system per task."""
    if chunk.single:
        return (lambda a, b: sum((x * y).sum() for x, y in zip(a, b)).reshape(1),
                lambda v, s: [t * s[0] for t in v])

    def dot(a, b):
        return sum((x * y).reshape(x.shape[0], -1).sum(1) for x, y in zip(a, b))

    def scale(v, s):
        return [t * s.reshape(-1, *([1] * (t.dim() - 1))) for t in v]
    return dot, scale


class BatchedIMAML(IMAML):
    """iMAML with the tasks of a meta-batch solved in chunks (see the module docstring)."""

    def __init__(self, model: nn.Module, config: MetaConfig, total_iterations: int, seed: int = 0, conv_mode: str = "auto"):
        super().__init__(model, config, total_iterations, seed)
        self.net = TaskNet(model, conv_mode)

    def backend_info(self) -> str:
        return f"{_batched_info(self.net, self.model)}, CG {self.config.cg_steps} steps per task"

    def meta_gradient(self, batch: TaskBatch) -> tuple[list[Tensor], dict[str, float]]:
        batch = self._like_model(batch)
        c = self.config
        xs, ys, xq, yq = batch.tensors()
        T = len(batch)
        params = list(self.model.parameters())
        self.net.check_output_size(ys[0])
        grads = [torch.zeros_like(p) for p in params]
        q_losses, s_losses, residuals = [], [], []
        for chunk in chunks(self.net, T, xs.device):
            theta = chunk.init(params)
            phi, first = [t.clone() for t in theta], None
            for _ in range(c.inner_steps):
                g, losses, leaves = chunk.grads(phi, xs, ys)
                first = losses.detach() if first is None else first
                with torch.no_grad():
                    phi = [w - c.inner_lr * (gi + c.imaml_lambda * (w - t)) for w, gi, t in zip(leaves, g, theta)]
            leaves = [w.detach().requires_grad_() for w in phi]
            g_q, q, _ = chunk.grads(leaves, xq, yq)
            g_s, _, _ = chunk.grads(leaves, xs, ys, create_graph=True)

            def apply_a(v, g_s=g_s, leaves=leaves):
                hv = torch.autograd.grad(g_s, leaves, grad_outputs=v, retain_graph=True)
                return [vi + hi / c.imaml_lambda for vi, hi in zip(v, hv)]

            dot, scale = _per_task(chunk)
            x, residual = conjugate_gradient(apply_a, [t.detach() for t in g_q], c.cg_steps, dot, scale)
            torch._foreach_add_(grads, chunk.task_sum([t.detach() for t in x]), alpha=1.0 / T)
            q_losses.append(q.detach())
            s_losses.append(first if first is not None else q.detach())
            residuals.append(residual.detach())
        for p, g in zip(params, grads):
            p.grad = g.clone()
        return grads, checked_metrics(self, grads, q_losses, support_loss=s_losses, cg_residual=residuals)


class BatchedANIL(ANIL):
    """ANIL with the tasks of a meta-batch in chunks (see the module docstring)."""

    def __init__(self, model: nn.Module, config: MetaConfig, total_iterations: int, seed: int = 0, conv_mode: str = "auto"):
        super().__init__(model, config, total_iterations, seed)
        body, head = split_head(model, config.head_modules)
        self.body_net = TaskNet(body, conv_mode, needs_head=False)
        self.head_net = TaskNet(head, conv_mode)
        self.n_body = len(list(body.parameters()))

    def backend_info(self) -> str:
        return f"{_batched_info(self.body_net, self.model)} body, batched head"

    def meta_gradient(self, batch: TaskBatch) -> tuple[list[Tensor], dict[str, float]]:
        batch = self._like_model(batch)
        xs, ys, xq, yq = batch.tensors()
        T = len(batch)
        params = list(self.model.parameters())
        body_p, head_p = params[:self.n_body], params[self.n_body:]
        self.head_net.check_output_size(ys[0])
        for p in params:
            p.grad = None
        second_order = not self.config.first_order
        q_losses, s_losses = [], []
        for chunk in chunks(self.body_net, T, xs.device):
            sl = chunk.s
            n = sl.stop - sl.start
            # Views of the shared weights, one per task: gradients flow back to the meta-parameters.
            body = TaskNet.stack(body_p, n)
            with torch.no_grad():  # a leaf, as in the reference: the support graph is rebuilt at the end
                f_s = self.body_net(body, xs[sl])
            f_s.requires_grad_(second_order)
            f_q = self.body_net(body, xq[sl])
            fast, first = TaskNet.stack(head_p, n), None
            for _ in range(self.config.inner_steps):
                losses, _ = self.head_net.task_losses(fast, f_s, ys[sl])
                first = losses.detach() if first is None else first
                g = torch.autograd.grad(losses.sum(), fast, create_graph=second_order)
                fast = [w - self.config.inner_lr * gi for w, gi in zip(fast, g)]
            q, _ = self.head_net.task_losses(fast, f_q, yq[sl])
            (q.sum() / T).backward()
            if second_order:
                self.body_net(TaskNet.stack(body_p, n), xs[sl]).backward(f_s.grad)
            q_losses.append(q.detach())
            s_losses.append(first)
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        return grads, checked_metrics(self, grads, q_losses, support_loss=s_losses)


@register("imaml", backend="batched")
def build_batched_imaml(model: nn.Module, config: MetaConfig, total_iterations: int, seed: int = 0) -> BatchedIMAML:
    return BatchedIMAML(model, config, total_iterations, seed)


register_orders(BatchedANIL, "anil", "foanil", backend="batched")
