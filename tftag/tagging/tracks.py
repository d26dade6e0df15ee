"""Whole tracks in bounded memory: block decoding, a streaming mel equal to the whole-file one,
the model's windows over it, and the engine that tags files through them.

A track is read in blocks (:func:`read_blocks`: libsndfile block reads resampled by a streaming
soxr resampler; formats libsndfile cannot read are decoded whole by Essentia), turned into mel
frames by :class:`StreamingMel` — the same frames, bit for bit, as
:func:`tftag.features.melspectrogram` of the whole decoded signal (Essentia framing: frame ``i``
is centred on sample ``256·i``) — and cut into the model's windows by :class:`Windows`:
consecutive non-overlapping windows of ``window_frames`` frames (or a hop of ``hop_frames``), as
musicnn does, by the one rule of :mod:`tftag.patches`. Memory is bounded by the block and window
sizes, never by the track's length.

:func:`tag_tracks` runs that chain for a list of files while a scorer (``tftag.tagging.tag.Tagger``:
anything with a ``spec`` and ``score(windows)``) scores the previous windows in this process, and
yields a :class:`TrackResult` (taggram, embeddings) per file, or a failure record for a file that
cannot be read (:data:`UNREADABLE`). The chain runs in one background thread (NumPy, libsndfile and
soxr release the GIL) or in a :class:`DecoderPool` of worker processes (one per core), so that a
cheap model is bounded by decoding. Any other error of the decoding side — a worker that dies, a
failed import — ends the iteration with a one-line :class:`DecodingError` within about
POLL_SECONDS, never a wait on a queue no one fills.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import queue
import select
import subprocess
import sys
import threading
import time
from typing import Iterator, Protocol, Sequence

import numpy as np

from tftag import features, patches
from tftag.audio import _essentia
from tftag.audio._essentia_guard import DecoderCrashedError, receive_message, send_message
from tftag.errors import DataError
from tftag.features import MelConfig

BLOCK_SECONDS = 30.0
BATCH_WINDOWS = 8  # windows per model call (MTT_musicnn: 23 ms/window at 8, 30 at 16-32)
QUEUE_ITEMS = 8  # decoded batches waiting for the model (bounds memory)


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """How a track is cut into model inputs.

    Attributes:
      mel_config: the model's resolution.
      window_frames: frames per window (the model's input length).
      hop_frames: frames between window starts; None = ``window_frames`` (no overlap).
    """

    mel_config: MelConfig
    window_frames: int
    hop_frames: int | None = None

    def __post_init__(self):
        if self.window_frames < 1:
            raise ValueError(f"window_frames must be >= 1, got {self.window_frames}")
        if self.hop_frames is not None and self.hop_frames < 1:
            raise ValueError(f"hop_frames must be >= 1 or None, got {self.hop_frames}")

    @property
    def hop(self) -> int:
        """Frames between window starts."""
        return self.hop_frames or self.window_frames

    @property
    def frame_seconds(self) -> float:
        """Seconds between frames."""
        return self.mel_config.hop_length / self.mel_config.sr

    @property
    def window_seconds(self) -> float:
        """Seconds one window covers (frames × frame period)."""
        return self.window_frames * self.frame_seconds

    def n_windows(self, n_frames: int) -> int:
        """Full windows in ``n_frames`` frames; a track shorter than one window gets one
        (zero-padded): :func:`tftag.patches.n_windows`."""
        return patches.n_windows(n_frames, self.window_frames, self.hop)

    @classmethod
    def of_seconds(cls, mel_config: MelConfig, window_seconds: float,
                   hop_seconds: float | None = None) -> "WindowSpec":
        """Windows of ``window_seconds`` (at least 1 frame) every ``hop_seconds``."""
        window = max(1, mel_config.frames_in(window_seconds))
        hop = None if hop_seconds in (None, 0) else max(1, mel_config.frames_in(hop_seconds))
        return cls(mel_config, window, hop)


class StreamingMel:
    """Mel frames of a signal fed in blocks, equal to the mel of the whole signal.

    ``feed(samples)`` returns the frames that became complete; ``finish()`` the rest (the
    zero-padded tail), after which the frame count equals
    ``ceil(frame_count(total_samples) / hop_factor)``.
    """

    def __init__(self, config: MelConfig):
        self.config = config
        self._half = features.N_FFT // 2
        self._buffer = np.zeros(self._half, np.float32)  # left padding: frame 0 centred on 0
        self._start = 0  # padded-signal index of _buffer[0]
        self._next = 0  # index of the next hop-1 frame
        self._samples = 0
        self._window = features.hann_window(features.N_FFT)
        self.frames_out = 0

    def _frames(self, count: int) -> np.ndarray:
        """The next ``count`` hop-1 frames from the buffer, as compressed mel at the hop factor."""
        hop = features.BASE_HOP
        first = self._next * hop - self._start
        span = self._buffer[first:first + (count - 1) * hop + features.N_FFT]
        frames = np.lib.stride_tricks.sliding_window_view(span, features.N_FFT)[::hop][:count]
        keep = [i for i in range(count) if (self._next + i) % self.config.hop_factor == 0]
        self._next += count
        if not keep:
            return np.zeros((0, self.config.n_mels), np.float32)
        spectrum = np.fft.rfft(frames[keep] * self._window, axis=-1)
        power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
        mel = features.power_mel(power, self.config.sr, self.config.n_mels)
        self.frames_out += len(keep)
        return features.compress(mel, self.config.compression)

    def _drop_consumed(self) -> None:
        cut = self._next * features.BASE_HOP - self._start
        if cut > 0:
            self._buffer = self._buffer[cut:]
            self._start += cut

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Adds mono samples; returns the newly complete frames [k, n_mels]."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        self._samples += samples.size
        self._buffer = np.concatenate([self._buffer, samples])
        available = self._start + self._buffer.size  # padded-signal samples held so far
        complete = max(0, (available - features.N_FFT) // features.BASE_HOP + 1 - self._next)
        out = self._frames(complete) if complete else np.zeros((0, self.config.n_mels), np.float32)
        self._drop_consumed()
        return out

    def finish(self) -> np.ndarray:
        """The remaining frames (zero padding after the signal's end)."""
        if self._samples == 0:
            raise ValueError("no samples were fed")
        total = features.frame_count(self._samples)
        remaining = total - self._next
        if remaining <= 0:
            return np.zeros((0, self.config.n_mels), np.float32)
        need = (total - 1) * features.BASE_HOP + features.N_FFT - self._start
        if need > self._buffer.size:
            self._buffer = np.concatenate(
                [self._buffer, np.zeros(need - self._buffer.size, np.float32)])
        return self._frames(remaining)


class Windows:
    """Cuts a stream of mel frames into the spec's windows.

    ``push(frames)`` returns the windows completed so far ([w, window_frames, n_mels]);
    ``finish()`` returns the last ones: if the whole track is shorter than one window it is
    zero-padded to one (``padded`` is then True); a partial window at the end of a longer track
    is dropped, as musicnn does.
    """

    def __init__(self, spec: WindowSpec):
        self.spec = spec
        self._pending = np.zeros((0, spec.mel_config.n_mels), np.float32)
        self._pending_start = 0  # frame index of _pending[0]
        self._next_start = 0
        self.frames_seen = 0
        self.windows_out = 0
        self.padded = False

    def _take(self) -> np.ndarray:
        w, hop = self.spec.window_frames, self.spec.hop
        out = []
        # The full windows of the frames seen so far (tftag.patches' rule) not yet cut.
        for _ in range(self.windows_out, patches.full_windows(self.frames_seen, w, hop)):
            a = self._next_start - self._pending_start
            out.append(self._pending[a:a + w])
            self._next_start += hop
        cut = min(self._next_start - self._pending_start, len(self._pending))
        if cut > 0:
            self._pending = self._pending[cut:]
            self._pending_start += cut
        self.windows_out += len(out)
        return (np.stack(out) if out
                else np.zeros((0, w, self.spec.mel_config.n_mels), np.float32))

    def push(self, frames: np.ndarray) -> np.ndarray:
        self.frames_seen += len(frames)
        self._pending = np.concatenate([self._pending, frames]) if len(self._pending) else frames
        return self._take()

    def finish(self) -> np.ndarray:
        if self.windows_out == 0 and self.frames_seen > 0:
            self.padded = True
            w = self.spec.window_frames
            window = np.zeros((1, w, self.spec.mel_config.n_mels), np.float32)
            window[0, :len(self._pending)] = self._pending[:w]
            self.windows_out = 1
            return window
        return np.zeros((0, self.spec.window_frames, self.spec.mel_config.n_mels), np.float32)


def read_blocks(path: str, sr: int, block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Mono float32 blocks of a file at ``sr``, about ``block_seconds`` each.

    libsndfile formats (WAV, FLAC, Ogg Vorbis/Opus, MP3 with libsndfile ≥ 1.1) are read block by
    block and resampled by a streaming soxr resampler, so memory does not grow with the file;
    anything else is decoded whole by :func:`tftag.features.load_audio` and sliced.

    Raises:
      FileNotFoundError: no such file.
      tftag.features.AudioDecodeError: not decodable audio.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        import soundfile

        info = soundfile.info(path)
    except Exception:  # noqa: BLE001  libsndfile cannot read it: Essentia decodes it whole.
        info = None
    if info is None or info.frames <= 0:
        audio = features.load_audio(path, sr)
        step = max(1, int(block_seconds * sr))
        for start in range(0, audio.size, step):
            yield audio[start:start + step]
        return
    import soundfile
    import soxr

    step = max(1, int(block_seconds * info.samplerate))
    stream = (None if info.samplerate == sr
              else soxr.ResampleStream(info.samplerate, sr, 1, dtype="float32", quality="HQ"))
    with soundfile.SoundFile(path) as f:
        while True:
            block = f.read(step, dtype="float32", always_2d=True)
            last = block.shape[0] < step
            mono = block.mean(axis=1) if block.shape[0] else np.zeros(0, np.float32)
            out = mono if stream is None else stream.resample_chunk(mono, last=last)
            if out.size:
                yield out.astype(np.float32, copy=False)
            if last:
                break


# ----------------------------------------------------------------------------- tagging engine

class Scorer(Protocol):
    """What :func:`tag_tracks` scores with (``tftag.tagging.tag.Tagger``)."""

    spec: WindowSpec

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [w, n_tags], embeddings [w, d]) of windows [w, frames, n_mels]."""


@dataclasses.dataclass(frozen=True)
class TrackResult:
    """One tagged file.

    Attributes:
      path: the file.
      seconds: its duration at the model's sample rate.
      starts: window start times [W] in seconds; a window ends ``window_seconds`` later.
      window_seconds: seconds one window covers.
      taggram: per-window probabilities [W, n_tags].
      embeddings: per-window penultimate-layer embeddings [W, d], or None.
      padded: the file was shorter than one window (zero-padded to one).
    """

    path: str
    seconds: float
    starts: np.ndarray
    window_seconds: float
    taggram: np.ndarray
    embeddings: np.ndarray | None
    padded: bool

    @property
    def probabilities(self) -> np.ndarray:
        """Track-level probabilities [n_tags]: the mean over windows."""
        return self.taggram.mean(axis=0)

    @property
    def mean_embedding(self) -> np.ndarray | None:
        """The mean embedding [d], or None."""
        return None if self.embeddings is None else self.embeddings.mean(axis=0)


def track_windows(path: str, spec: WindowSpec,
                  block_seconds: float) -> Iterator[tuple[np.ndarray, dict]]:
    """The model windows of one file, in batches of at most BATCH_WINDOWS, streamed from block
    reads; the last item's info holds ``seconds`` and ``padded``."""
    mel = StreamingMel(spec.mel_config)
    cutter = Windows(spec)
    samples = 0
    pending = []

    def flush():
        nonlocal pending
        out = np.concatenate(pending) if pending else np.zeros(
            (0, spec.window_frames, spec.mel_config.n_mels), np.float32)
        pending = []
        return out

    for block in read_blocks(path, spec.mel_config.sr, block_seconds):
        samples += block.size
        pending.append(cutter.push(mel.feed(block)))
        if sum(len(p) for p in pending) >= BATCH_WINDOWS:
            yield flush(), {}
    if samples == 0:
        raise features.AudioDecodeError(f"{path}: no samples")
    pending.append(cutter.push(mel.finish()))
    pending.append(cutter.finish())
    yield flush(), {"seconds": samples / spec.mel_config.sr, "padded": cutter.padded}


# ----------------------------------------------------------------------------- decoding sources

class DecodingError(DataError):
    """The decoding thread or a decoding worker died or raised something other than an
    unreadable file's error: the run ends (exit code 1) with this one line; what was written
    stays."""


# An unreadable file's errors: the file is skipped and recorded; anything else ends the run.
UNREADABLE = (features.AudioDecodeError, FileNotFoundError, DecoderCrashedError, RuntimeError,
              ValueError, OSError)


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _fatal(path: str | None, error: str) -> DecodingError:
    return DecodingError(f"{error} (decoding {path})" if path else
                         f"{error} (a decoding worker starting)")


def file_messages(path: str, spec: WindowSpec,
                  block_seconds: float) -> Iterator[tuple[str, str, object]]:
    """One file as messages: ``("batch", path, (windows, info))`` per batch of
    :func:`track_windows` (the last one's info has ``seconds``), or, at an unreadable file's
    error, ``("failed", path, {"error", "reason"})`` (batches sent before it are void)."""
    try:
        for windows, info in track_windows(path, spec, block_seconds):
            yield "batch", path, (windows, info)
    except UNREADABLE as e:  # one bad file must not end the run
        yield "failed", path, {"error": type(e).__name__, "reason": str(e)}


def _thread_messages(files: Sequence[str], spec: WindowSpec,
                     block_seconds: float) -> Iterator[tuple[str, str, object]]:
    """:func:`file_messages` of every file, in order, from one background thread at most
    QUEUE_ITEMS batches ahead. An unexpected error there is raised here as a DecodingError."""
    items: queue.Queue = queue.Queue(maxsize=QUEUE_ITEMS)
    stop = threading.Event()

    def put(item) -> None:  # waits for room, unless the consumer is gone
        while not stop.is_set():
            try:
                return items.put(item, timeout=POLL_SECONDS)
            except queue.Full:
                continue

    def produce() -> None:
        path = None
        try:
            for path in files:
                if stop.is_set():
                    return
                for item in file_messages(path, spec, block_seconds):
                    put(item)
            put(None)
        except BaseException as e:  # noqa: BLE001  reported to the consumer, which ends the run
            put(("fatal", path, _one_line(e)))

    worker = threading.Thread(target=produce, name="tftag-decode", daemon=True)
    worker.start()
    try:
        while True:
            try:
                item = items.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not worker.is_alive() and items.empty():
                    raise DecodingError("the decoding thread ended without finishing") from None
                continue
            if item is None:
                return
            if item[0] == "fatal":
                raise _fatal(item[1], item[2])
            yield item
    finally:
        stop.set()
        worker.join(POLL_SECONDS)  # a daemon: one inside a long decode finishes on its own


WORKER_CODE = "from tftag.tagging.tracks import worker_main; worker_main()"
POLL_SECONDS = 0.5  # how often a waiting model loop checks its decoders are alive
PREFETCH = 2  # files queued per worker, so that it never waits for the model loop
MESSAGE_SECONDS = 60.0  # a message begun must be read whole within this


def worker_main() -> None:
    """A decoding worker (:class:`DecoderPool` starts it): reads ``(path, spec,
    block_seconds)`` tasks from stdin and writes :func:`file_messages` to stdout (length-prefixed
    pickles, :mod:`tftag.audio._essentia_guard`) until stdin ends. Any other error is sent as
    ``("fatal", path, one line)`` and ends the worker with exit code 1."""
    import signal

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what Essentia prints goes to stderr, not into the protocol
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the tagging process ends the workers
    path = None
    try:
        import soundfile  # noqa: F401  a missing decoder ends the run before the first file
        import soxr  # noqa: F401

        features.hann_window()  # loads Essentia here, while the tagging process loads its model
        while True:
            try:
                path, spec, block_seconds = receive_message(0)
            except EOFError:  # the tagging process closed the pool, or is gone
                return
            for message in file_messages(path, spec, block_seconds):
                send_message(out, message)
    except BrokenPipeError:  # the tagging process is gone
        return
    except BaseException as e:  # noqa: BLE001  one line for the tagging process, which ends the run
        try:
            send_message(out, ("fatal", path, _one_line(e)))
        except OSError:
            pass
        sys.exit(1)


class DecoderPool:
    """Decoding worker processes feeding this one: each reads files, computes their mel and cuts
    the model's windows (:func:`file_messages`).

    The workers are fresh Python processes (``python -c``; no fork of a process that may hold
    TensorFlow), started at construction so that their imports overlap the model's load. They
    never import TensorFlow, so Essentia runs inside them (:mod:`tftag.audio._essentia`). Each
    has at most PREFETCH files queued; results come back in completion order. A worker that dies
    or sends an unexpected error ends :meth:`messages` with a :class:`DecodingError` within
    about POLL_SECONDS; a pool left by an error is closed (its workers ended).

    Args:
      workers: processes to start (>= 1).
    """

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"--workers={workers}: need at least 1 decoding worker")
        import tftag

        env = _essentia.child_env()  # and the folder that holds this tftag first on the path
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (tftag.PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
        self._procs = [subprocess.Popen([sys.executable, "-c", WORKER_CODE], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                       for _ in range(workers)]

    @property
    def pids(self) -> list[int]:
        """The workers' process ids."""
        return [p.pid for p in self._procs]

    def messages(self, files: Sequence[str], spec: WindowSpec,
                 block_seconds: float) -> Iterator[tuple[str, str, object]]:
        """:func:`file_messages` of every file, decoded by the workers, as they complete.

        Raises:
          DecodingError: a worker died or failed otherwise than on an unreadable file.
        """
        if not self._procs:
            raise ValueError("this DecoderPool is closed")
        pending = iter(files)
        sent: dict[int, list[str]] = {p.pid: [] for p in self._procs}  # files queued per worker
        by_fd = {p.stdout.fileno(): p for p in self._procs}

        def send_next(proc: subprocess.Popen) -> None:
            path = next(pending, None)
            if path is not None:
                try:
                    send_message(proc.stdin, (path, spec, block_seconds))
                except OSError:
                    raise self._died(proc, sent[proc.pid]) from None
                sent[proc.pid].append(path)

        try:
            for proc in self._procs:
                for _ in range(PREFETCH):
                    send_next(proc)
            while any(sent.values()):
                ready, _, _ = select.select(list(by_fd), [], [], POLL_SECONDS)
                for fd in ready:
                    proc = by_fd[fd]
                    try:
                        kind, path, payload = receive_message(
                            fd, time.monotonic() + MESSAGE_SECONDS)
                    except (OSError, EOFError, pickle.UnpicklingError):
                        raise self._died(proc, sent[proc.pid]) from None
                    if kind == "fatal":
                        raise _fatal(path, payload)
                    if kind == "failed" or "seconds" in payload[1]:  # the file is done
                        sent[proc.pid].remove(path)
                        send_next(proc)
                    yield kind, path, payload
                if not ready:
                    for proc in self._procs:
                        if proc.poll() is not None:
                            raise self._died(proc, sent[proc.pid])
        except BaseException:
            self.close(kill=True)
            raise

    @staticmethod
    def _died(proc: subprocess.Popen, queued: list[str]) -> DecodingError:
        """The error of a worker that stopped answering: its own last word if it sent one
        (an exception's line), else how it died."""
        import signal

        deadline = time.monotonic() + 1.0
        while True:  # what it sent before it went (a fatal error at start-up, say)
            try:
                kind, path, payload = receive_message(proc.stdout.fileno(), deadline)
            except (OSError, EOFError, pickle.UnpicklingError):
                break
            if kind == "fatal":
                proc.kill()
                proc.wait()
                return _fatal(path, payload)
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # alive but mute mid-message
            proc.kill()
            code = proc.wait()
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        return _fatal(queued[0] if queued else None,
                      f"a decoding worker (pid {proc.pid}) died ({how})")

    def close(self, kill: bool = False) -> None:
        """Ends the workers: their stdin closes (they exit when idle); ``kill``, or a worker
        still running after 2 s, is killed."""
        deadline = time.monotonic() + 2.0
        for proc in self._procs:
            if kill:
                proc.kill()
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        self._procs = []

    def __enter__(self) -> "DecoderPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pool_messages(files: Sequence[str], spec: WindowSpec, block_seconds: float,
                   workers: int) -> Iterator[tuple[str, str, object]]:
    with DecoderPool(min(workers, max(1, len(files)))) as pool:
        yield from pool.messages(files, spec, block_seconds)


# ----------------------------------------------------------------------------- tagging engine

def tag_tracks(tagger: Scorer, files: Sequence[str], block_seconds: float = BLOCK_SECONDS,
               embeddings: bool = False, workers: int = 1,
               pool: DecoderPool | None = None) -> Iterator[TrackResult | dict]:
    """Tags every file whole; yields a :class:`TrackResult` per file, or a failure record
    ``{"path", "error", "reason"}`` for a file that cannot be read.

    Decoding and the mel run beside the model, which scores in this process: in one background
    thread (``workers=1``: results in file order) or in ``workers`` processes (a
    :class:`DecoderPool`, or ``pool``, kept open: results in completion order). The windows
    and their batches are the same either way, so are the probabilities.

    Raises:
      DecodingError: decoding failed otherwise than on an unreadable file (a worker died,
        an import failed, ...).
    """
    spec = tagger.spec
    if pool is not None:
        messages = pool.messages(files, spec, block_seconds)
    elif workers > 1:
        messages = _pool_messages(files, spec, block_seconds, workers)
    else:
        messages = _thread_messages(files, spec, block_seconds)
    hop_seconds = spec.hop * spec.frame_seconds
    scored: dict[str, tuple[list, list]] = {}  # the files in flight: their batches' outputs
    with contextlib.closing(messages):
        for kind, path, payload in messages:
            if kind == "failed":
                scored.pop(path, None)
                yield {"path": path, **payload}
                continue
            windows, info = payload
            probs, embs = scored.setdefault(path, ([], []))
            if len(windows):
                p, e = tagger.score(windows)
                probs.append(p)
                if embeddings:
                    embs.append(e)
            if "seconds" in info:  # the file's last batch
                del scored[path]
                taggram = np.concatenate(probs)
                yield TrackResult(path, info["seconds"], np.arange(len(taggram)) * hop_seconds,
                                  spec.window_seconds, taggram,
                                  np.concatenate(embs) if embeddings else None, info["padded"])
