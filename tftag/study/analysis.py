"""A cross-validated resolution study read back from its committed per-run files.

Every run of the study writes ``<runs_dir>/<model>-w<width>-<resolution>-fold<k>-seed<s>/``
with ``result.json`` (the run's metrics, stopping reason and learning curve) and
``test_predictions.npz`` (``clip_id``, the student's ``probs``, the ``teacher``'s soft labels,
``tags``). This module turns those files alone into:

- :func:`runs_rows`: one row per run, the columns of ``runs.csv`` (:data:`RUNS_COLUMNS`);
- :func:`load_sets`: a :class:`RunSet` per model × width × resolution × seed: its K test folds'
  clip predictions pooled (each clip is tested once);
- :func:`summarize_set`: pooled ROC-AUC / PR-AUC with bootstrap 95 % CIs, per-fold mean ± sd,
  agreement with the teacher, cost and stopping reasons;
- :func:`compare`: two sets on their common clips, the paired bootstrap of the macro ROC-AUC
  difference (primary; resampling track groups, the clips of one track together, since a
  track's clips are not independent), DeLong's test with clips clustered the same way, the
  fold-level paired t-test and the paper's independent-samples t-test, and the minimum
  detectable effect of the comparison; ``by_unit`` carries the bootstrap figures resampling
  clips and packages beside them;
- :func:`relabel`: a set scored against another labeller's top-k tags (a second labeller).

Hard labels are the teacher's top-k tags per clip (:func:`tftag.extraction.teacher.hard_labels`, the
project's rule; k = 3 by default), recomputed from the stored (float16) teacher probabilities.
The library returns data; ``tftag/study/sweep_report.py`` writes the files.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Callable, Mapping, Sequence

import numpy as np

from tftag import evaluate
from tftag.extraction import teacher
from tftag.study import stats

# runs.csv, in this order (the contract other tools read; fractions in 0-1).
RUNS_COLUMNS = ("model", "width", "resolution", "fold", "seed", "test_roc_auc", "test_pr_auc",
                "top5_overlap", "prob_correlation", "best_epoch", "epochs_done", "stop_reason",
                "train_seconds", "gmacs", "storage_bytes")
# More runs.csv columns after the contract's, with the value of a result.json written before
# the column existed: learning-rate reductions the run went through (--lr_reductions).
EXTRA_COLUMNS = {"lr_reductions": 0}
CSV_COLUMNS = RUNS_COLUMNS + tuple(EXTRA_COLUMNS)
RESULT_KEYS = RUNS_COLUMNS + ("folds", "n_test_clips", "curve")
STOP_REASONS = ("plateau", "cap")
PREDICTIONS = "test_predictions.npz"

# The paper's claims (EUSIPCO 2020, §1 and Table IV), as (model, from, to, claim): resolutions
# are (n_mels, hop_factor) at the study's sample rate and compression.
PAPER_CLAIMS = (
    ("vgg", (96, 1), (48, 1), "96 → 48 bands: ~50 % fewer MACs, no significant loss (MTAT, all P > 0.08)"),
    ("vgg", (96, 1), (96, 2), "hop ×1 → ×2: ~50 % fewer MACs, no loss (MTAT)"),
    ("vgg", (96, 1), (96, 10), "hop ×1 → ×10: ~10× fewer MACs for a 1.4–1.8 % ROC-AUC drop (MTAT)"),
    ("vgg", (96, 1), (48, 2), "both halvings together (MSD 16 kHz: 86.71 → 86.41)"),
    ("musicnn", (128, 1), (96, 1), "MUSICNN 128 → 96 bands: comparable (MTAT 16 kHz 90.83 → 90.60)"),
    ("musicnn", (96, 1), (48, 1), "MUSICNN 96 → 48 bands: comparable (MTAT 16 kHz 90.60 → 90.50)"),
)
# The paper's claim between its two architectures (§1 on MTAT; Table V on MSD), as (from model,
# to model, resolution, claim): each model at the width its study trained it.
MODEL_CLAIMS = (
    ("vgg", "musicnn", (96, 1), "MUSICNN beats VGG-CNN on ROC-AUC (MTAT; MSD 16 kHz 96×1: "
     "86.71 → 87.21), trails it on PR-AUC on MSD (28.06 → 26.96)"),
    ("vgg", "musicnn", (48, 1), "MUSICNN beats VGG-CNN on ROC-AUC (MSD 16 kHz 48×1: "
     "86.73 → 87.10), trails it on PR-AUC on MSD (27.78 → 26.64)"),
)


# The sensitivity view of the report: tags with at least this many positives among the clips
# compared. A tag's ROC-AUC rests on its positives: with 1-10 of them (16 of the 38 tags the
# real-music teacher gives among 2,214 clips; 21 have fewer than 50) it is the rank of a handful
# of clips, and the macro average weighs it like a tag with 600-870. MTAT's 50 tags, the paper's, are its most frequent,
# each with hundreds of clips; 50 positives is 2.3 % of the real-music clips.
FREQUENT_TAG_MIN_POSITIVES = 50

# A tag's own DeLong test (per_tag) needs this many positive and negative clips: its variance is
# estimated from each side's clips, and with 2-5 positives one clip's rank decides the p-value
# (on real music such tags were "called" by the test at changes their few clips cannot carry).
PER_TAG_TEST_MIN_CLIPS = 10


def _track_group(clip_id: str) -> str:
    """Debian clip ids ``package/path#k``: the track group of :func:`tftag.datasets.debian.group_name`."""
    from tftag.datasets import debian

    track = clip_id.rsplit("#", 1)[0]
    package, _, path = track.partition("/")
    return debian.group_name(package, path) if path else track


