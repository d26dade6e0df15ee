"""Verified datasets: the shard manifest in dataset.json, tftag.storage.verify, and corrupt shards that
name themselves when training or evaluation reads them.

The dataset is built in-process from the extraction library (staged clips -> write_shard ->
finalize) with random mels: no audio decoding, about a second. Each test corrupts its own copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import tensorflow as tf

from tftag import evaluate
from tftag.extraction import extractor
from tftag.storage import data, verify
from tftag.datasets import Catalog, Clip
from tftag.errors import DataError
from tftag.features import MelConfig

from conftest import run_module

CONFIG = MelConfig(16000, 16, 2, "log", 3.0)
CONFIG8 = MelConfig(16000, 8, 2, "log", 3.0)
SPLITS = {"train": 12, "valid": 4, "test": 4}
N_CLIPS = sum(SPLITS.values())
CLIPS_PER_SHARD = 4
N_SHARDS = 2 * (3 + 1 + 1)  # 2 bases × (train 3, valid 1, test 1)


def _catalog() -> Catalog:
    clips, i = [], 0
    for split, n in SPLITS.items():
        for _ in range(n):
            tags = ("rock",) if i % 2 else ("jazz", "piano")
            clips.append(Clip(f"clip{i:02d}", f"/nonexistent/clip{i:02d}.wav", split, tags))
            i += 1
    return Catalog("test", tuple(clips), ("rock", "jazz", "piano"))


def build_dataset(out: str, configs: tuple[MelConfig, ...] = (CONFIG, CONFIG8)) -> str:
    """Runs the extraction steps in-process; returns prepare_output's state ("todo"/"complete")."""
    catalog = _catalog()
    plan = extractor.ExtractionPlan(out, configs, catalog.tags, clips_per_shard=CLIPS_PER_SHARD)
    state = extractor.prepare_output(plan, catalog, overwrite=False, retry_failed=False)
    if state == "complete":
        return state
    for clip in extractor.pending_clips(plan, catalog.clips):
        rng = np.random.default_rng(int(clip.clip_id[4:]))
        records = [
            data.serialize_example(clip.clip_id, clip.split,
                                   rng.random((b.n_frames, b.n_mels), dtype=np.float32), b,
                                   data.multi_hot(catalog.label_indices(clip), len(catalog.tags)),
                                   plan.tags_version)
            for b in plan.bases
        ]
        extractor.stage_clip(plan, clip, records, padded=False)
    counts = extractor.shard_counts(plan, catalog)
    shards: dict[tuple[str, int], list[str]] = {}
    for clip in catalog.clips:
        shards.setdefault((clip.split, data.shard_index(clip.clip_id, counts[clip.split])),
                          []).append(clip.clip_id)
    for (split, index), clip_ids in shards.items():
        extractor.write_shard(plan, split, index, counts[split], clip_ids)
    extractor.finalize(plan, catalog, {"catalog": "test"})
    return state


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("verify") / "dataset")
    assert build_dataset(out) == "todo"
    return out


@pytest.fixture
def dataset(pristine, tmp_path) -> str:
    """A fresh copy of the dataset, to corrupt."""
    out = str(tmp_path / "dataset")
    shutil.copytree(pristine, out)
    return out


def manifest(dataset_dir: str) -> dict:
    with open(os.path.join(dataset_dir, data.DATASET_JSON), encoding="utf-8") as f:
        return json.load(f)[data.SHARD_FILES]


def nonempty_shard(dataset_dir: str, base: str = CONFIG.base_name, split: str = "train") -> str:
    """The first shard of a base and split holding at least two records."""
    for name, entry in manifest(dataset_dir).items():
        if name.startswith(f"{base}/{split}-") and entry["records"] >= 2:
            return name
    raise AssertionError(f"no shard of {base} {split} with >= 2 records")


def record_spans(path: str) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each record's framing in a TFRecord file."""
    blob = open(path, "rb").read()
    spans, pos = [], 0
    while pos < len(blob):
        (length,) = struct.unpack("<Q", blob[pos:pos + 8])
        spans.append((pos, pos + 12 + length + 4))
        pos += 12 + length + 4
    return spans


