"""The pretrained taggers of tftag: the musicnn package's MTT_musicnn / MTT_vgg, and tftag's own
distilled students shipped as packaged weights with a model card.

:data:`REGISTRY` is the one list of the pretrained models (``--pretrained``, the teachers of
``--labels=teacher:NAME``, ``--mode=export --pretrained``, ``--mode=describe --pretrained``):
one :class:`PretrainedModel` per name, carrying its own resolution (:class:`MelConfig`), model
(:class:`ModelConfig`), tags, input window and loader (:meth:`PretrainedModel.load`); an
unknown name is an error listing the known ones.

**Ports.** The musicnn wheel (``pip install --no-deps musicnn==0.1.0``; ``bash .ci/setup`` does
it) ships TF1 checkpoints whose variables are unscoped ``tf.layers`` names. Only its checkpoint
files are read, with ``tf.train.load_checkpoint``; each variable goes to a Keras weight through
an explicit map, and anything unmatched on either side is an error that lists it. Inputs are
``[batch, 187, 96]`` log-mel patches (musicnn's own 16 kHz, 512/256, 96-band, log10(1 +
10000·x) representation); outputs are logits over the 50 MTAT tags.

**Shipped students.** A folder ``<models dir>/<name>/`` holding ``card.json`` (the model card,
:data:`CARD_KEYS` at least; written by ``--mode=ship``, :mod:`tftag.tagging.ship`) and the Keras weights
file it names. The folders of :data:`WEIGHTS_DIR` (inside the package) and of every directory in
``$TFTAG_MODELS_DIR`` (``os.pathsep``-separated) are registered at import; :func:`add_models_dir`
(``--models_dir``) adds another. A card that cannot be read or misses a key is a ValueError
naming its file. Names follow :func:`student_name`: ``tftag_<model>_<n_mels>x<hop_factor>``
(``_sr<sr>`` appended off 16 kHz, ``_w<width>`` when asked to tell two widths apart), e.g.
``tftag_vgg_32x4``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import tempfile

import numpy as np

from tftag.datasets.mtat import TOP50_TAGS
from tftag.errors import DataError
from tftag.features import MelConfig
from tftag.models import ModelConfig, build
from tftag.registry import Registry

PATCH_SECONDS = 3.0  # musicnn's input: 187 frames of 16 kHz hop 256 (MEL_CONFIG.frames_in(3))
MTT_TAGS = TOP50_TAGS  # the checkpoints' output order
# musicnn's representation: 16 kHz, 96 bands, hop 256, log10(1 + 10000·x).
MEL_CONFIG = MelConfig(16000, 96, 1, "log")


def _bn(ckpt: str, layer: str) -> list[tuple[str, str, str]]:
    return [(f"{ckpt}/{v}", layer, v) for v in ("gamma", "beta", "moving_mean", "moving_variance")]


def _dense(ckpt: str, layer: str) -> list[tuple[str, str, str]]:
    return [(f"{ckpt}/kernel", layer, "kernel"), (f"{ckpt}/bias", layer, "bias")]


WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
MODELS_DIR_ENV = "TFTAG_MODELS_DIR"
CARD_JSON = "card.json"
# The keys every shipped model's card.json has (the contract other tools read; issue 24).
CARD_KEYS = ("name", "resolution", "model", "width", "gmacs_per_window", "window_seconds",
             "teacher", "training_packages", "heldout_packages", "top5_overlap",
             "rank_correlation")
# What the loader needs beside them (written by --mode=ship).
LOADER_KEYS = ("tags", "model_config", "duration", "weights")


@dataclasses.dataclass(frozen=True)
class PretrainedModel:
    """One pretrained tagger: a musicnn port, or a shipped tftag student.

    Attributes:
      name: registry name (``MTT_musicnn``: the checkpoint folder in the wheel; a student: its
        folder and card name).
      model_config: the tftag model its weights fit.
      variables: ports: (checkpoint variable, Keras layer, weight), in Keras weight order within
        each layer; empty for a student.
      mel_config: its input resolution (ports: :data:`MEL_CONFIG`).
      tags: its output tags, in order.
      directory: a student's folder (card.json + weights); None for a port.
    """

    name: str
    model_config: ModelConfig
    variables: tuple[tuple[str, str, str], ...] = ()
    mel_config: MelConfig = MEL_CONFIG
    tags: tuple[str, ...] = tuple(MTT_TAGS)
    directory: str | None = None

    @property
    def is_port(self) -> bool:
        """A musicnn checkpoint port (not a shipped student)."""
        return self.directory is None

    @property
    def window_frames(self) -> int:
        """Frames of one model input: its patch, or the whole clip of ``mel_config``."""
        return self.model_config.n_frames(self.mel_config)

    @property
    def window_seconds(self) -> float:
        """Seconds of audio one model input covers."""
        return self.window_frames * self.mel_config.hop_length / self.mel_config.sr

    @property
    def card(self) -> dict:
        """The model card: a student's card.json; for a port, what the registry knows."""
        if self.directory:
            return read_card(os.path.join(self.directory, CARD_JSON))
        return {"name": self.name, "resolution": self.mel_config.name,
                "model": self.model_config.name, "width": self.model_config.width,
                "preset": self.model_config.preset, "window_seconds": self.window_seconds,
                "tags": list(self.tags), "teacher": None,
                "source": "the musicnn package's MTT checkpoint (pip install --no-deps "
                          "musicnn==0.1.0), ported to Keras"}

    @property
    def weights_path(self) -> str | None:
        """A student's Keras weights file; None for a port."""
        return os.path.join(self.directory, self.card["weights"]) if self.directory else None

    def load(self):
        """The Keras model (logits out) with its weights, in inference mode."""
        if self.is_port:
            return load_musicnn(self.name)
        model = build(self.model_config, self.mel_config, len(self.tags))
        model.load_weights(self.weights_path)
        return model


