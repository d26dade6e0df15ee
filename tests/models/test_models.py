"""Shape-adapted VGG-CNN and MUSICNN, the pool rule vs paper Table III, MACs, pretrained port."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from tftag import profile
from tftag.features import MelConfig
from tftag.models import ModelConfig, build, inference_fn, musicnn, names, pretrained, with_embedding
from tftag.models.vgg import vgg_pools

from conftest import FIXTURES

MUSICNN_FIXTURE = os.path.join(FIXTURES, "musicnn")  # provenance: its README.md

# Paper Table III: frequency pools per band count (any hop / sr) ...
TABLE_III_FREQ = {128: (2, 4, 4, 4), 96: (2, 4, 3, 4), 48: (2, 4, 3, 2), 32: (2, 2, 3, 2),
                  24: (2, 2, 3, 2), 16: (2, 2, 2, 2), 8: (2, 2, 2, 1)}
# ... and time pools per (sr, hop factor) (any band count).
TABLE_III_TIME = {
    12000: {1: (4, 5, 8, 8), 2: (4, 5, 8, 4), 3: (4, 5, 8, 2), 4: (4, 5, 8, 2), 5: (4, 5, 8, 1),
            10: (4, 5, 4, 1)},
    16000: {1: (4, 5, 9, 10), 2: (4, 5, 9, 5), 3: (4, 5, 9, 3), 4: (4, 5, 9, 2), 5: (4, 5, 9, 2),
            10: (4, 5, 9, 1)},
}
# The paper's GMAC per example (VGG-CNN, width 1, Table III pools).
PAPER_GMACS = {
    (12000, 1): {128: 13.20, 96: 10.01, 48: 5.01, 32: 4.13, 24: 3.16, 16: 2.18, 8: 1.09},
    (12000, 2): {128: 6.58, 96: 4.99, 48: 2.50, 32: 2.06, 24: 1.58, 16: 1.09, 8: 0.54},
    (12000, 10): {128: 1.29, 96: 0.98, 48: 0.49, 32: 0.40, 24: 0.31, 16: 0.21, 8: 0.11},
    (16000, 1): {128: 17.58, 96: 13.33, 48: 6.66, 32: 5.50, 24: 4.20, 16: 2.89, 8: 1.45},
    (16000, 3): {128: 5.81, 96: 4.40, 48: 2.20, 32: 1.81, 24: 1.38, 16: 0.95, 8: 0.47},
    (16000, 5): {128: 3.51, 96: 2.66, 48: 1.33, 32: 1.10, 24: 0.84, 16: 0.58, 8: 0.29},
}
GRID = [MelConfig(sr, m, k, "log") for sr in (12000, 16000) for m in (128, 96, 48, 32, 24, 16, 8)
        for k in (1, 2, 3, 4, 5, 10)]


def _chain(length, pools):
    sizes = []
    for p in pools:
        length //= p
        sizes.append(length)
    return sizes


@pytest.mark.parametrize("sr", [12000, 16000])
@pytest.mark.parametrize("n_mels", sorted(TABLE_III_FREQ))
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 10])
def test_pool_rule_equals_table_iii(sr, n_mels, k):
    config = MelConfig(sr, n_mels, k, "db")
    pools = vgg_pools(n_mels, config.n_frames, sr)
    assert tuple(f for f, _ in pools) == TABLE_III_FREQ[n_mels]
    assert tuple(t for _, t in pools) == TABLE_III_TIME[sr][k]
    assert _chain(n_mels, [f for f, _ in pools])[-1] == 1
    assert _chain(config.n_frames, [t for _, t in pools])[-1] == 1


def test_table_iii_sizes():
    """Table III's printed sizes: 96 bands 48,12,4,1; 12 kHz ×1 341,68,8,1; 16 kHz ×10 45,9,1,1."""
    assert _chain(96, [f for f, _ in vgg_pools(96, 1366, 12000)]) == [48, 12, 4, 1]
    assert _chain(1366, [t for _, t in vgg_pools(96, 1366, 12000)]) == [341, 68, 8, 1]
    assert _chain(182, [t for _, t in vgg_pools(96, 182, 16000)]) == [45, 9, 1, 1]
    # 456 frames (12 kHz ×3) and 455 (16 kHz ×4) take different third pools.
    assert vgg_pools(96, 456, 12000)[2][1] == 8 and vgg_pools(96, 455, 16000)[2][1] == 9


