"""tftag/study/sweep_report.py: the paper's claims tested on a study's runs (hand-computed
t-tests), the lowest cost without a significant loss, and the written report."""

from __future__ import annotations

import json
import os

import pytest

from tftag.study import sweep_report
from conftest import run_module


def _result(model, n_mels, hop, seed, roc, gmacs, width=0.0625):
    return {"model": model, "preset": "paper", "width": width, "sr": 16000, "compression": "log",
            "n_mels": n_mels, "hop_factor": hop, "resolution": f"sr16000-mel{n_mels}-hop{hop}-log",
            "seed": seed, "test_roc_auc": roc, "test_pr_auc": roc / 2, "valid_roc_auc": roc,
            "best_epoch": 1, "epochs_done": 2, "train_seconds": 5.0, "gmacs": gmacs,
            "storage_bytes": 4 * n_mels * 1819 // hop, "patch_frames": None, "skipped_tags": 0,
            "top5_overlap": 0.5, "prob_correlation": 0.8}


RESULTS = ([_result("vgg", 128, 1, s, r, 0.084) for s, r in enumerate((0.80, 0.82))]
           + [_result("vgg", 96, 1, s, r, 0.064) for s, r in enumerate((0.80, 0.82))]
           + [_result("vgg", 48, 1, s, r, 0.032) for s, r in enumerate((0.81, 0.83))]
           + [_result("vgg", 96, 10, s, r, 0.0064) for s, r in enumerate((0.70, 0.71))])


def test_claims_and_lowest_cost():
    claims = sweep_report.test_claims(RESULTS)
    assert [(c["from"], c["to"]) for c in claims] == [("96×1", "48×1"), ("96×1", "96×10")]
    c48, c10 = claims
    # 48×1 vs 96×1: the same spread, means 0.82 vs 0.81 -> t = 0.01 / (0.01414·1) = 0.7071 with
    # 2 degrees of freedom, two-sided p = 0.5528.
    assert c48["delta_points"] == pytest.approx(1.0) and c48["p_value"] == pytest.approx(0.55279, abs=1e-4)
    assert c48["gmac_ratio"] == pytest.approx(0.5)
    # 96×10: means 0.705 vs 0.81, stds 0.00707 and 0.01414 -> t = -9.391, 2 dof, p = 0.011149.
    assert c10["delta_points"] == pytest.approx(-10.5)
    assert c10["delta_percent"] == pytest.approx(-12.963, abs=1e-3)
    assert c10["p_value"] == pytest.approx(0.011149, abs=1e-5)
    from tftag.study import sweep

    rows = sweep.summarize(RESULTS)
    lowest = sweep_report.lowest_without_loss(rows, 0.05)
    assert lowest["vgg"]["resolution"] == "sr16000-mel48-hop1-log"  # 96×10 is a significant loss
    # 96×10 is not significant at α = 0.001, but 10.5 points below: still a loss...
    assert sweep_report.lowest_without_loss(rows, 0.001)["vgg"]["resolution"] == "sr16000-mel48-hop1-log"
    # ... unless the tolerated drop covers it.
    assert sweep_report.lowest_without_loss(rows, 0.001, max_drop=11.0)["vgg"]["resolution"] == \
        "sr16000-mel96-hop10-log"