REGISTRY: Registry[PretrainedModel] = Registry("pretrained model", lambda: None)
names = REGISTRY.names
get = REGISTRY.get

for _port in (
    PretrainedModel("MTT_musicnn", ModelConfig("musicnn", preset="musicnn_mtt",
                                               patch_seconds=PATCH_SECONDS), tuple(
        _bn("batch_normalization", "input_bn")
        + _dense("conv2d", "timbral0_conv") + _bn("batch_normalization_1", "timbral0_bn")
        + _dense("conv2d_1", "timbral1_conv") + _bn("batch_normalization_2", "timbral1_bn")
        + _dense("conv2d_2", "temporal0_conv") + _bn("batch_normalization_3", "temporal0_bn")
        + _dense("conv2d_3", "temporal1_conv") + _bn("batch_normalization_4", "temporal1_bn")
        + _dense("conv2d_4", "temporal2_conv") + _bn("batch_normalization_5", "temporal2_bn")
        + _dense("conv2d_5", "mid0_conv") + _bn("batch_normalization_6", "mid0_bn")
        + _dense("conv2d_6", "mid1_conv") + _bn("batch_normalization_7", "mid1_bn")
        + _dense("conv2d_7", "mid2_conv") + _bn("batch_normalization_8", "mid2_bn")
        + _bn("batch_normalization_9", "pool_bn")
        + _dense("dense", "dense") + _bn("batch_normalization_10", "dense_bn")
        + _dense("dense_1", "logits"))),
    PretrainedModel("MTT_vgg", ModelConfig("musicnn_vgg", patch_seconds=PATCH_SECONDS), tuple(
        _bn("batch_normalization", "input_bn")
        + [m for i in range(1, 6)
           for m in _dense(f"{i}CNN", f"conv{i}") + _bn(f"batch_normalization_{i}", f"bn{i}")]
        + _dense("dense", "logits"))),
):
    REGISTRY.register(_port.name)(_port)

# The ports' variable maps by name, as load_musicnn reads them (a test breaks one here).
VARIABLE_MAPS = {n: list(get(n).variables) for n in names()}
PATCH_FRAMES = get("MTT_musicnn").model_config.patch_frames(MEL_CONFIG)  # 187, both ports


def ports() -> list[str]:
    """The names of the musicnn ports (the teachers), sorted."""
    return [n for n in names() if get(n).is_port]


