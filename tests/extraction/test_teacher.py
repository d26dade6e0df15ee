"""The teacher-label memo (--teacher_memo): labels remembered by clip content, reused by a
re-extraction byte for byte, read off a float32 dataset, refused when made for another one."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tftag.extraction import extractor, teacher
from tftag.features import MelConfig

from conftest import run_module, tone_mix, write_clip

DURATION = 10.0


def _summary(proc) -> dict:
    """The JSON summary line pipelines.extract prints last."""
    return json.loads(proc.stdout.strip().splitlines()[-1])


class CountingTeacher:
    """A stand-in for the model: probabilities from the crop's mean level, calls counted."""

    def __init__(self):
        self.calls = 0

    def label(self, audio, duration):
        self.calls += 1
        soft = np.linspace(0.0, 1.0, 50, dtype=np.float32) * float(np.mean(np.abs(audio)))
        return teacher.hard_labels(soft, 3), soft


def test_memo_fingerprint_finds_the_same_crop_on_another_cpu_and_no_other():
    a, b = tone_mix(DURATION, 16000, 0), tone_mix(DURATION, 16000, 1)
    fa = teacher.memo_fingerprint(a)
    assert fa.shape == (teacher.MEMO_BLOCKS * teacher.MEMO_KEY_N_MELS,) and fa.dtype == np.float32
    memo = teacher.Memo([fa], [np.full(50, 0.5, np.float32)])
    assert memo.get(teacher.memo_fingerprint(a.copy()))[0] == np.float32(0.5)
    assert memo.get(teacher.memo_fingerprint(b)) is None  # other music
    assert memo.get(teacher.memo_fingerprint(a * 10 ** (0.5 / 20))) is None  # +0.5 dB: another crop
    # Another CPU's BLAS kernels change the mel's last bits (~1e-7 relative): an exact hash of
    # them misses, the fingerprint still finds the crop.
    from tftag import features

    mel = features.base_mels(a, 16000, (8,))[8]
    other_cpu = (mel * (1 + 1e-7 * np.random.default_rng(0).standard_normal(mel.shape))).astype(
        np.float32)
    assert other_cpu.tobytes() != mel.tobytes()
    assert memo.get(teacher.memo_fingerprint_of_mel(other_cpu)) is not None
    assert not memo.add(teacher.memo_fingerprint_of_mel(other_cpu), np.zeros(50, np.float32))
    assert len(memo) == 1 and memo.add(teacher.memo_fingerprint(b), np.zeros(50)) and len(memo) == 2
    with pytest.raises(ValueError, match=r"needs a \[frames >= 10, 8\] mel, got \(1820, 16\)"):
        teacher.memo_fingerprint_of_mel(np.ones((1820, 16), np.float32))


def test_memo_teacher_runs_the_model_only_on_a_miss(tmp_path):
    crops = [tone_mix(DURATION, 16000, s) for s in range(3)]
    model = CountingTeacher()
    memo = teacher.MemoTeacher("MTT_musicnn", 3, stage_dir=str(tmp_path / "stage"), teacher=model)
    first = [memo.label(c, DURATION) for c in crops]
    again = memo.label(crops[1], DURATION)  # seen in this run: no second call
    assert model.calls == 3 and memo.hits == 1
    np.testing.assert_array_equal(again[1], first[1][1])
    assert again[0].sum() == 3 and list(np.flatnonzero(again[0])) == [47, 48, 49]
    assert len(os.listdir(tmp_path / "stage")) == 3

    path = str(tmp_path / "memo.npz")
    assert teacher.merge_staged(path, "MTT_musicnn", DURATION, str(tmp_path / "stage")) == {
        "entries": 3, "added": 3}
    known = teacher.read_memo(path, "MTT_musicnn", DURATION)
    fresh = teacher.MemoTeacher("MTT_musicnn", 3, known=known, teacher=CountingTeacher())
    for crop, (hard, soft) in zip(crops, first):
        got_hard, got_soft = fresh.label(crop, DURATION)
        np.testing.assert_array_equal(got_soft, soft)
        np.testing.assert_array_equal(got_hard, hard)
    assert fresh.teacher.calls == 0 and fresh.hits == 3


