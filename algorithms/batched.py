"""The batched backend: Reptile, first-order and second-order MAML over the tasks of a meta-batch together.

Selected with ``MetaConfig(backend="batched")``. Each learner subclasses its
reference learner (``reptile.py`` / ``maml.py``) and only replaces
``meta_gradient``: epsilon annealing, the outer Adam, ``meta_step``,
checkpoints and the metrics are the reference code's, so the two backends are
interchangeable and checked against each other (``tests/test_batched_agreement.py``).

How the work is batched: the tasks are split into chunks and each chunk runs
its whole inner loop (and outer gradient) at once, with functional inner
optimisers (``functional.sgd_`` / ``AdamState``, ``torch._foreach_*`` ops).
- grouped mode (the default on CUDA, and for nets without convolutions): one
  chunk of all T tasks, weights stacked ``[T, *shape]``, evaluated by
  ``functional.TaskNet`` as grouped convolutions with the tasks folded into
  channels and one ``baddbmm`` per linear layer.
- loop mode (the default for conv nets on CPU): one chunk per task, the plain
  functional net on that task's weights. On this CPU the grouped convolutions
  measured slower (see ``functional.py``), a task's activations stay in cache
  from its forward to its backward, and nothing is stacked or copied.
Everything is ordinary autograd, so second derivatives through batch norm are
exact (no vmap, see PITFALLS section 1) and saved-tensor hooks work. One exception, first-order and
without a graph to keep: Reptile's loop mode on CPU takes each inner step with ``handwritten.HandwrittenNet``
(autograd's kernels without its graph: the same gradients) on weights laid out channels-last where the
reference learner's are (``models.channels_last_applies``; which rounds float32 differently from the
default layout, ``tests/test_handwritten.py``).

Second-order MAML: the meta-gradient of task t is
prod_{k=0}^{K-1} (I - alpha H_k) g_q, with H_k the support-loss Hessian at the
k-th inner iterate and g_q the query gradient at the adapted weights. By
default we compute it backwards, as a chain of Hessian-vector products,
instead of back-propagating through one unrolled graph:

    forward:   theta_{k+1} = theta_k - alpha grad L_s(theta_k)   (no graph kept; the iterates are stored)
    query:     v = grad L_q(theta_K) / T
    backward:  for k = K-1 .. 0:  v <- v - alpha * H_k v         (rebuild step k's graph, one double backward)

This is the same maths (reverse mode through the inner loop, rematerialising
each step's graph), equal to the unrolled result to rounding, but only one
inner step's graph is alive at a time, so autograd memory does not grow with
K. The price is one extra support forward/backward per inner step except the
last (whose graph is built once and reused). ``BatchedMAML(..., unrolled=True)``
back-propagates through one unrolled graph per chunk instead (no
recomputation; memory grows with K). ``python -m benchmarks.perf.limits`` measures
both against ``higher``: time and autograd-held bytes.

Reptile with ``persist_inner_state=True`` and Adam carries one optimiser's
moments from task to task, which is sequential by nature: this backend refuses
it (ValueError) rather than silently computing something else.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from datasets.tasks import TaskBatch

from .base import MetaConfig, checked_metrics, register, register_orders, task_loss
from .functional import AdamState, TaskNet, flat_views, memory_order, sgd_
from .handwritten import HandwrittenNet
from .maml import MAML
from .minibatch import minibatch_indices
from .models import channels_last_applies
from .reptile import Reptile


def _draw_minibatches(n: int, tasks: int, batch_size: int, steps: int, generator: torch.Generator) -> Tensor:
    """Indices [tasks, steps, batch]: the reference's draws, task after task, from the same generator."""
    return torch.stack([minibatch_indices(n, batch_size, steps, generator) for _ in range(tasks)])


class Chunk:
    """Tasks ``start:stop`` of a meta-batch, adapted together; ``single`` (one task, loop mode) drops the task dim."""

    def __init__(self, net: TaskNet, start: int, stop: int, single: bool):
        self.net, self.s, self.single = net, slice(start, stop), single

    def init(self, theta: list[Tensor]) -> list[Tensor]:
        """Fresh weights for these tasks, all equal to theta (plain tensors, safe to update in place)."""
        if self.single:
            return [p.detach().clone() for p in theta]
        return [t.clone() for t in self.net.stack([p.detach() for p in theta], self.s.stop - self.s.start)]

    def losses(self, params: list[Tensor], x: Tensor, y: Tensor) -> Tensor:
        """Each task's mean loss ``[tasks]``; ``x``/``y`` hold the whole meta-batch."""
        if self.single:
            t = self.s.start
            return task_loss(self.net.forward_one(params, x[t]), y[t]).reshape(1)
        return self.net.task_losses(params, x[self.s], y[self.s])[0]

    def grads(self, params: list[Tensor], x: Tensor, y: Tensor, create_graph: bool = False):
        """(per-task gradients w.r.t. ``params``, per-task losses); ``params`` become leaves unless create_graph."""
        leaves = params if create_graph else [p.detach().requires_grad_() for p in params]
        losses = self.losses(leaves, x, y)
        return list(torch.autograd.grad(losses.sum(), leaves, create_graph=create_graph)), losses, leaves

    def task_sum(self, tensors: list[Tensor]) -> list[Tensor]:
        return tensors if self.single else [t.sum(0) for t in tensors]


