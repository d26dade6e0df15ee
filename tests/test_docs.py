"""The user-facing documents: README.md is a manual, BUILD.md the build/test/design notes.

Rules checked here (no TensorFlow, reads files only):
- README.md has at most 300 lines; the study's narrative lives beside its results
  (benchmarks/results/real_music/README.md), which keeps the study's numbers;
- README.md and BUILD.md name no issue numbers ("issue 23") and carry no ISO date at all
  (YYYY-MM-DD): a dated status line is out of date the day after; dates of measurements belong in
  the results write-ups beside the figures they date;
- the two set-up commands of README's "Set-up" section are there verbatim (CI runs the second);
- every relative link, repository path, ``python -m`` module and ``tftag.*`` name that README.md,
  BUILD.md and the results write-ups (benchmarks/results/**/README.md) cite exists.
"""

from __future__ import annotations

import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
BUILD = os.path.join(REPO, "BUILD.md")
STUDY = os.path.join(REPO, "benchmarks", "results", "real_music", "README.md")
MANUALS = (README, BUILD)

MAX_README_LINES = 300
# README's two set-up commands, verbatim (the second is .ci/run's).
SETUP_RUN = "bash .ci/setup && .venv/bin/python -m tftag.main --flagfile=configs/quickstart.flags"
SETUP_TEST = ("bash .ci/setup && .venv/bin/python -m pytest -q -n auto --maxprocesses=2 "
              "--dist loadfile tests")

ISSUE_NUMBER = re.compile(r"\bissues?\s*(?:#|no\.?\s*)?\d+", re.IGNORECASE)
ISO_DATE = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REPO_PATH = re.compile(r"`((?:tftag|benchmarks|configs|tools|pipelines|tests|\.ci)/[^`\s]*)`")
PYTHON_M = re.compile(r"python -m ([A-Za-z_][\w.]*)")
TFTAG_NAME = re.compile(r"\btftag(?:\.[A-Za-z_]\w*)+")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _results_readmes() -> list[str]:
    return sorted(glob.glob(os.path.join(REPO, "benchmarks", "results", "**", "README.md"),
                            recursive=True))


def test_readme_is_at_most_300_lines():
    n = len(_read(README).splitlines())
    assert n <= MAX_README_LINES, (
        f"README.md has {n} lines (at most {MAX_README_LINES}): move detail beside the results "
        "(benchmarks/results/<study>/README.md) or into BUILD.md")


@pytest.mark.parametrize("path", MANUALS, ids=os.path.basename)
def test_no_issue_numbers(path):
    hits = [m.group(0) for m in ISSUE_NUMBER.finditer(_read(path))]
    assert not hits, f"{os.path.basename(path)} names issue numbers: {hits}"


@pytest.mark.parametrize("path", MANUALS, ids=os.path.basename)
def test_no_dates(path):
    hits = [line.strip()[:100] for line in _read(path).splitlines() if ISO_DATE.search(line)]
    assert not hits, (f"{os.path.basename(path)} carries dates (status lines age; a measurement's "
                      f"date goes beside its results): {hits}")


def test_the_rules_catch_what_they_should():
    assert ISSUE_NUMBER.search("the students (issue 24)")
    assert ISSUE_NUMBER.search("Issue #23 asks")
    assert not ISSUE_NUMBER.search("the issue's criterion")
    assert ISO_DATE.search("**Status (2026-12-06 04:00 UTC): complete**")
    assert ISO_DATE.search("(2026-12-04: 9 resolutions)")
    assert not ISO_DATE.search("a checkout of d5c958c, 2,214 clips, 12-10-4")
    assert LINK.findall("see [a](x/README.md) and ![b](y.png)") == ["x/README.md", "y.png"]


def test_setup_commands_are_verbatim():
    text = _read(README)
    for command in (SETUP_RUN, SETUP_TEST):
        assert f"\n    {command}\n" in text, f"README's set-up command changed: {command}"
    # CI runs the README's test command: its set-up, then its pytest line (other checks may
    # run beside them)
    ci = _read(os.path.join(REPO, ".ci", "run"))
    setup, _, pytest_line = SETUP_TEST.partition(" && ")
    assert setup in ci and pytest_line in ci


@pytest.mark.parametrize("path", [*MANUALS, *_results_readmes()],
                         ids=lambda p: os.path.relpath(p, REPO))
def test_relative_links_resolve(path):
    base = os.path.dirname(path)
    broken = []
    for target in LINK.findall(_read(path)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        local = target.split("#", 1)[0]
        if not os.path.exists(os.path.normpath(os.path.join(base, local))):
            broken.append(target)
    assert not broken, f"{os.path.relpath(path, REPO)}: links to missing files: {broken}"


@pytest.mark.parametrize("path", [*MANUALS, *_results_readmes()],
                         ids=lambda p: os.path.relpath(p, REPO))
def test_cited_paths_exist(path):
    missing = []
    for cited in REPO_PATH.findall(_read(path)):
        cited = cited.split("::", 1)[0].rstrip(".,;:)")  # a test id names its file
        if re.search(r"[<>*{}|]|\.\.\.", cited):
            continue  # a pattern, not a path
        if not os.path.exists(os.path.join(REPO, cited)):
            missing.append(cited)
    assert not missing, f"{os.path.relpath(path, REPO)} cites paths that do not exist: {missing}"


def _module_file(dotted: str) -> str | None:
    base = os.path.join(REPO, *dotted.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.exists(candidate):
            return candidate
    return None


@pytest.mark.parametrize("path", [*MANUALS, *_results_readmes()],
                         ids=lambda p: os.path.relpath(p, REPO))
def test_cited_modules_exist(path):
    text = _read(path)
    missing = [m for m in sorted(set(PYTHON_M.findall(text)))
               if m.split(".")[0] in {"tftag", "benchmarks", "tools", "pipelines"}
               and _module_file(m) is None]
    for name in sorted(set(TFTAG_NAME.findall(text))):
        parts = name.split(".")
        # the longest prefix that is a module; what follows must be a name it defines
        k = max((i for i in range(1, len(parts) + 1) if _module_file(".".join(parts[:i]))),
                default=0)
        if k < 1 or (k < len(parts) and not re.search(
                rf"\b{re.escape(parts[k])}\b", _read(_module_file(".".join(parts[:k]))))):
            missing.append(name)
    assert not missing, (f"{os.path.relpath(path, REPO)} cites modules or names that do not "
                         f"exist: {missing}")


def test_the_study_write_up_keeps_its_numbers():
    assert os.path.exists(STUDY), "the real-music study's write-up: " + os.path.relpath(STUDY, REPO)
    text = _read(STUDY)
    assert "92.87" in text  # MUSICNN 128x1, pooled ROC-AUC %
    assert "93.35 [91.77, 94.66]" in text  # VGG-CNN 96x1 baseline, pooled ROC-AUC % [95 % CI]
    for figure in ("roc_vs_gmacs.png", "per_tag_vs_baseline.png", "learning_curves.png"):
        assert f"]({figure})" in text, f"the study's write-up does not show {figure}"
    assert "benchmarks/results/real_music/README.md" in _read(README)
