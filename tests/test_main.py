"""The entry point: flags, run directory, TensorBoard logs, errors naming the flag."""

from __future__ import annotations

import glob
import json
import os

from conftest import run_module


def test_extract_mode_on_the_built_in_corpus(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_module("tftag.main", "--mode=extract", f"--run_dir={run_dir}", "--num_clips=4",
                      "--clip_seconds=3", "--sr=16000", "--n_mels=16", "--hop_factors=1,2",
                      "--compressions=log", "--duration=3", "--clips_per_shard=2")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["clips_written"] == 4 and summary["splits"] == {"train": 4}
    assert summary["dataset_dir"] == str(run_dir / "dataset")
    configs = json.loads((run_dir / "configs.json").read_text())["mel_configs"]
    assert [c["name"] for c in configs] == ["sr16000-mel16-hop1-log", "sr16000-mel16-hop2-log"]
    assert "--num_clips=4" in (run_dir / "flags.txt").read_text()
    assert glob.glob(str(run_dir / "tb" / "data" / "events.out.tfevents.*"))
    assert "extracted 4/4 clips" in proc.stdout
    shards = sorted(glob.glob(str(run_dir / "dataset" / "*" / "*.tfrecord")))
    assert len(shards) == 2  # 4 clips, 2 per shard, one base mel
    written = [(os.path.getmtime(p), open(p, "rb").read()) for p in shards]
    again = run_module("tftag.main", f"--flagfile={run_dir / 'flags.txt'}")
    assert "extracted 4/4 clips" in again.stdout
    # complete already: nothing redone
    assert [(os.path.getmtime(p), open(p, "rb").read()) for p in shards] == written


def test_flag_errors(tmp_path):
    proc = run_module("tftag.main", f"--run_dir={tmp_path}", "--n_mels=3", check=False)
    assert proc.returncode != 0 and "--n_mels: n_mels must be one of" in proc.stderr
    proc = run_module("tftag.main", f"--run_dir={tmp_path}", "--mode=train2", check=False)
    assert proc.returncode != 0 and "--mode" in proc.stderr and "extract" in proc.stderr
    proc = run_module("tftag.main", "--mode=extract", f"--run_dir={tmp_path}", "--catalog=csv",
                      check=False)
    assert proc.returncode != 0 and "--input is required with --catalog=csv" in proc.stderr


def test_profile_mode(tmp_path):
    run_dir = tmp_path / "prof"
    proc = run_module("tftag.main", "--mode=profile", f"--run_dir={run_dir}", "--model=vgg",
                      "--width=0.125", "--sr=12000", "--n_mels=96,8", "--hop_factors=1,10",
                      "--compressions=db,log", "--latency_runs=1", "--latency_batches=1,4",
                      "--profile_trace", "--trace_steps=1")
    report = json.loads((run_dir / "profile.json").read_text())
    rows = {r["config"]: r for r in report["rows"]}
    assert sorted(rows) == ["sr12000-mel8-hop1", "sr12000-mel8-hop10", "sr12000-mel96-hop1",
                            "sr12000-mel96-hop10"]  # one row per resolution, not per compression
    for r in rows.values():
        assert abs(r["gmacs_profiler"] - r["gmacs_analytic"]) <= 0.01 * r["gmacs_analytic"] + 1e-4
        assert r["latency_ms_b1"] > 0 and r["latency_ms_b4"] > 0 and r["params"] > 0
    assert rows["sr12000-mel96-hop1"]["n_frames"] == 1366
    # hop ×10 costs about a tenth (the paper's VGG-CNN: 10.01 vs 0.98 GMAC at width 1)
    ratio = rows["sr12000-mel96-hop10"]["gmacs_analytic"] / rows["sr12000-mel96-hop1"]["gmacs_analytic"]
    assert 0.08 < ratio < 0.12
    csv_lines = (run_dir / "profile.csv").read_text().splitlines()
    assert csv_lines[0].startswith("config,n_frames,n_mels,gmacs_profiler,gmacs_analytic,params")
    assert len(csv_lines) == 5
    assert "sr12000-mel96-hop1" in proc.stdout and "gmacs_profiler" in proc.stdout
    assert glob.glob(str(run_dir / "tb" / "trace" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    assert json.loads((run_dir / "summary.json").read_text())["profile_csv"].endswith("profile.csv")


def test_profile_flag_errors(tmp_path):
    proc = run_module("tftag.main", "--mode=profile", f"--run_dir={tmp_path}", "--model=resnet",
                      check=False)
    assert proc.returncode != 0 and "--model='resnet'; known: musicnn, musicnn_vgg, vgg" in proc.stderr
    proc = run_module("tftag.main", "--mode=profile", f"--run_dir={tmp_path}", "--width=0",
                      check=False)
    assert proc.returncode != 0 and "width must be > 0" in proc.stderr
