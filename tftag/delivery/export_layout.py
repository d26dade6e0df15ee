"""Reading the export layout that :mod:`tftag.delivery.export` writes, without TensorFlow.

``<export_dir>/<model_name>/<version>/`` (integer versions) holds the SavedModel, its tag list
``assets/tags.txt`` and ``essentia/<model_name>.json``, a model card in the layout of Essentia's
published models whose ``inference`` block records the mel configuration and the patch length.
These readers find a version and load its tags and card, so ``--mode=tag`` (and a TF Serving
client) can find an export without importing TensorFlow.
"""

from __future__ import annotations

import glob
import os

from tftag.runs import runfiles
from tftag.features import MelConfig

ESSENTIA_DIR = "essentia"  # the frozen graph and the model card, beside the SavedModel
TAGS_ASSET = "tags.txt"  # in the SavedModel's assets/


def model_version_dir(model_dir: str) -> str:
    """``model_dir`` if it is a SavedModel, else its highest integer version directory.

    Raises:
      FileNotFoundError: ``model_dir`` holds no version (the message names ``--model_dir``).
    """
    if os.path.exists(os.path.join(model_dir, "saved_model.pb")):
        return model_dir
    versions = sorted((int(d) for d in os.listdir(model_dir) if d.isdigit()), reverse=True) \
        if os.path.isdir(model_dir) else []
    if not versions:
        raise FileNotFoundError(f"--model_dir={model_dir!r} holds no SavedModel version "
                                "(expected <export_dir>/<model_name>[/<version>])")
    return os.path.join(model_dir, str(versions[0]))


def model_name(version_dir: str) -> str:
    """The TF Serving model name of a version directory: its parent folder's name."""
    return os.path.basename(os.path.dirname(version_dir.rstrip("/")))


def load_tags(version_dir: str) -> list[str]:
    """The tag list asset of an exported version."""
    with open(os.path.join(version_dir, "assets", TAGS_ASSET), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def read_model_card(version_dir: str) -> dict:
    """The Essentia model card of an export (sample rate, mel config, tags).

    Raises:
      FileNotFoundError: no ``essentia/*.json`` (not a tftag export).
    """
    cards = glob.glob(os.path.join(version_dir, ESSENTIA_DIR, "*.json"))
    if not cards:
        raise FileNotFoundError(f"{version_dir}: no essentia/*.json model card (not a tftag "
                                "export)")
    return runfiles.read_json(cards[0])


def card_mel_config(card: dict) -> MelConfig:
    """The MelConfig of an export's model card."""
    mel = card["inference"]["mel"]
    return MelConfig(**{k: mel[k]
                        for k in ("sr", "n_mels", "hop_factor", "compression", "duration")})


def card_window_frames(card: dict) -> int:
    """Frames of one model input of an export: its patch, or the whole clip."""
    return int(card["inference"].get("patch_frames") or card_mel_config(card).n_frames)
