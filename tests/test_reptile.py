"""Reptile (algorithms/reptile.py): the update rule, epsilon annealing, inner Adam state, resume, determinism.

    .venv/bin/python -m pytest -q tests/test_reptile.py
"""
from __future__ import annotations

import copy

import pytest
import torch

from _tiny import flat, one_thread, resumed_from_checkpoint, tiny_bn_net, tiny_classification_batch  # noqa: F401 (one_thread: autouse fixture)
from algorithms import MetaConfig, build_learner, task_loss
from algorithms.minibatch import cycle_minibatches


def reptile(model, total=10, seed=0, **kw):
    return build_learner(MetaConfig(algorithm="reptile", **kw), model, total_iterations=total, seed=seed)


def test_one_sgd_step_with_epsilon_one_is_one_sgd_step_on_the_task():
    """inner SGD, 1 step of size alpha on the whole support set, epsilon = 1, one task: theta <- theta - alpha grad L."""
    alpha = 0.3
    model = tiny_bn_net()
    batch = tiny_classification_batch(tasks=1)
    theta = list(copy.deepcopy(model).parameters())
    n = batch.support_x.shape[1]
    grads = torch.autograd.grad(task_loss(model(batch.support_x[0]), batch.support_y[0]), list(model.parameters()))
    expected = [t - alpha * g for t, g in zip(theta, grads)]

    learner = reptile(model, inner_optimizer="sgd", inner_lr=alpha, inner_steps=1, inner_batch=n, meta_lr=1.0, meta_lr_final=1.0)
    metrics = learner.meta_step(batch)
    assert metrics["epsilon"] == 1.0
    moved = flat(model.parameters()) - flat(theta)
    assert moved.abs().max() > 1e-3  # the step is not trivially zero
    torch.testing.assert_close(flat(model.parameters()), flat(expected), rtol=0, atol=1e-12)


def test_update_is_epsilon_times_mean_of_task_displacements():
    """Two tasks, SGD with 2 steps each: theta_new = theta + eps * mean_i(theta_i - theta), each theta_i computed by hand."""
    alpha, eps = 0.2, 0.5
    model = tiny_bn_net()
    batch = tiny_classification_batch(tasks=2)
    n = batch.support_x.shape[1]
    theta = flat(model.parameters()).detach().clone()
    ends = []
    for i in range(2):
        m = copy.deepcopy(model)
        for _ in range(2):
            loss = task_loss(m(batch.support_x[i]), batch.support_y[i])
            gs = torch.autograd.grad(loss, list(m.parameters()))
            with torch.no_grad():
                for p, g in zip(m.parameters(), gs):
                    p.sub_(alpha * g)
        ends.append(flat(m.parameters()).detach())
    expected = theta + eps * ((ends[0] - theta) + (ends[1] - theta)) / 2

    learner = reptile(model, inner_optimizer="sgd", inner_lr=alpha, inner_steps=2, inner_batch=n, meta_lr=eps, meta_lr_final=eps)
    learner.meta_step(batch)
    torch.testing.assert_close(flat(model.parameters()), expected, rtol=0, atol=1e-12)


def test_epsilon_is_annealed_linearly():
    learner = reptile(tiny_bn_net(), total=4, inner_steps=1, inner_batch=6, meta_lr=1.0, meta_lr_final=0.2)
    batch = tiny_classification_batch(tasks=1)
    eps = [learner.meta_step(batch)["epsilon"] for _ in range(4)]
    assert eps == pytest.approx([1.0, 0.8, 0.6, 0.4])


def test_persisted_inner_adam_carries_moments_across_tasks():
    """The same task twice in one meta-batch (whole-support batches, so order does not matter):
    a fresh Adam per task ends both tasks at the same point, a persisted Adam does not."""
    batch = tiny_classification_batch(tasks=1)
    twice = type(batch)(*(torch.cat([t, t]) for t in batch.tensors()))
    n = batch.support_x.shape[1]
    kw = dict(inner_steps=3, inner_batch=n, inner_lr=0.05, meta_lr=1.0, meta_lr_final=1.0)

    once = tiny_bn_net()
    reptile(once, persist_inner_state=False, **kw).meta_step(batch)
    fresh = tiny_bn_net()
    learner = reptile(fresh, persist_inner_state=False, **kw)
    learner.meta_step(twice)
    # Adam divides by sqrt(v): summation-order noise on near-zero gradients (the conv bias feeds batch
    # norm, so its true gradient is 0) grows to ~1e-10, far below the 1e-4 effect checked below.
    torch.testing.assert_close(flat(fresh.parameters()), flat(once.parameters()), rtol=0, atol=1e-8)
    assert all(s["step"] == 3 for s in learner.inner_optimizer.state.values())

    kept = tiny_bn_net()
    learner = reptile(kept, persist_inner_state=True, **kw)
    learner.meta_step(twice)
    assert (flat(kept.parameters()) - flat(once.parameters())).abs().max() > 1e-4
    learner.meta_step(twice)
    assert all(s["step"] == 12 for s in learner.inner_optimizer.state.values())


