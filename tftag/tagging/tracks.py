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

:func:`tag_tracks` runs that chain for a list of files in a background thread (NumPy,
libsndfile and soxr release the GIL) while a scorer (``tftag.tagging.tag.Tagger``: anything with a
``spec`` and ``score(windows)``) scores the previous windows, and yields a :class:`TrackResult`
(taggram, embeddings) per file, or a failure record for a file that cannot be read.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from typing import Iterator, Protocol, Sequence

import numpy as np

from tftag import features, patches
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


def tag_tracks(tagger: Scorer, files: Sequence[str], block_seconds: float = BLOCK_SECONDS,
               embeddings: bool = False) -> Iterator[TrackResult | dict]:
    """Tags every file whole; yields a :class:`TrackResult` per file, or a failure record
    ``{"path", "error", "reason"}`` for a file that cannot be read.

    Decoding and mel computation run in a background thread, at most QUEUE_ITEMS batches
    ahead of the model.
    """
    from tftag.audio._essentia import DecoderCrashedError

    errors = (features.AudioDecodeError, FileNotFoundError, DecoderCrashedError, RuntimeError,
              ValueError, OSError)
    items: queue.Queue = queue.Queue(maxsize=QUEUE_ITEMS)
    stop = threading.Event()

    def produce():
        for path in files:
            if stop.is_set():
                return
            try:
                for windows, info in track_windows(path, tagger.spec, block_seconds):
                    items.put((path, windows, info))
            except errors as e:  # noqa: PERF203  one bad file must not end the run
                items.put((path, None, {"error": type(e).__name__, "reason": str(e)}))
        items.put(None)

    worker = threading.Thread(target=produce, name="tftag-decode", daemon=True)
    worker.start()
    window_seconds = tagger.spec.window_seconds
    hop_seconds = tagger.spec.hop * tagger.spec.frame_seconds
    probs: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    try:
        while True:
            item = items.get()
            if item is None:
                break
            path, windows, info = item
            if windows is None:
                probs, embs = [], []
                yield {"path": path, **info}
                continue
            if len(windows):
                p, e = tagger.score(windows)
                probs.append(p)
                if embeddings:
                    embs.append(e)
            if "seconds" in info:  # the file's last batch
                taggram = np.concatenate(probs)
                yield TrackResult(path, info["seconds"],
                                  np.arange(len(taggram)) * hop_seconds, window_seconds, taggram,
                                  np.concatenate(embs) if embeddings else None, info["padded"])
                probs, embs = [], []
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                items.get_nowait()
            except queue.Empty:
                worker.join(0.05)
