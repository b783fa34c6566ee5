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
