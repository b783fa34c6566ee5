"""MAML (Finn, Abbeel, Levine 2017): second order through ``higher``, and first-order MAML.

For each task, adapt theta with ``inner_steps`` plain SGD steps of size alpha
(``inner_lr``) on the whole support set,

    theta'_0 = theta,   theta'_{k+1} = theta'_k - alpha * grad L_support(theta'_k),

then take the query loss at the adapted weights. The outer Adam (lr
``meta_lr``) steps on the mean over tasks of grad_theta L_query(theta'_K).

- Second order (``maml``): the inner gradients are part of the graph
  (``create_graph=True``), so the meta-gradient contains the Hessian terms
  prod_k (I - alpha * H_k) applied to grad L_query(theta'_K).
- First order (``fomaml``): the inner gradients are constants, so
  d theta'_K / d theta = I and the meta-gradient is grad L_query(theta'_K); no
  second derivatives are computed and no inner graph is kept.

The network is run functionally through ``higher.monkeypatch`` (initial weights
not copied, so gradients reach ``self.model``'s parameters). Each task is
back-propagated on its own (gradients accumulate as loss / T), so only one
task's graph is alive at a time.

    learner = build_learner(MetaConfig(algorithm="maml", inner_lr=0.4, inner_steps=1, meta_lr=1e-3), model, 60_000)
    grads, metrics = learner.meta_gradient(batch)   # outer gradient, no step taken
    metrics = learner.meta_step(batch)              # {"loss": query loss, "support_loss": before adaptation}
"""
from __future__ import annotations

from importlib.metadata import version
from typing import Any

import higher
import torch
from torch import Tensor, nn

from datasets.tasks import TaskBatch

from .base import MetaConfig, MetaLearner, check_output_size, checked_metrics, register_orders, task_loss

HIGHER_VERSION = version("higher")  # the package has no __version__


class MAML(MetaLearner):
    def __init__(self, model: nn.Module, config: MetaConfig, total_iterations: int, seed: int = 0):
        super().__init__(model, config, total_iterations, seed)
        self.outer_optimizer = torch.optim.Adam(self.model.parameters(), lr=config.meta_lr)

    def _like_model(self, batch: TaskBatch) -> TaskBatch:
        # An empty query set would make the outer loss NaN and be reported as divergence.
        if batch.query_x.shape[1] == 0:
            raise ValueError(f"{self.config.algorithm}'s outer loss is a query loss: sample tasks with query >= 1 "
                             "(got a batch with no query examples)")
        return super()._like_model(batch)

    def backend_info(self) -> str:
        return f"higher {HIGHER_VERSION}, torch {torch.__version__}"

    def adapted_query_loss(self, fmodel, x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor, check: bool = False) -> tuple[Tensor, Tensor]:
        """Query loss after the inner SGD loop, differentiable w.r.t. ``self.model``'s parameters.

        Returns (query loss, support loss before adaptation). ``fmodel`` is
        ``higher.monkeypatch(self.model, copy_initial_weights=False)``.
        """
        second_order = not self.config.first_order
        fast = list(self.model.parameters())
        support_loss0 = None
        for _ in range(self.config.inner_steps):
            out = fmodel(x_s, params=fast)
            if check:
                check_output_size(out, y_s)
                check = False
            loss = task_loss(out, y_s)
            if support_loss0 is None:
                support_loss0 = loss.detach()
            grads = torch.autograd.grad(loss, fast, create_graph=second_order)
            fast = [w - self.config.inner_lr * g for w, g in zip(fast, grads)]
        return task_loss(fmodel(x_q, params=fast), y_q), support_loss0

    def meta_gradient(self, batch: TaskBatch) -> tuple[list[Tensor], dict[str, float]]:
        """Mean over tasks of d L_query(theta'_K) / d theta, in ``model.parameters()`` order; no step taken.

        Leaves the same values in the parameters' ``.grad``. Raises
        DivergedError if a loss or the gradient is not finite.
        """
        batch = self._like_model(batch)
        params = list(self.model.parameters())
        fmodel = higher.monkeypatch(self.model, copy_initial_weights=False)
        for p in params:
            p.grad = None
        query_losses, support_losses = [], []
        T = len(batch)
        for i in range(T):
            x_s, y_s, x_q, y_q = (t[i] for t in batch.tensors())
            q_loss, s_loss = self.adapted_query_loss(fmodel, x_s, y_s, x_q, y_q, check=(i == 0))
            (q_loss / T).backward()  # frees this task's graph before the next task is built
            query_losses.append(q_loss.detach())
            support_losses.append(s_loss)
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        return grads, checked_metrics(self, grads, query_losses, support_loss=support_losses)

    def apply_meta_gradient(self, grads: list[Tensor]) -> dict[str, float]:
        """The outer Adam step on ``grads`` (each learner's ``meta_gradient`` already leaves them in ``.grad``;
        data-parallel training replaces them by the all-reduced mean)."""
        for p, g in zip(self.model.parameters(), grads):
            p.grad = g
        self.outer_optimizer.step()
        self.outer_optimizer.zero_grad(set_to_none=True)
        self.iteration += 1
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "outer_optimizer": self.outer_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])


register_orders(MAML, "maml", "fomaml")
