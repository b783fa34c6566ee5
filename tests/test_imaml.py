"""iMAML against its references, in float64: the closed form on a quadratic inner problem solved to
convergence, central finite differences of the converged inner solution on a conv net with batch norm,
the batched backend against the reference, flat memory in the inner steps, and bad input.

    .venv/bin/python -m pytest -q tests/test_imaml.py
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from _tiny import flat, one_thread, tiny_bn_net, tiny_classification_batch  # noqa: F401 (one_thread: autouse)
from algorithms import MetaConfig, build_learner
from benchmarks.running.measure import autograd_saved_bytes
from datasets.tasks import TaskBatch


def quadratic_problem(d: int = 3, n: int = 8, seed: int = 0):
    """One linear-regression task (MSE: a quadratic inner problem) and a float64 linear model."""
    g = torch.Generator().manual_seed(seed)
    x = lambda: torch.randn(1, n, d, generator=g, dtype=torch.float64)  # noqa: E731
    y = lambda: torch.randn(1, n, 1, generator=g, dtype=torch.float64)  # noqa: E731
    batch = TaskBatch(x(), y(), x(), y())
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 1)).double(), batch


def closed_form(model: nn.Module, batch: TaskBatch, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(phi*, (I + H/lambda)^-1 grad L_q(phi*)) over [weight..., bias], by linear algebra alone."""
    xs, ys, xq, yq = (t[0] for t in batch.tensors())
    aug = lambda x: torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)  # noqa: E731
    a, aq = aug(xs), aug(xq)
    n = a.shape[0]
    h = 2.0 / n * a.T @ a                                   # Hessian of the support MSE
    c = 2.0 / n * a.T @ ys[:, 0]
    theta = torch.cat([model[0].weight.reshape(-1), model[0].bias]).detach()
    phi = torch.linalg.solve(h + lam * torch.eye(len(theta), dtype=h.dtype), c + lam * theta)
    g_q = 2.0 / aq.shape[0] * aq.T @ (aq @ phi - yq[:, 0])  # gradient of the query MSE at phi*
    return phi, torch.linalg.solve(torch.eye(len(theta), dtype=h.dtype) + h / lam, g_q)


@pytest.mark.parametrize("backend", ["reference", "batched"])
def test_implicit_gradient_equals_the_closed_form_on_a_quadratic(backend):
    model, batch = quadratic_problem()
    lam = 2.0
    _, expected = closed_form(model, batch, lam)
    config = MetaConfig(algorithm="imaml", backend=backend, inner_steps=4000, inner_lr=0.05, imaml_lambda=lam,
                        cg_steps=4, meta_lr=1e-3)  # 4 unknowns: CG is exact in 4 steps
    learner = build_learner(config, model, 10)
    grads, metrics = learner.meta_gradient(batch)
    got = flat(grads)
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < 1e-6, rel  # the target; measured about 1e-14
    assert metrics["cg_residual"] < 1e-10


def _meta_objective(learner, batch: TaskBatch) -> float:
    """L_query at the converged inner solution phi*(theta), theta = the learner's current parameters."""
    import higher

    from algorithms import task_loss

    fmodel = higher.monkeypatch(learner.model, copy_initial_weights=False)
    xs, ys, xq, yq = (t[0] for t in batch.tensors())
    phi, _ = learner.inner_solve(fmodel, xs, ys)
    return task_loss(fmodel(xq, params=phi), yq).item()


