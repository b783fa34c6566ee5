"""Conjugate gradient on lists of tensors, for one system or for many independent ones at once.

iMAML's meta-gradient solves (I + H / lambda) x = g with H the support-loss Hessian at the adapted
weights; only products H v are available (double backward), so the system is solved by CG with a fixed
number of iterations (the iMAML paper's 5), starting from x = 0. ``dot`` decides what "one system" is:
``plain_dot`` sums everything (one task), a per-task dot (``batched_variants``) returns one value per
task so that T independent systems advance together, each with its own step sizes.

    x, residual = conjugate_gradient(lambda v: A(v), b, steps=5)   # residual = ||b - A x|| / ||b||
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Vec = list[Tensor]


def plain_dot(a: Vec, b: Vec) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def plain_scale(v: Vec, s: Tensor) -> Vec:
    return [t * s for t in v]


def conjugate_gradient(apply_a: Callable[[Vec], Vec], b: Vec, steps: int,
                       dot: Callable[[Vec, Vec], Tensor] = plain_dot,
                       scale: Callable[[Vec, Tensor], Vec] = plain_scale) -> tuple[Vec, Tensor]:
    """Approximately solve A x = b (A symmetric positive definite) with ``steps`` CG iterations from x = 0.

    Returns x and the relative residual ||r|| / ||b|| of the recursion (one value, or one per system).
    A system whose residual reaches exactly zero stops moving (no division by zero).
    """
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rr = dot(r, r)
    bb = rr.clone()
    for _ in range(steps):
        ap = apply_a(p)
        pap = dot(p, ap)
        alpha = torch.where(pap != 0, rr / torch.where(pap != 0, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x = [xi + yi for xi, yi in zip(x, scale(p, alpha))]
        r = [ri - yi for ri, yi in zip(r, scale(ap, alpha))]
        rr_new = dot(r, r)
        beta = torch.where(rr != 0, rr_new / torch.where(rr != 0, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = [ri + yi for ri, yi in zip(r, scale(p, beta))]
        rr = rr_new
    return x, torch.sqrt(rr / torch.where(bb > 0, bb, torch.ones_like(bb)))
