"""tftag/study/stats.py against scikit-learn, brute force and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from tftag import evaluate
from tftag.study import stats


def _data(n=300, tags=6, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, tags)) < 0.3).astype(np.int64)
    y[:, -1] = 0  # a tag with no positive: skipped by the macro average
    s = y * signal + rng.normal(size=(n, tags))
    return y, np.round(s, 1)  # rounded: ties exercise the half-credit rule


def test_weighted_macro_auc_equals_evaluate_and_repeated_clips():
    y, s = _data()
    roc, pr = stats.weighted_macro_auc(y, s)
    m = evaluate.macro_metrics(y, s)
    assert roc[0] == pytest.approx(m.roc_auc, abs=1e-12)
    assert pr[0] == pytest.approx(m.pr_auc, abs=1e-12)
    # integer weights equal repeating the clips
    w = np.random.default_rng(1).integers(0, 4, size=y.shape[0])
    rep = np.repeat(np.arange(y.shape[0]), w)
    roc_w, pr_w = stats.weighted_macro_auc(y, s, w[None].astype(float))
    tags = [t for t in range(y.shape[1]) if 0 < y[rep, t].sum() < rep.size]
    assert roc_w[0] == pytest.approx(np.mean([roc_auc_score(y[rep, t], s[rep, t]) for t in tags]))
    assert pr_w[0] == pytest.approx(np.mean([average_precision_score(y[rep, t], s[rep, t])
                                             for t in tags]))


def test_resamples_keep_the_estimates_tags_and_rare_tags_do_not_bias_the_interval():
    # 4 common informative tags and 8 tags with one badly ranked positive each (AP ~ 0.003): a
    # resample that drops a rare tag's positive (37 % of them) must not drop the tag from the
    # macro average, or the resamples' PR-AUC would sit far above the estimate
    rng = np.random.default_rng(3)
    n = 800
    y = np.zeros((n, 12), np.int64)
    y[:, :4] = rng.random((n, 4)) < 0.3
    s = y + rng.normal(size=y.shape)
    for t in range(4, 12):
        y[t, t] = 1
        s[:, t] = rng.normal(size=n)
        s[t, t] = -5.0  # ranked last
    w = stats.bootstrap_weights(n, 400, seed=0)
    roc, pr = stats.weighted_macro_auc(y, s, w)
    # a row where clip 4 (tag 4's only positive) has weight 0 counts tag 4 at its own AP
    row = int(np.flatnonzero(w[:, 4] == 0)[0])
    single = w[row:row + 1]
    kept = [t for t in range(12) if t != 4]
    _, pr_kept = stats.weighted_macro_auc(y[:, kept], s[:, kept], single)
    _, pr_point = stats.weighted_macro_auc(y, s)
    ap4 = average_precision_score(y[:, 4], s[:, 4])
    assert stats.weighted_macro_auc(y, s, single)[1][0] == pytest.approx(
        (11 * pr_kept[0] + ap4) / 12)
    roc_ci, pr_ci = stats.bootstrap_ci(y, s, w)
    assert pr_ci.ci95[0] < pr_point[0] < pr_ci.ci95[1]
    assert abs(np.mean(pr) - pr_point[0]) < 0.5 * np.std(pr)
    assert roc_ci.ci95[0] < roc_ci.estimate < roc_ci.ci95[1]


def test_midranks():
    np.testing.assert_allclose(stats.midranks([3.0, 1.0, 3.0, 2.0, 3.0]), [4, 1, 4, 2, 4])


def _brute_delong(y, a, b):
    """DeLong 1988 by the definition: psi over every (positive, negative) pair."""
    def comps(s):
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)

    (auc_a, v10a, v01a), (auc_b, v10b, v01b) = comps(a), comps(b)
    m, n = v10a.size, v01a.size
    s10, s01 = np.cov(np.stack([v10a, v10b])), np.cov(np.stack([v01a, v01b]))
    cov = s10 / m + s01 / n
    return auc_a, auc_b, cov


def test_delong_against_sklearn_and_brute_force():
    rng = np.random.default_rng(3)
    y = (rng.random(40) < 0.4).astype(int)
    a = np.round(y + rng.normal(size=40), 1)
    b = np.round(0.5 * y + rng.normal(size=40), 1)
    auc_a, var_a = stats.auc_variance(y, a)
    assert auc_a == pytest.approx(roc_auc_score(y, a))
    ra, rb, cov = _brute_delong(y, a, b)
    assert var_a == pytest.approx(cov[0, 0], rel=1e-10)
    t = stats.delong(y, a, b)
    assert t.difference == pytest.approx(roc_auc_score(y, b) - roc_auc_score(y, a))
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert t.se == pytest.approx(math.sqrt(variance), rel=1e-10)
    assert t.p_value == pytest.approx(math.erfc(abs(t.difference) / t.se / math.sqrt(2)))
    # one tag: the macro test is the per-tag test
    m = stats.delong_macro(y[:, None], a[:, None], b[:, None])
    assert (m.difference, m.se) == pytest.approx((t.difference, t.se))


def test_identical_predictions_give_p_one_and_zero_difference():
    y, s = _data()
    w = stats.bootstrap_weights(y.shape[0], 200, seed=0)
    for t in (stats.delong_macro(y, s, s), stats.paired_bootstrap(y, s, s, w)):
        assert t.difference == 0 and t.p_value == 1.0 and t.se == 0


def test_clearly_better_predictor_gives_tiny_p():
    rng = np.random.default_rng(5)
    y, weak = _data(n=400, signal=0.2, seed=5)
    strong = y * 2.0 + rng.normal(size=y.shape)
    d = stats.delong_macro(y, weak, strong)
    assert d.difference > 0.2 and d.p_value < 1e-10
    b = stats.paired_bootstrap(y, weak, strong, stats.bootstrap_weights(y.shape[0], 300, seed=1))
    assert b.difference == pytest.approx(d.difference)
    assert b.p_value == pytest.approx(2 / 301) and b.ci95[0] > 0.15
    # the two methods agree on the standard error (asymptotically the same quantity)
    assert b.se == pytest.approx(d.se, rel=0.25)
    # the order matters: a - b is negative
    assert stats.delong_macro(y, strong, weak).difference == pytest.approx(-d.difference)


def test_bootstrap_ci_contains_estimate_and_shrinks_with_n():
    widths = []
    for n in (200, 1800):
        y, s = _data(n=n, seed=2)
        roc, pr = stats.bootstrap_ci(y, s, stats.bootstrap_weights(n, 400, seed=0))
        assert roc.ci95[0] < roc.estimate < roc.ci95[1]
        assert pr.ci95[0] < pr.estimate < pr.ci95[1]
        assert roc.estimate == pytest.approx(evaluate.macro_metrics(y, s).roc_auc)
        widths.append(roc.ci95[1] - roc.ci95[0])
    assert widths[1] < 0.5 * widths[0]  # ~ 1 / sqrt(9) = 1/3 expected


def test_bootstrap_weights_seeded_and_clustered():
    w1 = stats.bootstrap_weights(10, 5, seed=7)
    np.testing.assert_array_equal(w1, stats.bootstrap_weights(10, 5, seed=7))
    assert w1.shape == (5, 10) and (w1.sum(axis=1) == 10).all()
    groups = ["a", "a", "b", "b", "b", "c"]
    w = stats.bootstrap_weights(6, 50, seed=0, groups=groups)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 2] == w[:, 4]).all()  # clusters move whole
    assert set(np.unique(w[:, 5])) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match="groups has 2 labels for 6 clips"):
        stats.bootstrap_weights(6, 5, 0, groups=["a", "b"])


def test_minimum_detectable_effect_and_t_tests():
    assert stats.minimum_detectable_effect(0.01) == pytest.approx(0.0280158, abs=1e-6)
    assert stats.minimum_detectable_effect(0.5, alpha=0.01, power=0.9) == pytest.approx(
        0.5 * (2.5758293 + 1.2815516), abs=1e-6)
    with pytest.raises(ValueError, match="0 < power < 1"):
        stats.minimum_detectable_effect(0.1, power=1.0)
    # paired t by hand: d = (0.01, 0.02, 0.03): mean 0.02, sd 0.01, t = 3.4641, 2 dof
    assert stats.paired_t([0.8, 0.8, 0.8], [0.81, 0.82, 0.83]) == pytest.approx(0.074180, abs=1e-5)
    assert stats.paired_t([0.8, 0.7], [0.8, 0.7]) == 1.0 and stats.paired_t([0.8], [0.9]) is None
    # independent t (the existing report's hand-computed case): p = 0.5528
    assert stats.independent_t([0.80, 0.82], [0.81, 0.83]) == pytest.approx(0.55279, abs=1e-4)
    assert stats.independent_t([0.8], [0.8, 0.9]) is None


def test_false_discovery_rate_by_hand():
    # Benjamini-Hochberg, m = 4: sorted p 0.01, 0.03, 0.04, 0.2 -> p·m/rank 0.04, 0.06, 0.0533,
    # 0.2, then the running minimum from the top: 0.04, 0.0533, 0.0533, 0.2 (back in input order)
    assert stats.false_discovery_rate([0.01, 0.04, 0.03, 0.2]) == pytest.approx(
        [0.04, 0.16 / 3, 0.16 / 3, 0.2])
    assert stats.false_discovery_rate([0.5]) == [0.5] and stats.false_discovery_rate([]) == []


def test_bad_input_messages():
    with pytest.raises(ValueError, match="must have the labels' shape"):
        stats.weighted_macro_auc(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="no tag has both positive and negative"):
        stats.weighted_macro_auc(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=">= 2 positive and >= 2 negative"):
        stats.delong([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3], [0.8, 0.1, 0.2, 0.3])
