"""The shared evaluator (algorithms/evaluation.py): fixed tasks, untouched meta-parameters, determinism,
the two batch-norm protocols, fine-tuning maths and the confidence interval.

    .venv/bin/python -m pytest -q tests/test_evaluation.py
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from _tiny import flat, one_thread, tiny_bn_net  # noqa: F401 (one_thread: autouse fixture)
from algorithms import task_loss
from algorithms.evaluation import EvalConfig, adapt, evaluate, finetune_generator, predict, summarize
from datasets.sine import SinePool
from datasets.tasks import ClassPool

FAST = dict(num_tasks=4, inner_steps=3, inner_batch=2)


def tiny_pool(classes: int = 6, examples: int = 4) -> ClassPool:
    g = torch.Generator().manual_seed(0)
    return ClassPool(torch.rand(classes, examples, 1, 5, 5, generator=g, dtype=torch.float64), name="tiny")


class RecordingPool(ClassPool):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = []

    def sample_task(self, ways, shots, query, seed, index):
        self.calls.append((ways, shots, query, seed, index))
        return super().sample_task(ways, shots, query, seed, index)


def test_tasks_are_the_fixed_pool_of_the_eval_seed():
    pool = RecordingPool(tiny_pool().images, name="rec")
    evaluate(tiny_bn_net(), pool, ways=3, shots=1, config=EvalConfig(query=2, seed=7, **FAST))
    assert pool.calls == [(3, 1, 2, 7, i) for i in range(4)]


def test_meta_parameters_untouched_and_results_repeat():
    model = tiny_bn_net()
    before = copy.deepcopy(model.state_dict())
    config = EvalConfig(query=2, **FAST)
    first = evaluate(model, tiny_pool(), ways=3, shots=1, config=config)
    second = evaluate(model, tiny_pool(), ways=3, shots=1, config=config)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert first.per_task == second.per_task and first.n == 4 and first.metric == "accuracy"
    assert all(0 <= a <= 100 for a in first.per_task)


def test_adapt_with_sgd_whole_support_is_plain_gradient_descent():
    model = tiny_bn_net()
    task = tiny_pool().sample_task(3, 2, 1, seed=0, index=0)
    sx, sy = task.support_x[0], task.support_y[0]
    expected = copy.deepcopy(model)
    for _ in range(2):
        grads = torch.autograd.grad(task_loss(expected(sx), sy), list(expected.parameters()))
        with torch.no_grad():
            for p, g in zip(expected.parameters(), grads):
                p.sub_(0.5 * g)
    config = EvalConfig(inner_steps=2, inner_lr=0.5, inner_optimizer="sgd", inner_batch=0)
    fine = adapt(model, sx, sy, config, finetune_generator(0, 0))
    torch.testing.assert_close(flat(fine.parameters()), flat(expected.parameters()), rtol=0, atol=1e-12)
    assert (flat(fine.parameters()) - flat(model.parameters())).abs().max() > 1e-3


def test_zero_inner_steps_scores_the_meta_parameters_as_they_are():
    model = tiny_bn_net()
    task = tiny_pool().sample_task(3, 1, 2, seed=0, index=0)
    fine = adapt(model, task.support_x[0], task.support_y[0], EvalConfig(inner_steps=0), finetune_generator(0, 0))
    assert fine is not model and torch.equal(flat(fine.parameters()), flat(model.parameters()))


def test_non_transductive_prediction_sees_only_support_plus_that_query():
    model = tiny_bn_net()
    task = tiny_pool().sample_task(3, 2, 2, seed=0, index=0)
    sx, qx = task.support_x[0], task.query_x[0]
    logits = predict(model, sx, qx, transductive=False)
    with torch.no_grad():
        for j in range(qx.shape[0]):
            torch.testing.assert_close(logits[j], model(torch.cat([sx, qx[j : j + 1]]))[-1], rtol=0, atol=0)
        changed = qx.clone()
        changed[1:] = torch.rand_like(changed[1:])
        # Other query images do not change query 0's prediction without transduction...
        assert torch.equal(predict(model, sx, changed, transductive=False)[0], logits[0])
        # ...but they do with it (batch-norm statistics are computed over the query batch).
        trans = predict(model, sx, qx, transductive=True)
        torch.testing.assert_close(trans, model(qx), rtol=0, atol=0)
        assert not torch.allclose(predict(model, sx, changed, transductive=True)[0], trans[0])


def test_sine_reports_query_mse():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    pool = SinePool()
    result = evaluate(model, pool, ways=1, shots=5, config=EvalConfig(num_tasks=3, query=10, inner_steps=0))
    assert result.metric == "mse"
    with torch.no_grad():
        expected = [task_loss(model(t.query_x[0]), t.query_y[0]).item() for t in (pool.sample_task(1, 5, 10, 0, i) for i in range(3))]
    assert result.per_task == pytest.approx(expected, rel=1e-12)


def test_summary_uses_sample_std():
    r = summarize([0.0, 100.0, 50.0, 50.0], "accuracy")
    std = math.sqrt((50**2 + 50**2) / 3)  # ddof = 1
    assert (r.mean, r.n) == (50.0, 4)
    assert r.std == pytest.approx(std) and r.ci95 == pytest.approx(1.96 * std / 2)
    with pytest.raises(ValueError, match="at least two tasks"):  # a one-task "CI" would be NaN in every file
        summarize([42.0], "accuracy")


def test_finetune_order_depends_on_seed_and_index_only():
    draw = lambda s, i: torch.randperm(10, generator=finetune_generator(s, i))  # noqa: E731
    assert torch.equal(draw(0, 3), draw(0, 3))
    assert not torch.equal(draw(0, 3), draw(0, 4)) and not torch.equal(draw(0, 3), draw(1, 3))
