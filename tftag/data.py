"""One TFRecord feature spec, the shard writer, and the readers shared by training and serving.

Storage layout of a *dataset directory* (what ``pipelines/extract.py --output_dir`` writes)::

    dataset.json                    configs, layout, tag list, clip counts, version, time, and
                                    every shard's record count, size and sha256 ("shard_files")
    failures.jsonl                  every clip that was skipped, with its reason
    sr16000-mel96/train-00000-of-00004.tfrecord
    sr16000-mel96/valid-00000-of-00001.tfrecord
    ...

Only the hop-1 *power* mel of each (sr, n_mels) is stored ("base" arrays); every hop factor and
compression is derived from it exactly, in NumPy (:func:`read_examples`) or inside ``tf.data``
(:func:`make_dataset`), with the same definitions as :mod:`tftag.features`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import glob
import hashlib
import json
import math
import os
import re
import struct
import tempfile
from typing import Any, Iterator, Sequence

import numpy as np

from tftag import codecs, features
from tftag.features import MelConfig

# Importing TensorFlow after tftag.features is safe: Essentia runs in a child process when
# TensorFlow is already loaded (see tftag._essentia).
import tensorflow as tf  # noqa: E402

import tftag
from tftag.errors import DataError
from tftag.runfiles import write_bytes_atomic, write_json_atomic  # noqa: F401  (re-exported)

FORMAT_VERSION = 1
LAYOUT = "base-power-hop1"
DATASET_JSON = "dataset.json"
FAILURES_JSONL = "failures.jsonl"
MEL_DTYPES = tuple(codecs.names())  # the storage codec registry's names
_LN10 = math.log(10.0)

# The one tf.train.Example spec of tftag: written by extraction, read by training, evaluation
# and the serving_example signature.
FEATURE_SPEC = {
    "clip_id": tf.io.FixedLenFeature([], tf.string),
    "split": tf.io.FixedLenFeature([], tf.string),
    # Raw little-endian bytes of the [n_frames, n_mels] mel; dtype in dataset.json ("mel_dtype").
    "mel": tf.io.FixedLenFeature([], tf.string),
    "shape": tf.io.FixedLenFeature([2], tf.int64),
    # The mel's own config name (e.g. sr16000-mel96-hop1-power for stored base arrays).
    "mel_config": tf.io.FixedLenFeature([], tf.string),
    # Multi-hot over the dataset's tag list (length n_tags; empty for unlabelled collections).
    "labels": tf.io.VarLenFeature(tf.int64),
    "tags_version": tf.io.FixedLenFeature([], tf.string),
    # 1 if the clip was shorter than the crop and zero-padded.
    "padded": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    # Teacher-labelled datasets (dataset.json "labels": "teacher:<name>"): the teacher's
    # probabilities over the tag list, the distillation target; absent otherwise.
    "soft_labels": tf.io.VarLenFeature(tf.float32),
}


def tags_version(tags: Sequence[str]) -> str:
    """A short hash naming a tag list (its order included)."""
    return hashlib.sha1("\n".join(tags).encode("utf-8")).hexdigest()[:12]


def multi_hot(tag_indices: Sequence[int], n_tags: int) -> np.ndarray:
    """[n_tags] int64 with ones at ``tag_indices``."""
    labels = np.zeros(n_tags, dtype=np.int64)
    labels[list(tag_indices)] = 1
    return labels


def serialize_example(
    clip_id: str,
    split: str,
    mel: np.ndarray,
    mel_config: MelConfig,
    labels: np.ndarray,
    tags_version: str,
    mel_dtype: "str | codecs.StorageCodec" = "float32",
    padded: bool = False,
    soft_labels: np.ndarray | None = None,
) -> bytes:
    """One clip at one resolution as a serialized ``tf.train.Example`` of :data:`FEATURE_SPEC`.

    ``soft_labels`` (teacher probabilities, float32 [n_tags]) are stored only when given, so
    catalogue-labelled Examples are byte-identical to those of earlier versions.
    """
    codec = codecs.get(mel_dtype)
    mel = np.asarray(mel)
    if mel.ndim != 2 or mel.shape[1] != mel_config.n_mels:
        raise ValueError(f"{clip_id}: mel shape {mel.shape} does not fit {mel_config.name}")
    raw = codec.encode(mel)

    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _ints(values) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    feature = {
        "clip_id": _bytes(clip_id.encode("utf-8")),
        "split": _bytes(split.encode("utf-8")),
        "mel": _bytes(raw),
        "shape": _ints(mel.shape),
        "mel_config": _bytes(mel_config.name.encode("utf-8")),
        "labels": _ints(np.asarray(labels, dtype=np.int64).ravel()),
        "tags_version": _bytes(tags_version.encode("utf-8")),
        "padded": _ints([int(bool(padded))]),
    }
    if soft_labels is not None:
        values = np.asarray(soft_labels, dtype=np.float32).ravel()
        feature["soft_labels"] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)  # map keys sorted: byte-stable


def parse_example(serialized: tf.Tensor,
                  mel_dtype: "str | codecs.StorageCodec" = "float32") -> dict[str, tf.Tensor]:
    """Parses one serialized Example: the stored mel as float32 power [frames, n_mels] and labels.

    ``mel_dtype`` is a codec name or, for a dataset, its :attr:`DatasetInfo.codec` (the
    parameters it was written with).

    Returns:
      {"clip_id", "split", "mel" (float32 [frames, n_mels]), "labels" (int64 [n_tags]),
       "mel_config", "tags_version", "padded"}.
    """
    parsed = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    mel = tf.reshape(codecs.get(mel_dtype).decode_tf(parsed["mel"]), parsed["shape"])  # [frames, n_mels]
    parsed["mel"] = mel
    parsed["labels"] = tf.sparse.to_dense(parsed["labels"])
    parsed["soft_labels"] = tf.sparse.to_dense(parsed["soft_labels"])  # [n_tags] or [0]
    return parsed


def compress_tf(power: tf.Tensor, compression: str) -> tf.Tensor:
    """TensorFlow twin of :func:`tftag.features.compress` (float32, same formulas)."""
    power = tf.cast(power, tf.float32)
    if compression == "power":
        return power
    if compression == "db":
        return 10.0 * tf.math.log(tf.maximum(power, features.DB_FLOOR)) / _LN10
    if compression == "log":
        return tf.math.log(1.0 + features.LOG_SCALE * power) / _LN10
    raise ValueError(
        f"compression must be one of {', '.join(features.COMPRESSIONS)}, got {compression!r}"
    )


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


# ----------------------------------------------------------------------------- shards


def shard_index(clip_id: str, num_shards: int) -> int:
    """Stable shard of a clip: md5 of its id modulo the shard count."""
    digest = hashlib.md5(clip_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % num_shards


def num_shards_for(n_clips: int, clips_per_shard: int) -> int:
    """Shards for a split: ceil(n / clips_per_shard), at least 1."""
    return max(1, -(-n_clips // clips_per_shard))


def shard_path(dataset_dir: str, base_name: str, split: str, index: int, count: int) -> str:
    """``<dataset_dir>/<base_name>/<split>-00000-of-00004.tfrecord``."""
    return os.path.join(dataset_dir, base_name, f"{split}-{index:05d}-of-{count:05d}.tfrecord")


def write_tfrecord_atomic(path: str, records: Sequence[bytes]) -> None:
    """Writes serialized records to ``path`` through a temp file and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".tfrecord", dir=directory)
    os.close(fd)
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in records:
                writer.write(record)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def shard_files(dataset_dir: str, config: MelConfig, split: str | None = None) -> list[str]:
    """Sorted shard files holding ``config``'s base mel (one split, or all)."""
    pattern = f"{split}-*.tfrecord" if split else "*.tfrecord"
    return sorted(glob.glob(os.path.join(dataset_dir, config.base_name, pattern)))


