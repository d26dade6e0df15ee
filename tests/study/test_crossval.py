"""Cross-validation by track group (tftag.storage.folds, tftag.study.crossval) and training to convergence
(early stopping on the validation loss, stop reasons), on a tiny teacher-labelled dataset
written here: 14 track groups of 1-4 clips, stored at two resolutions (16 and 8 bands)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from conftest import run_module
from tftag import patches, train
from tftag.runs import runfiles
from tftag.storage import data, folds
from tftag.study import crossval, status
from tftag.experiment import DataConfig, Experiment, ExportConfig, TrainConfig
from tftag.features import MelConfig
from tftag.models import ModelConfig

TAGS = ("a", "b", "c", "d", "e", "f")
MEL16 = MelConfig(16000, 16, 2, "log", 3.0)
MEL8 = MelConfig(16000, 8, 2, "log", 3.0)
# Track group g has GROUP_SIZES[g] clips "pkg/track{g}.ogg#00k"; some tracks are named twice
# (near-duplicate versions) through dataset.json "groups": track 13 joins group of track 12.
GROUP_SIZES = (3, 1, 4, 2, 3, 1, 2, 4, 3, 2, 1, 3, 2, 2)
SPLITS = ("train", "valid", "test")


def _clip_ids() -> list[str]:
    return [f"pkg/track{g:02d}.ogg#{k:03d}" for g, n in enumerate(GROUP_SIZES) for k in range(n)]


def write_dataset(directory, learnable: bool, seed: int = 0) -> str:
    """Soft labels p ~ U(0, 1) (hard labels: top 2). ``learnable``: bands 2t, 2t+1 grow with
    p_t; else the mel is noise independent of the labels (nothing to learn: the validation loss
    cannot improve for long)."""
    rng = np.random.default_rng(seed)
    version = data.tags_version(TAGS)
    ids = _clip_ids()
    records = {(m, s): [] for m in (16, 8) for s in SPLITS}
    splits = {s: 0 for s in SPLITS}
    for i, clip_id in enumerate(ids):
        split = SPLITS[i % 3]  # catalogue splits, ignored by the folds
        splits[split] += 1
        soft = rng.uniform(0.0, 1.0, len(TAGS)).astype(np.float32)
        hard = data.multi_hot(np.argsort(-soft, kind="stable")[:2], len(TAGS))
        for n_mels in (16, 8):
            base = MelConfig(16000, n_mels, 1, "power", 3.0)
            mel = rng.uniform(0.5, 1.5, (base.n_frames, n_mels)).astype(np.float32) * 1e-3
            if learnable:
                mel[:, 0:min(12, n_mels)] *= np.repeat(1.0 + 20.0 * soft, 2)[None, :n_mels]
            records[n_mels, split].append(data.serialize_example(
                clip_id, split, mel, base, hard, version, soft_labels=soft))
    for (n_mels, split), recs in records.items():
        base = MelConfig(16000, n_mels, 1, "power", 3.0)
        data.write_tfrecord_atomic(data.shard_path(str(directory), base.base_name, split, 0, 1),
                                   recs)
    meta = data.dataset_metadata(
        configs=[MEL16, MEL8], mel_dtype="float32", tags=TAGS, splits=splits,
        shards={s: 1 for s in SPLITS}, source={"test": "tests/study/test_crossval.py"},
        extra={"labels": "teacher:MTT_musicnn", "teacher": {"name": "MTT_musicnn", "top_k": 2},
               "groups": {c: "pkg:track12" for c in ids if c.startswith("pkg/track13")}})
    data.write_json_atomic(str(directory / data.DATASET_JSON), meta)
    return str(directory)


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("learnable"), learnable=True)


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("noise"), learnable=False)


def _groups() -> dict[str, str]:
    return folds.clip_groups(_clip_ids(), {"groups": {c: "pkg:track12" for c in _clip_ids()
                                                      if c.startswith("pkg/track13")}})


# ----------------------------------------------------------------------------- folds


def test_clip_groups_stored_debian_tracks_and_default():
    ids = ["pkg/a.ogg#000", "pkg/a.ogg#001", "pkg/a_v2.ogg#000", "synth000001"]
    meta = {"groups": {"pkg/a_v2.ogg#000": "pkg:a"},
            "source": {"tracks": [{"package": "pkg", "path": "a.ogg", "group": "pkg:a"}]}}
    assert folds.clip_groups(ids, meta) == {"pkg/a.ogg#000": "pkg:a", "pkg/a.ogg#001": "pkg:a",
                                            "pkg/a_v2.ogg#000": "pkg:a",
                                            "synth000001": "synth000001"}
    # Without records: a segment's file is its group, a whole clip its own.
    assert folds.clip_groups(ids, {}) == {"pkg/a.ogg#000": "pkg/a.ogg",
                                          "pkg/a.ogg#001": "pkg/a.ogg",
                                          "pkg/a_v2.ogg#000": "pkg/a_v2.ogg",
                                          "synth000001": "synth000001"}


@pytest.mark.parametrize("k", [2, 3, 5])
def test_every_clip_tested_once_groups_never_split(k):
    groups = _groups()
    config = folds.FoldConfig(folds=k, seed=7)
    parts = [folds.fold_parts(groups, config, f) for f in range(k)]
    tested = sorted(c for p in parts for c in p.test)
    assert tested == sorted(groups)  # every clip exactly once
    for p in parts:
        assert set(p.train) | set(p.valid) | set(p.test) == set(groups)
        assert not (set(p.train) & set(p.valid) or set(p.train) & set(p.test)
                    or set(p.valid) & set(p.test))
        part_of_group: dict[str, str] = {}
        for name in folds.PARTS:
            for c in p.part(name):
                assert part_of_group.setdefault(groups[c], name) == name, (c, name)
        assert p.valid and p.train
        # ≈ 10 % of the training part (whole groups: at most one group more)
        assert len(p.valid) < 0.1 * (len(p.train) + len(p.valid)) + max(GROUP_SIZES)
    fold_of = {groups[c]: p.fold for p in parts for c in p.test}
    assert len(fold_of) == len(set(groups.values()))  # a group sits in one fold
    assert "pkg/track13.ogg" not in fold_of and "pkg:track12" in fold_of  # stored group used
    sizes = [len(p.test) for p in parts]
    assert max(sizes) - min(sizes) <= max(GROUP_SIZES)  # balanced by clips
    folds.check_partition(parts, groups)


def test_training_crops_join_training_parts_only():
    """Crops of a group join the training part of the folds that train on it, and no other part;
    the folds themselves are those of the clips alone."""
    groups = _groups()
    crops = {f"{c}@15s": g for c, g in groups.items()}  # a crop beside every clip
    config = folds.FoldConfig(folds=3, seed=7)
    for f in range(3):
        plain = folds.fold_parts(groups, config, f)
        parts = folds.add_crops(plain, groups, crops)
        assert (parts.valid, parts.test) == (plain.valid, plain.test)
        training = {groups[c] for c in plain.train}
        assert set(parts.train) == set(plain.train) | {c for c, g in crops.items() if g in training}
        assert list(parts.train) == sorted(parts.train) and len(parts.train) == 2 * len(plain.train)
    assert folds.add_crops(plain, groups, {}) is plain


def test_folds_are_seeded():
    groups = _groups()
    a = [folds.fold_parts(groups, folds.FoldConfig(3, seed=0), f) for f in range(3)]
    b = [folds.fold_parts(groups, folds.FoldConfig(3, seed=0), f) for f in range(3)]
    c = [folds.fold_parts(groups, folds.FoldConfig(3, seed=1), f) for f in range(3)]
    assert a == b
    assert [p.test for p in a] != [p.test for p in c]
    # The clip order given does not matter.
    shuffled = dict(reversed(list(groups.items())))
    assert folds.fold_parts(shuffled, folds.FoldConfig(3), 1) == a[1]


def test_fold_config_errors():
    with pytest.raises(ValueError, match=r"--folds must be >= 2, got 1"):
        folds.FoldConfig(folds=1)
    with pytest.raises(ValueError, match=r"--fold must be in 0..2 \(--folds=3\), got 3"):
        folds.FoldConfig(folds=3, fold=3)
    with pytest.raises(ValueError, match=r"--folds=20: the dataset has only 14 track groups"):
        folds.fold_of_groups(_groups(), 20)
    assert folds.FoldConfig(4, fold=2).selected == (2,)
    assert folds.FoldConfig(3).selected == (0, 1, 2)


def _experiment(dataset_dir, tmp_path, **train_changes) -> Experiment:
    cfg = TrainConfig(batch_size=8, epochs=2, patience=3, seed=0, learning_rate=1e-2,
                      loss="distill", monitor="valid_loss", patience_unit="passes",
                      **train_changes)
    return Experiment((MEL16, MEL8), ModelConfig("vgg", width=0.05), cfg,
                      DataConfig(dataset_dir=dataset_dir), ExportConfig(enabled=False),
                      run_dir=str(tmp_path / "run"), folds=folds.FoldConfig(3),
                      results_dir=str(tmp_path / "results"))


def test_same_folds_for_every_resolution(learnable, tmp_path):
    exp = _experiment(learnable, tmp_path)
    groups, parts = crossval.dataset_folds(learnable, exp)
    assert sorted(groups) == sorted(_clip_ids())
    for config in (MEL16, MEL8):  # the clips of each stored base give the same folds
        ids = data.clip_ids(learnable, config)
        assert ids == sorted(_clip_ids())
        again = folds.clip_groups(ids, json.loads(open(os.path.join(
            learnable, data.DATASET_JSON)).read()))
        assert {k: folds.fold_parts(again, exp.folds, k) for k in range(3)} == parts
    # The reader keeps exactly a part's clips, at either resolution.
    for config in (MEL16, MEL8):
        ds = data.make_dataset(learnable, config, None, 4, as_dict=True, clips=parts[1].valid)
        seen = sorted(c.decode() for b in ds for c in b["clip_id"].numpy())
        assert seen == list(parts[1].valid)


def test_experiment_checks_patience_and_round_trips(learnable, tmp_path):
    exp = _experiment(learnable, tmp_path)
    assert Experiment.from_dict(exp.to_dict()) == exp
    with pytest.raises(ValueError, match=r"--patience must be >= 3 .* with --folds, got 2"):
        dataclasses.replace(exp, train=dataclasses.replace(exp.train, patience=2))


# ----------------------------------------------------------------------------- training


def test_patience_in_passes():
    cfg = TrainConfig(batch_size=8, patience=3, patience_unit="passes", steps_per_epoch=2)
    assert train.patience_epochs(cfg, 40) == 8  # 5 steps a pass, 15 steps = 7.5 epochs
    assert train.patience_epochs(dataclasses.replace(cfg, steps_per_epoch=None), 40) == 3
    assert train.patience_epochs(dataclasses.replace(cfg, patience_unit="epochs"), 40) == 3


def test_a_patch_models_pass_covers_its_audio():
    # 40 clips of 10 windows, batch 8: a pass is 50 steps of random patches.
    cfg = TrainConfig(batch_size=8, patience=3, patience_unit="passes")
    assert train.steps_per_pass(40, 8, 10) == 50
    assert train.epoch_steps(cfg, 40, 10) == 50  # one epoch = one pass over the audio
    assert train.patience_epochs(cfg, 40, 10) == 3
    assert train.epoch_steps(cfg, 40, 1) is None  # whole clips: one pass, no repeat
    halves = dataclasses.replace(cfg, steps_per_epoch=25)
    assert train.epoch_steps(halves, 40, 10) == 25 and train.patience_epochs(halves, 40, 10) == 6
    by_epochs = dataclasses.replace(cfg, patience_unit="epochs")
    assert train.epoch_steps(by_epochs, 40, 10) is None  # outside cross-validation: unchanged


def test_a_patch_models_epoch_in_a_fold_is_one_pass_over_its_audio(learnable, tmp_path):
    parts = folds.fold_parts(_groups(), folds.FoldConfig(3), 0)
    mc = ModelConfig("vgg", width=0.05, patch_seconds=1.0)
    windows = patches.n_windows(MEL16.n_frames, mc.patch_frames(MEL16))
    assert windows == 3  # 93 frames, 31-frame patches
    cfg = TrainConfig(batch_size=8, epochs=1, patience=3, seed=0, loss="distill",
                      monitor="valid_loss", patience_unit="passes")
    out = train.train(learnable, MEL16, mc, cfg, str(tmp_path / "run"), fold=parts)
    assert out["history"][0]["steps"] == -(-len(parts.train) * windows // 8)
    assert out["patience_epochs"] == 3

def test_stop_reasons_plateau_and_cap(noise, learnable, tmp_path):
    groups = _groups()
    parts = folds.fold_parts(groups, folds.FoldConfig(3), 0)
    mc = ModelConfig("vgg", width=0.05)
    # Noise: the untrained model's ~0.5 is already the best guess; training overfits the noise
    # and the validation loss plateaus: patience (3 passes = 3 epochs) runs out before the cap.
    cfg = TrainConfig(batch_size=8, epochs=15, patience=3, seed=0, learning_rate=3e-2,
                      loss="distill", monitor="valid_loss", patience_unit="passes")
    out = train.train(noise, MEL16, mc, cfg, str(tmp_path / "plateau"), fold=parts)
    assert out["stop_reason"] == "plateau", [h["valid_loss"] for h in out["history"]]
    assert out["epochs_done"] == out["best_epoch"] + 1 + 3 < 15
    losses = [h["valid_loss"] for h in out["history"]]
    assert out["best_valid_loss"] == min(losses) == losses[out["best_epoch"]]
    assert all(h["steps"] == -(-len(parts.train) // 8) for h in out["history"])  # one pass
    # Learnable data, cap of 2 epochs < the patience: the cap ends it.
    capped = train.train(learnable, MEL16, mc, dataclasses.replace(cfg, epochs=2, learning_rate=1e-2),
                         str(tmp_path / "cap"), fold=parts)
    assert capped["stop_reason"] == "cap" and capped["epochs_done"] == 2
    # Resuming a finished run trains no more and keeps its reason.
    again = train.train(noise, MEL16, mc, cfg, str(tmp_path / "plateau"), fold=parts)
    assert again["stop_reason"] == "plateau" and again["epochs_done"] == out["epochs_done"]
    # The default (no fold) keeps the split-based ROC-AUC rule and reports a reason too.
    old = train.train(learnable, MEL16, mc, TrainConfig(batch_size=8, epochs=1, loss="distill"),
                      str(tmp_path / "splits"))
    assert old["stop_reason"] == "cap" and old["patience_epochs"] == 5
    assert "valid_loss" in old["history"][0]


def test_lr_reductions_lower_the_rate_at_each_plateau_and_resume(noise, tmp_path):
    parts = folds.fold_parts(_groups(), folds.FoldConfig(3), 0)
    mc = ModelConfig("vgg", width=0.05)
    cfg = TrainConfig(batch_size=8, epochs=40, patience=2, seed=0, learning_rate=3e-2,
                      loss="distill", monitor="valid_loss", patience_unit="passes",
                      lr_reductions=2, lr_factor=0.1)
    out = train.train(noise, MEL16, mc, cfg, str(tmp_path / "run"), fold=parts)
    rates = [h["learning_rate"] for h in out["history"]]
    assert out["stop_reason"] == "plateau" and out["lr_reductions"] == 2
    # Three stages, 3e-2 then 3e-3 then 3e-4, in order; each stage after the first starts
    # when the one before it went `patience` epochs without a better validation loss.
    stages = sorted(set(rates), reverse=True)
    assert stages == pytest.approx([3e-2, 3e-3, 3e-4])
    assert rates == sorted(rates, reverse=True)
    assert rates[-1] == pytest.approx(3e-4)
    losses = [h["valid_loss"] for h in out["history"]]
    assert out["best_valid_loss"] == min(losses)
    # A run stopped at its first plateau without reductions (an older recipe's run) resumes with
    # the reductions: it goes on from the plateau at the lower rate.
    first = train.train(noise, MEL16, mc, dataclasses.replace(cfg, lr_reductions=0),
                        str(tmp_path / "resumed"), fold=parts)
    assert first["stop_reason"] == "plateau" and first["lr_reductions"] == 0
    more = train.train(noise, MEL16, mc, cfg, str(tmp_path / "resumed"), fold=parts)
    assert more["lr_reductions"] == 2 and more["epochs_done"] > first["epochs_done"]
    assert more["history"][:first["epochs_done"]] == first["history"]
    assert more["history"][first["epochs_done"]]["learning_rate"] == pytest.approx(3e-3)
    # A cap that falls on a plateau with reductions left ended the run: "cap", not "plateau".
    capped = train.train(noise, MEL16, mc, dataclasses.replace(cfg, epochs=first["epochs_done"]),
                         str(tmp_path / "capped"), fold=parts)
    assert capped["epochs_done"] == first["epochs_done"] and capped["lr_reductions"] == 0
    assert capped["stop_reason"] == "cap"
    # Interrupted in a later stage, the rate is restored from the checkpoint: same history.
    part = train.train(noise, MEL16, mc, cfg, str(tmp_path / "cut"), fold=parts,
                       stop_after_epochs=first["epochs_done"] + 1)
    assert part["history"][-1]["learning_rate"] == pytest.approx(3e-3)
    whole = train.train(noise, MEL16, mc, cfg, str(tmp_path / "cut"), fold=parts)
    assert [h["learning_rate"] for h in whole["history"]] == rates
    assert [h["valid_loss"] for h in whole["history"]] == pytest.approx(losses, abs=1e-6)
    with pytest.raises(ValueError, match="lr_factor must be in"):
        TrainConfig(lr_factor=1.0)


def test_a_checkpoint_from_before_lr_reductions_resumes(noise, tmp_path):
    """Runs carried from older machines hold checkpoints without the learning-rate state: they
    resume (in their first stage) instead of failing the restore's object match."""
    import keras
    import tensorflow as tf

    from tftag.models import build

    parts = folds.fold_parts(_groups(), folds.FoldConfig(3), 0)
    mc = ModelConfig("vgg", width=0.05)
    cfg = TrainConfig(batch_size=8, epochs=40, patience=2, seed=0, learning_rate=3e-2,
                      loss="distill", monitor="valid_loss", patience_unit="passes",
                      lr_reductions=1, lr_factor=0.1)
    run = tmp_path / "old"
    first = train.train(noise, MEL16, mc, cfg, str(run), fold=parts, stop_after_epochs=2)
    # Rewrite its checkpoint as the code before --lr_reductions wrote it.
    model = build(mc, MEL16, len(TAGS))
    optimizer = keras.optimizers.Adam(3e-2)
    optimizer.build(model.trainable_variables)
    state = {"epoch": tf.Variable(0, dtype=tf.int64), "best": tf.Variable(0.0, dtype=tf.float64),
             "best_epoch": tf.Variable(0, dtype=tf.int64),
             "bad_epochs": tf.Variable(0, dtype=tf.int64)}
    old = tf.train.Checkpoint(model=model, optimizer=optimizer, **state)
    checkpoints = str(run / "checkpoints")
    old.restore(tf.train.latest_checkpoint(checkpoints)).expect_partial()
    for name in os.listdir(checkpoints):
        os.remove(os.path.join(checkpoints, name))
    tf.train.CheckpointManager(old, checkpoints, max_to_keep=1).save()
    saved = {n.split("/")[0] for n, _ in tf.train.list_variables(tf.train.latest_checkpoint(checkpoints))}
    assert "learning_rate" not in saved and "epoch" in saved
    resumed = train.train(noise, MEL16, mc, cfg, str(run), fold=parts)
    assert resumed["history"][:2] == first["history"]
    assert resumed["history"][2]["learning_rate"] == pytest.approx(3e-2)  # the first stage
    assert resumed["stop_reason"] == "plateau" and resumed["lr_reductions"] == 1


