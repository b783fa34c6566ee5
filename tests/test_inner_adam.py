"""The batched backend's functional inner Adam (``functional.AdamState``) is torch.optim.Adam.

Float64, five steps, Reptile's beta1 = 0 and the default 0.9, both the fused
kernel (the default) and the foreach fallback.

    .venv/bin/python -m pytest -q tests/test_inner_adam.py
"""
from __future__ import annotations

import pytest
import torch

from algorithms.functional import AdamState


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_matches_torch_adam(fused, beta1):
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (7,)]
    ours = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    ref = [p.clone().requires_grad_() for p in ours]
    start = [p.clone() for p in ours]
    state = AdamState(ours, lr=0.01, beta1=beta1, fused=fused)
    opt = torch.optim.Adam(ref, lr=0.01, betas=(beta1, 0.999), foreach=False)
    for _ in range(5):
        grads = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
        state.step_(ours, grads)
        for p, gr in zip(ref, grads):
            p.grad = gr.clone()
        opt.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-15)
    assert state.step == 5
    # The update moved the weights (a no-op would not be torch.optim.Adam either).
    assert all(not torch.allclose(a, b) for a, b in zip(ours, start))


def test_the_fused_kernel_on_each_tasks_own_tensors_is_bit_identical_to_torch_adam_in_float32():
    """The batched evaluator's CPU optimiser: per-task slices of stacked weights (channels-last ones too) get
    the bits torch.optim.Adam(fused=True) gives each task's own tensors (sizes straddle SIMD widths and tails)."""
    from algorithms.batched_eval import per_task_channels_last

    g = torch.Generator().manual_seed(0)
    for trial in range(6):
        T = 3
        shapes = [(int(torch.randint(1, 70, (1,), generator=g)), int(torch.randint(2, 9, (1,), generator=g)), 3, 3),
                  (int(torch.randint(1, 3000, (1,), generator=g)),)]
        own = [[torch.randn(s, generator=g) for s in shapes] for _ in range(T)]
        stacked = [torch.stack([own[t][i] for t in range(T)]) for i in range(len(shapes))]
        stacked[0] = per_task_channels_last(stacked[0])
        refs = [[p.clone().contiguous(memory_format=torch.channels_last if p.dim() == 4 else torch.contiguous_format)
                 .requires_grad_() for p in task] for task in own]
        opts = [torch.optim.Adam(r, lr=1e-3, betas=(0.0, 0.999), fused=True) for r in refs]
        views = [w[t] for w in stacked for t in range(T)]
        state = AdamState(views, lr=1e-3, beta1=0.0)
        for _ in range(15):
            scale = 10 ** float(torch.empty(1).uniform_(-6, 0, generator=g))
            grads = [torch.randn((T, *s), generator=g) * scale for s in shapes]
            for t in range(T):
                for r, gr in zip(refs[t], grads):
                    r.grad = gr[t].clone().contiguous(memory_format=torch.channels_last if gr.dim() == 5 else torch.contiguous_format)
                opts[t].step()
            laid = [torch.empty_like(w).copy_(gr) for w, gr in zip(stacked, grads)]
            state.step_(views, [gr[t] for gr in laid for t in range(T)])
        assert all(torch.equal(stacked[i][t], refs[t][i].detach()) for t in range(T) for i in range(len(shapes))), trial
        assert refs[0][0].stride(1) == 1 and stacked[0][0].stride() == refs[0][0].stride()  # channels-last both


def test_the_inner_optimiser_of_reptile_and_the_evaluator_is_torchs_fused_adam():
    """make_inner_optimizer asks for the fused kernel (faster on CPU): the same maths as torch's default Adam
    (float64, 25 steps, to 1e-12), and on a device without the kernel the foreach ops."""
    from algorithms.reptile import make_inner_optimizer

    g = torch.Generator().manual_seed(1)
    shapes = [(64, 1, 3, 3), (64,), (64, 64, 3, 3), (5, 256), (5,)]
    a = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]
    b = [p.detach().clone().requires_grad_() for p in a]
    ours, default = make_inner_optimizer(a, "adam", 1e-3, 0.0), torch.optim.Adam(b, lr=1e-3, betas=(0.0, 0.999))
    assert ours.defaults["fused"] is True
    for _ in range(25):
        scale = 10 ** float(torch.empty(1).uniform_(-7, 0, generator=g))
        for x, y in zip(a, b):
            grad = torch.randn(x.shape, generator=g, dtype=torch.float64) * scale
            x.grad, y.grad = grad.clone(), grad.clone()
        ours.step()
        default.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=0)
    meta = make_inner_optimizer([torch.zeros(3, device="meta", requires_grad=True)], "adam", 1e-3, 0.0)
    assert not meta.defaults["fused"] and meta.defaults["foreach"]
