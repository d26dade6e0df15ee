"""The layout of a dataset directory: ``dataset.json``, shard names and shard listing.

No TensorFlow here: reading ``dataset.json`` or listing shards (to check ``--dataset_dir``, to
write a data card, to plan an extraction) does not load it. The TFRecord contents are
:mod:`tftag.storage.data`'s; checking shard files against ``dataset.json`` is :mod:`tftag.storage.verify`'s.

A *dataset directory* (what ``pipelines/extract.py --output_dir`` writes)::

    dataset.json                    configs, layout, tag list, clip counts, version, time, and
                                    every shard's record count, size and sha256 ("shard_files")
    failures.jsonl                  every clip that was skipped, with its reason
    sr16000-mel96/train-00000-of-00004.tfrecord
    sr16000-mel96/valid-00000-of-00001.tfrecord
    ...

Only the hop-1 *power* mel of each (sr, n_mels) is stored ("base" arrays); every hop factor and
compression is derived from it on read.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import hashlib
import json
import math
import os
import re
from typing import Any, Sequence

import tftag
from tftag.storage import codecs
from tftag.features import MelConfig

FORMAT_VERSION = 1
LAYOUT = "base-power-hop1"
DATASET_JSON = "dataset.json"
FAILURES_JSONL = "failures.jsonl"
SHARD_FILES = "shard_files"  # dataset.json's key of the shard manifest
MEL_DTYPES = tuple(codecs.names())  # the storage codec registry's names
SHARD_GLOB = os.path.join("sr*-mel*", "*.tfrecord")  # every shard file, relative to the directory

_SHARD_NAME = re.compile(
    r"^(?P<base>[^/]+)/(?P<split>.+)-(?P<index>\d+)-of-(?P<count>\d+)\.tfrecord$")


def tags_version(tags: Sequence[str]) -> str:
    """A short hash naming a tag list (its order included)."""
    return hashlib.sha1("\n".join(tags).encode("utf-8")).hexdigest()[:12]


# ----------------------------------------------------------------------------- shard names


def shard_path(dataset_dir: str, base_name: str, split: str, index: int, count: int) -> str:
    """``<dataset_dir>/<base_name>/<split>-00000-of-00004.tfrecord``."""
    return os.path.join(dataset_dir, base_name, f"{split}-{index:05d}-of-{count:05d}.tfrecord")


def shard_name(base_name: str, split: str, index: int, count: int) -> str:
    """A shard's path relative to the dataset directory, "/"-separated (dataset.json's keys)."""
    return f"{base_name}/{os.path.basename(shard_path('', base_name, split, index, count))}"


def parse_shard_name(name: str) -> tuple[str, str, int, int]:
    """(base_name, split, index, count) of a :func:`shard_name`."""
    match = _SHARD_NAME.match(name)
    if not match:
        raise ValueError(
            f"not a shard name: {name!r} (expected <base>/<split>-NNNNN-of-MMMMM.tfrecord)")
    return match["base"], match["split"], int(match["index"]), int(match["count"])


def relative_name(dataset_dir: str, path: str) -> str:
    """The "/"-separated name of a file of ``dataset_dir`` (a shard's :func:`shard_name`)."""
    return os.path.relpath(path, dataset_dir).replace(os.sep, "/")


def shard_index(clip_id: str, num_shards: int) -> int:
    """Stable shard of a clip: md5 of its id modulo the shard count."""
    digest = hashlib.md5(clip_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % num_shards


def num_shards_for(n_clips: int, clips_per_shard: int) -> int:
    """Shards for a split: ceil(n / clips_per_shard), at least 1."""
    return max(1, -(-n_clips // clips_per_shard))


def shard_files(dataset_dir: str, config: MelConfig, split: str | None = None) -> list[str]:
    """Sorted shard files holding ``config``'s base mel (one split, or all)."""
    pattern = f"{split}-*.tfrecord" if split else "*.tfrecord"
    return sorted(glob.glob(os.path.join(dataset_dir, config.base_name, pattern)))


def present_shards(dataset_dir: str) -> set[str]:
    """Names (:func:`shard_name`) of every shard file in the base directories of ``dataset_dir``."""
    return {relative_name(dataset_dir, p)
            for p in glob.glob(os.path.join(dataset_dir, SHARD_GLOB))}


# ----------------------------------------------------------------------------- dataset.json


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """The contents of a dataset directory's ``dataset.json``."""

    path: str
    duration: float
    srs: tuple[int, ...]
    n_mels: tuple[int, ...]
    views: tuple[str, ...]
    mel_dtype: str
    tags: tuple[str, ...]
    tags_version: str
    splits: dict[str, int]
    shards: dict[str, int]
    raw: dict[str, Any]
    codec: codecs.StorageCodec  # from dataset.json's mel_codec: decodes this dataset

    @property
    def n_tags(self) -> int:
        """Length of the multi-hot label vectors."""
        return len(self.tags)

    @property
    def base_names(self) -> list[str]:
        """Stored base arrays, e.g. ``sr16000-mel96``."""
        return [f"sr{sr}-mel{m}" for sr in self.srs for m in self.n_mels]

    def check(self, config: MelConfig) -> None:
        """Raises a clear error if ``config`` cannot be read from this dataset."""
        if config.base_name not in self.base_names:
            raise ValueError(
                f"{self.path}: no stored mel for {config.name}; this dataset holds "
                f"{', '.join(self.base_names)} (any hop factor and compression of those)"
            )
        if not math.isclose(config.duration, self.duration):
            raise ValueError(
                f"{self.path}: clips are cropped to {self.duration} s, but {config.name} asks for "
                f"duration={config.duration}"
            )

    @property
    def shard_manifest(self) -> dict[str, dict[str, Any]] | None:
        """{relative shard path: {"records", "bytes", "sha256"}} recorded at extraction.

        None for datasets written before tftag recorded it (they still load; verification then
        reads every record instead of comparing checksums).
        """
        return self.raw.get(SHARD_FILES)

    def expected_shards(
        self, base_names: Sequence[str] | None = None, split: str | None = None
    ) -> dict[str, dict[str, Any] | None]:
        """The shard files this dataset consists of, sorted.

        Args:
          base_names: only these stored bases (default: all).
          split: only this split (default: all).

        Returns:
          {relative path ("sr16000-mel96/train-00000-of-00004.tfrecord"): its manifest entry, or
          None when dataset.json predates the manifest (the list then comes from "shards")}.
        """
        manifest = self.shard_manifest
        if manifest is None:
            # The bases extraction stored ("plan"); srs × n_mels may name more (--resolutions).
            plan_bases = (self.raw.get("plan") or {}).get("bases")
            stored = (["-".join(name.split("-")[:2]) for name in plan_bases] if plan_bases
                      else self.base_names)
            manifest = {
                shard_name(base, s, index, count): None
                for base in stored for s, count in self.shards.items()
                for index in range(count)
            }
        selected = {}
        for name, entry in manifest.items():
            base, shard_split, _, _ = parse_shard_name(name)
            if (base_names is None or base in base_names) and split in (None, shard_split):
                selected[name] = entry
        return dict(sorted(selected.items()))


def dataset_metadata(
    *,
    configs: Sequence[MelConfig],
    mel_dtype: "str | codecs.StorageCodec",
    tags: Sequence[str],
    splits: dict[str, int],
    shards: dict[str, int],
    source: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The dictionary stored as ``dataset.json``."""
    durations = {c.duration for c in configs}
    if len(durations) != 1:
        raise ValueError(f"all configs of one dataset need one duration, got {sorted(durations)}")
    srs = sorted({c.sr for c in configs})
    n_mels = sorted({c.n_mels for c in configs}, reverse=True)
    bases = [MelConfig(sr, m, 1, "power", configs[0].duration) for sr in srs for m in n_mels]
    meta = {
        "format_version": FORMAT_VERSION,
        "tftag_version": tftag.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "layout": LAYOUT,
        "layout_doc": "one hop-1 power mel per (sr, n_mels) in <sr..-mel..>/<split>-NNNNN-of-"
                      "MMMMM.tfrecord; hop factors and compressions derived on read",
        "mel_dtype": codecs.get(mel_dtype).name,
        "mel_codec": codecs.get(mel_dtype).describe(),
        "duration": configs[0].duration,
        "srs": srs,
        "n_mels": n_mels,
        "bases": {b.base_name: {"shape": list(b.shape), "config": b.name} for b in bases},
        "views": [c.name for c in configs],
        "tags": list(tags),
        "tags_version": tags_version(tags),
        "splits": dict(sorted(splits.items())),
        "shards": dict(sorted(shards.items())),
        "source": source,
    }
    meta.update(extra or {})
    return meta


def load_dataset_info(dataset_dir: str) -> DatasetInfo:
    """Reads ``dataset.json`` of a dataset directory."""
    path = os.path.join(dataset_dir, DATASET_JSON)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {dataset_dir!r} is not a finished tftag dataset directory "
            "(run `python -m pipelines.extract --output_dir=...` first, or let it finish)"
        )
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {raw.get('format_version')} is not "
                         f"{FORMAT_VERSION}; re-run the extraction")
    return DatasetInfo(
        path=dataset_dir,
        duration=float(raw["duration"]),
        srs=tuple(raw["srs"]),
        n_mels=tuple(raw["n_mels"]),
        views=tuple(raw["views"]),
        mel_dtype=raw["mel_dtype"],
        tags=tuple(raw["tags"]),
        tags_version=raw["tags_version"],
        splits=dict(raw["splits"]),
        shards=dict(raw["shards"]),
        raw=raw,
        codec=codecs.from_dataset(raw, path),
    )


def checked_dataset_info(dataset_dir: str, config: MelConfig, split: str | None) -> DatasetInfo:
    """``dataset_dir``'s :class:`DatasetInfo`, checked to hold ``config`` and ``split``.

    Raises:
      ValueError: ``config`` is not stored there, or there is no such split.
    """
    info = load_dataset_info(dataset_dir)
    info.check(config)
    if split is not None and split not in info.splits:
        raise ValueError(
            f"{dataset_dir}: no split {split!r}; splits: {', '.join(sorted(info.splits)) or 'none'}"
        )
    return info
