"""Evaluation: clip scores averaged over non-overlapping patches, macro ROC-AUC and PR-AUC.

A clip's score is the mean of the sigmoids of its non-overlapping patches, cut by
:mod:`tftag.patches` (the last partial patch is dropped; a clip shorter than one patch is
zero-padded to one). Metrics are scikit-learn's ``roc_auc_score`` and
``average_precision_score`` (PR-AUC = average precision) per tag, macro-averaged over the tags
that have both positives and negatives in the split; the others are skipped and counted (ROC-AUC
is undefined for them).

On a teacher-labelled split (soft labels stored) the metrics above are against the hard labels,
and :func:`agreement` adds how closely the model follows the teacher: the mean top-5 overlap
and the Pearson correlation of the probabilities (over all clip × tag values, and per clip).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from tftag import patches


@dataclasses.dataclass(frozen=True)
class Metrics:
    """Macro metrics and the per-tag values behind them."""

    roc_auc: float
    pr_auc: float
    n_tags_evaluated: int
    skipped_tags: tuple[str, ...]
    per_tag: dict[str, dict[str, float]]
    n_clips: int
    # Agreement with the teacher on a teacher-labelled split (:func:`agreement`); None on
    # catalogue-labelled data (or when a correlation is undefined: constant probabilities).
    top5_overlap: float | None = None
    prob_correlation: float | None = None
    prob_correlation_per_clip: float | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def macro_metrics(y_true: np.ndarray, y_score: np.ndarray, tags: Sequence[str] | None = None) -> Metrics:
    """Macro ROC-AUC and PR-AUC over the tags with both classes present.

    Args:
      y_true: [clips, tags] 0/1.
      y_score: [clips, tags] scores (probabilities or logits: both rank the same).
      tags: tag names (default "0", "1", ...).

    Returns:
      Metrics; tags with no positive or no negative clip are listed in ``skipped_tags``.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} must be equal [clips, tags]")
    tags = list(tags) if tags is not None else [str(i) for i in range(y_true.shape[1])]
    per_tag, skipped = {}, []
    for i, tag in enumerate(tags):
        positives = int(y_true[:, i].sum())
        if positives == 0 or positives == y_true.shape[0]:
            skipped.append(tag)
            continue
        per_tag[tag] = {
            "roc_auc": float(roc_auc_score(y_true[:, i], y_score[:, i])),
            "pr_auc": float(average_precision_score(y_true[:, i], y_score[:, i])),
            "positives": positives,
        }
    if not per_tag:
        raise ValueError(f"no tag has both positive and negative clips among {y_true.shape[0]} clips")
    return Metrics(
        roc_auc=float(np.mean([v["roc_auc"] for v in per_tag.values()])),
        pr_auc=float(np.mean([v["pr_auc"] for v in per_tag.values()])),
        n_tags_evaluated=len(per_tag),
        skipped_tags=tuple(skipped),
        per_tag=per_tag,
        n_clips=int(y_true.shape[0]),
    )


# Evaluation's names of the one windowing rule (tftag.patches).
patch_indices = patches.evenly_spaced
patch_scores = patches.mean_probabilities