def _package(clip_id: str) -> str:
    """Debian clip ids ``package/path#k``: the package."""
    return clip_id.partition("/")[0]


# What one bootstrap draw resamples: a clip, every clip of a track group at once (a track's clips
# are not independent: the study's primary unit), or every clip of a package (17 on real music).
RESAMPLE_UNITS: dict[str, Callable[[str], str] | None] = {
    "clip": None, "track_group": _track_group, "package": _package}
PRIMARY_UNIT = "track_group"
# The figures every comparison carries beside its primary unit's (``by_unit``).
SECONDARY_UNITS = ("clip", "package")


def set_name(model: str, width: float, resolution: str) -> str:
    """``vgg-w0.125-sr16000-mel96-hop1-log``: a run directory's name without fold and seed."""
    return f"{model}-w{width:g}-{resolution}"


def load_runs(runs_dir: str) -> list[dict]:
    """Every ``<runs_dir>/*/result.json`` (sorted by directory), checked against the contract.

    Raises:
      ValueError: no runs, a missing key or an unknown stop reason (naming the file).
    """
    paths = sorted(glob.glob(os.path.join(runs_dir, "*", "result.json")))
    if not paths:
        raise ValueError(f"--runs_dir={runs_dir}: no */result.json (no finished run of a study)")
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            r = json.load(f)
        missing = [k for k in RESULT_KEYS if k not in r]
        if missing:
            raise ValueError(f"{p}: missing {', '.join(missing)}")
        if r["stop_reason"] not in STOP_REASONS:
            raise ValueError(f"{p}: stop_reason must be one of {', '.join(STOP_REASONS)}, "
                             f"got {r['stop_reason']!r}")
        out.append(dict(r, run_dir=os.path.dirname(p)))
    return out


def runs_rows(results: Sequence[dict]) -> list[dict]:
    """One ``runs.csv`` row per run (:data:`CSV_COLUMNS`), sorted by model, width, resolution,
    seed, fold."""
    rows = [{**{k: r[k] for k in RUNS_COLUMNS},
             **{k: r.get(k, default) for k, default in EXTRA_COLUMNS.items()}} for r in results]
    return sorted(rows, key=lambda r: (r["model"], r["width"], r["resolution"], r["seed"], r["fold"]))


