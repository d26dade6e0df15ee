"""tftag's dependencies point down: no two modules import each other, directly or through others.

Imports are read from the source (module level and inside functions alike); a submodule's import
of its own package's ``__init__`` does not count. The one documented exception is the Essentia
parent/child pair (``tftag/audio/_essentia.py`` starts ``tftag/audio/_essentia_ops.py`` as a child process,
which imports the parent's message framing back).
"""

from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALLOWED_PAIRS = {frozenset({"tftag.audio._essentia", "tftag.audio._essentia_ops"})}


def _modules() -> dict[str, str]:
    found = {}
    for root, _, files in os.walk(os.path.join(REPO, "tftag")):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, name), REPO)[:-3].replace(os.sep, ".")
                found[rel.removesuffix(".__init__")] = os.path.join(root, name)
    return found


def _imports(module: str, path: str, known: set[str]) -> set[str]:
    with open(path) as f:
        tree = ast.parse(f.read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                out.add(name)  # a submodule importing its own package's __init__ does not count
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, set(modules)) for m, p in modules.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def mutual_pairs(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    reach = {m: _reachable(graph, m) for m in graph}
    return {frozenset({a, b}) for a in graph for b in reach[a] if a != b and a in reach[b]}


def test_the_checker_sees_a_knot():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert mutual_pairs(graph) == {frozenset("ab"), frozenset("bc"), frozenset("ac")}
    assert mutual_pairs({"a": {"b"}, "b": set()}) == set()


def test_function_level_imports_count():
    graph = import_graph()
    assert "tftag.extraction.pipeline" in graph["tftag.extraction.extract"]  # imported inside extract() only
    assert "tftag.patches" in graph["tftag.evaluate"]


def test_no_two_modules_import_each_other():
    pairs = mutual_pairs(import_graph()) - ALLOWED_PAIRS
    assert not pairs, sorted(sorted(p) for p in pairs)

