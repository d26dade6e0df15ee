"""tftag as an installed package: `pip install .` gives `import tftag` and the `tftag` command.

The virtualenv made here sees the test environment's site-packages through a .pth file (so
TensorFlow & co. are not installed again) and gets tftag itself by `pip install --no-deps
--no-build-isolation`, i.e. from pyproject.toml, not from the checkout on sys.path.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tomllib
import venv

import pytest

import tftag

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pyproject_takes_the_version_from_the_package():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert project["project"]["name"] == "tftag"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tftag.__version__"}
    assert project["project"]["scripts"] == {"tftag": "tftag.__main__:console"}
    # Ranges, not the pins of requirements.txt: every pinned runtime package is declared.
    declared = {d.split(">")[0].split("<")[0].split("=")[0].strip()
                for d in project["project"]["dependencies"]}
    with open(os.path.join(REPO, "requirements.txt")) as f:
        pinned = {line.split("==")[0].strip() for line in f
                  if "==" in line and not line.startswith("#")}
    tests_only = {d.split(">")[0].strip()
                  for d in project["project"]["optional-dependencies"]["test"]}
    assert tests_only == {"librosa", "pytest", "pytest-xdist"}
    assert pinned - tests_only <= declared, pinned - declared


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
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "data", "export", "tests", "benchmarks", "__pycache__"))
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
    assert "--mode: <train|" in done.stdout and "--run_dir" in done.stdout, done.stdout
    assert done.stdout.startswith("tftag's entry point")
    assert done.returncode == module.returncode  # absl exits 1 after help

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
