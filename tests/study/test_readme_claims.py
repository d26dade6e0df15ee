"""README.md's "The answer on real music" table quotes the committed real-music report: every
Δ and p in it equals report.json's, rounded as shown (track-level primary figures, the
package- and clip-level p beside them, and the Δ and p under the second labeller)."""

from __future__ import annotations

import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPORT = os.path.join(ROOT, "benchmarks", "results", "real_music", "report.json")
SECOND = "MTT_vgg"

# The table's rows, in order: (report.json list, model, from shape, to shape).
ROWS = (
    ("claims", "vgg", "96×1", "48×1"),
    ("claims", "vgg", "96×1", "96×2"),
    ("claims", "vgg", "96×1", "48×2"),
    ("claims", "vgg", "96×1", "96×10"),
    ("claims", "musicnn", "128×1", "96×1"),
    ("claims", "musicnn", "96×1", "48×1"),
    ("between_models", "vgg → musicnn", "96×1", "96×1"),
    ("between_models", "vgg → musicnn", "48×1", "48×1"),
)
NUMBER = r"([+−-]?\d+\.\d+)"
DELTA_P = re.compile(NUMBER + r" \(p " + NUMBER + r"\)")


def _value(text: str) -> float:
    return float(text.replace("−", "-"))


def _matches(shown: str, value: float) -> bool:
    """Whether ``shown`` is ``value`` rounded to the decimals shown."""
    decimals = len(shown.split(".")[1])
    return abs(_value(shown) - value) <= 0.5 * 10 ** -decimals + 1e-9


def _table() -> list[list[str]]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## The answer on real music", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in rows[1:]]


def _find(report: dict, key: str, model: str, a: str, b: str, frequent: bool = False) -> dict:
    rows = report["frequent_tags"][key] if frequent else report[key]
    found = [c for c in rows if c["model"] == model and (c["from_shape"], c["to_shape"]) == (a, b)
             and c["seed"] == 0]
    assert len(found) == 1, (key, model, a, b, frequent)
    return found[0]


@pytest.mark.skipif(not os.path.exists(REPORT), reason="no committed real-music report")
def test_readme_claims_table_quotes_the_report():
    with open(REPORT, encoding="utf-8") as f:
        report = json.load(f)
    assert report["unit"] == "track_group"
    table = _table()
    assert len(table) == len(ROWS), "one README row per claim of ROWS, in that order"
    for cells, (key, model, a, b) in zip(table, ROWS):
        primary = _find(report, key, model, a, b)
        frequent = _find(report, key, model, a, b, frequent=True)
        second = primary["second_labellers"][SECOND]
        # cells: claim | all tags Δ (p) | frequent tags Δ (p) | p by package / clip | MTT_vgg Δ (p) | holds
        for cell, want in ((cells[1], primary), (cells[2], frequent), (cells[4], second)):
            m = DELTA_P.search(cell)
            assert m, (cells[0], cell)
            assert _matches(m.group(1), want["delta_points"]), (cells[0], cell, want["delta_points"])
            assert _matches(m.group(2), want["p_bootstrap"]), (cells[0], cell, want["p_bootstrap"])
        package, clip = re.findall(NUMBER, cells[3])
        assert _matches(package, primary["by_unit"]["package"]["p_bootstrap"]), (cells[0], cells[3])
        assert _matches(clip, primary["by_unit"]["clip"]["p_bootstrap"]), (cells[0], cells[3])
