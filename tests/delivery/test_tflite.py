"""TFLite export and evaluation: the four precisions, the float32 check, integer-only int8,
patch averaging, ``--mode=evaluate --tflite`` and the flag's usage errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tftag import evaluate, experiment, patches
from tftag.delivery import export, litert, tflite
from tftag.features import MelConfig
from tftag.models import ModelConfig, build

from conftest import ROOT, run_module

MEL = MelConfig(16000, 16, 2, "log", 3.0)  # the resolution of conftest's tiny_dataset
NAME = "vgg-sr16000-mel16-hop2-log"
MODEL_FLAGS = ("--resolutions=sr16000-mel16-hop2-log", "--duration=3", "--model=vgg",
               "--width=0.05")


def _model(n_tags: int, patch_seconds: float | None = None):
    tf.keras.utils.set_random_seed(0)
    return build(ModelConfig("vgg", width=0.05, patch_seconds=patch_seconds), MEL, n_tags)


@pytest.fixture(scope="module")
def exported(tiny_dataset, tmp_path_factory):
    """``--mode=export --tflite=<all four>`` of a tiny VGG's weights, through the CLI."""
    root = tmp_path_factory.mktemp("tflite")
    n_tags = len(json.loads(open(os.path.join(tiny_dataset, "dataset.json")).read())["tags"])
    model = _model(n_tags)
    weights = str(root / "w.weights.h5")
    model.save_weights(weights)
    proc = run_module("tftag.main", "--mode=export", f"--weights={weights}",
                      f"--dataset_dir={tiny_dataset}", f"--export_dir={root / 'export'}",
                      "--tflite=float32,float16,dynamic,int8", "--representative_clips=8",
                      *MODEL_FLAGS)
    version_dir = str(root / "export" / NAME / "1")
    check = tflite.dataset_mels(tiny_dataset, MEL, "test", tflite.CHECK_CLIPS)
    keras_probs = tf.sigmoid(model(check, training=False)).numpy()
    return dict(root=root, weights=weights, model=model, proc=proc, dir=version_dir,
                check=check, keras=keras_probs,
                files={p: os.path.join(version_dir, "tflite", f"{NAME}-{p}.tflite")
                       for p in tflite.PRECISIONS})


def test_export_writes_every_precision(exported):
    out_dir = os.path.join(exported["dir"], "tflite")
    assert sorted(os.listdir(out_dir)) == sorted(
        [f"{NAME}-{p}.tflite" for p in tflite.PRECISIONS] + ["tflite.json"])  # no temp files
    summary = json.loads(open(os.path.join(out_dir, "tflite.json")).read())
    assert summary["model_name"] == NAME and summary["window_frames"] == MEL.n_frames == 95
    assert summary["check_clips"] == len(exported["check"]) == 9  # the test split
    assert summary["representative_windows"] == 8
    assert summary["interpreter"] == "ai_edge_litert.interpreter.Interpreter"
    files = summary["files"]
    assert list(files) == list(tflite.PRECISIONS)
    for precision, path in exported["files"].items():
        assert files[precision]["bytes"] == os.path.getsize(path)
        assert files[precision]["latency_ms_per_clip"] > 0
        model = tflite.TFLiteModel(path)
        assert (model.window_frames, model.n_mels) == (95, 16)
        assert model.input_dtype == (np.int8 if precision == "int8" else np.float32)
        probs = model.predict(exported["check"][:3])
        assert probs.shape == (3, exported["keras"].shape[1]) and probs.dtype == np.float32
        assert np.all((probs >= 0) & (probs <= 1))
        line = f"tflite {precision}: {path} ({files[precision]['bytes']} bytes"
        assert line in exported["proc"].stdout
    sizes = {p: files[p]["bytes"] for p in files}
    assert sizes["float16"] < 0.6 * sizes["float32"]
    assert sizes["dynamic"] < 0.4 * sizes["float32"] and sizes["int8"] < 0.4 * sizes["float32"]
    assert "integer-only True" in exported["proc"].stdout


def test_tflite_probabilities_against_keras(exported):
    summary = json.loads(open(os.path.join(exported["dir"], "tflite", "tflite.json")).read())
    for precision, path in exported["files"].items():
        diff = np.abs(tflite.TFLiteModel(path).predict(exported["check"]) - exported["keras"]).max()
        assert summary["files"][precision]["max_abs_diff"] == pytest.approx(diff, abs=1e-6)
        bound = {"float32": 1e-4, "float16": 1e-3}.get(precision, 0.1)
        assert diff <= bound, (precision, diff)


def test_int8_is_integer_only_and_the_check_can_fail(exported, monkeypatch):
    assert tflite.integer_only(exported["files"]["int8"])
    assert tflite.non_integer_tensors(exported["files"]["int8"]) == []
    float32 = tflite.non_integer_tensors(exported["files"]["float32"])
    assert not tflite.integer_only(exported["files"]["float32"]) and "mel: float32" in float32
    summary = json.loads(open(os.path.join(exported["dir"], "tflite", "tflite.json")).read())
    assert summary["files"]["int8"]["integer_only"] is True
    assert summary["files"]["int8"]["non_integer_tensors"] == []
    assert summary["files"]["float32"]["integer_only"] is False
    # Without the ELU rewrite the converter keeps ELU in float between DEQUANTIZE / QUANTIZE.
    windows = exported["check"][:4]
    monkeypatch.setattr(tflite, "_int8_friendly", lambda model: model)
    plain = tflite.convert(exported["model"], (95, 16), "int8", windows)
    islands = tflite.non_integer_tensors(plain)
    assert islands and all(t.endswith(": float32") for t in islands)
    assert any("elu" in t.lower() for t in islands), islands