def chunks(net: TaskNet, T: int, device: torch.device, size: int | None = None) -> list[Chunk]:
    """All T tasks in one chunk in grouped mode, one per task in loop mode (``size`` overrides)."""
    loop = net.mode_for(device) == "loop"
    size = size or (1 if loop else T)
    return [Chunk(net, i, min(i + size, T), single=loop and size == 1) for i in range(0, T, size)]


def _batched_info(net: TaskNet, model: nn.Module) -> str:
    mode = net.mode_for(next(model.parameters()).device)
    return f"torch {torch.__version__} task-batched autograd, {mode} mode"


class BatchedReptile(Reptile):
    """Reptile with the tasks of a meta-batch adapted in chunks (see the module docstring)."""

    TASK_BY_TASK = False  # its own functional Adam and stacked weights: neither choice applies

    def __init__(self, model: nn.Module, config: MetaConfig, total_iterations: int, seed: int = 0, conv_mode: str = "auto"):
        if config.persist_inner_state and config.inner_optimizer == "adam":
            raise ValueError(
                "backend='batched' adapts the tasks of a meta-batch in parallel, so it cannot carry one inner Adam's "
                "moments from task to task (persist_inner_state=True, the official code's behaviour); "
                "set persist_inner_state=False, or use backend='reference'"
            )
        super().__init__(model, config, total_iterations, seed)
        self.net = TaskNet(model, conv_mode)
        self.hand = HandwrittenNet(model) if HandwrittenNet.supports(model) else None  # loop mode's inner step
        self.channels_last_loop = channels_last_applies(model)

    def _handwritten_loop(self, device: torch.device) -> bool:
        """Whether the loop mode's tasks take the handwritten step (and channels-last weights) on ``device``."""
        return self.hand is not None and device.type == "cpu" and self.net.mode_for(device) == "loop"

    def backend_info(self) -> str:
        info = _batched_info(self.net, self.model)
        if not self._handwritten_loop(next(self.model.parameters()).device):
            return info
        return f"{info}, handwritten inner backward" + (", channels-last" if self.channels_last_loop else "")

    def meta_gradient(self, batch: TaskBatch) -> tuple[list[Tensor], dict[str, float]]:
        """g = theta - mean_i theta_i, like ``Reptile.meta_gradient`` (same minibatches from ``self.generator``)."""
        c = self.config
        batch = self._like_model(batch)
        x, y = batch.support_x, batch.support_y
        T = len(batch)
        self.net.check_output_size(y[0])
        idx = _draw_minibatches(x.shape[1], T, c.inner_batch, c.inner_steps, self.generator).to(x.device)
        rows = torch.arange(T, device=x.device)[:, None]
        minibatches = [(x[rows, idx[:, k]], y[rows, idx[:, k]]) for k in range(c.inner_steps)]
        theta = [p.detach() for p in self.model.parameters()]
        total = [torch.zeros_like(p) for p in theta]
        losses = []
        for chunk in chunks(self.net, T, x.device):
            hand = chunk.single and self._handwritten_loop(x.device)
            # Adam steps the flat copy: one op per update, not one per tensor. The handwritten loop mode lays the
            # weights out channels-last where the reference learner does (models.channels_last_applies).
            flat, fast = flat_views(chunk.init(theta), channels_last=hand and self.channels_last_loop)
            adam = AdamState([flat], c.inner_lr, c.adam_beta1) if c.inner_optimizer == "adam" else None
            for xb, yb in minibatches:
                if hand:  # the same kernels as autograd's, without the graph
                    loss, _, grads = self.hand.loss_and_grads(fast, xb[chunk.s.start], yb[chunk.s.start])
                    task_losses = loss.reshape(1)
                else:
                    grads, task_losses, _ = chunk.grads(fast, xb, yb)
                if adam is None:
                    sgd_(fast, grads, c.inner_lr)
                else:
                    adam.step_([flat], [torch.cat([memory_order(g) for g in grads])])
                losses.append(task_losses.detach())
            torch._foreach_add_(total, chunk.task_sum(fast))
        grads = [t - s / T for t, s in zip(theta, total)]
        return grads, checked_metrics(self, grads, losses)


