"""``csv``: any collection described by a CSV with columns ``path,split,tags``.

``tags`` are ``;``-separated; an optional ``clip_id`` column names clips (default: the path).
Relative paths are resolved against the CSV's folder. The tag list is built from the training
split: tags with at least ``min_tag_count`` training clips, most frequent first (ties by name).
"""

from __future__ import annotations

import collections
import csv
import os

from tftag.datasets import SPLITS, Catalog, Clip, check_unique_ids, register

REQUIRED_COLUMNS = ("path", "split", "tags")


def build_tag_list(clips, min_tag_count: int = 1, split: str = "train") -> tuple[str, ...]:
    """Tags with >= min_tag_count clips in ``split``, by descending count then name."""
    counts = collections.Counter(t for c in clips if c.split == split for t in set(c.tags))
    kept = [t for t, n in counts.items() if n >= min_tag_count]
    return tuple(sorted(kept, key=lambda t: (-counts[t], t)))


@register("csv")
def load_csv(input_path: str, min_tag_count: int = 1, **_unused) -> Catalog:
    """Reads a ``path,split,tags`` CSV (see module docstring)."""
    if not os.path.isfile(input_path):
        raise FileNotFoundError(f"--input={input_path!r}: no such CSV file")
    if min_tag_count < 1:
        raise ValueError(f"min_tag_count must be >= 1, got {min_tag_count}")
    base = os.path.dirname(os.path.abspath(input_path))
    with open(input_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{input_path}: missing column(s) {', '.join(missing)}; need "
                f"{','.join(REQUIRED_COLUMNS)} (and optionally clip_id), got {reader.fieldnames}"
            )
        clips = []
        for line, row in enumerate(reader, start=2):
            path, split = (row["path"] or "").strip(), (row["split"] or "").strip()
            if not path:
                raise ValueError(f"{input_path}:{line}: empty path")
            if split not in SPLITS:
                raise ValueError(
                    f"{input_path}:{line}: split {split!r} not one of {', '.join(SPLITS)}"
                )
            tags = tuple(sorted({t.strip() for t in (row["tags"] or "").split(";") if t.strip()}))
            clip_id = (row.get("clip_id") or "").strip() or path
            full = path if os.path.isabs(path) else os.path.join(base, path)
            clips.append(Clip(clip_id=clip_id, path=full, split=split, tags=tags))
    if not clips:
        raise ValueError(f"{input_path}: no rows")
    check_unique_ids(clips, input_path)
    source_split = "train" if any(c.split == "train" for c in clips) else clips[0].split
    tags = build_tag_list(clips, min_tag_count, source_split)
    dropped = sorted({t for c in clips for t in c.tags} - set(tags))
    return Catalog(
        name="csv",
        clips=tuple(clips),
        tags=tags,
        info={
            "input": os.path.abspath(input_path),
            "min_tag_count": min_tag_count,
            "tag_source_split": source_split,
            "tags_not_in_list": dropped,
        },
    )
