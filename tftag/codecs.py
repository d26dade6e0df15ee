"""Storage codecs of the stored base mels: one registry, one object per format.

A codec knows its bytes per value, how to encode a float32 power mel into the bytes of the
``mel`` feature (little-endian, row-major ``[n_frames, n_mels]``), how to decode them again in
NumPy and inside a TensorFlow graph, and what it records in ``dataset.json``. The codec's name
is the ``mel_dtype`` of a dataset (``--mel_dtype``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tftag.registry import Registry


@dataclasses.dataclass(frozen=True)
class StorageCodec:
    """A plain IEEE float storage format.

    Attributes:
      name: registry name, the dataset's ``mel_dtype``.
      dtype: NumPy dtype name of the stored values.
      note: one line for data cards and ``--helpfull``.
    """

    name: str
    dtype: str
    note: str = ""

    @property
    def bytes_per_value(self) -> int:
        """Stored bytes per mel value."""
        return np.dtype(self.dtype).itemsize

    def encode(self, mel: np.ndarray) -> bytes:
        """Little-endian bytes of ``mel`` in this format (values beyond its range are clipped)."""
        mel = np.asarray(mel, dtype=np.float32)
        info = np.finfo(np.dtype(self.dtype))
        if info.max < np.finfo(np.float32).max:
            mel = np.clip(mel, -info.max, info.max)
        return np.ascontiguousarray(mel, dtype=np.dtype(self.dtype).newbyteorder("<")).tobytes()

    def decode(self, raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
        """float32 array of ``shape`` from :meth:`encode`'s bytes."""
        values = np.frombuffer(raw, dtype=np.dtype(self.dtype).newbyteorder("<"))
        return values.astype(np.float32).reshape(shape)

    def decode_tf(self, raw):
        """In-graph :meth:`decode`: a scalar string tensor -> flat float32 tensor."""
        import tensorflow as tf

        values = tf.io.decode_raw(raw, tf.dtypes.as_dtype(self.dtype), little_endian=True)
        return tf.cast(values, tf.float32)

    def describe(self) -> dict:
        """What ``dataset.json`` records of the format."""
        return {"codec": self.name, "dtype": self.dtype, "bytes_per_value": self.bytes_per_value}


REGISTRY: Registry[StorageCodec] = Registry("storage dtype", lambda: None)
names = REGISTRY.names
get = REGISTRY.get

for _codec in (
    StorageCodec("float32", "float32", "exact"),
    StorageCodec("float16", "float16", "half the bytes; power below ~6e-8 flushes to zero"),
):
    REGISTRY.register(_codec.name)(_codec)