def test_pool_rule_is_valid_everywhere():
    rng = np.random.default_rng(0)
    cases = [(int(rng.integers(4, 300)), int(rng.integers(16, 4000)), int(rng.choice(
        [8000, 11025, 12000, 16000, 22050, 44100]))) for _ in range(500)]
    cases += [(4, 16, 8000), (5, 17, 16000), (256, 16, 44100), (7, 140, 12000), (96, 187, 16000)]
    for n_mels, n_frames, sr in cases:
        pools = vgg_pools(n_mels, n_frames, sr)
        for axis, length in ((0, n_mels), (1, n_frames)):
            sizes = _chain(length, [p[axis] for p in pools])
            assert min(sizes) >= 1 and sizes[-1] == 1, (n_mels, n_frames, sr, pools)
    with pytest.raises(ValueError, match="n_frames >= 16"):
        vgg_pools(96, 15, 16000)
    with pytest.raises(ValueError, match="n_mels >= 4"):
        vgg_pools(3, 100, 16000)


@pytest.mark.parametrize("key", sorted(PAPER_GMACS), ids=lambda k: f"sr{k[0]}-hop{k[1]}")
def test_analytic_macs_equal_paper(key):
    sr, k = key
    try:
        for n_mels, expected in PAPER_GMACS[key].items():
            model = build(ModelConfig("vgg"), MelConfig(sr, n_mels, k, "db"), 50)
            got = profile.analytic_macs(model) / 1e9
            assert got == pytest.approx(expected, rel=0.01, abs=0.006), (n_mels, got)
    finally:
        keras.backend.clear_session()  # once for the 7 width-1 models (~70 MB of weights each)


@pytest.mark.parametrize("model_config, mel", [
    (ModelConfig("vgg"), MelConfig(12000, 96, 1, "db")),
    (ModelConfig("vgg", width=0.25), MelConfig(16000, 8, 10, "log")),
    (ModelConfig("musicnn"), MelConfig(16000, 48, 2, "log")),
    (ModelConfig("musicnn", preset="musicnn_mtt", patch_seconds=3.0), MelConfig(16000, 96, 1, "log")),
    (ModelConfig("musicnn_vgg", patch_seconds=3.0), MelConfig(16000, 96, 1, "log")),
], ids=lambda x: getattr(x, "name", None))
def test_profiler_gmacs_equal_analytic(model_config, mel):
    model = build(model_config, mel, 50)
    gmacs = profile.gmacs(model)  # the TF profiler: slow, run once
    assert gmacs == pytest.approx(profile.analytic_macs(model) / 1e9, rel=0.01)
    if model_config.name == "vgg" and model_config.width == 1:
        assert gmacs == pytest.approx(10.01, rel=0.01)  # PAPER_GMACS[(12000, 1)][96]


# Forward passes on 14 of the 84 grid inputs: each of the 12 (sr, hop) frame counts paired with a
# band count so that all 7 band counts occur, plus the largest (16 kHz, 128 bands, hop 1) and the
# smallest (12 kHz, 8 bands, hop 10) input. Both models' kernels and pools depend on the band count
# along frequency and on (sr, hop) along time only (VGG: Table III; MUSICNN: musicnn_shapes), so
# these run every kernel and pool size the grid has.
_SR_HOPS = [(sr, k) for sr in (12000, 16000) for k in (1, 2, 3, 4, 5, 10)]
_BANDS = (128, 96, 48, 32, 24, 16, 8)
FORWARD_GRID = [MelConfig(sr, _BANDS[i % len(_BANDS)], k, "log") for i, (sr, k) in enumerate(_SR_HOPS)]
FORWARD_GRID += [MelConfig(16000, 128, 1, "log"), MelConfig(12000, 8, 10, "log")]


def test_forward_grid_covers_every_band_count_and_frame_count():
    assert {m.n_mels for m in FORWARD_GRID} == set(_BANDS)
    assert {(m.sr, m.hop_factor) for m in FORWARD_GRID} == set(_SR_HOPS)
    assert set(FORWARD_GRID) <= set(GRID) and len(set(FORWARD_GRID)) == 14


