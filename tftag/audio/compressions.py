"""Compressions of the power mel: one registry, one object per compression.

A compression knows its formula, its NumPy transform (extraction, :func:`tftag.features.derive`,
the tag command) and its in-graph transform (``tf.data`` readers and the serving signatures);
both give float32 and the same values. The compression's name is the last part of a
:attr:`tftag.features.MelConfig.name` (``sr16000-mel96-hop1-log``) and a value of
``--compressions``.

Compressions:
  ``db``: 10·log10(max(x, 1e-10)).
  ``log``: log10(1 + 10000·x).
  ``power``: x (the stored base arrays).

No TensorFlow import until an in-graph transform is built.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tftag.registry import Registry

DB_FLOOR = 1e-10
LOG_SCALE = 10000.0
_LN10 = math.log(10.0)


@dataclasses.dataclass(frozen=True)
class Compression:
    """One compression of a float32 power mel (the identity: ``power``).

    Attributes:
      name: registry name, the compression of a :class:`tftag.features.MelConfig`.
      formula: the definition, for docs and messages.
    """

    name: str = "power"
    formula: str = "x"

    def numpy(self, power: np.ndarray) -> np.ndarray:
        """The compressed mel, float32 (float16 input is cast to float32 first)."""
        return np.asarray(power, dtype=np.float32)

    def tf(self, power):
        """In-graph :meth:`numpy`: a tensor of power values -> float32 tensor."""
        import tensorflow as tf

        return tf.cast(power, tf.float32)


@dataclasses.dataclass(frozen=True)
class Decibel(Compression):
    """10·log10(max(x, floor))."""

    name: str = "db"
    formula: str = "10·log10(max(x, 1e-10))"
    floor: float = DB_FLOOR

    def numpy(self, power: np.ndarray) -> np.ndarray:
        """10·log10(max(x, floor)), float32."""
        power = super().numpy(power)
        return np.float32(10.0) * np.log10(np.maximum(power, np.float32(self.floor)))

    def tf(self, power):
        """In-graph :meth:`numpy`."""
        import tensorflow as tf

        return 10.0 * tf.math.log(tf.maximum(super().tf(power), self.floor)) / _LN10


@dataclasses.dataclass(frozen=True)
class Log(Compression):
    """log10(1 + scale·x)."""

    name: str = "log"
    formula: str = "log10(1 + 10000·x)"
    scale: float = LOG_SCALE

    def numpy(self, power: np.ndarray) -> np.ndarray:
        """log10(1 + scale·x), float32 (10000·x overflows float16 above x ≈ 6.55: cast first)."""
        power = super().numpy(power)
        return np.log10(np.float32(1.0) + np.float32(self.scale) * power)

    def tf(self, power):
        """In-graph :meth:`numpy`."""
        import tensorflow as tf

        return tf.math.log(1.0 + self.scale * super().tf(power)) / _LN10


REGISTRY: Registry[Compression] = Registry("compression", lambda: None)
names = REGISTRY.names

for _compression in (Decibel(), Log(), Compression()):
    REGISTRY.register(_compression.name)(_compression)


def check(name: str) -> str:
    """``name`` if it is a registered compression.

    Raises:
      ValueError: an unknown name (the message lists the known ones).
    """
    if not isinstance(name, str) or name not in names():
        raise ValueError(f"compression must be one of {', '.join(names())}, got {name!r}")
    return name


def get(compression: "str | Compression") -> Compression:
    """A registered compression by name (ValueError listing the names), or ``compression``."""
    if isinstance(compression, Compression):
        return compression
    return REGISTRY.get(check(compression))