def test_memo_file_is_canonical_and_refuses_another_extraction(tmp_path):
    fps = [np.full(80, -20.0, np.float32), np.full(80, -30.0, np.float32)]
    soft = [np.full(50, 0.25, np.float32), np.full(50, 0.5, np.float32)]
    p1, p2 = str(tmp_path / "one.npz"), str(tmp_path / "two.npz")
    teacher.write_memo(p1, "MTT_musicnn", DURATION, teacher.Memo(fps, soft))
    teacher.write_memo(p2, "MTT_musicnn", DURATION, teacher.Memo(fps[::-1], soft[::-1]))
    assert open(p1, "rb").read() == open(p2, "rb").read()  # the same entries, the same bytes
    got = teacher.read_memo(p1, "MTT_musicnn", DURATION)
    assert len(got) == 2 and got.get(fps[1] + 0.005)[0] == np.float32(0.5)
    assert len(teacher.read_memo(str(tmp_path / "none.npz"), "MTT_musicnn", DURATION)) == 0
    # a memo of the first format (exact SHA-1 keys, useless on another CPU): not used, replaced
    old = tmp_path / "old.npz"
    np.savez(old, identity=np.array(json.dumps({"format": 1, "teacher": "MTT_musicnn"})),
             keys=np.array(["a" * 40]), soft=np.zeros((1, 50), np.float32))
    assert len(teacher.read_memo(str(old), "MTT_musicnn", DURATION)) == 0
    assert teacher._add_to_memo(str(old), "MTT_musicnn", DURATION, [(fps[0], soft[0])]) == {
        "entries": 1, "added": 1}
    assert len(teacher.read_memo(str(old), "MTT_musicnn", DURATION)) == 1

    with pytest.raises(ValueError, match=r"one\.npz: made for another extraction: teacher "
                                         r"'MTT_musicnn' \(this extraction: 'MTT_vgg'\)"):
        teacher.read_memo(p1, "MTT_vgg", DURATION)
    with pytest.raises(ValueError, match=r"duration 10\.0 \(this extraction: 29\.1\)"):
        teacher.read_memo(p1, "MTT_musicnn", 29.1)
    (tmp_path / "junk.npz").write_text("not a memo")
    with pytest.raises(ValueError, match=r"--teacher_memo=.*junk\.npz: not a teacher memo"):
        teacher.read_memo(str(tmp_path / "junk.npz"), "MTT_musicnn", DURATION)
    from tftag.experiment import DataConfig

    with pytest.raises(ValueError, match="needs labels=teacher:<name>, got labels=catalog"):
        DataConfig(teacher_memo=p1)  # refused before any clip is rendered or downloaded
    assert DataConfig(labels="teacher:MTT_musicnn", teacher_memo=p1).teacher_memo == p1
    with pytest.raises(ValueError, match="needs labels=teacher:<name>, got labels=catalog"):
        extractor.ExtractionPlan(str(tmp_path / "d"), (MelConfig(16000, 8, 1, "log", DURATION),),
                                  tuple(teacher.tags()), teacher_memo=p1)


def test_a_reextraction_with_the_memo_skips_the_teacher_and_writes_the_same_bytes(tmp_path):
    """Extraction 1 (real MTT_musicnn teacher) makes the memo; extraction 2 of the same music
    into another directory reads every label from it (hits counted, no model loaded) and writes
    the same shards byte for byte; the memo read off the float32 dataset is the same file."""
    music = tmp_path / "music"
    music.mkdir()
    for i in range(3):
        write_clip(str(music / f"clip{i}.wav"), 12, 22050, seed=i)
    memo = tmp_path / "memo.npz"
    args = [f"--input={music}", "--sr=16000", "--n_mels=16,8", "--hop_factors=1",
            "--compressions=log", f"--duration={DURATION}", "--labels=teacher:MTT_musicnn",
            f"--teacher_memo={memo}"]
    first = _summary(run_module("pipelines.extract", *args, f"--output_dir={tmp_path / 'first'}"))
    assert first["teacher_memo"] == {"entries": 3, "added": 3}
    assert first["beam_counters"].get("teacher_memo_hits", 0) == 0
    assert len(teacher.read_memo(str(memo), "MTT_musicnn", DURATION)) == 3
    memo_bytes = memo.read_bytes()

    second = _summary(run_module("pipelines.extract", *args,
                                 f"--output_dir={tmp_path / 'second'}"))
    assert second["teacher_memo"] == {"entries": 3, "added": 0}
    assert second["beam_counters"]["teacher_memo_hits"] == 3
    for base in ("sr16000-mel16", "sr16000-mel8"):
        names = sorted(os.listdir(tmp_path / "first" / base))
        assert names == sorted(os.listdir(tmp_path / "second" / base)) and names
        for name in names:
            assert ((tmp_path / "first" / base / name).read_bytes()
                    == (tmp_path / "second" / base / name).read_bytes()), (base, name)
    assert memo.read_bytes() == memo_bytes  # nothing new to remember

    rebuilt = tmp_path / "rebuilt.npz"
    out = teacher.memo_from_dataset(str(tmp_path / "first"), str(rebuilt))
    assert out == {"entries": 3, "added": 3}
    assert rebuilt.read_bytes() == memo_bytes  # stored 8-band mels are the memo keys

    meta = json.loads((tmp_path / "second" / "dataset.json").read_text())
    assert meta["labels"] == "teacher:MTT_musicnn" and "teacher_memo" not in json.dumps(meta)


def test_memo_from_a_lossy_dataset_is_refused_by_name(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_clip(str(music / "clip0.wav"), 12, 22050, seed=0)
    memo = tmp_path / "memo.npz"
    memo_lib_args = [f"--input={music}", "--sr=16000", "--n_mels=16", "--hop_factors=1",
                     "--compressions=log", f"--duration={DURATION}", "--mel_dtype=uint8",
                     "--labels=teacher:MTT_musicnn"]
    run_module("pipelines.extract", *memo_lib_args, f"--output_dir={tmp_path / 'd'}")
    with pytest.raises(ValueError, match=r"float32 dataset with the sr16000-mel8 base \(this "
                                         r"one: mel_dtype uint8, bases sr16000-mel16\)"):
        teacher.memo_from_dataset(str(tmp_path / "d"), str(memo))
    bad = run_module("pipelines.extract", *memo_lib_args, f"--output_dir={tmp_path / 'e'}",
                     "--teacher_memo=" + str(tmp_path / "junk.npz"), check=False)
    assert bad.returncode == 0  # no memo file yet: it is made
    (tmp_path / "junk.npz").write_text("x")
    bad = run_module("pipelines.extract", *memo_lib_args, f"--output_dir={tmp_path / 'f'}",
                     "--teacher_memo=" + str(tmp_path / "junk.npz"), check=False)
    assert bad.returncode != 0 and "junk.npz: not a teacher memo" in bad.stderr
    assert "Traceback" not in bad.stderr