@pytest.mark.parametrize("name", ["vgg", "musicnn"])
def test_every_grid_resolution_builds_and_runs(name):
    """2 sr × 7 bands × 6 hops built at tiny widths (Keras infers every layer's shape), logits
    out; one forward pass on each FORWARD_GRID input."""
    config = ModelConfig(name, width=1 / 64 if name == "vgg" else 0.05)
    try:
        for mel in GRID:
            model = build(config, mel, 7)
            assert model.input_shape == (None, mel.n_frames, mel.n_mels)
            assert model.output_shape == (None, 7), mel.name
            # logits, not probabilities: no sigmoid at the output
            assert model.layers[-1].get_config().get("activation") in (None, "linear")
            if mel in FORWARD_GRID:
                x = np.random.default_rng(0).standard_normal((2, mel.n_frames, mel.n_mels)).astype(np.float32)
                y = model(x, training=False).numpy()
                assert y.shape == (2, 7) and np.all(np.isfinite(y)), mel.name
    finally:
        keras.backend.clear_session()


def test_patch_inputs_shorter_than_a_clip():
    # The patch rule: floor(seconds · sr / hop_length), at least 16, at most the whole crop.
    for mel, seconds, frames in ((MelConfig(16000, 96, 1, "log"), 3.0, 187),
                                 (MelConfig(12000, 8, 10, "log"), 3.0, 16),
                                 (MelConfig(12000, 8, 10, "log"), 1000.0, 137)):
        for name in ("vgg", "musicnn"):
            config = ModelConfig(name, width=0.05, patch_seconds=seconds)
            assert config.patch_frames(mel) == frames
            model = build(config, mel, 5)
            assert model(np.zeros((1, frames, mel.n_mels), np.float32)).shape == (1, 5)


def test_vgg_structure_and_width():
    model = build(ModelConfig("vgg"), MelConfig(12000, 96, 1, "db"), 50)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [128, 384, 768, 2048]
    assert model.get_layer("flatten").output.shape[-1] == 2048
    assert [type(layer).__name__ for layer in model.layers[1:4]] == ["Reshape", "BatchNormalization", "Conv2D"]
    half = build(ModelConfig("vgg", width=0.5), MelConfig(12000, 96, 1, "db"), 50)
    assert [c.filters for c in half.layers if isinstance(c, keras.layers.Conv2D)] == [64, 192, 384, 1024]


def test_musicnn_shapes():
    paper = musicnn.PRESETS["paper"]
    s96 = musicnn.musicnn_shapes(paper, 96, 1)
    assert sorted({h for _, h, _ in s96["timbral"]}) == [38, 86]
    assert sorted({w for w, _, _ in s96["timbral"]}) == [1, 3, 7]
    assert [t for t, _, _ in s96["temporal"]] == [165, 128, 64, 32]
    assert [t for t, _, _ in musicnn.musicnn_shapes(paper, 96, 10)["temporal"]] == [17, 13, 6, 3]
    assert musicnn.timbral_height(24, 0.4, "round") == 10  # the authors' code truncates to 9
    assert musicnn.timbral_height(24, 0.4, "truncate") == 9
    assert musicnn.timbral_height(8, 0.4, "round") == 3
    mtt = musicnn.musicnn_shapes(musicnn.PRESETS["musicnn_mtt"], 96, 1)
    assert mtt["timbral"] == [(7, 38, 204), (7, 67, 204)]
    assert mtt["temporal"] == [(128, 1, 51), (64, 1, 51), (32, 1, 51)]
    model = build(ModelConfig("musicnn", preset="musicnn_mtt", patch_seconds=3.0),
                  MelConfig(16000, 96, 1, "log"), 50)
    assert model.get_layer("frontend").output.shape[1:] == (187, 561)
    assert model.get_layer("midend").output.shape[1:] == (187, 753)
    assert model.get_layer("pooled").output.shape[1:] == (1506,)


def test_registry_and_config_errors():
    assert names() == ["musicnn", "musicnn_vgg", "vgg"]
    with pytest.raises(ValueError, match="unknown model 'vgg2'; known: musicnn, musicnn_vgg, vgg"):
        build(ModelConfig("vgg2"), MelConfig(16000, 96, 1, "log"), 50)
    with pytest.raises(ValueError, match="unknown musicnn preset 'big'; known: musicnn_mtt, paper"):
        build(ModelConfig("musicnn", preset="big"), MelConfig(16000, 96, 1, "log"), 50)
    with pytest.raises(ValueError, match="width must be > 0"):
        ModelConfig("vgg", width=0)
    with pytest.raises(ValueError, match="musicnn_vgg needs larger inputs"):
        build(ModelConfig("musicnn_vgg"), MelConfig(16000, 8, 1, "log"), 50)


