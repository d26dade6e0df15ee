"""Re-encode a finished dataset in another storage codec (``--mode=transcode``).

Every record keeps its clip, split, labels and shape; only the ``mel`` bytes change: decoded
with the codec recorded in the source's ``dataset.json``, encoded with the new one. The shards
keep their names; ``dataset.json`` is the source's with the new ``mel_dtype``/``mel_codec``, a
new shard manifest and ``transcoded_from``. So the same clips can be compared across codecs
without decoding the audio again (the quantization study does this). Shards are written
atomically and a rerun skips those already written; ``dataset.json`` comes last.
"""

from __future__ import annotations

import datetime
import os
import shutil

from absl import logging

from tftag.runs import runfiles
from tftag.storage import codecs, data, verify
from tftag.storage.dataset_dir import DATASET_JSON, FAILURES_JSONL, SHARD_FILES, load_dataset_info

COPIED = (FAILURES_JSONL,)  # files of the source carried over unchanged


def transcode_record(record: bytes, source: codecs.StorageCodec, target: codecs.StorageCodec) -> bytes:
    """One serialized Example with its mel re-encoded from ``source`` to ``target``."""
    import tensorflow as tf

    example = tf.train.Example.FromString(record)
    feature = example.features.feature
    shape = tuple(feature["shape"].int64_list.value)
    power = source.decode(feature["mel"].bytes_list.value[0], shape)
    feature["mel"].bytes_list.value[0] = target.encode(power)
    return example.SerializeToString(deterministic=True)


def transcode_dataset(source_dir: str, output_dir: str, mel_dtype: str) -> dict:
    """Writes ``output_dir``: the dataset of ``source_dir`` stored with codec ``mel_dtype``.

    Returns:
      A summary: source, output, codecs, shards written / already there, bytes before and after.

    Raises:
      ValueError: unknown codec, or ``output_dir`` is the source.
    """
    import tensorflow as tf
    from tqdm import tqdm

    if not source_dir:
        raise ValueError("--mode=transcode needs --dataset_dir (the dataset to re-encode)")
    target = codecs.get(mel_dtype)
    info = load_dataset_info(source_dir)
    if os.path.realpath(source_dir) == os.path.realpath(output_dir):
        raise ValueError(f"--run_dir: the transcoded dataset needs its own directory, not the "
                         f"source {source_dir}")
    shards = list(info.expected_shards())
    written = skipped = 0
    for name in tqdm(shards, desc=f"transcode -> {target.name}", unit="shard"):
        out = os.path.join(output_dir, name)
        if os.path.exists(out):
            skipped += 1
            continue
        records = [transcode_record(r.numpy(), info.codec, target)
                   for r in tf.data.TFRecordDataset(os.path.join(source_dir, name))]
        data.write_tfrecord_atomic(out, records)
        written += 1
    for name in COPIED:
        if os.path.exists(os.path.join(source_dir, name)):
            shutil.copyfile(os.path.join(source_dir, name), os.path.join(output_dir, name))
    manifest = verify.shard_manifest(output_dir, [os.path.join(output_dir, n) for n in shards])
    meta = dict(info.raw)
    meta.update({
        "mel_dtype": target.name, "mel_codec": target.describe(), SHARD_FILES: manifest,
        "transcoded_from": {"path": os.path.abspath(source_dir), "mel_codec": info.codec.describe(),
                            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                                timespec="seconds")}})
    runfiles.write_json_atomic(os.path.join(output_dir, DATASET_JSON), meta)
    before = sum(e["bytes"] for e in (info.shard_manifest or {}).values()) or None
    after = sum(e["bytes"] for e in manifest.values())
    logging.info("transcoded %s (%s) -> %s (%s): %d shards written, %d already there",
                 source_dir, info.codec.name, output_dir, target.name, written, skipped)
    return {"source": source_dir, "output": output_dir, "from": info.codec.name,
            "to": target.name, "shards_written": written, "shards_skipped": skipped,
            "bytes_before": before, "bytes_after": after}
