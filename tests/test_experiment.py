"""The Experiment object, the thin entry point, registries, layering and short usage errors."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, run_module
from tftag import datasets, experiment, models
from tftag.storage import codecs
from tftag.experiment import DataConfig, Experiment, ExportConfig, TrainConfig
from tftag.features import MelConfig
from tftag.models import ModelConfig
from tftag.registry import Registry

# TensorFlow / absl start-up logging that precedes any output of ours.
_TF_LOG = re.compile(r"^(WARNING: All log messages|[IWE]\d{4} |To enable the following|"
                     r"\[\s*(INFO|WARNING)\s*\])")


def _experiment(run_dir: str) -> Experiment:
    return Experiment(
        mel_configs=(MelConfig(16000, 48, 2, "log", 10.0), MelConfig(16000, 16, 4, "db", 10.0)),
        model=ModelConfig("musicnn", width=0.25, dropout=0.1, preset="paper", patch_seconds=3.0),
        train=TrainConfig(batch_size=4, epochs=3, learning_rate=5e-4, patience=2, seed=7,
                          steps_per_epoch=11, deterministic=False, strategy="default"),
        data=DataConfig("csv", "/data/catalog.csv", None, 10, 12.5, 22050, "float16", 9, 2),
        export=ExportConfig(False, "/tmp/exports", 4),
        run_dir=run_dir, sweep_models=("vgg", "musicnn"), repeats=2)


def test_experiment_round_trips_through_configs_json(tmp_path):
    exp = _experiment(str(tmp_path))
    path = exp.save()
    assert path == str(tmp_path / "configs.json")
    loaded = Experiment.load(str(tmp_path))
    assert loaded == exp
    raw = json.loads((tmp_path / "configs.json").read_text())
    assert [c["name"] for c in raw["mel_configs"]] == ["sr16000-mel48-hop2-log",
                                                        "sr16000-mel16-hop4-db"]
    assert raw["model"]["patch_seconds"] == 3.0 and raw["data"]["mel_dtype"] == "float16"
    # A moved run directory loads with its new path.
    moved = tmp_path / "moved"
    os.rename(tmp_path / "configs.json", tmp_path / "c.json")
    moved.mkdir()
    os.rename(tmp_path / "c.json", moved / "configs.json")
    assert Experiment.load(str(moved)) == dataclasses.replace(exp, run_dir=str(moved))


def test_experiment_derived_values_and_errors(tmp_path):
    exp = _experiment(str(tmp_path))
    assert [m.name for m in exp.model_configs] == ["vgg", "musicnn"]
    assert all(m.patch_seconds == 3.0 and m.width == 0.25 for m in exp.model_configs)
    assert exp.dataset_dir == str(tmp_path / "dataset")
    with pytest.raises(ValueError, match="this mode takes one resolution.*got 2"):
        exp.mel_config
    one = dataclasses.replace(exp, mel_configs=exp.mel_configs[:1])
    assert one.patch_frames == 93  # 3 s at 16 kHz, hop 512: floor(3 · 16000 / 512)
    with pytest.raises(ValueError, match="unknown model 'resnet'; known: musicnn, musicnn_vgg, vgg"):
        dataclasses.replace(exp, sweep_models=("resnet",))
    with pytest.raises(ValueError, match="unknown catalog .nope.; known: csv, debian, folder, msd"):
        DataConfig("nope")
    with pytest.raises(ValueError, match="unknown storage dtype 'int4'; known: float16, float32, uint8"):
        DataConfig(mel_dtype="int4")
    with pytest.raises(ValueError, match="strategy must be one of auto, default"):
        TrainConfig(strategy="tpu")
    with pytest.raises(FileNotFoundError, match="not a tftag run directory"):
        Experiment.load(str(tmp_path / "nowhere"))


def test_sweep_models_with_their_own_settings(tmp_path):
    from tftag.study import sweep
    from tftag.experiment import SweepModel

    exp = dataclasses.replace(_experiment(str(tmp_path)), model=ModelConfig("vgg", width=0.125))
    override = SweepModel.parse("musicnn:width=0.25,patch_seconds=3,epochs=2,steps_per_epoch=5,"
                                "test_patches=2,resolutions=sr16000-mel48-hop2-log")
    assert override == SweepModel("musicnn", ("sr16000-mel48-hop2-log",), 0.25, 3.0, 2, 5, 2)
    exp = dataclasses.replace(exp, sweep_overrides=(override,))
    items = sweep.plan_items(exp.sweep_plan(), exp.repeats, seed=7)
    assert [i.key for i in items] == [
        "vgg-paper-w0.125-sr16000-mel48-hop2-log-seed7", "vgg-paper-w0.125-sr16000-mel48-hop2-log-seed8",
        "vgg-paper-w0.125-sr16000-mel16-hop4-db-seed7", "vgg-paper-w0.125-sr16000-mel16-hop4-db-seed8",
        "musicnn-paper-w0.25-sr16000-mel48-hop2-log-seed7",
        "musicnn-paper-w0.25-sr16000-mel48-hop2-log-seed8"]
    assert items[0].train_config == exp.train and items[0].patch_frames is None
    musicnn = items[-1]
    assert (musicnn.train_config.epochs, musicnn.train_config.steps_per_epoch) == (2, 5)
    assert musicnn.train_config.test_patches == 2 and items[0].train_config.test_patches is None
    assert musicnn.patch_frames == 93  # 3 s at hop 512
    assert Experiment.from_dict(json.loads(json.dumps(exp.to_dict()))) == exp
    whole = SweepModel.parse("vgg:patch_seconds=0").apply(ModelConfig("vgg", patch_seconds=3.0),
                                                         exp.train)[0]
    assert whole.patch_seconds is None  # 0 = whole clips
    with pytest.raises(ValueError, match="'widht=2' is not key=value with a key in resolutions"):
        SweepModel.parse("musicnn:widht=2")
    with pytest.raises(ValueError, match="width='x' is not a number"):
        SweepModel.parse("musicnn:width=x")
    with pytest.raises(ValueError, match="'musicnn_vgg' is not one of the sweep's models"):
        dataclasses.replace(exp, sweep_overrides=(SweepModel("musicnn_vgg"),))
    with pytest.raises(ValueError, match=r"resolutions \['sr8000-mel8-hop1-log'\] are not among"):
        dataclasses.replace(exp, sweep_overrides=(SweepModel("vgg", ("sr8000-mel8-hop1-log",)),))
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        dataclasses.replace(exp, sweep_overrides=(SweepModel("vgg", epochs=0),))
    with pytest.raises(ValueError, match="valid_patches must be >= 1 or None"):
        TrainConfig(valid_patches=0)


def test_cli_run_dir_holds_the_whole_experiment(tmp_path):
    run_dir = tmp_path / "run"
    run_module("tftag.main", "--mode=extract", f"--run_dir={run_dir}", "--num_clips=2",
               "--clip_seconds=3", "--resolutions=sr16000-mel16-hop2-log", "--duration=3",
               "--model=musicnn", "--width=0.5", "--patch_seconds=1.5", "--seed=4",
               "--mel_dtype=float16", "--batch_size=3", "--export=false")
    exp = Experiment.load(str(run_dir))
    assert exp.mel_config == MelConfig(16000, 16, 2, "log", 3.0)
    assert exp.model == ModelConfig("musicnn", width=0.5, patch_seconds=1.5)
    assert exp.train.seed == 4 and exp.train.batch_size == 3
    assert exp.data == DataConfig(num_clips=2, clip_seconds=3.0, mel_dtype="float16")
    assert exp.export.enabled is False and exp.run_dir == str(run_dir)
    info = json.loads((run_dir / "dataset" / "dataset.json").read_text())
    assert info["mel_dtype"] == "float16"


@pytest.mark.parametrize("args, message", [
    (["--mode=profile", "--n_mels=3"], "error: --n_mels: n_mels must be one of 128, 96, 48, 32, 24, 16, 8 or any int"),
    (["--mode=train2"], "value should be one of <train|evaluate"),
    (["--mode=profile", "--model=resnet"], "error: --model='resnet'; known: musicnn, musicnn_vgg, vgg"),
    (["--mode=describe", "--catalog=mtat2"], "error: --catalog='mtat2'; known: csv, debian, folder, msd, mtat"),
    (["--mode=describe", "--mel_dtype=int8"], "error: --mel_dtype='int8'; known: float16, float32, uint8"),
    (["--mode=train"], "error: --mode=train needs --run_dir"),
    (["--mode=train", "--dataset_dir=/nonexistent", "--run_dir=RUN",
      "--resolutions=sr16000-mel16-hop2-log"],
     "error: --dataset_dir: /nonexistent/dataset.json not found"),
    (["--mode=tag", "--model_dir=/nonexistent", "--audio=/"], "error: --model_dir='/nonexistent'"),
    (["--mode=verify"], "error: --mode=verify needs --dataset_dir"),
    (["--mode=sweep", "--strategy=multi_worker", "--run_dir=RUN"],
     "error: --strategy=multi_worker trains with --mode=train only, not --mode=sweep"),
    (["--epochs=0"], "error: flag --epochs=0: 0 is not a positive integer"),
    (["--mode=profile", "--sweep_model=vgg:depth=3"],
     "error: --sweep_model: 'vgg:depth=3': 'depth=3' is not key=value with a key in resolutions"),
    (["extra"], "error: unexpected arguments: extra"),
])
def test_usage_errors_are_short(tmp_path, args, message):
    args = [a.replace("RUN", str(tmp_path)) for a in args]
    proc = run_module("tftag.main", *args, check=False)
    ours = [line for line in proc.stderr.splitlines() if line.strip() and not _TF_LOG.match(line)]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr[-2000:]
    assert len(ours) <= 5 and ours[-1] == "see --helpfull for every flag", ours
    assert "Traceback" not in proc.stderr and "--helpfull" in proc.stderr
    assert proc.stdout == ""


def test_pipelines_usage_errors_are_short(tmp_path):
    proc = run_module("pipelines.extract", f"--output_dir={tmp_path}", "--input=/nonexistent",
                      check=False)
    ours = [line for line in proc.stderr.splitlines() if line.strip() and not _TF_LOG.match(line)]
    assert proc.returncode == 2 and "error: --input='/nonexistent' does not exist" in proc.stderr
    assert len(ours) <= 5


def test_registering_a_name_twice_is_an_error():
    reg = Registry("widget", lambda: None)

    @reg.register("a")
    def first():
        return 1

    reg.register("a")(first)  # the same function again (a module reload) is fine
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        @reg.register("a")
        def second():
            return 2
    with pytest.raises(ValueError, match="model 'vgg' is registered twice"):
        models.register("vgg")(lambda *a: None)
    assert models.names() == ["musicnn", "musicnn_vgg", "vgg"]
    assert codecs.names() == ["float16", "float32", "uint8"] and "synthetic" in datasets.names()


def test_storage_codecs_round_trip():
    import numpy as np
    import tensorflow as tf

    db = lambda x: 10 * np.log10(x)  # noqa: E731
    mel = np.array([[0.0, 1e-9, 0.5], [3.25, 70000.0, 1e12], [np.inf, -1e-7, 1e-30]], np.float32)
    f32, f16, u8 = (codecs.get(n) for n in ("float32", "float16", "uint8"))
    back = f32.decode(f32.encode(mel), mel.shape)
    assert back[:2].tolist() == mel[:2].tolist() and back[2, 0] == np.inf and back[2, 1] == 0.0
    # float16 stores dB: nothing flushed to zero (a float16 power loses 1e-9), inf and 0 survive.
    assert f16.bytes_per_value == 2 and len(f16.encode(mel)) == 18
    back = f16.decode(f16.encode(mel), mel.shape)
    assert back[0, 0] == 0.0 and back[2, 1] == 0.0 and back[2, 0] == np.inf
    positive = (mel > 0) & np.isfinite(mel)
    assert np.abs(db(back[positive]) - db(mel[positive])).max() <= 0.16  # 1e-30: -300 dB ± 0.125
    assert np.abs(db(back[:2, 1:]) - db(mel[:2, 1:])).max() <= 0.03
    # uint8: code 0 = zero; -90 dB .. +29.38 dB in 0.47-dB steps; outside clips to the ends.
    assert u8.bytes_per_value == 1 and len(u8.encode(mel)) == 9
    codes = np.frombuffer(u8.encode(mel), np.uint8).reshape(mel.shape)
    assert codes[0, 0] == 0 and codes[2, 1] == 0 and codes[2, 2] == 1 and codes[1, 2] == 255
    back = u8.decode(u8.encode(mel), mel.shape)
    assert back[0, 0] == 0.0 and back[2, 2] == pytest.approx(1e-9, rel=1e-5)  # -300 dB -> -90
    assert db(back[1, 2]) == pytest.approx(u8.db_max, abs=1e-4) and u8.db_max == pytest.approx(29.38)
    assert db(back[2, 0]) == pytest.approx(29.38, abs=1e-4)  # inf clips to the top code
    inside = np.array([[1e-8, 0.5, 3.25, 7e4 / 1e3]], np.float32)
    assert np.abs(db(u8.decode(u8.encode(inside), inside.shape)) - db(inside)).max() <= 0.235 + 1e-4
    for codec in (f32, f16, u8):  # the in-graph decode is the NumPy decode
        graph = codec.decode_tf(tf.constant(codec.encode(mel))).numpy().reshape(mel.shape)
        np.testing.assert_allclose(graph, codec.decode(codec.encode(mel), mel.shape), rtol=1e-5)
        with pytest.raises(ValueError, match="NaN"):
            codec.encode(np.array([np.nan], np.float32))
    assert u8.describe() == {"codec": "uint8", "dtype": "uint8", "bytes_per_value": 1,
                             "domain": "db", "db_min": -90.0, "db_step": 0.47, "db_max": 29.38}


def test_codec_of_a_dataset_json():
    meta = {"mel_dtype": "uint8", "mel_codec": codecs.get("uint8").describe()}
    assert codecs.from_dataset(meta, "d/dataset.json") == codecs.get("uint8")
    other = dict(meta, mel_codec=dict(meta["mel_codec"], db_step=0.25))  # recorded values decode
    assert codecs.from_dataset(other, "d/dataset.json").db_step == 0.25
    legacy = codecs.from_dataset({"mel_dtype": "float16"}, "d/dataset.json")  # before mel_codec
    assert legacy.domain == "power" and legacy.dtype == "float16"
    for bad, message in (
        (dict(meta["mel_codec"], db_step="x"), "d/dataset.json: mel_codec: db_step = 'x' is not a finite number"),
        (dict(meta["mel_codec"], db_step=0), "d/dataset.json: mel_codec: db_step = 0 must be > 0"),
        (dict(meta["mel_codec"], db_min=None), "d/dataset.json: mel_codec: db_min = None is not a finite number"),
        (dict(meta["mel_codec"], dtype="uint16"), "d/dataset.json: mel_codec.dtype = 'uint16' does not fit mel_dtype 'uint8'"),
        ("uint8", "d/dataset.json: mel_codec must be an object"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            codecs.from_dataset(dict(meta, mel_codec=bad), "d/dataset.json")
    with pytest.raises(ValueError, match=re.escape("mel_dtype 'uint8' needs its mel_codec parameters")):
        codecs.from_dataset({"mel_dtype": "uint8"}, "d/dataset.json")


def test_library_layering():
    """The library never imports pipelines/; light modules skip TensorFlow (main.py's table of
    modes: tests/test_main.py)."""
    offenders = []
    for folder, _, files in os.walk(os.path.join(ROOT, "tftag")):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(folder, name), encoding="utf-8").read()
                if re.search(r"^\s*(from pipelines|import pipelines)", text, re.M):
                    offenders.append(name)
    assert offenders == []
    code = ("import sys, tftag.runs.runfiles, tftag.experiment, tftag.storage.datacard, tftag.cli, "
            "tftag.datasets.synthetic, tftag.storage.codecs; "
            "tftag.datasets.names(); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_modes_without_run_dir(tmp_path):
    """profile and describe need no --run_dir and then write nothing into the project."""
    before = sorted(os.listdir(ROOT))
    proc = run_module("tftag.main", "--mode=profile", "--model=vgg", "--width=0.05",
                      "--resolutions=sr12000-mel8-hop10-db", "--latency_runs=0")
    row = next(line.split() for line in proc.stdout.splitlines() if "sr12000-mel8-hop10" in line)
    assert row[:3] == ["sr12000-mel8-hop10", "137", "8"]  # 29.1 s at 12 kHz, hop 2560: 137 frames
    corpus = tmp_path / "corpus"
    run_module("pipelines.synth", f"--output_dir={corpus}", "--num_clips=3", "--duration=1")
    proc = run_module("tftag.main", "--mode=describe", f"--input={corpus}")
    assert re.search(r"\b3 clips\b", proc.stdout), proc.stdout
    assert sorted(os.listdir(ROOT)) == before