# ----------------------------------------------------------------------------- pretrained


@pytest.fixture(scope="module")
def reference():
    return np.load(os.path.join(MUSICNN_FIXTURE, "reference.npz"))


@pytest.mark.parametrize("name", ["MTT_musicnn", "MTT_vgg"])
def test_pretrained_port_equals_the_musicnn_package(reference, name):
    """Sigmoid outputs of the port vs the musicnn package's taggram for the fixture's patches."""
    model = pretrained.load_musicnn(name)
    assert model.input_shape == (None, 187, 96) and model.output_shape == (None, 50)
    assert list(reference["tags"]) == list(pretrained.MTT_TAGS)
    logits = model(reference["patches"], training=False).numpy()
    probabilities = 1 / (1 + np.exp(-logits))
    assert np.abs(probabilities - reference[f"{name}_taggram"]).max() <= 1e-4
    # Inference mode: same outputs whatever the batch (BatchNorm uses moving statistics).
    single = model(reference["patches"][:1], training=False).numpy()
    np.testing.assert_allclose(single, logits[:1], rtol=1e-5, atol=1e-5)


def test_pretrained_input_is_tftag_log_mel(reference):
    """The fixture's mel is musicnn's librosa log-mel; tftag's chain gives the same patches."""
    from tftag import features

    audio = features.load_audio(os.path.join(MUSICNN_FIXTURE, "synthetic_12s.wav"), 16000)
    mel = features.melspectrogram(audio, pretrained.MEL_CONFIG)
    ref = reference["mel_log"]  # [751, 96], librosa periodic Hann and float16 power
    n = min(len(ref), len(mel))
    assert abs(len(ref) - len(mel)) <= 1
    assert np.median(np.abs(mel[:n] - ref[:n])) < 0.01


def test_pretrained_errors_list_unmatched_variables(monkeypatch):
    broken = [m for m in pretrained.VARIABLE_MAPS["MTT_vgg"] if not m[0].startswith("dense/")]
    monkeypatch.setitem(pretrained.VARIABLE_MAPS, "MTT_vgg", broken)
    with pytest.raises(ValueError) as err:
        pretrained.load_musicnn("MTT_vgg")
    assert "checkpoint variable dense/bias (50,) has no Keras weight" in str(err.value)
    assert "checkpoint variable dense/kernel (256, 50) has no Keras weight" in str(err.value)
    with pytest.raises(ValueError, match="unknown pretrained model 'MSD_big'; known: MTT_musicnn, MTT_vgg"):
        pretrained.load_musicnn("MSD_big")


# ----------------------------------------------------------------------------- fast inference