def reduction_passes(history: Sequence[Mapping]) -> list[int]:
    """The passes at which a learning-rate reduction took effect: a lower rate than the pass
    before (passes without a rate, from before rates were kept, are skipped)."""
    out, rate = [], None
    for i, h in enumerate(history):
        r = h.get("learning_rate")
        if rate is not None and r is not None and r < rate:
            out.append(i)
        rate = r if r is not None else rate
    return out


@dataclasses.dataclass(frozen=True)
class RunSet:
    """The runs of one model × width × resolution × seed, their test folds pooled.

    Arrays are ordered by clip id, so two sets over the same clips align row by row.
    """

    model: str
    width: float
    resolution: str
    seed: int
    runs: tuple[dict, ...]  # result.json of each fold, sorted by fold
    clip_ids: tuple[str, ...]
    probs: np.ndarray  # float64 [clips, tags], the students' clip probabilities
    teacher: np.ndarray  # float64 [clips, tags], the teacher's soft labels
    tags: tuple[str, ...]

    @property
    def name(self) -> str:
        return set_name(self.model, self.width, self.resolution)

    @property
    def key(self) -> str:
        """The set's name, with ``-seed<s>`` for seeds other than 0 (the report's keys)."""
        return self.name if self.seed == 0 else f"{self.name}-seed{self.seed}"

    @property
    def folds(self) -> int:
        return int(self.runs[0]["folds"])

    @property
    def train_seconds(self) -> float:
        """The runs' training time, summed over the folds."""
        return float(sum(r["train_seconds"] for r in self.runs))

    @property
    def epochs_done_mean(self) -> float:
        """Passes each run trained, averaged over the folds."""
        return float(np.mean([r["epochs_done"] for r in self.runs]))

    def labels(self, top_k: int = teacher.DEFAULT_TOP_K) -> np.ndarray:
        """int64 [clips, tags]: the teacher's top-k tags per clip."""
        return np.stack([teacher.hard_labels(row, top_k) for row in self.teacher])


def load_sets(results: Sequence[dict]) -> list[RunSet]:
    """Pools each model × width × resolution × seed's folds (``results`` from :func:`load_runs`).

    Raises:
      ValueError: a run without predictions, tags that differ between folds, or a clip tested
        twice in one set (the folds must partition the clips).
    """
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["model"], float(r["width"]), r["resolution"], int(r["seed"])), []).append(r)
    sets = []
    for (model, width, resolution, seed), runs in sorted(groups.items()):
        runs = sorted(runs, key=lambda r: r["fold"])
        ids, probs, soft, tags = [], [], [], None
        for r in runs:
            path = os.path.join(r["run_dir"], PREDICTIONS)
            if not os.path.exists(path):
                raise ValueError(f"{r['run_dir']}: no {PREDICTIONS}")
            with np.load(path) as z:
                run_tags = tuple(str(t) for t in z["tags"])
                if tags is not None and run_tags != tags:
                    raise ValueError(f"{path}: tags differ from fold {runs[0]['fold']}'s")
                tags = run_tags
                ids.extend(str(c) for c in z["clip_id"])
                probs.append(z["probs"].astype(np.float64))
                soft.append(z["teacher"].astype(np.float64))
        order = np.argsort(np.asarray(ids), kind="stable")
        ids_sorted = tuple(np.asarray(ids)[order])
        if len(set(ids_sorted)) != len(ids_sorted):
            raise ValueError(f"{set_name(model, width, resolution)} seed {seed}: a clip is in "
                             "more than one test fold")
        sets.append(RunSet(model, width, resolution, seed, tuple(runs), ids_sorted,
                           np.concatenate(probs)[order], np.concatenate(soft)[order], tags))
    return sets


