"""Distillation (--loss=distill) and agreement with the teacher, on hand-computed values and a
tiny soft-labelled dataset written here (random mels whose bands follow the soft labels)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tftag import evaluate, train
from tftag.storage import data
from tftag.study import sweep
from tftag.experiment import LOSSES, TrainConfig
from tftag.features import MelConfig
from tftag.models import ModelConfig

TAGS = ("a", "b", "c", "d", "e", "f")
MEL = MelConfig(16000, 16, 2, "log", 3.0)  # read as hop ×2 log; stored as hop-1 power
SPLITS = {"train": 24, "valid": 8, "test": 8}


def write_dataset(directory, teacher: bool = True, seed: int = 0) -> str:
    """A dataset directory of random clips: soft labels p ~ U(0, 1) per tag (hard labels: each
    clip's top 2), and a mel whose band pair 2t..2t+1 is louder the higher p_t (learnable)."""
    rng = np.random.default_rng(seed)
    base = MelConfig(MEL.sr, MEL.n_mels, 1, "power", MEL.duration)
    frames = base.n_frames
    version = data.tags_version(TAGS)
    for split, n in SPLITS.items():
        records = []
        for i in range(n):
            soft = rng.uniform(0.0, 1.0, len(TAGS)).astype(np.float32)
            hard = data.multi_hot(np.argsort(-soft, kind="stable")[:2], len(TAGS))
            mel = rng.uniform(0.5, 1.5, (frames, base.n_mels)).astype(np.float32) * 1e-3
            mel[:, 0:12] *= np.repeat(1.0 + 20.0 * soft, 2)[None]
            records.append(data.serialize_example(
                f"{split}{i}", split, mel, base, hard, version,
                soft_labels=soft if teacher else None))
        data.write_tfrecord_atomic(data.shard_path(str(directory), base.base_name, split, 0, 1),
                                   records)
    meta = data.dataset_metadata(
        configs=[MEL], mel_dtype="float32", tags=TAGS, splits=SPLITS,
        shards={s: 1 for s in SPLITS}, source={"test": "tests/test_train_distill.py"},
        extra={"labels": "teacher:MTT_musicnn" if teacher else "catalog"})
    data.write_json_atomic(str(directory / data.DATASET_JSON), meta)
    return str(directory)


@pytest.fixture(scope="module")
def soft_dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("soft"))


@pytest.fixture(scope="module")
def hard_dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("hard"), teacher=False)


# ----------------------------------------------------------------------------- the loss

LOGITS = np.array([[0.5, -1.0, 2.0], [0.0, 1.5, -0.5]], np.float32)
SOFT = np.array([[0.9, 0.2, 0.6], [0.1, 0.7, 0.4]], np.float32)
HARD = np.array([[1, 0, 1], [0, 1, 0]], np.float32)


def test_distill_loss_is_bce_against_soft_targets():
    # By hand: -(p·log σ(z) + (1 - p)·log(1 - σ(z))) per tag, mean over tags.
    # clip 0: z=0.5, p=0.9: 0.9·0.474077 + 0.1·0.974077 = 0.524077
    #         z=-1,  p=0.2: 0.2·1.313262 + 0.8·0.313262 = 0.513262
    #         z=2,   p=0.6: 0.6·0.126928 + 0.4·2.126928 = 0.926928   -> mean 0.654756
    # clip 1: z=0,   p=0.1: log 2                         = 0.693147
    #         z=1.5, p=0.7: 0.7·0.201413 + 0.3·1.701413 = 0.651413
    #         z=-0.5,p=0.4: 0.4·0.974077 + 0.6·0.474077 = 0.674077   -> mean 0.672879
    got = train.per_example_loss(SOFT, LOGITS).numpy()
    np.testing.assert_allclose(got, [0.654756, 0.672879], atol=2e-6)
    sigma = 1 / (1 + np.exp(-LOGITS.astype(np.float64)))
    formula = -(SOFT * np.log(sigma) + (1 - SOFT) * np.log(1 - sigma)).mean(axis=1)
    np.testing.assert_allclose(got, formula, rtol=1e-5)
    # bce: the same formula on 0/1 labels: (0.474077 + 0.313262 + 0.126928) / 3 and
    # (0.693147 + 0.201413 + 0.474077) / 3.
    np.testing.assert_allclose(train.per_example_loss(HARD, LOGITS).numpy(),
                               [0.304756, 0.456212], atol=2e-6)
    assert train.TARGETS == {"bce": "labels", "distill": "soft_labels"}
    assert set(train.TARGETS) == set(LOSSES)