def agreement(teacher_probs: np.ndarray, student_probs: np.ndarray, k: int = 5) -> dict:
    """How closely a student's clip probabilities follow its teacher's.

    Args:
      teacher_probs: [clips, tags] the teacher's probabilities (the soft labels).
      student_probs: [clips, tags] the student's probabilities.
      k: tags in each clip's top list.

    Returns:
      {"top{k}_overlap": mean over clips of |top-k(teacher) ∩ top-k(student)| / k (ties broken
       towards the lower tag index), "correlation": Pearson correlation over all clip × tag
       values, "correlation_per_clip": mean over clips of the Pearson correlation of a clip's
       tag probabilities (clips where either row is constant are left out)}. An undefined
       correlation (constant values) is NaN. (Spearman's per clip: :func:`rank_correlation`.)
    """
    t = np.asarray(teacher_probs, dtype=np.float64)
    s = np.asarray(student_probs, dtype=np.float64)
    if t.shape != s.shape or t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"teacher {t.shape} and student {s.shape} probabilities must be equal, "
                         "non-empty [clips, tags]")
    if not 1 <= k <= t.shape[1]:
        raise ValueError(f"k must be in [1, {t.shape[1]}] (the number of tags), got {k}")
    top_t = np.argsort(-t, axis=1, kind="stable")[:, :k]
    top_s = np.argsort(-s, axis=1, kind="stable")[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_t, top_s)])

    def pearson(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(), b - b.mean()
        denominator = np.sqrt((a * a).sum() * (b * b).sum())
        return float((a * b).sum() / denominator) if denominator > 0 else float("nan")

    per_clip = [pearson(a, b) for a, b in zip(t, s)]
    per_clip = [r for r in per_clip if not np.isnan(r)]
    return {f"top{k}_overlap": float(overlap), "correlation": pearson(t.ravel(), s.ravel()),
            "correlation_per_clip": float(np.mean(per_clip)) if per_clip else float("nan")}


def rank_correlation(teacher_probs: np.ndarray, student_probs: np.ndarray) -> float:
    """Mean over clips of the Spearman correlation of a clip's tag probabilities, student vs
    teacher (``scipy.stats.spearmanr``; clips where either row is constant are left out; NaN
    if every clip is)."""
    from scipy.stats import spearmanr

    values = []
    for a, b in zip(np.asarray(teacher_probs, np.float64), np.asarray(student_probs, np.float64)):
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            values.append(float(spearmanr(a, b).statistic))
    return float(np.mean(values)) if values else float("nan")


@dataclasses.dataclass(frozen=True)
class Predictions:
    """A model's clip-level outputs on a split, with the clips' labels."""

    clip_ids: list[str]
    labels: np.ndarray  # int64 [clips, tags], the hard labels
    probabilities: np.ndarray  # [clips, tags], patch-averaged sigmoids
    soft_labels: np.ndarray | None  # float32 [clips, tags] teacher probabilities, or None


def predict_clips(model, dataset_dir: str, mel_config, split: str,
                  patch_frames: int | None = None, batch_size: int = 16,
                  max_patches: int | None = None,
                  clips: Sequence[str] | None = None) -> Predictions:
    """Patch-averaged probabilities of every clip of a split, its labels and (on a
    teacher-labelled dataset) its soft labels (``max_patches``: see :func:`patch_scores`;
    ``clips``: only these clip ids, e.g. a cross-validation fold's part with ``split=None``).

    ``model``: a Keras model (logits out), or an object whose ``clip_probabilities(mel
    [b, T, F]) -> [b, n_tags]`` averages its own patches (:class:`tftag.delivery.litert.TFLiteModel`;
    ``patch_frames`` and ``max_patches`` are then unused)."""
    from tftag.storage import data

    ds = data.make_dataset(dataset_dir, mel_config, split, batch_size, as_dict=True, clips=clips)
    ids, labels, scores, soft = [], [], [], []
    with data.naming_corrupt_shards(dataset_dir, mel_config, split):  # names a corrupt shard
        for batch in ds:
            if hasattr(model, "clip_probabilities"):
                scores.append(model.clip_probabilities(batch["mel"].numpy()))
            else:
                scores.append(patch_scores(model, batch["mel"], patch_frames, max_patches).numpy())
            labels.append(batch["labels"].numpy())
            if "soft_labels" in batch:
                soft.append(batch["soft_labels"].numpy())
            ids.extend(c.decode("utf-8") for c in batch["clip_id"].numpy())
    return Predictions(ids, np.concatenate(labels).astype(np.int64), np.concatenate(scores),
                       np.concatenate(soft).astype(np.float32) if soft else None)


def predict(model, dataset_dir: str, mel_config, split: str, patch_frames: int | None = None,
            batch_size: int = 16):
    """Clip ids, labels [clips, tags] and patch-averaged probabilities [clips, tags] of a split
    (:func:`predict_clips` also returns the soft labels)."""
    p = predict_clips(model, dataset_dir, mel_config, split, patch_frames, batch_size)
    return p.clip_ids, p.labels, p.probabilities


def clip_bce(targets: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Binary cross-entropy of clip probabilities against targets in [0, 1] (hard labels, or the
    teacher's probabilities for distillation), mean over clips and tags: the validation loss."""
    t = np.asarray(targets, np.float64)
    p = np.clip(np.asarray(probabilities, np.float64), eps, 1.0 - eps)
    return float(np.mean(-(t * np.log(p) + (1.0 - t) * np.log(1.0 - p))))


def _finite_or_none(value: float) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def with_agreement(metrics: Metrics, soft_labels: np.ndarray | None,
                   probabilities: np.ndarray) -> Metrics:
    """``metrics`` plus the agreement with the teacher (unchanged without soft labels); top-5
    (top-n with fewer than 5 tags)."""
    if soft_labels is None:
        return metrics
    k = min(5, soft_labels.shape[1])
    a = agreement(soft_labels, probabilities, k=k)
    return dataclasses.replace(
        metrics, top5_overlap=_finite_or_none(a[f"top{k}_overlap"]),
        prob_correlation=_finite_or_none(a["correlation"]),
        prob_correlation_per_clip=_finite_or_none(a["correlation_per_clip"]))


def evaluate(model, dataset_dir: str, mel_config, split: str, tags: Sequence[str],
             patch_frames: int | None = None, batch_size: int = 16,
             max_patches: int | None = None, clips: Sequence[str] | None = None) -> Metrics:
    """Macro ROC-AUC / PR-AUC of ``model`` on a split of a dataset directory (against the hard
    labels), plus the agreement with the teacher on a teacher-labelled dataset
    (``max_patches``: see :func:`patch_scores`; ``clips``: see :func:`predict_clips`)."""
    p = predict_clips(model, dataset_dir, mel_config, split, patch_frames, batch_size, max_patches,
                      clips)
    return scores(p, tags)


def scores(p: Predictions, tags: Sequence[str]) -> Metrics:
    """The metrics of :func:`evaluate` from predictions already made."""
    return with_agreement(macro_metrics(p.labels, p.probabilities, tags), p.soft_labels,
                          p.probabilities)


def format_per_tag(metrics: Metrics) -> str:
    """Per-tag table, best ROC-AUC first, with the skipped tags listed last."""
    width = max([len(t) for t in metrics.per_tag] + [3])
    lines = [f"{'tag':<{width}}  roc_auc  pr_auc  positives"]
    for tag, v in sorted(metrics.per_tag.items(), key=lambda kv: -kv[1]["roc_auc"]):
        lines.append(f"{tag:<{width}}  {v['roc_auc']:.4f}   {v['pr_auc']:.4f}  {v['positives']:>9}")
    lines.append(f"macro ({metrics.n_tags_evaluated} tags, {metrics.n_clips} clips): ROC-AUC "
                 f"{metrics.roc_auc:.4f}, PR-AUC {metrics.pr_auc:.4f}; skipped (one class only): "
                 f"{', '.join(metrics.skipped_tags) or 'none'}"
                 + _agreement_text(metrics))
    return "\n".join(lines)


def _agreement_text(metrics: Metrics) -> str:
    if metrics.top5_overlap is None and metrics.prob_correlation is None:
        return ""

    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    return (f"; teacher agreement: top-5 overlap {fmt(metrics.top5_overlap)}, probability "
            f"correlation {fmt(metrics.prob_correlation)} (per clip "
            f"{fmt(metrics.prob_correlation_per_clip)})")


def run_evaluate(experiment, weights: str, split: str | None, tflite: str | None = None) -> dict:
    """``--mode=evaluate``: metrics of ``weights`` (or of the TFLite file ``tflite``, through
    the interpreter) on a split (None = all clips).

    Writes ``evaluation_<split>.json`` and ``per_tag_<split>.txt`` into the run directory
    (``evaluation_<split>_<file stem>.json`` and ``per_tag_<split>_<file stem>.txt`` for a
    TFLite file).
    """
    import os

    from tftag.delivery import litert
    from tftag.extraction import extract
    from tftag.runs import runfiles
    from tftag.storage import data
    from tftag.models import build

    config, mc = experiment.mel_config, experiment.model
    dataset_dir = extract.ensure_dataset(experiment)
    if not tflite:
        runfiles.require_weights(weights)
    info = data.load_dataset_info(dataset_dir)
    if split is not None and info.splits.get(split, 0) == 0:
        raise ValueError(f"--split={split}: empty in {dataset_dir} (splits {info.splits})")
    if tflite:
        model, source = litert.load_checked(tflite, config, info.n_tags), {"tflite": tflite}
    else:
        model, source = build(mc, config, info.n_tags), {"weights": weights}
        model.load_weights(weights)
    metrics = evaluate(model, dataset_dir, config, split, info.tags, mc.patch_frames(config))
    table = format_per_tag(metrics)
    print(table)
    name = (split or "all") + (f"_{os.path.basename(tflite)[:-len('.tflite')]}" if tflite else "")
    path = experiment.path(f"evaluation_{name}.json")
    runfiles.write_json_atomic(path, dict(metrics.as_dict(), **source, resolution=config.name))
    runfiles.write_text_atomic(experiment.path(f"per_tag_{name}.txt"), table)
    return {"split": split or "all", "roc_auc": metrics.roc_auc, "pr_auc": metrics.pr_auc,
            "top5_overlap": metrics.top5_overlap, "prob_correlation": metrics.prob_correlation,
            "results": path, **source}

