"""MelConfig, the Essentia mel chain, its librosa parity and decimation/compression identities."""

from __future__ import annotations

import dataclasses
import gc
import os
import subprocess
import sys

import numpy as np
import pytest

from tftag import features
from tftag.audio import _essentia_ops, compressions
from tftag.features import MelConfig

from conftest import ROOT, tone_mix, write_clip

# Frames per 29.1-s crop at hop 256·k, as in the paper (Essentia framing, ceil(N1/k)).
PAPER_FRAMES = {
    12000: {1: 1366, 2: 683, 3: 456, 4: 342, 5: 274, 10: 137},
    16000: {1: 1820, 2: 910, 3: 607, 4: 455, 5: 364, 10: 182},
}


# ----------------------------------------------------------------------------- MelConfig


def test_properties():
    c = MelConfig(16000, 96, 1, "log")
    assert (c.n_fft, c.hop_length, c.n_samples, c.n_frames, c.fmax) == (512, 256, 465600, 1820, 8000)
    assert c.name == "sr16000-mel96-hop1-log"
    assert c.base_name == "sr16000-mel96"
    assert c.shape == (1820, 96)
    assert c.base == MelConfig(16000, 96, 1, "power")
    c12 = MelConfig(12000, 48, 3, "db")
    assert (c12.hop_length, c12.n_samples, c12.n_frames_hop1, c12.n_frames) == (768, 349200, 1366, 456)
    assert c12.name == "sr12000-mel48-hop3-db"
    assert MelConfig.from_name(c12.name) == c12
    assert c12.replace(hop_factor=10).n_frames == 137
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.sr = 12000


@pytest.mark.parametrize("sr", [12000, 16000])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 10])
def test_frames_match_paper_table(sr, k):
    assert MelConfig(sr, 96, k, "db").n_frames == PAPER_FRAMES[sr][k]


def test_paper_grid():
    grid = MelConfig.paper_grid()
    assert len(grid) == 168
    assert len({c.name for c in grid}) == 168
    assert len({(c.sr, c.shape) for c in grid}) == 84
    assert {c.sr for c in grid} == {12000, 16000}
    assert {c.n_mels for c in grid} == {128, 96, 48, 32, 24, 16, 8}
    assert {c.hop_factor for c in grid} == {1, 2, 3, 4, 5, 10}
    assert {c.compression for c in grid} == {"db", "log"}


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(sr=7999), ValueError, "sr must be one of 12000, 16000 (paper) or any int >= 8000, got 7999"),
        (dict(sr=16000.0), TypeError, "sr must be an int"),
        (dict(n_mels=3), ValueError, "n_mels must be one of 128, 96, 48, 32, 24, 16, 8 or any int in "
                                     "[4, 256], got 3"),
        (dict(n_mels=257), ValueError, "any int in [4, 256], got 257"),
        (dict(hop_factor=0), ValueError,
         "hop_factor must be one of 1, 2, 3, 4, 5, 10 or any int >= 1, got 0"),
        (dict(hop_factor=True), TypeError, "hop_factor must be an int"),
        (dict(compression="ln"), ValueError, "compression must be one of db, log, power, got 'ln'"),
        (dict(duration=0), ValueError, "duration must be a positive number of seconds"),
        (dict(duration=float("nan")), ValueError, "duration must be a positive number of seconds"),
        (dict(duration=0.01), ValueError, "shorter than one 512-sample frame"),
    ],
)
def test_validation(kwargs, error, message):
    args = dict(sr=16000, n_mels=96, hop_factor=1, compression="log") | kwargs
    with pytest.raises(error) as err:
        MelConfig(**args)
    assert message in str(err.value)


def test_non_paper_values_accepted():
    c = MelConfig(22050, 4, 7, "power", duration=3.0)
    assert (c.n_samples, c.hop_length, c.fmax) == (66150, 1792, 11025)
    # Essentia framing of 66150 samples at hop 256: ceil((66150 + 256) / 256) = 260 frames;
    # hop ×7 keeps every 7th: ceil(260 / 7) = 38 (= 38 frames at hop 1792).
    assert c.n_frames_hop1 == 260 and c.n_frames == 38 and c.shape == (38, 4)
    assert c.name == "sr22050-mel4-hop7-power"


def test_bad_name():
    with pytest.raises(ValueError, match="expected sr<SR>-mel<N_MELS>-hop<K>"):
        MelConfig.from_name("16k-96")


