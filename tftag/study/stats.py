"""Statistics of a cross-validated study: pooled metrics with bootstrap CIs, paired tests, power.

A study trains every resolution on the same K folds, so each clip is tested exactly once per
resolution and two resolutions can be compared **on the same clips**. This module holds the
math, on plain arrays (clips × tags), and knows nothing of run directories:

- :func:`weighted_macro_auc`: macro ROC-AUC and PR-AUC (average precision) over the tags with
  both classes, the rule of :func:`tftag.evaluate.macro_metrics`, for many clip weightings at
  once (one sort per tag, then cumulative sums): with weights = bootstrap counts it gives every
  resample's metrics without re-sorting.
- :func:`bootstrap_weights`: seeded resampling of clips, or of clusters of clips (a track group),
  as count matrices.
- :func:`bootstrap_ci` and :func:`paired_bootstrap`: percentile 95 % CI of a pooled macro
  ROC-AUC / PR-AUC, and of the difference of two predictors' macro ROC-AUC on the same
  resamples (the primary paired test of the study report), with its standard error.
- :func:`delong`: DeLong, DeLong & Clarke-Pearson (1988) for two correlated ROC curves on one
  tag (structural components from mid-ranks), and :func:`delong_macro` for the macro-AUC
  difference over tags, each clip's influence summed over the tags so that the correlation
  between tags (the same clips) is kept, and optionally over the clips of a cluster (a track
  group) so that correlated clips are not counted as independent.
- :func:`paired_bootstrap_per_tag`: each tag's difference on the same (cluster) resamples, the
  per-tag test of the report; :func:`spearman`: the rank correlation of two orderings.
- :func:`paired_t` / :func:`independent_t`: the fold-level paired t-test and the paper's
  independent-samples t-test; :func:`minimum_detectable_effect`: (z₁₋α/₂ + z_power) · SE;
  :func:`false_discovery_rate`: Benjamini-Hochberg q-values for many tests at once (per tag).

NumPy and the standard library only, except the two t-tests and the q-values (SciPy, a
dependency of scikit-learn), imported inside them.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap distribution's summary."""

    estimate: float
    ci95: tuple[float, float]
    se: float
    n_resamples: int

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "ci95": list(self.ci95), "se": self.se,
                "n_resamples": self.n_resamples}


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """Difference ``b - a`` of two predictors' macro ROC-AUC on the same clips (fractions)."""

    method: str
    difference: float
    se: float
    p_value: float
    ci95: tuple[float, float]

    def as_dict(self) -> dict:
        return {"method": self.method, "difference": self.difference, "se": self.se,
                "p_value": self.p_value, "ci95": list(self.ci95)}


