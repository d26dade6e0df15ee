"""``mtat``: MagnaTagATune from its ``annotations_final.csv`` and its mp3 folder tree.

``--input=DIR`` holds ``annotations_final.csv`` (tab-separated, quoted: ``clip_id``, 188 tag
columns, ``mp3_path``) and the folders ``0``..``f`` of mp3s. Labels are the top-50 tags in the
order of the musicnn MTT checkpoints; the split is the community one: folders 0-b train, c valid,
d-f test, with the empty clips 35644, 55753 and 57881 excluded (25,860 clips: 18,706 / 1,825 /
5,329). Rows whose audio file is missing are skipped and recorded.
"""

from __future__ import annotations

import csv
import os

from tftag.datasets import Catalog, Clip, check_unique_ids, register

ANNOTATIONS = "annotations_final.csv"
# tests/fixtures/paper-notes.md §2 (matches the musicnn MTT checkpoints, index 0-49).
TOP50_TAGS = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice", "weird",
    "country", "metal", "female voice", "choral",
)
FOLDER_SPLITS = {**{f: "train" for f in "0123456789ab"}, "c": "valid", "d": "test", "e": "test",
                 "f": "test"}
EXCLUDED_IDS = frozenset({"35644", "55753", "57881"})
PAPER_SPLIT_COUNTS = {"train": 18706, "valid": 1825, "test": 5329}


@register("mtat")
def load_mtat(input_path: str, **_unused) -> Catalog:
    """Reads MagnaTagATune (see module docstring)."""
    annotations = os.path.join(input_path, ANNOTATIONS)
    if not os.path.isfile(annotations):
        raise FileNotFoundError(
            f"--input={input_path!r}: {ANNOTATIONS} not found; the MTAT directory must hold it and "
            "the mp3 folders 0..f"
        )
    clips, skipped = [], []
    with open(annotations, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if not header or header[0] != "clip_id" or header[-1] != "mp3_path":
            raise ValueError(f"{annotations}: header must start with clip_id and end with mp3_path, "
                             f"got {header[:2] if header else header}...")
        missing = [t for t in TOP50_TAGS if t not in header]
        if missing:
            raise ValueError(f"{annotations}: top-50 tag column(s) missing: {', '.join(missing)}")
        columns = {t: header.index(t) for t in TOP50_TAGS}
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{annotations}:{line}: {len(row)} fields, header has {len(header)}")
            clip_id, mp3_path = row[0], row[-1]
            record = {"clip_id": clip_id, "path": os.path.join(input_path, mp3_path)}
            folder = mp3_path.split("/", 1)[0]
            if folder not in FOLDER_SPLITS:
                raise ValueError(f"{annotations}:{line}: mp3_path {mp3_path!r} is not in a folder "
                                 "0..f")
            record["split"] = FOLDER_SPLITS[folder]
            if clip_id in EXCLUDED_IDS:
                skipped.append(dict(record, error="Excluded",
                                    reason="excluded by the community split (empty clip)"))
                continue
            if not os.path.isfile(record["path"]):
                skipped.append(dict(record, error="FileNotFoundError",
                                    reason=f"{record['path']}: audio file not found"))
                continue
            try:
                tags = tuple(t for t, i in columns.items() if int(row[i]))
            except ValueError:
                raise ValueError(f"{annotations}:{line}: tag values must be 0 or 1") from None
            clips.append(Clip(clip_id, record["path"], record["split"], tags))
    if not clips:
        raise ValueError(f"{annotations}: no usable clips ({len(skipped)} skipped)")
    check_unique_ids(clips, annotations)
    counts = {s: sum(c.split == s for c in clips) for s in PAPER_SPLIT_COUNTS}
    return Catalog(
        name="mtat",
        clips=tuple(clips),
        tags=TOP50_TAGS,
        skipped=tuple(skipped),
        info={"input": os.path.abspath(input_path), "split_counts": counts,
              "paper_split": counts == PAPER_SPLIT_COUNTS},
    )