class BatchedMAML(MAML):
    """MAML (first or second order) with the tasks of a meta-batch adapted in chunks."""

    def __init__(self, model: nn.Module, config: MetaConfig, total_iterations: int, seed: int = 0,
                 conv_mode: str = "auto", unrolled: bool = False, task_chunk: int | None = None):
        if task_chunk is not None and task_chunk < 1:
            raise ValueError(f"task_chunk must be None (automatic) or >= 1, got {task_chunk}")
        super().__init__(model, config, total_iterations, seed)
        self.net = TaskNet(model, conv_mode)
        self.unrolled = unrolled
        self.task_chunk = task_chunk

    def backend_info(self) -> str:
        how = "first order" if self.config.first_order else "unrolled graph" if self.unrolled else "HVP chain"
        return f"{_batched_info(self.net, self.model)}, {how}"

    def meta_gradient(self, batch: TaskBatch) -> tuple[list[Tensor], dict[str, float]]:
        """Mean over tasks of d L_query(theta'_K) / d theta, like ``MAML.meta_gradient``; also left in ``.grad``."""
        batch = self._like_model(batch)
        xs, ys = batch.support_x, batch.support_y
        T = len(batch)
        params = list(self.model.parameters())
        self.net.check_output_size(ys[0])
        step = (self._first_order if self.config.first_order else self._unrolled if self.unrolled else self._hvp_chain)
        grads = [torch.zeros_like(p) for p in params]
        q_losses, s_losses = [], []
        for chunk in chunks(self.net, T, xs.device, self.task_chunk):
            v, q, s = step(chunk, params, batch)
            torch._foreach_add_(grads, chunk.task_sum(v))
            q_losses.append(q)
            s_losses.append(s)
        torch._foreach_div_(grads, T)
        for p, g in zip(params, grads):
            p.grad = g
        return [g.clone() for g in grads], checked_metrics(self, grads, q_losses, support_loss=s_losses)

    # Each returns (per-task outer gradients of this chunk, per-task query losses, per-task first support losses).

    def _first_order(self, chunk: Chunk, params, batch):
        xs, ys, xq, yq = batch.tensors()
        fast, s_loss = chunk.init(params), None
        for _ in range(self.config.inner_steps):
            grads, losses, _ = chunk.grads(fast, xs, ys)
            s_loss = losses.detach() if s_loss is None else s_loss
            sgd_(fast, grads, self.config.inner_lr)
        v, q, _ = chunk.grads(fast, xq, yq)
        return v, q.detach(), s_loss

    def _hvp_chain(self, chunk: Chunk, params, batch):
        xs, ys, xq, yq = batch.tensors()
        alpha, K = self.config.inner_lr, self.config.inner_steps
        fast, iterates, s_loss = chunk.init(params), [], None
        for _ in range(K - 1):  # theta_0 .. theta_{K-2}, kept; stepping out of place keeps them intact
            grads, losses, _ = chunk.grads(fast, xs, ys)
            s_loss = losses.detach() if s_loss is None else s_loss
            iterates.append(fast)
            fast = torch._foreach_add(fast, grads, alpha=-alpha)
        iterates.append(fast)
        # The last inner step is built with its graph, which the first HVP of the chain then reuses.
        leaves = [w.requires_grad_() for w in fast]
        g, losses, _ = chunk.grads(leaves, xs, ys, create_graph=True)
        s_loss = losses.detach() if s_loss is None else s_loss
        with torch.no_grad():
            adapted = [w - alpha * gi for w, gi in zip(leaves, g)]
        v, q, _ = chunk.grads(adapted, xq, yq)
        for k in range(K - 1, -1, -1):
            if k < K - 1:
                leaves = [w.requires_grad_() for w in iterates[k]]
                g, _, _ = chunk.grads(leaves, xs, ys, create_graph=True)
            hv = torch.autograd.grad(g, leaves, grad_outputs=v)
            del g  # frees step k's graph before step k-1's is built
            torch._foreach_add_(v, hv, alpha=-alpha)
        return v, q.detach(), s_loss

    def _unrolled(self, chunk: Chunk, params, batch):
        xs, ys, xq, yq = batch.tensors()
        base = [w.requires_grad_() for w in chunk.init(params)]
        fast, s_loss = base, None
        for _ in range(self.config.inner_steps):
            g, losses, _ = chunk.grads(fast, xs, ys, create_graph=True)
            s_loss = losses.detach() if s_loss is None else s_loss
            fast = [w - self.config.inner_lr * gi for w, gi in zip(fast, g)]
        q = chunk.losses(fast, xq, yq)
        return list(torch.autograd.grad(q.sum(), base)), q.detach(), s_loss


@register("reptile", backend="batched")
def build_batched_reptile(model: nn.Module, config: MetaConfig, total_iterations: int, seed: int = 0) -> BatchedReptile:
    return BatchedReptile(model, config, total_iterations, seed)


# Second-order MAML through the Hessian-vector-product chain; first-order without it.
register_orders(BatchedMAML, "maml", "fomaml", backend="batched")
