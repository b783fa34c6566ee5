"""What an evaluation is: its config, the fine-tuning order of each task, and the checks every evaluator makes.

Shared by the two evaluators, ``evaluation`` (serial, the reference; the public entry point ``evaluate``)
and ``batched_eval`` (many tasks at once): both import this module, and only ``evaluation`` imports
``batched_eval``, so the protocol is defined once and the imports go one way.

    from algorithms.eval_protocol import EvalConfig       # also importable from algorithms.evaluation
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from datasets.tasks import INDEX_BITS, INDEX_LIMIT, SEED_LIMIT, stream_key

from .base import DivergedError

MODES = ("auto", "serial", "batched")
DEFAULT_MODE = {"cpu": "batched", "cuda": "batched"}
"""``EvalConfig.mode = "auto"`` per device type, chosen from ``python -m benchmarks.perf.eval_throughput``
(results/eval/throughput_cpu.json): on this project's CPU the batched evaluator gave 1.12x the serial
one's tasks per second for Reptile's fine-tuning and 1.35x for MAML's, with bit-identical float32 scores
(``batched_eval.CONV_MODE``)."""


@dataclass
class EvalConfig:
    """How the meta-parameters are scored. Saved with every result row."""

    num_tasks: int = 600
    """Number of evaluation tasks (a fixed pool, the same for every algorithm)."""
    query: int = 1
    """Query examples per class (Reptile paper: 1; MAML: 15). For sine, query points per task."""
    inner_steps: int = 50
    """Fine-tuning steps on the support set; 0 scores the meta-parameters without adaptation."""
    inner_lr: float = 1e-3
    """Fine-tuning learning rate (Adam's lr, or the SGD step size)."""
    inner_optimizer: str = "adam"
    """``adam`` (betas = (``adam_beta1``, 0.999), a fresh optimiser per task) or ``sgd``."""
    adam_beta1: float = 0.0
    """beta1 of the fine-tuning Adam (0 in the Reptile paper)."""
    inner_batch: int = 5
    """Fine-tuning minibatch size, cycled through the shuffled support set; 0 = the whole support set."""
    transductive: bool = False
    """True: the query set is predicted in one batch; False: one query example at a time beside the support set."""
    adapt_head_modules: int = 0
    """0: fine-tune every parameter; N >= 1: only the last N modules with parameters (ANIL's test-time
    protocol: the head it adapts in training, ``MetaConfig.head_modules``; the body stays as meta-learned)."""
    seed: int = 0
    """Seed of the evaluation task pool and of the fine-tuning minibatch order (not the training seed)."""
    mode: str = "auto"
    """``serial`` (one task at a time, the reference), ``batched`` (many tasks fine-tuned together) or ``auto``
    (``DEFAULT_MODE`` for the device; the CLI resolves it before the config is hashed)."""

    def validate(self) -> "EvalConfig":
        """Raise ValueError naming the bad field; returns self for chaining."""
        if isinstance(self.num_tasks, bool) or not isinstance(self.num_tasks, int) or not 2 <= self.num_tasks <= INDEX_LIMIT:
            raise ValueError(f"num_tasks must be an integer in [2, 2**{INDEX_BITS}] (a 95% CI needs at least two "
                             f"tasks), got {self.num_tasks!r}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"seed must be an integer in [0, {SEED_LIMIT}), got {self.seed}")
        if self.query < 1:
            raise ValueError(f"query must be >= 1 (examples per class to score), got {self.query}")
        if self.inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0 (0 = no fine-tuning), got {self.inner_steps}")
        if not (self.inner_lr > 0 and math.isfinite(self.inner_lr)):
            raise ValueError(f"inner_lr must be a positive finite number, got {self.inner_lr}")
        if self.inner_optimizer not in ("adam", "sgd"):
            raise ValueError(f"inner_optimizer must be 'adam' or 'sgd', got {self.inner_optimizer!r}")
        if not 0 <= self.adam_beta1 < 1:
            raise ValueError(f"adam_beta1 must be in [0, 1), got {self.adam_beta1}")
        if self.inner_batch < 0:
            raise ValueError(f"inner_batch must be >= 0 (0 = whole support set), got {self.inner_batch}")
        if isinstance(self.adapt_head_modules, bool) or not isinstance(self.adapt_head_modules, int) \
                or self.adapt_head_modules < 0:
            raise ValueError(f"adapt_head_modules must be an integer >= 0 (0 = every parameter), "
                             f"got {self.adapt_head_modules!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def finetune_generator(seed: int, index: int) -> torch.Generator:
    """Minibatch order of task ``index``'s fine-tuning: a function of (seed, index) only.

    Mixed differently from the task sampler's stream (datasets.tasks.task_generator)
    so the minibatch order is not a copy of the class draw.
    """
    # Any mixing works here: a fine-tuning order only needs to differ from its task's class draw.
    mixed = stream_key(seed, index) * 6_364_136_223_846_793_005 + 1_442_695_040_888_963_407
    return torch.Generator().manual_seed(mixed % (2**63 - 1))


def adapted_parameters(model: nn.Module, head_modules: int) -> list:
    """The parameters fine-tuning updates: all of them, or the head's (``anil.split_head``)."""
    if head_modules == 0:
        return list(model.parameters())
    from .anil import split_head

    return list(split_head(model, head_modules)[1].parameters())


def check_fine_tuning(first, last, index: int, diverge_factor: float | None) -> None:
    """DivergedError when task ``index``'s fine-tuning loss went non-finite or ended far above where it began.

    ``first``/``last`` are floats or tensors of one value per task (then ``index`` is the first task's).
    """
    if first is None:
        return
    first, last = torch.as_tensor(first, dtype=torch.float64), torch.as_tensor(last, dtype=torch.float64)
    bad = ~torch.isfinite(last) | ~torch.isfinite(first)
    if diverge_factor is not None:
        bad |= last > diverge_factor * first.clamp_min(1e-12)
    if bool(bad.any()):
        k = int(bad.reshape(-1).nonzero()[0])
        raise DivergedError(
            f"evaluation diverged: fine-tuning task {index + k} took its loss from {float(first.reshape(-1)[k]):.3g} "
            f"to {float(last.reshape(-1)[k]):.3g} (limit: {diverge_factor} x the first, and finite); no score is "
            "reported: lower eval.inner_lr")


def check_scores(values, index: int) -> None:
    """DivergedError when a score (or the outputs it came from) is not finite."""
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if not bool(torch.isfinite(values).all()):
        k = int((~torch.isfinite(values)).nonzero()[0])
        raise DivergedError(f"evaluation diverged: task {index + k}'s fine-tuned model gives non-finite outputs; "
                            "no score is reported: lower eval.inner_lr")
