"""Suites are data: ``benchmarks/suites/<name>.toml`` files that expand into ``CellConfig`` lists.

File format (every key optional except ``group``; see smoke.toml for a small example)::

    description = "what the suite is for"
    include = ["scaling"]              # add the cells of other suites (they run under this suite's name)
    [slurm]                            # defaults of --launcher submitit's --slurm-* flags (running/cluster.py)
    gpus = 1                           #   partition, gpus, cpus, time_minutes, mem_gb, array_parallelism, extra
                                       # (a name in benchmarks/suites, or a .toml path relative to this file)

    [defaults]                         # CellConfig fields shared by every group of this file
    meta_batch = 5
    [defaults.learner]                 # MetaConfig fields
    [defaults.eval]                    # EvalConfig fields

    [[group]]                          # a cross product of cells
    name = "{dataset}-{ways}w{shots}s-{algorithm}-{protocol}"   # template, see NAME_FIELDS
    dataset = "omniglot"               # any CellConfig field overrides the defaults
    algorithms = ["reptile", "maml"]   # cross-product axes: algorithms, backends, shots,
    shots = [1, 5]                     #   transductive, inner_steps, seeds
    [[group.when]]                     # conditional overrides, applied in order
    algorithm = ["maml", "fomaml"]     #   match on axis values (scalar or list)
    set = { train_query = 1, learner = { inner_lr = 0.4 } }

Precedence: defaults < group < matching ``when`` blocks < the cell's axis values.
A ``when`` matches the cell's resolved values (defaults, group and axes, else CellConfig's
own defaults), as they are before any ``when`` sets them.
``--seeds`` on the command line replaces every group's seeds.

    python -m benchmarks.running.suites smoke      # prints the cells of a suite
"""
from __future__ import annotations

import copy
import fnmatch
import itertools
import re
import sys
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable

from algorithms.base import MetaConfig
from algorithms.evaluation import EvalConfig

from benchmarks.running.config import FIRST_ORDER, CellConfig, check_fields

SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"
TOP_LEVEL = ("description", "include", "defaults", "group", "slurm")
AXES = {  # axis key in a group -> (singular name used by `when` and templates, path in the cell dict)
    "algorithms": ("algorithm", ("learner", "algorithm")),
    "backends": ("backend", ("learner", "backend")),
    "shots": ("shots", ("shots",)),
    "transductive": ("transductive", ("eval", "transductive")),
    "inner_steps": ("inner_steps", ("learner", "inner_steps")),
    "seeds": ("seed", ("seed",)),
}
NAME_FIELDS = "dataset, split, ways, shots, algorithm, backend, inner_steps, protocol (trans|nontrans)"
DEFAULT_NAME = "{dataset}-{ways}w{shots}s-{algorithm}-{protocol}"
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
# What a cell runs with where nothing sets a field: `when` matching and names read these (no dataset default).
FIELD_DEFAULTS = {k: v for k, v in CellConfig(suite="", cell="", dataset="").to_dict().items()
                  if k not in ("suite", "cell", "dataset")}
TYPES = {"int": ((int,), "an integer"), "float": ((int, float), "a number"), "bool": ((bool,), "true or false"),
         "str": ((str,), "a string")}


class SuiteError(ValueError):
    """A suite name, file or cell filter is wrong; the message says how to fix it."""


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def suite_path(name: str, relative_to: Path | None = None) -> Path:
    """A suite name (a file of ``benchmarks/suites``) or a path to a ``.toml`` file of the same format.

    A path is relative to ``relative_to`` (default: the current directory), else to ``benchmarks/suites``.
    """
    if name.endswith(".toml"):
        tried = list(dict.fromkeys([(relative_to or Path.cwd()) / name, SUITES_DIR / name]))
        for path in tried:
            if path.is_file():
                return path
        raise SuiteError(f"suite file {name} not found (tried {', '.join(map(str, tried))}); "
                         f"available suites: {', '.join(available_suites())}")
    path = SUITES_DIR / f"{name}.toml"
    if not path.is_file():
        raise SuiteError(f"unknown suite {name!r}; available suites: {', '.join(available_suites())} "
                         "(or pass the path of a .toml suite file)")
    return path


def suite_name(name: str) -> str:
    """The name results are filed under: the file stem for a path."""
    return Path(name).stem if name.endswith(".toml") else name


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(f"{path}: not valid TOML: {e}") from None


