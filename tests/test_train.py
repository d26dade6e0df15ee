"""Training, evaluation, resume, sweeps and the main job's training modes on a tiny corpus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from tftag import evaluate, train
from tftag.runs import runfiles
from tftag.storage import data
from tftag.features import MelConfig
from tftag.models import ModelConfig

from conftest import ROOT, run_module

# Known-value metrics fixture; the expected values were computed with scikit-learn 1.9.1
# (roc_auc_score, average_precision_score; per tag and macro).
Y_TRUE = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]])
Y_SCORE = np.array([[0.90, 0.20, 0.60], [0.30, 0.80, 0.40], [0.70, 0.55, 0.20],
                    [0.20, 0.10, 0.85], [0.40, 0.45, 0.30], [0.60, 0.35, 0.50]], np.float32)
MEL = MelConfig(16000, 16, 2, "log", 3.0)


def test_one_list_of_strategies():
    """train makes a strategy for each name of tftag.experiment.STRATEGIES, the one list."""
    from tftag import experiment

    assert tuple(train.STRATEGIES) == experiment.STRATEGIES
    assert train.STRATEGIES["default"]() is train.STRATEGIES["default"]()


def test_metrics_fixture():
    m = evaluate.macro_metrics(Y_TRUE, Y_SCORE, ["a", "b", "c"])
    assert m.roc_auc == pytest.approx(0.925926, abs=1e-6)
    assert m.pr_auc == pytest.approx(0.944444, abs=1e-6)
    assert [m.per_tag[t]["roc_auc"] for t in "abc"] == pytest.approx([0.888889, 0.888889, 1.0], abs=1e-6)
    assert [m.per_tag[t]["pr_auc"] for t in "abc"] == pytest.approx([0.916667, 0.916667, 1.0], abs=1e-6)
    logits = np.log(Y_SCORE / (1 - Y_SCORE))  # ranks are unchanged: same values
    assert evaluate.macro_metrics(Y_TRUE, logits).roc_auc == pytest.approx(0.925926, abs=1e-6)
    zeroed = Y_TRUE.copy()
    zeroed[:, 2] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UndefinedMetricWarning: the empty tag is skipped
        m2 = evaluate.macro_metrics(zeroed, Y_SCORE, ["a", "b", "c"])
    assert m2.roc_auc == pytest.approx(0.888889, abs=1e-6) and m2.skipped_tags == ("c",)
    assert m2.n_tags_evaluated == 2
    with pytest.raises(ValueError, match="no tag has both positive and negative clips"):
        evaluate.macro_metrics(np.zeros((3, 2)), np.zeros((3, 2)))
    assert "macro (3 tags, 6 clips): ROC-AUC 0.9259, PR-AUC 0.9444" in evaluate.format_per_tag(m)


def test_patch_scores_average_non_overlapping_patches():
    import keras

    inputs = keras.Input((4, 2))
    logits = keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=(1, 2), keepdims=False)[:, None])(inputs)
    model = keras.Model(inputs, logits)
    mel = np.arange(2 * 10 * 2, dtype=np.float32).reshape(2, 10, 2) / 40
    got = evaluate.patch_scores(model, mel, 4).numpy()  # 2 patches of 4, last 2 frames dropped
    expected = [np.mean([1 / (1 + np.exp(-mel[b, s:s + 4].mean())) for s in (0, 4)]) for b in (0, 1)]
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-6)


def test_patch_scores_with_max_patches_take_evenly_spaced_patches():
    import keras

    assert evaluate.patch_indices(9, None) == list(range(9))
    assert evaluate.patch_indices(9, 1) == [4]  # the centre patch
    assert evaluate.patch_indices(9, 3) == [1, 4, 7]
    assert evaluate.patch_indices(4, 10) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="max_patches must be >= 1"):
        evaluate.patch_indices(9, 0)
    inputs = keras.Input((4, 2))
    logits = keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=(1, 2), keepdims=False)[:, None])(inputs)
    model = keras.Model(inputs, logits)
    mel = np.arange(2 * 13 * 2, dtype=np.float32).reshape(2, 13, 2) / 50  # 3 patches of 4
    got = evaluate.patch_scores(model, mel, 4, max_patches=1).numpy()  # the middle one: 4..8
    expected = [1 / (1 + np.exp(-mel[b, 4:8].mean())) for b in (0, 1)]
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-6)


def _weights(model):
    return [w.numpy() for w in model.weights]


def _summaries(logdir) -> dict:
    """{tag: [(step, value)]} of every TensorBoard event file in ``logdir``."""
    import tensorflow as tf

    out = {}
    for path in sorted(str(p) for p in logdir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor)))
    return out


def test_resume_inside_an_epoch_ends_as_an_uninterrupted_run(tiny_dataset, tmp_path):
    """Mid-epoch checkpoints every 2 steps: a run stopped after 3 steps of its first epoch
    (the 3rd is lost) resumes at step 2, skips the batches it had done, and ends with the same
    weights and history as a run never stopped; checkpointing does not change the results."""
    mc = ModelConfig("vgg", width=0.05)
    cfg = train.TrainConfig(batch_size=4, epochs=2, steps_per_epoch=4, patience=0, seed=5)
    straight = train.train(tiny_dataset, MEL, mc, cfg, str(tmp_path / "straight"),
                           checkpoint_steps=2)
    plain = train.train(tiny_dataset, MEL, mc, cfg, str(tmp_path / "plain"), checkpoint_steps=0)
    cut = str(tmp_path / "cut")
    first = train.train(tiny_dataset, MEL, mc, cfg, cut, checkpoint_steps=2, stop_after_steps=3)
    assert first["epochs_done"] == 0 and first["stop_reason"] is None
    assert runfiles.training_progress(cut) == (0, 2)
    resumed = train.train(tiny_dataset, MEL, mc, cfg, cut, checkpoint_steps=2)
    assert runfiles.training_progress(cut) == (2, 0)
    assert [h["steps"] for h in resumed["history"]] == [4, 4]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    assert [h["loss"] for h in plain["history"]] == pytest.approx(
        [h["loss"] for h in straight["history"]], rel=1e-12)
    for other in ("cut", "plain"):
        a = train.load_best(str(tmp_path / "straight"), tiny_dataset, MEL, mc)
        b = train.load_best(str(tmp_path / other), tiny_dataset, MEL, mc)
        for wa, wb in zip(_weights(a), _weights(b)):
            np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_the_step_and_the_run_resumes_there(tiny_dataset, tmp_path,
                                                                 monkeypatch, signum):
    """SIGTERM or a first Ctrl-C in the 3rd step (checkpoints every 2 steps otherwise): the run
    saves step 3, stops with Stopped (exit code 128 + the signal), puts the signal handlers
    back, and its resume ends as a run never stopped."""
    from tftag.errors import Stopped

    mc = ModelConfig("vgg", width=0.05)
    cfg = train.TrainConfig(batch_size=4, epochs=2, steps_per_epoch=4, patience=0, seed=5)
    straight = train.train(tiny_dataset, MEL, mc, cfg, str(tmp_path / "straight"),
                           checkpoint_steps=2)
    real_step_fn = train.train_step_fn

    def signalling_step_fn(*args):  # the signal arrives while the 3rd step runs
        step, calls = real_step_fn(*args), []

        def run(x, y):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signum)
            return step(x, y)
        return run

    monkeypatch.setattr(train, "train_step_fn", signalling_step_fn)
    before = {s: signal.getsignal(s) for s in train.STOP_SIGNALS}
    cut = str(tmp_path / "cut")
    with pytest.raises(Stopped) as stopped:
        train.train(tiny_dataset, MEL, mc, cfg, cut, checkpoint_steps=2)
    name = signal.Signals(signum).name
    assert str(stopped.value) == (f"{cut}: training stopped by {name} at epoch 0, step 3 "
                                  "(checkpointed); rerun the same command to resume there")
    assert stopped.value.exit_code == 128 + signum  # 143 / 130, as the shell reports them
    assert {s: signal.getsignal(s) for s in train.STOP_SIGNALS} == before
    assert runfiles.training_progress(cut) == (0, 3)  # the step it was at: nothing lost
    monkeypatch.setattr(train, "train_step_fn", real_step_fn)
    resumed = train.train(tiny_dataset, MEL, mc, cfg, cut, checkpoint_steps=2)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    a = train.load_best(str(tmp_path / "straight"), tiny_dataset, MEL, mc)
    b = train.load_best(cut, tiny_dataset, MEL, mc)
    for wa, wb in zip(_weights(a), _weights(b)):
        np.testing.assert_array_equal(wa, wb)


def test_sigterm_stops_the_command_with_its_exit_code_and_how_to_resume(tiny_dataset, tmp_path):
    """`--mode=train` sent SIGTERM after its first epoch: exit code 143, one "stopped:" line
    naming the run, the epoch and step it saved, no traceback; the rerun finishes the run."""
    run_dir = tmp_path / "run"
    args = ["tftag.main", "--mode=train", f"--dataset_dir={tiny_dataset}", f"--run_dir={run_dir}",
            "--resolutions=sr16000-mel16-hop2-log", "--duration=3", "--model=vgg",
            "--width=0.05", "--batch_size=4", "--steps_per_epoch=2", "--epochs=400",
            "--patience=0", "--export=false"]
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline, history = time.monotonic() + 300, None
    while proc.poll() is None and time.monotonic() < deadline and not (
            history := next(iter(run_dir.glob("**/history.json")), None)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-1500:]
    assert "Traceback" not in stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith("stopped: ")]
    assert "training stopped by SIGTERM at " in line and "rerun the same command" in line
    train_dir = str(history.parent)
    assert line.startswith(f"stopped: {train_dir}: ")
    epoch, step = runfiles.training_progress(train_dir)
    assert 1 <= epoch < 400
    assert line.endswith(f"at epoch {epoch}, step {step} (checkpointed); rerun the same command "
                         "to resume there") or (step == 0 and f"at the start of epoch {epoch}" in line)
    rerun = run_module(*args, f"--epochs={epoch + 1}")  # the same run, one epoch more
    assert f"resumed {train_dir}/checkpoints/" in rerun.stderr
    assert runfiles.training_progress(train_dir) == (epoch + 1, 0)


def test_resume_from_a_checkpoint_older_than_its_state(tiny_dataset, tmp_path):
    """A checkpoint written before the learning-rate stage and the mid-epoch state existed
    (model, optimizer, epoch, best, best_epoch, bad_epochs; e.g. a study run carried from an
    older tftag) resumes, and ends as a run never stopped."""
    import keras
    import tensorflow as tf

    from tftag.models import build

    mc = ModelConfig("vgg", width=0.05)
    cfg = train.TrainConfig(batch_size=4, epochs=2, steps_per_epoch=2, patience=0, seed=7)
    straight = train.train(tiny_dataset, MEL, mc, cfg, str(tmp_path / "straight"))
    run = str(tmp_path / "old")
    train.train(tiny_dataset, MEL, mc, cfg, run, stop_after_epochs=1)
    ckpts = os.path.join(run, "checkpoints")
    model = build(mc, MEL, data.load_dataset_info(tiny_dataset).n_tags)
    optimizer = keras.optimizers.Adam(cfg.learning_rate)
    optimizer.build(model.trainable_variables)
    old = {"epoch": tf.Variable(0, dtype=tf.int64), "best": tf.Variable(0.0, dtype=tf.float64),
           "best_epoch": tf.Variable(0, dtype=tf.int64),
           "bad_epochs": tf.Variable(0, dtype=tf.int64)}
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, **old)
    ckpt.restore(tf.train.latest_checkpoint(ckpts)).expect_partial()
    for f in os.listdir(ckpts):
        os.remove(os.path.join(ckpts, f))
    restored = tf.train.CheckpointManager(ckpt, ckpts, max_to_keep=1).save()
    saved = {n.split("/")[0] for n, _ in tf.train.list_variables(tf.train.latest_checkpoint(ckpts))}
    assert not saved & set(train.LR_STATE + train.EPOCH_STATE) and int(old["epoch"]) == 1
    resumed = train.train(tiny_dataset, MEL, mc, cfg, run)
    assert resumed["epochs_done"] == 2
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    # The resumed run numbers its checkpoint after the restored one (not over it).
    number = int(restored.rsplit("-", 1)[1])
    assert tf.train.latest_checkpoint(ckpts) == restored.rsplit("-", 1)[0] + f"-{number + 1}"


def _latest_checkpoint(run_dir) -> str:
    import tensorflow as tf

    return tf.train.latest_checkpoint(os.path.join(str(run_dir), "checkpoints"))


def test_train_evaluate_resume_round_trip(tiny_dataset, tmp_path):
    """2 epochs straight == 1 epoch, interruption, resume for the 2nd (weights, history)."""
    mc = ModelConfig("vgg", width=0.05)
    cfg = train.TrainConfig(batch_size=8, epochs=2, steps_per_epoch=2, patience=0, seed=3)
    straight = train.train(tiny_dataset, MEL, mc, cfg, str(tmp_path / "straight"))
    assert straight["epochs_done"] == 2 and len(straight["history"]) == 2
    assert all(h["steps"] == 2 for h in straight["history"])
    first = train.train(tiny_dataset, MEL, mc, cfg, str(tmp_path / "resumed"), stop_after_epochs=1)
    assert first["epochs_done"] == 1
    resumed = train.train(tiny_dataset, MEL, mc, cfg, str(tmp_path / "resumed"))
    assert resumed["epochs_done"] == 2
    # One checkpoint per epoch, numbered on across the interruption.
    assert os.path.basename(_latest_checkpoint(tmp_path / "resumed")) == "ckpt-2"
    # Training time counts every epoch (training + validation), across the interruption.
    assert resumed["train_seconds"] == pytest.approx(
        sum(h["epoch_seconds"] + h["valid_seconds"] for h in resumed["history"]), abs=0.01)
    assert resumed["train_seconds"] > first["train_seconds"] > 0
    again = train.train(tiny_dataset, MEL, mc, cfg, str(tmp_path / "resumed"))  # finished: no work
    assert again["train_seconds"] == resumed["train_seconds"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    assert resumed["best_valid_roc_auc"] == straight["best_valid_roc_auc"]
    a = train.load_best(str(tmp_path / "straight"), tiny_dataset, MEL, mc)
    b = train.load_best(str(tmp_path / "resumed"), tiny_dataset, MEL, mc)
    for wa, wb in zip(_weights(a), _weights(b)):
        np.testing.assert_array_equal(wa, wb)
    metrics = evaluate.evaluate(a, tiny_dataset, MEL, "test", [str(i) for i in range(28)])
    assert metrics.n_clips == 9
    # The same metrics from the test clips' mels run through the model by hand.
    examples = list(data.read_examples(tiny_dataset, MEL, "test"))
    logits = a(np.stack([e["mel"] for e in examples]), training=False).numpy()
    by_hand = evaluate.macro_metrics(np.stack([e["labels"] for e in examples]), logits)
    assert metrics.roc_auc == pytest.approx(by_hand.roc_auc, abs=1e-6)
    assert metrics.pr_auc == pytest.approx(by_hand.pr_auc, abs=1e-6)
    loss_curve = _summaries(tmp_path / "straight" / "tb" / "train")["loss"]
    assert [step for step, _ in loss_curve] == [0, 1]
    assert [float(v) for _, v in loss_curve] == pytest.approx([h["loss"] for h in straight["history"]],
                                                              rel=1e-6)
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]


def test_train_config_errors():
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        train.TrainConfig(learning_rate=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        train.TrainConfig(batch_size=0)


def test_main_train_and_evaluate(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = [f"--dataset_dir={tiny_dataset}", f"--run_dir={run_dir}", "--resolutions=sr16000-mel16-hop2-log",
            "--duration=3", "--model=vgg", "--width=0.05", "--batch_size=8", "--epochs=2",
            "--patch_seconds=1", f"--export_dir={tmp_path / 'export'}"]
    proc = run_module("tftag.main", "--mode=train", *args)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_done"] == 2 and summary["best_checkpoint"].endswith("best.weights.h5")
    results = json.loads(open(summary["results"]).read())
    assert results["test"]["roc_auc"] == summary["test_roc_auc"]
    assert results["train"]["epochs_done"] == 2
    assert summary["export_path"] == str(tmp_path / "export" / "vgg-sr16000-mel16-hop2-log" / "1")
    assert os.path.exists(os.path.join(summary["export_path"], "saved_model.pb"))
    assert "macro (" in proc.stdout
    ev = run_module("tftag.main", "--mode=evaluate", *args, "--split=valid")
    evaluation = json.loads((run_dir / "evaluation_valid.json").read_text())
    assert evaluation["n_clips"] == 3 and "ROC-AUC" in ev.stdout
    assert "flags" in _summaries(run_dir / "tb" / "config")
    valid_curve = _summaries(run_dir / "tb" / "valid")["roc_auc"]
    assert [step for step, _ in valid_curve] == [0, 1]


@pytest.mark.parametrize("args, message", [
    (["--mode=train", "--n_mels=16,8", "--hop_factors=2", "--sr=16000", "--compressions=log"],
     "--mode=train takes one resolution"),
    (["--mode=train", "--resolutions=sr16000-mel16"], "--resolutions: bad mel config name"),
    (["--mode=sweep", "--models=vgg,resnet", "--resolutions=sr16000-mel16-hop2-log"],
     "--models: unknown ['resnet']"),
    (["--mode=train", "--resolutions=sr16000-mel96-hop1-log"], "--dataset_dir: "),
    (["--mode=evaluate", "--resolutions=sr16000-mel16-hop2-log", "--weights=/nope.weights.h5"],
     "--weights='/nope.weights.h5' does not exist"),
])
def test_training_flag_errors(tiny_dataset, tmp_path, args, message):
    proc = run_module("tftag.main", f"--run_dir={tmp_path}", f"--dataset_dir={tiny_dataset}",
                      "--duration=3", *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-1500:]


def test_sweep_resume_after_kill(tiny_dataset, tmp_path):
    run_dir = tmp_path / "sweep"
    args = ["tftag.main", "--mode=sweep", f"--dataset_dir={tiny_dataset}", f"--run_dir={run_dir}",
            "--sr=16000", "--n_mels=16", "--hop_factors=2", "--compressions=log", "--duration=3",
            "--model=vgg", "--width=0.05", "--repeats=2", "--batch_size=8", "--epochs=1",
            f"--export_dir={tmp_path / 'export'}"]
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    results = lambda: sorted(run_dir.glob("runs/*/result.json"))  # noqa: E731
    deadline = time.monotonic() + 300
    while not results() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = results()
    assert len(done) == 1, done
    first = done[0].read_bytes(), os.path.getmtime(done[0])
    rerun = run_module(*args)
    assert "2 runs, 1 done already" in rerun.stderr
    assert (done[0].read_bytes(), os.path.getmtime(done[0])) == first  # not computed again
    lines = (run_dir / "results.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("model,width,preset,resolution")
    md = (run_dir / "results.md").read_text()
    assert "| vgg (paper, w0.05) | sr16000-mel16-hop2-log | 2 |" in md
    assert (run_dir / "roc_vs_gmacs.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "roc_vs_storage.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["export_path"].startswith(str(tmp_path / "export" / "vgg-sr16000-mel16-hop2-log"))
    assert summary["best_checkpoint"].endswith("best.weights.h5")
    result = json.loads(done[0].read_text())  # storage per clip: the dataset codec's bytes
    assert result["mel_dtype"] == "float32" and result["storage_bytes"] == 4 * MEL.n_frames * 16


def test_a_model_trains_on_uint8_storage(tmp_path):
    """uint8 data trains unchanged; the sweep's storage column is 1 byte per value."""
    run_module("tftag.main", "--mode=extract", f"--run_dir={tmp_path / 'u8'}", "--num_clips=48",
               "--clip_seconds=3", "--sr=16000", "--n_mels=16", "--hop_factors=2",
               "--compressions=log", "--duration=3", "--clips_per_shard=8", "--mel_dtype=uint8")
    run_dir = tmp_path / "sweep"
    run_module("tftag.main", "--mode=sweep", f"--dataset_dir={tmp_path / 'u8' / 'dataset'}",
               f"--run_dir={run_dir}", "--sr=16000", "--n_mels=16", "--hop_factors=2",
               "--compressions=log", "--duration=3", "--model=vgg", "--width=0.05", "--repeats=1",
               "--batch_size=8", "--epochs=1", "--steps_per_epoch=2", "--export=false")
    (result_file,) = run_dir.glob("runs/*/result.json")
    result = json.loads(result_file.read_text())
    assert result["mel_dtype"] == "uint8" and result["storage_bytes"] == MEL.n_frames * 16
    assert 0.0 <= result["test_roc_auc"] <= 1.0 and result["epochs_done"] == 1