def test_train_config_loss_and_flag():
    assert TrainConfig().loss == "bce"
    assert TrainConfig(loss="distill").loss == "distill"
    with pytest.raises(ValueError, match="loss must be one of bce, distill, got 'kl'"):
        TrainConfig(loss="kl")
    from absl.testing import flagsaver

    from tftag import main

    with flagsaver.flagsaver():
        main.FLAGS(["tftag", "--loss=distill", "--resolutions=sr16000-mel16-hop2-log",
                    "--duration=3", "--run_dir=/tmp/unused"])
        assert main.build_experiment().train.loss == "distill"


def test_make_dataset_targets(soft_dataset, hard_dataset):
    stored = {e["clip_id"]: e for e in _stored(soft_dataset, "valid")}
    x, y = next(iter(data.make_dataset(soft_dataset, MEL, "valid", 8, targets="soft_labels")))
    batch = next(iter(data.make_dataset(soft_dataset, MEL, "valid", 8, as_dict=True)))
    ids = [c.decode() for c in batch["clip_id"].numpy()]
    np.testing.assert_array_equal(y.numpy(), np.stack([stored[i]["soft"] for i in ids]))
    np.testing.assert_array_equal(batch["soft_labels"].numpy(), y.numpy())
    assert y.dtype.name == "float32" and y.shape == (8, len(TAGS))
    _, hard = next(iter(data.make_dataset(soft_dataset, MEL, "valid", 8)))  # default: labels
    np.testing.assert_array_equal(hard.numpy(), batch["labels"].numpy())
    np.testing.assert_array_equal(hard.numpy().sum(axis=1), 2)
    catalog = next(iter(data.make_dataset(hard_dataset, MEL, "valid", 8, as_dict=True)))
    assert "soft_labels" not in catalog
    with pytest.raises(ValueError, match="no soft labels"):
        data.make_dataset(hard_dataset, MEL, "valid", 8, targets="soft_labels")
    with pytest.raises(ValueError, match="targets must be one of labels, soft_labels"):
        data.make_dataset(soft_dataset, MEL, "valid", 8, targets="probs")


def _stored(dataset_dir, split):
    import tensorflow as tf

    for record in tf.data.TFRecordDataset(data.shard_files(dataset_dir, MEL, split)):
        parsed = data.parse_example(record)
        yield {"clip_id": parsed["clip_id"].numpy().decode(), "soft": parsed["soft_labels"].numpy()}


# ----------------------------------------------------------------------------- agreement

TEACHER = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.4, 0.6]])
STUDENT = np.array([[0.7, 0.2, 0.1, 0.6], [0.3, 0.9, 0.2, 0.8]])


