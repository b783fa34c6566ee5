"""Pre-flight checks of a run: every cell's data and task shapes, before any cell starts.

A cell that asks for more classes or examples than its pools hold would otherwise train for hours and
then fail at its final evaluation (or fail at its first batch, on every rerun). The pools are cheap to
inspect (``datasets.pool_counts``: Omniglot's cached arrays, Mini-ImageNet's csv), so every cell is
checked against the class and example counts of its training part and its evaluation part:

    training:    ways <= classes,  train_shots + train_query <= examples per class
    evaluation:  ways <= classes,  shots + eval.query <= examples per class

Missing or damaged data is reported once per data part, as the loaders word it (file, what is wrong, fix).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks.running.config import CellConfig
from datasets import DataError, MissingDataError, pool_counts


class ShapeError(ValueError):
    """Some cells do not fit their data; ``lines`` has one line per problem."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


class DataProblem(Exception):
    """Data of some cells is missing or damaged (message: the loaders' own, naming file and fix)."""


@dataclass
class Preflight:
    cells: list[CellConfig]
    """The cells that can run."""
    missing: dict[str, str] = field(default_factory=dict)
    """Cells skipped for missing data (``skip_missing``): cell name -> the data part's message."""


def _parts(cell: CellConfig) -> list[tuple[str, str, str, str]]:
    """(role, dataset, split, part) of the pools a cell reads."""
    parts = [("training", cell.dataset, cell.split, cell.train_part)]
    if cell.eval.num_tasks:
        parts.append(("evaluation", cell.dataset, cell.split, cell.eval_part))
    return parts


def shape_problems(cell: CellConfig, counts: dict[tuple[str, str, str], tuple[int, int] | None]) -> list[str]:
    """One line per way in which ``cell`` does not fit its pools (``counts``: see ``datasets.pool_counts``)."""
    lines = []
    for role, dataset, split, part in _parts(cell):
        have = counts[(dataset, split, part)]
        if have is None:  # sine: as many tasks and points as asked for
            continue
        classes, examples = have
        shots, query = (cell.train_shots, cell.train_query) if role == "training" else (cell.shots, cell.eval.query)
        where = f"{cell.suite}/{cell.cell}: {role} part {dataset}/{split}/{part}"
        if cell.ways > classes:
            lines.append(f"{where} has {classes} classes, the cell asks for ways = {cell.ways}")
        if shots + query > examples:
            names = "train_shots + train_query" if role == "training" else "shots + eval.query"
            lines.append(f"{where} has {examples} examples per class, the cell asks for {names} = "
                         f"{shots} + {query} = {shots + query}")
    return lines


def preflight(cells: list[CellConfig], skip_missing: bool = False) -> Preflight:
    """Check data and shapes of ``cells``; ShapeError / DataProblem when something does not fit or is not there.

    With ``skip_missing``, cells whose data is missing are left out (and listed) instead.
    """
    counts: dict[tuple[str, str, str], tuple[int, int] | None] = {}
    errors: dict[tuple[str, str, str], Exception] = {}
    users: dict[tuple[str, str, str], list[str]] = {}
    for cell in cells:
        for _, dataset, split, part in _parts(cell):
            key = (dataset, split, part)
            users.setdefault(key, []).append(f"{cell.suite}/{cell.cell}")
            if key in counts or key in errors:
                continue
            try:
                counts[key] = pool_counts(dataset, split, part)
            except DataError as e:  # MissingDataError is a DataError
                errors[key] = e
    damaged = [k for k, e in errors.items() if not isinstance(e, MissingDataError)]
    if damaged or (errors and not skip_missing):
        key = (damaged or list(errors))[0]
        who = users[key]
        raise DataProblem(f"data {'/'.join(key)} of cell{'s' if len(who) > 1 else ''} {', '.join(who[:3])}"
                          f"{f' (+{len(who) - 3} more)' if len(who) > 3 else ''}: {errors[key]}")
    result = Preflight([])
    lines = []
    from algorithms.libraries import LibraryMissing, check_available

    for backend in sorted({c.learner.backend for c in cells}):
        try:
            check_available(backend)
        except LibraryMissing as e:
            who = [f"{c.suite}/{c.cell}" for c in cells if c.learner.backend == backend]
            lines.append(f"{', '.join(who[:3])}{f' (+{len(who) - 3} more)' if len(who) > 3 else ''}: {e}")
    for cell in cells:
        bad = [k for _, *k in _parts(cell) if tuple(k) in errors]
        if bad:
            result.missing[cell.cell] = str(errors[tuple(bad[0])]).splitlines()[0]
            continue
        lines += shape_problems(cell, counts)
        result.cells.append(cell)
    if lines:
        raise ShapeError(lines)
    return result
