"""Whole-track tagging: the streaming mel, windows, block decoding, pretrained models from the
CLI, taggrams, embeddings, padded and corrupt files, chunked == unchunked, the track signatures
of an export. The reference taggram is the musicnn package's own (tests/fixtures/musicnn)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile

from conftest import FIXTURES, ROOT, run_module
from tftag import features
from tftag.tagging import tag, tracks
from tftag.features import MelConfig

WAV_12S = os.path.join(FIXTURES, "musicnn", "synthetic_12s.wav")  # provenance: its README.md
REFERENCE = os.path.join(FIXTURES, "musicnn", "reference.npz")
MEL96 = MelConfig(16000, 96, 1, "log")


@pytest.mark.parametrize("n, hop_factor, blocks", [
    (16000 * 7 + 123, 1, (1000, 77777, 5)), (300, 2, (1,)), (48000, 4, (48000,)),
    (513, 1, (256, 1, 1000)), (16000 * 5, 10, (4097,))])
def test_streaming_mel_equals_the_whole_signal_mel(n, hop_factor, blocks):
    x = (np.random.default_rng(n).standard_normal(n) * 0.1).astype(np.float32)
    config = MelConfig(16000, 48, hop_factor, "log")
    mel = tracks.StreamingMel(config)
    out, pos, i = [], 0, 0
    while pos < n:
        out.append(mel.feed(x[pos:pos + blocks[i % len(blocks)]]))
        pos += blocks[i % len(blocks)]
        i += 1
    out.append(mel.finish())
    got = np.concatenate(out)
    want = features.melspectrogram(x, config)
    assert got.shape == want.shape == (-(-features.frame_count(n) // hop_factor), 48)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="no samples were fed"):
        tracks.StreamingMel(config).finish()


@pytest.mark.parametrize("frames, hop, windows, padded", [
    (10, None, 1, True), (187, None, 1, False), (373, None, 1, False), (374, None, 2, False),
    (1000, None, 5, False), (1000, 93, 9, False)])
def test_windows(frames, hop, windows, padded):
    spec = tracks.WindowSpec(MEL96, 187, hop)
    mel = np.arange(frames * 96, dtype=np.float32).reshape(frames, 96)
    cutter = tracks.Windows(spec)
    got = np.concatenate([cutter.push(mel[i:i + 50]) for i in range(0, frames, 50)]
                         + [cutter.finish()])
    assert got.shape == (windows, 187, 96) and cutter.padded is padded
    assert spec.n_windows(frames) == windows
    if not padded:
        step = hop or 187
        for w in range(windows):
            np.testing.assert_array_equal(got[w], mel[w * step:w * step + 187])
    else:
        np.testing.assert_array_equal(got[0, :frames], mel)
        assert not got[0, frames:].any()  # zero padding


def test_read_blocks_resamples_in_blocks(tmp_path):
    import soxr

    sr_in, seconds = 22050, 7.3
    t = np.arange(int(sr_in * seconds)) / sr_in
    x = (0.3 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 0.5 * t)).astype(np.float32)
    path = str(tmp_path / "tone.wav")
    soundfile.write(path, np.stack([x, 0.5 * x], axis=1), sr_in)  # stereo: mixed to mono
    blocks = list(tracks.read_blocks(path, 16000, block_seconds=1.0))
    assert len(blocks) >= 7 and max(b.size for b in blocks) <= 16000 + 512  # + the resampler's flush
    got = np.concatenate(blocks)
    stored, _ = soundfile.read(path, dtype="float32")  # PCM16 as written
    want = soxr.resample(stored.mean(axis=1), sr_in, 16000, quality="HQ")
    assert abs(got.size - want.size) <= 1
    n = min(got.size, want.size)
    np.testing.assert_allclose(got[:n], want[:n], atol=1e-5)
    with pytest.raises(FileNotFoundError):
        next(tracks.read_blocks(str(tmp_path / "missing.wav"), 16000))


@pytest.fixture(scope="module")
def musicnn_tagger():
    return tag.Tagger.pretrained("MTT_musicnn")


def test_pretrained_whole_track_matches_the_musicnn_package(musicnn_tagger):
    (result,) = list(tag.tag_tracks(musicnn_tagger, [WAV_12S], embeddings=True))
    ref = np.load(REFERENCE)
    # 12 s at 16 kHz: 751 frames -> floor(751 / 187) = 4 windows of 2.992 s, as musicnn.
    assert result.taggram.shape == ref["MTT_musicnn_taggram"].shape == (4, 50)
    np.testing.assert_allclose(result.starts, [0.0, 2.992, 5.984, 8.976])
    assert result.window_seconds == pytest.approx(2.992) and not result.padded
    assert result.seconds == pytest.approx(12.0)
    assert list(ref["tags"]) == musicnn_tagger.tags
    # Essentia's mel vs the package's librosa mel: per-window probabilities within 0.02.
    np.testing.assert_allclose(result.taggram, ref["MTT_musicnn_taggram"], atol=0.02)
    top = lambda p: list(np.argsort(-p)[:5])  # noqa: E731
    assert top(result.probabilities) == top(ref["MTT_musicnn_taggram"].mean(axis=0))
    assert result.embeddings.shape == (4, 200) and result.mean_embedding.shape == (200,)


def test_chunked_equals_unchunked_and_padded_short_file(musicnn_tagger, tmp_path):
    audio, sr = soundfile.read(WAV_12S, dtype="float32")
    long = np.concatenate([audio] * 5)  # 60 s
    path = str(tmp_path / "long.wav")
    soundfile.write(path, long, sr)
    (small,) = list(tag.tag_tracks(musicnn_tagger, [path], block_seconds=1.0))
    (large,) = list(tag.tag_tracks(musicnn_tagger, [path], block_seconds=600.0))
    assert small.taggram.shape == (features.frame_count(long.size) // 187, 50) == (20, 50)
    np.testing.assert_allclose(small.taggram, large.taggram, atol=1e-5)
    short = str(tmp_path / "short.wav")
    soundfile.write(short, audio[: sr * 2], sr)
    (padded,) = list(tag.tag_tracks(musicnn_tagger, [short]))
    assert padded.padded and padded.taggram.shape == (1, 50)
    np.testing.assert_allclose(padded.starts, [0.0])


def test_cli_tags_a_folder_with_a_pretrained_model(tmp_path):
    folder = tmp_path / "music"
    (folder / "sub").mkdir(parents=True)
    audio, sr = soundfile.read(WAV_12S, dtype="float32")
    soundfile.write(str(folder / "a.wav"), audio, sr)
    soundfile.write(str(folder / "sub" / "b.flac"), audio[: sr * 7], sr)
    (folder / "broken.ogg").write_bytes(b"OggS not really")
    out = tmp_path / "out" / "tags.json"
    proc = run_module("tftag.main", "--mode=tag", "--pretrained=MTT_musicnn", f"--audio={folder}",
                      f"--output={out}", f"--taggram_dir={tmp_path / 'tg'}", "--plot",
                      "--embeddings")
    assert "tagged 2/3 files with MTT_musicnn" in proc.stdout
    result = json.loads(out.read_text())
    assert result["window_seconds"] == pytest.approx(2.992) and len(result["tags"]) == 50
    a = result["files"][str(folder / "a.wav")]
    assert a["windows"] == 4 and len(a["taggram"]["probabilities"]) == 4 and not a["padded"]
    assert a["taggram"]["end"][0] == pytest.approx(2.992)
    assert len(a["top"]) == 5
    b = result["files"][str(folder / "sub" / "b.flac")]
    assert b["windows"] == 2  # 7 s: 438 frames -> 2 windows
    assert [f["path"] for f in result["failures"]] == [str(folder / "broken.ogg")]
    failures = (out.parent / "tags.failures.jsonl").read_text().splitlines()
    assert len(failures) == 1 and "broken.ogg" in failures[0]
    npz = np.load(tmp_path / "tg" / "sub__b.npz")
    assert npz["taggram"].shape == (2, 50) and list(npz["end"]) == pytest.approx([2.992, 5.984])
    emb = np.load(tmp_path / "tg" / "a.embeddings.npz")
    assert emb["windows"].shape == (4, 200) and emb["mean"].shape == (200,)
    assert (tmp_path / "tg" / "a.png").read_bytes()[:4] == b"\x89PNG"
    rows = (tmp_path / "tg" / "a.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("start,end,guitar")
    csv_out = tmp_path / "tags.csv"
    run_module("tftag.main", "--mode=tag", "--pretrained=MTT_vgg", f"--audio={folder / 'a.wav'}",
               f"--output={csv_out}")
    lines = csv_out.read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("path,seconds,windows,padded,")


def test_pretrained_export_has_track_signatures(musicnn_tagger, tmp_path):
    import tensorflow as tf

    run_module("tftag.main", "--mode=export", "--pretrained=MTT_musicnn",
               f"--export_dir={tmp_path}")
    version = tmp_path / "MTT_musicnn" / "1"
    loaded = tf.saved_model.load(str(version))
    assert {"serving_default", "serving_example", "serving_waveform", "serving_window",
            "serving_track"} <= set(loaded.signatures)
    assert (version / "essentia" / "MTT_musicnn.pb").exists()
    audio, _ = soundfile.read(WAV_12S, dtype="float32")
    out = loaded.signatures["serving_track"](audio=tf.constant(audio))
    (want,) = list(tag.tag_tracks(musicnn_tagger, [WAV_12S], embeddings=True))
    assert out["taggram"].shape == (4, 50) and not bool(out["padded"])
    np.testing.assert_allclose(out["taggram"].numpy(), want.taggram, atol=1e-4)
    np.testing.assert_allclose(out["probabilities"].numpy(), want.probabilities, atol=1e-4)
    np.testing.assert_allclose(out["window_start_seconds"].numpy(), want.starts, atol=1e-5)
    np.testing.assert_allclose(out["embedding"].numpy(), want.mean_embedding, atol=1e-3)
    short = loaded.signatures["serving_track"](audio=tf.constant(audio[:16000]))
    assert short["taggram"].shape == (1, 50) and bool(short["padded"])
    # The export tags like the pretrained model: --model_dir gives the same taggram.
    from_export = tag.Tagger.from_export(str(tmp_path / "MTT_musicnn"))
    (again,) = list(tag.tag_tracks(from_export, [WAV_12S]))
    np.testing.assert_allclose(again.taggram, want.taggram, atol=1e-5)


def test_usage_errors(tmp_path):
    proc = run_module("tftag.main", "--mode=tag", f"--audio={WAV_12S}", check=False)
    assert proc.returncode == 2
    from tftag.models import pretrained

    known = ", ".join(pretrained.names())  # the ports, then any shipped student
    assert f"--mode=tag needs --pretrained ({known}) or --model_dir" in proc.stderr
    proc = run_module("tftag.main", "--mode=tag", "--pretrained=MTT_rnn", f"--audio={WAV_12S}",
                      check=False)
    assert proc.returncode == 2 and "MTT_musicnn" in proc.stderr


def test_pretrained_names_are_the_ports():
    from tftag.models import pretrained

    assert set(pretrained.ports()) == set(pretrained.VARIABLE_MAPS)
    assert set(tag.PRETRAINED) == set(pretrained.ports()) | set(pretrained.students())


def test_one_list_of_pretrained_models():
    from tftag import experiment
    from tftag.delivery import export
    from tftag.extraction import teacher
    from tftag.models import pretrained

    assert pretrained.ports() == ["MTT_musicnn", "MTT_vgg"]
    assert pretrained.names() == list(tag.PRETRAINED)
    assert teacher.parse_labels("teacher:MTT_vgg") == "MTT_vgg"
    with pytest.raises(ValueError, match="labels must be one of catalog, teacher:MTT_musicnn, "
                                         "teacher:MTT_vgg, got 'teacher:MTT_rnn'"):
        teacher.parse_labels("teacher:MTT_rnn")
    with pytest.raises(ValueError, match="--pretrained='MTT_rnn': unknown pretrained model "
                                         "'MTT_rnn'; known: MTT_musicnn, MTT_vgg"):
        tag.Tagger.pretrained("MTT_rnn")
    with pytest.raises(ValueError, match="unknown pretrained model 'MTT_rnn'; known: "
                                         "MTT_musicnn, MTT_vgg"):
        export.export_pretrained("MTT_rnn", experiment.ExportConfig())
    with pytest.raises(ValueError, match="registered twice"):
        pretrained.REGISTRY.register("MTT_vgg")(
            pretrained.PretrainedModel("MTT_vgg", pretrained.get("MTT_musicnn").model_config, ()))


def test_tag_arguments_are_checked_by_the_library():
    from tftag.models import pretrained

    known = ", ".join(pretrained.names())
    with pytest.raises(ValueError, match=rf"^--mode=tag needs --pretrained \({known}\) "
                                         r"or --model_dir \(an exported model\), not both$"):
        tag.check_args("export/x", "MTT_musicnn", None)
    with pytest.raises(ValueError, match="--mode=tag needs --pretrained"):
        tag.check_args(None, None, None)
    with pytest.raises(ValueError, match="^--server scores with a served export: give its "
                                         "--model_dir$"):
        tag.check_args(None, "MTT_musicnn", "localhost:8500")
    tag.check_args("export/x", None, "localhost:8500")
    tag.check_args(None, "MTT_vgg", None)
    with pytest.raises(ValueError, match="--server scores with a served export"):
        tag.tag(None, WAV_12S, "out.json", "localhost:8500", pretrained="MTT_musicnn")


def test_export_layout_finds_the_latest_version_without_tensorflow(tmp_path):
    import subprocess
    import sys

    from tftag.delivery import export_layout

    base = tmp_path / "vgg-x"
    for version in ("2", "10", ".reserved-11", "tmp"):
        (base / version / "assets").mkdir(parents=True)
    (base / "10" / "assets" / "tags.txt").write_text("rock\npiano\n\n")
    assert export_layout.model_version_dir(str(base)) == str(base / "10")
    assert export_layout.model_name(str(base / "10") + "/") == "vgg-x"
    assert export_layout.load_tags(str(base / "10")) == ["rock", "piano"]
    with pytest.raises(FileNotFoundError, match="no essentia/.*model card"):
        export_layout.read_model_card(str(base / "10"))
    with pytest.raises(FileNotFoundError, match="--model_dir=.* holds no SavedModel version"):
        export_layout.model_version_dir(str(tmp_path / "none"))
    code = ("import sys, tftag.tagging.tag, tftag.delivery.export_layout; "
            "print('tensorflow' in sys.modules, 'tftag.delivery.export' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def test_decoding_workers_tag_bit_for_bit_as_one_thread(musicnn_tagger, tmp_path):
    audio, sr = soundfile.read(WAV_12S, dtype="float32")
    files = [str(tmp_path / "a.wav"), str(tmp_path / "short.wav"), str(tmp_path / "b.flac"),
             str(tmp_path / "broken.wav"), str(tmp_path / "c.wav")]
    soundfile.write(files[0], audio, sr)
    soundfile.write(files[1], audio[: sr * 2], sr)  # padded to one window
    soundfile.write(files[2], np.stack([audio, audio[::-1]], axis=1), 44100)  # resampled
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    soundfile.write(files[4], np.concatenate([audio] * 3), sr)  # several batches
    one = list(tag.tag_tracks(musicnn_tagger, files, embeddings=True, workers=1))
    two = list(tag.tag_tracks(musicnn_tagger, files, embeddings=True, workers=2))
    assert [r["path"] for r in one if isinstance(r, dict)] == [files[3]]
    by_path = {r["path"] if isinstance(r, dict) else r.path: r for r in two}
    assert len(two) == len(one) == 5 and set(by_path) == set(files)
    for r in one:
        if isinstance(r, dict):
            assert by_path[r["path"]] == r
            continue
        other = by_path[r.path]
        np.testing.assert_array_equal(other.taggram, r.taggram)  # bit for bit
        np.testing.assert_array_equal(other.embeddings, r.embeddings)
        assert (other.seconds, other.padded) == (r.seconds, r.padded)
