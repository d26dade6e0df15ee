"""Evaluation: clip scores averaged over non-overlapping patches, macro ROC-AUC and PR-AUC.

A clip's score is the mean of the sigmoids of its non-overlapping patches (the last partial
patch is dropped; a clip shorter than one patch is zero-padded to one). Metrics are
scikit-learn's ``roc_auc_score`` and ``average_precision_score`` (PR-AUC = average precision)
per tag, macro-averaged over the tags that have both positives and negatives in the split; the
others are skipped and counted (ROC-AUC is undefined for them).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Metrics:
    """Macro metrics and the per-tag values behind them."""

    roc_auc: float
    pr_auc: float
    n_tags_evaluated: int
    skipped_tags: tuple[str, ...]
    per_tag: dict[str, dict[str, float]]
    n_clips: int

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


def patch_scores(model, mel, patch_frames: int | None):
    """Mean sigmoid over the non-overlapping patches of each clip: [b, T, F] -> [b, n_tags]."""
    import tensorflow as tf

    if patch_frames is None or patch_frames == mel.shape[1]:
        return tf.sigmoid(model(mel, training=False))
    n_frames, n_mels = mel.shape[1], mel.shape[2]
    n_patches = max(1, n_frames // patch_frames)
    if n_frames < patch_frames:
        mel = tf.pad(mel, [[0, 0], [0, patch_frames - n_frames], [0, 0]])
    patches = tf.reshape(mel[:, : n_patches * patch_frames],
                         [-1, patch_frames, n_mels])  # [b · P, patch, F]
    probabilities = tf.sigmoid(model(patches, training=False))  # [b · P, n_tags]
    return tf.reduce_mean(tf.reshape(probabilities, [-1, n_patches, probabilities.shape[-1]]), axis=1)


def predict(model, dataset_dir: str, mel_config, split: str, patch_frames: int | None = None,
            batch_size: int = 16):
    """Clip ids, labels [clips, tags] and patch-averaged probabilities [clips, tags] of a split."""
    from tftag import data

    ds = data.make_dataset(dataset_dir, mel_config, split, batch_size, as_dict=True)
    ids, labels, scores = [], [], []
    for batch in ds:
        scores.append(patch_scores(model, batch["mel"], patch_frames).numpy())
        labels.append(batch["labels"].numpy())
        ids.extend(c.decode("utf-8") for c in batch["clip_id"].numpy())
    return ids, np.concatenate(labels).astype(np.int64), np.concatenate(scores)


def evaluate(model, dataset_dir: str, mel_config, split: str, tags: Sequence[str],
             patch_frames: int | None = None, batch_size: int = 16) -> Metrics:
    """Macro ROC-AUC / PR-AUC of ``model`` on a split of a dataset directory."""
    _, y_true, y_score = predict(model, dataset_dir, mel_config, split, patch_frames, batch_size)
    return macro_metrics(y_true, y_score, tags)


def format_per_tag(metrics: Metrics) -> str:
    """Per-tag table, best ROC-AUC first, with the skipped tags listed last."""
    width = max([len(t) for t in metrics.per_tag] + [3])
    lines = [f"{'tag':<{width}}  roc_auc  pr_auc  positives"]
    for tag, v in sorted(metrics.per_tag.items(), key=lambda kv: -kv[1]["roc_auc"]):
        lines.append(f"{tag:<{width}}  {v['roc_auc']:.4f}   {v['pr_auc']:.4f}  {v['positives']:>9}")
    lines.append(f"macro ({metrics.n_tags_evaluated} tags, {metrics.n_clips} clips): ROC-AUC "
                 f"{metrics.roc_auc:.4f}, PR-AUC {metrics.pr_auc:.4f}; skipped (one class only): "
                 f"{', '.join(metrics.skipped_tags) or 'none'}")
    return "\n".join(lines)
