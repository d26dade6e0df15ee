"""benchmarks/study_report.py: the paper's claims tested on a study's runs (hand-computed
t-tests), the lowest cost without a significant loss, and the written report."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import study_report
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
    claims = study_report.test_claims(RESULTS)
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
    from tftag import sweep

    rows = sweep.summarize(RESULTS)
    lowest = study_report.lowest_without_loss(rows, 0.05)
    assert lowest["vgg"]["resolution"] == "sr16000-mel48-hop1-log"  # 96×10 is a significant loss
    # 96×10 is not significant at α = 0.001, but 10.5 points below: still a loss...
    assert study_report.lowest_without_loss(rows, 0.001)["vgg"]["resolution"] == "sr16000-mel48-hop1-log"
    # ... unless the tolerated drop covers it.
    assert study_report.lowest_without_loss(rows, 0.001, max_drop=11.0)["vgg"]["resolution"] == \
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
    proc = run_module("benchmarks.study_report", f"--run_dir={run_dir}", "--name=demo",
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
    bad = run_module("benchmarks.study_report", f"--run_dir={tmp_path}", "--name=x",
                     f"--out_root={out}", check=False)
    assert bad.returncode != 0 and "no runs/*/result.json" in bad.stderr