# ----------------------------------------------------------------------------- framing


@pytest.mark.parametrize("n", [1, 100, 255, 256, 257, 512, 513, 1000, 349200, 465600])
@pytest.mark.parametrize("hop", [256, 512, 768, 2560])
def test_frame_count_matches_essentia(n, hop):
    import essentia.standard as es

    frames = es.FrameGenerator(np.ones(n, np.float32), frameSize=512, hopSize=hop,
                               startFromZero=False)
    assert features.frame_count(n, hop) == sum(1 for _ in frames)


@pytest.mark.parametrize("sr", [12000, 16000])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 10])
def test_decimated_count_equals_essentia_hop(sr, k):
    c = MelConfig(sr, 96, k, "db")
    assert c.n_frames == features.frame_count(c.n_samples, 256 * k)


# ----------------------------------------------------------------------------- the mel chain


@pytest.fixture(scope="module")
def audio16():
    return tone_mix(6.0, 16000, seed=3)


def test_window_and_filterbank_come_from_essentia():
    w = features.hann_window()
    assert w.shape == (512,) and w[0] == 0 and np.allclose(w, w[::-1])
    np.testing.assert_allclose(w, np.hanning(512), atol=1e-7)  # symmetric Hann
    fb = features.mel_filterbank(16000, 96)
    assert fb.shape == (257, 96) and fb.dtype == np.float32
    assert np.all(fb.sum(axis=0) > 0)  # no empty band


@pytest.mark.parametrize("n_mels", [96, 48, 8])
@pytest.mark.parametrize("k", [1, 3])
def test_equals_essentia_frame_by_frame(audio16, n_mels, k):
    """Vectorised chain == FrameGenerator -> Windowing -> Spectrum -> MelBands at hop 256·k."""
    ours = features.melspectrogram(audio16, MelConfig(16000, n_mels, k, "power"))
    ref = _essentia_ops.essentia_mel_reference(audio16, 16000, n_mels, 256 * k)
    assert ours.shape == ref.shape == (features.frame_count(audio16.size, 256 * k), n_mels)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6 * ref.max())


@pytest.mark.parametrize("sr", [12000, 16000])
@pytest.mark.parametrize("n_mels", [128, 96, 48, 8])
def test_matches_librosa_slaney(sr, n_mels):
    """librosa Slaney mel (htk=False, norm='slaney', power 2, symmetric Hann, constant pad)."""
    import librosa

    y = tone_mix(5.0, sr, seed=n_mels)
    ours = features.melspectrogram(y, MelConfig(sr, n_mels, 1, "power"))
    ref = librosa.feature.melspectrogram(
        y=y, sr=sr, n_fft=512, hop_length=256, n_mels=n_mels, window=np.hanning(512),
        center=True, pad_mode="constant", htk=False, norm="slaney", power=2.0,
    ).T
    # librosa's center=True gives 1 + n//256 frames, Essentia ceil(n/256) + 1 (one more here).
    assert ours.shape[0] == features.frame_count(y.size) and ref.shape[0] == 1 + y.size // 256
    common = ours[: ref.shape[0]]
    rel = np.abs(common - ref) / np.maximum(ref, 1e-12)
    assert np.median(rel) <= 5e-4, np.median(rel)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 10])
def test_decimation_equals_direct_hop(audio16, k):
    direct = _essentia_ops.essentia_mel_reference(audio16, 16000, 48, 256 * k)
    decimated = features.decimate(features.melspectrogram(audio16, MelConfig(16000, 48, 1, "power")), k)
    np.testing.assert_allclose(decimated, direct, rtol=1e-4, atol=1e-6 * direct.max())


