"""Functional, task-batched building blocks for the batched backend (``algorithms/batched.py``).

``TaskNet(model)`` reads a plain ``nn.Sequential`` (the reference models of
``models.py``) and evaluates it with *per-task* parameters: every parameter is
stacked on a leading task dimension ``[T, *shape]`` and the inputs are
``[T, B, ...]``. Two ways of batching the convolutional part are offered:

- ``grouped``: the T tasks are folded into the channel dimension,
  ``[B, T*C, H, W]``; a convolution becomes one grouped convolution
  (``groups=T``) with the T weight tensors concatenated, and the ordinary
  ``F.batch_norm`` over ``T*C`` channels computes each task's own batch
  statistics. Linear layers are one ``baddbmm`` over tasks.
- ``loop``: the network runs task by task on its slice of the parameters
  (unbound once per call) and the outputs are stacked.

Both use only ordinary differentiable ops, so plain autograd gives exact
first- and second-order derivatives. We deliberately do not use
``torch.func.vmap``: its batch-norm batching rule yields wrong second-order
gradients in torch 2.13 (PITFALLS section 1), and torch.func refuses
saved-tensor hooks (section 2), which the memory benchmark needs.
``auto`` picks ``grouped`` on CUDA and for nets without convolutions (where it
is a pure win), and ``loop`` for conv nets on CPU: on this project's 2-core
CPU (one thread, Omniglot net, 5 tasks, forward+backward) the grouped version
measured on par at 10 images per task but 1.4x slower at 25 and 2.0x slower at
75 than the per-task loop (im2col + bmm was slower still);
``python -m benchmarks.perf.limits`` times the batched learners in both modes.

The inner optimisers are functional and update all tasks at once (one kernel
per parameter tensor for the whole meta-batch): ``sgd_`` (``torch._foreach_*``)
and ``AdamState.step_`` (torch's fused Adam kernel, or ``torch._foreach_*`` ops without it), which
reproduce ``torch.optim.SGD`` / ``torch.optim.Adam`` (bias corrections included) on each
task's slice. ``flat_views`` lets Adam update all parameter tensors as one flat tensor.

    net = TaskNet(model)                         # conv_mode="auto"
    fast = net.stack(list(model.parameters()), T)
    losses, out = net.task_losses(fast, x, y)    # [T] each task's mean loss, [T, B, out]
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import check_output_size
from .handwritten import laid_out_like, memory_perm, permuted

_ELEMENTWISE = (nn.ReLU,)


class TaskNet:
    """A functional, task-batched view of an ``nn.Sequential`` (parameters in ``model.parameters()`` order)."""

    def __init__(self, model: nn.Module, conv_mode: str = "auto", needs_head: bool = True):
        if conv_mode not in ("auto", "grouped", "loop"):
            raise ValueError(f"conv_mode must be 'auto', 'grouped' or 'loop', got {conv_mode!r}")
        if not isinstance(model, nn.Sequential):
            raise ValueError(
                f"the batched backend needs an nn.Sequential of Conv2d/BatchNorm2d/ReLU/MaxPool2d/Flatten/Linear, "
                f"got {type(model).__name__}; use backend='reference'"
            )
        self.model = model
        self.layers: list[tuple[nn.Module, list[int]]] = []  # (module, indices of its parameters)
        index = {id(p): i for i, p in enumerate(model.parameters())}
        for m in model:
            self._check_supported(m)
            self.layers.append((m, [index[id(p)] for p in m.parameters(recurse=False)]))
        self.num_params = len(index)
        linears = [m for m, _ in self.layers if isinstance(m, nn.Linear)]
        if not linears and needs_head:
            raise ValueError("batched backend: the network must end with a Linear layer")
        self.out_features = linears[-1].out_features if linears else None  # None: a body (ANIL) ending in features
        self.has_conv = any(isinstance(m, nn.Conv2d) for m, _ in self.layers)
        self.conv_mode = conv_mode

    @staticmethod
    def _check_supported(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ValueError(f"batched backend: unsupported convolution {m} (needs groups=1, zero padding given as numbers)")
        elif isinstance(m, nn.BatchNorm2d):
            if m.track_running_stats:
                raise ValueError(
                    f"batched backend: {m} tracks running statistics; the reference models use batch statistics "
                    "(track_running_stats=False), which is all this backend implements"
                )
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise ValueError(f"batched backend: only Flatten(1, -1) is supported, got {m}")
        elif not isinstance(m, (nn.Linear, nn.MaxPool2d) + _ELEMENTWISE):
            raise ValueError(f"batched backend: unsupported layer {type(m).__name__}; use backend='reference'")

    def check_output_size(self, target: Tensor) -> None:
        """``base.check_output_size`` for one task's targets, from the head's size (no forward needed)."""
        check_output_size(torch.empty(target.shape[0], self.out_features), target)

    def mode_for(self, device: torch.device) -> str:
        if self.conv_mode != "auto":
            return self.conv_mode
        return "grouped" if (device.type == "cuda" or not self.has_conv) else "loop"

    @staticmethod
    def stack(params: Sequence[Tensor], tasks: int) -> list[Tensor]:
        """Each parameter broadcast to ``[tasks, *shape]`` (a differentiable view; clone it to update in place)."""
        return [p.unsqueeze(0).expand(tasks, *p.shape) for p in params]

    # -- forward -----------------------------------------------------------------------------------------------

    def __call__(self, params: Sequence[Tensor], x: Tensor) -> Tensor:
        """Outputs ``[T, B, out]`` for inputs ``[T, B, ...]`` and stacked parameters ``[T, *shape]``."""
        if len(params) != self.num_params:
            raise ValueError(f"expected {self.num_params} parameter tensors, got {len(params)}")
        if self.mode_for(x.device) == "loop":
            per_task = list(zip(*(p.unbind(0) for p in params)))
            return torch.stack([self.forward_one(per_task[t], x[t]) for t in range(x.shape[0])])
        return self._forward_grouped(params, x)

    def forward_one(self, params: Sequence[Tensor], h: Tensor) -> Tensor:
        """The plain network on one task (``h`` is ``[B, ...]``)."""
        for m, idx in self.layers:
            p = [params[i] for i in idx]
            if isinstance(m, nn.Conv2d):
                h = F.conv2d(h, p[0], p[1] if len(p) > 1 else None, m.stride, m.padding, m.dilation)
            elif isinstance(m, nn.BatchNorm2d):
                w, b = (p[0], p[1]) if p else (None, None)
                h = F.batch_norm(h, None, None, w, b, True, 0.0, m.eps)
            elif isinstance(m, nn.Linear):
                h = F.linear(h, p[0], p[1] if len(p) > 1 else None)
            else:
                h = m(h)  # ReLU, MaxPool2d, Flatten: parameter-free, same on every task
        return h

    def _forward_grouped(self, params: Sequence[Tensor], x: Tensor) -> Tensor:
        T, B = x.shape[:2]
        h, folded = x, False
        for m, idx in self.layers:
            p = [params[i] for i in idx]
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)) and not folded:
                # [T, B, C, H, W] -> [B, T*C, H, W]: channel t*C + c is task t's channel c.
                h, folded = h.transpose(0, 1).reshape(B, T * h.shape[2], *h.shape[3:]), True
            if isinstance(m, nn.Conv2d):
                w = p[0].reshape(T * p[0].shape[1], *p[0].shape[2:])
                b = p[1].reshape(-1) if len(p) > 1 else None
                h = F.conv2d(h, w, b, m.stride, m.padding, m.dilation, groups=T)
            elif isinstance(m, nn.BatchNorm2d):
                w, b = (p[0].reshape(-1), p[1].reshape(-1)) if p else (None, None)
                h = F.batch_norm(h, None, None, w, b, True, 0.0, m.eps)
            elif isinstance(m, nn.Flatten):
                # Task t's features (C, H, W) are contiguous in the folded layout, in Flatten's order.
                h = h.reshape(B, T, -1).transpose(0, 1) if folded else h.reshape(T, B, -1)
                folded = False
            elif isinstance(m, nn.Linear):
                if folded:
                    raise ValueError("batched backend: a Linear layer needs a Flatten after the convolutions")
                w = p[0].transpose(1, 2)
                h = torch.baddbmm(p[1].unsqueeze(1), h, w) if len(p) > 1 else torch.bmm(h, w)
            else:
                h = m(h)
        if folded:
            raise ValueError("batched backend: the network must end with Flatten (+ Linear)")
        return h

    def task_losses(self, params: Sequence[Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(per-task mean loss ``[T]``, outputs ``[T, B, out]``); cross-entropy for int64 labels, else MSE.

        Per task this is exactly ``base.task_loss``; summing the T losses and
        differentiating w.r.t. the stacked parameters gives each task its own gradient.
        """
        out = self(params, x)
        T, B = out.shape[:2]
        if y.is_floating_point():
            return (out - y).pow(2).reshape(T, -1).mean(1), out
        return F.cross_entropy(out.reshape(T * B, -1), y.reshape(-1), reduction="none").reshape(T, B).mean(1), out