def flip_mel_byte(path: str, record: int = 1) -> int:
    """Flips a byte in the middle of one record's mel bytes; returns its offset."""
    blob = bytearray(open(path, "rb").read())
    start, end = record_spans(path)[record]
    payload = bytes(blob[start + 12:end - 4])
    mel = tf.train.Example.FromString(payload).features.feature["mel"].bytes_list.value[0]
    offset = start + 12 + payload.index(mel) + len(mel) // 2
    blob[offset] ^= 0xFF
    open(path, "wb").write(bytes(blob))
    return offset


def drop_manifest(dataset_dir: str) -> None:
    """Rewrites dataset.json as tftag wrote it before shard checksums existed."""
    path = os.path.join(dataset_dir, data.DATASET_JSON)
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    del meta[data.SHARD_FILES]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f)


def by_path(report: verify.VerifyReport) -> dict[str, verify.ShardResult]:
    return {r.path: r for r in report.shards}


def fake_model(x, training=False):
    return tf.zeros([tf.shape(x)[0], 3])


# ----------------------------------------------------------------------------- manifest


def test_extraction_records_every_shard(pristine):
    entries = manifest(pristine)
    on_disk = sorted(
        f"{base}/{name}" for base in (CONFIG.base_name, CONFIG8.base_name)
        for name in os.listdir(os.path.join(pristine, base))
    )
    assert sorted(entries) == on_disk and len(on_disk) == N_SHARDS
    totals: dict[tuple[str, str], int] = {}
    for name, entry in entries.items():
        path = os.path.join(pristine, name)
        assert entry["bytes"] == os.path.getsize(path), name
        assert entry["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest(), name
        assert entry["records"] == sum(1 for _ in tf.data.TFRecordDataset(path)), name
        base, split, _, _ = data.parse_shard_name(name)
        totals[base, split] = totals.get((base, split), 0) + entry["records"]
    assert totals == {(b, s): n for b in (CONFIG.base_name, CONFIG8.base_name)
                      for s, n in SPLITS.items()}
    info = data.load_dataset_info(pristine)
    assert info.shard_manifest == entries
    assert list(info.expected_shards([CONFIG8.base_name], "valid")) == [
        "sr16000-mel8/valid-00000-of-00001.tfrecord"]


def test_shard_stats_rejects_a_truncated_file(dataset):
    name = nonempty_shard(dataset)
    path = os.path.join(dataset, name)
    assert data.shard_stats(path) == manifest(dataset)[name]
    os.truncate(path, os.path.getsize(path) - 7)
    with pytest.raises(ValueError, match="ends early"):
        data.shard_stats(path)


def test_dataset_json_without_manifest_still_loads(dataset):
    drop_manifest(dataset)
    info = data.load_dataset_info(dataset)
    assert info.shard_manifest is None
    assert sorted(info.expected_shards()) == sorted(manifest_names(dataset))
    batches = list(data.make_dataset(dataset, CONFIG, "valid", batch_size=8))
    assert sum(int(mel.shape[0]) for mel, _ in batches) == SPLITS["valid"]


def test_old_dataset_json_lists_only_the_stored_bases(tmp_path):
    # Two resolutions off the sr × n_mels grid: dataset.json's srs and n_mels span four bases, two
    # of which were never stored; without a manifest they must not count as missing shards.
    configs = (CONFIG, MelConfig(12000, 8, 2, "log", 3.0))
    out = str(tmp_path / "dataset")
    assert build_dataset(out, configs) == "todo"
    drop_manifest(out)
    info = data.load_dataset_info(out)
    assert len(info.base_names) == 4
    assert {n.split("/")[0] for n in info.expected_shards()} == {"sr16000-mel16", "sr12000-mel8"}
    assert verify.verify_dataset(out).ok
    assert build_dataset(out, configs) == "complete"


def manifest_names(dataset_dir: str) -> list[str]:
    return [f"{base}/{name}" for base in (CONFIG.base_name, CONFIG8.base_name)
            for name in os.listdir(os.path.join(dataset_dir, base))]


# ----------------------------------------------------------------------------- verify_dataset


def test_verify_sound_dataset(pristine):
    report = verify.verify_dataset(pristine)
    assert report.ok and report.checksums and not report.unexpected and not report.problems
    assert len(report.shards) == N_SHARDS and all(r.status == verify.OK for r in report.shards)
    assert report.records == 2 * N_CLIPS
    text = report.format()
    assert "BAD" not in text
    assert text.endswith(f"{pristine}: {N_SHARDS} shards, {2 * N_CLIPS} records, "
                         f"{report.bytes / 1e6:.1f} MB: all sound")
    # Reading every record too changes nothing on a sound dataset.
    assert verify.verify_dataset(pristine, read=True).shards == report.shards


def test_verify_names_a_flipped_byte(dataset):
    name = nonempty_shard(dataset)
    flip_mel_byte(os.path.join(dataset, name))
    report = verify.verify_dataset(dataset)
    assert not report.ok
    assert [r.path for r in report.bad] == [name]
    bad = by_path(report)[name]
    assert bad.status == verify.UNREADABLE
    assert "corrupted record at" in bad.detail and "after 1 intact records" in bad.detail
    assert "checksum mismatch" in bad.detail
    assert "function_node" not in bad.detail and "[Op:" not in bad.detail
    text = report.format()
    assert f"BAD {name}: unreadable record: corrupted record at" in text
    assert f"{N_SHARDS} shards" in text and "1 bad shard (unreadable record: 1)" in text
    assert "re-run the extraction into the same directory" in text


@pytest.mark.parametrize("cut, status, words", [
    ("mid-record", verify.UNREADABLE, ["truncated record", "size mismatch"]),
    ("last record", verify.COUNT_MISMATCH, ["records, dataset.json says", "size mismatch"]),
])
def test_verify_names_a_truncated_shard(dataset, cut, status, words):
    name = nonempty_shard(dataset)
    path = os.path.join(dataset, name)
    start, _ = record_spans(path)[-1]
    os.truncate(path, start + 20 if cut == "mid-record" else start)
    report = verify.verify_dataset(dataset)
    assert [r.path for r in report.bad] == [name]
    bad = by_path(report)[name]
    assert bad.status == status
    for word in words:
        assert word in bad.detail, bad.detail
    assert f"BAD {name}: {status}" in report.format()


def test_verify_names_a_missing_shard(dataset):
    name = nonempty_shard(dataset, CONFIG8.base_name, "test")
    os.remove(os.path.join(dataset, name))
    report = verify.verify_dataset(dataset)
    assert not report.ok and [(r.path, r.status) for r in report.bad] == [(name, verify.MISSING)]
    assert f"BAD {name}: missing" in report.format()


def test_verify_same_size_other_content_is_a_checksum_mismatch(dataset):
    # The shard's records in reverse order: same size and count, every CRC valid; only the
    # checksum tells.
    name = nonempty_shard(dataset)
    path = os.path.join(dataset, name)
    blob = open(path, "rb").read()
    reordered = b"".join(blob[a:b] for a, b in reversed(record_spans(path)))
    assert reordered != blob and len(reordered) == len(blob)
    open(path, "wb").write(reordered)
    report = verify.verify_dataset(dataset)
    assert [(r.path, r.status) for r in report.bad] == [(name, verify.CHECKSUM_MISMATCH)]
    assert by_path(report)[name].detail == "sha256 differs from dataset.json"


def test_verify_without_checksums_reads_every_record(dataset):
    drop_manifest(dataset)
    sound = verify.verify_dataset(dataset)
    assert sound.ok and not sound.checksums and sound.records == 2 * N_CLIPS
    assert "no shard checksums" in sound.format() and sound.format().endswith("all sound")

    flipped = nonempty_shard_on_disk(dataset, CONFIG.base_name, "train")
    flip_mel_byte(os.path.join(dataset, flipped))
    missing = f"{CONFIG8.base_name}/valid-00000-of-00001.tfrecord"
    os.remove(os.path.join(dataset, missing))
    report = verify.verify_dataset(dataset)
    assert {r.path: r.status for r in report.bad} == {flipped: verify.UNREADABLE,
                                                     missing: verify.MISSING}
    assert "corrupted record at" in by_path(report)[flipped].detail


def nonempty_shard_on_disk(dataset_dir: str, base: str, split: str) -> str:
    for name in sorted(os.listdir(os.path.join(dataset_dir, base))):
        path = os.path.join(dataset_dir, base, name)
        if name.startswith(split + "-") and len(record_spans(path)) >= 2:
            return f"{base}/{name}"
    raise AssertionError(f"no shard of {base} {split} with >= 2 records")


def test_verify_without_checksums_checks_split_totals(dataset):
    # A record dropped cleanly at a record boundary: every CRC passes; only the totals tell.
    drop_manifest(dataset)
    name = nonempty_shard_on_disk(dataset, CONFIG.base_name, "train")
    path = os.path.join(dataset, name)
    start, _ = record_spans(path)[-1]
    os.truncate(path, start)
    report = verify.verify_dataset(dataset)
    assert not report.ok and not report.bad
    assert report.problems == (f"{CONFIG.base_name} train: {SPLITS['train'] - 1} records in 3 "
                               f"shards, dataset.json says {SPLITS['train']} clips",)
    assert f"BAD {report.problems[0]}" in report.format()


def test_verify_warns_about_unexpected_files(dataset):
    name = nonempty_shard(dataset)
    stray = f"{CONFIG.base_name}/train-00000-of-00009.tfrecord"
    shutil.copy(os.path.join(dataset, name), os.path.join(dataset, stray))
    report = verify.verify_dataset(dataset)
    assert report.ok and report.unexpected == (stray,)
    assert f"warning: unexpected shard file {stray}" in report.format()


# ----------------------------------------------------------------------------- readers


def test_preflight_names_a_missing_shard(dataset):
    name = nonempty_shard(dataset, CONFIG.base_name, "valid")
    os.remove(os.path.join(dataset, name))
    with pytest.raises(data.CorruptDatasetError) as caught:
        data.make_dataset(dataset, CONFIG, "valid", batch_size=4)
    message = str(caught.value)
    assert message.splitlines()[0] == f"bad shard file {os.path.join(dataset, name)}: missing"
    assert f"python -m tftag.main --mode=verify --dataset_dir={dataset}" in message
    assert "re-run the extraction into the same directory" in message
    assert len(message.splitlines()) == 2
    assert caught.value.problems == {os.path.join(dataset, name): "missing"}
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, DataError)
    with pytest.raises(data.CorruptDatasetError, match="missing"):
        next(data.read_examples(dataset, CONFIG, "valid"))
    # Other splits and the other base do not hold it: they still read.
    assert next(iter(data.make_dataset(dataset, CONFIG, "train", batch_size=4)))[0].shape[0] == 4
    assert len(list(data.read_examples(dataset, CONFIG8, "valid"))) == SPLITS["valid"]


