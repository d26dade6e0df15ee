"""VGG-CNN (Choi et al. 2016) with pools adapted to the input resolution (paper Table III).

Input BatchNorm, then 4 × [Conv2D 3×3 'same' → BN → ELU → MaxPool 'valid'] with 128/384/768/2048
filters (× width), Flatten (2048 × width) and a Dense layer to logits. The pools of every block
come from :func:`vgg_pools`, so that both axes are exactly 1 after the fourth pool.
"""

from __future__ import annotations

import keras
from keras import layers

from tftag.features import MelConfig
from tftag.models import ModelConfig, register
from tftag.models.blocks import mel_input

FILTERS = (128, 384, 768, 2048)


def _freq_pools(n_mels: int) -> list[int]:
    p2 = 4 if n_mels >= 48 else 2
    p3 = 4 if n_mels >= 128 else 3 if n_mels >= 24 else 2
    return [2, p2, p3]


def _time_pools(sr: int) -> list[int]:
    # Paper: 4, 5, 8 at 12 kHz and 4, 5, 9 at 16 kHz. Beyond those rates: 9 from 14 kHz up, 8
    # below (a third pool of ~0.17-0.19 s of frames at hop 256).
    return [4, 5, 9 if sr >= 14000 else 8]


def _fit(length: int, pools: list[int]) -> list[int]:
    """Halves each pool while it would take the floor chain to 0; the 4th takes what is left."""
    out = []
    for p in pools:
        while p > 1 and length // p < 1:
            p //= 2
        out.append(p)
        length //= p
    out.append(length)  # last pool: whatever remains, so the map ends at exactly 1
    return out


def vgg_pools(n_mels: int, n_frames: int, sr: int) -> list[tuple[int, int]]:
    """The four (frequency, time) max-pool sizes of VGG-CNN for an input resolution.

    Rule (reproduces paper Table III for all 7 band counts and all hop factors at 12/16 kHz):
    frequency pools 2, (4 if n_mels >= 48 else 2), (4 if n_mels >= 128, 3 if >= 24, else 2);
    time pools 4, 5, (8 below 14 kHz, 9 from 14 kHz); each of the first three is halved while
    the floor ('valid') pooling chain would reach 0; the fourth pool is the remaining length.

    Args:
      n_mels: bands (>= 4).
      n_frames: frames of the input (a whole clip or a patch; >= 16).
      sr: sample rate of the mel (selects the third time pool).

    Returns:
      [(f1, t1), (f2, t2), (f3, t3), (f4, t4)]; after them both axes are exactly 1.
    """
    if n_mels < 4:
        raise ValueError(f"vgg_pools needs n_mels >= 4, got {n_mels}")
    if n_frames < 16:
        raise ValueError(f"vgg_pools needs n_frames >= 16, got {n_frames}")
    freq = _fit(n_mels, _freq_pools(n_mels))
    time = _fit(n_frames, _time_pools(sr))
    return list(zip(freq, time))


@register("vgg")
def build_vgg(model_config: ModelConfig, mel_config: MelConfig, n_tags: int) -> keras.Model:
    """VGG-CNN for ``mel_config`` (see module docstring)."""
    n_frames = model_config.n_frames(mel_config)
    n_mels = mel_config.n_mels
    pools = vgg_pools(n_mels, n_frames, mel_config.sr)
    inputs, x = mel_input(n_frames, n_mels)  # [b, T, F, 1], batch-normalised
    for i, (base, (f, t)) in enumerate(zip(FILTERS, pools), start=1):
        x = layers.Conv2D(model_config.filters(base), 3, padding="same", name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.Activation("elu", name=f"elu{i}")(x)
        x = layers.MaxPooling2D(pool_size=(t, f), padding="valid", name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)  # [b, 2048 · width]
    if model_config.dropout_or(0.0):
        x = layers.Dropout(model_config.dropout_or(0.0), name="dropout")(x)
    logits = layers.Dense(n_tags, name="logits")(x)
    return keras.Model(inputs, logits, name=f"vgg_{mel_config.name}")