def _weights(clip_ids: Sequence[str], n_resamples: int, seed: int, unit: str) -> np.ndarray:
    if unit not in RESAMPLE_UNITS:
        raise ValueError(f"unknown resample unit {unit!r}; known: {', '.join(RESAMPLE_UNITS)}")
    to_group = RESAMPLE_UNITS[unit]
    groups = None if to_group is None else [to_group(c) for c in clip_ids]
    return stats.bootstrap_weights(len(clip_ids), n_resamples, seed, groups)


# Each predictor's resampled per-tag metrics on one set of clips under one resampling, by
# content (labels, scores, clips, unit, resamples, seed): a report compares a set with many
# others (every resolution with its baseline, the claims, the frequent-tag view), and this pass
# is most of its time; the macro figures of any tag subset and the per-tag tests reuse it.
_RESAMPLED: dict[tuple, tuple] = {}
_RESAMPLED_MAX = 512


def _digest(array) -> str:
    import hashlib

    a = np.ascontiguousarray(array)
    h = hashlib.sha1(f"{a.shape}{a.dtype.str}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _resampled(labels: np.ndarray, scores: np.ndarray, clip_ids: Sequence[str], unit: str,
               n_resamples: int, seed: int) -> tuple:
    """(tags, roc [R, T], pr [R, T], point roc [T], point pr [T]) over the tags with both
    classes among ``clip_ids`` (:func:`tftag.study.stats.resampled_per_tag`), remembered."""
    key = (_digest(labels), _digest(scores), _digest(np.asarray(clip_ids)), unit, n_resamples,
           seed)
    hit = _RESAMPLED.get(key)
    if hit is None:
        tags, roc, pr = stats.resampled_per_tag(labels, scores,
                                                _weights(clip_ids, n_resamples, seed, unit))
        _, roc0, pr0 = stats.per_tag_auc(labels, scores)
        if len(_RESAMPLED) >= _RESAMPLED_MAX:
            _RESAMPLED.clear()
        hit = _RESAMPLED[key] = (tags, roc, pr, roc0, pr0)
    return hit


def _macro(hit: tuple, cols: np.ndarray) -> tuple:
    """(point ROC-AUC, resampled ROC-AUC [R], point PR-AUC, resampled PR-AUC [R]) macro over
    ``cols`` (tags with both classes) of a :func:`_resampled` result."""
    tags, roc, pr, roc0, pr0 = hit
    pos = np.searchsorted(tags, cols)
    return (float(roc0[pos].mean()), stats.macro_of(roc[:, pos], roc0[pos]),
            float(pr0[pos].mean()), stats.macro_of(pr[:, pos], pr0[pos]))


def n_units(clip_ids: Sequence[str], unit: str) -> int:
    """How many independent units (clips, track groups, packages) ``clip_ids`` hold."""
    if unit not in RESAMPLE_UNITS:
        raise ValueError(f"unknown resample unit {unit!r}; known: {', '.join(RESAMPLE_UNITS)}")
    to_group = RESAMPLE_UNITS[unit]
    return len(set(clip_ids if to_group is None else map(to_group, clip_ids)))


def relabel(s: "RunSet", labeller) -> "RunSet":
    """``s`` with another labeller's probabilities in place of the teacher's (its hard labels
    become that labeller's top-k; ``labeller``: a :class:`tftag.study.labellers.Labels`)."""
    if tuple(labeller.tags) != s.tags:
        raise ValueError(f"labeller {labeller.name}: its tags differ from {s.key}'s; a second "
                         "labeller must tag the same vocabulary")
    return dataclasses.replace(s, teacher=labeller.rows(s.clip_ids))


