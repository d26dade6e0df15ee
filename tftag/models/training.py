"""The training-mode forward pass of tftag's Keras models, rewritten for CPU speed.

:func:`training_fn` runs a functional model's own layers and variables in training mode (as
``model(x, training=True)``: batch statistics, moving-statistics updates, dropout) with exact
rewrites where a CPU training step spends most of its time for nothing:

1. **The input BatchNorm folded into the first convolutions.** Every tftag model normalises its
   one-channel mel with ``input_bn`` (a = γ/√(σ²+ε), b = β − μ·a, two scalars) and feeds the
   result to its first convolution(s). Autodiff then computes the gradient with respect to that
   whole [b, T, F, 1] input (a backward convolution onto one channel, one of the slowest
   kernels on CPU: half of a MUSICNN step, whose ten front-end convolutions all read it) only
   to reduce it to the two scalars' gradients. Here the convolution of ``a·x + b`` (zero padded)
   is computed as ``conv(x, a·kernel) + b·conv(mask, kernel)``, where ``mask`` is the padded
   all-ones input of one example: the same numbers (up to rounding) and gradients, with no
   backward pass onto the input. Where the convolution runs as GEMMs (2.), ``conv(mask, ·)``
   does too: oneDNN's filter gradient of a one-image convolution with a tall kernel takes
   longer than the whole batch's GEMMs (MUSICNN 128×1: 1.4 s of a 2.4-s step).
2. **One-channel convolutions as GEMMs** (:mod:`tftag.models.gemm_conv`): MUSICNN's timbral
   filters (spanning 0.4–0.9 of the bands) as Toeplitz-over-frequency matrix products, split
   into groups of output bands when a filter spans less than ~0.6 of them; its temporal
   filters (long, one band) as block-Toeplitz matrix products over time, whose output stays
   bands-first ([b, F, T, c]) until the max over bands. Forward and filter gradient run at GEMM
   speed instead of as one-input-channel convolutions (4× slower per multiply-add here).
3. **BatchNorm after the max over bands.** MUSICNN's front-end is ReLU → BatchNorm → max over
   all bands. The batch statistics need every value (one pass: Σr, Σr²), but the normalisation
   a·r + b (per channel) commutes with the max (a min where a < 0), so it is applied to the
   pooled tensor, F times smaller, and its gradient never touches the full one.
4. **Fused BatchNorm** elsewhere. Keras 3 normalises with separate moments, subtractions and
   products, whose gradients are as many passes over the largest activations (about half of a
   small VGG-CNN step). Here every other BatchNorm of a 4-D tensor runs as one fused kernel
   (``FusedBatchNormV3``, oneDNN on CPU) forward and backward.

Moving means and variances are updated exactly as Keras does (momentum, biased batch variance).
Layers not named above run as themselves. The layer list, variables and saved weights are the
model's own: a weights file trains and loads the same with and without this function. Run in
float64 the rewrites equal the Keras graph to float64 rounding; in float32 they agree to float32
rounding (tests/models/test_models.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import keras
import tensorflow as tf

from tftag.models import gemm_conv


MIN_TIME_TAPS = 8  # one-band kernels at least this long run as time GEMMs
MIN_BAND_FRACTION = 0.25  # kernels spanning at least this share of the bands: frequency GEMMs
BAND_GROUP_FRACTION = 0.6  # frequency GEMM groups of at most this × kernel-height output bands
MIN_GROUP_MACS = 10e6  # ... when the whole GEMM has this many multiply-adds per example


@dataclasses.dataclass(frozen=True)
class _Affine:
    """The tensor ``a · x + b · mask`` kept unexpanded (``mask``: zero-padded ones, batch 1)."""

    x: tf.Tensor
    mask: tf.Tensor
    a: tf.Tensor
    b: tf.Tensor

    def materialize(self) -> tf.Tensor:
        return self.a * self.x + self.b * self.mask


@dataclasses.dataclass(frozen=True)
class _Bands:
    """A [b, T, F, c] activation held as consecutive groups of bands, as the GEMMs made it.

    Each part is [b, T, f_i, c], or [b, f_i, T, c] when ``bands_first`` (a time GEMM's output).
    BatchNorm statistics and the max over all bands are taken part by part; anything else gets
    the parts joined (and transposed back).
    """

    parts: tuple
    bands_first: bool = False

    def map(self, fn: Callable) -> "_Bands":
        return _Bands(tuple(fn(p) for p in self.parts), self.bands_first)

    def materialize(self) -> tf.Tensor:
        axis = 1 if self.bands_first else 2
        y = self.parts[0] if len(self.parts) == 1 else tf.concat(self.parts, axis=axis)
        return tf.transpose(y, [0, 2, 1, 3]) if self.bands_first else y


@dataclasses.dataclass(frozen=True)
class _Normalized:
    """A BatchNorm's output ``a · r + b`` (per channel) kept unexpanded until its max over bands."""

    r: _Bands
    a: tf.Tensor
    b: tf.Tensor

    def materialize(self) -> tf.Tensor:
        return self.a * self.r.materialize() + self.b


def _materialize(value):
    return value.materialize() if isinstance(value, (_Affine, _Bands, _Normalized)) else value


def _plain_batchnorm(layer) -> bool:
    """A BatchNorm this module can rewrite: last axis, no renorm, per replica, γ and β."""
    return (isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
            and not layer.renorm and not layer.synchronized and layer.center and layer.scale
            and layer.axis in (-1, len(layer.input.shape) - 1))


def _update_moving(layer, mean: tf.Tensor, variance: tf.Tensor) -> None:
    """Keras's moving-statistics update: m ← m·momentum + batch·(1 − momentum)."""
    layer.moving_mean.assign(layer.moving_mean * layer.momentum + mean * (1.0 - layer.momentum))
    layer.moving_variance.assign(
        layer.moving_variance * layer.momentum + variance * (1.0 - layer.momentum))


def _input_batchnorm(layer, x: tf.Tensor) -> _Affine:
    """A one-channel BatchNorm in training mode as the unexpanded affine map of its input."""
    mean, variance = tf.nn.moments(x, axes=list(range(len(x.shape))))
    _update_moving(layer, tf.reshape(mean, [1]), tf.reshape(variance, [1]))
    a = layer.gamma[0] * tf.math.rsqrt(variance + layer.epsilon)
    return _Affine(x, tf.ones([1, *x.shape[1:]], x.dtype), a, layer.beta[0] - mean * a)


def _fused_batchnorm(layer, x: tf.Tensor) -> tf.Tensor:
    """A BatchNorm of [b, H, W, C] over C in training mode as one FusedBatchNormV3.

    FusedBatchNormV3 has no float64 kernel: a float64 model (the tests' exact reference)
    normalises with the unfused ops instead.
    """
    if x.dtype == tf.float64:
        mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
        _update_moving(layer, mean, variance)
        return tf.nn.batch_normalization(x, mean, variance, layer.beta, layer.gamma, layer.epsilon)
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x, layer.gamma, layer.beta, epsilon=layer.epsilon, is_training=True)
    count = tf.cast(tf.size(x) // int(x.shape[-1]), x.dtype)
    # FusedBatchNormV3 returns the Bessel-corrected variance; Keras averages the biased one.
    _update_moving(layer, mean, variance * (count - 1.0) / tf.maximum(count, 1.0))
    return y


def _time_block(n_frames: int) -> int | None:
    """Output frames per row of the time GEMM: a divisor of T (no frames to cut off)."""
    divisors = [d for d in range(8, 65) if n_frames % d == 0]
    if divisors:
        return max(divisors)
    return n_frames if n_frames <= 128 else None


def _band_groups(n_out: int, kf: int, macs_per_example: float) -> list[tuple[int, int]]:
    """[start, stop) of the output-band groups of a frequency GEMM (as even as possible).

    Groups cut the zeros of the Toeplitz matrix (a group's rows span its bands + kf − 1) but
    add ops: small GEMMs (8×10, 32×4 inputs) run as one (measured faster there).
    """
    if macs_per_example < MIN_GROUP_MACS:
        return [(0, n_out)]
    groups = max(1, math.ceil(n_out / (BAND_GROUP_FRACTION * kf)))
    bounds = [round(g * n_out / groups) for g in range(groups + 1)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def _gemm_conv(layer, x: tf.Tensor, kernel: tf.Tensor) -> _Bands | None:
    """``layer``'s convolution of the one-channel ``x`` with ``kernel`` as Toeplitz GEMMs.

    Time kernels [L ≥ MIN_TIME_TAPS, 1] with 'same' padding (MUSICNN's temporal filters) and
    kernels spanning ≥ MIN_BAND_FRACTION of the bands with 'valid' padding (its timbral
    filters); None where a GEMM would not be faster (the convolution runs as itself).
    """
    kt, kf = layer.kernel_size
    if (tuple(layer.strides) != (1, 1) or tuple(layer.dilation_rate) != (1, 1)
            or int(x.shape[-1]) != 1):
        return None
    n_frames, n_bands = int(x.shape[1]), int(x.shape[2])
    block = _time_block(n_frames)
    if kf == 1 and kt >= MIN_TIME_TAPS and layer.padding == "same" and block:
        y = gemm_conv.time_conv(tf.transpose(x[..., 0], [0, 2, 1]), kernel, block)
        return _Bands((y,), bands_first=True)
    if kf >= MIN_BAND_FRACTION * n_bands and layer.padding == "valid":
        n_out, channels = n_bands - kf + 1, int(kernel.shape[-1])
        macs = (n_frames - kt + 1) * kt * n_bands * n_out * channels
        return _Bands(tuple(gemm_conv.frequency_conv(x[:, :, lo:hi + kf - 1, 0], kernel)
                            for lo, hi in _band_groups(n_out, kf, macs)))
    return None


@tf.custom_gradient
def _sums(flat: tf.Tensor):
    """(Σ_n x[n, c], Σ_n x[n, c]²) of [N, c]; gradient g₁ + 2·g₂·x in two passes over x."""
    def grad(g_total, g_total_sq):
        return (2.0 * g_total_sq) * flat + g_total

    return (tf.reduce_sum(flat, axis=0), tf.reduce_sum(tf.square(flat), axis=0)), grad


def _normalize_lazily(layer, r: _Bands) -> _Normalized:
    """A BatchNorm in training mode whose output only feeds a max over bands.

    The batch statistics come from ``r`` (one pass per part for Σr and Σr², the moving
    statistics updated as Keras does); the normalisation itself is left to
    :func:`_max_of_normalized`, which applies it to the pooled tensor (F times smaller).
    """
    channels = int(r.parts[0].shape[-1])
    total = total_sq = count = 0
    for part in r.parts:
        flat = tf.reshape(part, [-1, channels])
        part_total, part_total_sq = _sums(flat)
        total, total_sq = total + part_total, total_sq + part_total_sq
        count = count + tf.cast(tf.shape(flat)[0], part.dtype)
    mean = total / count
    variance = tf.maximum(total_sq / count - tf.square(mean), 0.0)
    _update_moving(layer, mean, variance)
    a = layer.gamma * tf.math.rsqrt(variance + layer.epsilon)
    return _Normalized(r, a, layer.beta - mean * a)


def _max_of_normalized(value: _Normalized) -> tf.Tensor:
    """max over bands of ``a·r + b`` = a·max(r) + b where a ≥ 0, a·min(r) + b where a < 0.

    Returns:
      [b, T, 1, c], as the MaxPooling2D over all bands it replaces.
    """
    bands = value.r

    def max_over_bands(t):
        n_frames, n_bands = (t.shape[2], t.shape[1]) if bands.bands_first else t.shape[1:3]
        pool = (n_bands, 1) if bands.bands_first else (1, n_bands)
        y = tf.nn.max_pool2d(t, pool, pool, "VALID")
        return tf.reshape(y, [-1, int(n_frames), 1, int(t.shape[-1])])

    def max_of_parts(parts):
        maxes = [max_over_bands(p) for p in parts]
        top = maxes[0]
        for other in maxes[1:]:
            top = tf.maximum(top, other)
        return top

    top = max_of_parts(bands.parts)
    positive = value.a >= 0
    pooled = tf.cond(tf.reduce_all(positive), lambda: top,
                     lambda: tf.where(positive, top, -max_of_parts([-p for p in bands.parts])))
    return value.a * pooled + value.b


def _folded_conv(layer, value: _Affine):
    """Conv2D of ``a·x + b·mask`` as ``conv(x, a·kernel) + b·conv(mask)`` (no gradient onto ``x``).

    The scale multiplies the kernel, not the [b, T, F, c] output, and the offset term has batch
    size one: the only passes over the output are the bias/offset add and the activation.
    """
    def conv(t, kernel):
        return tf.nn.conv2d(t, kernel, strides=layer.strides,
                            padding=layer.padding.upper(), dilations=layer.dilation_rate)

    bias = layer.bias if layer.use_bias else 0.0
    scaled = value.a * layer.kernel
    bands = _gemm_conv(layer, value.x, scaled)
    if bands is None:
        offset = value.b * conv(value.mask, layer.kernel) + bias  # [1, T', F', c]
        return layer.activation(conv(value.x, scaled) + offset)
    # The batch-1 offset as the same GEMMs: oneDNN's filter gradient of a one-image convolution
    # with a tall kernel is pathologically slow (MUSICNN 128×1's 7×51 timbral kernel: 1.0 s a
    # step, 60 % of it; as a GEMM it costs 1/batch of the main one).
    offsets = _gemm_conv(layer, value.mask, layer.kernel)
    return _Bands(tuple(layer.activation(p + (value.b * o + bias))
                        for p, o in zip(bands.parts, offsets.parts)), bands.bands_first)


def _foldable_conv(layer) -> bool:
    return (type(layer) is keras.layers.Conv2D and layer.groups == 1
            and layer.data_format == "channels_last")


def _max_over_bands(layer) -> bool:
    """A MaxPooling2D of [b, T, F, c] over all F bands, one frame at a time."""
    if type(layer) is not keras.layers.MaxPooling2D or layer.data_format != "channels_last":
        return False
    n_bands = layer.input.shape[2]
    return (tuple(layer.pool_size) == (1, n_bands) and tuple(layer.strides) == (1, n_bands)
            and layer.padding == "valid")


def _zero_pad(layer, value: _Affine) -> _Affine:
    return _Affine(layer(value.x), layer(value.mask), value.a, value.b)


def _pooled_batchnorms(model) -> set[int]:
    """ids of the plain BatchNorms whose one consumer is a max over all bands (MUSICNN's front-end)."""
    found = set()
    for op in model.operations:
        if not _max_over_bands(op):
            continue
        producer = op.input._keras_history.operation
        if _plain_batchnorm(producer) and len(producer._outbound_nodes) == 1:
            found.add(id(producer))
    return found


def _operation(op, pooled: set[int]) -> Callable:
    """The callable that runs ``op`` of the model's graph in training mode."""
    from keras.src.models import functional  # the functional model's own training-mode call

    default = functional.operation_fn(op, training=True)
    lazy = id(op) in pooled

    def run(*args, **kwargs):
        first = args[0] if args else None
        if isinstance(first, _Normalized) and _max_over_bands(op):
            return _max_of_normalized(first)
        batchnorm = _plain_batchnorm(op) and not kwargs.get("mask")
        if isinstance(first, _Bands) and batchnorm and lazy:
            return _normalize_lazily(op, first)
        if isinstance(first, _Affine):
            if _foldable_conv(op):
                return _folded_conv(op, first)
            if type(op) is keras.layers.ZeroPadding2D and op.data_format == "channels_last":
                return _zero_pad(op, first)
        first = _materialize(first)
        if isinstance(first, tf.Tensor) and len(first.shape) == 4 and batchnorm:
            if int(first.shape[-1]) == 1:
                return _input_batchnorm(op, first)
            if lazy:
                return _normalize_lazily(op, _Bands((first,)))
            return _fused_batchnorm(op, first)
        args = [[_materialize(v) for v in a] if isinstance(a, (list, tuple)) else _materialize(a)
                for a in args]
        return default(*args, **kwargs)

    return run


def training_fn(model) -> Callable[[tf.Tensor], tf.Tensor]:
    """``x`` → the outputs of ``model(x, training=True)``, with the rewrites of the module docstring.

    Same variables, same updates of the BatchNorm moving statistics, same dropout layers (their
    random draws in the same order); outputs equal to float32 rounding. BatchNorms that are
    synchronized across replicas, renormalised or not over the last axis run as themselves.

    Args:
      model: a Keras functional model (any tftag model).

    Returns:
      A function of the input batch, to call inside the training step's tf.function.
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "_run_through_graph"):
        raise ValueError(f"{getattr(model, 'name', model)!r}: training_fn needs a Keras "
                         "functional model")
    pooled = _pooled_batchnorms(model)

    def forward(x):
        x = model._standardize_inputs(x)  # as model(x) does: the Input's dtype and structure
        outputs = model._run_through_graph(x, operation_fn=lambda op: _operation(op, pooled))
        return tf.nest.map_structure(_materialize, outputs)

    return forward
