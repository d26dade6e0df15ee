"""Storage codecs of the stored base mels: one registry, one object per format.

A codec knows its bytes per value, how to encode a float32 *power* mel into the bytes of the
``mel`` feature (little-endian, row-major ``[n_frames, n_mels]``), how to decode them back to
power in NumPy and inside a TensorFlow graph (tf.data and the serving signatures), and the
parameters ``dataset.json`` records (``mel_codec``), from which a dataset is decoded. The codec's
name is the ``mel_dtype`` of a dataset (``--mel_dtype``). Decoding gives power, so every hop
factor and both compressions stay derivable on read whatever the codec.

Codecs:
  ``float32``: the power values, exact (4 bytes).
  ``float16``: 10·log10(power) as float16 (2 bytes): relative precision 2^-11 of the dB value
    (≤ 0.03 dB for |dB| < 128), zero power stored as -inf; nothing is flushed to zero (a float16
    *power* loses everything below ~6e-8, 12 % of the values of real music).
  ``uint8``: 10·log10(power) quantised to 255 levels (1 byte): code 0 = zero power, code
    k ≥ 1 = ``db_min + (k - 1) · db_step`` dB, i.e. -90 dB to +29.38 dB in steps of 0.47 dB;
    values outside are clipped to the ends (real music at 16 kHz: 99.9 % of non-zero values lie
    below +17 dB, ~1.5 % below -90 dB). Error of the dB view: within ±0.235 dB inside the range
    (median 0.12 dB); of the log view: ≤ 0.024, median 0.008–0.0096 (measured on real music,
    see README "Storage codecs").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from tftag.registry import Registry

DOMAINS = ("power", "db")


@dataclasses.dataclass(frozen=True)
class StorageCodec:
    """One storage format of the base power mels.

    Attributes:
      name: registry name, the dataset's ``mel_dtype``.
      dtype: NumPy dtype name of the stored values (``float32``, ``float16``, ``uint8``).
      domain: what is stored: ``power`` (the values) or ``db`` (10·log10 of them).
      db_min: dB of code 1 (integer dtypes only).
      db_step: dB between consecutive codes (integer dtypes only).
      note: one line for data cards and ``--helpfull``.
    """

    name: str
    dtype: str
    domain: str = "power"
    db_min: float | None = None
    db_step: float | None = None
    note: str = ""

    def __post_init__(self):
        if self.domain not in DOMAINS:
            raise ValueError(f"codec {self.name}: domain {self.domain!r}; known: {', '.join(DOMAINS)}")
        if self.integer:
            for key in ("db_min", "db_step"):
                value = getattr(self, key)
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                    raise ValueError(f"codec {self.name}: {key} = {value!r} is not a finite number")
            if not self.db_step > 0:
                raise ValueError(f"codec {self.name}: db_step = {self.db_step!r} must be > 0")
            if self.domain != "db":
                raise ValueError(f"codec {self.name}: integer codes need domain 'db'")

    @property
    def integer(self) -> bool:
        """Quantised integer codes (else IEEE floats)."""
        return np.dtype(self.dtype).kind in "iu"

    @property
    def bytes_per_value(self) -> int:
        """Stored bytes per mel value."""
        return np.dtype(self.dtype).itemsize

    @property
    def levels(self) -> int:
        """Non-zero codes of an integer codec (255 for uint8)."""
        return int(np.iinfo(np.dtype(self.dtype)).max) if self.integer else 0

    @property
    def db_max(self) -> float | None:
        """dB of the highest code (integer codecs)."""
        return self.db_min + (self.levels - 1) * self.db_step if self.integer else None

    def _stored(self, power: np.ndarray) -> np.ndarray:
        power = np.asarray(power, dtype=np.float32)
        if np.isnan(power).any():
            raise ValueError("mel contains NaN: nothing to store")
        power = np.maximum(power, np.float32(0.0))  # negative power is a rounding artefact
        if self.domain == "power":
            info = np.finfo(np.dtype(self.dtype))
            return np.minimum(power, info.max) if info.max < np.finfo(np.float32).max else power
        with np.errstate(divide="ignore"):
            db = np.float32(10.0) * np.log10(power)  # 0 -> -inf, inf -> inf
        if not self.integer:
            info = np.finfo(np.dtype(self.dtype))
            return np.where(np.isneginf(db), db, np.clip(db, -info.max, info.max))
        codes = np.clip(np.rint((db - np.float32(self.db_min)) / np.float32(self.db_step)),
                        0, self.levels - 1) + 1
        return np.where(power > 0, codes, 0)

    def encode(self, mel: np.ndarray) -> bytes:
        """Little-endian bytes of a float32 power mel in this format (ends of the range clip)."""
        stored = self._stored(mel)
        return np.ascontiguousarray(stored, dtype=np.dtype(self.dtype).newbyteorder("<")).tobytes()

    def decode(self, raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
        """The float32 power mel of ``shape`` from :meth:`encode`'s bytes."""
        values = np.frombuffer(raw, dtype=np.dtype(self.dtype).newbyteorder("<")).astype(np.float32)
        if self.integer:
            db = np.float32(self.db_min) + (values - 1) * np.float32(self.db_step)
            values = np.where(values > 0, np.power(np.float32(10.0), db / np.float32(10.0)), 0)
        elif self.domain == "db":
            with np.errstate(over="ignore"):  # +inf dB stays inf
                values = np.power(np.float32(10.0), values / np.float32(10.0))
        return values.astype(np.float32).reshape(shape)

    def decode_tf(self, raw):
        """In-graph :meth:`decode`: a scalar string tensor -> flat float32 power tensor."""
        import tensorflow as tf

        values = tf.cast(tf.io.decode_raw(raw, tf.dtypes.as_dtype(self.dtype), little_endian=True),
                         tf.float32)
        if self.integer:
            db = self.db_min + (values - 1.0) * self.db_step
            return tf.where(values > 0, tf.pow(10.0, db / 10.0), 0.0)
        if self.domain == "db":
            return tf.pow(10.0, values / 10.0)
        return values

    def describe(self) -> dict:
        """What ``dataset.json`` records of the format (``mel_codec``): enough to decode it."""
        out = {"codec": self.name, "dtype": self.dtype, "bytes_per_value": self.bytes_per_value,
               "domain": self.domain}
        if self.integer:
            out.update(db_min=self.db_min, db_step=self.db_step, db_max=round(self.db_max, 6))
        return out