def _mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def summarize_set(s: RunSet, top_k: int = teacher.DEFAULT_TOP_K, n_resamples: int = 1000,
                  seed: int = 0, unit: str = PRIMARY_UNIT, min_positives: int = 1,
                  also_units: Sequence[str] = ()) -> dict:
    """Pooled metrics of one set with bootstrap 95 % CIs, per-fold mean ± sd, agreement with
    the teacher on the pooled clips, cost and stopping reasons (fractions in 0-1); ``by_unit``:
    the CIs again resampling each of ``also_units``.

    ``min_positives`` > 1: the pooled ROC-AUC and PR-AUC average only the tags with that many
    positives (``n_tags``); everything else is unchanged."""
    labels = s.labels(top_k)
    cols = stats.evaluable_tags(labels, min_positives)
    roc0, roc_r, pr0, pr_r = _macro(
        _resampled(labels, s.probs, s.clip_ids, unit, n_resamples, seed), cols)
    roc, pr = stats.interval(roc0, roc_r), stats.interval(pr0, pr_r)
    by_unit = {}
    for u in (u for u in also_units if u != unit):
        _, roc_u, _, pr_u = _macro(_resampled(labels, s.probs, s.clip_ids, u, n_resamples, seed), cols)
        by_unit[u] = {"n_units": n_units(s.clip_ids, u), "ci95": list(stats.interval(roc0, roc_u).ci95),
                      "pr_ci95": list(stats.interval(pr0, pr_u).ci95)}
    agree = evaluate.agreement(s.teacher, s.probs, k=min(5, len(s.tags)))
    fold_roc = _mean_sd([r["test_roc_auc"] for r in s.runs])
    fold_pr = _mean_sd([r["test_pr_auc"] for r in s.runs])
    return {
        "set": s.key, "model": s.model, "width": s.width, "resolution": s.resolution,
        "seed": s.seed, "folds": s.folds, "folds_done": len(s.runs), "n_clips": len(s.clip_ids),
        "n_tags": len(cols), "unit": unit, "n_units": n_units(s.clip_ids, unit),
        "roc_auc": roc.estimate, "ci95": list(roc.ci95), "roc_auc_se": roc.se,
        "pr_auc": pr.estimate, "pr_ci95": list(pr.ci95),
        "fold_roc_auc_mean": fold_roc[0], "fold_roc_auc_sd": fold_roc[1],
        "fold_pr_auc_mean": fold_pr[0], "fold_pr_auc_sd": fold_pr[1],
        "top5_overlap": agree[f"top{min(5, len(s.tags))}_overlap"],
        "prob_correlation": agree["correlation"],
        "gmacs": float(s.runs[0]["gmacs"]), "kib_per_clip": s.runs[0]["storage_bytes"] / 1024,
        "train_seconds": s.train_seconds, "epochs_done_mean": s.epochs_done_mean,
        "stopped_at_cap": sum(r["stop_reason"] == "cap" for r in s.runs),
        **({"by_unit": by_unit} if by_unit else {}),
    }


def ceiling(s: RunSet, scores: np.ndarray | None = None, top_k: int = teacher.DEFAULT_TOP_K,
            n_resamples: int = 1000, seed: int = 0, unit: str = PRIMARY_UNIT,
            min_positives: int = 1) -> dict:
    """The labeller's own pooled ROC-AUC / PR-AUC against its hard labels (its top-k per clip,
    from ``s.teacher``): the score no student of it can beat, since a student is trained to
    reproduce those probabilities. ``scores`` [clips, tags]: score those instead (e.g. another
    labeller's probabilities against this one's labels). CIs resample ``unit``."""
    labels = s.labels(top_k)
    cols = stats.evaluable_tags(labels, min_positives)
    x = s.teacher if scores is None else np.asarray(scores, np.float64)
    roc0, roc_r, pr0, pr_r = _macro(
        _resampled(labels, x, s.clip_ids, unit, n_resamples, seed), cols)
    roc, pr = stats.interval(roc0, roc_r), stats.interval(pr0, pr_r)
    return {"n_clips": len(s.clip_ids), "n_tags": len(cols), "unit": unit,
            "roc_auc": roc.estimate, "ci95": list(roc.ci95), "pr_auc": pr.estimate,
            "pr_ci95": list(pr.ci95)}


