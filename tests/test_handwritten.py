"""The handwritten inner step (algorithms/handwritten.py) against autograd: the same bits, and the same maths.

Losses, outputs and gradients must equal autograd's bit for bit (float32 in both memory layouts, float64),
for the three reference models; optimiser steps through ``InnerStep`` must leave the weights and the
optimiser's state equal to ``loss.backward(); optimizer.step()``'s, through a checkpoint round trip too;
and one gradient is checked against central finite differences in float64. Also pinned: why gradients must be
laid out like their weights (torch's fused CPU Adam pairs elements by memory position).

    .venv/bin/python -m pytest -q tests/test_handwritten.py
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from _tiny import one_thread, tiny_bn_net  # noqa: F401 (one_thread: autouse fixture)
from algorithms import MetaConfig, build_learner, task_loss
from datasets.tasks import TaskBatch
from algorithms.functional import flat_views, memory_order
from algorithms.handwritten import DirectAdam, HandwrittenNet, InnerStep, memory_perm
from algorithms.models import MiniImageNetCNN, OmniglotCNN, SineMLP
from algorithms.reptile import make_inner_optimizer


def _case(name: str, dtype, channels_last: bool, batch: int = 6):
    torch.manual_seed(0)
    if name == "omniglot":
        model, x, y = OmniglotCNN(5), torch.randn(batch, 1, 28, 28), torch.arange(batch) % 5
    elif name == "miniimagenet":
        model, x, y = MiniImageNetCNN(5), torch.randn(batch, 3, 84, 84), torch.arange(batch) % 5
    else:
        model, x = SineMLP(), torch.rand(batch, 1) * 10 - 5
        y = torch.sin(x)
    model = model.to(dtype)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, x.to(dtype), y.to(dtype) if y.is_floating_point() else y


def _autograd(model, x, y):
    out = model(x)
    loss = task_loss(out, y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss.detach(), out.detach(), grads


CASES = [("omniglot", torch.float32, True), ("omniglot", torch.float32, False), ("omniglot", torch.float64, False),
         ("miniimagenet", torch.float32, True), ("miniimagenet", torch.float32, False), ("sine", torch.float32, False),
         ("sine", torch.float64, False)]


@pytest.mark.parametrize("name,dtype,channels_last", CASES)
def test_loss_output_and_gradients_are_autograds_bit_for_bit(name, dtype, channels_last):
    model, x, y = _case(name, dtype, channels_last)
    params = list(model.parameters())
    loss, out, grads = HandwrittenNet(model).loss_and_grads(params, x, y)
    ref_loss, ref_out, ref_grads = _autograd(model, x, y)
    assert torch.equal(loss, ref_loss) and torch.equal(out, ref_out)
    for p, g, r in zip(params, grads, ref_grads):
        assert torch.equal(g, r), (name, tuple(p.shape), (g - r).abs().max().item())
        assert g.stride() == p.stride()  # laid out as the optimiser gets it from autograd
    assert any(g.abs().max() > 0 for g in grads)


def test_one_gradient_matches_central_finite_differences_in_float64():
    model = tiny_bn_net()
    torch.manual_seed(1)
    x, y = torch.randn(4, 1, 5, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    params = list(model.parameters())
    _, _, grads = HandwrittenNet(model).loss_and_grads(params, x, y)
    direction = [torch.randn_like(p) for p in params]
    h = 1e-6

    def loss_at(t):
        with torch.no_grad():
            moved = copy.deepcopy(model)
            for p, d in zip(moved.parameters(), direction):
                p.add_(t * d)
            return task_loss(moved(x), y).item()

    numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
    analytic = sum((g * d).sum().item() for g, d in zip(grads, direction))
    assert abs(numeric - analytic) < 1e-7 * max(1.0, abs(analytic))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_inner_steps_leave_weights_and_optimiser_state_equal_to_autograds_through_a_checkpoint(optimizer):
    fast, x, y = _case("omniglot", torch.float32, True, batch=10)
    ref = copy.deepcopy(fast)
    opt_fast = make_inner_optimizer(fast.parameters(), optimizer, 1e-3 if optimizer == "adam" else 0.1, 0.0)
    opt_ref = make_inner_optimizer(ref.parameters(), optimizer, 1e-3 if optimizer == "adam" else 0.1, 0.0)
    step, ref_step = InnerStep(fast, opt_fast), InnerStep(ref, opt_ref, handwritten=False)
    assert step.net is not None and ref_step.net is None
    assert step.adam.direct == (optimizer == "adam")
    for k in range(6):
        if k == 3:  # a resumed run: the optimiser's state is replaced, the cached tensors must follow
            opt_fast.load_state_dict(copy.deepcopy(opt_fast.state_dict()))
        idx = torch.arange(10).roll(k)[:8]
        assert torch.equal(step(x[idx], y[idx]), ref_step(x[idx], y[idx]))
    assert all(torch.equal(p, q) for p, q in zip(fast.parameters(), ref.parameters()))
    assert all(p.grad is None for p in fast.parameters())
    if optimizer == "adam":
        for p, q in zip(fast.parameters(), ref.parameters()):
            a, b = opt_fast.state[p], opt_ref.state[q]
            assert all(torch.equal(a[key], b[key]) for key in ("step", "exp_avg", "exp_avg_sq"))


def test_direct_adam_takes_the_optimisers_own_step_where_it_cannot_call_the_kernel_itself():
    model, x, y = _case("omniglot", torch.float32, False)
    params = list(model.parameters())
    for opt in (torch.optim.Adam(params, lr=1e-3, foreach=True), torch.optim.Adam(params, lr=1e-3, fused=True, weight_decay=0.1),
                torch.optim.SGD(params, lr=0.1)):
        assert not DirectAdam(opt).direct
    assert DirectAdam(torch.optim.Adam(params, lr=1e-3, fused=True)).direct


def test_memory_perm_makes_a_contiguous_view_of_the_same_memory_in_its_order():
    weight = torch.randn(4, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    view = weight.permute(memory_perm(weight))
    assert view.is_contiguous() and view.shape == (4, 2, 2, 3) and view.data_ptr() == weight.data_ptr()
    assert torch.equal(view, weight.permute(0, 2, 3, 1))
    plain, strided = torch.randn(4, 3), torch.randn(4, 6)[:, ::2]
    assert memory_perm(plain) is None and memory_perm(strided) is None  # contiguous; no dense order


def test_direct_adam_steps_every_count_at_once_and_hands_the_kernel_nothing_to_copy():
    """Its step counts are views of one tensor (one increment a step), and a channels-last weight reaches the
    fused kernel as a memory-order view: handed over as it is, the kernel copies its gradient first."""
    model, x, y = _case("omniglot", torch.float32, True, batch=10)
    opt = make_inner_optimizer(model.parameters(), "adam", 1e-3, 0.0)
    step = InnerStep(model, opt)
    for _ in range(2):
        step(x, y)
    counts = [opt.state[p]["step"] for p in model.parameters()]
    assert len({c.untyped_storage().data_ptr() for c in counts}) == 1 and all(c.item() == 2 for c in counts)
    with torch.profiler.profile() as prof:
        step(x, y)
    names = [e.name for e in prof.events()]
    assert "aten::_fused_adam_" in names and "aten::contiguous" not in names and "aten::_foreach_add_" not in names
    assert all(c.item() == 3 for c in counts)
    copy.deepcopy(step)  # what it caches are plain tensors (the runner deep-copies learners to probe memory)


def test_what_it_does_not_support_keeps_autograd():
    with_stats = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2))
    frozen = tiny_bn_net()
    frozen[0].weight.requires_grad_(False)
    for model in (with_stats, frozen, nn.Sequential(nn.Conv2d(1, 2, 3, padding="same")), SineMLP().train()[0]):
        assert not HandwrittenNet.supports(model)
        with pytest.raises(ValueError, match="HandwrittenNet supports"):
            HandwrittenNet(model)
    model = tiny_bn_net()
    head_only = torch.optim.SGD(model[-1].parameters(), lr=0.1)  # fine-tuning the head alone: autograd's step
    assert InnerStep(model, head_only).net is None
    assert InnerStep(model, torch.optim.SGD(model.parameters(), lr=0.1)).net is not None


def test_the_output_check_runs_before_the_loss():
    model, x, y = _case("omniglot", torch.float32, True)
    seen = []
    HandwrittenNet(model).loss_and_grads(list(model.parameters()), x, y, check=lambda out: seen.append(out.shape))
    assert seen == [torch.Size([6, 5])]
    with pytest.raises(ValueError, match="differs from the target"):
        HandwrittenNet(SineMLP()).loss_and_grads(list(SineMLP().parameters()), torch.zeros(3, 1), torch.zeros(3))


def test_channels_last_flat_views_hold_the_weights_in_memory_order():
    model, _, _ = _case("omniglot", torch.float32, False)
    tensors = [p.detach() for p in model.parameters()]
    flat, views = flat_views(tensors, channels_last=True)
    for t, v in zip(tensors, views):
        assert torch.equal(t, v) and v.data_ptr() >= flat.data_ptr()
        assert v.is_contiguous(memory_format=torch.channels_last) if t.dim() == 4 else v.is_contiguous()
    assert torch.equal(torch.cat([memory_order(v) for v in views]), flat)
    with torch.no_grad():
        views[0].add_(1.0)  # a view: the flat tensor sees it
    assert torch.equal(flat[:views[0].numel()], memory_order(tensors[0]) + 1.0)


def _omniglot_like_batch(tasks: int = 2, n: int = 10) -> TaskBatch:
    g = torch.Generator().manual_seed(3)
    x = lambda: torch.randn(tasks, n, 1, 28, 28, generator=g)  # noqa: E731
    y = (torch.arange(n) % 5).expand(tasks, -1).contiguous()
    return TaskBatch(x(), y, x(), y)


@pytest.mark.parametrize("backend", ["reference", "batched"])
def test_reptile_trains_on_the_same_bits_with_or_without_autograd(backend):
    """Both backends, on the Omniglot net in float32: the handwritten inner step only changes the time."""
    batch = _omniglot_like_batch()
    cfg = MetaConfig(algorithm="reptile", backend=backend, inner_steps=3, inner_batch=5, inner_lr=1e-3, adam_beta1=0.0,
                     meta_lr=1.0, persist_inner_state=backend == "reference")
    learners = []
    for handwritten in (True, False):
        torch.manual_seed(0)
        learner = build_learner(cfg, OmniglotCNN(5), total_iterations=10)
        if backend == "reference":
            learner.handwritten = handwritten
        else:
            learner.channels_last_loop = False  # the layout autograd's loop mode uses, to compare bits
            learner.hand = learner.hand if handwritten else None
        learners.append(learner)
    for _ in range(2):
        for learner in learners:
            learner.meta_step(batch)
    (a, b) = (list(learner.model.parameters()) for learner in learners)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert "handwritten inner backward" in learners[0].backend_info()  # the rows say so


def test_the_batched_reptiles_channels_last_loop_changes_float32_rounding_only():
    batch = _omniglot_like_batch()
    cfg = MetaConfig(algorithm="reptile", backend="batched", inner_optimizer="sgd", inner_steps=3, inner_batch=5,
                     inner_lr=0.1, meta_lr=1.0, persist_inner_state=False)
    grads = []
    for channels_last in (True, False):
        torch.manual_seed(0)
        learner = build_learner(cfg, OmniglotCNN(5), total_iterations=10)
        assert learner.channels_last_loop  # a float32 CNN on CPU
        learner.channels_last_loop = channels_last
        grads.append(torch.cat([g.reshape(-1) for g in learner.meta_gradient(batch)[0]]))
    assert not torch.equal(grads[0], grads[1])  # other kernels: other rounding
    assert (grads[0] - grads[1]).norm() < 1e-4 * grads[1].norm()


def test_torchs_fused_adam_on_cpu_needs_each_gradient_in_its_weights_layout():
    """A finding, pinned: given a channels-last weight and a contiguous gradient, torch 2.13's fused CPU Adam
    pairs their elements by memory position, not by index, and steps the wrong weights. Autograd never hands it
    such a pair; ``HandwrittenNet`` lays every gradient out like its weight for that reason."""
    torch.manual_seed(0)
    weight = torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(8, 4, 3, 3)

    def stepped(g):
        p = weight.clone()  # keeps channels-last
        state = [torch.zeros_like(p), torch.zeros_like(p), torch.zeros(())]
        state[2].add_(1)
        torch._fused_adam_([p], [g], [state[0]], [state[1]], [], [state[2]], lr=0.1, beta1=0.0, beta2=0.999,
                           weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)
        return p

    expected = weight - 0.1 * grad / (grad.abs() + 1e-8)  # Adam's first step with beta1 = 0
    torch.testing.assert_close(stepped(grad.contiguous(memory_format=torch.channels_last)), expected)
    assert (stepped(grad) - expected).abs().max() > 1e-2  # contiguous gradient: other elements stepped
    model = OmniglotCNN(5).to(memory_format=torch.channels_last)
    _, _, grads = HandwrittenNet(model).loss_and_grads(list(model.parameters()), torch.randn(2, 1, 28, 28),
                                                        torch.tensor([0, 1]))
    assert all(g.is_contiguous(memory_format=torch.channels_last) for g in grads if g.dim() == 4)