def _resolve(dataset_dir: str, config: MelConfig, split: str | None) -> tuple[DatasetInfo, list[str]]:
    info = load_dataset_info(dataset_dir)
    info.check(config)
    if split is not None and split not in info.splits:
        raise ValueError(
            f"{dataset_dir}: no split {split!r}; splits: {', '.join(sorted(info.splits)) or 'none'}"
        )
    check_shards(dataset_dir, config, split, info)
    return info, shard_files(dataset_dir, config, split)


# ----------------------------------------------------------------------------- shard integrity
#
# dataset.json's "shard_files" (written by extraction.finalize) records every shard's record
# count, byte size and sha256. Readers stat the shards against it before reading
# (check_shards); a record that fails TensorFlow's CRC check at read time is turned into an
# error naming the shard (naming_corrupt_shards); tftag.verify checks everything.

SHARD_FILES = "shard_files"
_SHARD_NAME = re.compile(
    r"^(?P<base>[^/]+)/(?P<split>.+)-(?P<index>\d+)-of-(?P<count>\d+)\.tfrecord$")
# TensorFlow errors that reading shard files can raise (CRC failures, truncation, vanished or
# unreadable files); any other error is not the data's fault.
SHARD_READ_ERRORS = (tf.errors.DataLossError, tf.errors.NotFoundError,
                     tf.errors.PermissionDeniedError)