def test_preflight_names_truncated_shards(dataset):
    names = [nonempty_shard(dataset, CONFIG.base_name, s) for s in ("train", "test")]
    for name in names:
        path = os.path.join(dataset, name)
        os.truncate(path, 100)
    with pytest.raises(data.CorruptDatasetError) as caught:
        data.make_dataset(dataset, CONFIG, None, batch_size=4)
    first = str(caught.value).splitlines()[0]
    assert first.startswith(f"2 bad shard files in {dataset}: ")
    for name in names:
        assert f"{name} (size mismatch: 100 bytes, dataset.json says " in first


def test_flipped_byte_is_named_when_evaluating(dataset):
    name = nonempty_shard(dataset, CONFIG.base_name, "test")
    data.make_dataset(dataset, CONFIG, "test", batch_size=2)  # same size: passes the pre-flight
    ids, _, _ = evaluate.predict(fake_model, dataset, CONFIG8, "test")  # other base: fine
    assert len(ids) == SPLITS["test"]
    flip_mel_byte(os.path.join(dataset, name))
    with pytest.raises(data.CorruptDatasetError) as caught:
        evaluate.predict(fake_model, dataset, CONFIG, "test", batch_size=2)
    message = str(caught.value)
    assert message.startswith(f"bad shard file {os.path.join(dataset, name)}: unreadable record: "
                              "corrupted record at")
    assert "function_node" not in message and "Traceback" not in message
    assert isinstance(caught.value.__cause__, tf.errors.DataLossError)


