"""Convolutions of a one-channel input as dense matrix products (Toeplitz GEMMs).

A convolution whose input has one channel (the mel) is one of the slowest kernels on a CPU, and
its filter gradient even more so: each output value is a short dot product and the im2col
matrix has one column per kernel tap. When the kernel spans most of one axis, the same numbers
come out of one large matrix product whose right-hand side is the kernel laid out as a
(block-)Toeplitz matrix — more multiply-adds (the zeros of the matrix) but at GEMM speed, and the
gradient with respect to the kernel is a GEMM too (then a sum over the matrix's diagonals,
which the gather's gradient does).

- :func:`frequency_conv`: 'valid' 2-D convolution [b, T, F] ⊛ [kt, kf] whose rows are the
  kt·F input values of kt frames and whose matrix is Toeplitz over frequency (kf/F of its
  entries non-zero): MUSICNN's timbral filters (kf = 0.4–0.9·F).
- :func:`time_conv`: 'same' convolution over time of each band with a [L, 1] kernel, computed
  ``block`` output frames per row from a block-Toeplitz matrix: MUSICNN's temporal filters.

Both are exact up to float32 summation order. The index tables are NumPy, built once per shape.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf


@functools.lru_cache(maxsize=64)
def _frequency_index(kt: int, kf: int, n_bands: int, channels: int) -> np.ndarray:
    """[kt·F, F'·c] indices into the flat kernel [kt, kf, c] (+ one zero at the end)."""
    n_out = n_bands - kf + 1
    zero = kt * kf * channels
    index = np.full((kt, n_bands, n_out, channels), zero, np.int32)
    taps = np.arange(kt * kf * channels, dtype=np.int32).reshape(kt, kf, channels)
    for f_out in range(n_out):
        index[:, f_out:f_out + kf, f_out, :] = taps
    return index.reshape(kt * n_bands, n_out * channels)


def _toeplitz(kernel: tf.Tensor, index: np.ndarray) -> tf.Tensor:
    flat = tf.concat([tf.reshape(kernel, [-1]), tf.zeros([1], kernel.dtype)], axis=0)
    return tf.gather(flat, index)


def frequency_conv(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """'valid' convolution of ``x`` [b, T, F] with ``kernel`` [kt, kf, 1, c] as one GEMM.

    Returns:
      [b, T − kt + 1, F − kf + 1, c], equal to ``tf.nn.conv2d(x[..., None], kernel, 1, "VALID")``.
    """
    kt, kf, _, channels = (int(s) for s in kernel.shape)
    n_frames, n_bands = int(x.shape[1]), int(x.shape[2])
    t_out, f_out = n_frames - kt + 1, n_bands - kf + 1
    rows = tf.concat([x[:, i:i + t_out, :] for i in range(kt)], axis=-1)  # [b, T', kt·F]
    matrix = _toeplitz(kernel, _frequency_index(kt, kf, n_bands, channels))
    y = tf.matmul(tf.reshape(rows, [-1, kt * n_bands]), matrix)
    return tf.reshape(y, [-1, t_out, f_out, channels])


@functools.lru_cache(maxsize=64)
def _time_index(length: int, block: int, q: int, channels: int) -> np.ndarray:
    """[q·block, block·c] indices into the flat kernel [L, c] (+ one zero at the end)."""
    zero = length * channels
    index = np.full((q * block, block, channels), zero, np.int32)
    taps = np.arange(length * channels, dtype=np.int32).reshape(length, channels)
    for j in range(block):
        index[j:j + length, j, :] = taps
    return index.reshape(q * block, block * channels)


def time_conv(x_ft: tf.Tensor, kernel: tf.Tensor, block: int) -> tf.Tensor:
    """'same' convolution over time of ``x_ft`` [b, F, T] with ``kernel`` [L, 1, 1, c], as one GEMM.

    Output frames are computed ``block`` at a time: each row holds the ``q·block`` input samples
    a block needs and the kernel becomes a block-Toeplitz matrix [q·block, block·c].

    Returns:
      [b, F, nb·block, c] with the first T frames valid (nb = ceil(T / block)); they equal
      ``tf.nn.conv2d`` with 'SAME' padding over time.
    """
    length, channels = int(kernel.shape[0]), int(kernel.shape[-1])
    n_bands, n_frames = int(x_ft.shape[1]), int(x_ft.shape[2])
    n_blocks = -(-n_frames // block)
    q = -(-(block + length - 1) // block)
    left = (length - 1) // 2
    x = tf.pad(x_ft, [[0, 0], [0, 0], [left, (n_blocks + q - 1) * block - n_frames - left]])
    blocks = tf.reshape(x, [-1, n_bands, n_blocks + q - 1, block])
    rows = tf.concat([blocks[:, :, i:i + n_blocks] for i in range(q)], axis=-1)
    matrix = _toeplitz(kernel, _time_index(length, block, q, channels))
    y = tf.matmul(tf.reshape(rows, [-1, q * block]), matrix)
    return tf.reshape(y, [-1, n_bands, n_blocks * block, channels])
