"""Bad input to the meta-learners and the evaluator stops with a message saying what was wrong.

    .venv/bin/python -m pytest -q tests/test_bad_input_algorithms.py
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from _tiny import flat, one_thread, tiny_bn_net, tiny_classification_batch  # noqa: F401 (one_thread: autouse fixture)
from algorithms import DivergedError, MetaConfig, build_learner
from algorithms.evaluation import EvalConfig, adapt, evaluate, finetune_generator
from datasets.tasks import ClassPool

ALGORITHMS = ["reptile", "fomaml", "maml"]


def build(algorithm, model=None, **kw):
    return build_learner(MetaConfig(algorithm=algorithm, **kw), model or tiny_bn_net(), total_iterations=10)


def test_unknown_algorithm_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown algorithm .reptil.; valid names: anil, foanil, fomaml, imaml, maml, reptile"):
        build("reptil")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("inner_steps", 0, "inner_steps must be >= 1"),
        ("inner_lr", 0.0, "inner_lr must be a positive"),
        ("inner_lr", -1e-3, "inner_lr must be a positive"),
        ("meta_lr", 0.0, "meta_lr must be a positive"),
        ("meta_lr", float("nan"), "meta_lr must be a positive"),
        ("meta_lr_final", float("nan"), "meta_lr_final must be a finite number >= 0"),
        ("meta_lr_final", float("inf"), "meta_lr_final must be a finite number >= 0"),
        ("meta_lr_final", -0.1, "meta_lr_final must be a finite number >= 0"),
    ],
)
def test_invalid_settings_are_refused(algorithm, field, value, message):
    with pytest.raises(ValueError, match=message):
        build(algorithm, **{field: value})


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_model_output_size_must_equal_ways(algorithm):
    learner = build(algorithm, tiny_bn_net(ways=4), inner_batch=2)  # the tasks are 3-way
    with pytest.raises(ValueError, match="outputs 4 classes but the task has 3 ways"):
        learner.meta_step(tiny_classification_batch(ways=3))


@pytest.mark.parametrize("backend", ["reference", "batched"])
@pytest.mark.parametrize("algorithm", ["fomaml", "maml"])
def test_maml_without_query_examples_is_refused_not_called_divergence(algorithm, backend):
    learner = build(algorithm, backend=backend)
    with pytest.raises(ValueError, match="outer loss is a query loss: sample tasks with query >= 1"):
        learner.meta_step(tiny_classification_batch(query=0))


class NaNNet(nn.Module):
    """A network that outputs NaN: the loss is NaN from the first forward."""

    def __init__(self):
        super().__init__()
        self.net = tiny_bn_net()

    def forward(self, x):
        return self.net(x) * float("nan")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_nan_loss_raises_diverged_error_naming_the_iteration(algorithm):
    learner = build(algorithm, NaNNet(), inner_batch=2)
    before = flat(learner.model.parameters()).clone()
    with pytest.raises(DivergedError, match=rf"meta-iteration 0 \({algorithm}"):
        learner.meta_step(tiny_classification_batch())
    assert torch.equal(flat(learner.model.parameters()), before)  # the last good parameters are kept


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_huge_learning_rate_diverges_at_a_named_iteration(algorithm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1)).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 3, generator=g, dtype=torch.float64)
    batch = type(tiny_classification_batch())(x, 5 * x.sum(-1, keepdim=True), x, 5 * x.sum(-1, keepdim=True))
    learner = build(algorithm, model, inner_lr=1e6, inner_optimizer="sgd", inner_batch=8, inner_steps=3, meta_lr=1e6, meta_lr_final=1e6)
    with pytest.raises(DivergedError, match=r"meta-iteration \d+ .*lower the learning rates"):
        for _ in range(10):
            learner.meta_step(batch)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_tasks", 0, r"num_tasks must be an integer in \[2, 2\*\*24\]"),
        ("num_tasks", 1, r"a 95% CI needs at least two tasks"),
        ("seed", 256, r"seed must be an integer in \[0, 256\)"),
        ("query", 0, "query must be >= 1"),
        ("inner_steps", -1, "inner_steps must be >= 0"),
        ("inner_lr", 0.0, "inner_lr must be a positive"),
        ("inner_optimizer", "rmsprop", "inner_optimizer must be 'adam' or 'sgd'"),
        ("inner_batch", -1, "inner_batch must be >= 0"),
    ],
)
def test_invalid_eval_settings_are_refused(field, value, message):
    pool = ClassPool(torch.rand(4, 3, 1, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=message):
        evaluate(tiny_bn_net(), pool, ways=3, shots=1, config=EvalConfig(**{field: value}))


def test_evaluator_checks_output_size_and_support_shapes():
    pool = ClassPool(torch.rand(4, 3, 1, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="outputs 3 classes but the task has 4 ways"):
        evaluate(tiny_bn_net(ways=3), pool, ways=4, shots=1, config=EvalConfig(num_tasks=2, inner_steps=1))
    with pytest.raises(ValueError, match="outputs 3 classes but the task has 4 ways"):
        evaluate(tiny_bn_net(ways=3), pool, ways=4, shots=1, config=EvalConfig(num_tasks=2, inner_steps=0))
    batch = tiny_classification_batch()
    with pytest.raises(ValueError, match="without its task dimension"):
        adapt(tiny_bn_net(), batch.support_x, batch.support_y[0], EvalConfig(), finetune_generator(0, 0))
