"""The one evaluator shared by every algorithm: fine-tune on each task's support set, score its query set.

The evaluation tasks are ``pool.sample_task(ways, shots, config.query,
config.seed, index)`` for ``index in range(config.num_tasks)``, so every
algorithm and every run sees the same tasks (paired comparison). For each task
a deep copy of the model is fine-tuned (``adapt``) and then predicts the query:

- ``transductive=True``: all query examples in one forward pass (batch-norm
  statistics see the whole query set; MAML's published numbers use this).
- ``transductive=False``: each query example is classified in a batch made of
  the whole support set plus that one example, keeping only its prediction
  (the Reptile paper's protocol; batch norm uses batch statistics, so this is
  not the same as the transductive number).

Classification reports accuracy in percent; sine regression reports the query
mean squared error (one forward pass: the MLP has no batch norm). The summary
is the mean over tasks with ci95 = 1.96 * std / sqrt(n), where std is the
*sample* standard deviation (ddof = 1). MAML's code uses numpy's default
ddof = 0; at n = 600 the two differ by a factor sqrt(600/599) = 1.0008.

Two implementations give the same per-task scores (``tests/test_batched_eval.py``): ``serial``, the
reference (one deep copy per task, ``torch.optim`` optimisers; each fine-tuning step is Reptile's
``handwritten.InnerStep``, autograd's bits without its graph), and ``batched``
(``algorithms/batched_eval.py``: many tasks fine-tuned at once with per-task weights and batch-norm
statistics). ``EvalConfig.mode = "auto"`` picks per device (``DEFAULT_MODE``, from measurements).
A task whose fine-tuning loss becomes NaN/inf or ends above ``diverge_factor`` x its first value, or
whose predictions are not finite, raises ``DivergedError``: no score is reported for a blown-up evaluation.

    result = evaluate(model, pool, ways=5, shots=1, config=EvalConfig(num_tasks=600, query=15, transductive=True))
    print(f"{result.mean:.2f} +- {result.ci95:.2f} {result.metric}")
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .base import DivergedError, check_output_size, task_loss
from .batched_eval import evaluate_batched
from .eval_protocol import (DEFAULT_MODE, MODES, EvalConfig, adapted_parameters, check_fine_tuning,  # noqa: F401
                            check_scores, finetune_generator)
from .handwritten import InnerStep
from .minibatch import minibatch_indices
from .models import channels_last_on_cpu
from .reptile import make_inner_optimizer


@dataclass
class EvalResult:
    """Summary over the evaluation tasks, plus the per-task numbers (for paired comparisons)."""

    mean: float
    """Mean over tasks of the metric."""
    ci95: float
    """1.96 * std / sqrt(n) (n >= 2)."""
    std: float
    """Sample standard deviation over tasks (ddof = 1)."""
    n: int
    """Number of tasks."""
    per_task: list[float] = field(repr=False)
    """The metric of each task, in task-index order."""
    metric: str
    """``accuracy`` (percent, 0..100) or ``mse``."""
    mode: str = "serial"
    """The implementation that ran: ``serial`` or ``batched``."""


def adapt(model: nn.Module, support_x: Tensor, support_y: Tensor, config: EvalConfig, generator: torch.Generator) -> nn.Module:
    """A deep copy of ``model`` fine-tuned on one task's support set; ``model`` is not modified.

    ``support_x``/``support_y`` hold one task without the task dimension
    ([n, ...] and [n], or [n, 1] for regression); ``generator`` fixes the
    minibatch order (the evaluator uses ``finetune_generator(seed, index)``).
    """
    return _adapt(model, support_x, support_y, config, generator)[0]


def _adapt(model, support_x, support_y, config: EvalConfig, generator) -> tuple[nn.Module, float | None, float | None]:
    """``adapt`` and the first and last fine-tuning losses (None without fine-tuning)."""
    config.validate()
    if support_x.shape[0] != support_y.shape[0]:
        raise ValueError(
            f"support_x has {support_x.shape[0]} examples but support_y has {support_y.shape[0]}; "
            "pass one task without its task dimension (e.g. batch.support_x[0], batch.support_y[0])"
        )
    ways = None if support_y.is_floating_point() else int(support_y.max()) + 1
    fine = copy.deepcopy(model)
    channels_last_on_cpu(fine)  # Reptile's layout choice (models.py), before the optimiser's state exists
    if config.inner_steps == 0:
        return fine, None, None
    optimizer = make_inner_optimizer(adapted_parameters(fine, config.adapt_head_modules), config.inner_optimizer,
                                     config.inner_lr, config.adam_beta1)
    inner_step = InnerStep(fine, optimizer)  # Reptile's inner step: handwritten where it applies (same bits)
    first = last = None
    idx = minibatch_indices(support_x.shape[0], config.inner_batch, config.inner_steps, generator)
    xs, ys = support_x[idx], support_y[idx]  # every step's minibatch in one gather
    for step in range(config.inner_steps):
        check = (lambda out, target=ys[0]: check_output_size(out, target, ways=ways)) if step == 0 else None
        last = inner_step(xs[step], ys[step], check)
        first = last if first is None else first
    fine.zero_grad(set_to_none=True)
    return fine, float(first), float(last)


@torch.no_grad()
def predict(model: nn.Module, support_x: Tensor, query_x: Tensor, transductive: bool) -> Tensor:
    """Outputs for the query set: one batch (transductive), or one batch of support + that example per query."""
    if transductive:
        return model(query_x)
    return torch.stack([model(torch.cat([support_x, query_x[j : j + 1]]))[-1] for j in range(query_x.shape[0])])


@torch.no_grad()
def score(model: nn.Module, support_x: Tensor, query_x: Tensor, query_y: Tensor, transductive: bool) -> float:
    """Accuracy in percent (classification) or MSE (regression) of ``model`` on one task's query set.

    Raises DivergedError when the outputs are not finite (argmax of NaN logits is not a prediction).
    """
    if query_y.is_floating_point():
        value = task_loss(model(query_x), query_y).item()
        check_scores([value], 0)
        return value
    logits = predict(model, support_x, query_x, transductive)
    check_output_size(logits, query_y)
    check_scores([logits.abs().max().item()], 0)
    return 100.0 * (logits.argmax(-1) == query_y).double().mean().item()


def summarize(per_task: list[float], metric: str, mode: str = "serial") -> EvalResult:
    n = len(per_task)
    if n < 2:
        raise ValueError(f"a 95% confidence interval needs at least two tasks, got {n}")
    values = torch.tensor(per_task, dtype=torch.float64)
    std = values.std(correction=1).item()
    return EvalResult(values.mean().item(), 1.96 * std / math.sqrt(n), std, n, list(per_task), metric, mode)


def resolve_mode(mode: str, device) -> str:
    """``auto`` -> ``DEFAULT_MODE`` of the device's type; ``serial`` and ``batched`` as given."""
    if mode not in MODES:
        raise ValueError(f"evaluation mode must be one of {', '.join(MODES)}, got {mode!r}")
    return DEFAULT_MODE[torch.device(device).type] if mode == "auto" else mode


