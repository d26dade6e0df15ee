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
