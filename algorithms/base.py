"""The one interface every meta-learner implements, its config, and the registry.

A meta-learner owns the meta-parameters (an ``nn.Module``) and forms outer
updates from task batches; Reptile, first-order MAML and second-order MAML
differ only in how that update is formed. Evaluation is *not* per algorithm:
see ``algorithms/evaluation.py``.

    from algorithms import MetaConfig, build_learner
    learner = build_learner(MetaConfig(algorithm="reptile"), model, total_iterations=1000, seed=0)
    metrics = learner.meta_step(task_batch)     # one outer update
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.tasks import TaskBatch


class DivergedError(RuntimeError):
    """A loss became NaN or infinite: the run is stopped and no number is reported."""


@dataclass
class MetaConfig:
    """Everything that defines how a meta-learner trains. Saved with every result row.

    Fields that an algorithm does not use are kept (and recorded) so that every
    row has the same columns; each field says who reads it.
    """

    algorithm: str = "reptile"
    """Registry name: ``reptile``, ``fomaml``, ``maml`` (second order), ``imaml`` (implicit gradients),
    ``anil`` / ``foanil`` (head-only inner loop, second / first order)."""
    backend: str = "reference"
    """``reference`` (task by task; MAML through ``higher``) or ``batched`` (the meta-batch together, ``batched.py``)."""
    inner_steps: int = 5
    """Inner-loop updates per task during meta-training (all algorithms)."""
    inner_lr: float = 1e-3
    """Inner learning rate: Adam's for Reptile by default, the SGD step size alpha for MAML."""
    inner_optimizer: str = "adam"
    """Reptile's inner optimiser: ``adam`` (beta1 = ``adam_beta1``) or ``sgd``. MAML's inner loop is always SGD."""
    adam_beta1: float = 0.0
    """beta1 of Reptile's inner Adam (0 in the paper; beta2 stays 0.999)."""
    inner_batch: int = 10
    """Reptile: examples per inner minibatch, drawn from the task's training shots. MAML uses the whole support set."""
    persist_inner_state: bool = True
    """Reptile with Adam: keep Adam's moments across tasks and outer steps (the official code does); False resets them per task."""
    meta_lr: float = 1.0
    """Outer step size: Reptile's epsilon at the start of training; MAML's outer Adam learning rate."""
    meta_lr_final: float = 0.0
    """Reptile: epsilon is annealed linearly from ``meta_lr`` to this value over the run. Ignored by MAML."""
    first_order: bool = False
    """MAML and ANIL: drop second-derivative terms. ``fomaml``/``foanil`` force it True, ``maml``/``anil`` False."""
    imaml_lambda: float = 2.0
    """iMAML only: strength lambda of the proximal term (lambda/2) ||phi - theta||^2 of the inner problem."""
    cg_steps: int = 5
    """iMAML only: conjugate-gradient iterations solving (I + H/lambda) x = grad L_query(phi) for the meta-gradient."""
    head_modules: int = 1
    """ANIL only: the last ``head_modules`` modules with parameters of the (``nn.Sequential``) network form the head,
    the only part the inner loop adapts (1 = the final Linear layer); the rest is the body, meta-learned only."""

    def validate(self) -> "MetaConfig":
        """Raise ValueError naming the bad field; returns self for chaining."""
        if self.algorithm not in LEARNERS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}; valid names: {', '.join(sorted(LEARNERS))}")
        backends = LEARNERS[self.algorithm]
        if self.backend not in backends:
            raise ValueError(
                f"unknown backend {self.backend!r} for {self.algorithm}; valid backends: {', '.join(sorted(backends))}"
            )
        if self.inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {self.inner_steps}")
        if self.inner_batch < 1:
            raise ValueError(f"inner_batch must be >= 1, got {self.inner_batch}")
        for name in ("inner_lr", "meta_lr"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive finite number, got {value}")
        if not (self.meta_lr_final >= 0 and math.isfinite(self.meta_lr_final)):
            raise ValueError(f"meta_lr_final must be a finite number >= 0, got {self.meta_lr_final}")
        if self.inner_optimizer not in ("adam", "sgd"):
            raise ValueError(f"inner_optimizer must be 'adam' or 'sgd', got {self.inner_optimizer!r}")
        if not 0 <= self.adam_beta1 < 1:
            raise ValueError(f"adam_beta1 must be in [0, 1), got {self.adam_beta1}")
        if isinstance(self.imaml_lambda, bool) or not isinstance(self.imaml_lambda, (int, float)) \
                or not (math.isfinite(self.imaml_lambda) and self.imaml_lambda > 0):
            raise ValueError(f"imaml_lambda must be a positive finite number (the proximal strength), "
                             f"got {self.imaml_lambda!r}")
        for name in ("cg_steps", "head_modules"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MetaConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown MetaConfig fields {sorted(unknown)}; valid fields: {sorted(names)}")
        return cls(**d)


def task_loss(output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy for class labels (int64), mean squared error for regression targets."""
    if target.is_floating_point():
        return F.mse_loss(output, target)
    return F.cross_entropy(output, target)


def check_output_size(output: Tensor, target: Tensor, ways: int | None = None) -> None:
    """A classifier's output size must equal the task's ways (labels are 0..ways-1).

    ``ways`` defaults to ``target.max() + 1``; pass it when ``target`` is a
    minibatch that may miss the highest label.
    """
    if target.is_floating_point():
        if output.shape != target.shape:
            raise ValueError(f"model output shape {tuple(output.shape)} does not match regression targets {tuple(target.shape)}")
        return
    ways = int(target.max()) + 1 if ways is None else ways
    if output.shape[-1] != ways:
        raise ValueError(
            f"model outputs {output.shape[-1]} classes but the task has {ways} ways; "
            f"build the model with out_features={ways}"
        )


def check_finite(loss: float, iteration: int, config: MetaConfig) -> None:
    if not math.isfinite(loss):
        raise DivergedError(
            f"loss became {loss} at meta-iteration {iteration} ({config.algorithm}, backend={config.backend}, "
            f"inner_steps={config.inner_steps}, inner_lr={config.inner_lr}, meta_lr={config.meta_lr}); "
            "the run is stopped and no result is reported: lower the learning rates"
        )


def _mean(values) -> Tensor:
    return torch.cat([torch.as_tensor(v).reshape(-1) for v in values]).mean()


def checked_metrics(learner: "MetaLearner", grads: list[Tensor], losses, **means) -> dict[str, float]:
    """The metrics of a meta-gradient (``loss``: the mean of ``losses``; each of ``means`` averaged too), after one
    host sync that raises DivergedError when the loss or any gradient is not finite (a NaN poisons the mean)."""
    loss = _mean(losses)
    finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
    check_finite(loss.item() if bool(finite) else float("nan"), learner.iteration, learner.config)
    return {"loss": loss.item(), **{k: _mean(v).item() for k, v in means.items()}}


class MetaLearner(ABC):
    """Base class: holds the meta-parameters (``self.model``) and the iteration counter."""

    def __init__(self, model: nn.Module, config: MetaConfig, total_iterations: int, seed: int = 0):
        self.config = config.validate()
        if total_iterations < 1:
            raise ValueError(f"total_iterations must be >= 1, got {total_iterations}")
        self.model = model
        self.total_iterations = total_iterations
        self.iteration = 0
        # Minibatch order inside the inner loop; part of the checkpoint so resumed runs match.
        self.generator = torch.Generator().manual_seed(seed)

    @abstractmethod
    def meta_gradient(self, batch: TaskBatch) -> tuple[list[Tensor], dict[str, float]]:
        """The outer update direction from a meta-batch (mean over its tasks) and its metrics; no step taken."""

    @abstractmethod
    def apply_meta_gradient(self, grads: list[Tensor]) -> dict[str, float]:
        """Take the outer step along ``grads`` (``model.parameters()`` order) and count the iteration."""

    def meta_step(self, batch: TaskBatch) -> dict[str, float]:
        """One outer update from a meta-batch; returns at least ``loss`` (mean inner/query loss)."""
        grads, metrics = self.meta_gradient(batch)
        return {**metrics, **self.apply_meta_gradient(grads)}

    def skip_tasks(self, batch: TaskBatch, count: int) -> None:
        """Consume the randomness ``count`` tasks of ``batch`` would draw, without their work.

        Data-parallel training (``running.distributed``) gives each rank a slice of the meta-batch; a rank
        skips the other ranks' tasks so its random stream stays the single-process one. Only learners that
        draw per-task randomness (Reptile's minibatches) override this.
        """

    def _like_model(self, batch: TaskBatch) -> TaskBatch:
        """The batch on the meta-parameters' device, its float tensors in their dtype (float64 in tests)."""
        p = next(self.model.parameters())
        return batch.to(p.device, dtype=p.dtype)

    def backend_info(self) -> str:
        """The library (and version) doing the work, and any mode it runs in; recorded in every result row."""
        return f"torch {torch.__version__}"

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically (tensors and plain Python only, for weights_only=True)."""
        return {"model": self.model.state_dict(), "iteration": self.iteration, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.iteration = int(state["iteration"])
        self.generator.set_state(state["generator"])


# name -> backend -> factory(model, config, total_iterations, seed)
LEARNERS: dict[str, dict[str, Callable[..., MetaLearner]]] = {}


def register(name: str, backend: str = "reference"):
    def deco(factory):
        LEARNERS.setdefault(name, {})[backend] = factory
        return factory

    return deco


def register_orders(cls, second: str, first: str, backend: str = "reference", **options) -> None:
    """Register ``cls`` as ``second`` (``first_order`` forced False) and ``first`` (forced True) for ``backend``:
    one class, two algorithm names (maml / fomaml, anil / foanil); ``options`` go to ``cls`` as keywords."""
    for name, first_order in ((second, False), (first, True)):
        def factory(model, config, total_iterations, seed=0, first_order=first_order):
            return cls(model, replace(config, first_order=first_order), total_iterations, seed, **options)

        register(name, backend)(factory)


def build_learner(config: MetaConfig, model: nn.Module, total_iterations: int, seed: int = 0) -> MetaLearner:
    """Build the learner named by ``config.algorithm`` / ``config.backend``; clear error for unknown names."""
    config.validate()
    return LEARNERS[config.algorithm][config.backend](model, config, total_iterations, seed)


def backend_info(learner: MetaLearner) -> str:
    """``learner.backend_info()``: what a result row's ``backend_info`` column says."""
    return learner.backend_info()
