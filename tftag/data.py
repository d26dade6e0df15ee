"""One TFRecord feature spec, the shard writer, and the readers shared by training and serving.

Storage layout of a *dataset directory* (what ``pipelines/extract.py --output_dir`` writes)::

    dataset.json                    configs, layout, tag list, clip counts, version, time
    failures.jsonl                  every clip that was skipped, with its reason
    sr16000-mel96/train-00000-of-00004.tfrecord
    sr16000-mel96/valid-00000-of-00001.tfrecord
    ...

Only the hop-1 *power* mel of each (sr, n_mels) is stored ("base" arrays); every hop factor and
compression is derived from it exactly, in NumPy (:func:`read_examples`) or inside ``tf.data``
(:func:`make_dataset`), with the same definitions as :mod:`tftag.features`.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import hashlib
import json
import math
import os
import tempfile
from typing import Any, Iterator, Sequence

import numpy as np

from tftag import features
from tftag.features import MelConfig

# Importing TensorFlow after tftag.features is safe: Essentia runs in a child process when
# TensorFlow is already loaded (see tftag._essentia).
import tensorflow as tf  # noqa: E402

import tftag

FORMAT_VERSION = 1
LAYOUT = "base-power-hop1"
DATASET_JSON = "dataset.json"
FAILURES_JSONL = "failures.jsonl"
MEL_DTYPES = ("float32", "float16")
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
    mel_dtype: str = "float32",
    padded: bool = False,
) -> bytes:
    """One clip at one resolution as a serialized ``tf.train.Example`` of :data:`FEATURE_SPEC`."""
    if mel_dtype not in MEL_DTYPES:
        raise ValueError(f"mel_dtype must be one of {', '.join(MEL_DTYPES)}, got {mel_dtype!r}")
    mel = np.asarray(mel)
    if mel.ndim != 2 or mel.shape[1] != mel_config.n_mels:
        raise ValueError(f"{clip_id}: mel shape {mel.shape} does not fit {mel_config.name}")
    if mel_dtype == "float16":
        mel = np.minimum(mel, np.finfo(np.float16).max)
    raw = np.ascontiguousarray(mel, dtype=np.dtype(mel_dtype).newbyteorder("<")).tobytes()

    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _ints(values) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    example = tf.train.Example(features=tf.train.Features(feature={
        "clip_id": _bytes(clip_id.encode("utf-8")),
        "split": _bytes(split.encode("utf-8")),
        "mel": _bytes(raw),
        "shape": _ints(mel.shape),
        "mel_config": _bytes(mel_config.name.encode("utf-8")),
        "labels": _ints(np.asarray(labels, dtype=np.int64).ravel()),
        "tags_version": _bytes(tags_version.encode("utf-8")),
        "padded": _ints([int(bool(padded))]),
    }))
    return example.SerializeToString(deterministic=True)  # map keys sorted: byte-stable


def parse_example(serialized: tf.Tensor, mel_dtype: str = "float32") -> dict[str, tf.Tensor]:
    """Parses one serialized Example: the stored mel as float32 [frames, n_mels] and labels.

    Returns:
      {"clip_id", "split", "mel" (float32 [frames, n_mels]), "labels" (int64 [n_tags]),
       "mel_config", "tags_version", "padded"}.
    """
    parsed = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    mel = tf.io.decode_raw(parsed["mel"], tf.dtypes.as_dtype(mel_dtype), little_endian=True)
    mel = tf.reshape(tf.cast(mel, tf.float32), parsed["shape"])  # [frames, n_mels]
    parsed["mel"] = mel
    parsed["labels"] = tf.sparse.to_dense(parsed["labels"])
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


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes JSON to a temp file beside ``path`` and renames it into place."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes bytes to a temp file beside ``path`` and renames it into place."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def dataset_metadata(
    *,
    configs: Sequence[MelConfig],
    mel_dtype: str,
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
        "mel_dtype": mel_dtype,
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
    return info, shard_files(dataset_dir, config, split)


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
       "split": str, "padded": bool}, in shard order.
    """
    info, files = _resolve(dataset_dir, config, split)
    for record in tf.data.TFRecordDataset(files):
        parsed = parse_example(record, info.mel_dtype)
        yield {
            "clip_id": parsed["clip_id"].numpy().decode("utf-8"),
            "mel": np.ascontiguousarray(features.derive(parsed["mel"].numpy(), config)),
            "labels": parsed["labels"].numpy(),
            "split": parsed["split"].numpy().decode("utf-8"),
            "padded": bool(parsed["padded"].numpy()),
        }


def random_patch(mel: tf.Tensor, patch_frames: int, seed: int | None = None) -> tf.Tensor:
    """A random window of ``patch_frames`` frames of [frames, n_mels]; zero-padded if shorter."""
    n = tf.shape(mel)[0]
    short = tf.maximum(patch_frames - n, 0)
    mel = tf.pad(mel, [[0, short], [0, 0]])
    start = tf.random.uniform([], 0, tf.shape(mel)[0] - patch_frames + 1, tf.int32, seed=seed)
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
      shuffle_buffer: examples in the shuffle buffer (0: no shuffling; order is deterministic).
      seed: seed for shuffling and patch offsets.
      repeat: repeat forever.
      drop_remainder: drop the last partial batch.
      as_dict: yield {"clip_id", "mel", "labels"} instead of (mel, labels).
      cycle_length: shards read in parallel (default: all, up to 8).

    Returns:
      Batches of (mel float32 [batch, frames, n_mels], labels float32 [batch, n_tags]).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if patch_frames is not None and patch_frames < 1:
        raise ValueError(f"patch_frames must be >= 1 or None, got {patch_frames}")
    info, files = _resolve(dataset_dir, config, split)
    if not files:
        raise ValueError(f"{dataset_dir}: no shard files for {config.base_name} split {split!r}")
    n_frames = patch_frames or config.n_frames
    deterministic = shuffle_buffer == 0

    def _prepare(serialized):
        parsed = parse_example(serialized, info.mel_dtype)
        mel = parsed["mel"][:: config.hop_factor]  # [n_frames, n_mels] power
        if patch_frames is not None:
            mel = random_patch(mel, patch_frames, seed)
        mel = tf.ensure_shape(compress_tf(mel, config.compression), [n_frames, config.n_mels])
        labels = tf.ensure_shape(tf.cast(parsed["labels"], tf.float32), [info.n_tags])
        if as_dict:
            return {"clip_id": parsed["clip_id"], "mel": mel, "labels": labels}
        return mel, labels

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
    ds = ds.map(_prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
