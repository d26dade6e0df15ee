"""The one windowing rule: where a clip or track of N frames is cut into model inputs, and how
the scores of those inputs become one score.

A model reads windows of ``window_frames`` frames (a patch model's patch, else the whole clip).
Windows start at frames 0, hop, 2·hop, … (hop = ``window_frames`` unless given: consecutive,
non-overlapping, as musicnn) and must lie wholly inside the N frames, so a partial window at
the end is dropped: a clip or track of N ≥ ``window_frames`` frames has
``(N - window_frames) // hop + 1`` windows (N // window_frames without overlap). One shorter
than a window is zero-padded to exactly one window. A clip's probabilities are the mean of the
sigmoids of its windows' logits (:func:`mean_probabilities`); expensive patch models may score
only some evenly spaced windows (:func:`evenly_spaced`).

Evaluation, the TFLite interpreter wrapper, the teacher labels, the SavedModel's clip and
track signatures and the streaming tagger of whole tracks all cut through this module. It
imports no tftag module, and TensorFlow only inside the functions that build graph ops.
"""

from __future__ import annotations

import numpy as np


def hop_of(window_frames: int, hop_frames: int | None = None) -> int:
    """Frames between window starts: ``hop_frames``, or ``window_frames`` when None or 0.

    Raises:
      ValueError: ``window_frames`` < 1 or ``hop_frames`` < 0.
    """
    if window_frames < 1:
        raise ValueError(f"window_frames must be >= 1, got {window_frames}")
    if hop_frames is not None and hop_frames < 0:
        raise ValueError(f"hop_frames must be >= 1 or None, got {hop_frames}")
    return hop_frames or window_frames


def full_windows(n_frames: int, window_frames: int, hop_frames: int | None = None) -> int:
    """Windows wholly inside ``n_frames`` frames (0 when they are fewer than one window)."""
    hop = hop_of(window_frames, hop_frames)
    return 0 if n_frames < window_frames else (n_frames - window_frames) // hop + 1


def n_windows(n_frames: int, window_frames: int, hop_frames: int | None = None) -> int:
    """Model inputs of a clip or track of ``n_frames`` frames: its full windows, or one
    zero-padded window when it is shorter than one."""
    return max(1, full_windows(n_frames, window_frames, hop_frames))


def window_starts(n_frames: int, window_frames: int, hop_frames: int | None = None) -> np.ndarray:
    """First frame of every window, int64 [n_windows]: 0, hop, 2·hop, …"""
    hop = hop_of(window_frames, hop_frames)
    return np.arange(n_windows(n_frames, window_frames, hop_frames), dtype=np.int64) * hop


def windows(mel: np.ndarray, window_frames: int, hop_frames: int | None = None) -> np.ndarray:
    """The model inputs of clips, in NumPy.

    Args:
      mel: [b, T, F] clips.
      window_frames: frames of one model input.
      hop_frames: frames between window starts (None: ``window_frames``).

    Returns:
      float32 [b, W, window_frames, F], W = :func:`n_windows` (T): a clip shorter than one
      window zero-padded to one.
    """
    mel = np.asarray(mel, np.float32)
    b, n_frames, n_mels = mel.shape
    if n_frames < window_frames:
        mel = np.pad(mel, [(0, 0), (0, window_frames - n_frames), (0, 0)])
    hop = hop_of(window_frames, hop_frames)
    count = n_windows(n_frames, window_frames, hop_frames)
    if hop == window_frames:  # consecutive windows: a reshape of the kept frames
        return mel[:, : count * window_frames].reshape(b, count, window_frames, n_mels)
    return np.stack([mel[:, s:s + window_frames]
                     for s in window_starts(n_frames, window_frames, hop_frames)], axis=1)


def track_windows_tf(mel, window_frames: int, hop_frames: int | None = None):
    """In-graph windows of one track of any length: (windows [W, window_frames, F], padded).

    Args:
      mel: [T, F] tensor, T possibly unknown until run time.
      window_frames: frames of one model input.
      hop_frames: frames between window starts (None: ``window_frames``).

    Returns:
      The windows (W = :func:`n_windows` (T)) and a bool scalar tensor: T < ``window_frames``
      (the track was zero-padded to one window).
    """
    import tensorflow as tf

    n = tf.shape(mel)[0]
    padded = n < window_frames
    mel = tf.pad(mel, [[0, tf.maximum(window_frames - n, 0)], [0, 0]])
    # Full windows only: the tail shorter than a window is dropped.
    frames = tf.signal.frame(mel, window_frames, hop_of(window_frames, hop_frames), axis=0)
    return frames, padded


def evenly_spaced(count: int, max_patches: int | None) -> list[int]:
    """Which of ``count`` windows to score: all, or ``max_patches`` evenly spaced ones
    (1 = the centre window).

    Raises:
      ValueError: ``max_patches`` < 1.
    """
    if max_patches is None or max_patches >= count:
        return list(range(count))
    if max_patches < 1:
        raise ValueError(f"max_patches must be >= 1 or None, got {max_patches}")
    return sorted({int(round((i + 0.5) * count / max_patches - 0.5)) for i in range(max_patches)})


def mean_probabilities(model, mel, window_frames: int | None, max_patches: int | None = None):
    """Mean sigmoid over the non-overlapping windows of each clip: [b, T, F] -> [b, n_tags].

    Args:
      model: a Keras model (logits out) of ``window_frames`` input frames.
      mel: [b, T, F] clips (a tensor or an array; T must be known when the graph is built).
      window_frames: frames of one model input; None (or T) = the whole clip.
      max_patches: score only this many evenly spaced windows (:func:`evenly_spaced`); None =
        all. Training's validation uses it for expensive patch models, as musicnn validates on
        patches, and a sweep model's ``test_patches`` for its test.

    Returns:
      A float tensor [b, n_tags].
    """
    import tensorflow as tf

    if window_frames is None or window_frames == mel.shape[1]:
        return tf.sigmoid(model(mel, training=False))
    n_frames, n_mels = mel.shape[1], mel.shape[2]
    count = n_windows(n_frames, window_frames)
    if n_frames < window_frames:
        mel = tf.pad(mel, [[0, 0], [0, window_frames - n_frames], [0, 0]])
    cut = tf.reshape(mel[:, : count * window_frames], [-1, count, window_frames, n_mels])
    keep = evenly_spaced(count, max_patches)
    if len(keep) < count:
        cut = tf.gather(cut, keep, axis=1)
    count = len(keep)
    cut = tf.reshape(cut, [-1, window_frames, n_mels])  # [b · W, window, F]
    probabilities = tf.sigmoid(model(cut, training=False))  # [b · W, n_tags]
    return tf.reduce_mean(tf.reshape(probabilities, [-1, count, probabilities.shape[-1]]), axis=1)
