"""The Beam extraction pipeline end to end: round trip, bad inputs, readers, resume."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import sys

import numpy as np
import pytest

from tftag import features
from tftag.storage import codecs, data
from tftag.features import MelConfig

from conftest import BAD_CLIPS, EXTRACT_ARGS, kill_when_staged, run_module, write_clip

GOOD = ["a.wav", "b.flac", "c.ogg", "d.mp3", "e_stereo_24bit.wav", "f_8bit.wav", "g_opus.opus",
        "h_short.wav", "ü_non_ascii é.wav", "i_6ch.wav", "truncated_half.wav"]
VIEWS = features.grid([12000, 16000], [96, 48, 8], [1, 2, 3, 10], ["db", "log", "power"], 10.0)


@functools.lru_cache(maxsize=None)
def _decoded(path, sr):
    """One decode per (file, sr) for all the views compared against it (read-only)."""
    audio = features.load_audio(path, sr)
    audio.setflags(write=False)
    return audio


def expected_mel(audio_dir, clip_id, config):
    audio = _decoded(os.path.join(audio_dir, clip_id), config.sr)
    return features.melspectrogram(features.crop(audio, config.sr, config.duration).audio, config)


def test_summary_and_dataset_json(extracted):
    out, proc = extracted
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["clips_total"] == len(GOOD) + len(BAD_CLIPS)
    assert summary["clips_written"] == len(GOOD)
    assert summary["clips_failed"] == len(BAD_CLIPS)
    assert summary["clips_padded"] == 2  # h_short.wav (3 s) and truncated_half.wav (6 s) < 10 s
    counters = summary["beam_counters"]
    assert counters["files_seen"] == len(GOOD) + len(BAD_CLIPS)
    assert counters["decoded"] == len(GOOD) and counters["failed"] == len(BAD_CLIPS)
    assert counters["examples_written"] == len(GOOD) * 6  # 2 sr × 3 band counts
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["layout"] == data.LAYOUT and meta["mel_dtype"] == "float32"
    assert meta["splits"] == {"test": 3, "train": 6, "valid": 2}
    assert sorted(meta["bases"]) == [f"sr{sr}-mel{m}" for sr in (12000, 16000) for m in (48, 8, 96)]
    assert meta["bases"]["sr16000-mel96"]["shape"] == [MelConfig(16000, 96, 1, "db", 10.0).n_frames, 96]
    assert len(meta["views"]) == len(VIEWS)
    # Training rows of the catalogue (bad files included): piano 6, drums 3, bass 2.
    assert meta["tags"] == ["piano", "drums", "bass"]
    assert meta["tags_version"] == "5682bb61a52a"  # sha1 of "piano\ndrums\nbass", first 12 hex
    assert meta["tftag_version"] and meta["created"].endswith("+00:00")
    assert not (out / "_staging").exists()


def test_failures_recorded_with_reasons(extracted, audio_dir):
    out, _ = extracted
    records = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [r["clip_id"] for r in records] == sorted(BAD_CLIPS)
    for r in records:
        assert BAD_CLIPS[r["clip_id"]] in r["reason"], r
        assert r["path"] == os.path.join(str(audio_dir), r["clip_id"])
        assert r["split"] in ("train", "valid", "test") and r["error"]
    by_id = {r["clip_id"]: r for r in records}
    assert by_id["missing.wav"]["error"] == "FileNotFoundError"
    assert by_id["tiny.wav"]["reason"].startswith("too short: 0.2")
    assert by_id["silent.wav"]["error"] == "ClipRejected"


def test_shards_are_sorted_and_sized(extracted):
    out, _ = extracted
    files = sorted(os.listdir(out / "sr16000-mel96"))
    # Catalogue rows per split (bad files included) / --clips_per_shard=2: 5, 9, 4 -> 3, 5, 2.
    expected = [f"{split}-{i:05d}-of-{n:05d}.tfrecord"
                for split, n in (("test", 3), ("train", 5), ("valid", 2)) for i in range(n)]
    assert files == expected
    assert json.loads((out / "dataset.json").read_text())["shards"] == {"test": 3, "train": 5, "valid": 2}
    ids = [e["clip_id"] for e in data.read_examples(str(out), MelConfig(16000, 96, 1, "db", 10.0))]
    assert sorted(ids) == sorted(GOOD) and len(set(ids)) == len(ids)


@pytest.mark.parametrize("config", VIEWS, ids=lambda c: c.name)
def test_round_trip_every_view(extracted, audio_dir, config):
    """extract -> read_examples(dir, config) == melspectrogram of the cropped decode."""
    out, _ = extracted
    examples = {e["clip_id"]: e for e in data.read_examples(str(out), config, split="train")}
    assert len(examples) == 6
    for clip_id in ("a.wav", "d.mp3"):
        got = examples[clip_id]["mel"]
        assert got.shape == config.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected_mel(audio_dir, clip_id, config), rtol=1e-5, atol=1e-5)


def test_labels_multi_hot(extracted):
    out, _ = extracted
    config = MelConfig(12000, 8, 10, "log", 10.0)
    labels = {e["clip_id"]: e["labels"].tolist() for e in data.read_examples(str(out), config)}
    # tag order: piano, drums, bass
    assert labels["a.wav"] == [1, 1, 0]
    assert labels["c.ogg"] == [0, 1, 1]
    assert labels["g_opus.opus"] == [1, 0, 1]
    splits = {e["clip_id"]: e["split"] for e in data.read_examples(str(out), config)}
    assert splits["ü_non_ascii é.wav"] == "test"


@pytest.mark.parametrize("name", ["sr16000-mel96-hop3-log", "sr12000-mel48-hop10-db",
                                  "sr16000-mel8-hop1-power"])
def test_make_dataset_equals_melspectrogram(extracted, audio_dir, name):
    out, _ = extracted
    config = MelConfig.from_name(name, duration=10.0)
    ds = data.make_dataset(str(out), config, "train", batch_size=4, as_dict=True)
    batches = list(ds)
    assert [b["mel"].shape[0] for b in batches] == [4, 2]
    for batch in batches:
        assert batch["mel"].shape[1:] == config.shape
        assert batch["labels"].shape[1] == 3 and batch["labels"].dtype.name == "float32"
        for clip_id, mel in zip(batch["clip_id"].numpy(), batch["mel"].numpy()):
            np.testing.assert_allclose(mel, expected_mel(audio_dir, clip_id.decode(), config),
                                       rtol=1e-5, atol=1e-5)
    mel, labels = next(iter(data.make_dataset(str(out), config, "valid", batch_size=8)))
    assert mel.shape == (2, *config.shape) and labels.shape == (2, 3)


def test_patch_cropping(extracted):
    out, _ = extracted
    config = MelConfig(16000, 48, 2, "log", 10.0)
    full = {e["clip_id"]: e["mel"] for e in data.read_examples(str(out), config, "train")}
    ds = data.make_dataset(str(out), config, "train", batch_size=3, patch_frames=50, seed=7,
                           as_dict=True)
    starts = set()
    for batch in ds:
        assert batch["mel"].shape[1:] == (50, 48)
        for clip_id, patch in zip(batch["clip_id"].numpy(), batch["mel"].numpy()):
            whole = full[clip_id.decode()]
            # The patch is a contiguous window of the full view.
            matches = [s for s in range(whole.shape[0] - 49)
                       if np.allclose(whole[s:s + 50], patch, rtol=1e-5, atol=1e-5)]
            assert matches, clip_id
            starts.add(matches[0])
    assert len(starts) > 1  # offsets are random, not always 0
    # A patch longer than the clip is padded with silence (log(1 + 0) = 0).
    long = next(iter(data.make_dataset(str(out), config, "train", batch_size=1,
                                       patch_frames=config.n_frames + 10)))[0].numpy()[0]
    assert long.shape == (config.n_frames + 10, 48)
    assert np.all(long[-10:] == 0)


def test_reader_errors(extracted, tmp_path):
    out, _ = extracted
    with pytest.raises(ValueError, match="no stored mel for sr16000-mel128-hop1-db; this dataset "
                                         "holds sr12000-mel96"):
        data.make_dataset(str(out), MelConfig(16000, 128, 1, "db", 10.0), "train", 2)
    with pytest.raises(ValueError, match="no split 'dev'; splits: test, train, valid"):
        list(data.read_examples(str(out), MelConfig(16000, 96, 1, "db", 10.0), split="dev"))
    with pytest.raises(ValueError, match="cropped to 10.0 s"):
        list(data.read_examples(str(out), MelConfig(16000, 96, 1, "db")))
    with pytest.raises(FileNotFoundError, match="not a finished tftag dataset directory"):
        data.make_dataset(str(tmp_path), MelConfig(16000, 96, 1, "db"), "train", 2)


def test_rerun_is_a_no_op_and_changes_need_overwrite(extracted, audio_dir):
    out, _ = extracted
    before = {p: os.path.getmtime(out / "sr16000-mel96" / p) for p in os.listdir(out / "sr16000-mel96")}
    proc = run_module("pipelines.extract", f"--input={audio_dir / 'catalog.csv'}",
                      f"--output_dir={out}", *EXTRACT_ARGS)
    assert "already complete" in proc.stdout
    assert before == {p: os.path.getmtime(out / "sr16000-mel96" / p) for p in before}
    proc = run_module("pipelines.extract", f"--input={audio_dir / 'catalog.csv'}",
                      f"--output_dir={out}", *EXTRACT_ARGS[:-1], "--clips_per_shard=5", check=False)
    assert proc.returncode != 0
    assert "pass --overwrite to replace it" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sr=7000"], "--sr: sr must be one of 12000, 16000 (paper) or any int >= 8000, got 7000"),
        (["--n_mels=96,x"], "--n_mels must be comma-separated integers"),
        (["--compressions=ln"], "--compressions: compression must be one of db, log, power"),
        (["--catalog=mtatt"], "--catalog='mtatt'; known: auto, csv, debian, folder"),
        (["--mel_dtype=int8"], "--mel_dtype"),
    ],
)
def test_flag_errors(audio_dir, tmp_path, args, message):
    proc = run_module("pipelines.extract", f"--input={audio_dir / 'catalog.csv'}",
                      f"--output_dir={tmp_path / 'o'}", *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]


def test_folder_input_float16(tmp_path):
    src = tmp_path / "music"
    (src / "sub").mkdir(parents=True)
    write_clip(str(src / "one.wav"), 4, 16000, seed=1)
    write_clip(str(src / "sub" / "two.flac"), 4, 22050, seed=2)
    (src / "notes.txt").write_text("ignored: not an audio extension")
    out = tmp_path / "ds16"
    proc = run_module("pipelines.extract", f"--input={src}", f"--output_dir={out}", "--sr=16000",
                      "--n_mels=48", "--hop_factors=1,2", "--compressions=log,db", "--duration=4",
                      "--mel_dtype=float16")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["splits"] == {"all": 2} and meta["tags"] == [] and meta["mel_dtype"] == "float16"
    assert meta["source"]["ignored_files"] == ["notes.txt"]
    config = MelConfig(16000, 48, 1, "log", 4.0)
    got = {e["clip_id"]: e for e in data.read_examples(str(out), config)}
    assert sorted(got) == ["one.wav", "sub/two.flac"] and got["one.wav"]["labels"].shape == (0,)
    ref = features.melspectrogram(features.crop(features.load_audio(src / "one.wav", 16000), 16000, 4.0).audio, config)
    # float16 storage of the dB of the power mel: <= 0.03 dB, i.e. ~1e-3 after log compression.
    np.testing.assert_allclose(got["one.wav"]["mel"], ref, rtol=2e-3, atol=1e-3)
    assert meta["mel_codec"] == {"codec": "float16", "dtype": "float16", "bytes_per_value": 2,
                                 "domain": "db"}
    size16 = os.path.getsize(out / "sr16000-mel48" / "all-00000-of-00001.tfrecord")
    assert size16 < 2 * 48 * config.n_frames * 2 + 4000  # 2 clips × bytes of float16 + headers
    assert "extracted 2/2 clips" in proc.stdout


def test_uint8_storage_size_views_and_a_corrupt_codec_parameter(tmp_path):
    src = tmp_path / "music"
    src.mkdir()
    write_clip(str(src / "one.wav"), 4, 16000, seed=1)
    write_clip(str(src / "two.wav"), 4, 16000, seed=2)
    sizes, views = {}, {}
    configs = [MelConfig(16000, 48, k, c, 4.0) for k in (1, 2) for c in ("db", "log")]
    for codec in ("float32", "uint8"):
        out = tmp_path / codec
        run_module("pipelines.extract", f"--input={src}", f"--output_dir={out}", "--sr=16000",
                   "--n_mels=48", "--hop_factors=1,2", "--compressions=log,db", "--duration=4",
                   f"--mel_dtype={codec}")
        sizes[codec] = os.path.getsize(out / "sr16000-mel48" / "all-00000-of-00001.tfrecord")
        views[codec] = {c.name: {e["clip_id"]: e["mel"] for e in data.read_examples(str(out), c)}
                        for c in configs}
    assert sizes["uint8"] <= 0.27 * sizes["float32"]  # records: 1 byte per value + headers
    for c in configs:  # every hop factor and both compressions, derived on read from uint8
        ref = np.concatenate([views["float32"][c.name][k] for k in ("one.wav", "two.wav")])
        diff = np.abs(np.concatenate([views["uint8"][c.name][k] for k in ("one.wav", "two.wav")])
                      - ref)
        if c.compression == "db":  # ±step/2 inside -90..+29.38 dB (these tones go above: clipped)
            inside = (ref >= -90) & (ref <= 29.38)
            assert inside.mean() > 0.5 and diff[inside].max() <= 0.235 + 1e-3, c.name
            assert np.median(diff[inside]) <= 0.2, c.name
        else:  # ≤ step/40 = 0.0118 when every value is loud, as in these renders (real music:
            assert np.median(diff) <= 0.047 / 4, c.name  # median 0.008-0.0096, README)
    meta_path = tmp_path / "uint8" / "dataset.json"
    meta = json.loads(meta_path.read_text())
    assert meta["mel_codec"]["db_step"] == 0.47 and meta["mel_codec"]["db_min"] == -90.0
    meta["mel_codec"]["db_step"] = -1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="dataset.json: mel_codec: db_step = -1 must be > 0"):
        data.load_dataset_info(str(tmp_path / "uint8"))
    proc = run_module("tftag.main", "--mode=verify", f"--dataset_dir={tmp_path / 'uint8'}",
                      check=False)
    assert proc.returncode != 0 and "mel_codec: db_step = -1 must be > 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_resume_after_kill_9(tmp_path):
    """kill -9 mid-run, rerun: the same dataset as an uninterrupted run, byte for byte."""
    src = tmp_path / "music"
    src.mkdir()
    for i in range(14):
        write_clip(str(src / f"clip{i:02d}.wav"), 20, 16000, seed=i)
    (src / "broken.wav").write_text("garbage")
    args = ["--sr=12000,16000", "--n_mels=96,48", "--hop_factors=1,2", "--compressions=log",
            "--duration=20", "--clips_per_shard=4"]
    clean = tmp_path / "clean"
    run_module("pipelines.extract", f"--input={src}", f"--output_dir={clean}", *args)

    killed = tmp_path / "killed"
    staged_at_kill = kill_when_staged(
        [sys.executable, "-m", "pipelines.extract", f"--input={src}", f"--output_dir={killed}", *args],
        killed, 3)
    assert 3 <= staged_at_kill < 15, staged_at_kill
    assert not (killed / "dataset.json").exists()

    resumed = run_module("pipelines.extract", f"--input={src}", f"--output_dir={killed}", *args)
    assert f"{staged_at_kill} already staged" in resumed.stderr
    for base in ("sr12000-mel96", "sr12000-mel48", "sr16000-mel96", "sr16000-mel48"):
        names = sorted(os.listdir(clean / base))
        assert names == sorted(os.listdir(killed / base)) and len(names) == 4
        for name in names:
            assert (clean / base / name).read_bytes() == (killed / base / name).read_bytes()
    assert (clean / "failures.jsonl").read_text() == (killed / "failures.jsonl").read_text()
    ids = [e["clip_id"] for e in data.read_examples(str(killed), MelConfig(16000, 48, 2, "log", 20.0))]
    assert sorted(ids) == [f"clip{i:02d}.wav" for i in range(14)]


def test_transcode_keeps_the_clips_and_changes_only_the_stored_mel(tiny_dataset, tmp_path):
    out = tmp_path / "u8"
    proc = run_module("tftag.main", "--mode=transcode", f"--dataset_dir={tiny_dataset}",
                      f"--run_dir={out}", "--mel_dtype=uint8")
    assert "transcoded" in proc.stderr
    meta = json.loads((out / "dataset" / "dataset.json").read_text())
    src = json.loads((pathlib.Path(tiny_dataset) / "dataset.json").read_text())
    assert meta["mel_dtype"] == "uint8" and meta["mel_codec"] == codecs.get("uint8").describe()
    assert meta["transcoded_from"]["mel_codec"]["codec"] == "float32"
    assert meta["splits"] == src["splits"] and meta["tags"] == src["tags"]
    assert sorted(meta["shard_files"]) == sorted(src["shard_files"])
    ratio = (sum(e["bytes"] for e in meta["shard_files"].values())
             / sum(e["bytes"] for e in src["shard_files"].values()))
    assert ratio <= 0.27
    verify = run_module("tftag.main", "--mode=verify", f"--dataset_dir={out / 'dataset'}")
    assert f"{out / 'dataset'}: {len(meta['shard_files'])} shards" in verify.stdout
    assert verify.stdout.rstrip().endswith(": all sound") and "BAD" not in verify.stdout
    config = MelConfig(16000, 16, 2, "log", 3.0)
    a = {e["clip_id"]: e for e in data.read_examples(tiny_dataset, config, split="valid")}
    b = {e["clip_id"]: e for e in data.read_examples(str(out / "dataset"), config, split="valid")}
    assert sorted(a) == sorted(b) and len(a) > 0
    diffs = []
    for clip_id, example in a.items():
        np.testing.assert_array_equal(b[clip_id]["labels"], example["labels"])
        diffs.append(np.abs(b[clip_id]["mel"] - example["mel"]).ravel())
    # Log view of a 0.47-dB quantiser: |Δ| ≤ 0.047 / 2 on loud values, median ≤ 0.047 / 4 even
    # when every value is loud (the rendered clips are; real music's median is ≤ 0.0096).
    assert np.median(np.concatenate(diffs)) <= 0.047 / 4 and np.concatenate(diffs).max() <= 0.0236
    again = run_module("tftag.main", "--mode=transcode", f"--dataset_dir={tiny_dataset}",
                       f"--run_dir={out}", "--mel_dtype=uint8")  # resumes: nothing to write
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards_written"] == 0 and summary["shards_skipped"] == len(meta["shard_files"])
    assert f"0 shards written, {len(meta['shard_files'])} already there" in again.stderr
    bad = run_module("tftag.main", "--mode=transcode", f"--run_dir={tmp_path / 'x'}",
                     "--mel_dtype=uint8", check=False)
    assert bad.returncode != 0 and "--mode=transcode needs --dataset_dir" in bad.stderr
