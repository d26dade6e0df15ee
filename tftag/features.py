"""Mel-spectrograms of the study in every resolution, one implementation for all of tftag.

The chain is the paper's Essentia chain (Ferraro et al., EUSIPCO 2020, §III): frames of 512 samples
every 256 with Essentia's ``FrameGenerator(startFromZero=False)`` convention (the first frame is
centred on sample 0, zeros outside the signal), a symmetric Hann window
(``Windowing(type='hann', normalized=False)``), the magnitude ``Spectrum`` and ``MelBands``
(power, Slaney mel, unit_tri, 0..sr/2), which reproduces librosa's Slaney mel.

The window and the filterbank are read out of Essentia's algorithms once and applied as arrays,
so that one STFT feeds every band count, every hop is a decimation of the hop-256 frames and
every compression a function of the same power mel. :func:`melspectrograms` computes all
requested resolutions of one sample rate from one decode and one STFT.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from tftag.audio import _essentia, compressions
from tftag.audio._essentia import AudioDecodeError  # noqa: F401  (re-exported)
from tftag.audio.compressions import DB_FLOOR, LOG_SCALE  # noqa: F401  (re-exported)

N_FFT = 512
BASE_HOP = 256
PAPER_SRS = (12000, 16000)
PAPER_N_MELS = (128, 96, 48, 32, 24, 16, 8)
PAPER_HOP_FACTORS = (1, 2, 3, 4, 5, 10)
PAPER_COMPRESSIONS = ("db", "log")
COMPRESSIONS = tuple(compressions.names())  # the compression registry's names
DEFAULT_DURATION = 29.1
MIN_SR = 8000
MIN_N_MELS = 4
MAX_N_MELS = 256  # Essentia's MelBands needs more FFT bins than bands (257 for n_fft 512).

_NAME_RE = re.compile(rf"^sr(\d+)-mel(\d+)-hop(\d+)-({'|'.join(map(re.escape, COMPRESSIONS))})$")


def _check_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")


@dataclasses.dataclass(frozen=True)
class MelConfig:
    """One input resolution of the study.

    Attributes:
      sr: sample rate in Hz (paper: 12000 or 16000; any sr >= 8000 is accepted).
      n_mels: number of mel bands (paper: 128, 96, 48, 32, 24, 16, 8; any 4..256 accepted).
      hop_factor: time reduction k; the hop is 256·k samples (paper: 1, 2, 3, 4, 5, 10).
      compression: "db" (10·log10(max(x, 1e-10))), "log" (log10(1 + 10000·x)) or "power".
      duration: length in seconds of the centred crop every clip is brought to.
    """

    sr: int
    n_mels: int
    hop_factor: int
    compression: str
    duration: float = DEFAULT_DURATION

    def __post_init__(self):
        for field in ("sr", "n_mels", "hop_factor"):
            _check_int(getattr(self, field), field)
        if self.sr < MIN_SR:
            raise ValueError(
                f"sr must be one of {', '.join(map(str, PAPER_SRS))} (paper) or any int >= "
                f"{MIN_SR}, got {self.sr}"
            )
        if not MIN_N_MELS <= self.n_mels <= MAX_N_MELS:
            raise ValueError(
                f"n_mels must be one of {', '.join(map(str, PAPER_N_MELS))} or any int in "
                f"[{MIN_N_MELS}, {MAX_N_MELS}], got {self.n_mels}"
            )
        if self.hop_factor < 1:
            raise ValueError(
                f"hop_factor must be one of {', '.join(map(str, PAPER_HOP_FACTORS))} or any int "
                f">= 1, got {self.hop_factor}"
            )
        compressions.check(self.compression)  # an unknown name: ValueError listing the known ones
        if not (isinstance(self.duration, (int, float)) and math.isfinite(self.duration)
                and self.duration > 0):
            raise ValueError(f"duration must be a positive number of seconds, got {self.duration!r}")
        if round(self.duration * self.sr) < N_FFT:
            raise ValueError(
                f"duration {self.duration} s is shorter than one {N_FFT}-sample frame at sr {self.sr}"
            )

    @property
    def n_fft(self) -> int:
        """FFT and frame size (512 in the paper, at both sample rates)."""
        return N_FFT

    @property
    def hop_length(self) -> int:
        """Hop in samples: 256 · hop_factor."""
        return BASE_HOP * self.hop_factor

    @property
    def n_samples(self) -> int:
        """Samples in the centred crop: 349,200 at 12 kHz, 465,600 at 16 kHz for 29.1 s."""
        return int(round(self.duration * self.sr))

    @property
    def n_frames_hop1(self) -> int:
        """Frames of the crop at hop 256 (1366 at 12 kHz, 1820 at 16 kHz)."""
        return frame_count(self.n_samples)

    @property
    def n_frames(self) -> int:
        """Frames of the crop at this hop: every k-th hop-256 frame, ceil(N1 / k)."""
        return decimated_length(self.n_frames_hop1, self.hop_factor)

    def frames_in(self, seconds: float) -> int:
        """Frames of ``seconds`` at this hop: floor(seconds · sr / hop_length) (3 s: 187 at 16 kHz)."""
        return int(seconds * self.sr // self.hop_length)

    @property
    def shape(self) -> tuple[int, int]:
        """(n_frames, n_mels) of one cropped clip."""
        return (self.n_frames, self.n_mels)

    @property
    def fmax(self) -> float:
        """Upper edge of the filterbank: sr / 2."""
        return self.sr / 2

    @property
    def base_name(self) -> str:
        """Name of the stored base array this view derives from, e.g. ``sr16000-mel96``."""
        return f"sr{self.sr}-mel{self.n_mels}"

    @property
    def name(self) -> str:
        """``sr16000-mel96-hop1-log``: names this resolution in files, logs and tables."""
        return f"{self.base_name}-hop{self.hop_factor}-{self.compression}"

    @property
    def base(self) -> "MelConfig":
        """The hop-1 power config every view of (sr, n_mels) is derived from."""
        return dataclasses.replace(self, hop_factor=1, compression="power")

    def replace(self, **changes) -> "MelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_name(cls, name: str, duration: float = DEFAULT_DURATION) -> "MelConfig":
        """Parses ``sr16000-mel96-hop1-log`` back into a config."""
        match = _NAME_RE.match(name)
        if not match:
            raise ValueError(
                f"bad mel config name {name!r}; expected sr<SR>-mel<N_MELS>-hop<K>-"
                f"<{'|'.join(COMPRESSIONS)}>, e.g. sr16000-mel96-hop1-log"
            )
        sr, n_mels, hop, compression = match.groups()
        return cls(int(sr), int(n_mels), int(hop), compression, duration)

    @classmethod
    def paper_grid(cls, duration: float = DEFAULT_DURATION) -> list["MelConfig"]:
        """The study's 2 sr × 7 bands × 6 hops × 2 compressions = 168 configs."""
        return grid(PAPER_SRS, PAPER_N_MELS, PAPER_HOP_FACTORS, PAPER_COMPRESSIONS, duration)


