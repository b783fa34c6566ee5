"""MAML and first-order MAML through ``learn2learn.algorithms.MAML`` (learn2learn 0.2.0): ``backend="learn2learn"``.

Per task: ``learner = maml.clone()``, ``learner.adapt(support loss)`` ``inner_steps`` times (its own SGD
step, ``first_order`` as the library does it), then the query loss backpropagated into the
meta-parameters, exactly the library's documented use on this project's models, tasks and evaluator.

How it is installed (``make setup``, ``algorithms/libraries/install_learn2learn.sh``): learn2learn 0.2.0
ships only an sdist whose generated C files do not compile on Python 3.11, and whose package ``__init__``
imports gym and torchvision (PyPI's torchvision does not import beside torch 2.13.0). The script builds
it in a throwaway environment after regenerating the Cython sources with Cython < 3, and installs it
without dependencies into ``.venv/learn2learn/site``, a folder on no import path. This module alone
puts it there and registers an empty ``learn2learn`` package (the real package's path, none of its
``__init__``), so ``learn2learn.algorithms.maml`` and ``learn2learn.utils`` import with torch alone.
Set ``REPTILE_BENCH_LEARN2LEARN`` to use another such folder.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

from torch import nn

from ..base import MetaConfig, register_orders, task_loss
from ..maml import MAML
from .common import LibraryMissing, accumulate

SITE = Path(os.environ.get("REPTILE_BENCH_LEARN2LEARN") or Path(sys.prefix) / "learn2learn" / "site")
TARGET = "make setup-learn2learn"


def load():
    """``learn2learn.algorithms.maml`` (the module) and the library's version, without the package ``__init__``."""
    if "learn2learn.algorithms.maml" not in sys.modules:
        package = SITE / "learn2learn"
        if not (package / "algorithms" / "maml.py").is_file():
            raise LibraryMissing("learn2learn", TARGET, f"no build in {SITE}")
        if "learn2learn" not in sys.modules:
            stub = types.ModuleType("learn2learn")
            stub.__path__ = [str(package)]
            sys.modules["learn2learn"] = stub
        for name in ("learn2learn.algorithms",):  # skip the subpackages' __init__ too (lightning, gym)
            if name not in sys.modules:
                sub = types.ModuleType(name)
                sub.__path__ = [str(package / "algorithms")]
                sys.modules[name] = sub
        try:
            importlib.import_module("learn2learn.algorithms.maml")
        except ImportError as e:
            raise LibraryMissing("learn2learn", TARGET, f"{type(e).__name__}: {e}") from None
    version = (SITE / "learn2learn" / "_version.py").read_text().split("=")[-1].strip().strip("'\"")
    return sys.modules["learn2learn.algorithms.maml"], version


class Learn2LearnMAML(MAML):
    def __init__(self, model: nn.Module, config: MetaConfig, total_iterations: int, seed: int = 0):
        module, self.version = load()
        super().__init__(model, config, total_iterations, seed)
        self.maml = module.MAML(self.model, lr=config.inner_lr, first_order=config.first_order)  # wraps self.model

    def backend_info(self) -> str:
        return f"learn2learn {self.version} (built from its sdist, Cython < 3), MAML clone/adapt"

    def meta_gradient(self, batch):
        batch = self._like_model(batch)

        def task(i):
            x_s, y_s, x_q, y_q = (t[i] for t in batch.tensors())
            learner = self.maml.clone()
            first = None
            for _ in range(self.config.inner_steps):
                loss = task_loss(learner(x_s), y_s)
                first = loss if first is None else first
                learner.adapt(loss)
            return task_loss(learner(x_q), y_q), first

        return accumulate(self, batch, task)


register_orders(Learn2LearnMAML, "maml", "fomaml", backend="learn2learn")
