"""``--mode=ship``: a finished final-student run as a pretrained model that ships with tftag.

From a ``--mode=train --heldout_packages=...`` run directory (its ``configs.json`` and
``best.weights.h5``, as :mod:`tftag.train` writes them) this writes
``<models_dir>/<name>/`` — the weights (:data:`WEIGHTS_FILE`) and ``card.json`` — atomically
(built in a hidden temporary folder, checked, renamed into place). ``name`` defaults to the
naming rule :func:`tftag.models.pretrained.student_name` (``tftag_vgg_32x4``); ``models_dir``
to the package's ``tftag/models/weights`` (package data: ``pip install`` ships it). The
registry discovers the folder from its card (:mod:`tftag.models.pretrained`).

The card holds (beside the loader's keys: tags, model_config, duration, weights):

- what the model is: name, resolution (``MelConfig.name``), model, width, preset,
  window_seconds / window_frames, parameters, gmacs_per_window (the TF profiler's count of one
  window, :func:`tftag.profile.gmacs`) and gmacs_per_minute, bytes_per_stored_clip (the run's
  storage codec × resolution for a 29.1-s clip);
- where it comes from: teacher, training_packages and heldout_packages (each with its licence
  from the debian catalogue's ``dataset.json`` and its clip count), the training outcome;
- the held-out agreement with the teacher, on every clip of the held-out packages (the teacher's
  labels are stored in the dataset): top5_overlap (mean per clip), rank_correlation (mean
  per-clip Spearman of student vs teacher probabilities), prob_correlation (Pearson over all
  values), roc_auc / pr_auc (against the teacher's hard labels);
- sizes: weights_bytes, and per TFLite precision (float16, dynamic, int8; made in a temporary
  folder, not shipped: ``--mode=export --pretrained=NAME --tflite=...`` writes them) the file's
  bytes and its max |Δ probability| against the Keras model on held-out clips;
- seconds_per_minute: tagging the held-out packages' audio files end to end (decode, mel,
  model; :func:`tftag.tagging.tracks.tag_tracks`), start-up and a warm-up file excluded, per minute of
  audio (``audio``: another folder; no files found: None, and ``speed_note`` says why).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import tempfile
import time
from typing import Any

import numpy as np
from absl import logging

import tftag
from tftag import evaluate, features, profile, train
from tftag.delivery import tflite
from tftag.runs import runfiles
from tftag.storage import data, folds
from tftag.experiment import Experiment
from tftag.models import ModelConfig, pretrained

WEIGHTS_FILE = "model.weights.h5"
TFLITE_PRECISIONS = ("float16", "dynamic", "int8")
STORED_CLIP_SECONDS = features.DEFAULT_DURATION  # bytes_per_stored_clip: a 29.1-s clip
REPRESENTATIVE_CLIPS = 100  # int8 calibration: training clips
CHECK_ATOL = 1e-5  # the shipped folder's model vs the run's, on held-out clips


def package_records(meta: dict, clip_ids: list[str]) -> list[dict]:
    """[{"package", "licence", "clips"}] of the packages of ``clip_ids`` (sorted), licences
    from a debian dataset's ``dataset.json`` (``source.packages``; else "unknown")."""
    from tftag.storage import folds

    known = (meta.get("source") or {}).get("packages") or {}
    counts: dict[str, int] = {}
    for c in clip_ids:
        counts[folds.clip_package(c)] = counts.get(folds.clip_package(c), 0) + 1
    return [{"package": p, "licence": (known.get(p) or {}).get("licence", "unknown"),
             "clips": n} for p, n in sorted(counts.items())]


def heldout_audio(meta: dict, packages: tuple[str, ...]) -> list[str]:
    """The held-out packages' audio files that exist, from a debian dataset's track records
    (``<cache_dir>/unpacked/<package>/<path>``; :mod:`tftag.datasets.debian`), sorted."""
    source = meta.get("source") or {}
    cache = source.get("cache_dir") or ""
    paths = {os.path.join(cache, "unpacked", t["package"], t["path"])
             for t in source.get("tracks", ()) if t.get("package") in packages}
    return sorted(p for p in paths if os.path.isfile(p))


