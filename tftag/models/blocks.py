"""Layers shared by the model builders."""

from __future__ import annotations

import keras
from keras import layers


def mel_input(n_frames: int, n_mels: int):
    """The common stem: ``mel`` input [batch, n_frames, n_mels] → [batch, T, F, 1] → BatchNorm.

    Returns:
      (the keras.Input, the normalised 4-D tensor).
    """
    inputs = keras.Input(shape=(n_frames, n_mels), name="mel")  # [batch, T, F]
    x = layers.Reshape((n_frames, n_mels, 1), name="add_channel")(inputs)  # [b, T, F, 1]
    return inputs, layers.BatchNormalization(name="input_bn")(x)
