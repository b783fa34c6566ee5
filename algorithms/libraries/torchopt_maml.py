"""MAML and first-order MAML through TorchOpt's functional optimiser (TorchOpt 0.7.3): ``backend="torchopt"``.

Per task: the network runs on tensors through ``torch.func.functional_call``; each inner step is
``torchopt.sgd(inner_lr)``'s ``update`` on the support gradients and ``torchopt.apply_updates(...,
inplace=False)``, differentiable (``maml``: gradients built with ``create_graph``) or not (``fomaml``:
detached gradients, so d theta' / d theta = I). TorchOpt's object API (``MetaSGD.step``) always builds
the gradient's graph and has no first-order mode; the functional API serves both.

Installed by ``make setup`` (``pip install torchopt==0.7.3``, a wheel for this Python; it pulls optree).
Its compiled ops do not load against torch 2.13 (an undefined-symbol error, measured), so TorchOpt runs
its Python implementation; every row's ``backend_info`` says which mode ran
(``torchopt.accelerated_op.is_available()``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..base import MetaConfig, register_orders, task_loss
from ..maml import MAML
from .common import LibraryMissing, accumulate

TARGET = "make setup"


def load():
    try:
        import torchopt
    except ImportError as e:
        raise LibraryMissing("torchopt", TARGET, f"{type(e).__name__}: {e}") from None
    return torchopt


def mode(torchopt) -> str:
    """Whether TorchOpt's compiled (C++/CUDA) ops load here, or it falls back to Python."""
    try:
        return "compiled ops" if torchopt.accelerated_op.is_available("cpu") else "Python ops (compiled ops do not load)"
    except Exception as e:  # noqa: BLE001 - any failure to probe means the Python path runs
        return f"Python ops (compiled ops: {type(e).__name__})"


class TorchOptMAML(MAML):
    def __init__(self, model: nn.Module, config: MetaConfig, total_iterations: int, seed: int = 0):
        load()  # fail now, with the make target, if TorchOpt is not installed
        super().__init__(model, config, total_iterations, seed)
        self.names = [n for n, _ in self.model.named_parameters()]

    @property
    def torchopt(self):  # a property, not an attribute: learners are deep-copied (a module is not)
        return load()

    def backend_info(self) -> str:
        return f"torchopt {self.torchopt.__version__} functional sgd, {mode(self.torchopt)}"

    def meta_gradient(self, batch):
        batch = self._like_model(batch)
        second_order = not self.config.first_order
        optimizer = self.torchopt.sgd(lr=self.config.inner_lr)

        def task(i):
            x_s, y_s, x_q, y_q = (t[i] for t in batch.tensors())
            params = tuple(self.model.parameters())
            state = optimizer.init(params)
            first = None
            for _ in range(self.config.inner_steps):
                loss = task_loss(functional_call(self.model, dict(zip(self.names, params)), (x_s,)), y_s)
                first = loss if first is None else first
                grads = torch.autograd.grad(loss, params, create_graph=second_order)
                updates, state = optimizer.update(grads, state, params=params, inplace=False)
                params = tuple(self.torchopt.apply_updates(params, updates, inplace=False))
            return task_loss(functional_call(self.model, dict(zip(self.names, params)), (x_q,)), y_q), first

        return accumulate(self, batch, task)


register_orders(TorchOptMAML, "maml", "fomaml", backend="torchopt")