_MAX_LISTED = 5


def rebuild_hint(dataset_dir: str, verify: bool = True) -> str:
    """What to do about bad shards (the last line of every report of them).

    Args:
      dataset_dir: the dataset directory.
      verify: start with how to get a full report (``--mode=verify``).
    """
    rebuild = ("to rebuild, delete the bad shard file(s) and re-run the extraction into the same "
               "directory (it resumes: missing shards are noticed and rebuilt)")
    if not verify:
        return rebuild[0].upper() + rebuild[1:]
    return (f"run python -m tftag.main --mode=verify --dataset_dir={dataset_dir} for a full "
            f"report; {rebuild}")


class CorruptDatasetError(DataError, ValueError):
    """Shard files of a dataset directory are missing or damaged.

    The message (two lines) names the bad shard files and what is wrong with each, then says how
    to get a full report and how to rebuild. A :class:`tftag.errors.DataError` (entry points
    print it without a traceback and exit 1) and, for library callers, a ValueError.

    Attributes:
      dataset_dir: the dataset directory.
      problems: {shard file path: what is wrong}.
    """

    def __init__(self, dataset_dir: str, problems: dict[str, str]):
        self.dataset_dir = dataset_dir
        self.problems = dict(problems)
        items = list(self.problems.items())
        if len(items) == 1:
            first = f"bad shard file {items[0][0]}: {items[0][1]}"
        else:
            listed = "; ".join(f"{os.path.relpath(path, dataset_dir)} ({what})"
                               for path, what in items[:_MAX_LISTED])
            more = f"; and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
            first = f"{len(items)} bad shard files in {dataset_dir}: {listed}{more}"
        super().__init__(f"{first}\n{rebuild_hint(dataset_dir)}")

    def __reduce__(self):
        return type(self), (self.dataset_dir, self.problems)


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


def shard_stats(path: str) -> dict[str, Any]:
    """Record count, byte size and sha256 of one TFRecord file, in one sequential read.

    Records are counted from the TFRecord framing (8-byte length, 4-byte length CRC, data,
    4-byte data CRC); the CRCs are not checked here (TensorFlow checks them on every read).

    Returns:
      {"records": int, "bytes": int, "sha256": hex str}.

    Raises:
      ValueError: the file ends inside a record.
    """
    digest = hashlib.sha256()
    records = size = 0
    with open(path, "rb", buffering=1 << 20) as f:
        while True:
            header = f.read(12)
            if not header:
                break
            digest.update(header)
            size += len(header)
            if len(header) < 12:
                raise ValueError(f"{path}: truncated record header at byte {size - len(header)}")
            (remaining,) = struct.unpack("<Q", header[:8])
            remaining += 4  # the data CRC
            while remaining:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    raise ValueError(f"{path}: record {records} ends early at byte {size}")
                digest.update(chunk)
                size += len(chunk)
                remaining -= len(chunk)
            records += 1
    return {"records": records, "bytes": size, "sha256": digest.hexdigest()}


