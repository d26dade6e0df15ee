"""tftag as an installed package: `pip install .` gives `import tftag` and the `tftag` command.

The virtualenv made here sees the test environment's site-packages through a .pth file (so
TensorFlow & co. are not installed again) and gets tftag itself by `pip install --no-deps
--no-build-isolation`, i.e. from pyproject.toml, not from the checkout on sys.path. That every
import is a declared dependency is checked here by reading the code; that `pip install .` alone
is enough (a new virtualenv, nothing else installed, `tftag --mode=tag` on an mp3) is checked by
`.ci/run` beside pytest.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
import venv

import numpy as np
import pytest
from packaging.requirements import Requirement

import tftag

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pyproject_takes_the_version_from_the_package():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert project["project"]["name"] == "tftag"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tftag.__version__"}
    assert project["project"]["scripts"] == {"tftag": "tftag.__main__:console"}
    # Ranges, not the pins of requirements.txt (test_requirements_pin_every_dependency_...).
    tests_only = {Requirement(d).name for d in project["project"]["optional-dependencies"]["test"]}
    assert tests_only == {"librosa", "pytest", "pytest-xdist"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _pins() -> dict[str, str]:
    """requirements.txt: {canonical distribution name: exact version}."""
    with open(os.path.join(REPO, "requirements.txt")) as f:
        lines = [line.split("#")[0].strip() for line in f]
    pins = {}
    for line in filter(None, lines):
        name, _, version = line.partition("==")
        assert version, f"requirements.txt: {line!r} is not an exact pin"
        pins[_canonical(name)] = version.strip()
    return pins


# Code the package's modes may run: the package and the Beam/worker entry points it launches.
RUNTIME_DIRS = ("tftag", "pipelines")
# Imported (or looked up) by tftag but deliberately not a dependency, each with why:
OPTIONAL = {
    # The wheel of the MTT_musicnn / MTT_vgg checkpoints (only its files are read, found with
    # importlib.util.find_spec); its metadata pins TF1-era packages, so it is installed with
    # `pip install --no-deps musicnn==0.1.0` and a missing wheel is a one-line error.
    "musicnn",
}


def _third_party_imports() -> dict[str, set[str]]:
    """{top-level module: files} of every ``import X`` / ``from X import`` (module level or in a
    function) and ``importlib.util.find_spec("X")`` under RUNTIME_DIRS that is not the standard
    library's and not the project's own."""
    found: dict[str, set[str]] = {}
    for top_dir in RUNTIME_DIRS:
        for dirpath, _, files in os.walk(os.path.join(REPO, top_dir)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                with open(path) as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        modules = [alias.name for alias in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        modules = [node.module]
                    elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None)
                          == "find_spec" and node.args
                          and isinstance(node.args[0], ast.Constant)):
                        modules = [node.args[0].value]
                    else:
                        continue
                    for module in modules:
                        top = module.split(".")[0]
                        if top not in sys.stdlib_module_names and top not in RUNTIME_DIRS:
                            found.setdefault(top, set()).add(os.path.relpath(path, REPO))
    return found


def test_every_runtime_import_is_a_declared_dependency():
    """A module tftag imports comes from a distribution pyproject.toml declares, so `pip install
    .` into an empty environment brings it (issue 45: soxr came only through librosa, a test
    dependency, and `tftag --mode=tag` failed with ModuleNotFoundError)."""
    imports = _third_party_imports()
    # The scan sees what it must: a module-level, an in-function and a find_spec import.
    assert {"tensorflow", "soundfile", "musicnn"} <= set(imports), sorted(imports)
    assert OPTIONAL <= set(imports), f"allow-listed but no longer imported: {OPTIONAL - set(imports)}"
    declared = {_canonical(Requirement(r).name) for r in _pyproject()["project"]["dependencies"]}
    by_module = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, files in sorted(imports.items()):
        if module in OPTIONAL:
            continue
        dists = {_canonical(d) for d in by_module.get(module, [])}
        assert dists, f"{module} (imported by {sorted(files)}) is installed by no distribution"
        if not dists & declared:
            undeclared[module] = (sorted(dists), sorted(files))
    assert not undeclared, f"imported, not in pyproject.toml [project].dependencies: {undeclared}"


def test_requirements_pin_every_dependency_within_its_range():
    """requirements.txt (what .ci/setup installs and CI tests) pins each declared dependency at
    a version its pyproject.toml range accepts, and pins nothing else but the test extras."""
    project = _pyproject()["project"]
    pins = _pins()
    for text in project["dependencies"] + project["optional-dependencies"]["test"]:
        requirement = Requirement(text)
        name = _canonical(requirement.name)
        assert name in pins, f"{text}: not pinned in requirements.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (text, pins[name])
    declared = {_canonical(Requirement(r).name) for r in project["dependencies"]
                + project["optional-dependencies"]["test"]}
    assert set(pins) == declared, set(pins) ^ declared


# Top-level folders of the checkout the package build does not need (a package may have a
# sub-package of the same name, e.g. tftag/runs: only the top level is skipped).
_TOP_LEVEL_SKIPPED = {".git", ".venv", "runs", "data", "export", "tests", "benchmarks", "build"}


def _not_shipped(directory: str, names: list[str]) -> set[str]:
    skipped = {"__pycache__"} | {n for n in names if n.endswith(".egg-info")}
    if os.path.samefile(directory, REPO):
        skipped |= _TOP_LEVEL_SKIPPED
    return skipped & set(names)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtualenv with tftag installed from this checkout (not editable)."""
    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(purelib, "test-deps.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    source = root / "source"  # pip builds in the source tree: a copy keeps the checkout clean
    shutil.copytree(REPO, source, ignore=_not_shipped)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", str(source)],
                   check=True, capture_output=True, text=True, cwd=root)
    shutil.rmtree(source)
    return env_dir, root