def measure_speed(entry: pretrained.PretrainedModel, files: list[str]) -> dict:
    """Seconds per minute of audio tagging ``files`` end to end with ``entry`` (model loaded and
    one warm-up file first, both excluded)."""
    from tftag.tagging import tag

    tagger = tag.Tagger.of_model(entry)
    list(tag.tag_tracks(tagger, files[:1]))  # warm-up: trace the model, start the decoder
    seconds_of_audio, start = 0.0, time.perf_counter()
    for r in tag.tag_tracks(tagger, files):
        if not isinstance(r, dict):
            seconds_of_audio += r.seconds
    elapsed = time.perf_counter() - start
    minutes = seconds_of_audio / 60
    return {"seconds_per_minute": round(elapsed / minutes, 4) if minutes else None,
            "speed": {"files": len(files), "minutes": round(minutes, 2),
                      "seconds": round(elapsed, 2), "machine": platform.machine(),
                      "cpus": os.cpu_count()}}


def ship(run_dir: str, models_dir: str | None = None, name: str | None = None, *,
         audio: str | None = None, overwrite: bool = False) -> dict:
    """Writes ``<models_dir>/<name>/`` (weights + card.json) from a final-student run.

    Args:
      run_dir: a finished ``--mode=train --heldout_packages=...`` run directory.
      models_dir: where shipped models live (default :data:`pretrained.WEIGHTS_DIR`).
      name: the pretrained name (default :func:`pretrained.student_name`).
      audio: a file or folder to time tagging on instead of the held-out packages' files.
      overwrite: replace an existing folder of that name.

    Returns:
      {"shipped": the folder, "name", "card": the card}.

    Raises:
      ValueError: not a held-out-package run, or a dataset without teacher labels.
      FileNotFoundError: no ``configs.json`` or ``best.weights.h5``.
      FileExistsError: the folder exists (without ``overwrite``).
    """
    s = _student(run_dir, models_dir, name, overwrite)
    # Held-out agreement: every clip of the held-out packages, every patch.
    p = evaluate.predict_clips(s.model, s.dataset_dir, s.mel, None, s.patch_frames,
                               s.exp.train.eval_batch_size, None, s.parts.test)
    metrics = evaluate.scores(p, s.info.tags)
    gmacs = profile.gmacs(s.model)  # one window (the model's input)
    os.makedirs(s.models_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".ship-{s.name}-", dir=s.models_dir)
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would make the installed folder private
    try:
        weights_path = os.path.join(tmp, WEIGHTS_FILE)
        s.model.save_weights(weights_path)
        card = _card(s, p, metrics, gmacs, weights_path, _tflite_sizes(s))
        runfiles.write_json_atomic(os.path.join(tmp, pretrained.CARD_JSON), card)
        entry = pretrained.from_card(tmp, s.name)  # the folder as the registry will read it
        _check_same(entry.load(), s.model,
                    tflite.dataset_mels(s.dataset_dir, s.mel, None, 4, s.parts.test), s.patch_frames)
        card.update(_speed(entry, s, audio))
        runfiles.write_json_atomic(os.path.join(tmp, pretrained.CARD_JSON), card)
        _move_into_place(tmp, s.final, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logging.info("shipped %s", s.final)
    print(f"shipped {s.name} -> {s.final}\n  held-out top-5 overlap {card['top5_overlap']:.3f}, "
          f"rank correlation {card['rank_correlation']:.3f}, ROC-AUC {card['roc_auc']:.3f}, "
          f"{card['gmacs_per_window']:.4f} GMACs per window"
          + (f", {card['seconds_per_minute']:.3f} s per minute of audio"
             if card.get("seconds_per_minute") else ""))
    return {"shipped": s.final, "name": s.name, "card": card}


@dataclasses.dataclass(frozen=True)
class _Student:
    """A final-student run to ship, checked, with its best weights loaded.

    Attributes:
      run_dir: the run directory (as given).
      exp: its Experiment (``configs.json``).
      name: the pretrained name.
      models_dir: where shipped models live.
      final: the folder it ships into, ``<models_dir>/<name>``.
      info: the dataset's ``dataset.json``.
      teacher: the name of the teacher that labelled the dataset.
      parts: the held-out split: train and valid from the other packages, test the held-out ones.
      model: the run's model with its best weights.
    """

    run_dir: str
    exp: Experiment
    name: str
    models_dir: str
    final: str
    info: data.DatasetInfo
    teacher: str
    parts: folds.FoldParts
    model: Any

    @property
    def mel(self) -> features.MelConfig:
        return self.exp.mel_config

    @property
    def mc(self) -> ModelConfig:
        return self.exp.model

    @property
    def dataset_dir(self) -> str:
        return self.exp.dataset_dir

    @property
    def patch_frames(self) -> int | None:
        return self.mc.patch_frames(self.mel)


def _student(run_dir: str, models_dir: str | None, name: str | None, overwrite: bool) -> _Student:
    """The run of ``run_dir`` checked (held-out packages, best weights, a free folder name, a
    teacher-labelled dataset), its held-out split and its best model."""
    exp = Experiment.load(run_dir)
    if exp.heldout is None:
        raise ValueError(f"--run_dir={run_dir}: not a final-student run (its configs.json has no "
                         "held-out packages): train one with --mode=train --heldout_packages=...")
    runfiles.require_weights(os.path.join(run_dir, "best.weights.h5"))
    mel, mc = exp.mel_config, exp.model
    name = name or pretrained.student_name(mc, mel)
    models_dir = models_dir or pretrained.WEIGHTS_DIR
    final = os.path.join(models_dir, name)
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"{final} exists: give another --ship_name or --overwrite")
    dataset_dir = exp.dataset_dir
    info = data.load_dataset_info(dataset_dir)
    teacher = (info.raw.get("teacher") or {}).get("name")
    if not teacher:
        raise ValueError(f"{dataset_dir}: not teacher-labelled (labels "
                         f"{info.raw.get('labels', 'catalog')!r}): a shipped student's card "
                         "reports its agreement with the teacher")
    parts = train.heldout_split(dataset_dir, mel, exp.heldout)
    model = train.load_best(run_dir, dataset_dir, mel, mc)
    return _Student(run_dir, exp, name, models_dir, final, info, teacher, parts, model)


