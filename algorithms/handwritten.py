"""An inner step's forward and backward written out op by op: the ATen kernels autograd calls, without its graph.

At the sizes of Reptile's inner step and the evaluator's fine-tuning (batches of 5 or 10 Omniglot
images, one thread) recording autograd's graph and walking it, and ``torch.optim``'s bookkeeping
around the fused Adam kernel, are a measurable share of the step (``python -m
benchmarks.perf.step_variants`` times the same step through autograd as variant ``autograd``). ``HandwrittenNet`` runs the forward saving what each backward kernel needs, then
calls those backward kernels in reverse order with the arguments autograd's formulas pass them (torch's
``tools/autograd/derivatives.yaml``), and hands each gradient over in its parameter's memory layout,
as autograd's gradient accumulation does. ``DirectAdam`` is a fused ``torch.optim.Adam``'s step: the
same kernel on the same state tensors, without the optimiser's per-step bookkeeping. So losses,
gradients and updated weights are bit-identical to ``loss.backward(); optimizer.step()``;
``tests/test_handwritten.py`` checks it for the three reference models, both memory layouts, float32
and float64.

Supported: an ``nn.Sequential`` of Conv2d, BatchNorm2d without running statistics, ReLU, MaxPool2d,
Flatten and Linear whose parameters all train, on CPU, with ``base.task_loss`` (cross-entropy for labels,
MSE for regression). ``HandwrittenNet.supports`` says whether a model qualifies; callers keep autograd
for anything else.

    step = InnerStep(model, optimizer)       # handwritten where supported, else autograd
    loss = step(x, y)                        # one optimiser step; the loss, detached
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.optim.optimizer as _optimizer
from torch import Tensor, nn

from .base import task_loss

aten = torch.ops.aten
_KINDS = {nn.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.ReLU: "relu", nn.MaxPool2d: "pool", nn.Flatten: "flat",
          nn.Linear: "linear"}


def _kind(m: nn.Module) -> str | None:
    kind = _KINDS.get(type(m))
    if kind == "conv" and (isinstance(m.padding, str) or m.padding_mode != "zeros"):
        return None
    if kind == "bn" and (m.track_running_stats or not m.affine):
        return None
    if kind == "pool" and m.return_indices:
        return None
    if kind == "flat" and (m.start_dim != 1 or m.end_dim != -1):
        return None
    return kind


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


class HandwrittenNet:
    """Loss, output and parameter gradients of a plain ``nn.Sequential`` (parameters in ``model.parameters()``
    order, passed per call so a task's own weights can be used)."""

    def __init__(self, model: nn.Module):
        if not self.supports(model):
            raise ValueError(f"HandwrittenNet supports an nn.Sequential of {', '.join(t.__name__ for t in _KINDS)} "
                             f"whose parameters all train; got {type(model).__name__}")
        self.layers: list[tuple[str, tuple, list[int]]] = []  # (kind, the kernels' constant arguments, parameters)
        index = 0
        for m in model:
            count = len(list(m.parameters()))
            self.layers.append((_kind(m), _constants(m), list(range(index, index + count))))
            index += count
        self.num_params = index
        self.first = next(i for i, (_, _, idx) in enumerate(self.layers) if idx)  # its input needs no gradient

    @staticmethod
    def supports(model: nn.Module) -> bool:
        if not (isinstance(model, nn.Sequential) and all(_kind(m) for m in model)):
            return False
        params = list(model.parameters())
        # CPU only: on CUDA autograd's batch norm is cuDNN's kernel, which this does not call.
        return bool(params) and all(p.requires_grad and p.device.type == "cpu" for p in params)

    @torch.no_grad()
    def loss_and_grads(self, params: Sequence[Tensor], x: Tensor, y: Tensor,
                       check: Callable[[Tensor], None] | None = None) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(mean loss, network output, one gradient per parameter laid out like it): ``base.task_loss``'s.

        ``check(output)`` runs before the loss (say, ``base.check_output_size``'s clear message).
        """
        saved: list[tuple] = []
        h = x
        for kind, k, idx in self.layers:
            if kind == "conv":  # k: stride, padding, dilation, groups
                saved.append((h,))
                h = _conv(h, params[idx[0]], params[idx[1]] if len(idx) > 1 else None, k[0], k[1], k[2], False,
                          [0, 0], k[3])
            elif kind == "bn":  # k: eps
                out, mean, invstd = _bn(h, params[idx[0]], params[idx[1]], None, None, True, 0.0, k[0])
                saved.append((h, mean, invstd))
                h = out
            elif kind == "relu":
                h = _relu(h)
                saved.append((h,))
            elif kind == "pool":  # k: kernel size, stride, padding, dilation, ceil mode
                out, indices = _pool(h, *k)
                saved.append((h, indices))
                h = out
            elif kind == "flat":
                saved.append((h.shape,))
                h = h.reshape(h.shape[0], -1)
            else:  # linear
                if h.dim() != 2:
                    raise ValueError(f"HandwrittenNet: a Linear layer needs [batch, features] inputs, got {tuple(h.shape)}")
                saved.append((h,))
                w = params[idx[0]]
                h = _addmm(params[idx[1]], h, w.t()) if len(idx) > 1 else h.mm(w.t())
        out = h
        if check is not None:
            check(out)
        if y.is_floating_point():
            if out.shape != y.shape:
                raise ValueError(f"output shape {tuple(out.shape)} differs from the target's {tuple(y.shape)}")
            loss = aten.mse_loss.default(out, y, 1)
            g = aten.mse_loss_backward.default(torch.ones_like(loss), out, y, 1)
        else:
            logp = aten._log_softmax.default(out, 1, False)
            loss, total_weight = aten.nll_loss_forward.default(logp, y, None, 1, -100)
            g = aten.nll_loss_backward.default(torch.ones_like(loss), logp, y, None, 1, -100, total_weight)
            g = aten._log_softmax_backward_data.default(g, logp, 1, out.dtype)
        grads: list[Tensor | None] = [None] * self.num_params
        for i in range(len(self.layers) - 1, self.first - 1, -1):
            kind, k, idx = self.layers[i]
            s = saved[i]
            needs_input = i > self.first
            if kind == "conv":
                w = params[idx[0]]
                bias = len(idx) > 1
                g, grads[idx[0]], gb = _conv_backward(g, s[0], w, [w.shape[0]] if bias else None, k[0], k[1], k[2],
                                                      False, [0, 0], k[3], [needs_input, True, bias])
                if bias:
                    grads[idx[1]] = gb
            elif kind == "bn":
                g, grads[idx[0]], grads[idx[1]] = _bn_backward(g, s[0], params[idx[0]], None, None, s[1], s[2], True,
                                                               k[0], [needs_input, True, True])
            elif kind == "relu":
                g = _relu_backward(g, s[0], 0)
            elif kind == "pool":
                g = _pool_backward(g, s[0], *k, s[1])
            elif kind == "flat":
                g = g.reshape(s[0])
            else:  # linear: out = x w^T (+ b)
                if len(idx) > 1:
                    grads[idx[1]] = g.sum(0)
                grads[idx[0]] = g.t().mm(s[0])
                g = g.mm(params[idx[0]]) if needs_input else None
        return loss, out, [laid_out_like(p, gr) for p, gr in zip(params, grads)]


def laid_out_like(param: Tensor, grad: Tensor) -> Tensor:
    """``grad`` in ``param``'s memory layout, as autograd hands a gradient to the optimiser (``AccumulateGrad``);
    torch's fused CPU Adam needs it so (``tests/test_handwritten.py``)."""
    return grad if grad.stride() == param.stride() else torch.empty_like(param).copy_(grad)


def _constants(m: nn.Module) -> tuple:
    """The arguments of ``m``'s kernels that do not change from call to call."""
    if isinstance(m, nn.Conv2d):
        return _pair(m.stride), _pair(m.padding), _pair(m.dilation), m.groups
    if isinstance(m, nn.BatchNorm2d):
        return (m.eps,)
    if isinstance(m, nn.MaxPool2d):
        return (_pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size), _pair(m.padding),
                _pair(m.dilation), m.ceil_mode)
    return ()


# The overloads autograd's formulas call (resolved once: a packet looks its overload up on every call).
_conv, _conv_backward = aten.convolution.default, aten.convolution_backward.default
_bn, _bn_backward = aten.native_batch_norm.default, aten.native_batch_norm_backward.default
_relu, _relu_backward = aten.relu.default, aten.threshold_backward.default
_pool, _pool_backward = aten.max_pool2d_with_indices.default, aten.max_pool2d_with_indices_backward.default
_addmm = aten.addmm.default


class DirectAdam:
    """``step(grads)`` is ``optimizer.step()`` with ``p.grad = grads``: for a fused ``torch.optim.Adam`` (one
    parameter group, no amsgrad, weight decay, hooks or tensor learning rate) the kernel calls it makes, on its
    own state tensors; for any other optimiser the grads are set and ``optimizer.step()`` runs.

    Two things make the direct call cheaper than the optimiser's own, with the same bits (the kernel is
    elementwise, in memory order): every parameter's step count is a 0-d view of one tensor, so a step
    advances them all in one ``add_`` (a foreach over 0-d tensors is a loop on CPU); and a channels-last tensor
    reaches the kernel as a contiguous view in memory order (``memory_perm``), where handed over as it is the
    kernel first copies its gradient into a contiguous one. ``grads`` must be laid out like the parameters
    (``laid_out_like``; ``HandwrittenNet`` hands them over so).
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        groups = optimizer.param_groups
        g = groups[0]
        self.direct = (isinstance(optimizer, torch.optim.Adam) and len(groups) == 1 and bool(g.get("fused"))
                       and not (g["amsgrad"] or g["maximize"] or g["capturable"] or g["differentiable"]
                                or g["weight_decay"] or g.get("decoupled_weight_decay") or torch.is_tensor(g["lr"]))
                       and not (optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks))
        self.params = list(g["params"]) if len(groups) == 1 else [p for grp in groups for p in grp["params"]]
        self.state: dict | None = None  # what the kernel is handed, cached from the optimiser's state

    def _state_current(self) -> bool:
        """Whether the cached state tensors are the optimiser's (``load_state_dict`` replaces them)."""
        if not self.direct or self.state is None:
            return False
        st = self.optimizer.state.get(self.params[0])
        return (st is not None and st.get("exp_avg") is self.state["exp_avg"] and st.get("step") is self.state["step"]
                # a permuted view must still see its parameter's memory (``p.data = ...`` would move it)
                and all(p.data_ptr() == v.data_ptr() for p, v in self.state["views_of"]))

    def _adopt_state(self) -> None:
        """Cache the optimiser's state for the kernel, its step counts turned into views of one tensor."""
        st = [self.optimizer.state[p] for p in self.params]
        counts = torch.stack([s["step"] for s in st])
        for s, count in zip(st, counts.unbind()):
            s["step"] = count
        # A parameter goes in as a memory-order view where its moments share its layout (they do: torch.optim
        # makes them with ``zeros_like``); else as it is.
        self.perms = [memory_perm(p) if s["exp_avg"].stride() == p.stride() == s["exp_avg_sq"].stride() else None
                      for p, s in zip(self.params, st)]
        # (A view of a parameter would be a graph node: it is taken of the detached tensor, same memory.)
        views = [p.detach().permute(perm) if perm else p for p, perm in zip(self.params, self.perms)]
        self.state = {"exp_avg": st[0]["exp_avg"], "step": st[0]["step"], "counts": counts,
                      "steps": [s["step"] for s in st], "params": views,
                      "views_of": [(p, v) for p, v, perm in zip(self.params, views, self.perms) if perm],
                      "exp_avgs": permuted([s["exp_avg"] for s in st], self.perms),
                      "exp_avg_sqs": permuted([s["exp_avg_sq"] for s in st], self.perms)}

    def step(self, grads: Sequence[Tensor]) -> None:
        if not self._state_current() or _optimizer._global_optimizer_pre_hooks or _optimizer._global_optimizer_post_hooks:
            # The first step creates Adam's state; the optimiser itself takes it.
            for p, gr in zip(self.params, grads):
                p.grad = gr
            self.optimizer.step()
            for p in self.params:
                p.grad = None
            if self.direct:
                self._adopt_state()
            return
        g, s = self.optimizer.param_groups[0], self.state
        beta1, beta2 = g["betas"]
        s["counts"].add_(1)
        grads = [laid_out_like(p, gr) if perm else gr for p, gr, perm in zip(self.params, grads, self.perms)]
        grads = permuted(grads, self.perms)
        torch._fused_adam_(s["params"], grads, s["exp_avgs"], s["exp_avg_sqs"], [], s["steps"], amsgrad=False,
                           lr=g["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0, eps=g["eps"], maximize=False)


def permuted(tensors: Sequence[Tensor], perms: Sequence[list[int] | None]) -> list[Tensor]:
    """Each tensor permuted by its ``memory_perm`` (None: as it is)."""
    return [t.permute(perm) if perm else t for t, perm in zip(tensors, perms)]


def memory_perm(t: Tensor) -> list[int] | None:
    """The permutation of ``t``'s dimensions into memory order where that makes a contiguous view of it (a
    channels-last weight ``[O, I, kh, kw]`` becomes ``[O, kh, kw, I]``); None where ``t`` is contiguous or no
    permutation makes it so."""
    if t.is_contiguous():
        return None
    perm = sorted(range(t.dim()), key=lambda d: -t.stride(d))
    return perm if t.permute(perm).is_contiguous() else None


class InnerStep:
    """One optimiser step of ``model`` on a minibatch, returning the loss (detached): handwritten (the same bits)
    where ``HandwrittenNet.supports`` the model and ``optimizer`` trains all its parameters, else autograd's
    ``loss.backward(); optimizer.step()``. ``handwritten=False`` forces autograd (to time the two)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, handwritten: bool = True):
        self.model, self.optimizer, self.handwritten = model, optimizer, handwritten
        self.params = list(model.parameters())
        trained = [p for g in optimizer.param_groups for p in g["params"]]
        use = (handwritten and HandwrittenNet.supports(model) and len(trained) == len(self.params)
               and all(a is b for a, b in zip(trained, self.params)))
        self.net = HandwrittenNet(model) if use else None
        self.adam = DirectAdam(optimizer) if use else None

    def __call__(self, x: Tensor, y: Tensor, check: Callable[[Tensor], None] | None = None) -> Tensor:
        if self.net is not None:
            loss, _, grads = self.net.loss_and_grads(self.params, x, y, check)
            self.adam.step(grads)
            return loss
        out = self.model(x)
        if check is not None:
            check(out)
        loss = task_loss(out, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()
