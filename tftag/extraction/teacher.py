"""Teacher labels: a pretrained tagger labels any collection, students learn from it.

``--labels=teacher:MTT_musicnn`` (or ``teacher:MTT_vgg``) makes extraction run the pretrained
model (:mod:`tftag.models.pretrained`) over every clip on its own input — 16 kHz, 96 bands, hop
256, log10(1 + 10000·x), non-overlapping 187-frame (3-s) patches of the clip's crop, sigmoids
averaged over the patches, as musicnn tags a file — and store per clip:

- ``soft_labels``: the 50 probabilities (the distillation target, ``--loss=distill``);
- ``labels``: the hard labels, **the clip's top-k tags by teacher probability** (k =
  :data:`DEFAULT_TOP_K` = 3). Top-k is a per-clip rule (no pass over the whole corpus, so a
  clip's labels do not change when the collection grows) that gives every clip positives; tags
  the teacher never ranks in a clip's top 3 have no positives and are skipped by the macro
  metrics, as absent tags are on any split.

The teachers are the musicnn ports of :data:`tftag.models.pretrained.REGISTRY`
(:func:`tftag.models.pretrained.ports`; tftag's shipped students are not teachers); the tag
list is the MTAT top 50 in the checkpoints' order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tftag import patches

CATALOG = "catalog"
PREFIX = "teacher:"
DEFAULT_TOP_K = 3
SR = 16000


def parse_labels(labels: str) -> str | None:
    """The teacher name of a ``--labels`` value ("catalog" -> None).

    Raises:
      ValueError: anything but ``catalog`` or ``teacher:<name>`` of a pretrained model
        (:data:`tftag.models.pretrained.REGISTRY`).
    """
    from tftag.models import pretrained

    if labels == CATALOG:
        return None
    if labels.startswith(PREFIX) and labels[len(PREFIX):] in pretrained.ports():
        return labels[len(PREFIX):]
    allowed = ", ".join([CATALOG] + [PREFIX + t for t in pretrained.ports()])
    raise ValueError(f"labels must be one of {allowed}, got {labels!r}")


def tags() -> tuple[str, ...]:
    """The teachers' tag list (MTAT top 50)."""
    from tftag.datasets.mtat import TOP50_TAGS

    return tuple(TOP50_TAGS)


def hard_labels(probabilities: np.ndarray, top_k: int = DEFAULT_TOP_K) -> np.ndarray:
    """int64 multi-hot of the ``top_k`` most probable tags (ties: the lower tag index first)."""
    p = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-p, kind="stable")[:top_k]
    labels = np.zeros(p.shape[-1], dtype=np.int64)
    labels[order] = 1
    return labels


@dataclasses.dataclass
class Teacher:
    """A loaded pretrained teacher (one per worker process)."""

    name: str
    top_k: int = DEFAULT_TOP_K

    def __post_init__(self):
        from tftag.models import pretrained

        parse_labels(PREFIX + self.name)
        self.model = pretrained.load_musicnn(self.name)
        self.patch_frames = pretrained.PATCH_FRAMES
        self.tags = tags()

    def mel_config(self, duration: float):
        """The teacher's input resolution for a crop of ``duration`` seconds."""
        from tftag.models import pretrained

        return pretrained.MEL_CONFIG.replace(duration=duration)

    def probabilities(self, mel: np.ndarray) -> np.ndarray:
        """Mean sigmoid over the non-overlapping patches of a log-mel [frames, 96] -> [50]."""
        import tensorflow as tf

        x = tf.constant(np.asarray(mel, np.float32)[None])
        return patches.mean_probabilities(self.model, x, self.patch_frames).numpy()[0].astype(
            np.float32)

    def label(self, audio_16k: np.ndarray, duration: float) -> tuple[np.ndarray, np.ndarray]:
        """(hard labels int64 [50], soft labels float32 [50]) of a clip's 16 kHz crop."""
        from tftag import features

        soft = self.probabilities(features.melspectrogram(audio_16k, self.mel_config(duration)))
        return hard_labels(soft, self.top_k), soft


# Label memo ---------------------------------------------------------------------------------
# The teacher is most of an extraction's time (~60 % of the real-music study's 45 minutes on 2
# cores). Its labels are a function of a clip's 16 kHz crop, so they are remembered by content:
# ``--teacher_memo=FILE`` (.npz) maps a fingerprint of the crop to the teacher's probabilities; a
# re-extraction of the same music (another machine, more resolutions, another codec) reads them
# instead of running the teacher, and a clip whose audio changed misses and is labelled anew.
# The fingerprint is the crop's 8-band hop-1 mel in dB, averaged over MEMO_BLOCKS equal time
# blocks (MEMO_BLOCKS x 8 values); a crop matches an entry whose fingerprint is within
# MEMO_TOLERANCE_DB of its own in every value. Not an exact hash: the mel's last bits depend on
# the CPU's BLAS kernels (an AVX2 and an AVX-512 machine differ by ~1e-7 relative, ~1e-6 dB),
# and a SHA-1 of them missed on every clip of a machine of another kind (2 hits of 2,214); the
# nearest two distinct clips of the real-music study are 0.13 dB apart (median 7.9 dB). The fingerprint is read off the stored
# float32 8-band base as well (:func:`memo_from_dataset`), decoding nothing.
MEMO_KEY_N_MELS = 8
MEMO_BLOCKS = 10
MEMO_TOLERANCE_DB = 0.01
MEMO_FORMAT = 2


