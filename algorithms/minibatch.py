"""Minibatch order of an inner loop: shuffle the task's examples and cycle through them.

This is the sampling of the official supervised-reptile code (``_mini_batches``
with ``replacement=False``): the examples are shuffled, consumed in order, and
reshuffled when exhausted. A batch that is not full when a pass ends is
completed from the next pass, so every example is used equally often. Such a
straddling batch can hold one example twice (the end of one shuffle and the
start of the next), as in the official code; a batch inside one pass never
does. Reptile's meta-training and the shared evaluator both use it.

    for idx in cycle_minibatches(n=50, batch_size=10, num_batches=5, generator=g):
        loss = task_loss(model(x[idx]), y[idx])
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor


def cycle_minibatches(n: int, batch_size: int, num_batches: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Yield ``num_batches`` int64 index tensors of length ``batch_size`` into ``range(n)``.

    ``batch_size`` = 0 means the whole set (still reshuffled per batch, which
    changes nothing for a full-batch loss but keeps the generator stream the
    same shape for every setting).
    """
    if n < 1:
        raise ValueError(f"cannot draw minibatches from an empty set (n={n})")
    if batch_size < 0 or num_batches < 0:
        raise ValueError(f"batch_size and num_batches must be >= 0, got {batch_size} and {num_batches}")
    size = n if batch_size == 0 else batch_size
    order = torch.empty(0, dtype=torch.long)
    for _ in range(num_batches):
        # Top up with fresh shuffled passes until one batch is available.
        while order.numel() < size:
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        yield order[:size]
        order = order[size:]


def minibatch_indices(n: int, batch_size: int, num_batches: int, generator: torch.Generator) -> Tensor:
    """``cycle_minibatches``' draws stacked, ``[num_batches, batch]``: one indexing call gathers every minibatch."""
    return torch.stack(list(cycle_minibatches(n, batch_size, num_batches, generator)))
