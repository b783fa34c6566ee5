"""Reptile (Nichol, Achiam, Schulman 2018), written as the official supervised-reptile code does it.

For every task of the meta-batch, start from the meta-parameters theta, take
``inner_steps`` optimiser steps (Adam with beta1 = ``adam_beta1``, or SGD) on
minibatches of ``inner_batch`` examples cycled through the task's support set,
and call the result theta_i. Then

    theta <- theta + epsilon * mean_i (theta_i - theta),
    epsilon = lerp(meta_lr, meta_lr_final, iteration / total_iterations).

With ``persist_inner_state`` the inner Adam keeps its moments (and step count)
across tasks and outer steps, as the official code does (it only restores the
trainable variables between tasks); otherwise a fresh optimiser starts each task.
The query part of a training batch is not used.

Speed without other maths: the inner Adam is torch's fused kernel (``make_inner_optimizer``), and a CNN on
CPU in float32 keeps its weights, so its activations, channels-last (``models.channels_last_on_cpu``: oneDNN's
NHWC kernels and batch norm are faster at these small batches). Both change only float32 rounding (float64
results agree to 1e-10; ``tests/test_reptile.py``). Each inner step is ``handwritten.InnerStep``: on CPU the
forward and backward kernels autograd would call, without its graph, and the fused Adam's kernel called
directly (the same bits as autograd and ``optimizer.step()``). ``python -m benchmarks.perf.step_variants``
times each choice against the previous ones.

    learner = build_learner(MetaConfig(algorithm="reptile"), model, total_iterations=100_000)
    metrics = learner.meta_step(batch)  # {"loss": mean inner loss, "epsilon": ...}
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from datasets.tasks import TaskBatch

from .base import MetaConfig, MetaLearner, check_output_size, checked_metrics, register
from .handwritten import HandwrittenNet, InnerStep
from .minibatch import minibatch_indices
from .models import channels_last_on_cpu


def make_inner_optimizer(params, name: str, lr: float, adam_beta1: float) -> torch.optim.Optimizer:
    """The inner optimiser shared by Reptile's training loop and the evaluator's fine-tuning.

    Adam is torch's fused kernel where the parameters' device has one (CPU, CUDA): one pass per tensor
    instead of a dozen elementwise ops; it rounds float32 differently from the per-tensor ops (float64
    agreement to 1e-10). The batched evaluator runs the same kernel on each task's own tensors
    (``batched_eval.fine_tune``), so the two evaluators stay bit-identical on CPU.
    """
    params = list(params)
    if name == "adam":
        fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(params, lr=lr, betas=(adam_beta1, 0.999), **({"fused": True} if fused else {"foreach": True}))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"inner optimiser must be 'adam' or 'sgd', got {name!r}")


@register("reptile")
class Reptile(MetaLearner):
    TASK_BY_TASK = True
    """The inner loop runs one task's network at a time, where channels-last weights were measured faster."""

    def __init__(self, model: nn.Module, config: MetaConfig, total_iterations: int, seed: int = 0):
        super().__init__(model, config, total_iterations, seed)
        self.channels_last = self.TASK_BY_TASK and channels_last_on_cpu(self.model)  # before Adam's moments exist
        self.inner_optimizer = self._new_inner_optimizer()
        self.handwritten = True  # the inner step without autograd's graph (handwritten.py; the same bits)
        self._step: InnerStep | None = None

    def _new_inner_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        return make_inner_optimizer(self.model.parameters(), c.inner_optimizer, c.inner_lr, c.adam_beta1)

    def _inner_step(self) -> InnerStep:
        """The inner step for the current inner optimiser (a new one each task without persistent state)."""
        step = self._step
        if (step is None or step.optimizer is not self.inner_optimizer or step.model is not self.model
                or step.handwritten != self.handwritten):
            self._step = InnerStep(self.model, self.inner_optimizer, self.handwritten)
        return self._step

    def backend_info(self) -> str:
        fused = self.inner_optimizer.defaults.get("fused") and "fused inner Adam"
        layout = self.channels_last and "channels-last"
        hand = self.handwritten and HandwrittenNet.supports(self.model) and "handwritten inner backward"
        return ", ".join(filter(None, [super().backend_info(), fused, layout, hand]))

    def epsilon(self) -> float:
        """Outer step size at the current iteration (linear annealing, as the official code)."""
        frac = self.iteration / self.total_iterations
        return (1 - frac) * self.config.meta_lr + frac * self.config.meta_lr_final

    def meta_gradient(self, batch: TaskBatch) -> tuple[list[Tensor], dict[str, float]]:
        """Reptile's update direction g = theta - mean_i theta_i (so the step is theta <- theta - epsilon * g).

        The meta-parameters are left unchanged, but like a meta-step this
        consumes minibatch draws from ``self.generator`` and, with
        ``persist_inner_state``, advances the inner Adam's moments.
        Raises DivergedError if an inner loss or the update is not finite.
        """
        batch = self._like_model(batch)
        params = list(self.model.parameters())
        theta = [p.detach().clone() for p in params]
        moved = [torch.zeros_like(p) for p in params]
        losses: list[Tensor] = []
        c = self.config
        draws = self.draw_minibatches(batch.support_x.shape[1], len(batch))
        for i in range(len(batch)):
            if not c.persist_inner_state:
                self.inner_optimizer = self._new_inner_optimizer()
            x, y = batch.support_x[i], batch.support_y[i]
            inner_step = self._inner_step()
            xs, ys = x[draws[i]], y[draws[i]]  # every step's minibatch in one gather
            for step in range(len(draws[i])):
                check = None
                if i == 0 and step == 0:
                    # The whole support set fixes the ways: a minibatch may miss the last label.
                    ways = None if y.is_floating_point() else int(y.max()) + 1
                    check = lambda out, target=ys[0], ways=ways: check_output_size(out, target, ways=ways)  # noqa: E731
                losses.append(inner_step(xs[step], ys[step], check))
            with torch.no_grad():  # foreach: the same elementwise kernels, one call for all tensors
                torch._foreach_add_(moved, torch._foreach_sub(params, theta))
                torch._foreach_copy_(params, theta)
        self.inner_optimizer.zero_grad(set_to_none=True)
        grads = torch._foreach_div(torch._foreach_neg(moved), len(batch))
        return grads, checked_metrics(self, grads, losses)

    def apply_meta_gradient(self, grads: list[Tensor]) -> dict[str, float]:
        eps = self.epsilon()
        with torch.no_grad():
            torch._foreach_sub_(list(self.model.parameters()), torch._foreach_mul(grads, eps))
        self.iteration += 1
        return {"epsilon": eps}

    def draw_minibatches(self, n: int, tasks: int) -> list[Tensor]:
        """Each task's inner minibatch indices ``[steps, batch]``, task after task from ``self.generator`` (the
        official order)."""
        c = self.config
        return [minibatch_indices(n, c.inner_batch, c.inner_steps, self.generator) for _ in range(tasks)]

    def skip_tasks(self, batch: TaskBatch, count: int) -> None:
        self.draw_minibatches(batch.support_x.shape[1], count)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "inner_optimizer": self.inner_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.inner_optimizer = self._new_inner_optimizer()
        self.inner_optimizer.load_state_dict(state["inner_optimizer"])
