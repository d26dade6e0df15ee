"""Safe access to Essentia from any process, whatever the user imported first.

The ``essentia-tensorflow`` wheel bundles its own libtensorflow (2.5). Loading it into a process
that already holds the ``tensorflow`` wheel aborts that process (duplicate op registrations),
while the opposite order works. tftag never lets that happen:

* if Essentia can be loaded here safely (it is loaded already, TensorFlow is not, or the
  installed wheel is the plain ``essentia`` one without TensorFlow), the Essentia operations run
  in this process;
* otherwise they run in a child Python process (:class:`EssentiaWorker`) that never imports
  TensorFlow, and only NumPy arrays cross the pipe.

The same worker isolates decoding in long jobs: a codec that crashes Essentia kills the child,
is reported as :class:`DecoderCrashedError`, and the next call starts a fresh child.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
import time
from typing import Any

import tftag
from tftag.audio._essentia_guard import (  # noqa: F401  (re-exported)
    AudioDecodeError, DecoderCrashedError, bundles_tensorflow, in_process_safe, receive_message,
    send_message)


def child_env() -> dict[str, str]:
    """The environment for a process that runs Essentia: this one's, without the oneDNN default
    that importing :mod:`tftag` set (``TF_ENABLE_ONEDNN_OPTS=0``, TensorFlow 2.5's own default:
    with it on, Essentia's TensorFlow 2.5 ``TensorflowPredict`` dies of SIGFPE on an AVX2 AMD
    EPYC). A value the user exported is kept."""
    import tftag

    env = dict(os.environ)
    if tftag.ONEDNN_DEFAULTED:
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    return env


class EssentiaWorker:
    """A child process running the functions of :mod:`tftag.audio._essentia_ops`.

    Args:
      timeout: seconds one call may take before the child is killed and the call fails.
    """

    def __init__(self, timeout: float | None = 300.0):
        self.timeout = timeout
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        env = child_env()
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        root = tftag.PACKAGE_PARENT
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        return subprocess.Popen(
            [sys.executable, "-m", "tftag.audio._essentia_ops"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def call(self, op: str, *args: Any) -> Any:
        """Runs ``tftag.audio._essentia_ops.<op>(*args)`` in the child and returns its result.

        Raises:
          DecoderCrashedError: the child died or timed out (a new one starts on the next call).
          Exception: whatever the operation raised in the child, re-raised here.
        """
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            try:
                send_message(proc.stdin, (op, args))
                status, value = receive_message(proc.stdout.fileno(), deadline)
            except TimeoutError:
                proc.kill()
                proc.wait()
                self._proc = None
                raise DecoderCrashedError(
                    f"Essentia worker timed out after {self.timeout:.0f} s in {op}{args!r}"
                ) from None
            except (EOFError, BrokenPipeError, OSError):
                code = proc.wait()
                self._proc = None
                raise DecoderCrashedError(
                    f"Essentia worker died with exit code {code} in {op}{args!r}"
                ) from None
        if status == "ok":
            return value
        raise value

    @property
    def pid(self) -> int | None:
        """The running child's process id (None before the first call or after it died)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def close(self) -> None:
        """Stops the child process."""
        with self._lock:
            if self._proc is not None:
                if self._proc.poll() is None:
                    try:
                        self._proc.stdin.close()
                        self._proc.wait(timeout=5)
                    except (OSError, subprocess.TimeoutExpired):
                        self._proc.kill()
                        self._proc.wait()
                self._proc = None

    def __enter__(self) -> "EssentiaWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_shared_worker: EssentiaWorker | None = None


def call(op: str, *args: Any) -> Any:
    """Runs an Essentia operation here if that is safe, else in the shared child process."""
    global _shared_worker
    if in_process_safe():
        try:
            from tftag.audio import _essentia_ops
        except ImportError as e:
            raise ImportError(
                "tftag needs Essentia: `pip install essentia-tensorflow` (see requirements.txt)"
            ) from e
        return getattr(_essentia_ops, op)(*args)
    if _shared_worker is None:
        _shared_worker = EssentiaWorker(timeout=None)
        atexit.register(_shared_worker.close)
    return _shared_worker.call(op, *args)
