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


def test_exact_mode_is_bit_identical_to_torch_adam_in_float32_on_flat_and_split_tensors():
    """The batched evaluator's CPU optimiser: one flat tensor for many tasks, the same bits as
    torch.optim.Adam stepping each tensor on its own (sizes straddle SIMD widths and tails)."""
    g = torch.Generator().manual_seed(0)
    for trial in range(10):
        sizes = [int(n) for n in torch.randint(1, 3000, (6,), generator=g)]
        ref = [torch.randn(n, generator=g).requires_grad_() for n in sizes]
        flat = torch.cat([p.detach().reshape(-1) for p in ref])
        opt = torch.optim.Adam(ref, lr=1e-3, betas=(0.0, 0.999))
        state = AdamState([flat], lr=1e-3, beta1=0.0, exact=True)
        for _ in range(15):
            scale = 10 ** float(torch.empty(1).uniform_(-6, 0, generator=g))
            grads = [torch.randn(n, generator=g) * scale for n in sizes]
            for p, gr in zip(ref, grads):
                p.grad = gr.clone()
            opt.step()
            state.step_([flat], [torch.cat(grads)])
        assert torch.equal(flat, torch.cat([p.detach() for p in ref])), trial


def test_the_inner_optimiser_of_reptile_and_the_evaluator_is_bit_identical_to_torch_adams_default():
    """make_inner_optimizer asks for foreach=True (faster on CPU); it must not change a single bit."""
    from algorithms.reptile import make_inner_optimizer

    g = torch.Generator().manual_seed(1)
    shapes = [(64, 1, 3, 3), (64,), (64, 64, 3, 3), (5, 256), (5,)]
    a = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
    b = [p.detach().clone().requires_grad_() for p in a]
    ours, default = make_inner_optimizer(a, "adam", 1e-3, 0.0), torch.optim.Adam(b, lr=1e-3, betas=(0.0, 0.999))
    for _ in range(25):
        scale = 10 ** float(torch.empty(1).uniform_(-7, 0, generator=g))
        for x, y in zip(a, b):
            grad = torch.randn(x.shape, generator=g) * scale
            x.grad, y.grad = grad.clone(), grad.clone()
        ours.step()
        default.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