def _tflite_sizes(s: _Student) -> dict:
    """The TFLite files of every precision made in a temporary folder (not shipped): their
    summary (:func:`tftag.delivery.tflite.export_tflite`: bytes, max |Δ probability|)."""
    with tempfile.TemporaryDirectory() as scratch:
        spec = _export_spec(s.mel, s.mc, s.info.tags, s.name)
        return tflite.export_tflite(
            s.model, spec, scratch, TFLITE_PRECISIONS,
            tflite.dataset_mels(s.dataset_dir, s.mel, None, REPRESENTATIVE_CLIPS, s.parts.train),
            tflite.dataset_mels(s.dataset_dir, s.mel, None, tflite.CHECK_CLIPS, s.parts.test))


def _card(s: _Student, p, metrics, gmacs: float, weights_path: str, summary: dict) -> dict:
    """The card (module docstring) but for the tagging speed: held-out predictions ``p`` and
    their ``metrics``, GMACs of one window, the weights file and the TFLite ``summary``."""
    mel, mc, info, parts = s.mel, s.mc, s.info, s.parts
    outcome = _training_outcome(s.run_dir)
    window_frames = mc.n_frames(mel)
    window_seconds = window_frames * mel.hop_length / mel.sr
    stored = mel.replace(duration=STORED_CLIP_SECONDS)
    return {
        "name": s.name, "resolution": mel.name, "model": mc.name, "width": mc.width,
        "preset": mc.preset, "model_config": dataclasses.asdict(mc), "duration": mel.duration,
        "window_seconds": round(window_seconds, 4), "window_frames": window_frames,
        "tags": list(info.tags), "teacher": s.teacher,
        "teacher_hard_labels": (info.raw.get("teacher") or {}).get("top_k"),
        "training_packages": package_records(info.raw, list(parts.train + parts.valid)),
        "heldout_packages": package_records(info.raw, list(parts.test)),
        "heldout_clips": len(parts.test),
        "top5_overlap": metrics.top5_overlap,
        "rank_correlation": evaluate.rank_correlation(p.soft_labels, p.probabilities),
        "prob_correlation": metrics.prob_correlation,
        "roc_auc": metrics.roc_auc, "pr_auc": metrics.pr_auc,
        "gmacs_per_window": float(f"{gmacs:.6g}"),
        "gmacs_per_minute": float(f"{gmacs * 60 / window_seconds:.6g}"),
        "parameters": profile.param_count(s.model),
        "bytes_per_stored_clip": info.codec.bytes_per_value * stored.n_frames * stored.n_mels,
        "storage_codec": info.codec.name,
        "weights": WEIGHTS_FILE, "weights_bytes": os.path.getsize(weights_path),
        "tflite": {prec: {"bytes": row["bytes"], "max_abs_diff": round(row["max_abs_diff"], 6),
                          "check_clips": summary["check_clips"]}
                   for prec, row in summary["files"].items()},
        "training": outcome, "run_dir": s.run_dir,  # as given: no machine path shipped
        "tftag_version": tftag.__version__,
    }