# ----------------------------------------------------------------------------- the sweep


def test_crossval_sweep_writes_contract_files_and_resumes(learnable, tmp_path):
    exp = dataclasses.replace(_experiment(learnable, tmp_path), mel_configs=(MEL8,))
    summary = crossval.run(exp)
    assert summary["runs"] == summary["ran"] == 3 and summary["done_before"] == 0
    out = tmp_path / "results"
    keys = sorted(os.listdir(out))
    assert keys == ["folds.json"] + [f"vgg-w0.05-{MEL8.name}-fold{k}-seed0" for k in range(3)]
    tested = []
    for k in range(3):
        d = out / f"vgg-w0.05-{MEL8.name}-fold{k}-seed0"
        result = json.loads((d / "result.json").read_text())
        assert set(crossval.RESULT_KEYS) <= set(result)
        assert (result["fold"], result["folds"], result["model"], result["width"],
                result["resolution"], result["seed"]) == (k, 3, "vgg", 0.05, MEL8.name, 0)
        for name in ("test_roc_auc", "test_pr_auc", "top5_overlap"):
            assert 0.0 <= result[name] <= 1.0
        assert -1.0 <= result["prob_correlation"] <= 1.0
        assert result["stop_reason"] == "cap" and result["epochs_done"] == 2
        assert [c["epoch"] for c in result["curve"]] == [0, 1]
        assert set(result["curve"][0]) == {"epoch", "train_loss", "valid_loss", "valid_roc_auc",
                                           "learning_rate"}
        assert result["lr_reductions"] == 0
        assert result["gmacs"] > 0 and result["storage_bytes"] == 4 * MEL8.n_frames * 8
        npz = np.load(d / "test_predictions.npz")
        assert set(npz.files) == set(crossval.NPZ_KEYS)
        n = result["n_test_clips"]
        assert npz["clip_id"].shape == (n,) and list(npz["clip_id"]) == sorted(npz["clip_id"])
        assert npz["probs"].shape == npz["teacher"].shape == (n, len(TAGS))
        assert npz["probs"].dtype == npz["teacher"].dtype == np.float16
        assert list(npz["tags"]) == list(TAGS)
        assert (npz["labels"].sum(axis=1) == 2).all()  # the stored hard labels: top 2
        assert ((npz["probs"] >= 0) & (npz["probs"] <= 1)).all()
        tested += list(npz["clip_id"])
    assert sorted(tested) == sorted(_clip_ids())  # pooled: every clip once
    record = json.loads((out / "folds.json").read_text())
    assert {c: v["fold"] for c, v in record["clips"].items()} == {
        c: k for k in range(3) for c in json.loads(
            (tmp_path / "run" / "runs" / f"vgg-w0.05-{MEL8.name}-fold{k}-seed0" / "fold.json"
             ).read_text())["test"]}
    # A rerun skips finished runs: nothing trained, files untouched.
    first = out / f"vgg-w0.05-{MEL8.name}-fold0-seed0" / "result.json"
    stamp = first.stat().st_mtime_ns
    os.remove(out / f"vgg-w0.05-{MEL8.name}-fold2-seed0" / "result.json")  # an unfinished run
    again = crossval.run(exp)
    assert (again["done_before"], again["ran"]) == (2, 1)
    assert first.stat().st_mtime_ns == stamp


