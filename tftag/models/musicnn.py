"""MUSICNN (Pons et al. 2018) adapted to any resolution, and the musicnn package's VGG.

Front-end (on the input-BatchNorm'd mel, axes named time × frequency):
  timbral branches: Conv2D of (width frames × height bands), 'same' in time and 'valid' in
  frequency, heights a fraction of n_mels; temporal branches: Conv2D of (length × 1) 'same',
  lengths divided by the hop factor (at least 1); each branch ReLU → BN → max over frequency.
Mid-end: three Conv1D (64, k=7, 'same' in time) → ReLU → BN, the 2nd and 3rd residual; the
  front-end and the three outputs are concatenated.
Back-end: max and mean over time (interleaved per channel, as the musicnn package flattens
  them) → BN → dropout → Dense 200 ReLU → BN → dropout → Dense logits.

Presets: ``paper`` (the EUSIPCO paper's 6 timbral shapes, heights 0.9 and 0.4 of n_mels × widths
7, 3, 1, and 4 temporal lengths 165, 128, 64, 32) and ``musicnn_mtt`` (exactly the pretrained
MTT_musicnn: 2 timbral shapes 7 × int(0.4·n_mels) and 7 × int(0.7·n_mels), 204 filters each;
temporal 128, 64, 32 with 51 filters each). The paper gives no filter counts: ``paper`` splits the
same front-end capacity as ``musicnn_mtt`` (408 timbral, 153 temporal filters) over its shapes.
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import layers

from tftag.features import MelConfig
from tftag.models import ModelConfig, register
from tftag.models.blocks import mel_input


@dataclasses.dataclass(frozen=True)
class MusicnnSpec:
    """The layer table of one MUSICNN variant."""

    timbral: tuple[tuple[int, float, int], ...]  # (width frames, height fraction, filters)
    temporal: tuple[tuple[int, int], ...]  # (length frames at hop 256, filters)
    height_rounding: str  # "round" or "truncate" (the musicnn package truncates)
    midend_filters: int = 64
    midend_kernel: int = 7
    dense_units: int = 200
    dropout: float = 0.5


PRESETS = {
    "paper": MusicnnSpec(
        timbral=tuple((w, f, 68) for f in (0.9, 0.4) for w in (7, 3, 1)),
        temporal=((165, 38), (128, 38), (64, 38), (32, 39)),  # 153 = 38 + 38 + 38 + 39
        height_rounding="round",
    ),
    "musicnn_mtt": MusicnnSpec(
        timbral=((7, 0.4, 204), (7, 0.7, 204)),
        temporal=((128, 51), (64, 51), (32, 51)),
        height_rounding="truncate",
    ),
}


def timbral_height(n_mels: int, fraction: float, rounding: str) -> int:
    """Filter height in bands: round (paper) or truncate (musicnn package) fraction · n_mels."""
    h = fraction * n_mels
    return max(1, int(h) if rounding == "truncate" else int(math.floor(h + 0.5)))


def temporal_length(length: int, hop_factor: int) -> int:
    """Temporal filter length at hop 256·k: max(1, round(length / k)) (equal at k = 1)."""
    return max(1, int(math.floor(length / hop_factor + 0.5)))


def musicnn_shapes(spec: MusicnnSpec, n_mels: int, hop_factor: int) -> dict:
    """The concrete front-end filter shapes for a resolution (time × frequency, filters)."""
    return {
        "timbral": [(w, timbral_height(n_mels, f, spec.height_rounding), c)
                    for w, f, c in spec.timbral],
        "temporal": [(temporal_length(length, hop_factor), 1, c) for length, c in spec.temporal],
    }


def _max_over_frequency(x, name: str):
    """[b, T, F', C] -> [b, T, C]."""
    x = layers.MaxPooling2D(pool_size=(1, x.shape[2]), name=f"{name}_freqmax")(x)
    return layers.Reshape((x.shape[1], x.shape[3]), name=f"{name}_squeeze")(x)


def build_musicnn(model_config: ModelConfig, mel_config: MelConfig, n_tags: int) -> keras.Model:
    """MUSICNN for ``mel_config`` with the preset of ``model_config`` (see module docstring).

    Registered as ``musicnn`` at the end of the module, with :func:`fast_inference` as its
    inference path.
    """
    if model_config.preset not in PRESETS:
        raise ValueError(f"unknown musicnn preset {model_config.preset!r}; known: "
                         f"{', '.join(sorted(PRESETS))}")
    spec = PRESETS[model_config.preset]
    n_frames = model_config.n_frames(mel_config)
    n_mels = mel_config.n_mels
    shapes = musicnn_shapes(spec, n_mels, mel_config.hop_factor)
    inputs, x = mel_input(n_frames, n_mels)  # [b, T, F, 1], batch-normalised
    branches = []
    for i, (w, h, c) in enumerate(shapes["timbral"]):
        name = f"timbral{i}"
        y = layers.ZeroPadding2D(((w // 2, (w - 1) // 2), (0, 0)), name=f"{name}_pad")(x)
        y = layers.Conv2D(model_config.filters(c), (w, h), padding="valid", activation="relu",
                          name=f"{name}_conv")(y)  # [b, T, F - h + 1, c]
        y = layers.BatchNormalization(name=f"{name}_bn")(y)
        branches.append(_max_over_frequency(y, name))  # [b, T, c]
    for i, (length, _, c) in enumerate(shapes["temporal"]):
        name = f"temporal{i}"
        y = layers.Conv2D(model_config.filters(c), (length, 1), padding="same", activation="relu",
                          name=f"{name}_conv")(x)  # [b, T, F, c]
        y = layers.BatchNormalization(name=f"{name}_bn")(y)
        branches.append(_max_over_frequency(y, name))
    front = layers.Concatenate(axis=-1, name="frontend")(branches)  # [b, T, C_front]
    k = spec.midend_kernel
    mids, previous = [], front
    for i in range(3):
        y = layers.ZeroPadding1D((k // 2, (k - 1) // 2), name=f"mid{i}_pad")(previous)
        y = layers.Conv1D(model_config.filters(spec.midend_filters), k, padding="valid",
                          activation="relu", name=f"mid{i}_conv")(y)
        y = layers.BatchNormalization(name=f"mid{i}_bn")(y)
        if i > 0:
            y = layers.Add(name=f"mid{i}_residual")([y, previous])
        mids.append(y)
        previous = y
    features = layers.Concatenate(axis=-1, name="midend")([front] + mids)  # [b, T, C]
    max_pool = layers.GlobalMaxPooling1D(name="time_max")(features)  # [b, C]
    mean_pool = layers.GlobalAveragePooling1D(name="time_mean")(features)
    pooled = layers.Concatenate(axis=-1, name="pool_pairs")([
        layers.Reshape((-1, 1))(max_pool), layers.Reshape((-1, 1))(mean_pool)])  # [b, C, 2]
    y = layers.Flatten(name="pooled")(pooled)  # [b, 2C]: (c0 max, c0 mean, c1 max, ...)
    dropout = model_config.dropout_or(spec.dropout)
    y = layers.BatchNormalization(name="pool_bn")(y)
    y = layers.Dropout(dropout, name="pool_dropout")(y)
    y = layers.Dense(model_config.filters(spec.dense_units), activation="relu", name="dense")(y)
    y = layers.BatchNormalization(name="dense_bn")(y)
    y = layers.Dropout(dropout, name="dense_dropout")(y)
    logits = layers.Dense(n_tags, name="logits")(y)
    return keras.Model(inputs, logits, name=f"musicnn_{model_config.preset}_{mel_config.name}")


# The musicnn package's VGG (MTT_vgg): 5 × [Conv 3×3 same → ReLU → BN → MaxPool → dropout].
MUSICNN_VGG_POOLS = (((4, 1), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)),
                     ((4, 4), (4, 4)))  # ((time, freq) pool, (time, freq) strides)


@register("musicnn_vgg")
def build_musicnn_vgg(model_config: ModelConfig, mel_config: MelConfig, n_tags: int) -> keras.Model:
    """The musicnn package's VGG (MTT_vgg): 187 × 96 patches -> 2 × 1 × 128 -> logits."""
    n_frames = model_config.n_frames(mel_config)
    n_mels = mel_config.n_mels
    t, f = n_frames, n_mels
    for (pt, pf), (st, sf) in MUSICNN_VGG_POOLS:
        t, f = (t - pt) // st + 1, (f - pf) // sf + 1
        if t < 1 or f < 1:
            raise ValueError(f"musicnn_vgg needs larger inputs than {n_frames} frames × {n_mels} "
                             "bands (its pools are fixed; it was trained on 187 × 96)")
    filters = model_config.filters(128)
    dropout = model_config.dropout_or(0.5)
    inputs, x = mel_input(n_frames, n_mels)  # [b, T, F, 1], batch-normalised
    for i, (pool, strides) in enumerate(MUSICNN_VGG_POOLS, start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.MaxPooling2D(pool, strides=strides, padding="valid", name=f"pool{i}")(x)
        if i < len(MUSICNN_VGG_POOLS):
            x = layers.Dropout(dropout / 2, name=f"dropout{i}")(x)  # 0.25 in MTT_vgg
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(n_tags, name="logits")(x)
    return keras.Model(inputs, logits, name=f"musicnn_vgg_{mel_config.name}")


# ----------------------------------------------------------------------------- fast inference

TOEPLITZ_BLOCK = 16  # output frames per row of the temporal convolutions' block-Toeplitz GEMM


def _affine(bn):
    """An inference BatchNorm as ``a · x + b`` (tensors from the layer's current variables)."""
    import tensorflow as tf

    a = tf.convert_to_tensor(bn.gamma) / tf.sqrt(tf.convert_to_tensor(bn.moving_variance) + bn.epsilon)
    return a, tf.convert_to_tensor(bn.beta) - tf.convert_to_tensor(bn.moving_mean) * a


def _branch_max(z_max, bias, a, b, sign):
    """ReLU → BN → max over frequency, from the max over frequency of ``sign ·`` the conv.

    With ``a`` = BN scale and ``s = sign(a)``: max_F(a·relu(z) + b) = a·relu(s·max_F(s·z)) + b,
    since relu is monotone and the BN is affine per channel (exact; only rounding differs).
    """
    import tensorflow as tf

    return a * tf.nn.relu(sign * (z_max + sign * bias)) + b


def fast_inference(model):
    """MUSICNN inference, mathematically equal to ``model(mel, training=False)``, ~2× faster on CPU.

    The front-end is where the time goes; at inference it is rewritten without changing its
    result: (1) each branch's ReLU → BN → max over frequency is taken as a max over frequency of
    the sign-flipped convolution followed by ReLU and BN on the pooled [b, T, c] tensor
    (:func:`_branch_max`), so the large [b, T, F', c] tensors are reduced once instead of
    normalised and pooled; (2) the temporal convolutions run as block-Toeplitz matrix products
    (:func:`tftag.models.gemm_conv.time_conv`). The mid-end and back-end are the model's own layers. Weights are
    read from the model's variables on every call (it stays right if they change).

    Args:
      model: a model of :func:`build_musicnn` (the ``musicnn`` registry entry's inference
        path) with ReLU front-end convs.

    Returns:
      A tf.function: mel [b, T, F] → (logits [b, n_tags], embedding [b, d]) where the embedding
      is the input of the ``logits`` layer.
    """
    import tensorflow as tf

    from tftag.models import gemm_conv

    timbral = [model.get_layer(layer.name) for layer in model.layers
               if layer.name.startswith("timbral") and layer.name.endswith("_conv")]
    temporal = [model.get_layer(layer.name) for layer in model.layers
                if layer.name.startswith("temporal") and layer.name.endswith("_conv")]
    if not (timbral and temporal):
        raise ValueError(f"{model.name}: not a MUSICNN model (no timbral/temporal front-end)")
    for conv in timbral + temporal:
        if conv.activation is not keras.activations.relu:
            raise ValueError(f"{conv.name}: fast_inference needs ReLU front-end convolutions")
    tail = keras.Model(model.get_layer("frontend").output,
                       [model.output, model.get_layer("logits").input])
    input_bn = model.get_layer("input_bn")
    n_frames = int(model.input_shape[1])

    def bn_of(conv):
        return model.get_layer(conv.name.replace("_conv", "_bn"))

    @tf.function(reduce_retracing=True)
    def run(mel):
        a0, b0 = _affine(input_bn)
        x = mel * a0 + b0  # [b, T, F]
        outs = []
        for conv in timbral:
            a, b = _affine(bn_of(conv))
            sign = tf.where(a < 0, -1.0, 1.0)
            w = conv.kernel_size[0]
            xp = tf.pad(x[..., tf.newaxis], [[0, 0], [w // 2, (w - 1) // 2], [0, 0], [0, 0]])
            z = tf.nn.conv2d(xp, conv.kernel * sign, 1, "VALID")  # [b, T, F', c]
            outs.append(_branch_max(tf.reduce_max(z, axis=2), conv.bias, a, b, sign))
        x_ft = tf.transpose(x, [0, 2, 1])  # [b, F, T]
        for conv in temporal:
            a, b = _affine(bn_of(conv))
            sign = tf.where(a < 0, -1.0, 1.0)
            z = gemm_conv.time_conv(x_ft, conv.kernel * sign, TOEPLITZ_BLOCK)  # [b, F, T+, c]
            outs.append(_branch_max(tf.reduce_max(z, axis=1)[:, :n_frames], conv.bias, a, b, sign))
        logits, embedding = tail(tf.concat(outs, axis=-1), training=False)
        return logits, embedding

    return run


register("musicnn", inference=fast_inference)(build_musicnn)
