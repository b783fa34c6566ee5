"""iMAML (Rajeswaran, Finn, Kakade, Levine 2019, "Meta-Learning with Implicit Gradients"), iMAML-GD.

For each task, the inner problem is the support loss plus a proximal term around the meta-parameters,

    phi*(theta) = argmin_phi  L_support(phi) + (lambda / 2) ||phi - theta||^2,

solved approximately by ``inner_steps`` steps of gradient descent (step size ``inner_lr``) on that whole
objective, from phi = theta, on the whole support set. At a minimum, the implicit function theorem gives

    d phi* / d theta = (I + H / lambda)^-1,     H = the support-loss Hessian at phi*,

so the task's meta-gradient is x = (I + H / lambda)^-1 grad L_query(phi), found by ``cg_steps`` iterations
of conjugate gradient with Hessian-vector products (``cg.py``). The outer Adam (lr ``meta_lr``) steps on
the mean of x over tasks. Nothing of the inner loop is differentiated: autograd holds one support
forward's double-backward graph during CG, whatever ``inner_steps`` is, so memory is flat in the inner
steps (unlike MAML's). ``meta_step`` also reports ``cg_residual``, the mean relative CG residual.

Where the authors' code (github aravindr93/imaml_dev) differs, we follow the paper and say so:
- it runs the inner gradient steps on the support loss alone and applies the proximal term as one extra
  SGD step afterwards; here every step descends the proximal objective, whose minimum the implicit
  gradient is exact for;
- its CG matrix is (1 + cg_damping) I + H / (lambda + lam_damping), with cg_damping 1 and lam_damping 10
  by default, i.e. 2 I + H / 12 for lambda 2 (an effective lambda of 24 and half the step); here it is the
  paper's I + H / lambda;
- its outer Adam uses eps = 1e-3; here torch's default 1e-8, like the MAML learners.
iMAML-HF (a Hessian-free inner solver with a line search) is not implemented: the released code refuses
it ("sqp unsupported in this version") and the paper does not specify its line search.

    learner = build_learner(MetaConfig(algorithm="imaml", inner_steps=16, inner_lr=0.1, imaml_lambda=2.0,
                                       cg_steps=5, meta_lr=1e-3), model, 10_000)
"""
from __future__ import annotations

import higher
import torch
from torch import Tensor

from datasets.tasks import TaskBatch

from .base import check_output_size, checked_metrics, register, task_loss
from .cg import conjugate_gradient
from .maml import MAML


@register("imaml")
class IMAML(MAML):
    """MAML's outer Adam, checkpoints and metrics; the meta-gradient is the implicit one."""

    def backend_info(self) -> str:
        return f"torch {torch.__version__} autograd (HVPs by double backward), CG {self.config.cg_steps} steps"

    def inner_solve(self, fmodel, x_s: Tensor, y_s: Tensor, check: bool = False) -> tuple[list[Tensor], Tensor]:
        """phi after gradient descent on the proximal objective (detached), and the first support loss."""
        c = self.config
        theta = [p.detach() for p in self.model.parameters()]
        phi = [t.clone() for t in theta]
        first = None
        for _ in range(c.inner_steps):
            leaves = [w.requires_grad_() for w in phi]
            out = fmodel(x_s, params=leaves)
            if check:
                check_output_size(out, y_s)
                check = False
            loss = task_loss(out, y_s)
            first = loss.detach() if first is None else first
            grads = torch.autograd.grad(loss, leaves)
            with torch.no_grad():
                phi = [w - c.inner_lr * (g + c.imaml_lambda * (w - t)) for w, g, t in zip(leaves, grads, theta)]
        return phi, first

    def task_meta_gradient(self, fmodel, x_s, y_s, x_q, y_q, check: bool = False):
        """(x = (I + H/lambda)^-1 grad L_q(phi), query loss at phi, first support loss, CG relative residual)."""
        lam = self.config.imaml_lambda
        phi, first = self.inner_solve(fmodel, x_s, y_s, check)
        leaves = [w.detach().requires_grad_() for w in phi]
        q_loss = task_loss(fmodel(x_q, params=leaves), y_q)
        g_q = list(torch.autograd.grad(q_loss, leaves))
        g_s = torch.autograd.grad(task_loss(fmodel(x_s, params=leaves), y_s), leaves, create_graph=True)

        def apply_a(v: list[Tensor]) -> list[Tensor]:
            hv = torch.autograd.grad(g_s, leaves, grad_outputs=v, retain_graph=True)
            return [vi + hi / lam for vi, hi in zip(v, hv)]

        x, residual = conjugate_gradient(apply_a, g_q, self.config.cg_steps)
        return [t.detach() for t in x], q_loss.detach(), first, residual.detach()

    def meta_gradient(self, batch: TaskBatch) -> tuple[list[Tensor], dict[str, float]]:
        """Mean over tasks of the implicit meta-gradient, in ``model.parameters()`` order; also left in ``.grad``."""
        batch = self._like_model(batch)
        params = list(self.model.parameters())
        fmodel = higher.monkeypatch(self.model, copy_initial_weights=False)
        grads = [torch.zeros_like(p) for p in params]
        q_losses, s_losses, residuals = [], [], []
        T = len(batch)
        for i in range(T):
            x, q, s, r = self.task_meta_gradient(fmodel, *(t[i] for t in batch.tensors()), check=(i == 0))
            torch._foreach_add_(grads, x, alpha=1.0 / T)
            q_losses.append(q)
            s_losses.append(s if s is not None else q)
            residuals.append(r)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        return grads, checked_metrics(self, grads, q_losses, support_loss=s_losses, cg_residual=residuals)