def _speed(entry: pretrained.PretrainedModel, s: _Student, audio: str | None) -> dict:
    """The card's tagging speed (:func:`measure_speed`) on ``audio`` or the held-out packages'
    files; none found: seconds_per_minute None and a ``speed_note``."""
    files = _audio_files(audio) if audio else heldout_audio(s.info.raw, s.exp.heldout.packages)
    if files:
        return measure_speed(entry, files)
    return dict(seconds_per_minute=None, speed_note=(
        "no audio of the held-out packages found (the debian cache of dataset.json); "
        "give --audio"))


def _audio_files(audio: str) -> list[str]:
    """The audio files of ``--audio`` (a file or a folder), as ``--mode=tag`` finds them."""
    from tftag.tagging import tag

    return tag.audio_files(audio)


def _export_spec(mel, mc, tags, name):
    from tftag.delivery.export import ExportSpec

    return ExportSpec(mel, mc, tuple(tags), name=name)


def _training_outcome(run_dir: str) -> dict | None:
    """The training summary of the run's ``results.json`` (None if it has none)."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        return None
    t = runfiles.read_json(path).get("train", {})
    return {k: t.get(k) for k in ("best_epoch", "epochs_done", "stop_reason", "best_valid_loss",
                                  "patience_epochs", "train_seconds")}


def _check_same(shipped, model, mels: np.ndarray, patch_frames: int | None) -> None:
    """RuntimeError unless the shipped folder's model gives the run's probabilities."""
    import tensorflow as tf

    from tftag import patches

    x = tf.constant(mels)
    diff = float(np.abs(patches.mean_probabilities(shipped, x, patch_frames).numpy()
                        - patches.mean_probabilities(model, x, patch_frames).numpy()).max())
    if diff > CHECK_ATOL:
        raise RuntimeError(f"the shipped weights differ from the run's by {diff:.2e}")


def _move_into_place(tmp: str, final: str, overwrite: bool) -> None:
    """Renames the finished folder into place (an existing one, with ``overwrite``, is moved
    aside first and removed after)."""
    old = None
    if os.path.exists(final):
        if not overwrite:
            raise FileExistsError(f"{final} exists: give another --ship_name or --overwrite")
        old = tempfile.mkdtemp(prefix=".replaced-", dir=os.path.dirname(final))
        os.rename(final, os.path.join(old, "model"))
    os.rename(tmp, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)
