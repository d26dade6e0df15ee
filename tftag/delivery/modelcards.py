"""Model cards of the pretrained taggers, read and shown: ``--mode=describe --pretrained=NAME``.

A shipped student's card is its ``card.json`` (written by ``--mode=ship``, :mod:`tftag.tagging.ship`;
the keys of :data:`tftag.models.pretrained.CARD_KEYS` at least); a musicnn port's is what the
registry knows of it (:attr:`tftag.models.pretrained.PretrainedModel.card`).
:func:`format_card` prints one card as a two-column table; :func:`markdown_table` makes the
README's "Tag your music" table from every card (``--mode=describe --pretrained=all``), so the
table is never typed by hand. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from tftag.models import pretrained

ALL = "all"  # --pretrained=all: the table of every pretrained model


def _fixed(digits: int) -> Callable[[Any], str]:
    return lambda v: f"{v:.{digits}f}"


def _kb(v: Any) -> str:
    return f"{v / 1024:.0f} KB"


def _packages(v: Any) -> str:
    return "; ".join(f"{p['package']} ({p['licence']})" if isinstance(p, dict) else str(p)
                     for p in v)


def _tflite(v: Any) -> str:
    return ", ".join(f"{p} {r['bytes'] / 1024:.0f} KB (max |dp| {r['max_abs_diff']:.3f})"
                     for p, r in v.items())


# The rows of a printed card: (key, label, format); keys a card lacks are left out.
CARD_ROWS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("name", "name (--pretrained)", str),
    ("model", "model", str),
    ("width", "width", lambda v: f"{v:g}"),
    ("resolution", "resolution (MelConfig.name)", str),
    ("window_seconds", "window (s)", _fixed(2)),
    ("teacher", "teacher", str),
    ("top5_overlap", "held-out top-5 overlap with the teacher", _fixed(3)),
    ("rank_correlation", "held-out rank correlation (Spearman, per clip)", _fixed(3)),
    ("roc_auc", "held-out ROC-AUC vs the teacher's labels", _fixed(3)),
    ("heldout_clips", "held-out clips", str),
    ("gmacs_per_window", "GMACs per window", _fixed(4)),
    ("gmacs_per_minute", "GMACs per minute of audio", _fixed(2)),
    ("parameters", "parameters", lambda v: f"{v:,}"),
    ("bytes_per_stored_clip", "bytes per stored 29.1-s clip", lambda v: f"{v:,}"),
    ("weights_bytes", "weights file", _kb),
    ("tflite", "TFLite (vs the Keras model)", _tflite),
    ("seconds_per_minute", "seconds per minute of audio (tag, end to end)", _fixed(3)),
    ("training_packages", "training packages (licence)", _packages),
    ("heldout_packages", "held-out packages (licence)", _packages),
    ("tags", "tags", lambda v: f"{len(v)}: " + ", ".join(v)),
    ("source", "source", str),
)


def format_card(card: dict) -> str:
    """A model card as a readable two-column table (the rows of :data:`CARD_ROWS` it has)."""
    rows = [(label, "—" if card[key] is None else fmt(card[key]))
            for key, label, fmt in CARD_ROWS if key in card]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


# The README table's columns: (header, key, format).
TABLE_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("--pretrained", "name", lambda v: f"`{v}`"),
    ("model", "model", str),
    ("resolution", "resolution", str),
    ("window s", "window_seconds", _fixed(2)),
    ("GMAC/window", "gmacs_per_window", _fixed(4)),
    ("params", "parameters", lambda v: f"{v:,}"),
    ("top-5 overlap", "top5_overlap", _fixed(3)),
    ("rank corr.", "rank_correlation", _fixed(3)),
    ("ROC-AUC", "roc_auc", _fixed(3)),
    ("s / min audio", "seconds_per_minute", _fixed(3)),
    ("weights", "weights_bytes", _kb),
    ("TFLite dynamic", "tflite", lambda v: _kb(v["dynamic"]["bytes"])),
)


def markdown_table(names: Sequence[str] | None = None) -> str:
    """The markdown table of the cards of ``names`` (default: every pretrained model); a value a
    card lacks (a port has no held-out figures) is "—"."""
    cards = [pretrained.get(n).card for n in (names or pretrained.names())]
    lines = ["| " + " | ".join(h for h, _, _ in TABLE_COLUMNS) + " |",
             "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    for card in cards:
        cells = []
        for _, key, fmt in TABLE_COLUMNS:
            try:
                cells.append("—" if card.get(key) is None else fmt(card[key]))
            except (KeyError, TypeError):
                cells.append("—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe(name: str, as_json: bool = False) -> dict:
    """``--mode=describe --pretrained=NAME``: prints the model card (a table, or JSON with
    ``as_json``); ``NAME=all`` prints :func:`markdown_table` of every pretrained model.

    Returns:
      {"pretrained": name, "card": the card} (for all: {"pretrained": "all", "names": [...]}).
    """
    if name == ALL:
        table = markdown_table()
        print(json.dumps({n: pretrained.get(n).card for n in pretrained.names()}, indent=2)
              if as_json else table)
        return {"pretrained": ALL, "names": pretrained.names()}
    card = pretrained.get(name).card  # an unknown name: ValueError listing the known ones
    print(json.dumps(card, indent=2, sort_keys=True) if as_json else format_card(card))
    return {"pretrained": name, "card": card}