def test_agreement_hand_computed():
    # top-2: clip 0 teacher {0, 2}, student {0, 3} -> 1/2; clip 1 teacher {1, 3}, student {1, 3}
    # -> 2/2; mean 0.75. Pearson per clip: 0.16 / sqrt(0.35 · 0.26) = 0.530395 and
    # 0.24 / sqrt(0.2 · 0.37) = 0.882258 (mean 0.706327); over all 8 values (both means 0.475):
    # 0.415 / sqrt(0.555 · 0.675) = 0.678032.
    a = evaluate.agreement(TEACHER, STUDENT, k=2)
    assert a["top2_overlap"] == pytest.approx(0.75)
    assert a["correlation"] == pytest.approx(0.678032, abs=1e-6)
    assert a["correlation_per_clip"] == pytest.approx(0.706327, abs=1e-6)
    # k = 1: argmax 0 vs 0, 1 vs 1; k = 4: all tags.
    assert evaluate.agreement(TEACHER, STUDENT, k=1)["top1_overlap"] == 1.0
    assert evaluate.agreement(TEACHER, STUDENT, k=4)["top4_overlap"] == 1.0
    # Default k = 5 on 6 tags: [0..5] vs reversed -> top-5 share 4 tags.
    t = np.array([[0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])
    five = evaluate.agreement(t, t[:, ::-1])
    assert five["top5_overlap"] == pytest.approx(0.8)
    assert five["correlation"] == pytest.approx(-1.0)
    same = evaluate.agreement(TEACHER, TEACHER, k=3)
    assert same == pytest.approx({"top3_overlap": 1.0, "correlation": 1.0, "correlation_per_clip": 1.0})
    # A constant student row has no per-clip correlation: left out of the mean.
    flat = evaluate.agreement(TEACHER, np.array([[0.5] * 4, STUDENT[1]]), k=2)
    assert flat["correlation_per_clip"] == pytest.approx(0.882258, abs=1e-6)
    with pytest.raises(ValueError, match="must be equal"):
        evaluate.agreement(TEACHER, STUDENT[:, :3])
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        evaluate.agreement(TEACHER, STUDENT)  # k = 5 > 4 tags


def test_metrics_report_agreement():
    y_true = (TEACHER > 0.45).astype(int)
    plain = evaluate.macro_metrics(y_true, STUDENT, ["a", "b", "c", "d"])
    assert plain.top5_overlap is None and plain.prob_correlation is None
    assert "teacher agreement" not in evaluate.format_per_tag(plain)
    m = evaluate.with_agreement(plain, TEACHER, STUDENT)  # 4 tags: top-4 overlap
    assert m.top5_overlap == 1.0
    assert m.prob_correlation == pytest.approx(0.678032, abs=1e-6)
    assert m.prob_correlation_per_clip == pytest.approx(0.706327, abs=1e-6)
    assert m.as_dict()["prob_correlation"] == m.prob_correlation
    last = evaluate.format_per_tag(m).splitlines()[-1]
    assert last.startswith("macro (")
    assert last.endswith("; teacher agreement: top-5 overlap 1.0000, probability correlation "
                         "0.6780 (per clip 0.7063)")
    # Sweep rows and table: agreement columns only when present.
    base = {"model": "vgg", "preset": "paper", "width": 0.1, "resolution": "sr16000-mel16-hop1-log",
            "sr": 16000, "n_mels": 16, "hop_factor": 1, "compression": "log", "gmacs": 0.1,
            "storage_bytes": 1024, "train_seconds": 1.0, "test_pr_auc": 0.5}
    runs = [dict(base, seed=s, test_roc_auc=0.7 + s / 10, top5_overlap=0.5 + s / 10,
                 prob_correlation=0.6) for s in (0, 1)]
    rows = sweep.summarize(runs)
    assert rows[0]["top5_overlap_mean"] == pytest.approx(0.55)
    assert rows[0]["prob_correlation_std"] == pytest.approx(0.0)
    table = sweep.markdown_table(rows)
    assert "top-5 overlap | prob. corr. |" in table and "0.550 ± 0.071 | 0.600 ± 0.000 |" in table
    assert {"top5_overlap", "prob_correlation"} <= set(sweep.RESULT_FIELDS)
    plain_rows = sweep.summarize([dict(r, top5_overlap=None, prob_correlation=None) for r in runs])
    assert "top5_overlap_mean" not in plain_rows[0]
    assert "overlap" not in sweep.markdown_table(plain_rows)


# ----------------------------------------------------------------------------- training


def test_distill_training_run(soft_dataset, hard_dataset, tmp_path):
    mc = ModelConfig("vgg", width=0.05)
    cfg = TrainConfig(batch_size=8, epochs=3, steps_per_epoch=3, patience=0, seed=1,
                      learning_rate=1e-2, loss="distill")
    out = train.train(soft_dataset, MEL, mc, cfg, str(tmp_path / "distill"))
    history = json.loads((tmp_path / "distill" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2] == [h["epoch"] for h in out["history"]]
    losses = [h["loss"] for h in history]
    assert losses[-1] < losses[0], losses
    # The soft-label BCE is bounded below by the targets' mean entropy (> 0), unlike 0/1 labels.
    p = np.concatenate([e["soft"][None] for e in _stored(soft_dataset, "train")])
    entropy = float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))
    assert min(losses) > entropy - 1e-3
    assert 0.0 <= out["best_valid_roc_auc"] <= 1.0
    model = train.load_best(str(tmp_path / "distill"), soft_dataset, MEL, mc)
    metrics = evaluate.evaluate(model, soft_dataset, MEL, "valid", TAGS)
    assert metrics.n_clips == 8 and metrics.top5_overlap is not None
    assert -1.0 <= metrics.prob_correlation <= 1.0
    assert "teacher agreement: top-5 overlap" in evaluate.format_per_tag(metrics)
    # bce on the same data trains on the hard labels: another first loss.
    bce = train.train(soft_dataset, MEL, mc, dataclasses.replace(cfg, loss="bce", epochs=1),
                      str(tmp_path / "bce"))
    assert bce["history"][0]["loss"] != pytest.approx(losses[0], rel=1e-3)
    # distill on a catalogue-labelled dataset: a clear error naming the flag and the dataset.
    with pytest.raises(ValueError, match=r"--loss=distill .* dataset .*hard.* labelled 'catalog'"):
        train.train(hard_dataset, MEL, mc, cfg, str(tmp_path / "bad"))
    assert not (tmp_path / "bad" / "history.json").exists()
