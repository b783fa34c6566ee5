"""ANIL against its references, in float64: exactly MAML restricted to the head, central finite differences,
the batched backend against the reference; the head split and its bad input; its memory beside MAML's.

    .venv/bin/python -m pytest -q tests/test_anil.py
"""
from __future__ import annotations

import copy

import higher
import pytest
import torch
from torch import nn

from _tiny import flat, one_thread, tiny_bn_net, tiny_classification_batch  # noqa: F401 (one_thread: autouse)
from algorithms import MetaConfig, build_learner, build_model, task_loss
from algorithms.anil import split_head
from benchmarks.running.measure import autograd_saved_bytes


def maml_restricted_to_the_head(model: nn.Module, batch, inner_lr: float, steps: int, first_order: bool):
    """MAML through the whole network (higher), where the inner loop's update of every body weight is zero."""
    params = list(model.parameters())
    n_head = len(list(model[-1].parameters()))
    fmodel = higher.monkeypatch(model, copy_initial_weights=False)
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(batch)):
        xs, ys, xq, yq = (t[i] for t in batch.tensors())
        fast = params
        for _ in range(steps):
            g = torch.autograd.grad(task_loss(fmodel(xs, params=fast), ys), fast, create_graph=not first_order)
            fast = [w if k < len(params) - n_head else w - inner_lr * gi for k, (w, gi) in enumerate(zip(fast, g))]
        q = task_loss(fmodel(xq, params=fast), yq) / len(batch)
        for t, gi in zip(total, torch.autograd.grad(q, params)):
            t += gi
    return total


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("algorithm", ["anil", "foanil"])
@pytest.mark.parametrize("backend", ["reference", "batched"])
def test_anil_is_maml_restricted_to_the_head(algorithm, backend, steps):
    model = tiny_bn_net(ways=3)
    batch = tiny_classification_batch(tasks=3, ways=3, shots=2, query=2)
    config = MetaConfig(algorithm=algorithm, backend=backend, inner_steps=steps, inner_lr=0.4, meta_lr=1e-3)
    got, _ = build_learner(config, copy.deepcopy(model), 10).meta_gradient(batch)
    expected = maml_restricted_to_the_head(copy.deepcopy(model), batch, 0.4, steps, first_order=algorithm == "foanil")
    rel = ((flat(got) - flat(expected)).norm() / flat(expected).norm()).item()
    assert rel < 1e-12, rel


def test_second_order_anil_matches_finite_differences():
    model = tiny_bn_net(ways=3)
    batch = tiny_classification_batch(tasks=2, ways=3, shots=2, query=2, seed=3)
    config = MetaConfig(algorithm="anil", inner_steps=3, inner_lr=0.3, meta_lr=1e-3)
    learner = build_learner(config, model, 10)
    grads, _ = learner.meta_gradient(batch)

    def objective() -> float:
        body, head = split_head(model, 1)
        fhead = higher.monkeypatch(head, copy_initial_weights=False)
        total = 0.0
        for i in range(len(batch)):
            xs, ys, xq, yq = (t[i] for t in batch.tensors())
            fast = list(head.parameters())
            for _ in range(3):
                g = torch.autograd.grad(task_loss(fhead(body(xs), params=fast), ys), fast)
                fast = [w - 0.3 * gi for w, gi in zip(fast, g)]
            total += task_loss(fhead(body(xq), params=fast), yq).item() / len(batch)
        return total

    g = torch.Generator().manual_seed(5)
    u = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in model.parameters()]
    base = [p.detach().clone() for p in model.parameters()]
    eps = 1e-6
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, b, ui in zip(model.parameters(), base, u):
                p.copy_(b + sign * eps * ui)
        values.append(objective())
    analytic = sum((gi * ui).sum() for gi, ui in zip(grads, u)).item()
    assert analytic == pytest.approx((values[0] - values[1]) / (2 * eps), rel=1e-6)


def test_the_head_is_the_last_modules_with_parameters_and_bad_splits_are_explained():
    model = build_model("omniglot", 5)
    body, head = split_head(model, 1)
    assert [type(m).__name__ for m in head] == ["Linear"] and len(body) == len(model) - 1
    body, head = split_head(model, 2)  # the last batch norm and what follows it
    assert [type(m).__name__ for m in head] == ["BatchNorm2d", "ReLU", "Flatten", "Linear"]
    with pytest.raises(ValueError, match="ANIL needs an nn.Sequential.*head_modules"):
        build_learner(MetaConfig(algorithm="anil"), nn.Linear(3, 2).double(), 10)
    with pytest.raises(ValueError, match="leaves no body to meta-learn; lower head_modules"):
        build_learner(MetaConfig(algorithm="anil", head_modules=9), model, 10)
    with pytest.raises(ValueError, match="head_modules must be an integer >= 1"):
        build_learner(MetaConfig(algorithm="anil", head_modules=0), model, 10)


def test_second_order_memory_is_a_small_fraction_of_mamls():
    """The scaling sweep's shape (Omniglot net, 5-way 5-shot, 15 queries, K = 5): ANIL's second-order
    graph covers the head only. Target: under 25% of MAML's autograd-held bytes."""
    g = torch.Generator().manual_seed(0)
    from datasets.tasks import TaskBatch

    y = lambda n: torch.arange(5).repeat_interleave(n).expand(2, -1).contiguous()  # noqa: E731
    batch = TaskBatch(torch.rand(2, 25, 1, 28, 28, generator=g), y(5), torch.rand(2, 75, 1, 28, 28, generator=g), y(15))
    saved = {}
    for alg in ("maml", "anil"):
        torch.manual_seed(0)
        config = MetaConfig(algorithm=alg, inner_steps=5, inner_lr=0.1, meta_lr=1e-3)
        saved[alg] = autograd_saved_bytes(build_learner(config, build_model("omniglot", 5), 10), batch)
    assert saved["anil"] < 0.25 * saved["maml"], saved
