"""The training-mode forward pass of tftag's Keras models, rewritten for CPU speed.

:func:`training_fn` runs a functional model's own layers and variables in training mode (as
``model(x, training=True)``: batch statistics, moving-statistics updates, dropout) with two exact
rewrites where a CPU training step spends most of its time for nothing:

1. **The input BatchNorm folded into the first convolutions.** Every tftag model normalises its
   one-channel mel with ``input_bn`` (a = γ/√(σ²+ε), b = β − μ·a, two scalars) and feeds the
   result to its first convolution(s). Autodiff then computes the gradient with respect to that
   whole [b, T, F, 1] input (a backward convolution onto one channel, one of the slowest
   kernels on CPU: a quarter of a MUSICNN step, whose ten front-end convolutions all read it)
   only to reduce it to the two scalars' gradients. Here the convolution of ``a·x + b`` (zero
   padded) is computed as ``a·conv(x) + b·conv(mask)``, where ``mask`` is the padded all-ones
   input of one example: the same numbers (up to rounding) and gradients, with no backward pass
   onto the input.
2. **Fused BatchNorm.** Keras 3 normalises with separate moments, subtractions and products,
   whose gradients are as many passes over the largest activations (about half of a small
   VGG-CNN step). Here every BatchNorm of a 4-D tensor [b, T, F, C] runs as one fused kernel
   (``FusedBatchNormV3``, oneDNN on CPU) forward and backward; the moving mean and variance are
   updated exactly as Keras does (momentum, biased batch variance).

Layers not named above run as themselves. The layer list, variables and saved weights are the
model's own: a weights file trains and loads the same with and without this function. Logits
agree with ``model(x, training=True)`` to float32 rounding (tests/test_models.py).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import tensorflow as tf


# Inputs with fewer values per example (e.g. 18 frames × 8 bands) run the Keras graph as it is:
# there the rewrite's extra small ops cost more than they save (MUSICNN 8×10: 0.8× measured).
MIN_INPUT_VALUES = 1024


@dataclasses.dataclass(frozen=True)
class _Affine:
    """The tensor ``a · x + b · mask`` kept unexpanded (``mask``: zero-padded ones, batch 1)."""

    x: tf.Tensor
    mask: tf.Tensor
    a: tf.Tensor
    b: tf.Tensor

    def materialize(self) -> tf.Tensor:
        return self.a * self.x + self.b * self.mask


def _materialize(value):
    return value.materialize() if isinstance(value, _Affine) else value


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
    """A BatchNorm of [b, H, W, C] over C in training mode as one FusedBatchNormV3."""
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x, layer.gamma, layer.beta, epsilon=layer.epsilon, is_training=True)
    count = tf.cast(tf.size(x) // int(x.shape[-1]), x.dtype)
    # FusedBatchNormV3 returns the Bessel-corrected variance; Keras averages the biased one.
    _update_moving(layer, mean, variance * (count - 1.0) / tf.maximum(count, 1.0))
    return y


def _folded_conv(layer, value: _Affine) -> tf.Tensor:
    """Conv2D of ``a·x + b·mask`` as ``a·conv(x) + b·conv(mask)`` (no gradient onto ``x``)."""
    def conv(t):
        return tf.nn.conv2d(t, layer.kernel, strides=layer.strides,
                            padding=layer.padding.upper(), dilations=layer.dilation_rate)

    z = value.a * conv(value.x) + value.b * conv(value.mask)
    if layer.use_bias:
        z = z + layer.bias
    return layer.activation(z)


def _foldable_conv(layer) -> bool:
    return (type(layer) is keras.layers.Conv2D and layer.groups == 1
            and layer.data_format == "channels_last")


def _zero_pad(layer, value: _Affine) -> _Affine:
    return _Affine(layer(value.x), layer(value.mask), value.a, value.b)


def _operation(op) -> Callable:
    """The callable that runs ``op`` of the model's graph in training mode."""
    from keras.src.models import functional  # the functional model's own training-mode call

    default = functional.operation_fn(op, training=True)

    def run(*args, **kwargs):
        first = args[0] if args else None
        if isinstance(first, _Affine):
            if _foldable_conv(op):
                return _folded_conv(op, first)
            if type(op) is keras.layers.ZeroPadding2D and op.data_format == "channels_last":
                return _zero_pad(op, first)
            args = tuple(_materialize(a) for a in args)
        elif (isinstance(first, tf.Tensor) and len(first.shape) == 4 and _plain_batchnorm(op)
              and not kwargs.get("mask")):
            if int(first.shape[-1]) == 1:
                return _input_batchnorm(op, first)
            return _fused_batchnorm(op, first)
        args = [[_materialize(v) for v in a] if isinstance(a, (list, tuple)) else a
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
    values = 1
    for size in model.input_shape[1:]:
        values *= int(size or 0)
    if values < MIN_INPUT_VALUES:  # per-op overhead dominates: the rewrite's extra ops cost
        return lambda x: model(x, training=True)

    def forward(x):
        outputs = model._run_through_graph(x, operation_fn=_operation)
        return tf.nest.map_structure(_materialize, outputs)

    return forward