def evaluate(model: nn.Module, pool, ways: int, shots: int, config: EvalConfig, device="cpu", progress: bool = False,
             diverge_factor: float | None = None) -> EvalResult:
    """Fine-tune and score ``model`` on ``config.num_tasks`` fixed tasks of ``pool``; the model is left untouched.

    ``pool`` is anything with ``sample_task(ways, shots, query, seed, index)``
    (ClassPool, SinePool). The model is copied to ``device`` if it lives elsewhere.
    ``diverge_factor``: see ``check_fine_tuning`` (None: only non-finite losses count as divergence).
    """
    config.validate()
    pool.check(ways, shots, config.query)
    device = torch.device(device)
    param = next(model.parameters())
    if param.device != device:
        model = copy.deepcopy(model).to(device)
        param = next(model.parameters())
    mode = resolve_mode(config.mode, device)
    if mode == "batched":
        per_task, metric = evaluate_batched(model, pool, ways, shots, config, device, progress, diverge_factor)
        return summarize(per_task, metric, "batched")
    indices = range(config.num_tasks)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"evaluate {ways}-way {shots}-shot", unit="task")
    per_task: list[float] = []
    metric = "accuracy"
    for index in indices:
        task = pool.sample_task(ways, shots, config.query, config.seed, index).to(device, dtype=param.dtype)
        sx, sy, qx, qy = (t[0] for t in task.tensors())
        if qy.is_floating_point():
            metric = "mse"
        fine, first, last = _adapt(model, sx, sy, config, finetune_generator(config.seed, index))
        check_fine_tuning(first, last, index, diverge_factor)
        try:
            per_task.append(score(fine, sx, qx, qy, config.transductive))
        except DivergedError as e:
            raise DivergedError(str(e).replace("task 0's", f"task {index}'s")) from None
    return summarize(per_task, metric, "serial")
