"""The TensorFlow-free dataset layer: dataset.json, shard names and listing, and the modules on
top of it (verify's stat checks, compressions, atomic writes) importable without TensorFlow.

Everything here but the alias test runs without TensorFlow: the dataset directories are written
by hand (empty or fake shard files), which is all the layout and the stat checks look at.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tftag.runs import runfiles
from tftag.storage import dataset_dir, verify
from tftag.features import MelConfig

from conftest import ROOT

CONFIG = MelConfig(16000, 16, 2, "log", 3.0)
TAGS = ("jazz", "piano", "rock")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_dataset_layer_does_not_import_tensorflow():
    proc = _python(
        "import sys, tftag.storage.dataset_dir, tftag.storage.verify, tftag.audio.compressions, tftag.runs.runfiles\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
        "assert 'tftag.storage.data' not in sys.modules, 'tftag.storage.data imported'\n"
        "print('clean')\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "clean"


def test_reading_a_dataset_json_does_not_import_tensorflow(tmp_path):
    _write_dataset(tmp_path)
    proc = _python(
        "import sys\n"
        "from tftag.storage import dataset_dir, verify\n"
        f"info = dataset_dir.load_dataset_info({str(tmp_path)!r})\n"
        f"print(info.splits, verify.shard_problems({str(tmp_path)!r}, info))\n"
        "assert 'tensorflow' not in sys.modules\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "{'test': 2, 'train': 5, 'valid': 1} {}"


def test_verify_does_not_import_data():
    proc = _python("import sys, tftag.storage.verify\nprint(sorted(m for m in sys.modules "
                   "if m.startswith('tftag.')))")
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = eval(proc.stdout)  # noqa: S307  (our own subprocess's list of names)
    assert "tftag.storage.dataset_dir" in loaded and "tftag.storage.data" not in loaded


def test_old_names_stay_importable_from_data():
    from tftag.storage import data

    assert data.load_dataset_info is dataset_dir.load_dataset_info
    assert data.DatasetInfo is dataset_dir.DatasetInfo
    assert data.shard_name is dataset_dir.shard_name and data.shard_files is dataset_dir.shard_files
    assert (data.DATASET_JSON, data.FAILURES_JSONL, data.LAYOUT, data.FORMAT_VERSION) == (
        "dataset.json", "failures.jsonl", "base-power-hop1", 1)
    assert data.CorruptDatasetError is verify.CorruptDatasetError
    assert data.shard_stats is verify.shard_stats and data.check_shards is verify.check_shards
    assert data.write_json_atomic is runfiles.write_json_atomic


# ----------------------------------------------------------------------------- shard names


def test_shard_names_round_trip():
    name = dataset_dir.shard_name("sr16000-mel96", "train", 3, 12)
    assert name == "sr16000-mel96/train-00003-of-00012.tfrecord"
    assert dataset_dir.parse_shard_name(name) == ("sr16000-mel96", "train", 3, 12)
    assert dataset_dir.shard_path("/d", "sr16000-mel96", "train", 3, 12) == os.path.join(
        "/d", "sr16000-mel96", "train-00003-of-00012.tfrecord")
    assert dataset_dir.relative_name("/d", os.path.join("/d", name)) == name
    # A split name with dashes stays whole.
    assert dataset_dir.parse_shard_name("b/my-split-00000-of-00001.tfrecord")[1] == "my-split"


@pytest.mark.parametrize("bad", ["train-00000-of-00001.tfrecord", "b/train-0-of-1.tfr",
                                 "b/train-00000-of-00001.tfrecord.tmp"])
def test_parse_shard_name_rejects_other_names(bad):
    with pytest.raises(ValueError, match=r"not a shard name: .*expected <base>/<split>-NNNNN"):
        dataset_dir.parse_shard_name(bad)


def test_shard_index_and_counts():
    assert dataset_dir.shard_index("clip-1", 7) == dataset_dir.shard_index("clip-1", 7)
    spread = {dataset_dir.shard_index(f"clip-{i}", 4) for i in range(200)}
    assert spread == {0, 1, 2, 3}
    assert dataset_dir.shard_index("a", 1000) == 580  # md5("a")[:8] little-endian mod 1000
    assert [dataset_dir.num_shards_for(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [1, 1, 1, 2, 2, 3]


# ----------------------------------------------------------------------------- dataset.json


def _write_dataset(root, manifest: bool = True, sizes: dict[str, int] | None = None) -> dict:
    """dataset.json for CONFIG (plus an 8-band base) and fake shards of the recorded sizes."""
    configs = [CONFIG, MelConfig(16000, 8, 1, "db", 3.0)]
    shards = {"train": 2, "valid": 1, "test": 1}
    meta = dataset_dir.dataset_metadata(
        configs=configs, mel_dtype="uint8", tags=TAGS, splits={"train": 5, "valid": 1, "test": 2},
        shards=shards, source={"catalog": "hand-made"})
    names = [dataset_dir.shard_name(c.base_name, s, i, n)
             for c in configs for s, n in shards.items() for i in range(n)]
    sizes = sizes or {}
    for k, name in enumerate(names):
        path = os.path.join(str(root), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"x" * sizes.get(name, 10 + k))
    if manifest:
        meta[dataset_dir.SHARD_FILES] = {name: {"records": 1, "bytes": 10 + k, "sha256": "0"}
                                         for k, name in enumerate(names)}
    runfiles.write_json_atomic(os.path.join(str(root), dataset_dir.DATASET_JSON), meta)
    return meta


def test_dataset_json_round_trip(tmp_path):
    meta = _write_dataset(tmp_path)
    assert meta["layout"] == dataset_dir.LAYOUT and meta["format_version"] == 1
    assert meta["tags_version"] == dataset_dir.tags_version(TAGS) != dataset_dir.tags_version(
        TAGS[::-1])
    info = dataset_dir.load_dataset_info(str(tmp_path))
    assert info.base_names == ["sr16000-mel16", "sr16000-mel8"]
    assert info.n_tags == 3 and info.tags == TAGS and info.duration == 3.0
    assert info.codec.name == "uint8" and info.mel_dtype == "uint8"
    assert info.splits == {"test": 2, "train": 5, "valid": 1}
    assert list(info.expected_shards(["sr16000-mel16"], "train")) == [
        "sr16000-mel16/train-00000-of-00002.tfrecord", "sr16000-mel16/train-00001-of-00002.tfrecord"]
    assert len(info.expected_shards()) == 8
    assert dataset_dir.checked_dataset_info(str(tmp_path), CONFIG, "valid").splits == info.splits


def test_expected_shards_without_manifest(tmp_path):
    _write_dataset(tmp_path, manifest=False)
    info = dataset_dir.load_dataset_info(str(tmp_path))
    assert info.shard_manifest is None
    expected = info.expected_shards(split="valid")
    assert expected == {"sr16000-mel16/valid-00000-of-00001.tfrecord": None,
                        "sr16000-mel8/valid-00000-of-00001.tfrecord": None}


def test_dataset_info_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.json not found: .* is not a finished"):
        dataset_dir.load_dataset_info(str(tmp_path))
    meta = _write_dataset(tmp_path)
    with pytest.raises(ValueError, match="no stored mel for sr12000-mel16-hop2-log; this dataset "
                                         "holds sr16000-mel16, sr16000-mel8"):
        dataset_dir.checked_dataset_info(str(tmp_path), MelConfig(12000, 16, 2, "log", 3.0), None)
    with pytest.raises(ValueError, match="clips are cropped to 3.0 s, but .* duration=4.0"):
        dataset_dir.checked_dataset_info(str(tmp_path), MelConfig(16000, 16, 2, "log", 4.0), None)
    with pytest.raises(ValueError, match="no split 'dev'; splits: test, train, valid"):
        dataset_dir.checked_dataset_info(str(tmp_path), CONFIG, "dev")
    meta["format_version"] = 0
    with open(tmp_path / "dataset.json", "w", encoding="utf-8") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match="format_version 0 is not 1; re-run the extraction"):
        dataset_dir.load_dataset_info(str(tmp_path))


def test_shard_listing(tmp_path):
    _write_dataset(tmp_path)
    (tmp_path / "sr16000-mel16" / "stray.tfrecord").write_bytes(b"")
    (tmp_path / "sr16000-mel16" / "notes.txt").write_text("not a shard")
    listed = dataset_dir.shard_files(str(tmp_path), CONFIG, "train")
    assert [os.path.basename(p) for p in listed] == ["train-00000-of-00002.tfrecord",
                                                     "train-00001-of-00002.tfrecord"]
    assert len(dataset_dir.shard_files(str(tmp_path), CONFIG)) == 5  # 4 shards + the stray one
    present = dataset_dir.present_shards(str(tmp_path))
    assert len(present) == 9 and "sr16000-mel16/stray.tfrecord" in present


# ----------------------------------------------------------------------------- stat checks


def test_stat_check_names_missing_and_resized_shards(tmp_path):
    resized = "sr16000-mel16/train-00001-of-00002.tfrecord"
    _write_dataset(tmp_path, sizes={resized: 100})
    gone = "sr16000-mel16/valid-00000-of-00001.tfrecord"
    os.remove(tmp_path / gone)
    info = dataset_dir.load_dataset_info(str(tmp_path))
    problems = verify.shard_problems(str(tmp_path), info)
    assert problems == {str(tmp_path / gone): "missing",
                        str(tmp_path / resized): "size mismatch: 100 bytes, dataset.json says 11"}
    assert verify.shard_problems(str(tmp_path), info, ["sr16000-mel8"]) == {}
    verify.check_shards(str(tmp_path), CONFIG, "test", info)  # those are sound: no error
    with pytest.raises(verify.CorruptDatasetError, match=r"bad shard file .*valid-00000-of-00001"
                                                         r".tfrecord: missing\nrun python -m "
                                                         r"tftag.main --mode=verify"):
        verify.check_shards(str(tmp_path), CONFIG, "valid")


def test_shard_manifest_counts_records(tmp_path):
    # Two TFRecord frames written by hand: 8-byte length, 4-byte CRC, data, 4-byte CRC.
    name = "sr16000-mel16/train-00000-of-00001.tfrecord"
    os.makedirs(tmp_path / "sr16000-mel16")
    frames = b"".join(len(d).to_bytes(8, "little") + b"\0" * 4 + d + b"\0" * 4
                      for d in (b"abc", b"defgh"))
    (tmp_path / name).write_bytes(frames)
    manifest = verify.shard_manifest(str(tmp_path), [str(tmp_path / name)])
    assert list(manifest) == [name]
    assert manifest[name]["records"] == 2 and manifest[name]["bytes"] == len(frames) == 40
    (tmp_path / name).write_bytes(frames[:-3])
    with pytest.raises(ValueError, match="record 1 ends early at byte 37"):
        verify.shard_stats(str(tmp_path / name))