def memo_fingerprint_of_mel(mel_8: np.ndarray) -> np.ndarray:
    """The memo fingerprint (float32 [MEMO_BLOCKS * 8], dB) from a crop's 8-band hop-1 power
    mel [frames, 8]."""
    mel = np.asarray(mel_8, dtype=np.float64)
    if mel.ndim != 2 or mel.shape[1] != MEMO_KEY_N_MELS or mel.shape[0] < MEMO_BLOCKS:
        raise ValueError(f"a memo fingerprint needs a [frames >= {MEMO_BLOCKS}, "
                         f"{MEMO_KEY_N_MELS}] mel, got {mel.shape}")
    db = 10.0 * np.log10(mel + 1e-10)
    return np.stack([b.mean(axis=0) for b in np.array_split(db, MEMO_BLOCKS)]).astype(
        np.float32).ravel()


def memo_fingerprint(audio_16k: np.ndarray) -> np.ndarray:
    """The memo fingerprint of a clip's 16 kHz crop (:func:`memo_fingerprint_of_mel`)."""
    from tftag import features

    return memo_fingerprint_of_mel(
        features.base_mels(audio_16k, SR, (MEMO_KEY_N_MELS,))[MEMO_KEY_N_MELS])


def _fingerprint_name(fingerprint: np.ndarray) -> str:
    """A file name for a staged entry (SHA-1 of the fingerprint's bytes)."""
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(fingerprint, np.float32).tobytes()).hexdigest()


class Memo:
    """Teacher probabilities by crop fingerprint: :meth:`get` finds an entry within
    :data:`MEMO_TOLERANCE_DB` in every value (the nearest if several), :meth:`add` keeps the
    first entry of a crop."""

    def __init__(self, fingerprints=(), soft=()):
        self._fps = np.zeros((0, MEMO_BLOCKS * MEMO_KEY_N_MELS), np.float32)  # grows by doubling
        self._soft: list[np.ndarray] = []
        for fp, s in zip(fingerprints, soft):
            self.add(fp, s)

    def __len__(self) -> int:
        return len(self._soft)

    def get(self, fingerprint: np.ndarray) -> np.ndarray | None:
        """The probabilities remembered for a crop of this fingerprint, or None."""
        if not self._soft:
            return None
        known = self._fps[:len(self._soft)]
        distance = np.max(np.abs(known - np.asarray(fingerprint, np.float32)), axis=1)
        i = int(np.argmin(distance))
        return self._soft[i] if distance[i] <= MEMO_TOLERANCE_DB else None

    def add(self, fingerprint: np.ndarray, soft: np.ndarray) -> bool:
        """Remembers a crop's probabilities; False if the crop is already known."""
        if self.get(fingerprint) is not None:
            return False
        n = len(self._soft)
        if n == len(self._fps):
            self._fps = np.concatenate([self._fps, np.zeros((max(n, 16), self._fps.shape[1]),
                                                            np.float32)])
        self._fps[n] = np.asarray(fingerprint, np.float32)
        self._soft.append(np.asarray(soft, np.float32))
        return True

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(fingerprints [N, F], soft [N, 50]) in a canonical order (by the fingerprints'
        SHA-1), so the same entries give the same bytes."""
        fps = self._fps[:len(self._soft)]
        order = sorted(range(len(fps)), key=lambda i: _fingerprint_name(fps[i]))
        soft = (np.stack([self._soft[i] for i in order]) if order
                else np.zeros((0, len(tags())), np.float32))
        return fps[order], soft


def _memo_identity(name: str, duration: float) -> dict:
    return {"format": MEMO_FORMAT, "teacher": name, "duration": float(duration), "sr": SR,
            "key_n_mels": MEMO_KEY_N_MELS, "blocks": MEMO_BLOCKS,
            "tolerance_db": MEMO_TOLERANCE_DB}


def read_memo(path: str, name: str, duration: float) -> Memo:
    """The entries of a memo file; empty if there is none, or if it is of an older format (its
    fingerprints cannot be compared: logged, and the next write replaces it).

    Raises:
      ValueError: the file is not a memo, or one of another teacher or crop duration (named).
    """
    import json
    import os

    from absl import logging

    if not os.path.exists(path):
        return Memo()
    try:
        with np.load(path, allow_pickle=False) as npz:
            identity = json.loads(str(npz["identity"]))
            if identity.get("format") != MEMO_FORMAT:
                logging.warning("--teacher_memo=%s: format %s, not %d: not used, rewritten with "
                                "this extraction's labels", path, identity.get("format"),
                                MEMO_FORMAT)
                return Memo()
            fps = np.asarray(npz["fingerprints"], np.float32)
            soft = np.asarray(npz["soft"], np.float32)
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"--teacher_memo={path}: not a teacher memo ({e})") from None
    want = _memo_identity(name, duration)
    wrong = {k: (identity.get(k), v) for k, v in want.items() if identity.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k} {got!r} (this extraction: {v!r})" for k, (got, v) in wrong.items())
        raise ValueError(f"--teacher_memo={path}: made for another extraction: {detail}")
    if soft.shape != (len(fps), len(tags())) or fps.shape[1:] != (MEMO_BLOCKS * MEMO_KEY_N_MELS,):
        raise ValueError(f"--teacher_memo={path}: fingerprints {fps.shape} and soft labels "
                         f"{soft.shape}, expected (N, {MEMO_BLOCKS * MEMO_KEY_N_MELS}) and "
                         f"(N, {len(tags())})")
    return Memo(fps, soft)


def write_memo(path: str, name: str, duration: float, memo: Memo) -> None:
    """Writes a memo file atomically (canonical order: the same entries give the same bytes)."""
    import io
    import json

    from tftag.runs import runfiles

    fps, soft = memo.arrays()
    buf = io.BytesIO()
    np.savez_compressed(buf, identity=np.array(json.dumps(_memo_identity(name, duration))),
                        fingerprints=fps, soft=soft)
    runfiles.write_bytes_atomic(path, buf.getvalue())


@dataclasses.dataclass
class MemoTeacher:
    """A teacher that looks each crop up in a memo first (the interface of :class:`Teacher`).

    The model is loaded only at the first miss; each miss is added to ``known`` and, with
    ``stage_dir``, staged as ``<sha1>.npz`` there (so a resumed extraction keeps it until
    :func:`merge_staged` writes the memo file).
    """

    name: str
    top_k: int = DEFAULT_TOP_K
    known: Memo = dataclasses.field(default_factory=Memo)
    stage_dir: str | None = None
    teacher: Teacher | None = None
    hits: int = 0

    def label(self, audio_16k: np.ndarray, duration: float) -> tuple[np.ndarray, np.ndarray]:
        """(hard labels int64 [50], soft labels float32 [50]) of a clip's 16 kHz crop."""
        fingerprint = memo_fingerprint(audio_16k)
        soft = self.known.get(fingerprint)
        if soft is not None:
            self.hits += 1
            return hard_labels(soft, self.top_k), np.asarray(soft, np.float32)
        if self.teacher is None:
            self.teacher = Teacher(self.name, self.top_k)
        labels, soft = self.teacher.label(audio_16k, duration)
        self.known.add(fingerprint, soft)
        if self.stage_dir:
            import io
            import os

            from tftag.runs import runfiles

            buf = io.BytesIO()
            np.savez(buf, fingerprint=fingerprint, soft=np.asarray(soft, np.float32))
            runfiles.write_bytes_atomic(
                os.path.join(self.stage_dir, _fingerprint_name(fingerprint) + ".npz"),
                buf.getvalue())
        return labels, soft