def test_flipped_byte_is_named_when_reading(dataset):
    name = nonempty_shard(dataset, CONFIG.base_name, "train")
    flip_mel_byte(os.path.join(dataset, name))
    with pytest.raises(data.CorruptDatasetError, match="corrupted record at") as caught:
        list(data.read_examples(dataset, CONFIG, "train"))
    assert list(caught.value.problems) == [os.path.join(dataset, name)]
    # What train.py does around an epoch: iterate make_dataset inside the context manager.
    ds = data.make_dataset(dataset, CONFIG, "train", batch_size=4, shuffle_buffer=8, seed=1)
    with pytest.raises(data.CorruptDatasetError) as caught:
        with data.naming_corrupt_shards(dataset, CONFIG, "train"):
            for _ in ds:
                pass
    assert list(caught.value.problems) == [os.path.join(dataset, name)]
    # Without it, TensorFlow's error does not say which file.
    with pytest.raises(tf.errors.DataLossError) as raw:
        for _ in data.make_dataset(dataset, CONFIG, "train", batch_size=4):
            pass
    assert name not in str(raw.value)


def test_flipped_byte_is_named_when_tuning(dataset, tmp_path):
    from tftag.search import tune
    from tftag.experiment import TrainConfig
    from tftag.models import ModelConfig

    name = nonempty_shard(dataset, CONFIG.base_name, "train")
    flip_mel_byte(os.path.join(dataset, name))
    with pytest.raises(data.CorruptDatasetError) as caught:
        tune.tune(dataset, CONFIG, ModelConfig("vgg", width=0.05),
                  TrainConfig(batch_size=4, epochs=1, deterministic=False), str(tmp_path / "tune"),
                  max_trials=1)
    assert list(caught.value.problems) == [os.path.join(dataset, name)]
    assert "corrupted record at" in str(caught.value)


