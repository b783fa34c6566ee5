"""One benchmark cell's complete configuration, and its stable JSON form and hash.

A *cell* is one (dataset, setting, algorithm, evaluation protocol, seed) run:
meta-train, evaluate, measure, write one result row. Suites (``benchmarks/suites/*.toml``)
expand into a list of ``CellConfig``; the runner needs nothing else. The JSON
form (sorted keys) is written into every row, and its sha256 prefix is the row's
``config_hash``: a cell whose row carries the same hash is already done.

    cell = CellConfig(suite="smoke", cell="sine-reptile", dataset="sine", split="sine", ways=1, shots=10)
    cell.validate(); cell.config_hash()
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from algorithms.base import MetaConfig
from algorithms.evaluation import EvalConfig
from datasets import VALID, check_names
from datasets.tasks import INDEX_BITS, INDEX_LIMIT, SEED_LIMIT

DATASETS = ("sine", "omniglot", "miniimagenet")
MAML_FAMILY = ("maml", "fomaml", "imaml", "anil", "foanil")
"""Algorithms whose outer loss is a query loss (their training tasks need query examples)."""
FIRST_ORDER = ("reptile", "fomaml", "foanil")
"""Algorithms whose outer update uses no second derivatives."""


@dataclass
class CellConfig:
    """Everything that defines one benchmark cell. Saved (as JSON) with its result row."""

    suite: str
    """Name of the suite the cell belongs to (results go to ``<out>/<suite>/``)."""
    cell: str
    """Cell name, unique inside its suite (with ``seed``, identifies checkpoints and curves)."""
    dataset: str
    """``sine``, ``omniglot`` or ``miniimagenet`` (see ``datasets.load_pool``)."""
    split: str = "small"
    """Dataset split: omniglot ``small`` (the two background-small zips) or ``paper`` (1200/423 characters);
    miniimagenet ``ravi``; sine ``maml`` (see ``datasets.VALID``)."""
    ways: int = 5
    """Classes per task (1 for sine)."""
    shots: int = 1
    """Support examples per class at evaluation (sine: support points)."""
    train_shots: int | None = None
    """Support examples per class in meta-training tasks. Reptile paper: 10 (Omniglot), 15 (Mini-ImageNet);
    MAML trains with ``shots``. None means ``shots`` and is resolved on construction."""
    train_query: int = 0
    """Query examples per class in meta-training tasks: MAML's outer loss needs >= 1; Reptile ignores the query
    set, so 0 there (no images drawn for nothing)."""
    meta_batch: int = 5
    """Tasks per outer update."""
    meta_iterations: int = 100
    """Planned outer updates (a ``--max-minutes`` or ``--max-iterations`` budget may stop earlier; the row then says
    ``complete=False``)."""
    learner: MetaConfig = field(default_factory=MetaConfig)
    """How the meta-learner trains (algorithm, backend, inner loop, outer step)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation protocol (task pool, fine-tuning, transductive or not). ``num_tasks = 0``: no evaluation
    (cost-only cells of the scaling sweep)."""
    seed: int = 0
    """Run seed: model initialisation, training task stream and inner minibatch order (not the evaluation pool,
    whose seed is ``eval.seed`` so every algorithm sees the same tasks)."""
    device: str = "auto"
    """``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (CUDA when available); the CLI resolves it before the config
    is hashed. A suite may pin a device; ``--device`` then must agree with it."""
    eval_every: int = 0
    """Small periodic evaluation for the learning curve every this many iterations (0 = none)."""
    curve_tasks: int = 0
    """Tasks in that periodic evaluation: the first ``curve_tasks`` tasks of the ``eval`` pool."""
    checkpoint_every: int = 100
    """Save a resumable checkpoint every this many iterations (and when the run ends or is cut short)."""
    train_part: str = "train"
    """Dataset part used for meta-training."""
    eval_part: str = "test"
    """Dataset part holding the evaluation classes (never seen in meta-training)."""
    diverge_factor: float = 100.0
    """Divergence rule: training stops with an error (and no row) when the training loss stays above this many
    times the reference loss (the initial meta-parameters' loss on the first meta-batch's support sets, no
    adaptation) for ``diverge_patience`` consecutive meta-steps; a NaN or inf loss stops it at once. At
    evaluation, a task whose last fine-tuning loss is this many times its first is a diverged evaluation."""
    diverge_patience: int = 5
    """Consecutive meta-steps above the divergence threshold that stop training (see ``diverge_factor``)."""

    def __post_init__(self) -> None:
        if self.train_shots is None:
            self.train_shots = self.shots

    @property
    def first_order(self) -> bool:
        """Whether the outer update ignores second derivatives (Reptile, first-order MAML and first-order ANIL do)."""
        return self.learner.algorithm in FIRST_ORDER

    def validate(self) -> "CellConfig":
        """Raise ValueError naming the cell and the bad field; returns self."""
        where = f"cell {self.suite}/{self.cell}"
        try:
            self.learner.validate()
        except ValueError as e:
            raise ValueError(f"{where}: learner: {e}") from None
        if self.dataset not in DATASETS:
            raise ValueError(f"{where}: unknown dataset {self.dataset!r}; valid: {', '.join(DATASETS)}")
        if self.dataset == "sine" and self.ways != 1:
            raise ValueError(f"{where}: sine regression has ways = 1, got ways = {self.ways}")
        ints = ("ways", "shots", "train_shots", "train_query", "meta_batch", "meta_iterations", "seed",
                "eval_every", "curve_tasks", "checkpoint_every", "diverge_patience")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where}: {name} must be an integer, got {value!r}")
        for name in ("suite", "cell", "split", "device", "train_part", "eval_part"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{where}: {name} must be a string, got {getattr(self, name)!r}")
        for part in ("train_part", "eval_part"):
            try:
                check_names(self.dataset, self.split, getattr(self, part))
            except ValueError as e:  # name the field at fault: the dataset, the split, or this part
                field = ("dataset" if self.dataset not in VALID else
                         "split" if self.split not in VALID[self.dataset] else part)
                raise ValueError(f"{where}: {field}: {e}") from None
        if isinstance(self.diverge_factor, bool) or not isinstance(self.diverge_factor, (int, float)) \
                or not (math.isfinite(self.diverge_factor) and self.diverge_factor > 1):
            raise ValueError(f"{where}: diverge_factor must be a finite number > 1, got {self.diverge_factor!r}")
        positive = ("ways", "shots", "train_shots", "meta_batch", "meta_iterations", "checkpoint_every", "diverge_patience")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{where}: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_query", "eval_every", "curve_tasks", "seed"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{where}: {name} must be >= 0, got {getattr(self, name)}")
        if self.seed >= SEED_LIMIT:
            raise ValueError(f"{where}: seed must be < {SEED_LIMIT}, got {self.seed}")
        if self.meta_iterations * self.meta_batch > INDEX_LIMIT:
            raise ValueError(f"{where}: meta_iterations x meta_batch = {self.meta_iterations * self.meta_batch} training "
                             f"tasks; task indices stop at 2**{INDEX_BITS}: lower meta_iterations or meta_batch")
        if self.learner.algorithm in MAML_FAMILY and self.train_query < 1:
            raise ValueError(f"{where}: {self.learner.algorithm} needs train_query >= 1 (its outer loss is a query loss)")
        if self.eval.num_tasks < 0:
            raise ValueError(f"{where}: eval.num_tasks must be >= 0 (0 = no evaluation), got {self.eval.num_tasks}")
        if self.eval.num_tasks > 0:
            try:
                self.eval.validate()
            except ValueError as e:
                raise ValueError(f"{where}: eval: {e}") from None
        if self.dataset == "sine" and self.eval.num_tasks and self.eval.seed == self.seed:
            # Sine's train and test tasks come from one family, kept apart only by the sampling seed.
            raise ValueError(f"{where}: eval.seed ({self.eval.seed}) equals the training seed; sine would be "
                             "evaluated on its training tasks: pick an eval.seed that no run seed uses")
        if self.eval_every and (self.curve_tasks < 2 or self.eval.num_tasks < 2):
            raise ValueError(f"{where}: eval_every > 0 needs curve_tasks >= 2 (a 95% CI needs two tasks) and "
                             "eval.num_tasks >= 2")
        if self.curve_tasks > self.eval.num_tasks:
            raise ValueError(f"{where}: curve_tasks ({self.curve_tasks}) exceeds eval.num_tasks ({self.eval.num_tasks})")
        if not (self.device in ("cpu", "auto") or self.device.startswith("cuda")):
            raise ValueError(f"{where}: device must be 'cpu', 'cuda[:N]' or 'auto', got {self.device!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """Stable JSON (sorted keys, no whitespace): the input of ``config_hash``."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def config_hash(self) -> str:
        """First 12 hex digits of sha256(to_json())."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CellConfig":
        """Inverse of ``to_dict``; unknown fields (here or in ``learner``/``eval``) raise ValueError."""
        d = dict(d)
        check_fields(cls, d, "cell")
        learner = d.pop("learner", {})
        evaluation = d.pop("eval", {})
        check_fields(EvalConfig, evaluation, "eval")
        meta = learner if isinstance(learner, MetaConfig) else MetaConfig.from_dict(dict(learner))
        ev = evaluation if isinstance(evaluation, EvalConfig) else EvalConfig(**evaluation)
        return cls(**d, learner=meta, eval=ev)

    @classmethod
    def from_json(cls, text: str) -> "CellConfig":
        return cls.from_dict(json.loads(text))


def check_fields(cls, d: Any, what: str) -> None:
    """Raise ValueError if ``d`` is not a mapping of ``cls``'s field names."""
    if isinstance(d, cls):
        return
    if not isinstance(d, dict):
        raise ValueError(f"{what}: expected a table of settings, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{what}: unknown setting(s) {unknown}; valid: {sorted(names)}")
