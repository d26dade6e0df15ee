"""The one windowing rule (tftag.patches): window starts and padding on the edge cases, hand
computed; the NumPy, in-graph and streaming cuts agree; clip scores equal the rule evaluation
used before it had a home, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tftag import patches
from tftag.tagging import tracks
from tftag.features import MelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("n_frames, window, hop, full, starts", [
    (10, 187, None, 0, [0]),  # shorter than one window: zero-padded to one
    (186, 187, None, 0, [0]),
    (187, 187, None, 1, [0]),  # exactly one window
    (373, 187, None, 1, [0]),  # one frame short of two: the tail is dropped
    (374, 187, None, 2, [0, 187]),  # an exact multiple
    (1000, 187, None, 5, [0, 187, 374, 561, 748]),  # remainder of 65 frames dropped
    (1000, 187, 93, 9, [0, 93, 186, 279, 372, 465, 558, 651, 744]),  # hop < window
    (10, 4, 3, 3, [0, 3, 6]),  # 6 + 4 = 10 fits, 9 + 4 does not
    (10, 2, 4, 3, [0, 4, 8]),  # hop > window: frames between windows are skipped
    (10, 4, 0, 2, [0, 4]),  # hop 0 = the window length (--window_hop=0)
    (3, 4, 1, 0, [0]),
])
def test_window_starts(n_frames, window, hop, full, starts):
    assert patches.full_windows(n_frames, window, hop) == full
    assert patches.n_windows(n_frames, window, hop) == len(starts) == max(1, full)
    got = patches.window_starts(n_frames, window, hop)
    assert got.dtype == np.int64 and got.tolist() == starts


def test_bad_window_sizes_are_errors():
    with pytest.raises(ValueError, match="window_frames must be >= 1, got 0"):
        patches.n_windows(10, 0)
    with pytest.raises(ValueError, match="hop_frames must be >= 1 or None, got -2"):
        patches.window_starts(10, 4, -2)


@pytest.mark.parametrize("n_frames, window, hop", [
    (3, 4, None), (4, 4, None), (8, 4, None), (11, 4, None), (11, 4, 3), (11, 4, 5)])
def test_windows_cut_and_pad(n_frames, window, hop):
    mel = (np.arange(2 * n_frames * 3, dtype=np.float32) + 1).reshape(2, n_frames, 3)
    got = patches.windows(mel, window, hop)
    starts = patches.window_starts(n_frames, window, hop)
    assert got.shape == (2, len(starts), window, 3) and got.dtype == np.float32
    for w, s in enumerate(starts):
        part = mel[:, s:s + window]
        np.testing.assert_array_equal(got[:, w, :part.shape[1]], part)
        assert not got[:, w, part.shape[1]:].any()  # zero padding of a short clip only
    if n_frames < window:
        assert got.shape[1] == 1 and not got[:, 0, n_frames:].any()


def test_windows_hand_computed():
    mel = np.arange(1, 8, dtype=np.float32).reshape(1, 7, 1)  # frames 1..7
    assert patches.windows(mel, 3)[0, :, :, 0].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert patches.windows(mel, 3, 2)[0, :, :, 0].tolist() == [[1, 2, 3], [3, 4, 5], [5, 6, 7]]
    assert patches.windows(mel[:, :2], 3)[0, :, :, 0].tolist() == [[1, 2, 0]]


@pytest.mark.parametrize("n_frames, hop", [(3, None), (4, None), (8, None), (11, None),
                                           (11, 3), (2, 1)])
def test_in_graph_track_windows_equal_numpy(n_frames, hop):
    import tensorflow as tf

    mel = np.random.default_rng(n_frames).normal(size=(n_frames, 5)).astype(np.float32)
    got, padded = patches.track_windows_tf(tf.constant(mel), 4, hop)
    np.testing.assert_array_equal(got.numpy(), patches.windows(mel[None], 4, hop)[0])
    assert bool(padded.numpy()) is (n_frames < 4)


@pytest.mark.parametrize("n_frames, hop, block", [(10, None, 7), (187, None, 50), (374, None, 1),
                                                  (1000, 93, 64), (1000, None, 333)])
def test_streaming_windows_equal_the_rule(n_frames, hop, block):
    spec = tracks.WindowSpec(MelConfig(16000, 6, 1, "log"), 187, hop)
    mel = np.random.default_rng(0).normal(size=(n_frames, 6)).astype(np.float32)
    cutter = tracks.Windows(spec)
    got = np.concatenate([cutter.push(mel[i:i + block]) for i in range(0, n_frames, block)]
                         + [cutter.finish()])
    np.testing.assert_array_equal(got, patches.windows(mel[None], 187, hop)[0])
    assert cutter.padded is (n_frames < 187) and spec.n_windows(n_frames) == len(got)


def test_evenly_spaced():
    assert patches.evenly_spaced(10, 2) == [2, 7]  # round(0.5·5 - 0.5), round(1.5·5 - 0.5)
    assert patches.evenly_spaced(5, 2) == [1, 3]  # round(0.75), round(3.25)
    assert patches.evenly_spaced(7, 1) == [3]  # the centre window
    assert patches.evenly_spaced(3, 3) == patches.evenly_spaced(3, None) == [0, 1, 2]
    with pytest.raises(ValueError, match="max_patches must be >= 1 or None, got 0"):
        patches.evenly_spaced(4, 0)


def _old_patch_scores(model, mel, patch_frames, max_patches=None):
    """evaluate.patch_scores as it was before tftag.patches (the oracle of bit-identity)."""
    import tensorflow as tf

    if patch_frames is None or patch_frames == mel.shape[1]:
        return tf.sigmoid(model(mel, training=False))
    n_frames, n_mels = mel.shape[1], mel.shape[2]
    n_patches = max(1, n_frames // patch_frames)
    if n_frames < patch_frames:
        mel = tf.pad(mel, [[0, 0], [0, patch_frames - n_frames], [0, 0]])
    cut = tf.reshape(mel[:, : n_patches * patch_frames], [-1, n_patches, patch_frames, n_mels])
    if max_patches is not None and max_patches < n_patches:
        keep = sorted({int(round((i + 0.5) * n_patches / max_patches - 0.5))
                       for i in range(max_patches)})
        cut = tf.gather(cut, keep, axis=1)
        n_patches = len(keep)
    cut = tf.reshape(cut, [-1, patch_frames, n_mels])
    probabilities = tf.sigmoid(model(cut, training=False))
    return tf.reduce_mean(tf.reshape(probabilities, [-1, n_patches, probabilities.shape[-1]]), axis=1)


@pytest.fixture(scope="module")
def tiny_model():
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, 6))
    x = keras.layers.Conv1D(4, 3, activation="elu")(inputs)
    x = keras.layers.GlobalMaxPooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(5)(x))


@pytest.mark.parametrize("n_frames, patch, max_patches", [
    (5, 8, None), (8, 8, None), (16, 8, None), (21, 8, None), (21, None, None),
    (45, 8, 1), (45, 8, 2), (45, 8, 9)])
def test_mean_probabilities_equal_the_old_rule(tiny_model, n_frames, patch, max_patches):
    import tensorflow as tf

    from tftag import evaluate

    mel = tf.constant(np.random.default_rng(n_frames).normal(size=(3, n_frames, 6)), tf.float32)
    want = _old_patch_scores(tiny_model, mel, patch, max_patches).numpy()
    got = patches.mean_probabilities(tiny_model, mel, patch, max_patches).numpy()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(evaluate.patch_scores(tiny_model, mel, patch, max_patches), want)
    if patch is not None and max_patches is None:  # the mean over the cut windows, by hand
        cut = patches.windows(mel.numpy(), patch)
        per_window = tf.sigmoid(tiny_model(cut.reshape(-1, patch, 6))).numpy().reshape(3, -1, 5)
        np.testing.assert_allclose(got, per_window.mean(axis=1), rtol=1e-6)


def test_importing_patches_imports_no_tensorflow_and_no_tftag_module():
    code = ("import sys, tftag.patches; "
            "print('tensorflow' in sys.modules, sorted(m for m in sys.modules "
            "if m.startswith('tftag')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False ['tftag', 'tftag.patches']"