def test_bad_fold_flags_are_short_errors(tmp_path):
    for args, message in ((("--folds=1",), "--folds must be >= 2, got 1"),
                          (("--folds=3", "--fold=3"), "--fold must be in 0..2 (--folds=3), got 3"),
                          (("--mode=how_low", "--folds=3"), "--mode=how_low runs on one fold: add "
                                                            "--fold=k (0 .. 2) to --folds=3"),
                          (("--mode=profile", "--fold=1"), "--folds/--fold: only --mode=sweep "
                                                           "or --mode=how_low or --mode=status use "
                                                           "folds, not --mode=profile")):
        proc = run_module("tftag.main", "--mode=sweep", f"--run_dir={tmp_path}", *args,
                          check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
        # (the mode checks run after Keras is imported: TensorFlow's start-up lines come first)
        assert "Traceback" not in proc.stderr and message in proc.stderr.splitlines()[-2]


# ----------------------------------------------------------------------------- --mode=status


def test_status_replay_and_passes_left():
    """The stopping rule of tftag.train replayed: reductions are the rate's drops, the count of
    passes without a better validation restarts at a best pass and at a reduction."""
    history = [{"best": True, "learning_rate": 1e-3}, {"best": False, "learning_rate": 1e-3},
               {"best": False, "learning_rate": 1e-3}, {"best": False, "learning_rate": 2e-4},
               {"best": True, "learning_rate": 2e-4}, {"best": False, "learning_rate": 2e-4}]
    assert status.replay(history) == (1, 1)
    assert status.replay(history[:3]) == (0, 2)
    assert status.replay([]) == (0, 0)
    assert status.replay([{"best": False}, {"best": False}]) == (0, 2)  # before rates were kept
    # patience 3, 2 reductions: a fresh run stops after 3 plateaus at the earliest
    assert status.passes_left(3, 2, 0, 0, passes=5, cap=60) == 9
    assert status.passes_left(3, 2, 1, 1, passes=5, cap=60) == 2 + 3
    assert status.passes_left(3, 2, 2, 3, passes=30, cap=60) == 0  # on its last plateau: done
    assert status.passes_left(3, 2, 1, 3, passes=30, cap=60) == 3  # a reduction is due
    assert status.passes_left(3, 2, 0, 0, passes=58, cap=60) == 2  # the cap comes first
    assert status.passes_left(0, 0, 0, 4, passes=4, cap=60) is None  # no early stopping
    # the stages of a run: where its reductions took effect
    assert [status.stage_start(history, k) for k in (0, 1, 2)] == [0, 3, None]


def test_status_expects_the_passes_finished_runs_trained_at_the_same_stage():
    """A run's passes left are estimated from the finished runs' passes after as many
    learning-rate reductions as it has had (a run on its last rate is a few passes from its
    stop), of its model and resolution, else of its model."""
    from types import SimpleNamespace

    def result(res, rates, model="vgg"):
        return {"model": model, "width": 0.125, "resolution": res, "epochs_done": len(rates),
                "curve": [{"epoch": e, "learning_rate": r} for e, r in enumerate(rates)]}

    def item(res, model="vgg"):
        return SimpleNamespace(model_config=SimpleNamespace(name=model, width=0.125),
                               mel_config=SimpleNamespace(name=res))

    finished = [result("A", [1e-3] * 8 + [2e-4] * 6 + [4e-5] * 4),  # stages: 18, 10, 4 passes
                result("A", [1e-3] * 10 + [2e-4] * 10 + [4e-5] * 3),  # 23, 13, 3
                {**result("A", [1e-3] * 30), "curve": [{"epoch": e} for e in range(30)]},  # no rates kept
                result("B", [1e-3] * 5 + [2e-4] * 2),  # 7, 2, never reduced twice
                result("A", [1e-3] * 50, model="musicnn")]
    assert [status.typical_stage(finished, item("A"), k) for k in (0, 1, 2)] == [23.0, 11.5, 3.5]
    # at B, no run reached a second reduction: the model's runs at any resolution that did
    assert [status.typical_stage(finished, item("B"), k) for k in (0, 1, 2)] == [7.0, 2.0, 3.5]
    assert status.typical_stage(finished, item("A", model="musicnn"), 1) is None
    assert status.typical_stage([], item("A")) is None


def test_status_of_a_sweep_done_started_and_pending(learnable, tmp_path):
    """One fold finished, one interrupted in a process's own run directory below the sweep's,
    one not started: states, passes, passes left and hours as the files say; the CLI prints the
    table and writes nothing."""
    exp = dataclasses.replace(_experiment(learnable, tmp_path, lr_reductions=1),
                              mel_configs=(MEL8,))
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, epochs=12))
    items = crossval.plan(exp)
    groups, parts = crossval.dataset_folds(learnable, exp)
    out = crossval.results_dir(exp)
    crossval.run_items(items[:1], parts, learnable, exp.train, exp.path("runs"), out)
    finished = json.loads(open(os.path.join(out, items[0].key, "result.json")).read())
    started_dir = os.path.join(exp.run_dir, "fold1", "runs", items[1].key)
    os.makedirs(started_dir)
    runfiles.write_json_atomic(os.path.join(started_dir, crossval.FOLD_JSON), parts[1].describe())
    part = train.train(learnable, MEL8, items[1].item.model_config, exp.train, started_dir,
                       fold=parts[1], stop_after_epochs=2)
    rows = status.status(exp, now=os.path.getmtime(os.path.join(started_dir, "history.json")) + 90)
    assert [(r.key, r.fold, r.state) for r in rows] == [
        (items[0].key, 0, "done"), (items[1].key, 1, "started"), (items[2].key, 2, "pending")]
    done, started, pending = rows
    assert (done.passes, done.best_pass, done.test_roc_auc, done.stop_reason, done.hours_left) == (
        finished["epochs_done"], finished["best_epoch"], finished["test_roc_auc"],
        finished["stop_reason"], 0.0)
    assert done.seconds_per_pass == pytest.approx(finished["train_seconds"] / finished["epochs_done"])
    history = part["history"]
    bad = 2 - 1 - max(h["epoch"] for h in history if h["best"])  # passes since the best one
    assert (started.passes, started.steps, started.reductions, started.bad_passes) == (2, 0, 0, bad)
    assert started.best_pass == part["best_epoch"] and started.patience == 3
    assert started.steps_per_pass == history[-1]["steps"] == -(-len(parts[1].train) // 8)
    assert started.min_left == (3 - bad) + 1 * 3  # this plateau, then one per reduction left
    assert started.expected_left == max(started.min_left, finished["epochs_done"] - 2)
    assert started.seconds_per_pass == pytest.approx(
        np.mean([h["epoch_seconds"] + h["valid_seconds"] for h in history]))
    assert started.saved_seconds_ago == pytest.approx(90, abs=1)
    assert started.hours_left == pytest.approx(
        started.expected_left * started.seconds_per_pass / 3600)
    # not started: the passes of the finished run, at the median speed of the other two
    assert pending.expected_left == finished["epochs_done"]
    assert pending.seconds_per_pass == pytest.approx(
        np.median([done.seconds_per_pass, started.seconds_per_pass]))
    summary = status.summary(rows)
    assert (summary["runs"], summary["done"], summary["started"], summary["pending"]) == (3, 1, 1, 1)
    assert summary["folds"]["1"] == {"runs_left": 1, "hours_left": round(started.hours_left, 2)}
    text = status.table(rows)
    assert text.count("\n") == 4 and f"| {items[1].key} | started | 2 |" in text
    assert f"{100 * finished['test_roc_auc']:.2f} ({finished['stop_reason']})" in text
    # The CLI: the same table from the sweep's flags; no record written; without folds, an error.
    args = [f"--dataset_dir={learnable}", f"--run_dir={exp.run_dir}", f"--results_dir={out}",
            f"--resolutions={MEL8.name}", "--duration=3", "--width=0.05", "--batch_size=8",
            "--epochs=12", "--patience=3", "--lr_reductions=1", "--loss=distill", "--repeats=1"]
    proc = run_module("tftag.main", "--mode=status", "--folds=3", *args)
    assert f"| {items[2].key} | pending |" in proc.stdout
    assert "1 of 3 runs done, 1 started, 1 not started" in proc.stdout
    assert "fold 1: 1 run left" in proc.stdout and "fold 2: 1 run left" in proc.stdout
    assert not os.path.exists(os.path.join(exp.run_dir, "flags.txt"))
    assert not os.path.exists(os.path.join(exp.run_dir, "status"))
    proc = run_module("tftag.main", "--mode=status", *args, check=False)
    assert proc.returncode == 2 and "--mode=status reports a cross-validated sweep" in proc.stderr
    # A run just started (its fold written, no pass yet): the speed of the runs at its resolution.
    fresh = os.path.join(exp.run_dir, "fold2", "runs", items[2].key)
    os.makedirs(fresh)
    runfiles.write_json_atomic(os.path.join(fresh, crossval.FOLD_JSON), parts[2].describe())
    just = status.status(exp)[2]
    assert (just.state, just.passes, just.best_pass, just.min_left) == ("started", 0, None, 3 + 3)
    assert just.steps_per_pass == -(-len(parts[2].train) // 8)
    assert just.expected_left == max(6, finished["epochs_done"])
    assert just.seconds_per_pass == pending.seconds_per_pass


# ----------------------------------------------------------------------------- how_low on a fold


def test_how_low_on_a_fold_trains_validates_and_tests_as_the_sweep_on_that_fold(learnable,
                                                                                 tmp_path):
    from absl.testing import flagsaver

    from tftag import main
    from tftag.search import how_low, tuner

    sweep_exp = dataclasses.replace(_experiment(learnable, tmp_path), mel_configs=(MEL8,),
                                    folds=folds.FoldConfig(3, fold=1))
    crossval.run(sweep_exp)
    key = f"vgg-w0.05-{MEL8.name}-fold1-seed0"
    swept = json.loads((tmp_path / "results" / key / "result.json").read_text())
    # One candidate, 2 epochs, factor 2: a 1-epoch trial, then promoted to 2 (resumed).
    search_exp = dataclasses.replace(sweep_exp, run_dir=str(tmp_path / "search"))
    summary = how_low.run(search_exp, how_low.SearchConfig(hyperband_factor=2))
    run_dir = tmp_path / "search"
    # The same clip ids in each part as the sweep's run on fold 1.
    assert json.loads((run_dir / "fold.json").read_text()) == json.loads(
        (tmp_path / "run" / "runs" / key / "fold.json").read_text())
    assert json.loads((run_dir / "how_low.json").read_text())["fold"] == {
        "fold": 1, "folds": 3, "seed": 0, "train_clips": swept["n_train_clips"],
        "valid_clips": swept["n_valid_clips"], "test_clips": swept["n_test_clips"]}
    # The top trial's validation curve is the sweep's, epoch by epoch (same data, same recipe).
    (row,) = how_low.read_front_csv(str(run_dir / "front.csv"))
    assert (row["epochs"], row["trials"], row["epochs_done"]) == (2, 2, 2)
    history = json.loads((run_dir / tuner.TRIALS / row["trial_id"] / "history.json").read_text())
    assert [(h["valid_loss"], h["valid_roc_auc"]) for h in history] == [
        (c["valid_loss"], c["valid_roc_auc"]) for c in swept["curve"]]
    assert row["val_roc_auc"] == swept["valid_roc_auc"]
    # The answer, retrained from its trial (already at the cap), is tested on the fold's test
    # clips: the sweep's record.
    retrained = json.loads((run_dir / "retrain" / "float32" / "results" / key / "result.json"
                            ).read_text())
    for name in ("test_roc_auc", "test_pr_auc", "valid_roc_auc", "n_test_clips", "epochs_done"):
        assert retrained[name] == swept[name], name
    assert summary["chosen_test_roc_auc"] == swept["test_roc_auc"]
    assert summary["search_compute"]["clip_gmacs"] == round(
        2 * swept["n_train_clips"] * swept["gmacs"], 3)
    # chosen.flags: a cross-validated sweep of the answer on the same fold.
    with flagsaver.flagsaver():
        main.FLAGS(["tftag", f"--flagfile={run_dir / 'chosen.flags'}"])
        exp = main.build_experiment()
        assert main.FLAGS.mode == "sweep"
    assert exp.folds == folds.FoldConfig(3, fold=1) and exp.mel_configs == (MEL8,)
    assert exp.train.monitor == "valid_loss" and exp.train.patience_unit == "passes"
