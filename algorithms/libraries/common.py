"""What the library backends share: the missing-library error, and the task loop around a per-task query loss."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from datasets.tasks import TaskBatch

from ..base import checked_metrics


class LibraryMissing(ImportError):
    """A backend's library is not installed; the message names the make target that installs it."""

    def __init__(self, library: str, target: str, why: str):
        super().__init__(f"backend {library!r} needs {library}, which is not importable here ({why}); install it "
                         f"with `{target}` (part of `make setup`), or pick another backend")


def accumulate(learner, batch: TaskBatch, task_query_loss: Callable[[int], tuple[Tensor, Tensor]]):
    """Backpropagate each task's query loss / T into the meta-parameters' ``.grad`` (one task's graph at a time).

    ``task_query_loss(i)`` returns (query loss of task i, differentiable to the meta-parameters; its first
    support loss). Returns (gradients, metrics) as ``MAML.meta_gradient`` does.
    """
    params = list(learner.model.parameters())
    for p in params:
        p.grad = None
    q_losses, s_losses = [], []
    T = len(batch)
    for i in range(T):
        q, s = task_query_loss(i)
        (q / T).backward()
        q_losses.append(q.detach())
        s_losses.append(s.detach())
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    return grads, checked_metrics(learner, grads, q_losses, support_loss=s_losses)