def _paired(a: RunSet, b: RunSet, top_k: int, min_positives: int) -> tuple:
    """(common clip ids, tag columns, labels, a's probabilities, b's) on the common clips: the
    arrays over every tag, ``cols`` the tags the macro metrics average (both classes among the
    common clips and ``min_positives`` positives)."""
    common = sorted(set(a.clip_ids) & set(b.clip_ids))
    if len(common) < 2:
        raise ValueError(f"{a.name} and {b.name} share {len(common)} test clips; nothing to pair")
    ia = np.searchsorted(np.asarray(a.clip_ids), common)
    ib = np.searchsorted(np.asarray(b.clip_ids), common)
    labels = a.labels(top_k)[ia]
    cols = stats.evaluable_tags(labels, min_positives)
    return common, cols, labels, a.probs[ia], b.probs[ib]


def _groups(clip_ids: Sequence[str], unit: str) -> list[str] | None:
    """Each clip's cluster under ``unit`` (None: clips are the unit)."""
    if unit not in RESAMPLE_UNITS:
        raise ValueError(f"unknown resample unit {unit!r}; known: {', '.join(RESAMPLE_UNITS)}")
    to_group = RESAMPLE_UNITS[unit]
    return None if to_group is None else [to_group(c) for c in clip_ids]


def per_tag(a: RunSet, b: RunSet, top_k: int = teacher.DEFAULT_TOP_K, min_positives: int = 1,
            n_resamples: int = 1000, seed: int = 0, unit: str = PRIMARY_UNIT) -> list[dict]:
    """The terms of :func:`compare`'s macro ROC-AUCs, tag by tag on the common clips: ``tag``,
    ``positives``, ``roc_from`` and ``roc_to`` (percent), largest loss first.

    Each tag with at least :data:`PER_TAG_TEST_MIN_CLIPS` positive and negative clips is tested
    (else its tests are None): primary, the paired bootstrap of its difference resampling
    ``unit`` (track groups by default: a cluster bootstrap, the same resamples as
    :func:`compare`'s; ``p_bootstrap``) with its Benjamini-Hochberg q-value over the tags tested
    (``q_bootstrap``, the false discovery rate of calling that tag's change real); beside it,
    secondary, DeLong's test treating clips as independent (``p_delong``, ``q_delong``)."""
    common, cols, labels, pa, pb = _paired(a, b, top_k, min_positives)
    tags_a, ra, _, ra0, _ = _resampled(labels, pa, common, unit, n_resamples, seed)
    _, rb, _, rb0, _ = _resampled(labels, pb, common, unit, n_resamples, seed)
    pos = dict(zip(tags_a.tolist(), range(len(tags_a))))
    positives = labels.sum(axis=0)
    testable = [t for t in cols
                if PER_TAG_TEST_MIN_CLIPS <= positives[t] <= labels.shape[0] - PER_TAG_TEST_MIN_CLIPS]
    boot = {t: stats.paired_test(rb0[pos[t]] - ra0[pos[t]], rb[:, pos[t]] - ra[:, pos[t]])
            for t in testable}
    delong = {t: stats.delong(labels[:, t], pa[:, t], pb[:, t]).p_value for t in testable}
    q_boot = dict(zip(testable, stats.false_discovery_rate([boot[t].p_value for t in testable])))
    q_delong = dict(zip(testable, stats.false_discovery_rate([delong[t] for t in testable])))
    rows = [{"tag": a.tags[t], "positives": int(positives[t]),
             "roc_from": 100 * float(ra0[pos[t]]), "roc_to": 100 * float(rb0[pos[t]]), "unit": unit,
             "p_bootstrap": boot[t].p_value if t in boot else None, "q_bootstrap": q_boot.get(t),
             "p_delong": delong.get(t), "q_delong": q_delong.get(t)}
            for t in cols]
    return sorted(rows, key=lambda r: r["roc_to"] - r["roc_from"])