def grid(
    srs: Iterable[int],
    n_mels: Iterable[int],
    hop_factors: Iterable[int],
    compressions: Iterable[str],
    duration: float = DEFAULT_DURATION,
) -> list[MelConfig]:
    """All combinations, in the order sr, n_mels, hop_factor, compression."""
    return [
        MelConfig(sr, m, k, c, duration)
        for sr in srs
        for m in n_mels
        for k in hop_factors
        for c in compressions
    ]


def frame_count(n_samples: int, hop_length: int = BASE_HOP) -> int:
    """Frames Essentia's FrameGenerator(512, hop, startFromZero=False) yields for n_samples.

    Frame i starts at sample -256 + hop·i and exists while it starts inside the signal.
    """
    if n_samples < 1:
        raise ValueError(f"need at least one sample, got {n_samples}")
    return -(-(n_samples + N_FFT // 2) // hop_length)


def decimated_length(n_frames: int, hop_factor: int) -> int:
    """Frames kept by keeping frames 0, k, 2k, ...: ceil(n_frames / k)."""
    return -(-n_frames // hop_factor)


class Crop(NamedTuple):
    """A centred crop: the samples, whether zeros were added, and the original length."""

    audio: np.ndarray
    padded: bool
    original_samples: int


def crop(audio: np.ndarray, sr: int, duration: float = DEFAULT_DURATION) -> Crop:
    """Centred crop of ``duration`` seconds, zero-padded on both sides if the audio is shorter.

    Args:
      audio: mono samples.
      sr: their sample rate.
      duration: seconds to keep.

    Returns:
      Crop(audio[round(duration·sr)] float32, padded, original_samples).
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"crop expects mono [samples] audio, got shape {audio.shape}")
    n = int(round(duration * sr))
    length = audio.shape[0]
    if length >= n:
        start = (length - n) // 2
        return Crop(audio[start:start + n], False, length)
    before = (n - length) // 2
    out = np.zeros(n, dtype=np.float32)
    out[before:before + length] = audio
    return Crop(out, True, length)


def load_audio(path: str | os.PathLike, sr: int, offset: float = 0.0,
               duration: float | None = None) -> np.ndarray:
    """Decodes an audio file (or the segment ``offset`` .. ``offset + duration`` s) to mono
    float32 at ``sr`` with Essentia.

    MonoLoader (FFmpeg; wav, flac, ogg, mp3, ...) decodes, downmixes and resamples; codecs known
    to crash Essentia (Ogg/Opus) are decoded by libsndfile and resampled by Essentia instead. A
    segment of a libsndfile format (Ogg Vorbis, FLAC, WAV, ...) is read by seeking, without
    decoding the rest of the file; other formats are decoded whole and sliced.

    Raises:
      FileNotFoundError: no such file.
      AudioDecodeError: the file is empty, not audio, or yields no finite samples.
    """
    _check_int(sr, "sr")
    if offset < 0 or (duration is not None and duration <= 0):
        raise ValueError(f"{path}: segment offset {offset} s, duration {duration} s: need offset "
                         ">= 0 and duration > 0")
    if offset == 0 and duration is None:
        return _essentia.call("load_audio", os.fspath(path), int(sr))
    return _essentia.call("load_audio", os.fspath(path), int(sr), float(offset),
                          None if duration is None else float(duration))


@functools.lru_cache(maxsize=None)
def hann_window(size: int = N_FFT) -> np.ndarray:
    """Essentia's symmetric Hann window (``Windowing(type='hann', normalized=False)``)."""
    window = _essentia.call("window", size)
    window.setflags(write=False)
    return window


@functools.lru_cache(maxsize=None)
def mel_filterbank(sr: int, n_mels: int, n_fft: int = N_FFT) -> np.ndarray:
    """Essentia MelBands weights as a read-only [n_fft//2 + 1, n_mels] float32 matrix."""
    weights = _essentia.call("mel_filterbank", int(sr), int(n_mels), int(n_fft))
    weights.setflags(write=False)
    return weights


def power_spectrogram(audio: np.ndarray) -> np.ndarray:
    """Squared magnitude spectra of the hop-256 frames: [frame_count(len), 257] float32."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"expected non-empty mono [samples] audio, got shape {audio.shape}")
    n_frames = frame_count(audio.size)
    half = N_FFT // 2
    padded = np.zeros(half + (n_frames - 1) * BASE_HOP + N_FFT, dtype=np.float32)
    padded[half:half + audio.size] = audio
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::BASE_HOP][:n_frames]
    spectrum = np.fft.rfft(frames * hann_window(N_FFT), axis=-1)  # [n_frames, 257]
    return (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def power_mel(power_spec: np.ndarray, sr: int, n_mels: int) -> np.ndarray:
    """Applies the mel filterbank: [n_frames, 257] -> [n_frames, n_mels] power mel.

    The product runs on one BLAS thread: OpenBLAS sums in a different order with another thread
    count (1-ulp differences), so a Dask worker (one thread) and an in-process run would
    otherwise store different bytes. One thread costs nothing at these sizes.
    """
    with _blas_controller().limit(limits=1, user_api="blas"):
        return np.matmul(power_spec, mel_filterbank(sr, n_mels)).astype(np.float32, copy=False)


def compress(power: np.ndarray, compression: str) -> np.ndarray:
    """"db": 10·log10(max(x, 1e-10)); "log": log10(1 + 10000·x); "power": x. Always float32.

    Float16 input is cast to float32 first (10000·x overflows float16 above x ≈ 6.55).
    See :mod:`tftag.audio.compressions` (one object per compression, with its in-graph twin).
    """
    return compressions.get(compression).numpy(power)


def decimate(mel: np.ndarray, hop_factor: int) -> np.ndarray:
    """Keeps frames 0, k, 2k, ... (same centres as hop 256·k): [ceil(N / k), n_mels]."""
    return mel[::hop_factor]


def derive(base_power_mel: np.ndarray, config: MelConfig) -> np.ndarray:
    """The view of ``config`` from its hop-1 power mel [N, n_mels]: decimate, then compress."""
    if base_power_mel.shape[-1] != config.n_mels:
        raise ValueError(
            f"{config.name}: base mel has {base_power_mel.shape[-1]} bands, expected {config.n_mels}"
        )
    return compress(decimate(base_power_mel, config.hop_factor), config.compression)


def melspectrogram(audio: np.ndarray, config: MelConfig) -> np.ndarray:
    """Mel-spectrogram of the whole signal (no crop) at ``config``'s resolution.

    Args:
      audio: mono samples at ``config.sr``.
      config: the resolution.

    Returns:
      float32 [frame_count(len(audio), config.hop_length), config.n_mels].
    """
    base = power_mel(power_spectrogram(audio), config.sr, config.n_mels)
    return np.ascontiguousarray(derive(base, config))


def base_mels(audio: np.ndarray, sr: int, n_mels: Iterable[int]) -> dict[int, np.ndarray]:
    """Hop-1 power mels for several band counts from one STFT: {n_mels: [N1, n_mels]}."""
    spec = power_spectrogram(audio)
    return {m: power_mel(spec, sr, m) for m in sorted(set(n_mels))}


def melspectrograms(
    audio: np.ndarray, sr: int, configs: Sequence[MelConfig]
) -> dict[str, np.ndarray]:
    """All requested resolutions of one sample rate from one STFT.

    Bands come from the shared spectrum, hops by decimation (views, no copy) and compressions
    from the same power mel (each compression computed once per band count).

    Args:
      audio: mono samples at ``sr``.
      sr: their sample rate; every config must have it.
      configs: the resolutions wanted.

    Returns:
      {config.name: float32 [frames, n_mels]}; arrays may be strided views of shared buffers.
    """
    wrong = sorted({c.sr for c in configs if c.sr != sr})
    if wrong:
        raise ValueError(f"melspectrograms got audio at sr {sr} but configs at sr {wrong}")
    bases = base_mels(audio, sr, (c.n_mels for c in configs))
    compressed: dict[tuple[int, str], np.ndarray] = {}
    out = {}
    for config in configs:
        key = (config.n_mels, config.compression)
        if key not in compressed:
            compressed[key] = compress(bases[config.n_mels], config.compression)
        out[config.name] = decimate(compressed[key], config.hop_factor)
    return out


def group_by_sr(configs: Iterable[MelConfig]) -> Mapping[int, list[MelConfig]]:
    """{sr: configs} in ascending sr order, keeping the order of configs inside each group."""
    groups: dict[int, list[MelConfig]] = {}
    for config in configs:
        groups.setdefault(config.sr, []).append(config)
    return dict(sorted(groups.items()))