def flat_views(tensors: Sequence[Tensor], channels_last: bool = False) -> tuple[Tensor, list[Tensor]]:
    """One contiguous copy of ``tensors`` and views of it shaped like them.

    An optimiser that updates the flat tensor runs each of its elementwise ops
    once instead of once per parameter tensor: on CPU Adam's step on the
    Omniglot net's 10 tensors spends most of its time in per-tensor overhead.
    With ``channels_last`` the 4-D views are channels-last (their elements lie in the flat tensor in that
    order; ``memory_order`` flattens a gradient laid out like them to match).
    """
    cl = [channels_last and t.dim() == 4 for t in tensors]
    flat = torch.cat([t.permute(0, 2, 3, 1).reshape(-1) if c else t.reshape(-1) for t, c in zip(tensors, cl)])
    pieces = flat.split([t.numel() for t in tensors])
    views = [v.view(t.shape[0], *t.shape[2:], t.shape[1]).permute(0, 3, 1, 2) if c else v.view(t.shape)
             for v, t, c in zip(pieces, tensors, cl)]
    return flat, views


def memory_order(t: Tensor) -> Tensor:
    """``t``'s elements flat in the order ``flat_views`` lays them out: memory order for a channels-last 4-D tensor,
    else the logical order (not ``handwritten.memory_perm``'s: a gradient of another layout keeps its logical order)."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)
    return t.reshape(-1)


def sgd_(params: list[Tensor], grads: list[Tensor], lr: float) -> None:
    """In place: p <- p - lr * g (torch.optim.SGD without momentum), all tensors in one foreach call."""
    torch._foreach_add_(params, grads, alpha=-lr)


class AdamState:
    """Adam moments of stacked parameters; ``step_`` is torch.optim.Adam's update (eps=1e-8, bias corrections).

    By default the update is torch's fused Adam kernel (``torch._fused_adam_``, what
    ``torch.optim.Adam(fused=True)`` runs): one pass over memory, and 3x faster than the foreach
    ops on this CPU (55 vs 158 us per step on the Omniglot net's 113k weights). Given tensors shaped
    and laid out like torch.optim.Adam's, it gives its bits (the batched evaluator passes each task's
    own tensors); on one flat tensor of many, the kernel's vector and scalar parts fall on other
    elements, which rounds float32 differently in the last bit.
    ``fused=False`` (or a torch without the kernel) uses ``torch._foreach_*`` ops:
    torch computes p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps); we compute the
    algebraically equal p -= (lr * sqrt(bc2) / bc1) * m / (sqrt(v) + eps * sqrt(bc2))
    into a reused buffer (equal to rounding).
    """

    def __init__(self, params: list[Tensor], lr: float, beta1: float, beta2: float = 0.999, eps: float = 1e-8,
                 fused: bool | None = None):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.fused = hasattr(torch, "_fused_adam_") if fused is None else fused
        self.step = 0
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        if self.fused:
            self.exp_avg = [torch.zeros_like(p) for p in params]  # the kernel wants it even at beta1 = 0
            # One step count read by every tensor's update (torch.optim keeps one per tensor, all equal): one
            # increment per step instead of a loop over the 0-d tensors (on CPU, foreach ops on them are a loop).
            devices = {p.device for p in params}
            count = {d: torch.zeros((), dtype=torch.float32, device=d) for d in devices}
            self.steps = [count[p.device] for p in params]
            self._counts = list(count.values())
            # Channels-last tensors go in as contiguous memory-order views (the kernel copies such a gradient
            # into a contiguous one first); the kernel is elementwise in memory order, so the bits are the same.
            self.perms = [memory_perm(p) for p in params]
            self._moments = (permuted(self.exp_avg, self.perms), permuted(self.exp_avg_sq, self.perms))
            return
        # beta1 = 0 (Reptile's setting) makes the first moment the gradient itself: no buffer kept.
        self.exp_avg = [torch.zeros_like(p) for p in params] if beta1 else None
        self.denom = [torch.empty_like(p) for p in params]

    @torch.no_grad()
    def step_(self, params: list[Tensor], grads: list[Tensor]) -> None:
        self.step += 1
        if self.fused:
            for count in self._counts:  # the kernel reads the step count; the optimiser advances it
                count.add_(1)
            if any(self.perms):
                grads = permuted([laid_out_like(p, g) for p, g in zip(params, grads)], self.perms)
                params = permuted(params, self.perms)
            torch._fused_adam_(params, grads, *self._moments, [], self.steps, lr=self.lr,
                               beta1=self.beta1, beta2=self.beta2, weight_decay=0.0, eps=self.eps,
                               amsgrad=False, maximize=False)
            return
        torch._foreach_mul_(self.exp_avg_sq, self.beta2)
        torch._foreach_addcmul_(self.exp_avg_sq, grads, grads, value=1 - self.beta2)
        if self.exp_avg is not None:
            torch._foreach_lerp_(self.exp_avg, grads, 1 - self.beta1)
            first = self.exp_avg
        else:
            first = grads
        bias_correction1 = 1 - self.beta1**self.step
        bias_correction2_sqrt = math.sqrt(1 - self.beta2**self.step)
        for d, v in zip(self.denom, self.exp_avg_sq):
            torch.sqrt(v, out=d)
        torch._foreach_add_(self.denom, self.eps * bias_correction2_sqrt)
        torch._foreach_addcdiv_(params, first, self.denom, value=-self.lr * bias_correction2_sqrt / bias_correction1)
