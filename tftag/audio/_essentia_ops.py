"""The Essentia operations tftag uses; imported only where Essentia may be loaded.

Run as ``python -m tftag.audio._essentia_ops`` it serves :class:`tftag.audio._essentia.EssentiaWorker`
requests on stdin/stdout (C-level stdout is redirected to stderr so Essentia's own prints cannot
corrupt the protocol).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tftag.audio import _essentia_guard as _guard  # noqa: E402

if not _guard.in_process_safe():
    raise ImportError(
        "tftag.audio._essentia_ops would load essentia-tensorflow's libtensorflow into a process that "
        "already imported tensorflow, which aborts it; call tftag.features (it runs Essentia in a "
        "child process then) or import essentia before tensorflow"
    )

import essentia  # noqa: E402
import essentia.standard as es  # noqa: E402

from tftag.audio._essentia_guard import AudioDecodeError  # noqa: E402

essentia.log.infoActive = False

RESAMPLE_QUALITY = 1  # MonoLoader's default (libsamplerate "sinc medium").
# Codecs that Essentia's FFmpeg decoder cannot handle safely: measured with essentia
# 2.1b6.dev1389, MonoLoader on Ogg/Opus raises "Unsupported codec!" and the process then aborts
# with "double free or corruption" at the next garbage collection. libsndfile decodes them.
SOUNDFILE_SUBTYPES = frozenset({"OPUS"})


def window(size: int) -> np.ndarray:
    """Essentia's Windowing(type='hann', normalized=False): a symmetric Hann of ``size``."""
    algo = es.Windowing(type="hann", normalized=False, zeroPhase=False, size=size)
    return np.asarray(algo(np.ones(size, dtype=np.float32)), dtype=np.float32)


def mel_filterbank(sr: int, n_mels: int, n_fft: int) -> np.ndarray:
    """Essentia MelBands (power, slaneyMel, unit_tri, 0..sr/2) as a [n_fft//2+1, n_mels] matrix.

    MelBands(type='power') squares its input and applies fixed triangles, so feeding unit
    spectra column by column reads out the weights exactly.
    """
    n_bins = n_fft // 2 + 1
    algo = es.MelBands(
        type="power",
        weighting="linear",
        normalize="unit_tri",
        warpingFormula="slaneyMel",
        lowFrequencyBound=0,
        highFrequencyBound=sr / 2,
        inputSize=n_bins,
        numberBands=n_mels,
        sampleRate=sr,
    )
    eye = np.eye(n_bins, dtype=np.float32)
    return np.stack([algo(row) for row in eye], axis=0).astype(np.float32)


def resample(audio: np.ndarray, in_sr: float, out_sr: float) -> np.ndarray:
    """Essentia Resample with MonoLoader's quality."""
    if int(in_sr) == int(out_sr):
        return np.asarray(audio, dtype=np.float32)
    algo = es.Resample(
        inputSampleRate=float(in_sr), outputSampleRate=float(out_sr), quality=RESAMPLE_QUALITY
    )
    return np.asarray(algo(np.ascontiguousarray(audio, dtype=np.float32)), dtype=np.float32)


def load_audio(path: str, sr: int, offset: float = 0.0, duration: float | None = None) -> np.ndarray:
    """Decodes ``path`` to mono float32 at ``sr`` (see :func:`tftag.features.load_audio`)."""
    import soundfile as sf

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such audio file")
    if os.path.getsize(path) == 0:
        raise AudioDecodeError(f"{path}: empty file (0 bytes)")
    try:
        info = sf.info(path)
    except Exception:  # not a libsndfile format: Essentia decides.
        info = None
    segment = offset > 0 or duration is not None
    if segment and info is not None:  # seek and decode the segment alone
        audio = _load_soundfile(path, sr, info, offset, duration)
    elif segment:
        audio = load_audio(path, sr)
        start = int(round(offset * sr))
        audio = audio[start:] if duration is None else audio[start:start + int(round(duration * sr))]
    elif info is not None and info.subtype in SOUNDFILE_SUBTYPES:
        audio = _load_soundfile(path, sr, info)
    else:
        try:
            audio = es.MonoLoader(filename=path, sampleRate=sr, resampleQuality=RESAMPLE_QUALITY)()
        except RuntimeError as e:
            if info is None:
                raise AudioDecodeError(f"{path}: Essentia could not decode it: {e}") from None
            # e.g. more than 2 channels, which MonoLoader refuses: libsndfile reads them.
            audio = _load_soundfile(path, sr, info)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size == 0:
        raise AudioDecodeError(f"{path}: decoded to 0 samples")
    if not np.all(np.isfinite(audio)):
        raise AudioDecodeError(f"{path}: decoded samples contain NaN or inf")
    return audio


def _load_soundfile(path: str, sr: int, info, offset: float = 0.0,
                    duration: float | None = None) -> np.ndarray:
    """libsndfile decode (of a segment: seek, read), channel average (MonoLoader's downmix),
    Essentia resampling."""
    import soundfile as sf

    start = int(round(offset * info.samplerate))
    frames = -1 if duration is None else int(round(duration * info.samplerate))
    try:
        data, file_sr = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioDecodeError(f"{path}: libsndfile could not decode {info.subtype}: {e}") from None
    return resample(data.mean(axis=1), file_sr, sr)


def essentia_mel_reference(audio: np.ndarray, sr: int, n_mels: int, hop_length: int) -> np.ndarray:
    """The paper's chain frame by frame with Essentia algorithms only (a test oracle; slow)."""
    win = es.Windowing(type="hann", normalized=False, size=512)
    spec = es.Spectrum(size=512)
    mel = es.MelBands(
        type="power", weighting="linear", normalize="unit_tri", warpingFormula="slaneyMel",
        lowFrequencyBound=0, highFrequencyBound=sr / 2, inputSize=257, numberBands=n_mels,
        sampleRate=sr,
    )
    frames = es.FrameGenerator(
        np.ascontiguousarray(audio, dtype=np.float32), frameSize=512, hopSize=hop_length,
        startFromZero=False,
    )
    return np.array([mel(spec(win(frame))) for frame in frames], dtype=np.float32)


def _serve() -> None:
    from tftag.audio._essentia_guard import receive_message, send_message

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed by Essentia goes to stderr, not into the protocol.
    ops = {
        "window": window,
        "mel_filterbank": mel_filterbank,
        "resample": resample,
        "load_audio": load_audio,
        "essentia_mel_reference": essentia_mel_reference,
        "crash_for_test": lambda: os.abort(),
    }
    while True:
        try:
            op, args = receive_message(0)
        except EOFError:
            return
        try:
            result = ("ok", ops[op](*args))
        except Exception as e:  # sent back and re-raised by the parent.
            try:
                import pickle

                pickle.dumps(e)
                result = ("err", e)
            except Exception:
                result = ("err", RuntimeError(f"{type(e).__name__}: {e}"))
        send_message(out, result)


if __name__ == "__main__":
    _serve()
