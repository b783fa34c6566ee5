"""The batched backend computes the reference backend's meta-updates, and exact second-order gradients.

Float64, small problems: a tiny conv net WITH batch norm (batch norm couples the
examples, and vmap gets its second derivatives wrong, PITFALLS section 1) and
the sine MLP. Both ways of batching convolutions (grouped, loop) are checked.

    .venv/bin/python -m pytest -q tests/test_batched_agreement.py
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from algorithms import MetaConfig, build_learner, task_loss
from algorithms.batched import BatchedMAML, BatchedReptile
from algorithms.models import SineMLP
from datasets.sine import SinePool
from _tiny import flat, one_thread, tiny_bn_net, tiny_classification_batch  # noqa: F401 (one_thread: autouse fixture)

TASKS = 3


def problem(kind: str):
    if kind == "conv-bn":
        return tiny_bn_net(ways=3, seed=0), tiny_classification_batch(tasks=TASKS, ways=3, shots=4, query=2, seed=1)
    torch.manual_seed(0)
    batch = SinePool().sample_batch(1, shots=10, query=10, seed=0, indices=range(TASKS)).to("cpu", torch.float64)
    return SineMLP().double(), batch


def config(algorithm: str, steps: int, **extra) -> dict:
    lr = {"reptile": 0.01, "fomaml": 0.1, "maml": 0.1}[algorithm]
    return {"algorithm": algorithm, "inner_steps": steps, "inner_lr": lr, "inner_batch": 5, "persist_inner_state": False, **extra}


def pair(kind, cfg, conv_mode, **batched_kwargs):
    model, batch = problem(kind)
    ref = build_learner(MetaConfig(**cfg), copy.deepcopy(model), 10, seed=7)
    bat = build_learner(MetaConfig(**cfg, backend="batched"), copy.deepcopy(model), 10, seed=7)
    bat.net.conv_mode = conv_mode
    for name, value in batched_kwargs.items():
        setattr(bat, name, value)
    return ref, bat, batch


@torch.no_grad()
def rel_err(a, b) -> float:
    a, b = flat(a), flat(b)
    return float((a - b).norm() / a.norm())


@pytest.mark.parametrize("kind", ["conv-bn", "sine"])
@pytest.mark.parametrize("conv_mode", ["loop", "grouped"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("algorithm,extra", [
    ("reptile", {}),
    ("reptile", {"adam_beta1": 0.9}),
    ("reptile", {"inner_optimizer": "sgd", "persist_inner_state": True}),
    ("fomaml", {}),
    ("maml", {"unrolled": False}),
    ("maml", {"unrolled": True}),
])
def test_meta_gradient_matches_reference(kind, conv_mode, steps, algorithm, extra):
    extra = dict(extra)
    batched_kwargs = {"unrolled": extra.pop("unrolled")} if "unrolled" in extra else {}
    cfg = config(algorithm, steps, **extra)
    ref, bat, batch = pair(kind, cfg, conv_mode, **batched_kwargs)
    g_ref, m_ref = ref.meta_gradient(batch)
    g_bat, m_bat = bat.meta_gradient(batch)
    assert rel_err(g_ref, g_bat) < 1e-6
    assert m_bat.keys() == m_ref.keys()
    for key in m_ref:
        assert m_bat[key] == pytest.approx(m_ref[key], rel=1e-9)
    # Same minibatch draws: the two generators have consumed the same stream.
    assert torch.equal(ref.generator.get_state(), bat.generator.get_state())
    if algorithm != "reptile":  # MAML leaves the gradient in .grad for the outer optimiser
        assert rel_err(g_ref, [p.grad for p in bat.model.parameters()]) < 1e-6


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml", "maml"])
def test_meta_steps_track_reference(algorithm):
    """Three full meta-steps (outer update included) leave both backends on the same weights."""
    ref, bat, batch = pair("conv-bn", config(algorithm, 3, meta_lr=0.1), "loop")
    for _ in range(3):
        ref.meta_step(batch)
        bat.meta_step(batch)
    assert rel_err(list(ref.model.parameters()), list(bat.model.parameters())) < 1e-6
    assert ref.iteration == bat.iteration == 3


def adapted_query_loss(model: nn.Module, params: list[torch.Tensor], batch, alpha: float, steps: int) -> float:
    """mean_t L_query(theta'_K(params)): plain per-task loop through the nn.Module, values only."""
    names = [n for n, _ in model.named_parameters()]
    total = 0.0
    for t in range(len(batch)):
        fast = [p.detach().requires_grad_() for p in params]
        for _ in range(steps):
            out = torch.func.functional_call(model, dict(zip(names, fast)), (batch.support_x[t],))
            grads = torch.autograd.grad(task_loss(out, batch.support_y[t]), fast)
            fast = [(w - alpha * g).detach().requires_grad_() for w, g in zip(fast, grads)]
        with torch.no_grad():
            total += task_loss(torch.func.functional_call(model, dict(zip(names, fast)), (batch.query_x[t],)), batch.query_y[t]).item()
    return total / len(batch)


@pytest.mark.parametrize("conv_mode", ["loop", "grouped"])
@pytest.mark.parametrize("unrolled", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_matches_finite_differences(conv_mode, unrolled, steps):
    model, batch = problem("conv-bn")
    alpha = 0.4
    learner = BatchedMAML(copy.deepcopy(model), MetaConfig(algorithm="maml", inner_steps=steps, inner_lr=alpha, backend="batched"),
                          10, conv_mode=conv_mode, unrolled=unrolled)
    grads, _ = learner.meta_gradient(batch)
    theta = [p.detach() for p in model.parameters()]
    g = torch.Generator().manual_seed(3)
    h = 1e-6  # the tiny net has ReLU kinks within 1e-3 of theta; a small step keeps both sides on one piece
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in theta]
        plus = adapted_query_loss(model, [p + h * d for p, d in zip(theta, direction)], batch, alpha, steps)
        minus = adapted_query_loss(model, [p - h * d for p, d in zip(theta, direction)], batch, alpha, steps)
        finite_diff = (plus - minus) / (2 * h)
        analytic = float(flat(grads) @ flat(direction))
        assert analytic == pytest.approx(finite_diff, rel=1e-6, abs=1e-9)
    # The first-order answer differs here, so the check above really sees the second-order terms.
    fo = BatchedMAML(copy.deepcopy(model), MetaConfig(algorithm="fomaml", first_order=True, inner_steps=steps,
                                                      inner_lr=alpha, backend="batched"), 10)
    assert rel_err(grads, fo.meta_gradient(batch)[0]) > 1e-3


def test_task_chunks_do_not_change_the_result():
    model, batch = problem("conv-bn")
    cfg = MetaConfig(algorithm="maml", inner_steps=2, inner_lr=0.4, backend="batched")
    whole = BatchedMAML(copy.deepcopy(model), cfg, 10, conv_mode="grouped", task_chunk=TASKS).meta_gradient(batch)[0]
    split = BatchedMAML(copy.deepcopy(model), cfg, 10, conv_mode="grouped", task_chunk=2).meta_gradient(batch)[0]
    assert rel_err(whole, split) < 1e-12


def test_registry_builds_batched_learners():
    model, _ = problem("conv-bn")
    assert isinstance(build_learner(MetaConfig(algorithm="reptile", backend="batched", persist_inner_state=False), model, 10), BatchedReptile)
    maml = build_learner(MetaConfig(algorithm="maml", backend="batched", first_order=True), model, 10)
    fomaml = build_learner(MetaConfig(algorithm="fomaml", backend="batched"), model, 10)
    assert isinstance(maml, BatchedMAML) and not maml.config.first_order
    assert isinstance(fomaml, BatchedMAML) and fomaml.config.first_order


def test_persistent_adam_is_refused_with_a_way_out():
    model, _ = problem("conv-bn")
    with pytest.raises(ValueError, match="persist_inner_state=False.*backend='reference'"):
        build_learner(MetaConfig(algorithm="reptile", backend="batched", persist_inner_state=True), model, 10)


@pytest.mark.parametrize("model,match", [
    (nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)), "unsupported layer Tanh"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 2)), "running statistics"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, groups=1, padding="same"), nn.Flatten(), nn.Linear(2, 2)), "unsupported convolution"),
])
def test_unsupported_models_are_refused(model, match):
    with pytest.raises(ValueError, match=match):
        build_learner(MetaConfig(algorithm="fomaml", backend="batched"), model, 10)


def test_wrong_head_size_is_reported():
    model, batch = problem("conv-bn")  # 3-way head
    learner = build_learner(MetaConfig(algorithm="maml", backend="batched"), model, 10)
    bad = type(batch)(batch.support_x, batch.support_y.clamp(max=1), batch.query_x, batch.query_y)
    with pytest.raises(ValueError, match="2 ways"):
        learner.meta_gradient(bad)