def test_implicit_gradient_matches_finite_differences_of_the_converged_inner_solution():
    """A conv net with batch norm: lambda large enough that the proximal problem is well conditioned, the
    inner solve run to convergence, CG run to a tiny residual; then the implicit gradient is exact."""
    model = tiny_bn_net(ways=3)
    batch = tiny_classification_batch(tasks=1, ways=3, shots=2, query=2, seed=1)
    # Batch norm makes the loss steep across its weights: lambda = 50 keeps gradient descent (lr 0.005) converging
    # (its residual reaches 1e-14 here; with lambda = 10 it cycles).
    config = MetaConfig(algorithm="imaml", inner_steps=1000, inner_lr=0.005, imaml_lambda=50.0, cg_steps=40, meta_lr=1e-3)
    learner = build_learner(config, model, 10)
    grads, metrics = learner.meta_gradient(batch)
    assert metrics["cg_residual"] < 1e-8
    g = torch.Generator().manual_seed(7)
    u = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in model.parameters()]
    analytic = sum((gi * ui).sum() for gi, ui in zip(grads, u)).item()
    base = [p.detach().clone() for p in model.parameters()]
    estimates = []
    for eps in (1e-5, 1e-6):
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, b, ui in zip(model.parameters(), base, u):
                    p.copy_(b + sign * eps * ui)
            values.append(_meta_objective(learner, batch))
        estimates.append((values[0] - values[1]) / (2 * eps))
    with torch.no_grad():
        for p, b in zip(model.parameters(), base):
            p.copy_(b)
    assert estimates[0] == pytest.approx(estimates[1], rel=1e-4)  # eps is in the stable range
    assert analytic == pytest.approx(estimates[0], rel=1e-5), (analytic, estimates)


def test_batched_backend_agrees_with_the_reference_on_a_bn_net():
    model = tiny_bn_net(ways=3)
    batch = tiny_classification_batch(tasks=3, ways=3, shots=2, query=2, seed=2)
    config = MetaConfig(algorithm="imaml", inner_steps=4, inner_lr=0.3, imaml_lambda=2.0, cg_steps=5, meta_lr=1e-3)
    ref, ref_m = build_learner(config, copy.deepcopy(model), 10).meta_gradient(batch)
    for mode in ("loop", "grouped"):
        from algorithms.batched_variants import BatchedIMAML

        got, got_m = BatchedIMAML(copy.deepcopy(model), config, 10, conv_mode=mode).meta_gradient(batch)
        rel = ((flat(got) - flat(ref)).norm() / flat(ref).norm()).item()
        assert rel < 1e-9, (mode, rel)
        assert got_m["cg_residual"] == pytest.approx(ref_m["cg_residual"], rel=1e-9)
        assert got_m["loss"] == pytest.approx(ref_m["loss"], rel=1e-12)


def test_autograd_memory_does_not_grow_with_inner_steps():
    batch = tiny_classification_batch(tasks=2, ways=3, shots=2, query=2)
    saved = {}
    for k in (1, 5, 20):
        config = MetaConfig(algorithm="imaml", inner_steps=k, inner_lr=0.1, imaml_lambda=2.0, cg_steps=3)
        saved[k] = autograd_saved_bytes(build_learner(config, tiny_bn_net(ways=3), 10), batch)
    assert saved[1] == saved[5] == saved[20] > 0
    maml = {k: autograd_saved_bytes(build_learner(MetaConfig(algorithm="maml", inner_steps=k, inner_lr=0.1),
                                                  tiny_bn_net(ways=3), 10), batch) for k in (1, 5)}
    assert maml[5] > maml[1]  # MAML's, by contrast, grows


@pytest.mark.parametrize("field, value, message", [
    ("imaml_lambda", 0.0, "imaml_lambda must be a positive finite number"),
    ("imaml_lambda", -1.0, "imaml_lambda must be a positive finite number"),
    ("imaml_lambda", float("nan"), "imaml_lambda must be a positive finite number"),
    ("imaml_lambda", float("inf"), "imaml_lambda must be a positive finite number"),
    ("cg_steps", 0, "cg_steps must be an integer >= 1"),
    ("cg_steps", 2.5, "cg_steps must be an integer >= 1"),
])
def test_bad_imaml_settings_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        build_learner(MetaConfig(algorithm="imaml", **{field: value}), tiny_bn_net(), 10)