def _unit_figures(common: Sequence[str], cols: np.ndarray, labels: np.ndarray, pa: np.ndarray,
                  pb: np.ndarray, n_resamples: int, seed: int, unit: str, alpha: float,
                  power: float) -> dict:
    """The paired bootstrap of ``b - a``'s macro ROC-AUC over ``cols`` resampling ``unit`` (as
    :func:`tftag.study.stats.paired_bootstrap`): Δ, CI, SE, p, MDE (points)."""
    a0, a_r, _, _ = _macro(_resampled(labels, pa, common, unit, n_resamples, seed), cols)
    b0, b_r, _, _ = _macro(_resampled(labels, pb, common, unit, n_resamples, seed), cols)
    boot = stats.paired_test(b0 - a0, b_r - a_r)
    return {"n_units": n_units(common, unit), "delta_points": 100 * boot.difference,
            "ci95_points": [100 * x for x in boot.ci95], "se_points": 100 * boot.se,
            "p_bootstrap": boot.p_value,
            "mde_points": 100 * stats.minimum_detectable_effect(boot.se, alpha, power)}


def compare(a: RunSet, b: RunSet, top_k: int = teacher.DEFAULT_TOP_K, n_resamples: int = 1000,
            seed: int = 0, unit: str = PRIMARY_UNIT, alpha: float = 0.05, power: float = 0.8,
            min_positives: int = 1, also_units: Sequence[str] = SECONDARY_UNITS) -> dict:
    """``b`` against ``a`` on their common clips (differences ``b - a`` in ROC-AUC points; both
    PR-AUCs on the same clips beside). ``min_positives`` > 1: the macro metrics average only the
    tags with that many positives among the common clips (``n_tags``).

    Primary (``unit``, track groups by default): the paired bootstrap of the pooled macro
    ROC-AUC difference resampling that unit (a cluster bootstrap; its SE gives the minimum
    detectable effect at ``alpha`` and ``power``) and DeLong's test of the same difference with
    the clips' influences summed per unit; beside them the paired t-test over the folds both
    finished and the independent-samples t-test over all their runs (as the paper). ``by_unit``:
    the bootstrap figures again for each of ``also_units`` (e.g. clips, packages).

    Raises:
      ValueError: no common clip, or an unknown unit.
    """
    common, cols, labels, pa, pb = _paired(a, b, top_k, min_positives)
    primary = _unit_figures(common, cols, labels, pa, pb, n_resamples, seed, unit, alpha, power)
    by_unit = {u: _unit_figures(common, cols, labels, pa, pb, n_resamples, seed, u, alpha, power)
               for u in also_units if u != unit}
    delong = stats.delong_macro(labels[:, cols], pa[:, cols], pb[:, cols], _groups(common, unit))
    roc_a, _, pr_a, _ = _macro(_resampled(labels, pa, common, unit, n_resamples, seed), cols)
    pr_b = _macro(_resampled(labels, pb, common, unit, n_resamples, seed), cols)[2]
    fa = {r["fold"]: r["test_roc_auc"] for r in a.runs}
    fb = {r["fold"]: r["test_roc_auc"] for r in b.runs}
    folds = sorted(set(fa) & set(fb))
    # the runs' own test ROC-AUCs average every tag: the fold-level tests have no restricted form
    fold_tests = min_positives <= 1
    return {
        "from": a.key, "to": b.key, "n_clips": len(common), "folds_paired": len(folds),
        "n_tags": len(cols), "unit": unit,
        "roc_from": 100 * roc_a, "roc_to": 100 * roc_a + primary["delta_points"],
        "pr_from": 100 * pr_a, "pr_to": 100 * pr_b,
        **primary,
        "p_delong": delong.p_value, "se_delong_points": 100 * delong.se,
        "p_paired_t": stats.paired_t([fa[k] for k in folds], [fb[k] for k in folds])
        if fold_tests else None,
        "p_independent_t": stats.independent_t([r["test_roc_auc"] for r in a.runs],
                                               [r["test_roc_auc"] for r in b.runs])
        if fold_tests else None,
        "gmac_ratio": float(b.runs[0]["gmacs"]) / float(a.runs[0]["gmacs"]),
        "by_unit": by_unit,
    }
