"""Entry points import tftag before TensorFlow or Keras.

Importing tftag turns TensorFlow's oneDNN kernels on (``TF_ENABLE_ONEDNN_OPTS``), and TensorFlow
reads that switch once, when it loads. A script that loads TensorFlow first (``import keras``
does) runs Eigen's kernels on a CPU without AVX-512 — 2.9x slower for VGG-CNN 96x1 width 1/8,
1.3x for MUSICNN (benchmarks/results/training_throughput/README.md) — and would time or train
something other than what ``python -m tftag.main`` does. Checked statically, scope by scope, in
the scripts outside the package (``tftag``'s own modules load ``tftag/__init__.py`` first).
"""

from __future__ import annotations

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TENSORFLOW = ("tensorflow", "keras", "keras_tuner", "tf_keras")


def _imports(body: list[ast.stmt]) -> list[tuple[int, str]]:
    """(line, top-level module) of the imports directly in ``body`` (not in nested functions)."""
    found = []
    todo = list(body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        else:
            todo += [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
    return sorted(found)


def tensorflow_before_tftag(source: str) -> list[int]:
    """Lines where a scope imports TensorFlow/Keras with no tftag import before it (its own or
    the module's)."""
    tree = ast.parse(source)
    module = _imports(tree.body)
    module_tftag = min((line for line, m in module if m == "tftag"), default=None)
    bad = [line for line, m in module if m in TENSORFLOW
           and (module_tftag is None or line < module_tftag)]
    if module_tftag is not None:
        return bad
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scope = _imports(node.body)
            first = min((line for line, m in scope if m == "tftag"), default=None)
            bad += [line for line, m in scope if m in TENSORFLOW and (first is None or line < first)]
    return sorted(bad)


def test_the_check_flags_tensorflow_first_and_passes_tftag_first():
    assert tensorflow_before_tftag("import keras\nimport tftag\n") == [1]
    assert tensorflow_before_tftag("import tftag\nimport keras\n") == []
    assert tensorflow_before_tftag("from tftag import data\ndef f():\n    import keras\n") == []
    assert tensorflow_before_tftag(
        "def f():\n    import tensorflow as tf\n    from tftag import data\n") == [2]
    assert tensorflow_before_tftag(
        "def f():\n    import tftag  # noqa\n    import keras\n") == []
    assert tensorflow_before_tftag("def f():\n    if x:\n        import keras\n") == [3]


def test_scripts_import_tftag_before_tensorflow():
    offenders = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))
                       + glob.glob(os.path.join(ROOT, "pipelines", "*.py"))):
        with open(path, encoding="utf-8") as f:
            lines = tensorflow_before_tftag(f.read())
        if lines:
            offenders[os.path.relpath(path, ROOT)] = lines
    assert offenders == {}, f"TensorFlow/Keras imported before tftag (file: lines): {offenders}"
