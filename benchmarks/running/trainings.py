"""Train once, evaluate many: cells whose training is identical share one training run and one checkpoint.

A cell's *training key* hashes everything that determines its trained meta-parameters: the data
(dataset, split, training part), the training task shape (ways, training shots and query), the
meta-batch and number of meta-iterations, the learner config, the divergence rule, the run seed and
the device. Evaluation settings (shots at test, the protocol, fine-tuning, the task pool, curve
points) are not in it. The code state is not in the key either: a checkpoint records it and is only
resumed by the same code (``runner.load_checkpoint``).

Examples: the transductive and non-transductive cells of a setting share a training, and so do
Reptile's 1-shot and 5-shot cells (both train on 10 shots with the same settings).

    from benchmarks.running.trainings import group
    for training in group(cells):                 # in suite order, one entry per distinct training
        print(training.key, [c.cell for c in training.cells])
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from benchmarks.running.config import CellConfig

TRAINING_FIELDS = ("dataset", "split", "train_part", "ways", "train_shots", "train_query", "meta_batch",
                   "meta_iterations", "learner", "seed", "device", "diverge_factor", "diverge_patience")


def training_key(cell: CellConfig) -> str:
    """First 12 hex digits of sha256 over the fields that determine the trained meta-parameters."""
    d = cell.to_dict()
    return hashlib.sha256(json.dumps({k: d[k] for k in TRAINING_FIELDS}, sort_keys=True,
                                     separators=(",", ":")).encode()).hexdigest()[:12]


@dataclass
class Training:
    """One distinct training and the cells it serves (in suite order; at least one)."""

    key: str
    cells: list[CellConfig]

    @property
    def first(self) -> CellConfig:
        return self.cells[0]

    @property
    def name(self) -> str:
        """Readable: the first cell's name, plus how many others share it."""
        more = len(self.cells) - 1
        return f"{self.first.cell}" + (f" (+{more} sharing its training)" if more else "")

    @property
    def checkpoint_every(self) -> int:
        return min(c.checkpoint_every for c in self.cells)


def group(cells: list[CellConfig]) -> list[Training]:
    """Cells grouped by training key, trainings in the order of their first cell, cells in suite order."""
    by_key: dict[str, Training] = {}
    for cell in cells:
        key = training_key(cell)
        by_key.setdefault(key, Training(key, [])).cells.append(cell)
    return list(by_key.values())
