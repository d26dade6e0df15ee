"""Every flag a mode reads is in its run's record (tftag.main, tftag.cli).

A mode reads its flags only while tftag.cli notes them (main.configure: the Experiment and the
mode's options dataclass); the run's configs.json lists them under "flags" with their values,
its options under "options". Checked three ways: statically (no module but the entry point
reads a flag, no runner reads one), in process for every mode (the options' fields and the
Experiment's flags are all noted, with the values given), and by running the cheap modes.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re

import pytest
from absl.testing import flagsaver

from conftest import FIXTURES, ROOT, run_module

from tftag import cli, main

# A command line that configures each mode (no file is read: configure builds, checks, notes).
ARGV = {
    "train": ["--run_dir=R", "--resolutions=sr16000-mel16-hop2-log", "--batch_size=7"],
    "evaluate": ["--run_dir=R", "--resolutions=sr16000-mel16-hop2-log", "--split=valid",
                 "--weights=w.h5"],
    "sweep": ["--run_dir=R", "--resolutions=sr16000-mel16-hop2-log", "--repeats=2"],
    "tune": ["--run_dir=R", "--resolutions=sr16000-mel16-hop2-log", "--max_trials=3"],
    "how_low": ["--run_dir=R", "--widths=0.25,0.5", "--max_drop=2.5"],
    "status": ["--run_dir=R", "--folds=3"],
    "extract": ["--run_dir=R", "--num_clips=6"],
    "transcode": ["--run_dir=R", "--dataset_dir=D", "--mel_dtype=uint8"],
    "profile": ["--resolutions=sr16000-mel16-hop2-log", "--latency_batches=1,4",
                "--latency_runs=2"],
    "export": ["--run_dir=R", "--resolutions=sr16000-mel16-hop2-log", "--weights=w.h5"],
    "tag": ["--pretrained=tftag_vgg_8x10", "--audio=a.wav", "--top_k=3", "--output=t.csv"],
    "similar": ["--query=q.wav", "--index=t.embeddings", "--top_k=3", "--exact_max_rows=10"],
    "describe": ["--pretrained=tftag_vgg_8x10", "--json"],
    "ship": ["--run_dir=R", "--ship_name=tftag_vgg_x", "--overwrite"],
    "verify": ["--dataset_dir=D"],
    "report": ["--runs_dir=S", "--name=n", "--compare=a=B", "--n_resamples=200"],
}
# Flags every Experiment is built from (a sample of each of its configs).
EXPERIMENT_FLAGS = {"resolutions", "duration", "model", "width", "batch_size", "epochs", "seed",
                    "catalog", "dataset_dir", "labels", "mel_dtype", "export", "tflite",
                    "models", "repeats", "results_dir", "folds", "run_dir"}


def test_every_mode_has_a_command_line_here():
    assert set(ARGV) == set(main.MODES)


@pytest.mark.parametrize("mode", sorted(ARGV))
def test_configure_notes_every_flag_the_mode_reads(mode):
    with flagsaver.flagsaver():
        main.FLAGS(["tftag", f"--mode={mode}", *ARGV[mode]])
        exp, opts, noted = main.configure(mode)
        values = {name: main.FLAGS[name].value for name in main.FLAGS}
    # the command line's flags are noted with their values
    for arg in ARGV[mode]:
        name = arg[2:].split("=")[0]
        name = name[2:] if name.startswith("no") and name[2:] in values else name
        assert name in noted, (mode, name)
        assert noted[name] == values[name], (mode, name)
    assert noted["mode"] == mode
    # every field of the mode's options comes from the flag of its name, noted
    if dataclasses.is_dataclass(opts):
        for field in dataclasses.fields(opts):
            assert field.name in noted, (mode, field.name)
    if main.MODES[mode].experiment:
        assert exp is not None
        assert EXPERIMENT_FLAGS <= set(noted), (mode, EXPERIMENT_FLAGS - set(noted))
    else:
        assert exp is None and not (EXPERIMENT_FLAGS - {"run_dir", "dataset_dir"}) & set(noted)
    json.dumps(noted)  # the record is JSON


def _flag_reads(path: str) -> list[tuple[str, str]]:
    """(enclosing function, flag) of every ``FLAGS.<name>`` in a module."""
    tree = ast.parse(open(path).read())
    out = []
    for fn in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
        for node in ast.walk(fn):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "FLAGS"):
                out.append((fn.name, node.attr))
    return out


def test_no_runner_and_no_library_module_reads_a_flag():
    # the library: only the entry point's modules name FLAGS
    readers = []
    for folder, _, files in os.walk(os.path.join(ROOT, "tftag")):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".py") and re.search(r"\bFLAGS\b", open(path).read()):
                readers.append(os.path.relpath(path, ROOT))
    assert sorted(readers) == ["tftag/cli.py", "tftag/main.py"], readers
    # main.py reads --version and --mode itself; everything else through configure (noted)
    reads = _flag_reads(os.path.join(ROOT, "tftag", "main.py"))
    assert {attr for _, attr in reads} <= {"version", "mode"}, reads
    assert not [r for r in reads if r[0].startswith("_")], reads  # no runner reads a flag


def _record(run_dir) -> dict:
    return json.loads((run_dir / "configs.json").read_text())


def test_a_tag_run_records_its_flags(tmp_path):
    out = tmp_path / "tags.csv"
    run_module("tftag.main", "--mode=tag", "--pretrained=tftag_vgg_8x10", f"--run_dir={tmp_path}",
               f"--audio={os.path.join(FIXTURES, 'musicnn', 'synthetic_12s.wav')}",
               f"--output={out}", "--top_k=2", "--window_hop=1.5")
    record = _record(tmp_path)
    assert record["mode"] == "tag" and "mel_configs" not in record  # no Experiment
    assert record["options"] == {**{f.name: record["flags"][f.name]
                                    for f in dataclasses.fields(cli.TagOptions)}}
    assert record["flags"]["top_k"] == 2 and record["flags"]["window_hop"] == 1.5
    assert record["flags"]["output"] == str(out) and out.exists()
    assert (tmp_path / "flags.txt").exists() and (tmp_path / "summary.json").exists()


def test_a_profile_run_records_its_flags_beside_the_experiment(tmp_path):
    run_module("tftag.main", "--mode=profile", f"--run_dir={tmp_path}", "--width=0.05",
               "--resolutions=sr16000-mel16-hop10-log", "--latency_runs=1",
               "--latency_batches=1,2")
    record = _record(tmp_path)
    assert record["mode"] == "profile"
    assert record["options"] == {"latency_runs": 1, "latency_batches": [1, 2],
                                 "profile_trace": False, "trace_steps": 3}
    assert record["flags"]["latency_batches"] == ["1", "2"]  # the flag as given
    assert record["flags"]["width"] == 0.05 and record["model"]["width"] == 0.05
    assert EXPERIMENT_FLAGS <= set(record["flags"])


def test_helpshort_lists_the_flags_of_the_mode():
    tag = run_module("tftag.main", "--mode=tag", "--helpshort").stdout
    assert tag.startswith("--mode=tag reads these flags")
    assert "--block_seconds:" in tag and "--batch_size:" not in tag
    train = run_module("tftag.main", "--mode=train", "--helpshort").stdout
    assert "--batch_size:" in train and "--block_seconds:" not in train
    listed = {line.split(":")[0].strip()[2:] for line in tag.splitlines()
              if line.startswith("  --")}
    assert {f.name for f in dataclasses.fields(cli.TagOptions)} <= listed


def test_how_low_without_a_flagfile_searches_a_laptop_budget(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["tftag", "--mode=how_low", "--run_dir=R"])
    with flagsaver.flagsaver():
        main.FLAGS(["tftag", "--mode=how_low", "--run_dir=R"])
        exp, search, noted = main.configure("how_low")
    assert search.widths == (0.0625, 0.125) and exp.train.epochs == 9 and exp.repeats == 2
    assert {c.hop_factor for c in exp.mel_configs} == {1, 2, 4, 10}
    assert {c.compression for c in exp.mel_configs} == {"log"}
    assert noted["widths"] == ["0.0625", "0.125"] and noted["epochs"] == 9
    # the paper's full width is one flag away; a flag given keeps its value
    with flagsaver.flagsaver():
        main.FLAGS(["tftag", "--mode=how_low", "--run_dir=R", "--widths=1", "--epochs=20"])
        exp, search, _ = main.configure("how_low")
    assert search.widths == (1.0,) and exp.train.epochs == 20 and exp.repeats == 2
    # a flagfile names its own budget: no mode defaults
    flagfile = tmp_path / "f.flags"
    flagfile.write_text("--mode=how_low\n--run_dir=R\n")
    monkeypatch.setattr("sys.argv", ["tftag", f"--flagfile={flagfile}"])
    with flagsaver.flagsaver():
        main.FLAGS(["tftag", f"--flagfile={flagfile}"])
        exp, search, _ = main.configure("how_low")
    assert search.widths == () and exp.train.epochs == 20 and exp.repeats == 3
