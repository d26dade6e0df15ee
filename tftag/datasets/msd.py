"""``msd``: the Million Song Dataset last.fm top-50 tags, from user-supplied split files.

``--input=DIR`` holds ``tags.txt`` (the label vocabulary, one tag per line, in label order; the
study uses the 50 most frequent last.fm tags) and ``train.tsv``, ``valid.tsv``, ``test.tsv``
with one track per line: ``track_id<TAB>audio path (relative to DIR)<TAB>tag;tag;...``.
The paper's split has 201,680 / 11,774 / 28,435 tracks; ``info["paper_split"]`` says whether
yours matches. Tags outside ``tags.txt`` are counted, tracks with missing audio skipped and
recorded.
"""

from __future__ import annotations

import collections
import os

from tftag.datasets import SPLITS, Catalog, Clip, check_unique_ids, register

PAPER_SPLIT_COUNTS = {"train": 201680, "valid": 11774, "test": 28435}


@register("msd")
def load_msd(input_path: str, **_unused) -> Catalog:
    """Reads the MSD layout of the module docstring."""
    tags_txt = os.path.join(input_path, "tags.txt")
    if not os.path.isfile(tags_txt):
        raise FileNotFoundError(f"--input={input_path!r}: tags.txt not found (one tag per line)")
    with open(tags_txt, encoding="utf-8") as f:
        tags = tuple(line.strip() for line in f if line.strip())
    if len(set(tags)) != len(tags):
        raise ValueError(f"{tags_txt}: duplicate tags")
    known = set(tags)
    clips, skipped = [], []
    unknown_tags: collections.Counter = collections.Counter()
    for split in SPLITS:
        path = os.path.join(input_path, f"{split}.tsv")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--input={input_path!r}: {split}.tsv not found")
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) != 3:
                    raise ValueError(f"{path}:{line_no}: expected track_id<TAB>path<TAB>tags, "
                                     f"got {len(fields)} fields")
                track_id, rel, tag_field = fields
                clip_tags = tuple(sorted({t.strip() for t in tag_field.split(";") if t.strip()}))
                unknown_tags.update(t for t in clip_tags if t not in known)
                audio = rel if os.path.isabs(rel) else os.path.join(input_path, rel)
                if not os.path.isfile(audio):
                    skipped.append({"clip_id": track_id, "path": audio, "split": split,
                                    "error": "FileNotFoundError",
                                    "reason": f"{audio}: audio file not found"})
                    continue
                clips.append(Clip(track_id, audio, split, clip_tags))
    check_unique_ids(clips, input_path)
    counts = {s: sum(c.split == s for c in clips) for s in SPLITS}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise ValueError(f"--input={input_path!r}: split(s) {', '.join(empty)} have no usable tracks")
    return Catalog(
        name="msd",
        clips=tuple(clips),
        tags=tags,
        skipped=tuple(skipped),
        info={"input": os.path.abspath(input_path), "split_counts": counts,
              "paper_split": counts == PAPER_SPLIT_COUNTS,
              "tags_not_in_list": dict(sorted(unknown_tags.items()))},
    )
