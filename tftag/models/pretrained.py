"""The pretrained MTT_musicnn and MTT_vgg of the ``musicnn`` PyPI package, in tftag's Keras models.

The wheel (``pip install --no-deps musicnn==0.1.0``; ``bash .ci/setup`` does it) ships TF1
checkpoints whose variables are unscoped ``tf.layers`` names. Only its checkpoint files are read,
with ``tf.train.load_checkpoint``; each variable goes to a Keras weight through an explicit map,
and anything unmatched on either side is an error that lists it. Inputs are ``[batch, 187, 96]``
log-mel patches (musicnn's own 16 kHz, 512/256, 96-band, log10(1 + 10000·x) representation);
outputs are logits over the 50 MTAT tags (sigmoid them for the package's taggram).

:data:`REGISTRY` is the one list of the pretrained models (``--pretrained``, the teachers of
``--labels=teacher:NAME``, ``--mode=export --pretrained``): one :class:`PretrainedModel` per
port; an unknown name is an error listing the known ones.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import tempfile

import numpy as np

from tftag.datasets.mtat import TOP50_TAGS
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


@dataclasses.dataclass(frozen=True)
class PretrainedModel:
    """One port of a musicnn checkpoint.

    Attributes:
      name: registry name, the checkpoint folder in the wheel (``MTT_musicnn``).
      model_config: the tftag model its weights fit (input: :data:`PATCH_SECONDS` patches of
        :data:`MEL_CONFIG`).
      variables: (checkpoint variable, Keras layer, weight), in Keras weight order within each
        layer.
    """

    name: str
    model_config: ModelConfig
    variables: tuple[tuple[str, str, str], ...]


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

# The registry's variable maps by name, as load_musicnn reads them (a test breaks one here).
VARIABLE_MAPS = {n: list(get(n).variables) for n in names()}
PATCH_FRAMES = get("MTT_musicnn").model_config.patch_frames(MEL_CONFIG)  # 187, both ports
# Optimizer state and counters in the checkpoints, not part of the model.
_IGNORED_SUFFIXES = ("/Adam", "/Adam_1")
_IGNORED = {"beta1_power", "beta2_power", "global_step"}


def checkpoint_dir(name: str) -> str:
    """The folder of a checkpoint inside the installed ``musicnn`` wheel."""
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the musicnn wheel is not installed: `pip install --no-deps "
                          "musicnn==0.1.0` (bash .ci/setup does it)")
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
