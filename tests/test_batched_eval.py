"""The batched evaluator against the serial one (the reference): identical per-task scores in float64,
for both protocols, both inner optimisers, regression, and both ways of batching the network.

    .venv/bin/python -m pytest -q tests/test_batched_eval.py
"""
from __future__ import annotations

import pytest
import torch

from _tiny import one_thread, tiny_bn_net  # noqa: F401 (one_thread: autouse fixture)
from algorithms import DivergedError, build_model
from algorithms.batched_eval import evaluate_batched
from algorithms.evaluation import EvalConfig, evaluate
from datasets.sine import SinePool
from datasets.tasks import ClassPool

ADAM = dict(inner_steps=6, inner_lr=0.01, inner_optimizer="adam", inner_batch=2)
SGD = dict(inner_steps=3, inner_lr=0.4, inner_optimizer="sgd", inner_batch=0)


def pool() -> ClassPool:
    g = torch.Generator().manual_seed(0)
    return ClassPool(torch.rand(8, 6, 1, 5, 5, generator=g, dtype=torch.float64), name="tiny")


@pytest.mark.parametrize("transductive", [True, False])
@pytest.mark.parametrize("inner", [ADAM, SGD], ids=["adam", "sgd"])
@pytest.mark.parametrize("conv_mode", ["loop", "grouped"])
def test_float64_per_task_scores_equal_the_serial_evaluator(transductive, inner, conv_mode):
    model = tiny_bn_net(ways=3)
    config = EvalConfig(num_tasks=300, query=2, transductive=transductive, seed=3, **inner)
    serial = evaluate(model, pool(), 3, 2, EvalConfig(**{**config.to_dict(), "mode": "serial"}))
    batched, metric = evaluate_batched(model, pool(), 3, 2, config, torch.device("cpu"), task_batch=64,
                                       conv_mode=conv_mode)
    assert metric == "accuracy" and len(batched) == 300
    assert batched == serial.per_task  # identical, task for task
    assert len(set(batched)) > 1  # the tasks differ: the comparison is not vacuous


def test_batched_is_what_evaluate_runs_in_batched_mode_and_the_row_says_so():
    model = tiny_bn_net(ways=3)
    res = evaluate(model, pool(), 3, 1, EvalConfig(num_tasks=10, query=2, mode="batched", **SGD))
    assert res.mode == "batched"
    assert evaluate(model, pool(), 3, 1, EvalConfig(num_tasks=10, query=2, mode="serial", **SGD)).mode == "serial"


@pytest.mark.parametrize("conv_mode", ["loop", "grouped"])
def test_float64_regression_matches_to_rounding(conv_mode):
    torch.manual_seed(0)
    model = build_model("sine", 1).double()
    config = EvalConfig(num_tasks=200, query=20, seed=100, inner_steps=5, inner_lr=0.01, inner_optimizer="sgd",
                        inner_batch=0)
    serial = evaluate(model, SinePool(), 1, 10, EvalConfig(**{**config.to_dict(), "mode": "serial"}))
    batched, metric = evaluate_batched(model, SinePool(), 1, 10, config, torch.device("cpu"), conv_mode=conv_mode)
    assert metric == "mse"
    assert batched == pytest.approx(serial.per_task, rel=1e-12)
    if conv_mode == "loop":
        assert batched == serial.per_task  # the very same kernels: bit-identical


def test_float32_loop_mode_is_bit_identical_on_the_omniglot_net():
    """CPU's default (batched_eval.CONV_MODE): the serial evaluator's kernels, so even float32 scores agree."""
    torch.manual_seed(0)
    model = build_model("omniglot", 5)
    g = torch.Generator().manual_seed(1)
    images = ClassPool(torch.rand(10, 4, 1, 28, 28, generator=g), name="random")
    for cfg in (ADAM | {"inner_steps": 4}, SGD):
        for transductive in (True, False):
            config = EvalConfig(num_tasks=12, query=1, transductive=transductive, **cfg)
            serial = evaluate(model, images, 5, 1, EvalConfig(**{**config.to_dict(), "mode": "serial"}))
            assert evaluate_batched(model, images, 5, 1, config, torch.device("cpu"), conv_mode="loop")[0] == serial.per_task


@pytest.mark.parametrize("mode", ["serial", "batched"])
def test_a_blown_up_fine_tuning_is_an_error_not_a_score(mode):
    torch.manual_seed(0)
    model = build_model("sine", 1)
    config = EvalConfig(num_tasks=4, query=10, seed=100, inner_steps=10, inner_lr=1e6, inner_optimizer="sgd",
                        inner_batch=0, mode=mode)
    with pytest.raises(DivergedError, match="evaluation diverged.*lower eval.inner_lr"):
        evaluate(model, SinePool(), 1, 10, config, diverge_factor=100.0)


@pytest.mark.parametrize("mode", ["serial", "batched"])
def test_a_loss_that_ends_far_above_its_start_is_divergence(mode):
    model = tiny_bn_net(ways=3)
    config = EvalConfig(num_tasks=4, query=2, inner_steps=5, inner_lr=1e4, inner_optimizer="sgd", inner_batch=0,
                        mode=mode)
    with pytest.raises(DivergedError, match="fine-tuning task"):
        evaluate(model, pool(), 3, 2, config, diverge_factor=10.0)


@pytest.mark.parametrize("layout", ["contiguous", "channels-last"], ids=["as-maml-leaves-it", "as-reptile-leaves-it"])
@pytest.mark.parametrize("inner", [ADAM, SGD], ids=["adam", "sgd"])
def test_float32_fine_tuned_weights_are_bit_identical_to_the_serial_evaluators(layout, inner):
    """Stronger than equal scores: every fine-tuned weight of every task, whatever layout training left."""
    from algorithms.batched_eval import fine_tune
    from algorithms.evaluation import adapt, finetune_generator
    from algorithms.functional import TaskNet

    torch.manual_seed(0)
    model = build_model("omniglot", 5)
    if layout == "channels-last":
        model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    images = ClassPool(torch.rand(10, 4, 1, 28, 28, generator=g), name="random")
    config = EvalConfig(num_tasks=4, query=1, **(inner | {"inner_steps": 4}))
    batch = images.sample_batch(5, 2, 1, config.seed, range(4))
    net = TaskNet(model, "loop")
    fast = fine_tune(net, [p.detach() for p in model.parameters()], batch, config, range(4), None)
    for t in range(4):
        fine = adapt(model, batch.support_x[t], batch.support_y[t], config, finetune_generator(config.seed, t))
        assert fine[0].weight.stride(1) == 1 and fast[0][t].stride() == fine[0].weight.stride()  # channels-last both
        assert all(torch.equal(w[t], p.detach()) for w, p in zip(fast, fine.parameters())), t
