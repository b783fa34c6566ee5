"""The torch.func timing contenders (algorithms/libraries/func_maml.py): exact per-task loop, vmap wrong through batch norm.

Float64, the tiny conv net with batch norm and one without it. The vmap check
pins PITFALLS section 1 on the torch this project installs: if an upgrade fixes
vmap's batch-norm rule this test fails, and the batched backend's design
(no vmap) and the limit benchmark's labels should be revisited.

    .venv/bin/python -m pytest -q tests/test_func_maml.py
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from algorithms import MetaConfig, build_learner
from algorithms.libraries.func_maml import func_meta_gradient as func_meta_gradient_and_loss


def func_meta_gradient(*args, **kw):
    return func_meta_gradient_and_loss(*args, **kw)[0]
from _tiny import flat, one_thread, tiny_bn_net, tiny_classification_batch  # noqa: F401 (one_thread: autouse fixture)

ALPHA = 0.4


def no_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3)).double()


def reference(model, batch, steps):
    learner = build_learner(MetaConfig(algorithm="maml", inner_steps=steps, inner_lr=ALPHA), copy.deepcopy(model), 10)
    return learner.meta_gradient(batch)[0]


def rel_err(a, b) -> float:
    a, b = flat(a), flat(b)
    return float((a - b).norm() / a.norm())


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("net", [tiny_bn_net, no_bn_net])
def test_task_loop_matches_the_reference(net, steps):
    model, batch = net(), tiny_classification_batch(tasks=3, ways=3, shots=4, query=2, seed=1)
    got = func_meta_gradient(model, batch, ALPHA, steps, vmap_tasks=False)
    assert rel_err(reference(model, batch, steps), got) < 1e-10


def test_vmap_matches_without_batch_norm():
    model, batch = no_bn_net(), tiny_classification_batch(tasks=3, ways=3, shots=4, query=2, seed=1)
    assert rel_err(reference(model, batch, 1), func_meta_gradient(model, batch, ALPHA, 1, vmap_tasks=True)) < 1e-10


def test_vmap_is_wrong_through_batch_norm():
    """The reference (higher) agrees with central finite differences; vmap does not."""
    model, batch = tiny_bn_net(), tiny_classification_batch(tasks=3, ways=3, shots=4, query=2, seed=1)
    ref, vm = reference(model, batch, 1), func_meta_gradient(model, batch, ALPHA, 1, vmap_tasks=True)
    assert rel_err(ref, vm) > 1e-4
    direction = [torch.randn_like(p) for p in model.parameters()]
    h = 1e-6

    def loss_at(sign):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for p, d in zip(moved.parameters(), direction):
                p.add_(sign * h * d)
        learner = build_learner(MetaConfig(algorithm="maml", inner_steps=1, inner_lr=ALPHA), moved, 10)
        return learner.meta_gradient(batch)[1]["loss"]

    finite_diff = (loss_at(1) - loss_at(-1)) / (2 * h)
    assert float(flat(ref) @ flat(direction)) == pytest.approx(finite_diff, rel=1e-6)
    assert float(flat(vm) @ flat(direction)) != pytest.approx(finite_diff, rel=1e-4)