def _add_to_memo(path: str, name: str, duration: float, new) -> dict:
    """Adds ``(fingerprint, probabilities)`` pairs to the memo file (written if it changed or
    is missing); returns {"entries", "added"}."""
    import os

    memo = read_memo(path, name, duration)
    added = sum(memo.add(fp, soft) for fp, soft in new)
    if added or not os.path.exists(path):
        write_memo(path, name, duration, memo)
    return {"entries": len(memo), "added": added}


def merge_staged(path: str, name: str, duration: float, stage_dir: str) -> dict:
    """Adds the staged entries of an extraction to the memo file; returns counts."""
    import glob
    import os

    def staged():
        for f in sorted(glob.glob(os.path.join(stage_dir, "*.npz"))):
            with np.load(f, allow_pickle=False) as npz:
                yield npz["fingerprint"], npz["soft"]

    return _add_to_memo(path, name, duration, staged())


def memo_from_dataset(dataset_dir: str, path: str) -> dict:
    """Writes (or adds to) a memo from an extracted teacher-labelled dataset, decoding nothing.

    The dataset must store the 16 kHz 8-band base losslessly (``--mel_dtype=float32``): its mels
    give the crops' fingerprints.

    Raises:
      ValueError: not a teacher-labelled dataset, or no lossless 16 kHz 8-band base (named).
    """
    from tftag.storage import data
    from tftag.features import MelConfig

    info = data.load_dataset_info(dataset_dir)
    name = parse_labels(str(info.raw.get("labels", CATALOG)))
    if name is None:
        raise ValueError(f"{dataset_dir}: not labelled by a teacher (labels "
                         f"{info.raw.get('labels', CATALOG)!r}): nothing to remember")
    duration = info.duration
    base = MelConfig(SR, MEMO_KEY_N_MELS, 1, "power", duration)
    if info.codec.name != "float32" or base.base_name not in info.base_names:
        raise ValueError(f"{dataset_dir}: a memo is read off a float32 dataset with the "
                         f"{base.base_name} base (this one: mel_dtype {info.codec.name}, bases "
                         f"{', '.join(info.base_names)})")
    examples = data.read_examples(dataset_dir, base)
    return _add_to_memo(path, name, duration,
                        ((memo_fingerprint_of_mel(e["mel"]), e["soft_labels"]) for e in examples))
