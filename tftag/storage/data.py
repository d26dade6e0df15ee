"""One TFRecord feature spec, the shard writer, and the readers shared by training and serving.

The dataset directory these read and write (``dataset.json``, shard names) is described in
:mod:`tftag.storage.dataset_dir`; checking its shard files is :mod:`tftag.storage.verify`'s. Their public names
stay importable from here (``data.load_dataset_info``, ``data.CorruptDatasetError``, ...).

Only the hop-1 *power* mel of each (sr, n_mels) is stored ("base" arrays); every hop factor and
compression is derived from it exactly, in NumPy (:func:`read_examples`) or inside ``tf.data``
(:func:`make_dataset`), with the same definitions as :mod:`tftag.features`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np

from tftag import features
from tftag.audio import compressions
from tftag.runs import runfiles
from tftag.storage import codecs, verify
from tftag.features import MelConfig

# Importing TensorFlow after tftag.features is safe: Essentia runs in a child process when
# TensorFlow is already loaded (see tftag.audio._essentia).
import tensorflow as tf  # noqa: E402

from tftag.storage.dataset_dir import (  # noqa: F401, E402  (re-exported: data.X keeps working)
    DATASET_JSON, FAILURES_JSONL, FORMAT_VERSION, LAYOUT, MEL_DTYPES, SHARD_FILES, DatasetInfo,
    checked_dataset_info, dataset_metadata, load_dataset_info, num_shards_for, parse_shard_name,
    shard_files, shard_index, shard_name, shard_path, tags_version,
)
from tftag.runs.runfiles import write_bytes_atomic, write_json_atomic  # noqa: F401, E402  (re-exported)
from tftag.storage.verify import (  # noqa: F401, E402  (re-exported)
    CorruptDatasetError, check_shards, rebuild_hint, shard_manifest, shard_problems, shard_stats,
)

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
    return compressions.get(compression).tf(power)


# ----------------------------------------------------------------------------- shards
#
# dataset.json's "shard_files" (written by extraction.finalize) records every shard's record
# count, byte size and sha256. Readers stat the shards against it before reading
# (verify.check_shards); a record that fails TensorFlow's CRC check at read time is turned into
# an error naming the shard (naming_corrupt_shards); tftag.storage.verify checks everything.

# TensorFlow errors that reading shard files can raise (CRC failures, truncation, vanished or
# unreadable files); any other error is not the data's fault.
SHARD_READ_ERRORS = (tf.errors.DataLossError, tf.errors.NotFoundError,
                     tf.errors.PermissionDeniedError)


def write_tfrecord_atomic(path: str, records: Sequence[bytes]) -> None:
    """Writes serialized records to ``path`` through a temp file and a rename."""
    with runfiles.atomic_path(path, suffix=".tfrecord") as tmp:
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in records:
                writer.write(record)


def _resolve(dataset_dir: str, config: MelConfig, split: str | None) -> tuple[DatasetInfo, list[str]]:
    info = checked_dataset_info(dataset_dir, config, split)
    check_shards(dataset_dir, config, split, info)
    return info, shard_files(dataset_dir, config, split)


@contextlib.contextmanager
def naming_corrupt_shards(dataset_dir: str, config: MelConfig, split: str | None) -> Iterator[None]:
    """Turns TensorFlow read errors of shards into a :class:`CorruptDatasetError` naming them.

    A flipped byte inside a record is only seen when TensorFlow reads it (``DataLossError:
    corrupted record at 3498090``, no file name). Around code that iterates over
    ``make_dataset(dataset_dir, config, split, ...)``, such an error makes this verify the shards
    of that base and split (:func:`tftag.storage.verify.bad_shards`) and raise an error naming the bad
    ones; if none is found, the original error propagates unchanged.

    Args:
      dataset_dir: the dataset directory being read.
      config: the resolution being read (its base's shards are checked).
      split: the split being read, or None for all.
    """
    try:
        yield
    except SHARD_READ_ERRORS as e:
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


_CLIP_ID_SPEC = {"clip_id": FEATURE_SPEC["clip_id"]}


def _clip_filter(clips: Sequence[str]):
    """A ``tf.data`` predicate on serialized Examples: is the clip id one of ``clips``?"""
    keys = tf.constant(sorted(set(clips)) or [""], tf.string)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys, tf.int32) if clips
                                            else tf.zeros([1], tf.int32)), default_value=0)

    def keep(serialized):
        return table.lookup(tf.io.parse_single_example(serialized, _CLIP_ID_SPEC)["clip_id"]) > 0

    return keep


def clip_ids(dataset_dir: str, config: MelConfig, split: str | None = None) -> list[str]:
    """The sorted clip ids of a split (None: all) of ``config``'s stored base (reads only the
    ids; every base of a dataset holds the same clips)."""
    _, files = _resolve(dataset_dir, config, split)
    ds = tf.data.TFRecordDataset(files).map(
        lambda s: tf.io.parse_single_example(s, _CLIP_ID_SPEC)["clip_id"])
    with naming_corrupt_shards(dataset_dir, config, split):
        return sorted(c.decode("utf-8") for c in ds.as_numpy_iterator())


def dataset_groups(dataset_dir: str, config: MelConfig) -> tuple[dict[str, str], dict[str, str]]:
    """({clip_id: track group} of the dataset's clips, {crop id: group} of its training crops).

    Training crops (the :data:`tftag.datasets.CROPS` split, ``--train_clip_hop``) are kept apart:
    folds are cut from the clips alone (so a dataset with crops has the same folds as one
    without), and crops only ever join a training part (:func:`tftag.storage.folds.add_crops`).
    """
    from tftag.storage import folds
    from tftag.datasets import CROPS

    info = load_dataset_info(dataset_dir)
    if not info.splits.get(CROPS):
        return folds.clip_groups(clip_ids(dataset_dir, config), info.raw), {}
    ids = {split: clip_ids(dataset_dir, config, split) for split in info.splits}  # one read each
    crops = ids.pop(CROPS)
    clips = sorted(c for split_ids in ids.values() for c in split_ids)
    return folds.clip_groups(clips, info.raw), folds.clip_groups(crops, info.raw)


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
    clips: Sequence[str] | None = None,
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
      clips: keep only the clips with these ids (a cross-validation fold's part,
        :mod:`tftag.storage.folds`; usually with ``split=None``); None keeps every clip.

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
    if clips is not None:
        ds = ds.filter(_clip_filter(clips))
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if keyed:
        ds = ds.enumerate()  # (index, serialized): the index keys the patch offset
    ds = ds.map(_prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