def test_naming_corrupt_shards_keeps_other_errors(pristine):
    with pytest.raises(tf.errors.DataLossError, match="not from a shard"):
        with data.naming_corrupt_shards(pristine, CONFIG, "train"):  # sound: nothing to name
            raise tf.errors.DataLossError(None, None, "not from a shard")
    with pytest.raises(KeyError):
        with data.naming_corrupt_shards(pristine, CONFIG, "train"):
            raise KeyError("unrelated")


def test_corrupt_dataset_error_pickles():
    error = data.CorruptDatasetError("/d", {"/d/a/train-00000-of-00001.tfrecord": "missing",
                                            "/d/a/test-00000-of-00001.tfrecord": "missing"})
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.problems == error.problems
    assert str(error).startswith("2 bad shard files in /d: a/train-00000-of-00001.tfrecord "
                                 "(missing); a/test-00000-of-00001.tfrecord (missing)\n")


# ----------------------------------------------------------------------------- rebuilding


def test_rerun_extraction_rebuilds_missing_and_truncated_shards(dataset):
    assert build_dataset(dataset) == "complete"  # sound: nothing to do
    before = manifest(dataset)
    missing = nonempty_shard(dataset, CONFIG.base_name, "train")
    truncated = nonempty_shard(dataset, CONFIG8.base_name, "test")
    os.remove(os.path.join(dataset, missing))
    path = os.path.join(dataset, truncated)
    os.truncate(path, 50)
    assert not verify.verify_dataset(dataset).ok
    assert build_dataset(dataset) == "todo"  # noticed: rebuilt
    report = verify.verify_dataset(dataset, read=True)
    assert report.ok, report.format()
    after = manifest(dataset)
    records = {n: e["records"] for n, e in before.items()}
    assert {n: e["records"] for n, e in after.items()} == records
    assert after[missing]["sha256"] == before[missing]["sha256"]


# ----------------------------------------------------------------------------- entry point
# These run `python -m tftag.main`: they depend on its --mode=verify wiring (verify_dataset,
# report.format(), exit 1 unless ok) and on CorruptDatasetError being reported by the entry point.


def test_cli_verify(dataset):
    sound = run_module("tftag.main", "--mode=verify", f"--dataset_dir={dataset}", check=False)
    assert sound.returncode == 0, sound.stderr[-2000:]
    assert f"{N_SHARDS} shards, {2 * N_CLIPS} records" in sound.stdout
    assert "all sound" in sound.stdout
    name = nonempty_shard(dataset)
    flip_mel_byte(os.path.join(dataset, name))
    bad = run_module("tftag.main", "--mode=verify", f"--dataset_dir={dataset}", check=False)
    assert bad.returncode == 1, bad.stderr[-2000:]
    assert f"BAD {name}: unreadable record: corrupted record at" in bad.stdout


def test_cli_train_names_a_corrupt_shard(dataset, tmp_path):
    name = nonempty_shard(dataset, CONFIG.base_name, "train")
    flip_mel_byte(os.path.join(dataset, name))
    proc = run_module(
        "tftag.main", "--mode=train", f"--dataset_dir={dataset}", f"--run_dir={tmp_path / 'run'}",
        f"--resolutions={CONFIG.name}", f"--duration={CONFIG.duration}", "--model=vgg",
        "--width=0.05", "--batch_size=4", "--epochs=1", "--export=false", check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert os.path.join(dataset, name) in proc.stderr and "corrupted record at" in proc.stderr
    assert "--mode=verify" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