def test_sweep_per_model_resolutions_and_per_resolution_exports(tiny_dataset, tmp_path):
    run_dir, export_dir = tmp_path / "sweep", tmp_path / "export"
    args = ["tftag.main", "--mode=sweep", f"--dataset_dir={tiny_dataset}", f"--run_dir={run_dir}",
            "--sr=16000", "--n_mels=16", "--hop_factors=2,4", "--compressions=log", "--duration=3",
            "--models=vgg,musicnn", "--width=0.05", "--repeats=1", "--batch_size=8", "--epochs=1",
            "--steps_per_epoch=2", "--valid_patches=1",
            "--sweep_model=musicnn:width=0.1,patch_seconds=1,epochs=2,test_patches=1,"
            "resolutions=sr16000-mel16-hop2-log",
            "--export_per_resolution", f"--export_dir={export_dir}"]
    run_module(*args)
    keys = sorted(p.parent.name for p in run_dir.glob("runs/*/result.json"))
    assert keys == ["musicnn-paper-w0.1-sr16000-mel16-hop2-log-seed0",  # musicnn: its one resolution
                    "vgg-paper-w0.05-sr16000-mel16-hop2-log-seed0",
                    "vgg-paper-w0.05-sr16000-mel16-hop4-log-seed0"]
    history = json.loads((run_dir / "runs" / keys[0] / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]  # its own epochs
    result = json.loads((run_dir / "runs" / keys[0] / "result.json").read_text())
    assert result["patch_frames"] == 31 and result["width"] == 0.1  # 1 s at hop 512
    assert result["test_patches"] == 1  # its test scored the centre patch of each clip
    vgg = json.loads((run_dir / "runs" / keys[1] / "result.json").read_text())
    assert vgg["test_patches"] is None  # whole clips
    exports = json.loads((run_dir / "exports.json").read_text())
    assert sorted(exports) == ["musicnn-sr16000-mel16-hop2-log", "vgg-sr16000-mel16-hop2-log",
                               "vgg-sr16000-mel16-hop4-log"]
    for name, path in exports.items():
        assert path.startswith(str(export_dir / name)) and os.path.isdir(path), path
    # A rerun computes nothing and exports nothing new.
    before = sorted(p.name for p in export_dir.glob("*/*"))
    rerun = run_module(*args)
    assert "3 runs, 3 done already" in rerun.stderr
    assert sorted(p.name for p in export_dir.glob("*/*")) == before
    assert json.loads((run_dir / "exports.json").read_text()) == exports


def test_summarize_t_test_against_full_resolution():
    from tftag.study import sweep

    def result(n_mels, hop, seed, roc):
        return {"model": "vgg", "preset": "paper", "width": 0.125, "sr": 16000, "compression": "log",
                "n_mels": n_mels, "hop_factor": hop, "resolution": f"sr16000-mel{n_mels}-hop{hop}-log",
                "seed": seed, "test_roc_auc": roc, "test_pr_auc": roc / 2, "gmacs": 1.0 / hop,
                "storage_bytes": 4 * n_mels * 1820 // hop, "train_seconds": 10.0}

    full = [0.90, 0.91, 0.92]
    low = [0.80, 0.82, 0.81]
    rows = sweep.summarize([result(96, 1, s, r) for s, r in enumerate(full)]
                           + [result(8, 10, s, r) for s, r in enumerate(low)])
    assert [r["resolution"] for r in rows] == ["sr16000-mel96-hop1-log", "sr16000-mel8-hop10-log"]
    assert rows[0]["baseline"] == "sr16000-mel96-hop1" and rows[0]["p_value"] is None
    # Two-sample t-test, 0.81 vs 0.91 with std 0.01 each: t = -0.1 / (0.01·sqrt(2/3)) = -12.247,
    # 4 degrees of freedom, two-sided p = 2.5522e-4.
    assert rows[1]["p_value"] == pytest.approx(2.55216749e-4)
    assert rows[1]["roc_auc_mean"] == pytest.approx(0.81) and rows[1]["roc_auc_std"] == pytest.approx(0.01)
    md = sweep.markdown_table(rows)
    assert "| 91.00 ± 1.00 |" in md and "| baseline |" in md
    assert md.splitlines()[-1].endswith("| 0.000 |")  # the last column: the p-value, 3 decimals


def test_tune_writes_best_flagfile(tiny_dataset, tmp_path):
    run_dir = tmp_path / "tune"
    proc = run_module("tftag.main", "--mode=tune", f"--dataset_dir={tiny_dataset}",
                      f"--run_dir={run_dir}", "--resolutions=sr16000-mel16-hop2-log", "--duration=3",
                      "--model=vgg", "--max_trials=2", "--epochs=1", "--batch_size=8")
    flagfile = (run_dir / "best.flags").read_text()
    assert "--mode=train" in flagfile and "--width=" in flagfile and "--learning_rate=" in flagfile
    tune = json.loads((run_dir / "tune.json").read_text())
    assert len(tune["trials"]) == 2 and tune["best"]["width"] in (0.0625, 0.125, 0.25)
    assert "best trial:" in proc.stdout
    assert list((run_dir / "tb" / "tune").rglob("events.out.tfevents.*"))