def suite_table(name: str, key: str) -> dict[str, Any]:
    """A top-level table of a suite file (``slurm``: the defaults of its SLURM settings), or {}."""
    value = _read(suite_path(name)).get(key, {})
    if not isinstance(value, dict):
        raise SuiteError(f"suite {name}: `{key}` must be a [{key}] table")
    return value


def describe(name: str) -> str:
    return str(_read(suite_path(name)).get("description", "")).strip()


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update that returns a new dict (nested tables merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_path(d: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        d = d.setdefault(key, {})
    d[path[-1]] = value


def _get_path(d: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        d = d.get(key, {}) if isinstance(d, dict) else {}
    return None if d == {} else d


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _blocks(value: Any, where: str, key: str) -> list[dict[str, Any]]:
    """The ``[[key]]`` blocks (an array of tables); a single ``[key]`` table or a scalar is refused."""
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return value
    got = "a single [table]" if isinstance(value, dict) else repr(value)
    raise SuiteError(f"{where}: `{key}` must be [[{key}]] blocks (an array of tables), got {got}")


def _check_settings(d: Any, where: str, hint: str = "") -> None:
    """``d`` is a table of CellConfig fields, its ``learner`` and ``eval`` tables of theirs (else SuiteError)."""
    try:
        check_fields(CellConfig, d, where)
    except ValueError as e:
        raise SuiteError(f"{e}{hint}") from None
    try:
        check_fields(MetaConfig, d.get("learner", {}), f"{where}: learner")
        check_fields(EvalConfig, d.get("eval", {}), f"{where}: eval")
    except ValueError as e:
        raise SuiteError(str(e)) from None


def _check_types(cell: CellConfig) -> None:
    """MetaConfig/EvalConfig.validate compare values but do not check their types: `num_tasks = 5.5` would pass."""
    for part in ("learner", "eval"):
        config = getattr(cell, part)
        for f in fields(config):
            value = getattr(config, f.name)
            kind = getattr(f.type, "__name__", f.type)  # "int", or int without `from __future__ import annotations`
            ok, wanted = TYPES.get(kind, ((object,), ""))
            if not isinstance(value, ok) or (isinstance(value, bool) and kind != "bool"):
                raise ValueError(f"cell {cell.suite}/{cell.cell}: {part}.{f.name} must be {wanted}, got {value!r}")


def _matches(when: dict[str, Any], axes: dict[str, Any], where: str) -> bool:
    singular = {s for s, _ in AXES.values()}
    for key, wanted in when.items():
        if key == "set":
            continue
        if key not in singular:
            raise SuiteError(f"{where}: `when` can match on {sorted(singular)}, not {key!r}")
        if axes[key] not in _as_list(wanted):
            return False
    return True


def _expand_group(suite: str, group: dict[str, Any], defaults: dict[str, Any], where: str, seeds: list[int] | None):
    group = dict(group)
    template = group.pop("name", DEFAULT_NAME)
    if not isinstance(template, str):
        raise SuiteError(f"{where}: name must be a template string, got {template!r}; fields: {NAME_FIELDS}")
    whens = _blocks(group.pop("when", []), where, "group.when")
    for j, when in enumerate(whens):
        _check_settings(when.get("set", {}), f"{where}, when {j + 1}: set")
    axis_values = {key: _as_list(group.pop(key)) for key in list(group) if key in AXES}
    if seeds is not None:
        axis_values["seeds"] = list(seeds)
    _check_settings(group, where, f" (or a cross-product axis: {sorted(AXES)}, `name`, `when`)")
    base = _merge(defaults, group)
    keys = list(axis_values)
    for combo in itertools.product(*(axis_values[k] for k in keys)):
        cell = copy.deepcopy(base)
        for key, value in zip(keys, combo):
            _set_path(cell, AXES[key][1], value)
        resolved = _merge(FIELD_DEFAULTS, cell)  # a value left to CellConfig's defaults matches too
        axes = {singular: _get_path(resolved, path) for singular, path in AXES.values()}
        for when in whens:
            if _matches(when, axes, where):
                cell = _merge(cell, when.get("set", {}))
                for key, value in zip(keys, combo):  # axis values win over `when` sets
                    _set_path(cell, AXES[key][1], value)
        learner = cell.setdefault("learner", {})
        learner["first_order"] = learner.get("algorithm") in FIRST_ORDER  # recorded as the algorithm runs it
        cell["suite"] = suite
        yield _finish(cell, template, where)


def _finish(cell: dict[str, Any], template: str, where: str) -> CellConfig:
    r = _merge(FIELD_DEFAULTS, cell)
    names = {
        "dataset": r.get("dataset"), "split": r["split"], "ways": r["ways"], "shots": r["shots"],
        "algorithm": r["learner"]["algorithm"], "backend": r["learner"]["backend"],
        "inner_steps": r["learner"]["inner_steps"], "protocol": "trans" if r["eval"]["transductive"] else "nontrans",
    }
    try:
        cell["cell"] = template.format(**names)
    except (KeyError, IndexError, ValueError) as e:
        raise SuiteError(f"{where}: bad name template {template!r} ({e}); fields: {NAME_FIELDS}") from None
    if not SAFE_NAME.match(cell["cell"]):
        raise SuiteError(f"{where}: cell name {cell['cell']!r} may only use letters, digits, '.', '_' and '-'")
    try:
        config = CellConfig.from_dict(cell)
        _check_types(config)
        return config.validate()
    except (TypeError, ValueError) as e:
        raise SuiteError(f"{where}: {e}") from None


def load_suite(name: str, seeds: list[int] | None = None, _as: str | None = None, _seen: tuple = (),
               _dir: Path | None = None) -> list[CellConfig]:
    """All cells of suite ``name`` (included suites first), validated, with unique (cell, seed).

    ``name`` is a suite of ``benchmarks/suites`` or a path to a ``.toml`` suite file (relative to the
    current directory); a file's ``include`` of a ``.toml`` path is relative to that file.
    """
    path = suite_path(name, _dir)
    if path.resolve() in _seen:
        raise SuiteError(f"suite {name!r} includes itself (through {' -> '.join(p.stem for p in _seen)})")
    spec = _read(path)
    suite = _as or suite_name(name)
    unknown = sorted(set(spec) - set(TOP_LEVEL))
    if unknown:
        raise SuiteError(f"suite {name}: unknown top-level keys {unknown}; valid: {', '.join(TOP_LEVEL)}")
    if not isinstance(spec.get("slurm", {}), dict):
        raise SuiteError(f"suite {name}: `slurm` must be a [slurm] table of SLURM settings")
    includes = _as_list(spec.get("include", []))
    if not all(isinstance(inc, str) for inc in includes):
        raise SuiteError(f"suite {name}: include must list suite names or .toml paths, got {spec['include']!r}")
    defaults = spec.get("defaults", {})
    _check_settings(defaults, f"suite {name}: defaults")
    groups = _blocks(spec.get("group", []), f"suite {name}", "group")
    cells: list[CellConfig] = []
    for inc in includes:
        cells += load_suite(inc, seeds, suite, _seen + (path.resolve(),), path.parent)
    for i, group in enumerate(groups):
        cells += _expand_group(suite, group, defaults, f"suite {name}, group {i + 1}", seeds)
    seen: set[tuple[str, int]] = set()
    for c in cells:
        if (c.cell, c.seed) in seen:
            raise SuiteError(f"suite {name}: two cells named {c.cell!r} with seed {c.seed}; make the name templates distinct")
        seen.add((c.cell, c.seed))
    return cells


def select(cells: list[CellConfig], patterns: str | None) -> list[CellConfig]:
    """Cells whose name matches any comma-separated pattern (glob if it has * ? [, else substring)."""
    if not patterns:
        return cells
    pats = [p.strip() for p in patterns.split(",") if p.strip()]

    def hit(name: str, p: str) -> bool:
        return fnmatch.fnmatchcase(name, p) if any(ch in p for ch in "*?[") else p in name

    chosen = [c for c in cells if any(hit(c.cell, p) for p in pats)]
    if not chosen:
        names = sorted({c.cell for c in cells})
        raise SuiteError(f"--cells {patterns!r} matches no cell; cells of this suite: {', '.join(names)}")
    return chosen


def format_cells(cells: Iterable[CellConfig]) -> str:
    lines = []
    for c in cells:
        ev = f"{c.eval.num_tasks} eval tasks" if c.eval.num_tasks else "no evaluation"
        lines.append(f"  {c.cell}  seed={c.seed}  {c.meta_iterations} iterations  {ev}")
    return "\n".join(lines)


if __name__ == "__main__":
    for name in sys.argv[1:] or available_suites():
        print(f"{name}: {describe(name)}")
        print(format_cells(load_suite(name)))
