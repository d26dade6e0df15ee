"""Model registry: ``build(model_config, mel_config, n_tags) -> keras.Model`` (logits out).

Every model takes ``[batch, n_frames, n_mels]`` float32 mel-spectrograms (time-major, as
:func:`tftag.features.melspectrogram` returns them) and returns logits ``[batch, n_tags]``; the
sigmoid lives in the loss, the metrics and the serving signature.

Owns the registry (:class:`ModelConfig`, ``build``, each model's inference path), ``vgg`` and
``musicnn`` (table-driven builders), ``blocks`` (their shared layers), ``training`` and
``gemm_conv`` (the fast training step), ``pretrained`` (the musicnn ports and the shipped
students in ``weights/``).

May import: :mod:`tftag.registry`, :mod:`tftag.errors`, :mod:`tftag.runs`, :mod:`tftag.features`,
:mod:`tftag.datasets`.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Callable

from tftag.features import MelConfig
from tftag.registry import Registry


MIN_PATCH_FRAMES = 16


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which network and how big.

    Attributes:
      name: registry name (``vgg``, ``musicnn``, ``musicnn_vgg``).
      width: filter-count multiplier; 1.0 is the paper's full-size model.
      dropout: dropout rate where the architecture has dropout; None = the architecture's own
        (VGG-CNN: none, as in the paper; MUSICNN back-end and musicnn_vgg: 0.5).
      preset: architecture variant (musicnn: ``paper`` or ``musicnn_mtt``; vgg: ``paper``).
      patch_seconds: the model's input is a patch of this many seconds (clip scores average
        the non-overlapping patches); None = the whole clip. The one owner of the patch length:
        :meth:`patch_frames` turns it into frames for a resolution.
    """

    name: str
    width: float = 1.0
    dropout: float | None = None
    preset: str = "paper"
    patch_seconds: float | None = None

    def __post_init__(self):
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.patch_seconds is not None and not self.patch_seconds > 0:
            raise ValueError(f"patch_seconds must be > 0 or None, got {self.patch_seconds}")

    def patch_frames(self, mel_config: MelConfig) -> int | None:
        """Frames of one input patch at ``mel_config``'s hop, or None for whole clips.

        The rule: ``frames_in(patch_seconds)`` (floor(seconds · sr / hop_length); 3 s = 187
        frames at 16 kHz hop 256), at least 16 (the smallest input every model takes) and at most
        the whole crop.
        """
        if self.patch_seconds is None:
            return None
        return min(mel_config.n_frames, max(MIN_PATCH_FRAMES, mel_config.frames_in(self.patch_seconds)))

    def n_frames(self, mel_config: MelConfig) -> int:
        """Input frames: the patch length, or the whole crop of ``mel_config``."""
        return self.patch_frames(mel_config) or mel_config.n_frames

    def dropout_or(self, default: float) -> float:
        """The configured dropout, or the architecture's ``default``."""
        return default if self.dropout is None else self.dropout

    def filters(self, base: int) -> int:
        """``base`` filters scaled by the width multiplier (at least 1)."""
        return max(1, int(round(base * self.width)))


Builder = Callable[[ModelConfig, MelConfig, int], "keras.Model"]  # noqa: F821
# model -> (mel -> (logits, embedding)): an exact, faster inference rewrite of a built model.
Inference = Callable[["keras.Model"], Callable]  # noqa: F821


@dataclasses.dataclass(frozen=True, repr=False)
class ModelEntry:
    """One model of the registry: how it is built and which inference path it takes.

    Attributes:
      build: (model config, mel config, n_tags) -> a Keras functional model, logits out.
      inference: the model's exact, faster inference rewrite (MUSICNN:
        :func:`tftag.models.musicnn.fast_inference`); None: it runs as built
        (:func:`with_embedding`). Training takes one path for every model
        (:func:`tftag.models.training.training_fn`).
    """

    build: Builder
    inference: Inference | None = None

    def __repr__(self) -> str:
        """The functions by name (the registry's "registered twice" message; a reload of the
        module that registered the entry makes the same one)."""
        def name(fn) -> str:
            return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"

        extra = f", inference={name(self.inference)}" if self.inference else ""
        return f"ModelEntry({name(self.build)}{extra})"


def _load_builtin() -> None:
    from tftag.models import musicnn, vgg  # noqa: F401  (registration side effects)


REGISTRY: Registry[ModelEntry] = Registry("model", _load_builtin)
names = REGISTRY.names
# The config each live model of build() was built from: inference_fn's registry entry.
_BUILT: weakref.WeakKeyDictionary[object, ModelConfig] = weakref.WeakKeyDictionary()


def register(name: str, *, inference: Inference | None = None) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under ``name`` (a :class:`ModelEntry` with ``inference``,
    its inference path); a name taken by another builder is an error."""

    def wrap(builder: Builder) -> Builder:
        REGISTRY.register(name)(ModelEntry(builder, inference))
        return builder

    return wrap


def build(model_config: ModelConfig, mel_config: MelConfig, n_tags: int):
    """Builds a Keras functional model for ``mel_config``'s resolution (logits out).

    Raises:
      ValueError: unknown model name (the message lists the known ones) or bad sizes.
    """
    entry = REGISTRY.get(model_config.name)
    if n_tags < 1:
        raise ValueError(f"n_tags must be >= 1, got {n_tags}")
    model = entry.build(model_config, mel_config, n_tags)
    _BUILT[model] = model_config
    return model


def with_embedding(model):
    """``model`` with two outputs: its logits and its embedding, the input of its ``logits``
    layer (the penultimate features every tftag model has)."""
    import keras

    return keras.Model(model.inputs, [model.output, model.get_layer("logits").input])


def inference_fn(model, model_config: ModelConfig | None = None):
    """``mel`` [b, T, F] → (logits [b, n_tags], embedding [b, d]) in inference mode.

    The path is the one of the model's registry entry (:attr:`ModelEntry.inference`; MUSICNN:
    its exact, faster rewrite :func:`tftag.models.musicnn.fast_inference`); a model without a
    faster path, or not made by :func:`build`, runs as built (:func:`with_embedding`).

    Args:
      model: a Keras model.
      model_config: the config it was built from (default: the one :func:`build` made it from).
    """
    config = model_config or _BUILT.get(model)
    entry = REGISTRY.get(config.name) if config is not None else None
    if entry is not None and entry.inference is not None:
        return entry.inference(model)
    embedder = with_embedding(model)
    return lambda mel: embedder(mel, training=False)
