"""tftag's dependencies point down: no two modules import each other, directly or through others,
and every module of a sub-package imports only what its package's docstring allows.

Imports are read from the source (module level and inside functions alike); a submodule's import
of its own package's ``__init__`` does not count. Each layered sub-package's ``__init__.py``
docstring ends with a "May import:" paragraph naming the tftag packages and top-level modules
its modules may import (besides their own package's).
"""

from __future__ import annotations

import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    pairs = mutual_pairs(import_graph())
    assert not pairs, sorted(sorted(p) for p in pairs)



# The sub-packages whose __init__.py docstring ends with a "May import:" paragraph.
LAYERED = ("runs", "audio", "storage", "extraction", "delivery", "study", "search", "tagging")


def may_import(package: str) -> set[str]:
    """The tftag packages and modules that ``tftag.<package>``'s docstring allows (its "May
    import:" paragraph; "not :mod:`X`" excludes X; "every layer below it" adds what each named
    layered package may import, transitively)."""
    with open(os.path.join(REPO, "tftag", package, "__init__.py")) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    last = doc.split("\n\n")[-1]
    assert last.startswith("May import:"), f"tftag.{package}: the docstring ends with {last!r}"
    text = " ".join(last.split())
    excluded = set(re.findall(r"\bnot :mod:`([\w.]+)`", text))
    allowed = set(re.findall(r":mod:`([\w.]+)`", text)) - excluded
    if "every layer below it" in text:
        for name in sorted(allowed):
            inner = name.removeprefix("tftag.")
            if inner in LAYERED and inner != package:
                allowed |= may_import(inner)
    return allowed - excluded


def _allowed(target: str, own: str, allowed: set[str]) -> bool:
    return any(target == a or target.startswith(a + ".") for a in allowed | {own})


def layer_violations(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(module, imported tftag module) pairs that break the importing package's docstring."""
    out = []
    for package in LAYERED:
        own, allowed = f"tftag.{package}", may_import(package)
        for module in sorted(m for m in graph if m == own or m.startswith(own + ".")):
            out += [(module, t) for t in sorted(graph[module]) if not _allowed(t, own, allowed)]
    return out


def test_the_layer_reader_reads_the_docstrings():
    assert may_import("runs") == {"tftag.registry", "tftag.errors"}
    search = may_import("search")
    assert {"tftag.study", "tftag.train", "tftag.storage"} <= search and "tftag.tagging" not in search
    assert layer_violations({"tftag.runs.runfiles": {"tftag.errors", "tftag.runs.determinism"},
                             "tftag.runs.distributed": {"tftag.train"}}) == [
        ("tftag.runs.distributed", "tftag.train")]


def test_sub_packages_import_only_what_their_docstrings_allow():
    violations = layer_violations(import_graph())
    assert not violations, violations


MAX_FUNCTION_LINES = 100  # issue 45: functions a reader can follow


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, str, int]]:
    """(file, function, lines) of every function or method in tftag/ longer than ``limit``
    lines (its ``def`` to its last line, docstring included, decorators not)."""
    out = []
    for module, path in sorted(_modules().items()):
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out.append((os.path.relpath(path, REPO), node.name, lines))
    return out


def test_the_length_checker_counts_lines():
    found = long_functions(20)
    assert any(path == os.path.join("tftag", "train.py") and name == "train"
               for path, name, _ in found), found
    assert all(lines > 20 for _, _, lines in found)


# Over the limit, to split by the module's owner (then remove the entry: a stale one fails).
PENDING_SPLITS: set[tuple[str, str]] = set()


def test_no_function_is_longer_than_100_lines():
    found = {(path, name): lines for path, name, lines in long_functions()}
    assert not set(found) - PENDING_SPLITS, found
    stale = PENDING_SPLITS - set(found)
    assert not stale, f"now at most {MAX_FUNCTION_LINES} lines: remove from PENDING_SPLITS: {stale}"
