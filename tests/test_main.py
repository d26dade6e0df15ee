"""The entry point: flags, run directory, TensorBoard logs, errors naming the flag."""

from __future__ import annotations

import glob
import json

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
    again = run_module("tftag.main", f"--flagfile={run_dir / 'flags.txt'}")
    assert "extracted 4/4 clips" in again.stdout  # complete already: nothing redone


def test_flag_errors(tmp_path):
    proc = run_module("tftag.main", f"--run_dir={tmp_path}", "--n_mels=3", check=False)
    assert proc.returncode != 0 and "--n_mels: n_mels must be one of" in proc.stderr
    proc = run_module("tftag.main", f"--run_dir={tmp_path}", "--mode=train2", check=False)
    assert proc.returncode != 0 and "--mode" in proc.stderr and "extract" in proc.stderr
    proc = run_module("tftag.main", f"--run_dir={tmp_path}", "--catalog=csv", check=False)
    assert proc.returncode != 0 and "--input is required with --catalog=csv" in proc.stderr