def students() -> list[str]:
    """The names of the shipped students, sorted."""
    return [n for n in names() if not get(n).is_port]


def student_name(model_config: ModelConfig, mel_config: MelConfig, with_width: bool = False) -> str:
    """The naming rule of shipped students: ``tftag_<model>_<n_mels>x<hop_factor>``, plus
    ``_sr<sr>`` off 16 kHz, ``_<compression>`` off log and ``_w<width>`` if ``with_width``
    (e.g. ``tftag_vgg_32x4``, ``tftag_musicnn_96x1_w0.25``)."""
    c = mel_config
    name = f"tftag_{model_config.name}_{c.n_mels}x{c.hop_factor}"
    if c.sr != 16000:
        name += f"_sr{c.sr}"
    if c.compression != "log":
        name += f"_{c.compression}"
    return name + (f"_w{model_config.width:g}" if with_width else "")


def read_card(path: str) -> dict:
    """A shipped model's card.json, checked: a ValueError naming the file when it is not JSON,
    or misses a key of :data:`CARD_KEYS` / :data:`LOADER_KEYS`."""
    try:
        with open(path, encoding="utf-8") as f:
            card = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable model card ({type(e).__name__}: {e})") from None
    if not isinstance(card, dict):
        raise ValueError(f"{path}: a model card is a JSON object, got {type(card).__name__}")
    missing = [k for k in CARD_KEYS + LOADER_KEYS if k not in card]
    if missing:
        raise ValueError(f"{path}: the model card misses {', '.join(missing)}")
    return card