def shard_manifest(
    dataset_dir: str, paths: Sequence[str], workers: int | None = None
) -> dict[str, dict[str, Any]]:
    """{shard_name: shard_stats} of shard files (dataset.json's "shard_files"), read in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    names = [os.path.relpath(p, dataset_dir).replace(os.sep, "/") for p in paths]
    for name in names:
        parse_shard_name(name)
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        stats = list(pool.map(shard_stats, [os.path.join(dataset_dir, n) for n in names]))
    return dict(sorted(zip(names, stats)))


def shard_problems(
    dataset_dir: str, info: DatasetInfo, base_names: Sequence[str] | None = None,
    split: str | None = None,
) -> dict[str, str]:
    """Stat-only check of shard files: present, and as large as dataset.json records.

    Args:
      dataset_dir: the dataset directory.
      info: its :class:`DatasetInfo`.
      base_names: only these stored bases (default: all).
      split: only this split (default: all).

    Returns:
      {shard file path: what is wrong} ({} when every shard is present with its recorded size).
    """
    problems = {}
    for name, entry in info.expected_shards(base_names, split).items():
        path = os.path.join(dataset_dir, name)
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            problems[path] = "missing"
            continue
        except OSError as e:
            problems[path] = f"cannot stat: {e.strerror or e}"
            continue
        if entry is not None and size != entry["bytes"]:
            problems[path] = f"size mismatch: {size:,} bytes, dataset.json says {entry['bytes']:,}"
    return problems


def check_shards(
    dataset_dir: str, config: MelConfig, split: str | None, info: DatasetInfo | None = None
) -> None:
    """Cheap pre-flight check before reading ``config``'s shards of a split (stat only, no hashing).

    Raises:
      CorruptDatasetError: a shard file is missing or its size differs from dataset.json's.
    """
    info = info or load_dataset_info(dataset_dir)
    problems = shard_problems(dataset_dir, info, [config.base_name], split)
    if problems:
        raise CorruptDatasetError(dataset_dir, problems)


@contextlib.contextmanager
def naming_corrupt_shards(dataset_dir: str, config: MelConfig, split: str | None) -> Iterator[None]:
    """Turns TensorFlow read errors of shards into a :class:`CorruptDatasetError` naming them.

    A flipped byte inside a record is only seen when TensorFlow reads it (``DataLossError:
    corrupted record at 3498090``, no file name). Around code that iterates over
    ``make_dataset(dataset_dir, config, split, ...)``, such an error makes this verify the shards
    of that base and split (:func:`tftag.verify.bad_shards`) and raise an error naming the bad
    ones; if none is found, the original error propagates unchanged.

    Args:
      dataset_dir: the dataset directory being read.
      config: the resolution being read (its base's shards are checked).
      split: the split being read, or None for all.
    """
    try:
        yield
    except SHARD_READ_ERRORS as e:
        from tftag import verify

        try:
            problems = verify.bad_shards(dataset_dir, config, split)
        except Exception:  # noqa: BLE001  cannot verify: the original error says more.
            problems = {}
        if not problems:
            raise
        raise CorruptDatasetError(dataset_dir, problems) from e


# ----------------------------------------------------------------------------- readers


def read_examples(
    dataset_dir: str, config: MelConfig, split: str | None = None
) -> Iterator[dict[str, Any]]:
    """Iterates over clips in ``config``'s resolution and compression (NumPy).

    Args:
      dataset_dir: the extraction's ``--output_dir``.
      config: the resolution to read (any hop factor and compression of a stored base).
      split: one split, or None for all.

    Yields:
      {"clip_id": str, "mel": float32 [n_frames, n_mels], "labels": int64 [n_tags],
       "split": str, "padded": bool, "soft_labels": float32 [n_tags] (empty without a
       teacher)}, in shard order.
    """
    info, files = _resolve(dataset_dir, config, split)
    with naming_corrupt_shards(dataset_dir, config, split):
        for record in tf.data.TFRecordDataset(files):
            parsed = parse_example(record, info.codec)
            yield {
                "clip_id": parsed["clip_id"].numpy().decode("utf-8"),
                "mel": np.ascontiguousarray(features.derive(parsed["mel"].numpy(), config)),
                "labels": parsed["labels"].numpy(),
                "split": parsed["split"].numpy().decode("utf-8"),
                "padded": bool(parsed["padded"].numpy()),
                "soft_labels": parsed["soft_labels"].numpy(),  # float32 [n_tags]; [0] if none
            }


def random_patch(mel: tf.Tensor, patch_frames: int, seed: Any = None) -> tf.Tensor:
    """A random window of ``patch_frames`` frames of [frames, n_mels]; zero-padded if shorter.

    Args:
      mel: [frames, n_mels].
      patch_frames: frames of the window.
      seed: None for a fresh random offset on every call (a stateful op: its draws depend on
        the order in which parallel ``tf.data`` calls reach it, and under op determinism it
        makes a map run serially); or an int or an int [2] tensor, e.g. ``(seed, element
        index)``: the offset is then a pure function of it (``tf.random.stateless_uniform``), the
        same in every run whatever the thread scheduling.
    """
    n = tf.shape(mel)[0]
    short = tf.maximum(patch_frames - n, 0)
    mel = tf.pad(mel, [[0, short], [0, 0]])
    limit = tf.shape(mel)[0] - patch_frames + 1
    if seed is None:
        start = tf.random.uniform([], 0, limit, tf.int32)
    else:
        key = tf.cast(tf.reshape(seed, [-1]), tf.int64)
        key = tf.concat([key, tf.zeros([2], tf.int64)], 0)[:2]  # an int seed becomes (seed, 0)
        start = tf.random.stateless_uniform([], key, 0, limit, tf.int32)
    return mel[start:start + patch_frames]


def make_dataset(
    dataset_dir: str,
    config: MelConfig,
    split: str | None,
    batch_size: int,
    patch_frames: int | None = None,
    *,
    shuffle_buffer: int = 0,
    seed: int | None = None,
    repeat: bool = False,
    drop_remainder: bool = False,
    as_dict: bool = False,
    cycle_length: int | None = None,
    targets: str = "labels",
) -> tf.data.Dataset:
    """A batched ``tf.data`` pipeline over a dataset directory at ``config``'s resolution.

    Sorted shards are interleaved, parsed, decimated to the hop factor, optionally cropped to
    random patches (cropping happens on the power mel, so padding is silence), compressed,
    batched and prefetched.

    Args:
      dataset_dir: the extraction's ``--output_dir``.
      config: resolution and compression to produce.
      split: e.g. "train"; None reads all splits.
      batch_size: examples per batch.
      patch_frames: if set, a random window of this many frames per clip and epoch.
      shuffle_buffer: examples in the shuffle buffer (0: no shuffling).
      seed: seed for shuffling and patch offsets. With a seed (or without shuffling) the
        pipeline is deterministic whatever the thread scheduling: interleave and map keep their
        order, and each patch offset is drawn statelessly from (seed, element index), so the
        map stays parallel even under ``tf.config.experimental.enable_op_determinism``.
        None: shuffled order and offsets differ from run to run.
      repeat: repeat forever.
      drop_remainder: drop the last partial batch.
      as_dict: yield {"clip_id", "mel", "labels"} (plus "soft_labels" on a teacher-labelled
        dataset) instead of (mel, targets).
      cycle_length: shards read in parallel (default: all, up to 8).
      targets: the y of the (mel, y) pairs: "labels" (hard multi-hot) or "soft_labels" (the
        teacher's probabilities; only on a dataset whose dataset.json "labels" is "teacher:...").

    Returns:
      Batches of (mel float32 [batch, frames, n_mels], targets float32 [batch, n_tags]).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if patch_frames is not None and patch_frames < 1:
        raise ValueError(f"patch_frames must be >= 1 or None, got {patch_frames}")
    if targets not in ("labels", "soft_labels"):
        raise ValueError(f"targets must be one of labels, soft_labels, got {targets!r}")
    info, files = _resolve(dataset_dir, config, split)
    if not files:
        raise ValueError(f"{dataset_dir}: no shard files for {config.base_name} split {split!r}")
    soft = str(info.raw.get("labels", "catalog")).startswith("teacher:")  # soft_labels stored
    if targets == "soft_labels" and not soft:
        raise ValueError(f"{dataset_dir}: no soft labels (dataset.json labels is "
                         f"{info.raw.get('labels', 'catalog')!r}, not teacher:<name>)")
    n_frames = patch_frames or config.n_frames
    deterministic = shuffle_buffer == 0 or seed is not None
    keyed = patch_frames is not None and seed is not None  # stateless offsets: (seed, index)

    def _prepare(*element):
        index, serialized = element if keyed else (None, element[0])
        parsed = parse_example(serialized, info.codec)
        mel = parsed["mel"][:: config.hop_factor]  # [n_frames, n_mels] power
        if patch_frames is not None:
            key = tf.stack([tf.constant(seed, tf.int64), index]) if keyed else None
            mel = random_patch(mel, patch_frames, key)
        mel = tf.ensure_shape(compress_tf(mel, config.compression), [n_frames, config.n_mels])
        labels = tf.ensure_shape(tf.cast(parsed["labels"], tf.float32), [info.n_tags])
        out = {"clip_id": parsed["clip_id"], "mel": mel, "labels": labels}
        if soft:
            out["soft_labels"] = tf.ensure_shape(parsed["soft_labels"], [info.n_tags])
        return out if as_dict else (mel, out[targets])

    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=cycle_length or min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if keyed:
        ds = ds.enumerate()  # (index, serialized): the index keys the patch offset
    ds = ds.map(_prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
