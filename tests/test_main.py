"""The entry point: flags, run directory, TensorBoard logs, errors naming the flag."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

from conftest import ROOT, run_module
from tftag.runs import runrecord
from tftag.experiment import Experiment


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


def test_modes_are_one_table():
    """Every --mode value has a Mode record with a runner, and every record is a --mode value."""
    code = ("import dataclasses, json, tftag.main as m; "
            "print(json.dumps({'enum': m.FLAGS['mode'].parser.enum_values, "
            "'records': {n: [type(r).__name__, callable(r.run), r.__dataclass_params__.frozen] "
            "for n, r in m.MODES.items()}, 'help': m.FLAGS['mode'].help}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                                    text=True, check=True).stdout.splitlines()[-1])
    assert sorted(out["enum"]) == sorted(out["records"]), (out["enum"], sorted(out["records"]))
    assert all(r == ["Mode", True, True] for r in out["records"].values()), out["records"]
    # --mode's help says what each mode does: every mode of MODES, each with its own words.
    listed = re.findall(r"(?:: |; )([a-z_]+) = ", out["help"])
    assert listed == list(out["records"]), (listed, list(out["records"]))


def test_importing_the_modes_loads_no_beam(tiny_dataset):
    """Checking an existing --dataset_dir (every mode does) imports no Apache Beam."""
    code = ("import sys, tftag.train, tftag.evaluate, tftag.delivery.export, tftag.study.sweep, tftag.search.tune, "
            "tftag.tagging.tag, tftag.search.how_low, tftag.search.tuner; "
            "assert 'apache_beam' not in sys.modules, 'import'; "
            "from tftag import experiment; from tftag.extraction import extract; from tftag.features import MelConfig; "
            "from tftag.models import ModelConfig; "
            "exp = experiment.Experiment((MelConfig(16000, 16, 2, 'log', 3.0),), "
            f"ModelConfig('vgg'), data=experiment.DataConfig(dataset_dir={tiny_dataset!r})); "
            "print(extract.ensure_dataset(exp)); "
            "assert 'apache_beam' not in sys.modules, 'ensure_dataset'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == tiny_dataset


def test_run_record_owner(tmp_path):
    assert runrecord.owner(str(tmp_path)) is None
    assert runrecord.record_dir(str(tmp_path), "export") == str(tmp_path)  # nobody made it yet
    (tmp_path / "flags.txt").write_text("--catalog=synthetic\n--mode=sweep\n--seed=0\n")
    assert runrecord.owner(str(tmp_path)) == "sweep"
    assert runrecord.record_dir(str(tmp_path), "sweep") == str(tmp_path)  # a resumed sweep
    assert runrecord.record_dir(str(tmp_path), "export") == str(tmp_path / "export")


def test_other_modes_keep_the_training_runs_record(tiny_dataset, tmp_path):
    """export and evaluate on a training run dir add their records in <run_dir>/<mode>/ and leave
    the run's flags.txt, configs.json and summary.json byte for byte as they were."""
    run_dir = tmp_path / "run"
    args = [f"--dataset_dir={tiny_dataset}", f"--run_dir={run_dir}",
            "--resolutions=sr16000-mel16-hop2-log", "--duration=3", "--model=vgg",
            "--width=0.05", "--batch_size=8", f"--export_dir={tmp_path / 'export'}"]
    run_module("tftag.main", "--mode=train", *args, "--epochs=1", "--export=false")
    record = {name: (run_dir / name).read_bytes() for name in runrecord.RECORD_FILES}
    assert json.loads(record["summary.json"])["mode"] == "train"
    weights = f"--weights={run_dir / 'best.weights.h5'}"
    run_module("tftag.main", "--mode=export", *args, weights)
    run_module("tftag.main", "--mode=evaluate", *args, weights, "--split=valid")
    assert {name: (run_dir / name).read_bytes() for name in runrecord.RECORD_FILES} == record
    exported = json.loads((run_dir / "export" / "summary.json").read_text())
    assert exported["mode"] == "export"
    assert exported["export_path"] == str(tmp_path / "export" / "vgg-sr16000-mel16-hop2-log" / "1")
    evaluated = json.loads((run_dir / "evaluate" / "summary.json").read_text())
    assert evaluated["mode"] == "evaluate" and evaluated["split"] == "valid"
    assert evaluated["results"] == str(run_dir / "evaluation_valid.json")  # results stay in place
    for mode in ("export", "evaluate"):
        assert f"--mode={mode}\n" in (run_dir / mode / "flags.txt").read_text()
        assert Experiment.load(str(run_dir)).model.width == 0.05
        configs = json.loads((run_dir / mode / "configs.json").read_text())
        assert configs["data"]["dataset_dir"] == tiny_dataset
        assert glob.glob(str(run_dir / mode / "tb" / "config" / "events.out.tfevents.*"))
