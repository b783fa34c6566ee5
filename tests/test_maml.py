"""MAML and first-order MAML (algorithms/maml.py) against independent computations, in float64.

- first-order meta-gradient = query-loss gradient at the adapted weights (computed here by hand);
- second-order meta-gradient = central finite differences of the post-adaptation query loss
  (network with batch norm, 2 inner steps), and = (I - alpha H) grad L_query(theta') for one
  inner step of a linear model with MSE, where the Hessian H = 2/n X^T X is known;
- meta_step is the outer Adam applied to that gradient; resume and repeat runs are bit-identical.

    .venv/bin/python -m pytest -q tests/test_maml.py
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call

from _tiny import flat, linear_regression_batch, one_thread, resumed_from_checkpoint, tiny_bn_net, tiny_classification_batch  # noqa: F401
from algorithms import MetaConfig, build_learner, task_loss
from algorithms.maml import MAML


def maml(model, algorithm="maml", **kw):
    return build_learner(MetaConfig(algorithm=algorithm, meta_lr=1e-3, **kw), model, total_iterations=10)


def adapted_query_loss(model: nn.Module, flat_theta: torch.Tensor, batch, alpha: float, steps: int, i: int, graph: bool = False):
    """Independent re-implementation with torch.func.functional_call (no higher): L_query(theta'_K) of task i."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    params = list(torch.split(flat_theta, [s.numel() for s in shapes]))
    params = [p.view(s) for p, s in zip(params, shapes)]
    for _ in range(steps):
        loss = task_loss(functional_call(model, dict(zip(names, params)), (batch.support_x[i],)), batch.support_y[i])
        grads = torch.autograd.grad(loss, params, create_graph=graph)
        params = [p - alpha * (g if graph else g.detach()) for p, g in zip(params, grads)]
    return task_loss(functional_call(model, dict(zip(names, params)), (batch.query_x[i],)), batch.query_y[i]), params


def test_registry_names_force_the_order():
    assert maml(tiny_bn_net(), "maml", first_order=True).config.first_order is False
    assert maml(tiny_bn_net(), "fomaml", first_order=False).config.first_order is True


def test_first_order_meta_gradient_is_query_gradient_at_adapted_weights():
    alpha, steps = 0.3, 2
    model = tiny_bn_net()
    batch = tiny_classification_batch(tasks=2)
    theta = flat(model.parameters()).detach()
    expected = torch.zeros_like(theta)
    for i in range(2):
        _, adapted = adapted_query_loss(model, theta.clone().requires_grad_(), batch, alpha, steps, i)
        at = flat(adapted).detach().requires_grad_()
        q_loss, _ = adapted_query_loss(model, at, batch, alpha, 0, i)
        expected += torch.autograd.grad(q_loss, at)[0] / 2
    grads, metrics = maml(model, "fomaml", inner_lr=alpha, inner_steps=steps).meta_gradient(batch)
    assert expected.norm() > 1e-2
    torch.testing.assert_close(flat(grads), expected, rtol=0, atol=1e-12)
    assert torch.equal(flat(model.parameters()), theta)  # no step taken
    assert set(metrics) == {"loss", "support_loss"}


def test_second_order_meta_gradient_matches_central_finite_differences_with_batch_norm():
    alpha, steps, h = 0.3, 2, 1e-6
    model = tiny_bn_net()
    batch = tiny_classification_batch(tasks=2)
    theta = flat(model.parameters()).detach()

    def objective(t):
        return sum(adapted_query_loss(model, t.clone().requires_grad_(), batch, alpha, steps, i)[0].item() for i in range(2)) / 2

    fd = torch.zeros_like(theta)
    for k in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[k] = h
        fd[k] = (objective(theta + e) - objective(theta - e)) / (2 * h)

    second, _ = maml(copy.deepcopy(model), "maml", inner_lr=alpha, inner_steps=steps).meta_gradient(batch)
    first, _ = maml(copy.deepcopy(model), "fomaml", inner_lr=alpha, inner_steps=steps).meta_gradient(batch)
    rel = lambda g: ((flat(g) - fd).norm() / fd.norm()).item()  # noqa: E731
    print("relative errors: second order", rel(second), "first order", rel(first))
    assert rel(second) < 1e-5, rel(second)
    assert rel(first) > 1e-2  # the check can tell the orders apart: the Hessian terms matter here


def test_second_order_one_step_on_linear_mse_matches_closed_form():
    """L(theta) = mean((X~ theta - y)^2), X~ = [X, 1]: grad = 2/n X~^T (X~ theta - y), H = 2/n X~^T X~."""
    alpha, dim = 0.1, 3
    torch.manual_seed(0)
    model = nn.Linear(dim, 1).double()
    batch = linear_regression_batch(tasks=3, dim=dim)
    theta = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])

    def aug(x):
        return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)

    def grad(x, y, t):
        return 2 / x.shape[0] * aug(x).T @ (aug(x) @ t - y[:, 0])

    maml_expected, fo_expected = torch.zeros_like(theta), torch.zeros_like(theta)
    for i in range(3):
        xs, ys, xq, yq = (t[i] for t in batch.tensors())
        adapted = theta - alpha * grad(xs, ys, theta)
        hessian = 2 / xs.shape[0] * aug(xs).T @ aug(xs)
        g_q = grad(xq, yq, adapted)
        maml_expected += (torch.eye(dim + 1, dtype=theta.dtype) - alpha * hessian) @ g_q / 3
        fo_expected += g_q / 3

    second, _ = maml(copy.deepcopy(model), "maml", inner_lr=alpha, inner_steps=1).meta_gradient(batch)
    first, _ = maml(copy.deepcopy(model), "fomaml", inner_lr=alpha, inner_steps=1).meta_gradient(batch)
    torch.testing.assert_close(flat(second), maml_expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(flat(first), fo_expected, rtol=0, atol=1e-12)
    assert (maml_expected - fo_expected).norm() > 1e-3


def test_meta_step_is_outer_adam_on_the_meta_gradient():
    batch = tiny_classification_batch(tasks=2)
    model = tiny_bn_net()
    reference = copy.deepcopy(model)
    learner = maml(model, "maml", inner_lr=0.3, inner_steps=2)
    grads, _ = learner.meta_gradient(batch)
    learner.meta_step(batch)
    adam = torch.optim.Adam(reference.parameters(), lr=1e-3)
    for p, g in zip(reference.parameters(), grads):
        p.grad = g
    adam.step()
    assert learner.iteration == 1
    assert torch.equal(flat(model.parameters()), flat(reference.parameters()))


def test_resume_is_bit_identical_and_runs_repeat():
    batches = [tiny_classification_batch(tasks=2, seed=s) for s in range(4)]
    kw = dict(inner_lr=0.3, inner_steps=2)
    straight = maml(tiny_bn_net(), **kw)
    curve = [straight.meta_step(b)["loss"] for b in batches]
    again = maml(tiny_bn_net(), **kw)
    assert [again.meta_step(b)["loss"] for b in batches] == curve

    first = maml(tiny_bn_net(), **kw)
    for b in batches[:2]:
        first.meta_step(b)
    resumed = resumed_from_checkpoint(first, maml(tiny_bn_net(seed=1), **kw))
    for b in batches[2:]:
        resumed.meta_step(b)
    assert torch.equal(flat(resumed.model.parameters()), flat(straight.model.parameters()))
    assert isinstance(resumed, MAML)
