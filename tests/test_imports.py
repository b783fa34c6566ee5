"""The project's own imports go one way: no module imports itself back through others, no layer imports a higher one.

A small AST walk over every module of ``algorithms``, ``datasets`` and ``benchmarks`` (imports inside
functions included: a lazy import is still a dependency), so it runs in a second and needs nothing
installed.

    .venv/bin/python -m pytest -q tests/test_imports.py
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("datasets", "algorithms", "benchmarks")
LAYERS = {  # a module may import its own layer and lower ones (smaller numbers) only
    "datasets": 0,
    "algorithms": 1,
    "benchmarks": 2,  # the package's __init__ (docstring only)
    "benchmarks.records": 2,
    "benchmarks.running": 3,
    "benchmarks.reporting": 4,
    "benchmarks.perf": 4,
    "benchmarks.peers": 4,
    "benchmarks.cli_common": 5,
    "benchmarks.cli_cluster": 5,
    "benchmarks.cli": 5,
    "benchmarks.gpu": 6,
}


def modules(root: Path = REPO) -> dict[str, Path]:
    """{dotted name: file} of every module of the project's packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports: ``from X import y`` counts as ``X.y`` when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            submodules = {f"{source}.{alias.name}" for alias in node.names} & known
            found.update(submodules if len(submodules) == len(node.names) else {source, *submodules})
    return {m for m in found if m in known and m != name}


def graph(root: Path = REPO) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), each sorted; [] when the graph is acyclic."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer(name: str) -> int:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return LAYERS[prefix]
    raise KeyError(f"{name}: no layer; add its package to LAYERS in tests/test_imports.py")


def test_the_walk_sees_lazy_imports_and_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "algorithms"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from algorithms import a\n")
    (pkg / "c.py").write_text("from . import b\n")
    edges = graph(tmp_path)
    assert edges["algorithms.a"] == {"algorithms.b"} and edges["algorithms.c"] == {"algorithms.b"}
    assert edges["algorithms.b"] == {"algorithms.a"}  # the import inside the function counts
    assert cycles(edges) == [["algorithms.a", "algorithms.b"]]


def test_no_import_cycles():
    found = cycles(graph())
    assert found == [], "import cycles (each set imports itself back): " + "; ".join(" <-> ".join(c) for c in found)


def test_no_layer_imports_a_higher_one():
    edges = graph()
    assert [layer(name) for name in edges]  # every module belongs to a layer (KeyError names one that does not)
    upward = [f"{a} ({layer(a)}) imports {b} ({layer(b)})" for a, targets in edges.items() for b in sorted(targets)
              if layer(b) > layer(a)]
    assert upward == [], "imports against the layer order " + str(LAYERS) + ":\n" + "\n".join(upward)