def from_card(directory: str, name: str | None = None) -> PretrainedModel:
    """The :class:`PretrainedModel` of a shipped model's folder (its card.json); a ValueError
    naming the card when it is malformed or its ``name`` is not ``name`` (default: the folder's
    name)."""
    path = os.path.join(directory, CARD_JSON)
    card = read_card(path)
    expected = name or os.path.basename(os.path.normpath(directory))
    if card["name"] != expected:
        raise ValueError(f"{path}: name {card['name']!r} is not its folder's name {expected!r}")
    try:
        mel_config = MelConfig.from_name(card["resolution"], float(card["duration"]))
        model_config = ModelConfig(**card["model_config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad resolution or model_config: {e}") from None
    if not os.path.isfile(os.path.join(directory, card["weights"])):
        raise ValueError(f"{path}: its weights file {card['weights']!r} is missing")
    return PretrainedModel(card["name"], model_config, (), mel_config, tuple(card["tags"]),
                           os.path.abspath(directory))


def add_models_dir(models_dir: str) -> list[str]:
    """Registers every shipped model folder (``<models_dir>/<name>/card.json``); returns their
    names. Folders without a card.json (and hidden ones: a ship in progress) are ignored; a
    name taken by another model is an error."""
    if not os.path.isdir(models_dir):
        raise FileNotFoundError(f"models dir {models_dir!r}: no such directory")
    added = []
    for entry in sorted(os.listdir(models_dir)):
        folder = os.path.join(models_dir, entry)
        if entry.startswith(".") or not os.path.isfile(os.path.join(folder, CARD_JSON)):
            continue
        model = from_card(folder)
        try:
            REGISTRY.register(model.name)(model)  # the same folder again: allowed
        except ValueError:
            old = REGISTRY.get(model.name)
            raise ValueError(f"pretrained model {model.name!r} is registered twice: by "
                             f"{old.directory or 'the musicnn port'} and by {folder}") from None
        added.append(model.name)
    return added


def _discover() -> None:
    """Registers the package's shipped models and those of ``$TFTAG_MODELS_DIR``."""
    dirs = [WEIGHTS_DIR] + [d for d in os.environ.get(MODELS_DIR_ENV, "").split(os.pathsep) if d]
    for d in dirs:
        if os.path.isdir(d):
            add_models_dir(d)


_discover()
# Optimizer state and counters in the checkpoints, not part of the model.
_IGNORED_SUFFIXES = ("/Adam", "/Adam_1")
_IGNORED = {"beta1_power", "beta2_power", "global_step"}


class MissingWheelError(DataError, ImportError):
    """The musicnn wheel (the ports' checkpoints) is not installed. An ImportError for library
    callers; a :class:`tftag.errors.DataError` so entry points print its one line (the fix)
    without a traceback and exit 1."""


def checkpoint_dir(name: str) -> str:
    """The folder of a checkpoint inside the installed ``musicnn`` wheel."""
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise MissingWheelError(f"{name} needs the musicnn wheel, which is not installed: "
                                "`pip install --no-deps musicnn==0.1.0` (its TF1-era "
                                "dependencies are not needed)")
    path = os.path.join(list(spec.submodule_search_locations)[0], name)
    if not os.path.exists(os.path.join(path, ".index")):
        raise FileNotFoundError(f"{path}: no checkpoint (.index) for {name}")
    return path


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
    """All model variables of a musicnn checkpoint folder (``<dir>/.index`` + ``.data-*``).

    The wheel's prefix is the folder itself and its ``checkpoint`` index file points to the
    author's machine, so the two files are linked under a temporary prefix first.
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        for name in os.listdir(path):
            if name.startswith(".index") or name.startswith(".data-"):
                os.symlink(os.path.join(path, name), os.path.join(tmp, "model" + name))
        reader = tf.train.load_checkpoint(os.path.join(tmp, "model"))
        names = reader.get_variable_to_shape_map()
        return {
            n: reader.get_tensor(n) for n in names
            if n not in _IGNORED and not n.endswith(_IGNORED_SUFFIXES)
        }


def load_musicnn(name: str, path: str | None = None):
    """Keras model with the weights of a pretrained musicnn checkpoint, in inference mode.

    Args:
      name: a name of :data:`REGISTRY` (``MTT_musicnn``, ``MTT_vgg``).
      path: checkpoint folder (default: inside the installed ``musicnn`` wheel).

    Returns:
      keras.Model: ``[batch, 187, 96]`` log-mel patches -> logits ``[batch, 50]`` (MTT_TAGS).

    Raises:
      ValueError: unknown name, or checkpoint variables and model weights that do not match
        (every unmatched name and shape is listed).
    """
    port = get(name)  # an unknown name: ValueError listing the known ones
    variables = read_checkpoint(path or checkpoint_dir(name))
    model = build(port.model_config, MEL_CONFIG, len(MTT_TAGS))
    mapping = VARIABLE_MAPS[name]
    problems = [f"checkpoint variable {v} {variables[v].shape} has no Keras weight"
                for v in sorted(set(variables) - {m[0] for m in mapping})]
    by_layer: dict[str, list] = {}
    for ckpt_name, layer_name, weight in mapping:
        if ckpt_name not in variables:
            problems.append(f"Keras weight {layer_name}/{weight} has no checkpoint variable {ckpt_name}")
            continue
        by_layer.setdefault(layer_name, []).append((weight, variables[ckpt_name]))
    layer_names = {layer.name for layer in model.layers}
    for layer_name in sorted(set(by_layer) - layer_names):
        problems.append(f"model has no layer {layer_name}")
    assigned = set()
    for layer in model.layers:
        if layer.name not in by_layer or not layer.weights:
            continue
        values = dict(by_layer[layer.name])
        new = []
        for w in layer.weights:
            short = w.path.split("/")[-1] if hasattr(w, "path") else w.name.split("/")[-1]
            short = short.split(":")[0]
            if short not in values:
                problems.append(f"no checkpoint value for {layer.name}/{short}")
                continue
            value = values[short].reshape(w.shape) if values[short].size == np.prod(w.shape) else values[short]
            if tuple(value.shape) != tuple(w.shape):
                problems.append(f"{layer.name}/{short}: checkpoint {values[short].shape} vs model {tuple(w.shape)}")
                continue
            new.append(value)
            assigned.add((layer.name, short))
        if len(new) == len(layer.weights):
            layer.set_weights(new)
    unassigned = [f"{ln}/{w}" for ln, items in by_layer.items() for w, _ in items
                  if (ln, w) not in assigned]
    problems += [f"checkpoint value for {u} was not assigned" for u in unassigned]
    if problems:
        raise ValueError(f"{name}: checkpoint and model do not match:\n  " + "\n  ".join(problems))
    return model
