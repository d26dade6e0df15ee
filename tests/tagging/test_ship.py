"""Shipped students (issue 24): a final-student run with a held-out package (tftag.storage.folds,
tftag.train), --mode=ship (tftag.tagging.ship), the pretrained registry's shipped models
(tftag.models.pretrained), their cards (tftag.delivery.modelcards), tag and export.

A tiny teacher-labelled "debian" dataset is written here: three packages (pkga, pkgb, pkgc) of
track groups with 2 clips each, stored at 16 bands; pkgc's tracks exist as audio files in a fake
debian cache (the ship measures tagging speed on them). One 8-filter-ish VGG-CNN (width 0.05)
is trained 2 steps × 2 epochs with pkgc held out and shipped into a temporary models dir.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import ROOT, run_module, write_clip
from tftag.storage import data, folds
from tftag.experiment import DataConfig, Experiment, ExportConfig, TrainConfig
from tftag.features import MelConfig
from tftag.storage.folds import HeldoutConfig
from tftag.models import ModelConfig, pretrained

TAGS = ("rock", "pop", "piano", "drums", "ambient", "guitar")
MEL = MelConfig(16000, 16, 2, "log", 3.0)
TRACKS = {"pkga": 4, "pkgb": 4, "pkgc": 3}  # tracks per package, 2 clips each
LICENCES = {"pkga": "GPL-2+", "pkgb": "CC-BY-SA-3.0", "pkgc": "Artistic"}
SPLITS = ("train", "valid", "test")


def _clip_ids() -> list[str]:
    return [f"{p}/music/track{t}.wav#{k:03d}" for p, n in TRACKS.items() for t in range(n)
            for k in range(2)]


def write_dataset(directory, cache) -> str:
    """Soft labels p ~ U(0, 1), hard labels: top 2; bands 2t, 2t+1 grow with p_t (learnable)."""
    rng = np.random.default_rng(0)
    version = data.tags_version(TAGS)
    records = {s: [] for s in SPLITS}
    splits = {s: 0 for s in SPLITS}
    base = MEL.base
    tracks = []
    for i, clip_id in enumerate(_clip_ids()):
        split = SPLITS[i % 3]
        splits[split] += 1
        soft = rng.uniform(0.0, 1.0, len(TAGS)).astype(np.float32)
        hard = data.multi_hot(np.argsort(-soft, kind="stable")[:2], len(TAGS))
        mel = rng.uniform(0.5, 1.5, (base.n_frames, 16)).astype(np.float32) * 1e-3
        mel[:, :12] *= np.repeat(1.0 + 20.0 * soft, 2)[None, :]
        records[split].append(data.serialize_example(clip_id, split, mel, base, hard, version,
                                                     soft_labels=soft))
        package, path = clip_id.split("#")[0].split("/", 1)
        if clip_id.endswith("#000"):
            tracks.append({"package": package, "path": path, "group": f"{package}:{path}"})
            if package == "pkgc":  # the held-out package's audio, as the debian cache holds it
                audio = os.path.join(str(cache), "unpacked", package, path)
                os.makedirs(os.path.dirname(audio), exist_ok=True)
                write_clip(audio, 6.0, 16000, seed=i)
    for split, recs in records.items():
        data.write_tfrecord_atomic(data.shard_path(str(directory), base.base_name, split, 0, 1),
                                   recs)
    meta = data.dataset_metadata(
        configs=[MEL], mel_dtype="float32", tags=TAGS, splits=splits,
        shards={s: 1 for s in SPLITS},
        source={"catalog": "debian", "cache_dir": str(cache), "tracks": tracks,
                "packages": {p: {"licence": LICENCES[p], "tracks": n} for p, n in TRACKS.items()}},
        extra={"labels": "teacher:MTT_musicnn", "teacher": {"name": "MTT_musicnn", "top_k": 2}})
    data.write_json_atomic(str(directory / data.DATASET_JSON), meta)
    return str(directory)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("students"), tmp_path_factory.mktemp("cache"))


def _experiment(dataset_dir, run_dir, packages=("pkgc",),
                model: ModelConfig = ModelConfig("vgg", width=0.05)) -> Experiment:
    return Experiment(
        (MEL,), model,
        TrainConfig(batch_size=4, epochs=2, steps_per_epoch=2, patience=3, loss="distill",
                    monitor="valid_loss", patience_unit="passes"),
        DataConfig("csv", dataset_dir=dataset_dir, labels="teacher:MTT_musicnn"),
        ExportConfig(enabled=False), str(run_dir), heldout=HeldoutConfig(packages))


@pytest.fixture(scope="module")
def shipped(dataset, tmp_path_factory):
    """A final-student run (pkgc held out) shipped into a temporary models dir."""
    from tftag import train
    from tftag.tagging import ship

    run_dir = tmp_path_factory.mktemp("run")
    exp = _experiment(dataset, run_dir)
    exp.save()
    summary = train.run_train(exp)
    models_dir = tmp_path_factory.mktemp("models")
    out = ship.ship(str(run_dir), str(models_dir))
    return {"run_dir": str(run_dir), "models_dir": str(models_dir), "train": summary, **out}


@pytest.fixture
def registered(shipped, monkeypatch):
    """The shipped student in the registry for one test (removed after it)."""
    entry = pretrained.from_card(shipped["shipped"])
    monkeypatch.setitem(pretrained.REGISTRY._factories, entry.name, entry)
    return entry


# ----------------------------------------------------------------------------- held-out split


def _groups() -> dict[str, str]:
    return {c: c.split("#")[0] for c in _clip_ids()}


def test_heldout_split_keeps_the_package_out_of_training():
    parts = folds.heldout_parts(_groups(), HeldoutConfig(("pkgc",), valid_fraction=0.2))
    assert parts.test == tuple(sorted(c for c in _clip_ids() if c.startswith("pkgc/")))
    assert not any(c.startswith("pkgc/") for c in parts.train + parts.valid)
    assert sorted(parts.train + parts.valid + parts.test) == sorted(_clip_ids())
    # validation: whole groups, about a fifth of the 16 training clips, seeded
    assert len(parts.valid) == 4 and len({c.split("#")[0] for c in parts.valid}) == 2
    assert parts == folds.heldout_parts(_groups(), HeldoutConfig(("pkgc",), valid_fraction=0.2))
    other = folds.heldout_parts(_groups(), HeldoutConfig(("pkgc",), seed=3, valid_fraction=0.2))
    assert other.test == parts.test and other.valid != parts.valid
    two = folds.heldout_parts(_groups(), HeldoutConfig(("pkga", "pkgc")))
    assert {folds.clip_package(c) for c in two.test} == {"pkga", "pkgc"}
    assert {folds.clip_package(c) for c in two.train + two.valid} == {"pkgb"}


def test_heldout_errors_name_the_flag_and_the_packages():
    with pytest.raises(ValueError, match=r"^--heldout_packages: unknown package 'pkgz'; the "
                                         r"dataset's packages: pkga, pkgb, pkgc$"):
        folds.heldout_parts(_groups(), HeldoutConfig(("pkgc", "pkgz")))
    with pytest.raises(ValueError, match="holds out every package"):
        folds.heldout_parts(_groups(), HeldoutConfig(("pkga", "pkgb", "pkgc")))
    straddling = dict(_groups(), **{"pkgc/music/track0.wav#000": "pkga/music/track0.wav"})
    with pytest.raises(ValueError, match="inside and outside the held-out packages"):
        folds.heldout_parts(straddling, HeldoutConfig(("pkgc",)))
    with pytest.raises(ValueError, match="--heldout_packages is empty"):
        HeldoutConfig(())


def test_cli_unknown_heldout_package_is_a_short_error(dataset, tmp_path):
    proc = run_module("tftag.main", "--mode=train", f"--run_dir={tmp_path}",
                      f"--dataset_dir={dataset}", "--catalog=csv", "--labels=teacher:MTT_musicnn",
                      "--resolutions=sr16000-mel16-hop2-log", "--duration=3", "--loss=distill",
                      "--width=0.05", "--heldout_packages=pkgz", "--noexport", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert ("--heldout_packages: unknown package 'pkgz'; the dataset's packages: pkga, pkgb, "
            "pkgc") in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- train and ship


def test_final_student_run_trains_without_the_heldout_package(shipped):
    parts = json.load(open(os.path.join(shipped["run_dir"], "heldout.json")))
    assert parts["packages"] == ["pkgc"]
    assert not any(c.startswith("pkgc/") for c in parts["train"] + parts["valid"])
    assert sorted(parts["test"]) == sorted(c for c in _clip_ids() if c.startswith("pkgc/"))
    results = json.load(open(os.path.join(shipped["run_dir"], "results.json")))
    assert results["test"]["n_clips"] == 6  # every clip of pkgc, nothing else
    assert results["train"]["epochs_done"] == 2 and results["train"]["stop_reason"] == "cap"


def test_card_has_the_contract_keys_with_plausible_values(shipped):
    folder = shipped["shipped"]
    assert os.path.basename(folder) == shipped["name"] == "tftag_vgg_16x2"
    assert sorted(os.listdir(folder)) == ["card.json", "model.weights.h5"]
    card = json.load(open(os.path.join(folder, "card.json")))
    assert set(pretrained.CARD_KEYS + pretrained.LOADER_KEYS) <= set(card)
    assert (card["name"], card["resolution"], card["model"], card["width"]) == (
        "tftag_vgg_16x2", MEL.name, "vgg", 0.05)
    assert card["teacher"] == "MTT_musicnn" and card["tags"] == list(TAGS)
    assert card["window_seconds"] == pytest.approx(MEL.n_frames * 512 / 16000)
    assert card["training_packages"] == [
        {"package": "pkga", "licence": "GPL-2+", "clips": 8},
        {"package": "pkgb", "licence": "CC-BY-SA-3.0", "clips": 8}]
    assert card["heldout_packages"] == [{"package": "pkgc", "licence": "Artistic", "clips": 6}]
    assert card["heldout_clips"] == 6
    for key in ("top5_overlap", "roc_auc"):
        assert 0.0 <= card[key] <= 1.0
    assert -1.0 <= card["rank_correlation"] <= 1.0
    assert 0 < card["gmacs_per_window"] < 0.01 and card["parameters"] > 100
    assert card["gmacs_per_minute"] == pytest.approx(
        card["gmacs_per_window"] * 60 / card["window_seconds"], rel=1e-3)
    assert card["bytes_per_stored_clip"] == 4 * MelConfig(16000, 16, 2, "log").n_frames * 16
    assert card["weights_bytes"] == os.path.getsize(os.path.join(folder, "model.weights.h5"))
    assert set(card["tflite"]) == {"float16", "dynamic", "int8"}
    for row in card["tflite"].values():
        assert row["bytes"] > 1000 and 0.0 <= row["max_abs_diff"] < 0.5
    assert card["tflite"]["float16"]["max_abs_diff"] < 0.01
    # speed: the 3 held-out tracks of 6 s, tagged end to end
    assert card["speed"]["files"] == 3 and card["speed"]["minutes"] == pytest.approx(0.3)
    assert card["seconds_per_minute"] > 0


def _package_students() -> list[str]:
    """The students shipped inside the package (tftag/models/weights/<name>/card.json)."""
    return sorted(d for d in os.listdir(pretrained.WEIGHTS_DIR)
                  if os.path.exists(os.path.join(pretrained.WEIGHTS_DIR, d, "card.json")))


def test_ship_refuses_to_overwrite_and_names_the_fix(shipped):
    from tftag.tagging import ship

    with pytest.raises(FileExistsError, match="exists: give another --ship_name or --overwrite"):
        ship.ship(shipped["run_dir"], shipped["models_dir"])


def test_registry_discovers_shipped_models_and_rejects_bad_cards(shipped, tmp_path):
    code = ("from tftag.models import pretrained as p; e = p.get('tftag_vgg_16x2'); "
            "print(p.names(), p.students(), e.mel_config.name, e.window_frames)")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, TFTAG_MODELS_DIR=shipped["models_dir"]),
                         check=True).stdout
    students = sorted(_package_students() + ["tftag_vgg_16x2"])  # the package's own + the fixture's
    assert out.split("\n")[0] == (f"{sorted(['MTT_musicnn', 'MTT_vgg'] + students)} "
                                  f"{students} {MEL.name} {MEL.n_frames}")
    bad = tmp_path / "tftag_bad"
    bad.mkdir()
    (bad / "card.json").write_text('{"name": "tftag_bad", "resolution": "sr16000-mel16"}')
    with pytest.raises(ValueError, match=f"{bad / 'card.json'}: the model card misses model, "):
        pretrained.add_models_dir(str(tmp_path))
    (bad / "card.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"{bad / 'card.json'}: not a readable model card"):
        pretrained.add_models_dir(str(tmp_path))
    assert "tftag_bad" not in pretrained.names()


def test_describe_prints_the_card(registered, capsys):
    from tftag.delivery import modelcards

    modelcards.describe("tftag_vgg_16x2")
    text = capsys.readouterr().out
    card = registered.card
    assert f"resolution (MelConfig.name)                     {MEL.name}" in text
    assert f"held-out top-5 overlap with the teacher         {card['top5_overlap']:.3f}" in text
    assert "held-out packages (licence)                     pkgc (Artistic)" in text
    assert "training packages (licence)                     pkga (GPL-2+); pkgb (CC-BY-SA-3.0)" in text
    modelcards.describe("tftag_vgg_16x2", as_json=True)
    assert json.loads(capsys.readouterr().out) == card
    table = modelcards.markdown_table()
    rows = table.splitlines()
    names = sorted(["MTT_musicnn", "MTT_vgg", "tftag_vgg_16x2"] + _package_students())
    assert rows[0].startswith("| --pretrained | model | resolution |") and len(rows) == 2 + len(names)
    row = rows[2 + names.index("tftag_vgg_16x2")]
    assert row.startswith(f"| `tftag_vgg_16x2` | vgg | {MEL.name} | {card['window_seconds']:.2f} |")
    assert rows[2].startswith("| `MTT_musicnn` | musicnn | sr16000-mel96-hop1-log | 2.99 |")
    assert rows[2].count("—") >= 5  # a port has no held-out figures


def test_tag_a_short_file_with_the_card_tags_and_a_plot(registered, shipped, tmp_path):
    wav = write_clip(str(tmp_path / "song.wav"), 7.0, 22050, seed=3)
    out = tmp_path / "tags.json"
    proc = run_module("tftag.main", "--mode=tag", "--pretrained=tftag_vgg_16x2",
                      f"--models_dir={shipped['models_dir']}", f"--audio={tmp_path}",
                      f"--output={out}", "--plot", "--embeddings")
    assert "tagged 1/1 files with tftag_vgg_16x2" in proc.stdout
    result = json.loads(out.read_text())
    assert result["model"] == "tftag_vgg_16x2" and result["tags"] == list(TAGS)
    assert result["window_seconds"] == pytest.approx(registered.window_seconds)
    track = result["files"][wav]
    assert track["windows"] == 2 and set(track["probabilities"]) == set(TAGS)
    side = tmp_path / "tags_taggrams"
    assert (side / "song.png").read_bytes()[:4] == b"\x89PNG"
    emb = np.load(side / "song.embeddings.npz")
    assert emb["windows"].shape[0] == 2 and emb["mean"].ndim == 1
    # Tagging in process gives the same probabilities as the command.
    from tftag.tagging import tag

    (again,) = list(tag.tag_tracks(tag.Tagger.pretrained("tftag_vgg_16x2"), [wav]))
    np.testing.assert_allclose(again.probabilities,
                               [track["probabilities"][t] for t in TAGS], atol=1e-5)


def test_export_savedmodel_and_tflite(registered, dataset, tmp_path):
    import tensorflow as tf

    from tftag import experiment
    from tftag.delivery import export, tflite

    out = export.export_pretrained("tftag_vgg_16x2", experiment.ExportConfig(
        export_dir=str(tmp_path), tflite=("float16", "dynamic", "int8")), dataset)
    version = out["export_path"]
    assert version == str(tmp_path / "tftag_vgg_16x2" / "1")
    loaded = tf.saved_model.load(version)
    assert {"serving_default", "serving_example", "serving_waveform", "serving_window",
            "serving_track"} <= set(loaded.signatures)
    windows = np.random.default_rng(0).normal(size=(3, *MEL.shape)).astype(np.float32)
    got = loaded.signatures["serving_window"](mel=tf.constant(windows))["probabilities"].numpy()
    want = tf.sigmoid(registered.load()(windows, training=False)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert os.path.exists(os.path.join(version, "essentia", "tftag_vgg_16x2.pb"))
    card = json.load(open(os.path.join(version, "essentia", "tftag_vgg_16x2.json")))
    assert card["classes"] == list(TAGS) and "student of MTT_musicnn" in card["description"]
    summary = json.load(open(os.path.join(version, "tflite", tflite.SUMMARY_JSON)))
    assert set(summary["files"]) == {"float16", "dynamic", "int8"}
    for precision, row in summary["files"].items():
        assert os.path.getsize(os.path.join(version, "tflite", row["file"])) == row["bytes"]


def test_unknown_pretrained_name_lists_the_known_ones(shipped):
    proc = run_module("tftag.main", "--mode=describe", "--pretrained=tftag_vgg_99x9",
                      f"--models_dir={shipped['models_dir']}", check=False)
    assert proc.returncode == 2
    assert ("--pretrained='tftag_vgg_99x9'; known: MTT_musicnn, MTT_vgg, tftag_vgg_16x2"
            in proc.stderr), proc.stderr[-1500:]


def test_student_names():
    vgg = ModelConfig("vgg", width=0.125)
    assert pretrained.student_name(vgg, MelConfig(16000, 32, 4, "log")) == "tftag_vgg_32x4"
    assert pretrained.student_name(vgg, MelConfig(12000, 96, 1, "log")) == "tftag_vgg_96x1_sr12000"
    assert pretrained.student_name(ModelConfig("musicnn", width=0.25), MelConfig(
        16000, 96, 1, "log"), with_width=True) == "tftag_musicnn_96x1_w0.25"


def test_readme_card_table_is_generated_from_the_cards():
    from tftag.delivery import modelcards

    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = readme.index("<!-- model cards: generated by")
    table = readme[readme.index("\n", start) + 1:readme.index("<!-- end of model cards -->")]
    shipped = [n for n in pretrained.names() if pretrained.get(n).is_port
               or pretrained.get(n).directory.startswith(pretrained.WEIGHTS_DIR)]
    assert table.strip() == modelcards.markdown_table(shipped), (
        "README's model card table is stale: paste `python -m tftag.main --mode=describe "
        "--pretrained=all`")


def test_tagging_benchmark_runs_students_side_by_side(shipped, tmp_path):
    """benchmarks/tagging.py on two tiny files: MTT_musicnn, the student's SavedModel and TFLite
    paths, one JSON line with the ratios (the full benchmark is the lead's to run)."""
    for seed in range(2):
        write_clip(str(tmp_path / f"t{seed}.wav"), 4.0, 16000, seed=seed)
    proc = run_module("benchmarks.tagging", f"--audio={tmp_path}", "--in_process",
                      f"--models_dir={shipped['models_dir']}", "--model_only_windows=8",
                      "--students=tftag_vgg_16x2")  # not the package's own students too
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["students"] == ["tftag_vgg_16x2"]
    folder = result["folder"]
    assert folder["files"] == 2 and folder["minutes"] == pytest.approx(8 / 60, abs=0.01)
    assert folder["tftag_s_per_min"] > 0
    paths = folder["students"]["tftag_vgg_16x2"]
    assert set(paths) == {"savedmodel", "tflite_dynamic"}
    for row in paths.values():
        assert row["s_per_min"] > 0 and row["speedup_vs_tftag_musicnn"] > 0
        assert "agreement_with_tftag_musicnn" not in row  # 6 tags, not the teacher's 50
    only = result["model_only"]
    assert set(only) == {"MTT_musicnn", "tftag_vgg_16x2/savedmodel",
                         "tftag_vgg_16x2/tflite_dynamic"}
    assert only["MTT_musicnn"]["examples_per_s_ratio"] == 1.0
    for row in only.values():
        assert row["windows"] == 8 and row["examples_per_s"] > 0
    assert result["musicnn_package"].startswith("not run")


def test_student_exports_benchmark_checks_every_precision(shipped, dataset, tmp_path):
    """benchmarks/student_exports.py: the student exported, reloaded and its three TFLite
    files evaluated against the Keras model, one JSON file and line."""
    out = tmp_path / "exports.json"
    proc = run_module("benchmarks.student_exports", f"--dataset_dir={dataset}",
                      f"--models_dir={shipped['models_dir']}", "--students=tftag_vgg_16x2",
                      "--representative_clips=4", f"--out={out}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.load(open(out)) == result
    row = result["students"]["tftag_vgg_16x2"]
    assert row["essentia_graph"] == "essentia/tftag_vgg_16x2.pb"
    assert set(row["tflite"]) == {"float16", "dynamic", "int8"}
    assert row["tflite"]["int8"]["integer_only"] is True
    for precision in row["tflite"].values():
        assert precision["bytes"] > 0 and 0 <= precision["max_abs_diff"] < 0.5
    bad = run_module("benchmarks.student_exports", f"--dataset_dir={tmp_path}/none", check=False)
    assert bad.returncode != 0 and "--dataset_dir=" in bad.stderr and "no such dataset" in bad.stderr


# ----------------------------------------------------------------------------- a MUSICNN student


@pytest.fixture(scope="module")
def shipped_musicnn(dataset, tmp_path_factory):
    """A MUSICNN final student (paper preset, 1-s patches of the 3-s clips, pkgc held out)."""
    from tftag import train
    from tftag.tagging import ship

    run_dir = tmp_path_factory.mktemp("musicnn_run")
    exp = _experiment(dataset, run_dir,
                      model=ModelConfig("musicnn", width=0.1, patch_seconds=1.0))
    exp.save()
    summary = train.run_train(exp)
    models_dir = tmp_path_factory.mktemp("musicnn_models")
    out = ship.ship(str(run_dir), str(models_dir))
    return {"run_dir": str(run_dir), "models_dir": str(models_dir), "train": summary, **out}


def test_musicnn_student_ships_and_tags_by_patches(shipped_musicnn, tmp_path):
    """The card's window is the patch; held-out figures score every patch of a clip; tagging
    a file averages its patches, the same from the command and in process."""
    patch = ModelConfig("musicnn", patch_seconds=1.0).patch_frames(MEL)
    assert patch == 31  # floor(1 s * 16000 / 512)
    folder = shipped_musicnn["shipped"]
    assert os.path.basename(folder) == "tftag_musicnn_16x2"
    card = json.load(open(os.path.join(folder, "card.json")))
    assert (card["model"], card["width"], card["resolution"]) == ("musicnn", 0.1, MEL.name)
    assert card["model_config"]["patch_seconds"] == 1.0
    assert card["window_seconds"] == pytest.approx(patch * 512 / 16000)
    assert card["heldout_clips"] == 6 and 0.0 <= card["roc_auc"] <= 1.0
    results = json.load(open(os.path.join(shipped_musicnn["run_dir"], "results.json")))
    assert results["test"]["n_clips"] == 6
    wav = write_clip(str(tmp_path / "song.wav"), 7.0, 16000, seed=4)
    out = tmp_path / "tags.json"
    proc = run_module("tftag.main", "--mode=tag", "--pretrained=tftag_musicnn_16x2",
                      f"--models_dir={shipped_musicnn['models_dir']}", f"--audio={wav}",
                      f"--output={out}")
    assert "tagged 1/1 files with tftag_musicnn_16x2" in proc.stdout
    track = json.loads(out.read_text())["files"][wav]
    frames = MelConfig(16000, 16, 2, "log", 7.0).n_frames
    assert track["windows"] == frames // patch  # non-overlapping 1-s windows of a 7-s file
    from tftag.tagging import tag

    entry = pretrained.from_card(folder)
    (again,) = list(tag.tag_tracks(tag.Tagger.of_model(entry), [wav]))
    np.testing.assert_allclose(again.probabilities,
                               [track["probabilities"][t] for t in TAGS], atol=1e-5)
