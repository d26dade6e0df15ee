"""Cross-validated sweeps (``--mode=sweep --folds=K``): every (model × resolution × fold ×
repeat) trained to convergence on its fold, tested on the fold's clips.

Folds are a view of one extracted dataset (:mod:`tftag.storage.folds`), the same for every resolution.
Each run trains in ``<run_dir>/runs/<key>/`` (resumable, as every training run) with early
stopping on the validation loss, patience in passes over the fold's training data, and when it
finishes writes its record into ``<results_dir>/<key>/`` (key
``<model>-w<width>-<resolution>-fold<k>-seed<s>``), the files the study report reads:

- ``test_predictions.npz``: ``clip_id`` (str [n]), ``probs`` (float16 [n, n_tags], the
  student's clip probabilities: patch models average every patch of a clip unless
  ``test_patches``), ``teacher`` (float16 [n, n_tags], the teacher's soft labels; the hard
  labels as 0/1 on a catalogue-labelled dataset), ``labels`` (int8 [n, n_tags], the hard labels
  the ROC-AUC is computed against), ``tags`` (str [n_tags]); rows sorted by clip id;
- ``result.json`` (written last: a run is finished when it exists; a rerun skips it): the
  :data:`RESULT_KEYS` and more (fractions in 0–1).

``<results_dir>/folds.json`` records the folds: every clip's group and fold.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np
from absl import logging

from tftag import evaluate, train
from tftag.runs import runfiles
from tftag.storage import folds
from tftag.study import sweep
from tftag.storage.dataset_dir import load_dataset_info

RESULT_JSON = "result.json"
PREDICTIONS_NPZ = "test_predictions.npz"
FOLDS_JSON = "folds.json"
FOLD_JSON = "fold.json"  # in a run's directory: its fold's parts (FoldParts.describe())
# The keys every result.json has (the contract with tftag/study/sweep_report.py).
RESULT_KEYS = ("model", "width", "resolution", "fold", "folds", "seed", "test_roc_auc",
               "test_pr_auc", "top5_overlap", "prob_correlation", "best_epoch", "epochs_done",
               "stop_reason", "train_seconds", "gmacs", "storage_bytes", "n_test_clips", "curve")
NPZ_KEYS = ("clip_id", "probs", "teacher", "labels", "tags")


@dataclasses.dataclass(frozen=True)
class FoldItem:
    """One cross-validated run: a sweep item on one fold."""

    item: sweep.SweepItem
    fold: int

    @property
    def key(self) -> str:
        m, c = self.item.model_config, self.item.mel_config
        return f"{m.name}-w{m.width:g}-{c.name}-fold{self.fold}-seed{self.item.seed}"


def plan(experiment) -> list[FoldItem]:
    """Every (model × resolution × repeat) of the experiment on each selected fold, fold-major
    (a fold's runs of every resolution finish together, so paired comparisons come early)."""
    items = sweep.plan_items(experiment.sweep_plan(), experiment.repeats, experiment.train.seed)
    return [FoldItem(i, k) for k in experiment.folds.selected for i in items]


def dataset_folds(dataset_dir: str, experiment) -> tuple[dict[str, str], dict[int, folds.FoldParts]]:
    """({clip_id: group}, {fold: its parts}) of the dataset, for every fold of the experiment.

    The folds are cut from the dataset's clips; training crops (``--train_clip_hop``) join the
    training part of the folds that train on their group, and are in no other part."""
    from tftag.storage import data

    config = experiment.mel_configs[0]  # every base holds the same clips
    groups, crops = data.dataset_groups(dataset_dir, config)
    parts = {k: folds.fold_parts(groups, experiment.folds, k)
             for k in range(experiment.folds.folds)}
    folds.check_partition(list(parts.values()), groups)
    return groups, {k: folds.add_crops(p, groups, crops) for k, p in parts.items()}


def curve(history: Sequence[dict]) -> list[dict]:
    """The learning curve of a training history: epoch, train loss, validation loss and ROC-AUC
    (and the learning rate, in histories that record it)."""
    return [{"epoch": h["epoch"], "train_loss": h["loss"], "valid_loss": h.get("valid_loss"),
             "valid_roc_auc": h["valid_roc_auc"],
             **({"learning_rate": h["learning_rate"]} if "learning_rate" in h else {})}
            for h in history]


def run_item(fold_item: FoldItem, parts: folds.FoldParts, dataset_dir: str,
             train_config: train.TrainConfig, run_dir: str) -> tuple[dict, dict]:
    """Trains one run on its fold (resuming if interrupted), tests its best weights on the
    fold's test clips.

    Returns:
      (result.json dictionary, test_predictions.npz arrays).
    """
    item = fold_item.item
    cfg = dataclasses.replace(item.train_config or train_config, seed=item.seed)
    info = load_dataset_info(dataset_dir)
    runfiles.write_json_atomic(os.path.join(run_dir, FOLD_JSON), parts.describe())
    outcome = train.train(dataset_dir, item.mel_config, item.model_config, cfg, run_dir,
                          fold=parts)
    model = train.load_best(run_dir, dataset_dir, item.mel_config, item.model_config)
    p = evaluate.predict_clips(model, dataset_dir, item.mel_config, None, item.patch_frames,
                               cfg.eval_batch_size, cfg.test_patches, parts.test)
    if sorted(p.clip_ids) != list(parts.test):
        raise RuntimeError(f"{fold_item.key}: tested {len(p.clip_ids)} clips, the fold has "
                           f"{len(parts.test)}")
    metrics = evaluate.scores(p, info.tags)
    order = np.argsort(p.clip_ids, kind="stable")
    teacher = p.soft_labels if p.soft_labels is not None else p.labels
    arrays = {"clip_id": np.array(p.clip_ids)[order],
              "probs": p.probabilities[order].astype(np.float16),
              "teacher": np.asarray(teacher)[order].astype(np.float16),
              "labels": p.labels[order].astype(np.int8),
              "tags": np.array(info.tags)}
    m, c = item.model_config, item.mel_config
    result = {
        "model": m.name, "width": m.width, "preset": m.preset, "resolution": c.name,
        "sr": c.sr, "n_mels": c.n_mels, "hop_factor": c.hop_factor, "compression": c.compression,
        "fold": parts.fold, "folds": parts.folds, "seed": item.seed,
        "test_roc_auc": metrics.roc_auc, "test_pr_auc": metrics.pr_auc,
        "top5_overlap": metrics.top5_overlap, "prob_correlation": metrics.prob_correlation,
        "best_epoch": outcome["best_epoch"], "epochs_done": outcome["epochs_done"],
        "stop_reason": outcome["stop_reason"], "patience_epochs": outcome["patience_epochs"],
        "lr_reductions": outcome["lr_reductions"],
        "max_epochs": cfg.epochs, "train_seconds": outcome["train_seconds"],
        **sweep.costs(item, info),
        "n_test_clips": len(p.clip_ids), "n_train_clips": len(parts.train),
        "n_valid_clips": len(parts.valid), "skipped_tags": len(metrics.skipped_tags),
        "valid_loss": outcome["best_valid_loss"], "valid_roc_auc": outcome["best_valid_roc_auc"],
        "loss": cfg.loss, "labels": info.raw.get("labels", "catalog"),
        "hard_labels": _hard_label_rule(info.raw),
        "patch_frames": item.patch_frames,
        "test_patches": cfg.test_patches if item.patch_frames else None,
        "valid_patches": cfg.valid_patches if item.patch_frames else None,
        "curve": curve(outcome["history"]),
    }
    return result, arrays


def _hard_label_rule(meta: dict) -> str:
    teacher = meta.get("teacher")
    if teacher:
        return f"top-{teacher['top_k']} tags of the teacher's probabilities per clip"
    return "the catalogue's tags"


def write_result(directory: str, result: dict, arrays: dict) -> str:
    """Writes a finished run's files, the predictions first and ``result.json`` last (both
    atomic); returns the result.json path."""
    missing = [k for k in RESULT_KEYS if k not in result] + [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{directory}: result misses {missing}")
    os.makedirs(directory, exist_ok=True)
    runfiles.write_npz_atomic(os.path.join(directory, PREDICTIONS_NPZ), **arrays)
    path = os.path.join(directory, RESULT_JSON)
    runfiles.write_json_atomic(path, result)
    return path


def result_path(out: str, key: str) -> str:
    """``<out>/<key>/result.json``: a run's record in the results directory ``out`` (the run is
    finished when it exists)."""
    return os.path.join(out, key, RESULT_JSON)


def results_dir(experiment) -> str:
    """``--results_dir``, else ``<run_dir>/results``."""
    return experiment.results_dir or experiment.path("results")


def run(experiment) -> dict:
    """``--mode=sweep --folds=K``: every run of :func:`plan` not finished yet (its result.json
    absent from the results directory), each trained, tested and recorded.

    Returns:
      A summary: runs planned, finished before, run now, the results directory.
    """
    from tftag.extraction import extract

    dataset_dir = extract.ensure_dataset(experiment)
    out = results_dir(experiment)
    items = plan(experiment)
    pending = [i for i in items if not os.path.exists(result_path(out, i.key))]
    logging.info("cross-validation: %d runs, %d done already (%s)", len(items),
                 len(items) - len(pending), out)
    groups, parts = dataset_folds(dataset_dir, experiment)
    fold_of = {c: k for k, p in parts.items() for c in p.test}
    runfiles.write_json_atomic(os.path.join(out, FOLDS_JSON), {
        "folds": experiment.folds.folds, "seed": experiment.folds.seed,
        "valid_fraction": experiment.folds.valid_fraction,
        "clips": {c: {"group": groups[c], "fold": fold_of[c]} for c in sorted(groups)}})
    run_items(items, parts, dataset_dir, experiment.train, experiment.path("runs"), out)
    return {"runs": len(items), "done_before": len(items) - len(pending), "ran": len(pending),
            "results_dir": out, "dataset_dir": dataset_dir}


def run_items(items: Sequence[FoldItem], parts: Mapping[int, folds.FoldParts], dataset_dir: str,
              train_config: train.TrainConfig, runs_dir: str, out: str) -> list[dict]:
    """Trains, tests and records every item whose ``<out>/<key>/result.json`` is absent (in
    ``<runs_dir>/<key>``, resuming an interrupted one); returns every item's result, in order.

    Args:
      items: the runs.
      parts: {fold: its parts} (:func:`dataset_folds`), at least the items' folds.
      dataset_dir: the dataset.
      train_config: the settings of items without their own.
      runs_dir: where each run trains.
      out: the results directory.
    """
    import keras

    results = []
    pending = sum(not os.path.exists(result_path(out, i.key)) for i in items)
    done = 0
    for fold_item in items:
        path = result_path(out, fold_item.key)
        if not os.path.exists(path):
            done += 1
            logging.info("cross-validation [%d/%d] %s", done, pending, fold_item.key)
            result, arrays = run_item(fold_item, parts[fold_item.fold], dataset_dir,
                                      train_config, os.path.join(runs_dir, fold_item.key))
            write_result(os.path.dirname(path), result, arrays)
            keras.backend.clear_session()
        results.append(runfiles.read_json(path))
    return results
