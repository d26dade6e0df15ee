"""The parts of tftag's Essentia isolation that both sides use: whether Essentia may load in
this process, the decoding errors, and the pipe protocol between :mod:`tftag.audio._essentia` (the
caller) and :mod:`tftag.audio._essentia_ops` (the operations, here or in the child process). Imports
neither of them, so the two never import each other.
"""

from __future__ import annotations

import importlib.metadata
import os
import pickle
import select
import struct
import sys
import time
from typing import Any

_HEADER = struct.Struct("<Q")


class AudioDecodeError(ValueError):
    """An audio file could not be decoded into samples (the message names the file and why)."""


class DecoderCrashedError(RuntimeError):
    """The isolated Essentia process died (e.g. a codec aborted it) or timed out."""


def bundles_tensorflow() -> bool:
    """Whether the installed Essentia wheel carries its own libtensorflow."""
    try:
        importlib.metadata.distribution("essentia-tensorflow")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def in_process_safe() -> bool:
    """Whether Essentia can run in this process without aborting it."""
    if "essentia" in sys.modules:
        return True
    if "tensorflow" not in sys.modules:
        return True
    return not bundles_tensorflow()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def send_message(stream, obj: Any) -> None:
    """Writes one length-prefixed pickle to a binary stream."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def receive_message(fd: int, deadline: float | None = None) -> Any:
    """Reads one length-prefixed pickle from a file descriptor."""
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    return pickle.loads(_read_exact(fd, size, deadline))