def _randomise_batchnorm(model, seed: int) -> None:
    """Moving statistics and affine parameters of every BatchNorm drawn at random, with about half
    of the scales negative and one exactly 0 (the cases the fast front-end's sign trick handles)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            gamma = rng.normal(0, 1, n).astype("float32")
            gamma[0] = 0.0
            layer.set_weights([gamma, rng.normal(0, 0.5, n).astype("float32"),
                               rng.normal(0, 0.5, n).astype("float32"),
                               rng.uniform(0.5, 2.0, n).astype("float32")])


def test_musicnn_weights_saved_before_fast_inference_still_load(tmp_path):
    """The Keras layer list is unchanged by the inference rewrite: a weights file saved by any
    tftag version loads (Keras 3 keys weights by layer class and order)."""
    from tftag.models import build

    config, mel = ModelConfig("musicnn", width=0.1, patch_seconds=1.0), MelConfig(16000, 16, 2, "log")
    model = build(config, mel, 5)
    kinds = [type(layer).__name__ for layer in model.layers if "conv" in layer.name]
    assert kinds == ["Conv2D"] * 10 + ["Conv1D"] * 3  # paper preset: 6 timbral + 4 temporal
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    again = build(config, mel, 5)
    again.load_weights(path)
    for a, b in zip(model.weights, again.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("length", [1, 5, 16, 33, 128])
def test_toeplitz_time_conv_equals_same_convolution(length):
    import tensorflow as tf

    from tftag.models import gemm_conv

    rng = np.random.default_rng(length)
    x = rng.normal(size=(3, 4, 37)).astype("float32")  # [b, F, T]: T not a multiple of the block
    kernel = rng.normal(size=(length, 1, 1, 6)).astype("float32")
    expected = tf.nn.conv2d(x[..., None], np.transpose(kernel, (1, 0, 2, 3)), 1, "SAME").numpy()
    got = gemm_conv.time_conv(tf.constant(x), tf.constant(kernel), block=16).numpy()
    assert got.shape == (3, 4, 48, 6)  # ceil(37 / 16) blocks of 16 frames
    np.testing.assert_allclose(got[:, :, :37], expected, atol=1e-4)


def test_fast_inference_equals_the_keras_model_pretrained():
    model = pretrained.load_musicnn("MTT_musicnn")
    mel = np.random.default_rng(1).uniform(0, 3, size=(5, 187, 96)).astype("float32")
    logits, embedding = musicnn.fast_inference(model)(mel)
    expected_logits, expected_embedding = with_embedding(model)(mel, training=False)
    np.testing.assert_allclose(logits.numpy(), expected_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(embedding.numpy(), expected_embedding.numpy(), atol=1e-4)
    assert embedding.shape == (5, 200)


@pytest.mark.parametrize("mel_config", [MelConfig(16000, 32, 4, "log"), MelConfig(12000, 8, 10, "log")])
def test_fast_inference_equals_the_keras_model_paper_preset(mel_config):
    """Any resolution (timbral widths 7/3/1, temporal lengths down to 1 at hop ×10), random
    BatchNorm statistics with negative and zero scales, after the weights change."""
    model = build(ModelConfig("musicnn", width=0.25, patch_seconds=3.0), mel_config, 7)
    _randomise_batchnorm(model, seed=2)
    fast = musicnn.fast_inference(model)
    frames = model.input_shape[1]
    mel = np.random.default_rng(3).normal(size=(4, frames, mel_config.n_mels)).astype("float32")
    expected = with_embedding(model)(mel, training=False)
    for got, want in zip(fast(mel), expected):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4, rtol=1e-4)
    _randomise_batchnorm(model, seed=4)  # weights are read per call
    np.testing.assert_allclose(fast(mel)[0].numpy(), model(mel, training=False).numpy(),
                               atol=1e-4, rtol=1e-4)


def test_inference_fn_dispatch():
    """The registry entry of the model's config says its inference path, not its layer names."""
    import keras

    from tftag.models import REGISTRY

    assert {n: REGISTRY.get(n).inference for n in names()} == {
        "musicnn": musicnn.fast_inference, "musicnn_vgg": None, "vgg": None}
    mel_config = MelConfig(16000, 32, 4, "log")
    vgg = build(ModelConfig("vgg", width=0.125), mel_config, 5)
    with pytest.raises(ValueError, match="not a MUSICNN model"):
        musicnn.fast_inference(vgg)
    mel = np.zeros((2, *vgg.input_shape[1:]), "float32")
    logits, embedding = inference_fn(vgg)(mel)
    np.testing.assert_allclose(logits.numpy(), vgg(mel, training=False).numpy(), atol=1e-6)
    assert embedding.shape[0] == 2
    config = ModelConfig("musicnn", width=0.125, patch_seconds=3.0)
    model = build(config, mel_config, 5)
    mel = np.random.default_rng(0).normal(size=(2, *model.input_shape[1:])).astype("float32")
    fast = inference_fn(model)  # the entry's path: a tf.function of fast_inference
    assert hasattr(fast, "get_concrete_function") and hasattr(inference_fn(model, config),
                                                               "get_concrete_function")
    clone = keras.models.clone_model(model)  # not made by build: runs as built
    clone.set_weights(model.get_weights())
    assert not hasattr(inference_fn(clone), "get_concrete_function")
    for got, want in zip(fast(mel), inference_fn(clone)(mel)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4, rtol=1e-4)