def _check(y_true: np.ndarray, *scores: np.ndarray) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 2:
        raise ValueError(f"labels must be [clips, tags], got shape {y.shape}")
    for s in scores:
        if np.shape(s) != y.shape:
            raise ValueError(f"scores {np.shape(s)} must have the labels' shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    return y.astype(bool)


def evaluable_tags(y_true: np.ndarray, min_positives: int = 1) -> np.ndarray:
    """Indices of the tags with both positive and negative clips (the macro average's tags), and
    at least ``min_positives`` positives."""
    y = _check(y_true)
    positives = y.sum(axis=0)
    tags = np.flatnonzero((positives >= max(1, min_positives)) & (positives < y.shape[0]))
    if tags.size == 0:
        more = f" and {min_positives} or more positives" if min_positives > 1 else ""
        raise ValueError(f"no tag has both positive and negative clips{more} among "
                         f"{y.shape[0]} clips")
    return tags


def _per_tag(y: np.ndarray, s: np.ndarray, tags: np.ndarray,
             w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and AP [rows, tags] of each tag under each weight row (NaN: a class of zero weight)."""
    roc = np.full((w.shape[0], tags.size), np.nan)
    pr = np.full((w.shape[0], tags.size), np.nan)
    for col, t in enumerate(tags):
        order = np.argsort(-s[:, t], kind="stable")  # descending score
        ranked = s[order, t]
        starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # one per threshold
        pos = y[order, t]
        wo = w[:, order]  # [resamples, clips]
        p = np.add.reduceat(np.where(pos, wo, 0.0), starts, axis=1)  # [resamples, thresholds]
        q = np.add.reduceat(np.where(pos, 0.0, wo), starts, axis=1)
        cum_p, cum_q = np.cumsum(p, axis=1), np.cumsum(q, axis=1)
        total_p, total_q = cum_p[:, -1], cum_q[:, -1]
        ok = (total_p > 0) & (total_q > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            # a positive at threshold g beats the negatives below g and ties with those at g
            wins = (p * (total_q[:, None] - cum_q + 0.5 * q)).sum(axis=1)
            roc[:, col] = np.where(ok, wins / (total_p * total_q), np.nan)
            precision = np.where(cum_p + cum_q > 0, cum_p / (cum_p + cum_q), 0.0)
            pr[:, col] = np.where(ok, (p * precision).sum(axis=1) / total_p, np.nan)
    return roc, pr


def weighted_macro_auc(y_true: np.ndarray, y_score: np.ndarray,
                       weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Macro ROC-AUC and PR-AUC under each row of clip weights.

    Per tag, clips are sorted by score once; tied scores form one threshold. ROC-AUC is the
    weighted Mann-Whitney statistic (ties count one half); PR-AUC is scikit-learn's average
    precision, Σ over thresholds of the recall step times the precision there. Integer weights
    equal repeating clips, so weights = bootstrap counts give the resamples' metrics.

    Every row averages the same tags, those with both classes in the unweighted data: a row in
    which a tag has lost all its positives (or negatives) counts that tag at its unweighted
    value. (Dropping it instead biases the resamples: a tag with one positive among 2,214 clips
    loses it in 37 % of resamples, and such tags have the lowest average precision — on the
    real-music study that lifted the resamples' PR-AUC 2-4 points above the estimate and put the
    estimate outside its own percentile interval.)

    Args:
      y_true: [clips, tags] 0/1.
      y_score: [clips, tags] scores.
      weights: [resamples, clips] non-negative; default one row of ones (the plain metrics).

    Returns:
      (roc_auc [resamples], pr_auc [resamples]): means over the tags with both classes in the
      unweighted data.
    """
    y = _check(y_true, y_score)
    s = np.asarray(y_score, dtype=np.float64)
    w = np.ones((1, y.shape[0])) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != y.shape[0]:
        raise ValueError(f"weights must be [resamples, {y.shape[0]}], got {w.shape}")
    tags = evaluable_tags(y)
    roc, pr = _per_tag(y, s, tags, w)
    if weights is not None and not (np.isfinite(roc).all() and np.isfinite(pr).all()):
        point_roc, point_pr = _per_tag(y, s, tags, np.ones((1, y.shape[0])))
        roc = np.where(np.isfinite(roc), roc, point_roc)
        pr = np.where(np.isfinite(pr), pr, point_pr)
    return roc.mean(axis=1), pr.mean(axis=1)


def per_tag_auc(y_true: np.ndarray, y_score: np.ndarray,
                min_positives: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The macro average's terms: the evaluable tags' indices (:func:`evaluable_tags`), their
    ROC-AUC and their PR-AUC, as :func:`weighted_macro_auc` computes them."""
    y = _check(y_true, y_score)
    tags = evaluable_tags(y, min_positives)
    roc, pr = _per_tag(y, np.asarray(y_score, dtype=np.float64), tags, np.ones((1, y.shape[0])))
    return tags, roc[0], pr[0]


def bootstrap_weights(n_clips: int, n_resamples: int, seed: int,
                      groups: Sequence | None = None) -> np.ndarray:
    """Seeded bootstrap counts [n_resamples, n_clips].

    Args:
      n_clips: clips in the pooled set.
      n_resamples: resamples (rows).
      seed: NumPy ``default_rng`` seed: the same seed gives the same rows.
      groups: optional cluster label per clip (e.g. the track group): clusters are resampled
        whole (a cluster bootstrap), each clip weighted by its cluster's count.
    """
    if n_clips < 2 or n_resamples < 1:
        raise ValueError(f"need >= 2 clips and >= 1 resample, got {n_clips} and {n_resamples}")
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.multinomial(n_clips, np.full(n_clips, 1.0 / n_clips), size=n_resamples).astype(float)
    if len(groups) != n_clips:
        raise ValueError(f"groups has {len(groups)} labels for {n_clips} clips")
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(inverse.max()) + 1
    if n_groups < 2:
        raise ValueError("a cluster bootstrap needs >= 2 groups")
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_resamples)
    return counts[:, inverse].astype(float)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return float(lo), float(hi)


def resampled_per_tag(y_true: np.ndarray, y_score: np.ndarray,
                      weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tags, ROC-AUC [resamples, tags], AP [resamples, tags]) of the tags with both classes
    (:func:`evaluable_tags`) under each row of ``weights``; NaN where a row left a tag without
    one class. The pieces of :func:`weighted_macro_auc`, kept per tag so that macro averages over
    any subset of the tags, and per-tag tests, reuse one pass (:func:`macro_of`)."""
    y = _check(y_true, y_score)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != y.shape[0]:
        raise ValueError(f"weights must be [resamples, {y.shape[0]}], got {w.shape}")
    tags = evaluable_tags(y)
    roc, pr = _per_tag(y, np.asarray(y_score, dtype=np.float64), tags, w)
    return tags, roc, pr


def macro_of(per_tag: np.ndarray, point: np.ndarray) -> np.ndarray:
    """The macro average [resamples] of per-tag values [resamples, tags], a resample's missing
    (NaN) tag counted at its unweighted value ``point`` [tags] (:func:`weighted_macro_auc`'s rule)."""
    return np.where(np.isfinite(per_tag), per_tag, point[None, :]).mean(axis=1)


def interval(estimate: float, resampled: np.ndarray) -> Interval:
    """A point estimate with the percentile 95 % CI and SD of its resampled values."""
    return Interval(float(estimate), _percentiles(resampled), float(np.nanstd(resampled, ddof=1)),
                    int(np.isfinite(resampled).sum()))


def paired_test(difference: float, resampled: np.ndarray) -> PairedTest:
    """The paired bootstrap test of ``difference`` from its resampled values (non-finite ones
    skipped; p as :func:`paired_bootstrap`'s)."""
    d = resampled[np.isfinite(resampled)]
    if d.size < 2:
        raise ValueError("fewer than 2 finite resampled differences: nothing to test")
    return PairedTest("paired bootstrap", float(difference), float(np.std(d, ddof=1)),
                      _bootstrap_p(d), _percentiles(d))


def bootstrap_ci(y_true: np.ndarray, y_score: np.ndarray,
                 weights: np.ndarray) -> tuple[Interval, Interval]:
    """Pooled macro ROC-AUC and PR-AUC with percentile 95 % CIs over the resamples ``weights``
    (:func:`bootstrap_weights`)."""
    roc0, pr0 = weighted_macro_auc(y_true, y_score)
    roc, pr = weighted_macro_auc(y_true, y_score, weights)
    return tuple(Interval(float(point[0]), _percentiles(dist), float(np.nanstd(dist, ddof=1)),
                          int(np.isfinite(dist).sum()))
                 for point, dist in ((roc0, roc), (pr0, pr)))


def paired_bootstrap(y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray,
                     weights: np.ndarray) -> PairedTest:
    """Macro ROC-AUC of ``b`` minus ``a`` on the same resampled clips.

    The p-value is two-sided from the resampled differences: 2 · min(#(d ≤ 0) + 1,
    #(d ≥ 0) + 1) / (B + 1), capped at 1 (identical predictors: p = 1; no p below 2 / (B + 1)).
    """
    a0, _ = weighted_macro_auc(y_true, score_a)
    b0, _ = weighted_macro_auc(y_true, score_b)
    a, _ = weighted_macro_auc(y_true, score_a, weights)
    b, _ = weighted_macro_auc(y_true, score_b, weights)
    d = (b - a)[np.isfinite(b - a)]
    p = _bootstrap_p(d)
    return PairedTest("paired bootstrap", float(b0[0] - a0[0]), float(np.std(d, ddof=1)), p,
                      _percentiles(d))


def _bootstrap_p(d: np.ndarray) -> float:
    """Two-sided p of resampled differences ``d`` (finite): as :func:`paired_bootstrap`."""
    return float(min(1.0, 2 * min(np.sum(d <= 0) + 1, np.sum(d >= 0) + 1) / (d.size + 1)))


def paired_bootstrap_per_tag(y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray,
                             weights: np.ndarray, tags: Sequence[int]) -> list[PairedTest]:
    """Each tag's ROC-AUC difference ``b - a`` under the resamples ``weights`` (clip or cluster
    bootstrap, :func:`bootstrap_weights`): the per-tag test that respects clusters when the
    weights do. A resample in which the tag lost all its positives (or negatives) is skipped;
    p as :func:`paired_bootstrap`'s."""
    y = _check(y_true, score_a, score_b)
    t = np.asarray(tags, dtype=int)
    if t.size == 0:
        return []
    a_s, b_s = np.asarray(score_a, np.float64), np.asarray(score_b, np.float64)
    ones = np.ones((1, y.shape[0]))
    a0, b0 = _per_tag(y, a_s, t, ones)[0][0], _per_tag(y, b_s, t, ones)[0][0]
    w = np.asarray(weights, dtype=np.float64)
    d_all = _per_tag(y, b_s, t, w)[0] - _per_tag(y, a_s, t, w)[0]  # [resamples, tags]
    out = []
    for col in range(t.size):
        d = d_all[:, col][np.isfinite(d_all[:, col])]
        if d.size < 2:
            raise ValueError(f"tag {int(t[col])}: fewer than 2 resamples keep both classes; "
                             "test only tags with enough positives and negatives")
        out.append(PairedTest("paired bootstrap", float(b0[col] - a0[col]),
                              float(np.std(d, ddof=1)), _bootstrap_p(d), _percentiles(d)))
    return out


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties given the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranked = x[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], x.size]  # exclusive
    mean_rank = (starts + ends + 1) / 2.0  # mean of starts+1 .. ends
    out = np.empty(x.size)
    out[order] = np.repeat(mean_rank, ends - starts)
    return out


def _components(y: np.ndarray, s: np.ndarray, strict: bool = True) -> tuple[float, np.ndarray]:
    """AUC and each clip's centred, scaled structural component: positives
    (V10 - AUC) / sqrt(m (m - 1)), negatives (V01 - AUC) / sqrt(n (n - 1)), so that the sum of
    squares over clips is DeLong's variance S10 / m + S01 / n."""
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    m, n = pos.size, neg.size
    if strict and (m < 2 or n < 2):
        raise ValueError(f"DeLong needs >= 2 positive and >= 2 negative clips, got {m} and {n}")
    all_ranks = midranks(s)
    v10 = (all_ranks[pos] - midranks(s[pos])) / n  # share of negatives below (ties: half)
    v01 = 1.0 - (all_ranks[neg] - midranks(s[neg])) / m  # share of positives above
    auc = float(v10.mean())
    out = np.zeros(y.size)  # a side with one clip has no estimable variance: 0
    if m > 1:
        out[pos] = (v10 - auc) / math.sqrt(m * (m - 1))
    if n > 1:
        out[neg] = (v01 - auc) / math.sqrt(n * (n - 1))
    return auc, out


def _normal_p(difference: float, se: float) -> float:
    if se <= 0:
        return 1.0 if difference == 0 else 0.0
    return math.erfc(abs(difference / se) / math.sqrt(2))


def _normal_test(method: str, difference: float, variance: float) -> PairedTest:
    se = math.sqrt(max(variance, 0.0))
    half = NormalDist().inv_cdf(0.975) * se
    return PairedTest(method, difference, se, _normal_p(difference, se),
                      (difference - half, difference + half))


def auc_variance(y_true: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """One tag's ROC-AUC and its DeLong variance S10 / m + S01 / n."""
    y = _check(np.reshape(y_true, (-1, 1)), np.reshape(score, (-1, 1)))[:, 0]
    auc, c = _components(y, np.asarray(score, dtype=np.float64))
    return auc, float(np.sum(c * c))


def delong(y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> PairedTest:
    """DeLong's test of AUC(b) - AUC(a) for two correlated ROC curves on one tag (1-D arrays)."""
    y = _check(np.reshape(y_true, (-1, 1)), np.reshape(score_a, (-1, 1)),
               np.reshape(score_b, (-1, 1)))[:, 0]
    a, ca = _components(y, np.asarray(score_a, dtype=np.float64))
    b, cb = _components(y, np.asarray(score_b, dtype=np.float64))
    return _normal_test("DeLong", b - a, float(np.sum((cb - ca) ** 2)))


def _cluster_sums(influence: np.ndarray, groups: Sequence | None) -> np.ndarray:
    """Per-clip influences summed within each cluster (``groups`` None: each clip its own)."""
    if groups is None:
        return influence
    if len(groups) != influence.size:
        raise ValueError(f"groups has {len(groups)} labels for {influence.size} clips")
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    return np.bincount(inverse, weights=influence)


def delong_macro(y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray,
                 groups: Sequence | None = None) -> PairedTest:
    """DeLong's test of the macro ROC-AUC difference (b - a) over the tags with both classes.

    Each clip's influence on the macro difference is the mean over tags of its structural
    components' difference (:func:`_components`); the variance is the sum of their squares over
    clips, which keeps the covariance between tags (they share the clips) and equals DeLong's
    variance exactly for one tag. A tag with a single positive (or negative) clip counts in the
    difference, but its side with one clip adds no variance (none can be estimated from it).

    ``groups`` (a cluster label per clip, e.g. the track group): the clips' influences are summed
    per cluster before squaring (the clustered-data form of DeLong's variance, as Obuchowski's
    for ROC curves of correlated units), so clips of one cluster are not counted as independent;
    with one clip per cluster it is the plain test.
    """
    y = _check(y_true, score_a, score_b)
    tags = evaluable_tags(y)
    a_s, b_s = np.asarray(score_a, dtype=np.float64), np.asarray(score_b, dtype=np.float64)
    influence = np.zeros(y.shape[0])
    diffs = []
    for t in tags:
        a, ca = _components(y[:, t], a_s[:, t], strict=False)
        b, cb = _components(y[:, t], b_s[:, t], strict=False)
        influence += (cb - ca) / tags.size
        diffs.append(b - a)
    sums = _cluster_sums(influence, groups)
    method = "DeLong (macro)" if groups is None else "DeLong (macro, clustered)"
    return _normal_test(method, float(np.mean(diffs)), float(np.sum(sums ** 2)))


def paired_t(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p of the paired t-test of ``b - a`` (e.g. per fold); None with < 2 pairs,
    1.0 when every difference is exactly 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have equal lengths, got {a.size} and {b.size}")
    if a.size < 2:
        return None
    d = b - a
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else 0.0
    from scipy import stats as scipy_stats

    return float(scipy_stats.ttest_rel(b, a).pvalue)


def independent_t(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p of the independent-samples (Student's, pooled variance) t-test, as the paper;
    None unless both groups have >= 2 values."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats as scipy_stats

    p = float(scipy_stats.ttest_ind(b, a).pvalue)
    return None if math.isnan(p) else p


def false_discovery_rate(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg q-values of ``p_values`` (``scipy.stats.false_discovery_control``):
    a test is called at false discovery rate ``alpha`` when its q < ``alpha``. Empty in, empty
    out."""
    if not len(p_values):
        return []
    from scipy import stats as scipy_stats

    return [float(q) for q in scipy_stats.false_discovery_control(np.asarray(p_values, float))]


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation of ``x`` and ``y`` (mid-ranks for ties); None with < 3 pairs
    or a constant side."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"spearman needs paired values, got {x.size} and {y.size}")
    if x.size < 3:
        return None
    rx, ry = midranks(x), midranks(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def minimum_detectable_effect(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true difference a two-sided z-test at level ``alpha`` detects with probability
    ``power``: (z₁₋α/₂ + z_power) · se (2.80 · se at the defaults)."""
    if se < 0 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"need se >= 0, 0 < alpha < 1, 0 < power < 1; got {se}, {alpha}, {power}")
    z = NormalDist()
    return (z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * se
