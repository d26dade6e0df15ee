"""Track-level inference, the teacher's ceiling and a second labeller (tftag/study): small
synthetic predictions whose right answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tftag.study import analysis, labellers, stats
from tftag.study import report as cv_report

TRACKS, COPIES, TAGS = 40, 4, 5


def _one_clip_per_track(seed: int = 0):
    """[tracks, tags] labels (each column both classes) and two noisy scores."""
    rng = np.random.default_rng(seed)
    y = (rng.random((TRACKS, TAGS)) < 0.4).astype(int)
    y[0], y[1] = 1, 0
    a = y + rng.normal(scale=0.8, size=y.shape)
    b = y + rng.normal(scale=1.0, size=y.shape)
    return y, a, b


def test_cluster_bootstrap_of_identical_clips_is_the_one_clip_per_track_interval():
    y, a, b = _one_clip_per_track()
    groups = [f"track{t:03d}" for t in np.repeat(np.arange(TRACKS), COPIES)]  # sorted as tracks
    yy, aa, bb = (np.repeat(x, COPIES, axis=0) for x in (y, a, b))
    one = stats.paired_bootstrap(y, a, b, stats.bootstrap_weights(TRACKS, 300, 7))
    clustered = stats.paired_bootstrap(yy, aa, bb,
                                       stats.bootstrap_weights(TRACKS * COPIES, 300, 7, groups))
    assert clustered.difference == pytest.approx(one.difference, abs=1e-12)
    assert clustered.ci95 == pytest.approx(one.ci95, abs=1e-12)
    assert clustered.se == pytest.approx(one.se, abs=1e-12)
    assert clustered.p_value == one.p_value
    # resampling the copies as if independent pretends to 4x the data: a narrower interval
    naive = stats.paired_bootstrap(yy, aa, bb, stats.bootstrap_weights(TRACKS * COPIES, 300, 7))
    assert naive.se < 0.7 * clustered.se
    # the same for one set's pooled interval
    ci_one = stats.bootstrap_ci(y, a, stats.bootstrap_weights(TRACKS, 200, 3))[0]
    ci_cl = stats.bootstrap_ci(yy, aa, stats.bootstrap_weights(TRACKS * COPIES, 200, 3, groups))[0]
    assert ci_cl.ci95 == pytest.approx(ci_one.ci95, abs=1e-12)


def test_clustered_delong_of_identical_clips():
    """Copies of a clip add no information: the clustered variance is the one-clip-per-track
    variance up to the m(m-1) normalisation, m(M-1) / (mM-1) for M tracks of m copies, on
    each side; the unclustered test shrinks it about m times."""
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(12), np.zeros(18)].astype(int)[:, None]
    a, b = y + rng.normal(size=y.shape), y + 1.3 * rng.normal(size=y.shape)
    one = stats.delong_macro(y, a, b)
    groups = np.repeat(np.arange(30), COPIES)
    yy, aa, bb = (np.repeat(x, COPIES, axis=0) for x in (y, a, b))
    clustered = stats.delong_macro(yy, aa, bb, groups)
    plain = stats.delong_macro(yy, aa, bb)
    assert clustered.difference == pytest.approx(one.difference)
    assert clustered.method == "DeLong (macro, clustered)"
    # each side's terms scale by m (M - 1) / (m M - 1): positives M = 12, negatives M = 18
    ca, cb = (stats._components(y[:, 0] == 1, s[:, 0]) for s in (a, b))
    d = cb[1] - ca[1]
    pos = y[:, 0] == 1
    var = sum(np.sum(d[side] ** 2) * COPIES * (m - 1) / (COPIES * m - 1)
              for side, m in ((pos, 12), (~pos, 18)))
    assert clustered.se == pytest.approx(np.sqrt(var), rel=1e-9)
    assert plain.se == pytest.approx(clustered.se / np.sqrt(COPIES), rel=0.05)


def test_per_tag_bootstrap_respects_the_resamples():
    y, a, b = _one_clip_per_track(2)
    w = stats.bootstrap_weights(TRACKS, 200, 0)
    tests = stats.paired_bootstrap_per_tag(y, a, b, w, range(TAGS))
    _, ra, _ = stats.per_tag_auc(y, a)
    _, rb, _ = stats.per_tag_auc(y, b)
    assert [t.difference for t in tests] == pytest.approx(list(rb - ra))
    # the per-tag terms average to the macro difference of the same resamples
    macro = stats.paired_bootstrap(y, a, b, w)
    assert np.mean([t.difference for t in tests]) == pytest.approx(macro.difference)
    same = stats.paired_bootstrap_per_tag(y, a, a, w, range(TAGS))
    assert all(t.p_value == 1.0 and t.difference == 0 for t in same)
    # a perfect predictor against noise: every tag's change called
    perfect = stats.paired_bootstrap_per_tag(y, b, y.astype(float), w, range(TAGS))
    assert all(t.difference > 0 and t.p_value == pytest.approx(2 / 201) for t in perfect)
    assert stats.paired_bootstrap_per_tag(y, a, b, w, []) == []


def test_spearman():
    assert stats.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert stats.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    from scipy import stats as scipy_stats

    x, y = [0.1, 0.5, 0.5, 0.9, 0.3], [3.0, 1.0, 2.0, 5.0, 4.0]
    assert stats.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic)
    assert stats.spearman([1, 2], [2, 1]) is None and stats.spearman([1, 1, 1], [1, 2, 3]) is None
    with pytest.raises(ValueError, match="paired values"):
        stats.spearman([1, 2, 3], [1, 2])


# --- run sets on disk: clips of tracks of packages ---

PACKAGES, TRACKS_PER_PACKAGE, CLIPS_PER_TRACK, N_TAGS = 6, 5, 3, 8


def _ids():
    return np.array([f"pkg{p}/music/track{t}.ogg#{c:03d}" for p in range(PACKAGES)
                     for t in range(TRACKS_PER_PACKAGE) for c in range(CLIPS_PER_TRACK)])


def _write(runs_dir, model, n_mels, hop, probs, teacher, ids, gmacs, folds=3):
    res = f"sr16000-mel{n_mels}-hop{hop}-log"
    fold_of = np.arange(len(ids)) % folds
    tags = np.array([f"tag{i}" for i in range(teacher.shape[1])])
    for fold in range(folds):
        d = runs_dir / f"{model}-w0.125-{res}-fold{fold}-seed0"
        d.mkdir(parents=True)
        sel = fold_of == fold
        np.savez(d / "test_predictions.npz", clip_id=ids[sel], probs=probs[sel],
                 teacher=teacher[sel], tags=tags)
        (d / "result.json").write_text(json.dumps({
            "model": model, "width": 0.125, "resolution": res, "fold": fold, "folds": folds,
            "seed": 0, "test_roc_auc": 0.8, "test_pr_auc": 0.5, "top5_overlap": 0.6,
            "prob_correlation": 0.7, "best_epoch": 5, "epochs_done": 8, "stop_reason": "plateau",
            "train_seconds": 10.0, "gmacs": gmacs, "storage_bytes": 1000,
            "n_test_clips": int(sel.sum()),
            "curve": [{"epoch": 0, "train_loss": 0.5, "valid_loss": 0.4, "valid_roc_auc": 0.8}]}))


def _study(tmp_path, seed=0):
    """VGG-CNN 96×1, 48×1, 96×10 (a noisier student), clips of a track alike."""
    rng = np.random.default_rng(seed)
    ids = _ids()
    n = len(ids)
    per_track = rng.dirichlet(np.full(N_TAGS, 0.3), size=n // CLIPS_PER_TRACK)
    teacher = np.repeat(per_track, CLIPS_PER_TRACK, axis=0) + 0.01 * rng.random((n, N_TAGS))
    runs = tmp_path / "runs"
    for n_mels, hop, noise, gmacs in ((96, 1, 0.05, 0.064), (48, 1, 0.06, 0.032),
                                      (96, 10, 0.3, 0.0064)):
        probs = np.clip(teacher + noise * rng.normal(size=teacher.shape), 0, 1)
        _write(runs, "vgg", n_mels, hop, probs, teacher, ids, gmacs)
    return runs, ids, teacher


def test_units_and_the_package_view(tmp_path):
    runs, ids, _ = _study(tmp_path)
    assert analysis.RESAMPLE_UNITS["package"]("pkg3/music/track1.ogg#002") == "pkg3"
    assert analysis.n_units(ids, "clip") == len(ids)
    assert analysis.n_units(ids, "track_group") == PACKAGES * TRACKS_PER_PACKAGE
    assert analysis.n_units(ids, "package") == PACKAGES
    with pytest.raises(ValueError, match="unknown resample unit 'album'"):
        analysis.n_units(ids, "album")
    sets = {s.key: s for s in analysis.load_sets(analysis.load_runs(str(runs)))}
    a, b = sets["vgg-w0.125-sr16000-mel96-hop1-log"], sets["vgg-w0.125-sr16000-mel96-hop10-log"]
    c = analysis.compare(a, b, n_resamples=200)
    assert c["unit"] == "track_group" and set(c["by_unit"]) == {"clip", "package"}
    assert c["n_units"] == PACKAGES * TRACKS_PER_PACKAGE
    # each secondary figure is what the comparison gives with that unit as the primary
    for unit in ("clip", "package"):
        alone = analysis.compare(a, b, n_resamples=200, unit=unit, also_units=())
        assert alone["by_unit"] == {}
        for k in ("n_units", "delta_points", "ci95_points", "se_points", "p_bootstrap", "mde_points"):
            assert c["by_unit"][unit][k] == alone[k]
    assert c["by_unit"]["package"]["n_units"] == PACKAGES
    # the three clips of a track are near copies: resampling clips understates the SE
    assert c["by_unit"]["clip"]["se_points"] < c["se_points"]
    assert analysis.summarize_set(a, n_resamples=50)["n_units"] == PACKAGES * TRACKS_PER_PACKAGE
    rows = analysis.per_tag(a, b, n_resamples=100)
    assert all(r["unit"] == "track_group" for r in rows)
    tested = [r for r in rows if r["p_bootstrap"] is not None]
    assert [r["q_bootstrap"] for r in tested] == pytest.approx(
        stats.false_discovery_rate([r["p_bootstrap"] for r in tested]))


def test_teacher_ceiling():
    """Top-3 tags at 0.9, the rest at 0.1: the teacher ranks its own labels perfectly; a
    teacher with noise: the macro ROC-AUC of scikit-learn over the tags present."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    ids = tuple(sorted(_ids()))
    n = len(ids)
    soft = np.full((n, N_TAGS), 0.1)
    for i in range(n):
        soft[i, rng.choice(N_TAGS, 3, replace=False)] = 0.9
    s = analysis.RunSet("vgg", 0.125, "sr16000-mel96-hop1-log", 0, ({"folds": 1},), ids,
                        soft, soft, tuple(f"tag{i}" for i in range(N_TAGS)))
    c = analysis.ceiling(s, n_resamples=50)
    assert c["roc_auc"] == 1.0 and c["ci95"] == [1.0, 1.0] and c["unit"] == "track_group"
    noisy = soft + 0.2 * rng.random(soft.shape)  # labels from its own top-3, scores the same
    s = analysis.RunSet("vgg", 0.125, "sr16000-mel96-hop1-log", 0, ({"folds": 1},), ids,
                        noisy, noisy, s.tags)
    y = s.labels(3)
    want = np.mean([roc_auc_score(y[:, t], noisy[:, t]) for t in range(N_TAGS)
                    if 0 < y[:, t].sum() < n])
    assert analysis.ceiling(s, n_resamples=50)["roc_auc"] == pytest.approx(want)
    # another labeller's scores against this one's labels
    other = rng.random(soft.shape)
    want_other = np.mean([roc_auc_score(y[:, t], other[:, t]) for t in range(N_TAGS)
                          if 0 < y[:, t].sum() < n])
    assert analysis.ceiling(s, other, n_resamples=50)["roc_auc"] == pytest.approx(want_other)