def test_resume_from_state_dict_is_bit_identical():
    batches = [tiny_classification_batch(tasks=2, shots=4, seed=s) for s in range(4)]
    kw = dict(inner_steps=3, inner_batch=5, inner_lr=0.01)  # minibatches < support: the generator matters
    straight = reptile(tiny_bn_net(), **kw)
    for b in batches:
        straight.meta_step(b)

    first = reptile(tiny_bn_net(), **kw)
    for b in batches[:2]:
        first.meta_step(b)
    resumed = resumed_from_checkpoint(first, reptile(tiny_bn_net(seed=1), **kw))  # different init: everything must come from the checkpoint
    for b in batches[2:]:
        resumed.meta_step(b)
    assert resumed.iteration == 4
    assert torch.equal(flat(resumed.model.parameters()), flat(straight.model.parameters()))


def test_same_seed_same_curve_different_seed_different_curve():
    batches = [tiny_classification_batch(tasks=2, shots=4, seed=s) for s in range(3)]
    def curve(seed):
        learner = reptile(tiny_bn_net(), seed=seed, inner_steps=3, inner_batch=5, inner_lr=0.01)
        return [learner.meta_step(b)["loss"] for b in batches]
    assert curve(0) == curve(0)
    assert curve(0) != curve(1)


def test_cycle_minibatches_uses_every_example_once_per_pass():
    g = torch.Generator().manual_seed(0)
    batches = list(cycle_minibatches(n=10, batch_size=4, num_batches=5, generator=g))
    assert [len(b) for b in batches] == [4] * 5
    order = torch.cat(batches)
    assert sorted(order[:10].tolist()) == list(range(10))  # first pass: a permutation
    assert sorted(order[10:20].tolist()) == list(range(10))  # second pass (spans batches 3..5)
    whole = list(cycle_minibatches(n=7, batch_size=0, num_batches=2, generator=g))
    assert all(sorted(b.tolist()) == list(range(7)) for b in whole)


def _foreach_contiguous(learner):
    """The learner as it ran before the fused Adam and channels-last choices."""
    learner.model.to(memory_format=torch.contiguous_format)
    c = learner.config
    learner.inner_optimizer = torch.optim.Adam(learner.model.parameters(), lr=c.inner_lr, betas=(c.adam_beta1, 0.999),
                                               foreach=True)
    return learner


def test_a_float32_cnn_on_cpu_trains_channels_last_with_the_fused_adam_and_the_rows_say_so():
    learner = reptile(tiny_bn_net().float())
    conv = learner.model[0].weight
    assert learner.channels_last and conv.stride(1) == 1 and conv.is_contiguous(memory_format=torch.channels_last)
    assert learner.inner_optimizer.defaults["fused"] is True
    assert "fused inner Adam" in learner.backend_info() and "channels-last" in learner.backend_info()
    # Float64 runs PyTorch's own convolutions, a network without convolutions has no layout to choose.
    assert not reptile(tiny_bn_net()).channels_last
    mlp = reptile(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)))
    assert not mlp.channels_last and "channels-last" not in mlp.backend_info()


def test_the_fused_adam_is_the_same_maths_as_the_per_tensor_one_in_float64():
    """Only rounding differs: three meta-steps of 3 inner Adam steps agree to 1e-10 in float64."""
    batches = [tiny_classification_batch(tasks=2, shots=4, seed=s) for s in range(3)]
    kw = dict(inner_steps=3, inner_batch=5, inner_lr=0.01)
    fused, before = reptile(tiny_bn_net(), **kw), _foreach_contiguous(reptile(tiny_bn_net(), **kw))
    assert fused.inner_optimizer.defaults["fused"] and not before.inner_optimizer.defaults["fused"]
    start = flat(fused.model.parameters()).clone()
    for b in batches:
        fused.meta_step(b)
        before.meta_step(b)
    assert (flat(fused.model.parameters()) - start).abs().max() > 1e-3  # the steps moved the weights
    torch.testing.assert_close(flat(fused.model.parameters()), flat(before.model.parameters()), rtol=0, atol=1e-10)


def test_channels_last_and_the_fused_adam_change_float32_rounding_only():
    """One meta-step in float32 on a 64-filter conv net: the same result as before both choices, to rounding.

    Except the convolution's bias: batch norm subtracts it again, so its gradient is rounding noise
    alone, and Adam's normalised step moves it by about the learning rate whatever that noise is (the
    reason every float32 number of a Reptile cell moves when rounding does)."""
    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(1, 64, 3, stride=2, padding=1),
                                   torch.nn.BatchNorm2d(64, track_running_stats=False), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(64 * 3 * 3, 3))
    batch = tiny_classification_batch(tasks=2, shots=4).to("cpu", dtype=torch.float32)
    kw = dict(inner_steps=3, inner_batch=5, inner_lr=0.01)
    now, before = reptile(net(), **kw), _foreach_contiguous(reptile(net(), **kw))
    now.meta_step(batch)
    before.meta_step(batch)
    rest = [name for name, _ in now.model.named_parameters() if name != "0.bias"]
    now_p, before_p = dict(now.model.named_parameters()), dict(before.model.named_parameters())
    torch.testing.assert_close(flat(now_p[n] for n in rest), flat(before_p[n] for n in rest), rtol=1e-4, atol=1e-5)
    assert (now_p["0.bias"] - before_p["0.bias"]).abs().max() <= 3 * kw["inner_lr"] * kw["inner_steps"]


def test_the_batched_backend_keeps_its_own_layout_and_adam():
    learner = build_learner(MetaConfig(algorithm="reptile", backend="batched", persist_inner_state=False),
                            tiny_bn_net().float(), total_iterations=10)
    assert not learner.channels_last and learner.model[0].weight.is_contiguous()