def test_report_files(tmp_path):
    run_dir = tmp_path / "study"
    for r in RESULTS:
        d = run_dir / "runs" / f"{r['model']}-{r['resolution']}-seed{r['seed']}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(r))
    configs = {"data": {"catalog": "debian", "packages": ["a", "b"], "dataset_dir": None,
                        "labels": "teacher:MTT_musicnn", "teacher_top_k": 3},
               "train": {"loss": "distill", "batch_size": 16, "epochs": 4, "steps_per_epoch": 20,
                         "learning_rate": 0.001, "patience": 4, "seed": 0},
               "model": {"name": "vgg", "width": 0.0625}, "repeats": 2,
               "sweep_overrides": [{"name": "musicnn", "resolutions": [], "width": 0.25,
                                    "patch_seconds": 3.0, "epochs": None, "steps_per_epoch": 12}]}
    (run_dir / "configs.json").write_text(json.dumps(configs))
    (run_dir / "dataset").mkdir()
    (run_dir / "dataset" / "dataset.json").write_text(json.dumps(
        {"splits": {"train": 8, "valid": 1, "test": 1}, "tags": ["x"] * 50,
         "labels": "teacher:MTT_musicnn"}))
    out = tmp_path / "results"
    proc = run_module("tftag.main", "--mode=report", f"--run_dir={run_dir}", "--name=demo",
                      f"--out_root={out}", f"--compare=twin={run_dir}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["runs"] == 8 and summary["rows"] == 4
    assert summary["lowest_without_loss"] == {"vgg": "sr16000-mel48-hop1-log"}
    md = (out / "demo" / "results.md").read_text()
    assert "10 clips (train 8, valid 1, test 1), 50 tags" in md
    assert "`musicnn`: width=0.25, patch_seconds=3.0, steps_per_epoch=12" in md
    assert "| vgg | 96×1 → 96×10 | 81.00 → 70.50 | -10.50 (-13.0 %) | 0.011 | 0.10 |" in md
    assert "## Beside: `twin`" in md
    assert (out / "demo" / "roc_vs_gmacs.png").read_bytes()[:4] == b"\x89PNG"
    assert os.path.getsize(out / "demo" / "roc_vs_gmacs.png") < 300_000
    assert len((out / "demo" / "results.csv").read_text().splitlines()) == 9
    assert (out / "demo" / "claims.csv").read_text().count("\n") == 3
    bad = run_module("tftag.main", "--mode=report", f"--run_dir={tmp_path}", "--name=x",
                     f"--out_root={out}", check=False)
    assert bad.returncode != 0 and "no runs/*/result.json" in bad.stderr


# --- the cross-validated study (--runs_dir): synthetic per-run files in the contract's format ---

N_CLIPS, N_TAGS, FOLDS = 150, 8, 3
# (model, n_mels, hop, noise of the student around the teacher, gmacs)
CV_SETS = (("vgg", 96, 1, 0.05, 0.064), ("vgg", 48, 1, 0.05, 0.032), ("vgg", 96, 10, 0.5, 0.0064),
           ("musicnn", 128, 1, 0.1, 2.8), ("musicnn", 96, 1, 0.1, 1.8))


def _write_cv_runs(runs_dir, stop_reason="plateau", second_seed=False, cv_sets=CV_SETS,
                   train_seconds=100.0):
    """``cv_sets`` at seed 0 (and, with ``second_seed``, VGG 96×1 once more at seed 1); the same
    clips and teacher in every call."""
    import numpy as np

    rng = np.random.default_rng(0)
    ids = np.array([f"pkg{t % 5}/track{t // 3}.ogg#{t % 3:03d}" for t in range(N_CLIPS)])
    teacher = rng.dirichlet(np.full(N_TAGS, 0.3), size=N_CLIPS)  # [clips, tags]
    fold_of = np.arange(N_CLIPS) % FOLDS
    tags = np.array([f"tag{i}" for i in range(N_TAGS)])
    sets = [(*s, 0) for s in cv_sets] + ([(*cv_sets[0], 1)] if second_seed else [])
    for k, (model, n_mels, hop, noise, gmacs, seed) in enumerate(sets):
        res = f"sr16000-mel{n_mels}-hop{hop}-log"
        probs = np.clip(teacher + noise * rng.normal(size=teacher.shape), 0, 1)
        for fold in range(FOLDS):
            d = runs_dir / f"{model}-w0.125-{res}-fold{fold}-seed{seed}"
            d.mkdir(parents=True)
            sel = fold_of == fold
            np.savez(d / "test_predictions.npz", clip_id=ids[sel],
                     probs=probs[sel].astype(np.float16), teacher=teacher[sel].astype(np.float16),
                     tags=tags)
            (d / "result.json").write_text(json.dumps({
                "model": model, "width": 0.125, "resolution": res, "fold": fold, "folds": FOLDS,
                "seed": seed, "test_roc_auc": 0.9 - noise / 2 + 0.01 * fold,
                "test_pr_auc": 0.5 - noise / 4, "top5_overlap": 0.6, "prob_correlation": 0.7,
                "best_epoch": 5, "epochs_done": 8,
                "stop_reason": "cap" if (k, fold) == (0, 2) else stop_reason,
                "train_seconds": train_seconds, "gmacs": gmacs, "storage_bytes": 4 * n_mels * 1820 // hop,
                "n_test_clips": int(sel.sum()),
                "curve": [{"epoch": e, "train_loss": 0.5 / (e + 1), "valid_loss": 0.4 + 0.1 / (e + 1),
                           "valid_roc_auc": 0.8} for e in range(8)]}))


def test_cv_report_files(tmp_path):
    import csv

    runs = tmp_path / "runs"
    _write_cv_runs(runs)
    out = tmp_path / "results"
    proc = run_module("tftag.main", "--mode=report", f"--runs_dir={runs}", "--name=cv",
                      f"--out_root={out}", "--n_resamples=300")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["runs"] == 15 and summary["sets"] == 5 and summary["folds"] == 3
    d = out / "cv"
    with open(d / "runs.csv", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == (
        "model", "width", "resolution", "fold", "seed", "test_roc_auc", "test_pr_auc",
        "top5_overlap", "prob_correlation", "best_epoch", "epochs_done", "stop_reason",
        "train_seconds", "gmacs", "storage_bytes", "lr_reductions")
    assert {r["lr_reductions"] for r in rows} == {"0"}  # results from before the column: 0
    assert len(rows) == 15 and sum(r["stop_reason"] == "cap" for r in rows) == 1
    report = json.loads((d / "report.json").read_text())
    assert {"folds", "mde_points", "claims", "pooled"} <= set(report)
    assert report["folds"] == 3 and report["stopped_at_cap"] == 1
    base = report["pooled"]["vgg-w0.125-sr16000-mel96-hop1-log"]
    assert base["n_clips"] == N_CLIPS and base["folds_done"] == 3 and base["stopped_at_cap"] == 1
    assert base["ci95"][0] < base["roc_auc"] < base["ci95"][1] <= 1
    # ROC-AUC of a student 0.05 from the teacher vs the teacher's top-3: above 0.9; at 0.5: far lower
    assert base["roc_auc"] > 0.9
    assert report["pooled"]["vgg-w0.125-sr16000-mel96-hop10-log"]["roc_auc"] < base["roc_auc"] - 0.1
    claims = {(c["model"], c["from_shape"], c["to_shape"]): c for c in report["claims"]}
    assert set(claims) == {("vgg", "96×1", "48×1"), ("vgg", "96×1", "96×10"),
                           ("musicnn", "128×1", "96×1")}
    hop10 = claims[("vgg", "96×1", "96×10")]
    assert hop10["delta_points"] < -10 and hop10["p_bootstrap"] < 0.01 and hop10["p_delong"] < 1e-6
    assert hop10["ci95_points"][1] < 0 and hop10["gmac_ratio"] == pytest.approx(0.1)
    # fold-level test_roc_auc: 96×1 = 0.875 + 0.01·fold, 96×10 = 0.65 + 0.01·fold: constant
    # paired difference -> p = 0; the independent t on the same numbers is tiny but not 0
    assert hop10["p_paired_t"] == 0.0 and 0 < hop10["p_independent_t"] < 1e-4
    b48 = claims[("vgg", "96×1", "48×1")]
    assert abs(b48["delta_points"]) < 2 and b48["p_bootstrap"] > 0.01
    assert b48["p_paired_t"] == 1.0  # identical fold values
    assert report["mde_points"] == pytest.approx(max(c["mde_points"] for c in report["claims"]))
    assert report["mde_points"] == pytest.approx(2.8016 * max(c["se_points"] for c in report["claims"]),
                                                 rel=1e-3)
    assert report["lowest_without_loss"]["vgg-w0.125-seed0"]["set"] == "vgg-w0.125-sr16000-mel48-hop1-log"
    md = (d / "results.md").read_text()
    assert f"minimum detectable effect of the design: {report['mde_points']:.2f} ROC-AUC points" in md
    assert "| vgg (w0.125) | 96×1 → 96×10 |" in md
    for png in ("learning_curves.png", "roc_vs_gmacs.png"):
        assert (d / png).read_bytes()[:4] == b"\x89PNG" and os.path.getsize(d / png) < 300_000
    # the same files and seed rebuild the same report
    run_module("tftag.main", "--mode=report", f"--runs_dir={runs}", "--name=cv2",
               f"--out_root={out}", "--n_resamples=300")
    assert json.loads((out / "cv2" / "report.json").read_text())["claims"] == report["claims"]


def test_cv_report_second_seed_gives_the_designs_mde(tmp_path):
    from tftag.study import report as cv_report

    runs = tmp_path / "runs"
    _write_cv_runs(runs, second_seed=True)
    summary = cv_report.build(str(runs), str(tmp_path / "out"), "cv",
                              cv_report.Options(n_resamples=200))
    assert summary["sets"] == 6
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    base, again = "vgg-w0.125-sr16000-mel96-hop1-log", "vgg-w0.125-sr16000-mel96-hop1-log-seed1"
    assert {base, again} <= set(report["pooled"]) and report["pooled"][again]["seed"] == 1
    assert report["pooled"][base]["roc_auc"] != report["pooled"][again]["roc_auc"]
    (null,) = report["seed_to_seed"]
    assert (null["from"], null["to"]) == (base, again)
    assert (null["from_shape"], null["to_shape"]) == ("96×1 seed 0", "96×1 seed 1")
    # same noise level, another draw: a small Δ the paired test does not call significant
    assert abs(null["delta_points"]) < 1.5 and null["p_bootstrap"] > 0.01
    assert report["mde_points"] == pytest.approx(null["mde_points"])
    assert report["mde_points"] == pytest.approx(2.8016 * null["se_points"], rel=1e-3)
    assert report["mde_claims_points"] == pytest.approx(max(c["mde_points"] for c in report["claims"]))
    assert "two seeds of the same configuration" in report["mde_rule"]
    # the second seed has no claim partner and no "lowest" entry of its own
    assert {c["seed"] for c in report["claims"]} == {0}
    assert set(report["lowest_without_loss"]) == {"vgg-w0.125-seed0", "musicnn-w0.125-seed0"}
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## Repeatability" in md and "| vgg (w0.125) | 96×1 seed 0 → 96×1 seed 1 |" in md
    # a repeat with a fold still to run is listed, paired over its folds, but is not the
    # design's MDE (it compares fewer clips): the claims' largest again, in both views
    import shutil

    shutil.rmtree(runs / "vgg-w0.125-sr16000-mel96-hop1-log-fold2-seed1")
    cv_report.build(str(runs), str(tmp_path / "part"), "cv",
                    cv_report.Options(n_resamples=200, frequent_min_positives=20))
    part = json.loads((tmp_path / "part" / "report.json").read_text())
    (partial,) = part["seed_to_seed"]
    assert partial["folds_paired"] == 2 and partial["n_clips"] < null["n_clips"]
    assert part["mde_points"] == pytest.approx(max(c["mde_points"] for c in part["claims"]))
    assert part["mde_points"] != pytest.approx(partial["mde_points"])
    assert "the largest over the claims tested" in part["mde_rule"]
    freq = part["frequent_tags"]
    assert freq["mde_points"] == pytest.approx(max(c["mde_points"] for c in freq["claims"]))
    assert "| sr16000-mel96-hop1-log seed 1 |" in md
    # every section heading starts after a blank line (a table does not run into it)
    assert all(md.split("\n")[i - 1] == "" for i, line in enumerate(md.split("\n"))
               if line.startswith("## "))


def test_cv_report_against_another_study(tmp_path):
    """--compare=NAME=RUNS_DIR: each configuration both studies ran, paired clip by clip (here a
    study whose 96×1 student is closer to the teacher and trained twice as long)."""
    runs, more = tmp_path / "runs", tmp_path / "more"
    _write_cv_runs(runs)
    _write_cv_runs(more, cv_sets=(("vgg", 96, 1, 0.01, 0.064), ("vgg", 32, 4, 0.05, 0.008)),
                   train_seconds=200.0)
    out = tmp_path / "results"
    proc = run_module("tftag.main", "--mode=report", f"--runs_dir={more}", "--name=more",
                      f"--out_root={out}", "--n_resamples=300", f"--compare=base={runs}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    report = json.loads((out / "more" / "report.json").read_text())
    (row,) = report["against"]["base"]  # 32×4 ran in one study only
    base = report["pooled"]["vgg-w0.125-sr16000-mel96-hop1-log"]
    assert (row["from"], row["to"], row["study"]) == ("vgg-w0.125-sr16000-mel96-hop1-log",) * 2 + ("base",)
    assert row["n_clips"] == N_CLIPS and row["folds_paired"] == FOLDS
    # noise 0.05 -> 0.01 around the teacher: a clear gain, and "to" is this study's own figure
    assert row["delta_points"] > 0 and row["ci95_points"][0] > 0 and row["p_bootstrap"] < 0.05
    assert row["roc_to"] == pytest.approx(100 * base["roc_auc"], abs=1e-6)
    assert (row["train_seconds_from"], row["train_seconds_to"]) == (300.0, 600.0)
    assert (row["epochs_from"], row["epochs_to"]) == (8.0, 8.0)
    assert summary["against"]["base"][0]["delta_points"] == pytest.approx(row["delta_points"])
    md = (out / "more" / "results.md").read_text()
    assert "## Against `base`: the same configurations, paired clip by clip" in md
    assert "| vgg (w0.125) | 96×1 `base` → 96×1 this |" in md
    assert "| 300 s, 8.0 passes → 600 s, 8.0 passes |" in md
    assert "the baseline has not finished" not in md and "(this study has no" not in md
    # a study without the 96×1 baseline (one resolution, as the crops study): no students rule
    only = tmp_path / "only"
    _write_cv_runs(only, cv_sets=(("vgg", 32, 4, 0.05, 0.008),))
    run_module("tftag.main", "--mode=report", f"--runs_dir={only}", "--name=only",
               f"--out_root={out}", "--n_resamples=100", f"--compare=base={runs}")
    md = (out / "only" / "results.md").read_text()
    assert "(this study has no VGG-CNN 96×1 baseline: the rule does not apply)" in md
    assert "(no configuration ran in both studies)" in md
    bad = run_module("tftag.main", "--mode=report", f"--runs_dir={more}", "--name=x",
                     f"--out_root={out}", "--compare=base", check=False)
    assert bad.returncode != 0 and "--compare='base': expected NAME=DIR" in bad.stderr


def test_cv_report_errors(tmp_path):
    runs = tmp_path / "runs"
    _write_cv_runs(runs, stop_reason="tired")
    bad = run_module("tftag.main", "--mode=report", f"--runs_dir={runs}", "--name=x",
                     f"--out_root={tmp_path}", check=False)
    assert bad.returncode != 0 and "stop_reason must be one of plateau, cap, got 'tired'" in bad.stderr
    both = run_module("tftag.main", "--mode=report", f"--runs_dir={runs}", f"--run_dir={runs}",
                      "--name=x", f"--out_root={tmp_path}", check=False)
    assert both.returncode != 0 and "exactly one of --run_dir" in both.stderr
    empty = run_module("tftag.main", "--mode=report", f"--runs_dir={tmp_path / 'none'}", "--name=x",
                       f"--out_root={tmp_path}", check=False)
    assert empty.returncode != 0 and "no */result.json" in empty.stderr


def test_cv_report_students_and_partial_sets(tmp_path):
    """Issue 24's rule picks the students from complete sets only; a set with folds still to run
    is named as pending and can be neither the cheapest without loss nor a student."""
    import shutil

    from tftag.study import report as cv_report

    runs = tmp_path / "runs"
    _write_cv_runs(runs)
    cv_report.build(str(runs), str(tmp_path / "full"), "cv", cv_report.Options(n_resamples=200))
    full = json.loads((tmp_path / "full" / "report.json").read_text())
    students = full["students"]
    top5 = {k: v["top5_overlap"] for k, v in full["pooled"].items()}
    low, high = top5["vgg-w0.125-sr16000-mel96-hop10-log"], top5["vgg-w0.125-sr16000-mel48-hop1-log"]
    assert 0.5 <= low < high  # 8 tags: even the noisy 96x10 keeps half of the teacher's top 5
    assert students["reference"] == "sr16000-mel96-hop1-log"
    assert students["no_loss"] == "sr16000-mel48-hop1-log"
    # 1/10 of 48x1's 0.032 GMAC = 0.0032: 96x10 (0.0064) is nearer than 48x1 on a log scale
    assert students["tenth"] == "sr16000-mel96-hop10-log"
    assert students["top5"] == "sr16000-mel96-hop10-log"  # the cheapest with top-5 >= 0.5
    assert students["resolutions"] == ["sr16000-mel96-hop1-log", "sr16000-mel48-hop1-log",
                                       "sr16000-mel96-hop10-log"]
    assert students["complete_sets"] == 3
    assert students["top5_overlap"]["sr16000-mel96-hop10-log"] == pytest.approx(low)
    # a stricter agreement bar than 96x10 meets: 48x1 is the cheapest that keeps it
    strict = cv_report.student_choices(full["pooled"], full["lowest_without_loss"],
                                       min_top5=(low + high) / 2)
    assert strict["top5"] == "sr16000-mel48-hop1-log" and strict["tenth"] == "sr16000-mel96-hop10-log"
    assert cv_report.student_choices(full["pooled"], full["lowest_without_loss"],
                                     min_top5=1.01)["top5"] is None
    # only the baseline has finished: nothing compared yet, it is every pick
    base_key = "vgg-w0.125-sr16000-mel96-hop1-log"
    alone = cv_report.student_choices({base_key: full["pooled"][base_key]}, {})
    assert alone["no_loss"] == alone["tenth"] == alone["reference"] == "sr16000-mel96-hop1-log"
    assert alone["resolutions"] == ["sr16000-mel96-hop1-log"] and alone["complete_sets"] == 1
    # 48x1 without its last fold: compared on fewer clips, not counted until it finishes
    shutil.rmtree(runs / "vgg-w0.125-sr16000-mel48-hop1-log-fold2-seed0")
    cv_report.build(str(runs), str(tmp_path / "part"), "cv", cv_report.Options(n_resamples=200))
    part = json.loads((tmp_path / "part" / "report.json").read_text())
    assert part["pooled"]["vgg-w0.125-sr16000-mel48-hop1-log"]["folds_done"] == 2
    assert part["lowest_without_loss"]["vgg-w0.125-seed0"]["set"] == "vgg-w0.125-sr16000-mel96-hop1-log"
    assert part["students"]["no_loss"] == "sr16000-mel96-hop1-log"
    assert "sr16000-mel48-hop1-log" not in part["students"]["resolutions"]
    md = (tmp_path / "part" / "results.md").read_text()
    assert "not yet counted (folds still to run): `vgg-w0.125-sr16000-mel48-hop1-log` (2/3)" in md
    # no complete baseline: no students yet
    shutil.rmtree(runs / "vgg-w0.125-sr16000-mel96-hop1-log-fold0-seed0")
    cv_report.build(str(runs), str(tmp_path / "none"), "cv", cv_report.Options(n_resamples=200))
    assert json.loads((tmp_path / "none" / "report.json").read_text())["students"] is None
    assert "(the baseline has not finished every fold yet)" in (tmp_path / "none" / "results.md").read_text()


def test_cv_report_between_models_and_front(tmp_path):
    """The paper's MUSICNN-vs-VGG-CNN claim at each resolution both models ran (paired clip by
    clip), and the accuracy/compute front across models that says where MUSICNN earns a student."""
    from tftag.study import report as cv_report

    runs = tmp_path / "runs"
    _write_cv_runs(runs)  # MUSICNN 96×1: twice VGG-CNN 96×1's noise around the teacher, 28× its GMAC
    cv_report.build(str(runs), str(tmp_path / "out"), "cv", cv_report.Options(n_resamples=200))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (row,) = report["between_models"]  # 48×1 ran with VGG-CNN only
    assert (row["from"], row["to"]) == ("vgg-w0.125-sr16000-mel96-hop1-log",
                                        "musicnn-w0.125-sr16000-mel96-hop1-log")
    assert (row["from_shape"], row["to_shape"], row["n_clips"]) == ("96×1", "96×1", N_CLIPS)
    assert row["delta_points"] < 0 and row["ci95_points"][1] < 0 and row["p_bootstrap"] < 0.05
    assert row["gmac_ratio"] == pytest.approx(1.8 / 0.064)
    assert row["claim"].startswith("MUSICNN beats VGG-CNN on ROC-AUC")
    # the per-tag terms: every tag present, largest loss first, their mean is the macro Δ
    per_tag = row["per_tag"]
    assert sorted(t["tag"] for t in per_tag) == [f"tag{i}" for i in range(N_TAGS)]
    deltas = [t["roc_to"] - t["roc_from"] for t in per_tag]
    assert deltas == sorted(deltas) and sum(t["positives"] for t in per_tag) == 3 * N_CLIPS
    assert sum(deltas) / len(deltas) == pytest.approx(row["delta_points"], abs=1e-9)
    assert sum(t["roc_from"] for t in per_tag) / N_TAGS == pytest.approx(row["roc_from"], abs=1e-9)
    front = [r["set"] for r in report["front"]]
    assert front[0] == "vgg-w0.125-sr16000-mel96-hop10-log" and "vgg-w0.125-sr16000-mel48-hop1-log" in front
    assert not [s for s in front if s.startswith("musicnn")]  # dominated: worse and costlier
    assert [r["gmacs"] for r in report["front"]] == sorted(r["gmacs"] for r in report["front"])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| vgg (w0.125) → musicnn (w0.125) | 96×1 → 96×1 |" in md
    # both sets cover every clip: the pair's PR-AUCs are the pooled ones
    assert row["pr_from"] == pytest.approx(100 * report["pooled"][row["from"]]["pr_auc"])
    assert row["pr_to"] == pytest.approx(100 * report["pooled"][row["to"]]["pr_auc"])
    assert f"vgg (w0.125) → musicnn (w0.125) 96×1: {row['pr_from']:.2f} → {row['pr_to']:.2f} %" in md
    worst = per_tag[0]
    text = f"{worst['tag']} ({worst['positives']}) {deltas[0]:+.1f}"
    called = worst["q_bootstrap"] < 0.05  # the largest loss of a noisier student: called
    assert called and (f"- vgg (w0.125) → musicnn (w0.125) 96×1, per tag (positives) Δ points: "
                       f"largest losses **{text}**, ") in md
    assert all((t["q_bootstrap"] < 0.05) == (f"**{t['tag']} ({t['positives']})" in md)
               for t in per_tag[:5] if t["roc_to"] < t["roc_from"])
    # a MUSICNN closer to the teacher than VGG-CNN: it wins the claim and joins the front
    better = tmp_path / "better"
    _write_cv_runs(better, cv_sets=(("vgg", 96, 1, 0.1, 0.064), ("musicnn", 96, 1, 0.01, 1.8)))
    cv_report.build(str(better), str(tmp_path / "b"), "b", cv_report.Options(n_resamples=200))
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    (row,) = report["between_models"]
    assert row["delta_points"] > 0 and row["ci95_points"][0] > 0 and row["p_bootstrap"] < 0.05
    assert [r["set"] for r in report["front"]] == ["vgg-w0.125-sr16000-mel96-hop1-log",
                                                   "musicnn-w0.125-sr16000-mel96-hop1-log"]
    # one model only: nothing to compare between architectures
    one = tmp_path / "one"
    _write_cv_runs(one, cv_sets=(("vgg", 96, 1, 0.05, 0.064),))
    cv_report.build(str(one), str(tmp_path / "o"), "o", cv_report.Options(n_resamples=100))
    assert json.loads((tmp_path / "o" / "report.json").read_text())["between_models"] == []
    assert "(no resolution ran with both models in this study)" in (tmp_path / "o" / "results.md").read_text()


def _write_set(runs_dir, model, n_mels, ids, teacher, probs, gmacs, folds=FOLDS):
    """One set's per-fold files: clips dealt to the folds in turn."""
    import numpy as np

    res = f"sr16000-mel{n_mels}-hop1-log"
    fold_of = np.arange(len(ids)) % folds
    for fold in range(folds):
        d = runs_dir / f"{model}-w0.125-{res}-fold{fold}-seed0"
        d.mkdir(parents=True)
        sel = fold_of == fold
        np.savez(d / "test_predictions.npz", clip_id=ids[sel], probs=probs[sel],
                 teacher=teacher[sel], tags=np.array([f"tag{i}" for i in range(teacher.shape[1])]))
        (d / "result.json").write_text(json.dumps({
            "model": model, "width": 0.125, "resolution": res, "fold": fold, "folds": folds,
            "seed": 0, "test_roc_auc": 0.8 + 0.01 * fold + n_mels / 1000 + 0.003 * (fold == 1),
            "test_pr_auc": 0.5, "top5_overlap": 0.6,
            "prob_correlation": 0.7, "best_epoch": 5, "epochs_done": 8, "stop_reason": "plateau",
            "train_seconds": 10.0, "gmacs": gmacs, "storage_bytes": 1000, "n_test_clips": int(sel.sum()),
            "curve": [{"epoch": 0, "train_loss": 0.5, "valid_loss": 0.4, "valid_roc_auc": 0.8}]}))


def test_cv_report_frequent_tags_view(tmp_path):
    """The sensitivity view: the comparisons again over the tags with >= N positives. A student
    that matches the baseline on the frequent tags and guesses on the rare ones is significantly
    worse in the primary macro average (every tag counts alike) and not in this view; its Δ is
    the hand-computed macro ROC-AUC difference over the frequent tags only."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from tftag.study import report as cv_report
    from tftag.extraction import teacher as teacher_mod
    from tftag.study import analysis, stats

    rng = np.random.default_rng(1)
    n_clips, frequent, rare = 600, 4, 6
    # teacher: 4 frequent tags carry the mass; each rare tag tops 4-10 clips
    soft = rng.uniform(0.0, 0.05, size=(n_clips, frequent + rare))
    soft[:, :frequent] += rng.uniform(0.3, 1.0, size=(n_clips, frequent))
    for t in range(frequent, frequent + rare):
        soft[rng.choice(n_clips, size=4 + t - frequent, replace=False), t] = 2.0
    soft /= soft.sum(axis=1, keepdims=True)
    ids = np.array([f"pkg{c % 7}/track{c}.ogg#000" for c in range(n_clips)])
    good = np.clip(soft + 0.02 * rng.normal(size=soft.shape), 0, 1)
    worse = good.copy()
    worse[:, frequent:] = rng.uniform(size=(n_clips, rare))  # noise on the rare tags only
    runs = tmp_path / "runs"
    _write_set(runs, "vgg", 96, ids, soft, good, 0.064)
    _write_set(runs, "vgg", 48, ids, soft, worse, 0.032)
    labels = np.stack([teacher_mod.hard_labels(row, 3) for row in soft])
    counts = labels.sum(axis=0)
    n = 50
    assert (counts[:frequent] >= n).all() and (counts[frequent:] < n).all() and (counts > 0).all()

    cv_report.build(str(runs), str(tmp_path / "out"), "f",
                    cv_report.Options(n_resamples=300, frequent_min_positives=n))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (primary,) = report["claims"]  # 96×1 → 48×1
    assert primary["delta_points"] < -5 and primary["p_bootstrap"] < 0.01
    assert primary["n_tags"] == frequent + rare
    view = report["frequent_tags"]
    assert view["min_positives"] == n
    (c,) = view["claims"]
    assert c["n_tags"] == frequent and c["p_bootstrap"] > 0.05
    order = np.argsort(ids)
    by_hand = 100 * np.mean([roc_auc_score(labels[order, t], worse[order, t])
                             - roc_auc_score(labels[order, t], good[order, t])
                             for t in range(frequent)])
    assert c["delta_points"] == pytest.approx(by_hand, abs=1e-6)
    assert c["p_paired_t"] is None and c["p_independent_t"] is None  # runs' ROC-AUCs: every tag
    assert view["lowest_without_loss"]["vgg-w0.125-seed0"]["set"] == "vgg-w0.125-sr16000-mel48-hop1-log"
    assert report["lowest_without_loss"]["vgg-w0.125-seed0"]["set"] == "vgg-w0.125-sr16000-mel96-hop1-log"
    assert view["pooled"]["vgg-w0.125-sr16000-mel96-hop1-log"]["n_tags"] == frequent
    assert view["mde_points"] == pytest.approx(c["mde_points"])  # no second seed: the claims'
    md = (tmp_path / "out" / "results.md").read_text()
    assert f"## Frequent tags only (≥ {n} positives): a sensitivity check" in md
    assert f"| vgg (w0.125) | 96×1 → 48×1 | {c['roc_from']:.2f} → {c['roc_to']:.2f} |" in md
    assert f"| {frequent} |" in md
    # a threshold no tag reaches: no view, said so
    cv_report.build(str(runs), str(tmp_path / "none"), "f",
                    cv_report.Options(n_resamples=100, frequent_min_positives=n_clips))
    assert json.loads((tmp_path / "none" / "report.json").read_text())["frequent_tags"] is None
    assert f"(off, or some set has no tag with {n_clips} positives" in \
        (tmp_path / "none" / "results.md").read_text()
    with pytest.raises(ValueError, match="and 600 or more positives among 600 clips"):
        stats.evaluable_tags(labels, min_positives=n_clips)
    # the pooled view of one set averages the frequent tags only
    (base,) = [s for s in analysis.load_sets(analysis.load_runs(str(runs))) if s.resolution.startswith("sr16000-mel96")]
    row = analysis.summarize_set(base, n_resamples=100, min_positives=n)
    assert row["n_tags"] == frequent and row["roc_auc"] == pytest.approx(
        np.mean([roc_auc_score(labels[order, t], good[order, t]) for t in range(frequent)]))


def test_cv_report_per_tag_view(tmp_path, monkeypatch):
    """Which tags each resolution loses: every tag's ROC-AUC change against the baseline with its
    track-group bootstrap test and Benjamini-Hochberg q (DeLong's clip-level test beside), as a
    table in results.md and a heat map."""
    import numpy as np

    from tftag.study import report as cv_report
    from tftag.study import analysis, stats

    runs = tmp_path / "runs"
    _write_cv_runs(runs)
    opts = cv_report.Options(n_resamples=100, frequent_min_positives=1)  # every tag, no view
    cv_report.build(str(runs), str(tmp_path / "out"), "cv", opts)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    view = report["per_tag_vs_baseline"]
    assert view["min_positives"] == 1
    vgg, musicnn = view["groups"]  # VGG-CNN's grid first
    assert (musicnn["model"], musicnn["baseline"]) == ("musicnn", "128×1")
    assert [c["to_shape"] for c in musicnn["columns"]] == ["96×1"]
    assert vgg["baseline"] == "96×1"
    assert [c["to_shape"] for c in vgg["columns"]] == ["48×1", "96×10"]  # costliest first
    positives = [t["positives"] for t in vgg["tags"]]
    assert len(positives) == N_TAGS and positives == sorted(positives, reverse=True)
    assert sum(positives) == 3 * N_CLIPS  # the teacher's top-3 of every clip
    comparisons = {c["to_shape"]: c for c in report["vs_baseline"] if c["model"] == "vgg"}
    sets = {s.key: s for s in analysis.load_sets(analysis.load_runs(str(runs)))}
    base = sets["vgg-w0.125-sr16000-mel96-hop1-log"]
    labels = base.labels(3)
    for col in vgg["columns"]:
        c = comparisons[col["to_shape"]]
        deltas = [cell["delta_points"] for cell in col["cells"]]
        # the per-tag terms average to the macro difference
        assert np.mean(deltas) == pytest.approx(c["delta_points"], abs=1e-9)
        assert col["delta_points"] == c["delta_points"]
        # each tag's p is DeLong's test of that tag's columns; q is BH over the pair's tags
        other = sets[col["set"]]
        for t, cell in zip(vgg["tags"], col["cells"]):
            j = list(base.tags).index(t["tag"])
            assert int(labels[:, j].sum()) == t["positives"]
            d = stats.delong(labels[:, j], base.probs[:, j], other.probs[:, j])
            assert cell["p_delong"] == pytest.approx(d.p_value)
            assert cell["delta_points"] == pytest.approx(100 * d.difference)
        ps = [cell["p_delong"] for cell in col["cells"]]
        assert [cell["q_delong"] for cell in col["cells"]] == pytest.approx(
            stats.false_discovery_rate(ps))
    hop10 = vgg["columns"][1]["cells"]
    # the student 10x further from the teacher loses every tag, each change called
    assert all(cell["delta_points"] < -5 and cell["q_delong"] < 0.05 for cell in hop10)
    assert all(cell["q_bootstrap"] < 0.05 for cell in hop10)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## Per tag: what each resolution loses against its baseline" in md
    assert "| tag (positives) | 48×1 | 96×10 |" in md
    first, c48 = vgg["tags"][0], vgg["columns"][0]["cells"][0]
    text48 = f"{c48['delta_points']:+.1f}"
    assert (f"| {first['tag']} ({first['positives']}) | "
            + (f"**{text48}**" if c48["q_bootstrap"] < 0.05 else text48)
            + f" | **{hop10[0]['delta_points']:+.1f}** |") in md
    assert ("| *macro Δ (the column's mean)* | " + " | ".join(
        f"*{col['delta_points']:+.2f}*" for col in vgg["columns"]) + " |") in md
    png = tmp_path / "out" / "per_tag_vs_baseline.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and os.path.getsize(png) < 300_000
    # a tag with too few positives for its own test: no p, no q, never bold; q over the others
    few = sorted(t["positives"] for t in vgg["tags"])[N_TAGS // 2]
    monkeypatch.setattr(analysis, "PER_TAG_TEST_MIN_CLIPS", few)
    cv_report.build(str(runs), str(tmp_path / "few"), "cv", opts)
    g = json.loads((tmp_path / "few" / "report.json").read_text())["per_tag_vs_baseline"]["groups"][0]
    cells = g["columns"][1]["cells"]  # 96×10: every tested tag called
    tested = [t["positives"] >= few for t in g["tags"]]
    assert 0 < sum(tested) < N_TAGS
    assert [c["p_delong"] is not None for c in cells] == tested
    assert [c["p_bootstrap"] is not None for c in cells] == tested
    assert [c["q_delong"] for c in cells if c["q_delong"] is not None] == pytest.approx(
        stats.false_discovery_rate([c["p_delong"] for c in cells if c["p_delong"] is not None]))
    last = g["tags"][-1]  # the rarest: untested, so plain
    assert f"| {last['tag']} ({last['positives']}) |" in (tmp_path / "few" / "results.md").read_text()
    assert not tested[-1] and f"| {cells[-1]['delta_points']:+.1f} |" in (
        tmp_path / "few" / "results.md").read_text().split(f"| {last['tag']} ({last['positives']}) |")[1]
    monkeypatch.undo()
    # the frequent-tag view on: the per-tag table shows its tags only, q over those tags
    cv_report.build(str(runs), str(tmp_path / "freq"), "cv",
                    cv_report.Options(n_resamples=100, frequent_min_positives=56))
    freq = json.loads((tmp_path / "freq" / "report.json").read_text())["per_tag_vs_baseline"]
    kept = [t for t in vgg["tags"] if t["positives"] >= 56]
    assert freq["min_positives"] == 56 and 0 < len(kept) < N_TAGS
    assert next(g for g in freq["groups"] if g["model"] == "vgg")["tags"] == kept
    assert "the tags with ≥ 56 positives" in (tmp_path / "freq" / "results.md").read_text()
    # a set without its last fold is not a column yet; the baseline alone: no table, still a plot
    import shutil

    shutil.rmtree(runs / "vgg-w0.125-sr16000-mel96-hop10-log-fold2-seed0")
    cv_report.build(str(runs), str(tmp_path / "part"), "cv", opts)
    part = json.loads((tmp_path / "part" / "report.json").read_text())["per_tag_vs_baseline"]
    assert [[c["to_shape"] for c in g["columns"]] for g in part["groups"]] == [["48×1"], ["96×1"]]
    alone = tmp_path / "alone"
    _write_cv_runs(alone, cv_sets=CV_SETS[:1])
    cv_report.build(str(alone), str(tmp_path / "a"), "a", opts)
    assert json.loads((tmp_path / "a" / "report.json").read_text())["per_tag_vs_baseline"]["groups"] == []
    assert "(no resolution has finished every fold beside its baseline)" in (
        tmp_path / "a" / "results.md").read_text()
    assert (tmp_path / "a" / "per_tag_vs_baseline.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_per_tag_shares_one_colour_scale(tmp_path, monkeypatch):
    """The per-tag heat map gives every model's panel the same colour scale (the largest change
    of any panel), so MUSICNN's small changes do not look as red as VGG-CNN's large ones."""
    from tftag.study import report as cv_report
    from tftag.runs import runfiles

    def group(model, baseline, deltas):
        return {"model": model, "width": 0.125, "seed": 0, "baseline": baseline,
                "tags": [{"tag": t, "positives": 100 - i} for i, t in enumerate(("a", "b"))],
                "columns": [{"to_shape": shape, "gmac_ratio": 0.5, "cells": [
                    None if d is None else {"delta_points": d, "q_bootstrap": 0.01 if abs(d) > 1
                                            else None} for d in column]}
                            for shape, column in deltas.items()]}

    view = [group("vgg", "96×1", {"48×1": [-12.5, +0.3], "8×10": [None, -3.0]}),
            group("musicnn", "128×1", {"96×1": [-1.9, +0.4]})]
    saved = {}
    monkeypatch.setattr(runfiles, "save_figure_atomic",
                        lambda fig, path, **kw: saved.update(fig=fig, path=path))
    cv_report.plot_per_tag(view, 0.05, str(tmp_path / "p.png"))
    panels = [ax for ax in saved["fig"].axes if ax.images]
    assert [ax.images[0].get_clim() for ax in panels] == [(-12.5, 12.5)] * 2
    # the labels are the changes, bold where called
    labels = {t.get_text(): t.get_fontweight() for t in panels[1].texts}
    assert labels == {"-1.9": "bold", "+0.4": "normal"}
    # all changes small: the scale never shrinks below ±1 point
    cv_report.plot_per_tag([group("vgg", "96×1", {"48×1": [-0.2, +0.1]})], 0.05,
                           str(tmp_path / "q.png"))
    assert [ax.images[0].get_clim() for ax in saved["fig"].axes if ax.images] == [(-1.0, 1.0)]


def test_plot_learning_curves_marks_the_reductions_status_finds(tmp_path, monkeypatch):
    """▼ marks a pass at a lower learning rate than the last pass that kept one; a pass without
    a kept rate (older histories) is neither a reduction nor the rate a later pass is judged by."""
    from tftag.study import report as cv_report
    from tftag.runs import runfiles

    rates = [1e-3, 1e-3, None, 2e-4, 2e-4, None, 4e-5]
    curve = [{"epoch": e, "valid_loss": 0.2 - 0.01 * e, **({} if r is None else {"learning_rate": r})}
             for e, r in enumerate(rates)]
    saved = {}
    monkeypatch.setattr(runfiles, "save_figure_atomic",
                        lambda fig, path, **kw: saved.update(fig=fig))
    cv_report.plot_learning_curves([{"model": "vgg", "width": 0.125, "resolution":
                                     "sr16000-mel96-hop1-log", "seed": 0, "stop_reason": "plateau",
                                     "curve": curve}], str(tmp_path / "c.png"))
    (ax,) = saved["fig"].axes
    markers = [line for line in ax.lines if line.get_marker() == "v"]
    assert [list(m.get_xdata()) for m in markers] == [[3, 6]]
