"""Data cards: clip counts, durations and tag frequencies per split, as JSON, text and a PNG."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tftag.datasets import Catalog


def describe(catalog: Catalog, durations: bool = True) -> dict[str, Any]:
    """Statistics of a catalogue.

    Args:
      catalog: the catalogue.
      durations: read every file's header for its duration (libsndfile formats).

    Returns:
      {"catalog", "clips", "splits": {split: n}, "tags": [...], "tag_counts": {split: {tag: n}},
       "labels_per_clip": {...}, "durations": {...}, "unreadable": n}.
    """
    splits = catalog.split_counts()
    counts = {s: {t: 0 for t in catalog.tags} for s in splits}
    per_clip = []
    for clip in catalog.clips:
        labels = [t for t in clip.tags if t in counts[clip.split]]
        for t in labels:
            counts[clip.split][t] += 1
        per_clip.append(len(labels))
    card: dict[str, Any] = {
        "catalog": catalog.name,
        "clips": len(catalog.clips),
        "splits": splits,
        "tags": list(catalog.tags),
        "tag_counts": counts,
        "labels_per_clip": {
            "mean": round(float(np.mean(per_clip)), 3) if per_clip else 0.0,
            "min": int(min(per_clip, default=0)),
            "max": int(max(per_clip, default=0)),
            "unlabelled_clips": int(sum(n == 0 for n in per_clip)),
        },
        "skipped_rows": len(catalog.skipped),
    }
    if durations:
        import soundfile as sf

        seconds, unreadable = [], 0
        for clip in catalog.clips:
            try:
                seconds.append(sf.info(clip.path).duration)
            except Exception:  # missing or not a libsndfile format: counted, not fatal.
                unreadable += 1
        card["durations"] = {
            "total_hours": round(sum(seconds) / 3600, 4),
            "mean_s": round(float(np.mean(seconds)), 3) if seconds else None,
            "min_s": round(float(min(seconds)), 3) if seconds else None,
            "max_s": round(float(max(seconds)), 3) if seconds else None,
        }
        card["unreadable"] = unreadable
    return card


def format_card(card: dict[str, Any]) -> str:
    """The card as a text table (tags by total count)."""
    splits = list(card["splits"])
    totals = {t: sum(card["tag_counts"][s][t] for s in splits) for t in card["tags"]}
    width = max([len(t) for t in card["tags"]] + [4])
    lines = [f"catalog {card['catalog']}: {card['clips']} clips, "
             + ", ".join(f"{s} {n}" for s, n in card["splits"].items())]
    if "durations" in card:
        d = card["durations"]
        lines.append(f"durations: {d['total_hours']} h, mean {d['mean_s']} s, min {d['min_s']} s, "
                     f"max {d['max_s']} s ({card['unreadable']} unreadable)")
    lpc = card["labels_per_clip"]
    lines.append(f"labels per clip: mean {lpc['mean']}, min {lpc['min']}, max {lpc['max']}, "
                 f"{lpc['unlabelled_clips']} unlabelled")
    lines.append(f"{'tag':<{width}}  " + "  ".join(f"{s:>6}" for s in splits) + "   total")
    for tag in sorted(card["tags"], key=lambda t: (-totals[t], t)):
        lines.append(f"{tag:<{width}}  " + "  ".join(f"{card['tag_counts'][s][tag]:>6}" for s in splits)
                     + f"  {totals[tag]:>6}")
    return "\n".join(lines)


def plot_card(card: dict[str, Any], path: str) -> None:
    """Writes a PNG bar chart of tag frequencies per split (stacked, by total count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(card["splits"])
    totals = {t: sum(card["tag_counts"][s][t] for s in splits) for t in card["tags"]}
    tags = sorted(card["tags"], key=lambda t: (-totals[t], t))
    fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(tags) + 2), 4.5))
    bottom = np.zeros(len(tags))
    for split in splits:
        values = np.array([card["tag_counts"][split][t] for t in tags])
        ax.bar(range(len(tags)), values, bottom=bottom, label=f"{split} ({card['splits'][split]})")
        bottom += values
    ax.set_xticks(range(len(tags)))
    ax.set_xticklabels(tags, rotation=75, ha="right", fontsize=8)
    ax.set_ylabel("clips")
    ax.set_title(f"{card['catalog']}: tag frequencies ({card['clips']} clips)")
    ax.legend()
    fig.tight_layout()
    from tftag.runs import runfiles

    runfiles.save_figure_atomic(fig, path, dpi=100)


def write_card(catalog: Catalog, out_dir: str, durations: bool = True) -> dict[str, Any]:
    """Writes ``datacard.json``, ``datacard.txt`` and ``tag_frequencies.png`` into ``out_dir``."""
    from tftag.runs.runfiles import write_bytes_atomic, write_json_atomic

    card = describe(catalog, durations)
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(os.path.join(out_dir, "datacard.json"), card)
    write_bytes_atomic(os.path.join(out_dir, "datacard.txt"), (format_card(card) + "\n").encode())
    plot_card(card, os.path.join(out_dir, "tag_frequencies.png"))
    return card