def test_evaluate_tflite_equals_keras_weights(exported, tiny_dataset, tmp_path):
    keras_metrics = evaluate.evaluate(exported["model"], tiny_dataset, MEL, "test", None)
    run_dir = tmp_path / "run"
    path = exported["files"]["float32"]
    run_module("tftag.main", "--mode=evaluate", f"--run_dir={run_dir}", f"--tflite={path}",
               f"--dataset_dir={tiny_dataset}", "--split=test", *MODEL_FLAGS)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tflite"] == path and "weights" not in summary
    assert summary["roc_auc"] == pytest.approx(keras_metrics.roc_auc, abs=1e-3)
    assert summary["pr_auc"] == pytest.approx(keras_metrics.pr_auc, abs=1e-3)
    results = json.loads((run_dir / f"evaluation_test_{NAME}-float32.json").read_text())
    assert results["n_clips"] == 9 and results["roc_auc"] == summary["roc_auc"]
    # int8 through the same metric code in-process: quantized input and output handled.
    int8 = evaluate.evaluate(tflite.TFLiteModel(exported["files"]["int8"]), tiny_dataset, MEL,
                             "test", None)
    assert int8.n_clips == 9 and abs(int8.roc_auc - keras_metrics.roc_auc) <= 0.2


def test_patch_model_averages_patches_like_evaluate():
    model = _model(5, patch_seconds=1.0)
    patch = ModelConfig("vgg", patch_seconds=1.0).patch_frames(MEL)
    assert patch == 31
    converted = tflite.TFLiteModel(tflite.convert(model, (patch, 16), "float32"))
    mel = np.random.default_rng(0).normal(2.0, 1.0, (2, 95, 16)).astype(np.float32)
    assert patches.windows(mel, patch).shape == (2, 3, 31, 16)  # 95 frames: 3 patches, tail dropped
    for x in (mel, mel[:, :20]):  # whole clips, and clips shorter than one patch (zero-padded)
        expected = evaluate.patch_scores(model, tf.constant(x), patch).numpy()
        np.testing.assert_allclose(converted.predict(x), expected, atol=1e-4)


def test_float32_mismatch_is_an_error_and_leaves_no_file(exported, tmp_path):
    content = open(exported["files"]["float32"], "rb").read()
    path = str(tmp_path / "x-float32.tflite")
    with pytest.raises(RuntimeError, match=r"float32 TFLite model differs from the Keras model"):
        tflite._write_checked(path, content, exported["keras"] + 0.01, exported["check"], "float32")
    assert os.listdir(tmp_path) == []
    row = tflite._write_checked(path, content, exported["keras"], exported["check"], "float32")
    assert row["max_abs_diff"] <= 1e-4 and os.listdir(tmp_path) == ["x-float32.tflite"]


def test_int8_without_a_dataset_names_dataset_dir(tmp_path):
    model = _model(5)
    spec = export.ExportSpec(MEL, ModelConfig("vgg", width=0.05), tuple("abcde"))
    with pytest.raises(ValueError, match="--dataset_dir"):
        tflite.export_from_dataset(model, spec, str(tmp_path), ("float32", "int8"), None, 10)
    with pytest.raises(ValueError, match="--dataset_dir"):
        export.export_pretrained("MTT_musicnn", experiment.ExportConfig(
            export_dir=str(tmp_path), tflite=("int8",)))
    assert os.listdir(tmp_path) == []  # failed before writing anything
    # Without a dataset the float precisions are checked on noise mels.
    summary = tflite.export_from_dataset(model, spec, str(tmp_path), ("float32",), None, 10)
    assert summary["check_clips"] == 2 and summary["files"]["float32"]["max_abs_diff"] <= 1e-4


def test_export_config_and_usage_errors(tmp_path, tiny_dataset):
    config = experiment.ExportConfig(tflite=["int8", "float32"], representative_clips=7)
    assert config.tflite == ("int8", "float32")
    exp = experiment.Experiment((MEL,), ModelConfig("vgg"), export=config, run_dir=str(tmp_path))
    exp.save()
    assert experiment.Experiment.load(str(tmp_path)) == exp
    with pytest.raises(ValueError, match="unknown precision 'fp8'; allowed: float32, float16, "
                                         "dynamic, int8"):
        experiment.ExportConfig(tflite=("fp8",))
    bad = run_module("tftag.main", "--mode=export", "--tflite=float32,fp8",
                     f"--dataset_dir={tiny_dataset}", *MODEL_FLAGS, check=False)
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --tflite=float32,fp8: unknown precision 'fp8'; allowed: float32, "
                      "float16, dynamic, int8 (a .tflite file only with --mode=evaluate)"]
    with pytest.raises(FileNotFoundError, match=r"--tflite=/no/such\.tflite: no such \.tflite"):
        litert.load_checked("/no/such.tflite", MEL, 5)


def test_tflite_module_imports_no_tensorflow():
    import subprocess
    import sys

    code = ("import sys, tftag.delivery.tflite, tftag.experiment; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"]