def test_compressions():
    x = np.array([0.0, 1e-12, 1e-10, 1e-3, 1.0, 100.0], np.float32)
    np.testing.assert_allclose(features.compress(x, "db"), [-100, -100, -100, -30, 0, 20], atol=1e-4)
    np.testing.assert_allclose(features.compress(x, "log"), np.log10(1 + 1e4 * x.astype(np.float64)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(features.compress(x, "power"), x)
    # float16 storage is cast before compressing: 10000·x would overflow float16 above 6.55.
    big = np.array([10.0, 1000.0], np.float16)
    assert np.all(np.isfinite(features.compress(big, "log")))
    assert features.compress(big, "log").dtype == np.float32
    with pytest.raises(ValueError, match="compression must be one of db, log, power"):
        features.compress(x, "ln")


@pytest.mark.parametrize("name", compressions.names())
def test_each_compression_has_equal_numpy_and_graph_transforms(name):
    import tensorflow as tf

    compression = compressions.get(name)
    assert compression.name == name and compressions.get(compression) is compression
    assert MelConfig.from_name(f"sr16000-mel96-hop1-{name}").compression == name
    rng = np.random.default_rng(3)
    power = np.concatenate([[0.0, 1e-12, 1e-10, 1e-3, 1.0, 100.0],
                            rng.random(994) ** 6 * 50]).astype(np.float32).reshape(100, 10)
    expected = compression.numpy(power)
    assert expected.dtype == np.float32 and expected.shape == power.shape
    np.testing.assert_array_equal(expected, features.compress(power, name))
    eager = compression.tf(tf.constant(power)).numpy()
    graph = tf.function(compression.tf)(tf.constant(power)).numpy()
    assert eager.dtype == graph.dtype == np.float32
    np.testing.assert_allclose(eager, expected, rtol=1e-6, atol=2e-5)
    np.testing.assert_allclose(graph, expected, rtol=1e-6, atol=2e-5)  # grappler may reorder
    # float16 input: cast to float32 first in both (10000·x overflows float16 above 6.55).
    half = power.astype(np.float16)
    np.testing.assert_allclose(compression.tf(tf.constant(half)).numpy(), compression.numpy(half),
                               rtol=1e-6, atol=2e-5)
    assert np.all(np.isfinite(compression.numpy(half)))


def test_compression_registry_names_and_unknown_name():
    assert compressions.names() == list(features.COMPRESSIONS) == ["db", "log", "power"]
    assert set(features.PAPER_COMPRESSIONS) <= set(compressions.names())
    for bad in ("ln", "DB", None):
        with pytest.raises(ValueError, match=f"compression must be one of db, log, power, got {bad!r}"):
            compressions.get(bad)
    with pytest.raises(ValueError, match="compression must be one of db, log, power, got 'ln'"):
        MelConfig(16000, 96, 1, "ln")
    with pytest.raises(ValueError, match=r"bad mel config name 'sr16000-mel96-hop1-ln'; expected "
                                         r"sr<SR>-mel<N_MELS>-hop<K>-<db\|log\|power>"):
        MelConfig.from_name("sr16000-mel96-hop1-ln")


def test_derive_is_decimate_then_compress(audio16):
    base = features.melspectrogram(audio16, MelConfig(16000, 48, 1, "power"))
    for c in features.grid([16000], [48], [1, 2, 5], ["db", "log", "power"], duration=6.0):
        np.testing.assert_array_equal(features.derive(base, c), features.melspectrogram(audio16, c))
    with pytest.raises(ValueError, match="base mel has 48 bands, expected 96"):
        features.derive(base, MelConfig(16000, 96, 1, "db"))


@pytest.mark.parametrize("sr", [12000, 16000])
def test_melspectrograms_shared_path_equals_individual(sr):
    y = tone_mix(4.0, sr, seed=1)
    configs = [c for c in MelConfig.paper_grid(duration=4.0) if c.sr == sr]
    out = features.melspectrograms(y, sr, configs)
    assert sorted(out) == sorted(c.name for c in configs) and len(out) == 84
    for c in configs:
        np.testing.assert_array_equal(out[c.name], features.melspectrogram(y, c))
    with pytest.raises(ValueError, match="configs at sr"):
        features.melspectrograms(y, 22050, configs)


def test_crop():
    y = np.arange(10, dtype=np.float32) + 1
    c = features.crop(y, sr=2, duration=3.0)  # 6 samples, centred
    np.testing.assert_array_equal(c.audio, [3, 4, 5, 6, 7, 8])
    assert (c.padded, c.original_samples) == (False, 10)
    p = features.crop(y[:3], sr=2, duration=3.0)  # 3 samples padded to 6, centred
    np.testing.assert_array_equal(p.audio, [0, 1, 2, 3, 0, 0])
    assert (p.padded, p.original_samples) == (True, 3)
    assert features.crop(tone_mix(40, 16000), 16000).audio.shape == (465600,)
    with pytest.raises(ValueError, match="mono"):
        features.crop(np.zeros((4, 2)), 2, 1.0)


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "name, sr_in, kwargs",
    [
        ("x.wav", 16000, {}),
        ("x.flac", 44100, {}),
        ("x.ogg", 22050, {"format": "OGG", "subtype": "VORBIS"}),
        ("x.mp3", 16000, {"format": "MP3"}),
        ("x24.wav", 48000, {"subtype": "PCM_24", "channels": 2}),
        ("x8.wav", 8000, {"subtype": "PCM_U8"}),
        ("x.opus", 48000, {"format": "OGG", "subtype": "OPUS"}),
        ("ü é.wav", 16000, {}),
    ],
)
def test_load_audio_formats(tmp_path, name, sr_in, kwargs):
    path = write_clip(str(tmp_path / name), 3.0, sr_in, seed=2, **kwargs)
    for sr in (12000, 16000):
        y = features.load_audio(path, sr)
        assert y.dtype == np.float32 and y.ndim == 1
        # Lossy codecs add encoder delay/padding; length stays within 0.1 s of 3 s.
        assert abs(y.size - 3 * sr) <= 0.1 * sr, y.size
        assert 0.3 < np.abs(y).max() <= 1.01
    ref = tone_mix(3.0, 16000, seed=2)
    if name == "x.wav":
        np.testing.assert_allclose(features.load_audio(path, 16000), ref, atol=1e-4)


def test_load_audio_errors(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(features.AudioDecodeError, match=r"empty\.wav: empty file \(0 bytes\)"):
        features.load_audio(tmp_path / "empty.wav", 16000)
    with pytest.raises(features.AudioDecodeError, match=r"text\.wav: Essentia could not decode"):
        features.load_audio(tmp_path / "text.wav", 16000)
    with pytest.raises(FileNotFoundError, match=r"nope\.wav: no such audio file"):
        features.load_audio(tmp_path / "nope.wav", 16000)


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def test_opus_does_not_abort_the_process(tmp_path):
    """Essentia's MonoLoader on Opus raises, then aborts at the next gc: tftag must not."""
    path = write_clip(str(tmp_path / "a.opus"), 2.0, 48000, format="OGG", subtype="OPUS")
    proc = _run_python(
        "import gc\nfrom tftag import features\n"
        f"y = features.load_audio({path!r}, 16000)\n"
        "gc.collect()\nfor _ in range(3): features.load_audio(" + repr(path) + ", 12000); gc.collect()\n"
        "print('samples', y.size)\n"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = int(proc.stdout.split("samples ")[1].split()[0])
    assert 32000 <= samples < 33000, samples  # 2 s at 16 kHz, plus codec padding


@pytest.mark.parametrize("order", ["tensorflow_first", "tftag_first", "essentia_first"])
def test_any_import_order_works(tmp_path, order):
    path = write_clip(str(tmp_path / "a.wav"), 2.0, 16000, seed=4)
    imports = {
        "tensorflow_first": "import tensorflow as tf\nfrom tftag import features\n",
        "tftag_first": "from tftag import features\nimport tensorflow as tf\n",
        "essentia_first": "import essentia.standard\nimport tensorflow as tf\nfrom tftag import features\n",
    }[order]
    proc = _run_python(
        imports
        + "import numpy as np, sys\n"
        f"y = features.load_audio({path!r}, 16000)\n"
        "m = features.melspectrogram(y, features.MelConfig(16000, 48, 1, 'log'))\n"
        "from tftag.storage import data\n"
        "print('sum %r' % float(m.astype(np.float64).sum()), tf.constant(m).shape,\n"
        "      'in_process', 'essentia' in sys.modules)\n"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = features.melspectrogram(features.load_audio(path, 16000),
                                       MelConfig(16000, 48, 1, "log")).astype(np.float64).sum()
    got = float(proc.stdout.split("sum ")[1].split()[0])
    assert got == pytest.approx(expected, rel=1e-9)
    assert "(126, 48)" in proc.stdout
    # Essentia is imported lazily: once TensorFlow is loaded, it runs in a child process instead
    # of aborting this one; it is in-process only where the user imported it before TensorFlow.
    assert ("in_process True" in proc.stdout) == (order == "essentia_first")


def test_worker_crash_is_reported_and_recovered():
    from tftag.audio._essentia import DecoderCrashedError, EssentiaWorker

    with EssentiaWorker(timeout=60) as worker:
        with pytest.raises(DecoderCrashedError, match="died with exit code"):
            worker.call("crash_for_test")
        assert worker.call("window", 4).shape == (4,)  # a fresh child took over
    gc.collect()