def _run(cmd, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_console_command_prints_the_version(installed):
    env_dir, cwd = installed
    done = _run([str(env_dir / "bin" / "tftag"), "--version"], cwd)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"tftag {tftag.__version__}"


def test_console_command_is_the_entry_point(installed):
    env_dir, cwd = installed
    done = _run([str(env_dir / "bin" / "tftag"), "--helpshort"], cwd)
    module = _run([sys.executable, "-m", "tftag.main", "--helpshort"], REPO)
    # The same help as the module's (its wording belongs to tftag/cli.py and tftag/main.py).
    assert "--run_dir" in done.stdout, done.stdout
    assert done.returncode == module.returncode

    def flag_lines(text):  # the flags' listing is headed by the program's path: compare the rest
        return [line for line in text.splitlines() if not line.rstrip().endswith("main.py:")]

    assert flag_lines(done.stdout) == flag_lines(module.stdout)
    bad = _run([str(env_dir / "bin" / "tftag"), "--mode=verify"], cwd)
    assert bad.returncode == 2
    assert "--mode=verify needs --dataset_dir" in bad.stderr


def test_import_comes_from_the_installed_package(installed):
    env_dir, cwd = installed
    done = _run([str(env_dir / "bin" / "python"), "-c",
                 "import tftag, tftag.patches, tftag.models; print(tftag.__file__)"], cwd)
    assert done.returncode == 0, done.stderr
    path = done.stdout.strip()
    assert path.startswith(str(env_dir)) and "site-packages" in path, path
    assert not path.startswith(REPO)


def test_missing_musicnn_wheel_is_a_one_line_error(installed, tmp_path):
    """`tftag --mode=tag --pretrained=MTT_musicnn` without the musicnn wheel: exit 1 and one line
    naming the fix, no traceback (the wheel is hidden by a sitecustomize on PYTHONPATH)."""
    import soundfile

    env_dir, _ = installed
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['musicnn'] = None  # hidden\n")
    audio = tmp_path / "song.wav"
    soundfile.write(audio, np.zeros(16000, np.float32), 16000)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(env_dir / "bin" / "tftag"), "--mode=tag", "--pretrained=MTT_musicnn",
                           f"--audio={audio}"], capture_output=True, text=True, cwd=tmp_path,
                          env={**env, "PYTHONPATH": str(shim)}, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    # TensorFlow's native startup lines (before absl logging starts) may come first; tftag's part
    # is the error line to the end.
    lines = done.stderr.strip().splitlines()
    (first,) = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(lines) - first <= 2, done.stderr
    assert "MTT_musicnn needs the musicnn wheel" in lines[first]
    assert "`pip install --no-deps musicnn==0.1.0`" in lines[first]
    assert not any("musicnn" in line for line in lines[:first]), done.stderr
    assert not os.path.exists(tmp_path / "tags.json")


def test_hints_name_the_environments_commands(tmp_path, monkeypatch):
    """Printed hints (`inspect it with: ... saved_model_cli`, `TensorBoard: ... tensorboard`) name
    the console script beside the running Python (so a pip user's venv works without activating
    it), relative to the working directory when inside it, else the bare name."""
    from tftag.delivery.export import installed_command

    bin_dir = tmp_path / "env" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "saved_model_cli").write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    assert installed_command("saved_model_cli") == os.path.join("env", "bin", "saved_model_cli")
    assert installed_command("tensorboard") == "tensorboard"  # not beside python: PATH's
    monkeypatch.chdir(REPO)
    assert installed_command("saved_model_cli") == str(bin_dir / "saved_model_cli")



def test_hinted_commands_come_with_the_declared_dependencies():
    """saved_model_cli and tensorboard are console scripts of tensorflow and tensorboard, both in
    pyproject.toml's dependencies: every `pip install` of tftag has them beside its python."""
    scripts = {ep.name: dist.metadata["Name"] for dist in importlib.metadata.distributions()
               for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts["saved_model_cli"] == "tensorflow"
    assert scripts["tensorboard"] == "tensorboard"
    declared = {_canonical(Requirement(r).name) for r in _pyproject()["project"]["dependencies"]}
    assert {"tensorflow", "tensorboard"} <= declared
    for name in ("saved_model_cli", "tensorboard"):
        assert os.access(os.path.join(os.path.dirname(sys.executable), name), os.X_OK), name


def test_version_in_one_place():
    assert sys.modules["tftag"].__version__ == tftag.__version__
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        assert "version =" not in f.read().split("[tool.setuptools.dynamic]")[0]


def test_wheel_ships_the_pretrained_students(tmp_path):
    """pyproject.toml's package data: a shipped model's card.json and weights are in the wheel."""
    import zipfile

    source = tmp_path / "source"
    shutil.copytree(os.path.join(REPO, "tftag"), source / "tftag",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    model = source / "tftag" / "models" / "weights" / "tftag_vgg_8x1"
    model.mkdir(parents=True)
    (model / "card.json").write_text('{"name": "tftag_vgg_8x1"}')
    (model / "model.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    (model / "notes.tmp").write_text("not shipped")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, text=True, cwd=tmp_path)
    (wheel,) = os.listdir(tmp_path / "dist")
    names = set(zipfile.ZipFile(tmp_path / "dist" / wheel).namelist())
    assert {"tftag/models/weights/tftag_vgg_8x1/card.json",
            "tftag/models/weights/tftag_vgg_8x1/model.weights.h5",
            "tftag/models/weights/README.md", "tftag/models/pretrained.py"} <= names
    assert "tftag/models/weights/tftag_vgg_8x1/notes.tmp" not in names
