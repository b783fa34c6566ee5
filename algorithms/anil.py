"""ANIL (Raghu, Raghu, Bengio, Vinyals, ICLR 2020, "Rapid Learning or Feature Reuse?"): MAML whose inner
loop adapts only the head.

The network (an ``nn.Sequential``) is split into a body and a head: the head is its last
``head_modules`` modules with parameters (default 1: the final Linear layer), with everything after
the body's last parameterised module. For each task the body runs once on the support and once on the
query set; only the head takes ``inner_steps`` SGD steps (alpha = ``inner_lr``) on the support features,

    w'_0 = w,   w'_{k+1} = w'_k - alpha grad_w L_support(head_{w'_k}(body_theta(x_s))),

and the outer Adam steps on grad_(theta, w) L_query(head_{w'_K}(body_theta(x_q))), body included.
- ``anil``: second order, through the head's inner loop (its Hessian terms, and how the adapted head
  depends on the body's support features); the unrolled graph covers the head only, so its cost and
  memory are a small fraction of MAML's. The support features enter the head's loop as a leaf and the
  body's support graph is rebuilt for one backward at the end, so the body's graphs of support and
  query are never held at once (one extra body forward per task);
- ``foanil``: first order (the inner gradients are constants), like first-order MAML; the support
  features need no graph at all.
With a body that is not adapted, this is exactly MAML restricted to the head (``tests/test_anil.py``).

    learner = build_learner(MetaConfig(algorithm="anil", inner_steps=1, inner_lr=0.4, meta_lr=1e-3), model, 1000)
"""
from __future__ import annotations

import higher
import torch
from torch import Tensor, nn

from datasets.tasks import TaskBatch

from .base import MetaConfig, check_output_size, checked_metrics, register_orders, task_loss
from .maml import HIGHER_VERSION, MAML


def split_head(model: nn.Module, head_modules: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(body, head) of an ``nn.Sequential``: the head starts at its ``head_modules``-th last parameterised module."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"ANIL needs an nn.Sequential to split into body and head, got {type(model).__name__}; "
                         "the head is its last MetaConfig.head_modules module(s) with parameters")
    with_params = [i for i, m in enumerate(model) if any(True for _ in m.parameters(recurse=True))]
    if len(with_params) <= head_modules:
        raise ValueError(f"ANIL: the network has {len(with_params)} module(s) with parameters, so head_modules = "
                         f"{head_modules} leaves no body to meta-learn; lower head_modules (1 = the final "
                         f"{type(model[with_params[-1]]).__name__ if with_params else 'layer'})")
    start = with_params[-head_modules]
    modules = list(model)  # plain Sequentials of the same modules (a subclass may not take a module list)
    return nn.Sequential(*modules[:start]), nn.Sequential(*modules[start:])


class ANIL(MAML):
    """MAML's outer loop, checkpoints and metrics; the inner loop adapts the head only."""

    def __init__(self, model: nn.Module, config: MetaConfig, total_iterations: int, seed: int = 0):
        super().__init__(model, config, total_iterations, seed)
        self.body, self.head = split_head(model, config.head_modules)

    def backend_info(self) -> str:
        return (f"higher {HIGHER_VERSION} on the head "
                f"({', '.join(type(m).__name__ for m in self.head)}), torch {torch.__version__}")

    def meta_gradient(self, batch: TaskBatch) -> tuple[list[Tensor], dict[str, float]]:
        """Mean over tasks of d L_query / d (body, head), in ``model.parameters()`` order; also left in ``.grad``."""
        batch = self._like_model(batch)
        params = list(self.model.parameters())
        head = higher.monkeypatch(self.head, copy_initial_weights=False)
        for p in params:
            p.grad = None
        second_order = not self.config.first_order
        q_losses, s_losses = [], []
        T = len(batch)
        for i in range(T):
            x_s, y_s, x_q, y_q = (t[i] for t in batch.tensors())
            # The support features enter as a leaf: the body's support graph is rebuilt for one backward at
            # the end (one extra body forward) instead of living beside the query graph the whole time.
            with torch.no_grad():
                f_s = self.body(x_s)
            f_s.requires_grad_(second_order)
            f_q = self.body(x_q)
            fast = list(self.head.parameters())
            first = None
            for _ in range(self.config.inner_steps):
                out = head(f_s, params=fast)
                if i == 0 and first is None:
                    check_output_size(out, y_s)
                loss = task_loss(out, y_s)
                first = loss.detach() if first is None else first
                grads = torch.autograd.grad(loss, fast, create_graph=second_order)
                fast = [w - self.config.inner_lr * g for w, g in zip(fast, grads)]
            q_loss = task_loss(head(f_q, params=fast), y_q)
            (q_loss / T).backward()  # head and body (through the query features); f_s.grad: d loss / d features
            if second_order:
                self.body(x_s).backward(f_s.grad)  # the body's share through the adapted head
            q_losses.append(q_loss.detach())
            s_losses.append(first)
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        return grads, checked_metrics(self, grads, q_losses, support_loss=s_losses)


register_orders(ANIL, "anil", "foanil")