def test_the_model_registry_holds_entries():
    from tftag.models import REGISTRY, register

    entry = REGISTRY.get("musicnn")
    assert entry.build is musicnn.build_musicnn
    assert repr(entry) == ("ModelEntry(tftag.models.musicnn.build_musicnn, "
                           "inference=tftag.models.musicnn.fast_inference)")
    register("musicnn", inference=musicnn.fast_inference)(musicnn.build_musicnn)  # again: fine
    with pytest.raises(ValueError, match="model 'vgg' is registered twice"):
        register("vgg")(musicnn.build_musicnn)


# ----------------------------------------------------------------------------- training graph


def _train_pass(model, forward, x, y):
    """Logits, gradients and BatchNorm moving statistics after one forward/backward pass from
    the model's current variables (restored afterwards)."""
    import tensorflow as tf

    saved = [v.numpy() for v in model.variables]
    with tf.GradientTape() as tape:
        logits = forward(x)
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, logits))
    grads = tape.gradient(loss, model.trainable_variables)
    stats = {v.path: v.numpy() for v in model.non_trainable_variables}
    for v, value in zip(model.variables, saved):
        v.assign(value)
    return logits.numpy(), {v.path: g.numpy() for v, g in zip(model.trainable_variables, grads)}, stats


def _model_pair(name, width, resolution, seed=0):
    """A float32 model and a float64 copy with the same weights (seeded initialisation)."""
    config = ModelConfig(name, width=width, patch_seconds=3.0, dropout=0.0)
    keras.utils.set_random_seed(seed)
    model = build(config, resolution, 7)
    keras.config.set_dtype_policy("float64")
    try:
        model64 = build(config, resolution, 7)
    finally:
        keras.config.set_dtype_policy("float32")
    model64.set_weights(model.get_weights())
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, (8, config.n_frames(resolution), resolution.n_mels))
    y = rng.uniform(0, 1, (8, 7))
    return model, model64, x, y


def _relative_error(got, want):
    return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12)


# Resolutions chosen to take every path of training_fn: MUSICNN 96×1 and 32×1 (187 frames: time
# GEMM blocks of 17 frames, frequency GEMMs for the 0.9/0.4-of-the-bands timbral filters, lazy
# front-end BatchNorms), 32×4 (47 frames, prime: one block of 47), 48×2 (94 frames: blocks of 47);
# VGG-CNN and the musicnn package's VGG (folded 3×3 first convolution, fused BatchNorm).
TRAINING_CASES = [
    ("vgg", 0.125, MelConfig(16000, 48, 2, "log")),
    ("musicnn", 0.25, MelConfig(16000, 96, 1, "log")),
    ("musicnn", 0.25, MelConfig(16000, 32, 1, "log")),
    ("musicnn", 0.5, MelConfig(16000, 48, 2, "log")),
    ("musicnn", 0.25, MelConfig(16000, 32, 4, "log")),
    ("musicnn_vgg", 0.125, MelConfig(16000, 96, 1, "log")),
]


@pytest.mark.parametrize("name,width,resolution", TRAINING_CASES)
def test_training_fn_is_the_keras_training_graph_exactly(name, width, resolution):
    """The rewrites of models.training.training_fn (input BatchNorm folded into the first
    convolutions, Toeplitz GEMMs, BatchNorm applied after MUSICNN's max over bands) are exact:
    run in float64, logits, every gradient and every moving-statistics update equal
    model(x, training=True)'s to 1e-9 (float64 rounding), on the model's own variables."""
    import tensorflow as tf

    from tftag.models import training

    _, model64, x, y = _model_pair(name, width, resolution)
    n_variables = len(model64.variables)
    x64, y64 = tf.constant(x), tf.constant(y)
    want = _train_pass(model64, lambda t: model64(t, training=True), x64, y64)
    got = _train_pass(model64, training.training_fn(model64), x64, y64)
    assert len(model64.variables) == n_variables  # no variable added
    def equal(a, b):  # to float64 rounding; + 1e-12 for gradients that are 0 in exact math
        return np.linalg.norm(a - b) <= 1e-9 * np.linalg.norm(b) + 1e-12  # (bias before a BN)

    assert equal(got[0], want[0])
    for part in (1, 2):  # gradients, moving statistics
        assert got[part].keys() == want[part].keys()
        for path, value in want[part].items():
            assert equal(got[part][path], value), (path, _relative_error(got[part][path], value))
    moved = [p for p, v in want[2].items() if "moving_mean" in p and np.abs(v).max() > 1e-3]
    assert moved  # the pass did update the moving statistics (the comparison is not vacuous)


