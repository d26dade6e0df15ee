"""Catalogues: where clips are, their splits and their tags, behind one registry.

A catalogue turns a user's input (a folder, a CSV, a dataset's own annotation files) into a
:class:`Catalog` of :class:`Clip` records and the tag list; ``pipelines/extract.py`` consumes it.

Owns the registry and one module per catalogue: ``synthetic`` (the built-in corpus), ``folder``,
``csv_catalog``, ``mtat``, ``msd`` and ``debian`` (game soundtracks from Debian packages).

May import: :mod:`tftag.registry`, :mod:`tftag.errors`, :mod:`tftag.runs`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Callable, Sequence

from tftag.registry import Registry

SPLITS = ("train", "valid", "test")
UNSPLIT = "all"
# Extra training crops (``--train_clip_hop``): clips cut between a track's non-overlapping ones,
# stored under their own split so split readers never see them; cross-validation folds add a
# fold's crops to its training part only (:mod:`tftag.storage.folds`).
CROPS = "crops"


@dataclasses.dataclass(frozen=True)
class Clip:
    """One audio clip of a catalogue: a whole file, or the segment ``offset`` .. ``offset +
    duration`` seconds of it."""

    clip_id: str
    path: str
    split: str
    tags: tuple[str, ...] = ()
    offset: float = 0.0
    duration: float | None = None
    # Track group (near-duplicate versions of one track; cross-validation folds keep a group
    # together, tftag.storage.folds); "" = the clip's own file (tftag.storage.folds.default_group).
    group: str = ""

    @property
    def segment(self) -> tuple[float, float | None] | None:
        """(offset, duration) of a segment clip, None for a whole file."""
        return None if self.offset == 0.0 and self.duration is None else (self.offset, self.duration)


@dataclasses.dataclass(frozen=True)
class Catalog:
    """Clips, the tag list labels index into, and rows skipped while reading (with reasons)."""

    name: str
    clips: tuple[Clip, ...]
    tags: tuple[str, ...]
    skipped: tuple[dict, ...] = ()
    info: dict = dataclasses.field(default_factory=dict)

    def label_indices(self, clip: Clip) -> list[int]:
        """Indices into :attr:`tags` of the clip's tags that are in the tag list."""
        index = {t: i for i, t in enumerate(self.tags)}
        return sorted(index[t] for t in clip.tags if t in index)

    def split_counts(self) -> dict[str, int]:
        """{split: number of clips}."""
        counts: dict[str, int] = {}
        for clip in self.clips:
            counts[clip.split] = counts.get(clip.split, 0) + 1
        return dict(sorted(counts.items()))

    def fingerprint(self) -> str:
        """A hash of every clip record and the tag list (changes when the input changes)."""
        h = hashlib.sha1()
        h.update(json.dumps(list(self.tags)).encode())
        for clip in sorted(self.clips, key=lambda c: c.clip_id):
            fields = dataclasses.astuple(clip)[:6]  # the group is not hashed (added later)
            if clip.segment is None:  # whole files hash as before segments existed
                fields = fields[:4]
            h.update(json.dumps(fields, ensure_ascii=False).encode())
        return h.hexdigest()


def check_unique_ids(clips: Sequence[Clip], source: str) -> None:
    """Raises ValueError naming duplicate clip ids."""
    seen: set[str] = set()
    duplicates: list[str] = []
    for clip in clips:
        if clip.clip_id in seen:
            duplicates.append(clip.clip_id)
        seen.add(clip.clip_id)
    if duplicates:
        shown = ", ".join(repr(d) for d in duplicates[:5])
        raise ValueError(f"{source}: {len(duplicates)} duplicate clip ids, e.g. {shown}")


def _load_builtin() -> None:
    from tftag.datasets import csv_catalog, debian, folder, msd, mtat, synthetic  # noqa: F401


REGISTRY: Registry[Callable[..., Catalog]] = Registry("catalog", _load_builtin)
register = REGISTRY.register
names = REGISTRY.names


def load(name: str, input_path: str, **options) -> Catalog:
    """Reads a catalogue by name; unknown names fail with the list of known ones."""
    return REGISTRY.get(name)(input_path, **options)


def detect(input_path: str) -> str:
    """The catalogue an --input looks like: synthetic, mtat, msd, folder (a directory) or csv."""
    import os

    if os.path.isdir(input_path):
        for marker, name in (("corpus.json", "synthetic"), ("annotations_final.csv", "mtat"),
                             ("train.tsv", "msd")):
            if os.path.exists(os.path.join(input_path, marker)):
                return name
        return "folder"
    return "csv"