def test_labels_file_round_trip_and_errors(tmp_path):
    ids = ("b#1", "a#0", "c#2")
    probs = np.arange(6, dtype=np.float32).reshape(3, 2)
    path = str(tmp_path / "labels_x.npz")
    labellers.write_labels(path, labellers.Labels("X", ids, probs, ("t0", "t1")), {"input": "m"})
    got = labellers.read_labels(path)
    assert got.name == "X" and got.clip_ids == ("a#0", "b#1", "c#2") and got.tags == ("t0", "t1")
    assert got.rows(["c#2", "b#1"]).tolist() == [[4.0, 5.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match="labeller X: 1 clips not labelled"):
        got.rows(["a#0", "zz#9"])
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="not a labeller's memo"):
        labellers.read_labels(str(tmp_path / "bad.npz"))


def test_second_labeller_in_the_report(tmp_path):
    """A second labeller identical to the teacher: every claim holds under both, the same Δ,
    rank correlation 1; one that reverses the teacher's ranking within each clip: the order
    of the resolutions changes."""
    runs, ids, teacher = _study(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    order = np.argsort(ids, kind="stable")
    labellers.write_labels(str(out / "labels_same.npz"), labellers.Labels(
        "same", tuple(ids[order]), teacher[order].astype(np.float32),
        tuple(f"tag{i}" for i in range(N_TAGS))))
    cv_report.build(str(runs), str(out), "x", cv_report.Options(n_resamples=100))
    report = json.loads((out / "report.json").read_text())
    assert report["unit"] == "track_group"
    assert report["n_units"] == {"track_group": 30, "clip": 90, "package": 6}
    assert report["teacher_ceiling"]["all_tags"]["roc_auc"] > 0.95
    for key in ("claims", "vs_baseline", "seed_to_seed", "between_models"):
        for c in report[key]:
            assert c["unit"] == "track_group" and set(c["by_unit"]) == {"clip", "package"}
    second = report["second_labellers"]["same"]
    assert second["file"] == "labels_same.npz"
    assert second["rank_correlation"]["all"]["spearman"] == pytest.approx(1.0)
    assert second["rank_correlation"]["vgg"]["n_sets"] == 3
    claims = report["claims"]
    assert claims and all(c["second_labellers"]["same"]["holds_under_both"] for c in claims)
    for c, o in zip(claims, second["claims"]):
        assert o["delta_points"] == pytest.approx(c["delta_points"])
        assert o["p_bootstrap"] == c["p_bootstrap"]
    assert second["ceiling"]["roc_auc"] == pytest.approx(report["teacher_ceiling"]["all_tags"]["roc_auc"])
    md = (out / "results.md").read_text()
    assert "## The teacher's ceiling" in md and "## A second labeller: same" in md
    assert "p by package" in md and "*p by clip (secondary)*" in md


def test_rank_correlation_and_verdicts():
    first = {"vgg-a": 0.9, "vgg-b": 0.8, "vgg-c": 0.7, "musicnn-a": 0.85}
    second = {"vgg-a": 0.7, "vgg-b": 0.8, "vgg-c": 0.9, "musicnn-a": 0.6, "vgg-d": 0.5}
    rc = cv_report.rank_correlation(first, second)
    assert rc["vgg"] == {"n_sets": 3, "spearman": pytest.approx(-1.0)}
    assert rc["all"]["n_sets"] == 4 and rc["musicnn"]["spearman"] is None
    assert cv_report.verdict({"p_bootstrap": 0.2, "delta_points": -3}, 0.05) == \
        "no significant difference"
    assert cv_report.verdict({"p_bootstrap": 0.01, "delta_points": -3}, 0.05) == "loss"
    assert cv_report.verdict({"p_bootstrap": 0.01, "delta_points": 3}, 0.05) == "gain"


def test_claims_without_the_pilot_fold(tmp_path):
    """The claims again on the clips of the other folds only: their sets pool folds 1 and 2."""
    runs, ids, _ = _study(tmp_path)
    results = analysis.load_runs(str(runs))
    opts = cv_report.Options(n_resamples=50)
    got = cv_report.without_fold(results, 0, opts)
    assert got["folds"] == [1, 2] and got["n_clips"] == len(ids) - len(ids[::3])
    sets = analysis.load_sets([r for r in results if r["fold"] != 0])
    want = analysis.compare(sets[1], sets[0], n_resamples=50, also_units=())  # 96×1 → 48×1
    c = next(c for c in got["claims"] if c["to_shape"] == "48×1")
    assert c["delta_points"] == pytest.approx(want["delta_points"]) and c["n_clips"] == got["n_clips"]


def test_pooled_intervals_by_unit(tmp_path):
    runs, ids, _ = _study(tmp_path)
    s = analysis.load_sets(analysis.load_runs(str(runs)))[0]
    row = analysis.summarize_set(s, n_resamples=100, also_units=("clip", "package"))
    alone = analysis.summarize_set(s, n_resamples=100, unit="package")
    assert row["by_unit"]["package"]["ci95"] == alone["ci95"]
    assert row["by_unit"]["package"]["n_units"] == PACKAGES and row["unit"] == "track_group"
    assert "by_unit" not in analysis.summarize_set(s, n_resamples=100)