def test_training_fn_takes_the_gemm_and_lazy_paths(monkeypatch):
    """MUSICNN 96×1's front-end runs as GEMMs with its BatchNorms applied after the max over
    bands (so the exactness test above covers them); VGG-CNN's 3×3 convolution does not."""
    import tensorflow as tf

    from tftag.models import gemm_conv, training

    calls = []
    for fn in ("frequency_conv", "time_conv"):
        original = getattr(gemm_conv, fn)
        monkeypatch.setattr(gemm_conv, fn, lambda *a, _f=original, _n=fn:
                            calls.append((_n, int(a[0].shape[0]))) or _f(*a))
    lazy = []
    original_lazy = training._normalize_lazily
    monkeypatch.setattr(training, "_normalize_lazily",
                        lambda *a: lazy.append(a[0].name) or original_lazy(*a))
    mel = MelConfig(16000, 96, 1, "log")
    model = build(ModelConfig("musicnn", width=0.25, patch_seconds=3.0), mel, 7)
    training.training_fn(model)(tf.zeros((2, 187, 96)))
    # 6 timbral (the 3 of height 0.4·96 in 3 band groups each), 4 temporal; each on the batch
    # (2 examples) and on the one-image mask of input_bn's offset (oneDNN's filter gradient of a
    # one-image convolution with a tall kernel is slower than the batch's GEMMs)
    assert sorted(calls) == sorted([("frequency_conv", b) for b in (1, 2)] * 12
                                   + [("time_conv", b) for b in (1, 2)] * 4)
    assert len(lazy) == 10  # every front-end BatchNorm
    calls.clear()
    lazy.clear()
    vgg = build(ModelConfig("vgg", width=0.125), MelConfig(16000, 48, 2, "log"), 7)
    training.training_fn(vgg)(tf.zeros((2, *vgg.input_shape[1:])))
    assert calls == [] and lazy == []


@pytest.mark.parametrize("name,width,resolution", TRAINING_CASES[:3] + TRAINING_CASES[5:])
def test_training_fn_float32_is_as_close_as_keras(name, width, resolution):
    """In float32 (FusedBatchNormV3 and oneDNN kernels, other summation orders) training_fn is
    as close to the float64 Keras graph as the float32 Keras graph is, give or take: ×5 its
    error + 0.5 % (input_bn's two gradients are sums over the whole input with heavy
    cancellation: both float32 graphs are off by percents there, 10 % slack)."""
    import tensorflow as tf

    from tftag.models import training

    model, model64, x, y = _model_pair(name, width, resolution)
    x32, y32 = tf.constant(x, tf.float32), tf.constant(y, tf.float32)
    ref = _train_pass(model64, lambda t: model64(t, training=True), tf.constant(x), tf.constant(y))
    keras32 = _train_pass(model, lambda t: model(t, training=True), x32, y32)
    fast = _train_pass(model, training.training_fn(model), x32, y32)
    assert _relative_error(fast[0], ref[0]) <= 5 * _relative_error(keras32[0], ref[0]) + 1e-5
    for part in (1, 2):
        for path, want in ref[part].items():
            slack = 0.1 if path.startswith("input_bn/") and part == 1 else 5e-3
            tolerance = 5 * _relative_error(keras32[part][path], want) + slack
            assert _relative_error(fast[part][path], want) <= tolerance, path


@pytest.mark.parametrize("kt,kf", [(7, 29), (3, 13), (1, 32), (2, 1)])
def test_frequency_conv_equals_valid_convolution(kt, kf):
    import tensorflow as tf

    from tftag.models import gemm_conv

    rng = np.random.default_rng(kt * 100 + kf)
    x = rng.normal(size=(3, 20, 32)).astype("float32")  # [b, T, F]
    kernel = rng.normal(size=(kt, kf, 1, 5)).astype("float32")
    expected = tf.nn.conv2d(x[..., None], kernel, 1, "VALID").numpy()
    got = gemm_conv.frequency_conv(tf.constant(x), tf.constant(kernel)).numpy()
    assert got.shape == (3, 20 - kt + 1, 32 - kf + 1, 5)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_training_fn_rejects_a_non_functional_model():
    from tftag.models import training

    with pytest.raises(ValueError, match="functional"):
        training.training_fn(lambda x: x)