REGISTRY: Registry[StorageCodec] = Registry("storage dtype", lambda: None)
names = REGISTRY.names

for _codec in (
    StorageCodec("float32", "float32", note="exact power"),
    StorageCodec("float16", "float16", "db", note="half the bytes; dB as float16 (<= 0.03 dB), "
                 "nothing flushed to zero"),
    StorageCodec("uint8", "uint8", "db", db_min=-90.0, db_step=0.47,
                 note="a quarter of the bytes; dB in 0.47-dB steps from -90 to +29.4 dB"),
):
    REGISTRY.register(_codec.name)(_codec)


def get(codec: "str | StorageCodec") -> StorageCodec:
    """A registered codec by name (ValueError listing the names), or ``codec`` itself."""
    return codec if isinstance(codec, StorageCodec) else REGISTRY.get(codec)


def from_dataset(raw: Mapping[str, Any], where: str) -> StorageCodec:
    """The codec a ``dataset.json`` was written with, from its ``mel_codec`` parameters.

    Datasets written before ``mel_codec`` existed name only ``mel_dtype`` and stored power
    (float32 or float16). A parameter that is missing or malformed is an error naming it.

    Args:
      raw: the parsed ``dataset.json``.
      where: its path, for messages.
    """
    name = raw.get("mel_dtype")
    params = raw.get("mel_codec")
    if params is None:
        if name not in ("float32", "float16"):
            raise ValueError(f"{where}: mel_dtype {name!r} needs its mel_codec parameters "
                             "(missing); re-run the extraction")
        return StorageCodec(name, name, "power", note="power (written before mel_codec)")
    if not isinstance(params, Mapping):
        raise ValueError(f"{where}: mel_codec must be an object, got {params!r}")
    registered = get(name) if name in names() else None
    if registered is None:
        raise ValueError(f"{where}: mel_dtype {name!r}; known: {', '.join(names())}")
    for key in ("codec", "dtype", "domain"):
        expected = getattr(registered, "name" if key == "codec" else key)
        if params.get(key) != expected:
            raise ValueError(f"{where}: mel_codec.{key} = {params.get(key)!r} does not fit "
                             f"mel_dtype {name!r} (expected {expected!r})")
    try:
        return dataclasses.replace(registered, db_min=params.get("db_min"),
                                   db_step=params.get("db_step")) if registered.integer else registered
    except ValueError as e:
        raise ValueError(f"{where}: mel_codec: {str(e).split(': ', 1)[1]}") from None
