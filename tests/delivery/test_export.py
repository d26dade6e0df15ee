"""SavedModel export: layout, versions, reload, in-graph mel, validation, Essentia, serving clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tftag
from tftag import evaluate, features
from tftag.audio import _essentia
from tftag.delivery import export, serving
from tftag.storage import data
from tftag.datasets import synthetic
from tftag.features import MelConfig
from tftag.models import ModelConfig, build

from conftest import run_module

TAGS = ("piano", "drums", "bass", "fast", "slow")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Two real FluidSynth renders of 6 s at 16 kHz."""
    d = tmp_path_factory.mktemp("render")
    catalog = synthetic.render_corpus(str(d), num_clips=2, duration=6.0, sr=16000, seed=5)
    return [c.path for c in catalog.clips]


def _model(mel, patch=None, width=0.05):
    tf.keras.utils.set_random_seed(0)
    return build(_config(mel, patch, width), mel, len(TAGS))


def _config(mel, patch=None, width=0.05):
    """VGG of ``width`` whose patches are ``patch`` frames at ``mel`` (None: whole clips)."""
    seconds = None if patch is None else (patch + 0.5) * mel.hop_length / mel.sr
    config = ModelConfig("vgg", width=width, patch_seconds=seconds)
    assert config.patch_frames(mel) == patch
    return config


@pytest.fixture(scope="module")
def exported(tmp_path_factory, rendered):
    root = tmp_path_factory.mktemp("export")
    mel = MelConfig(16000, 48, 2, "log", 5.0)
    model = _model(mel)
    spec = export.ExportSpec(mel, ModelConfig("vgg", width=0.05), TAGS)
    audio = features.load_audio(rendered[0], 16000)
    path = export.export(model, spec, str(root), check_audio=audio)
    return root, path, model, spec


def test_layout_and_versions(exported):
    root, path, model, spec = exported
    assert path == os.path.join(str(root), "vgg-sr16000-mel48-hop2-log", "1")
    names = sorted(os.listdir(path))
    assert {"saved_model.pb", "variables", "assets", "essentia"} <= set(names)
    assert export.load_tags(path) == list(TAGS)
    assert sorted(os.listdir(os.path.join(path, "essentia"))) == [
        "vgg-sr16000-mel48-hop2-log.json", "vgg-sr16000-mel48-hop2-log.pb"]
    second = export.export(model, spec, str(root))
    assert second.endswith(os.path.join("vgg-sr16000-mel48-hop2-log", "2"))
    assert not [d for d in os.listdir(os.path.dirname(path)) if d.startswith((".tmp", ".reserved"))]
    with pytest.raises(FileExistsError, match="versions are immutable"):
        export.export(model, spec, str(root), version=1)
    card = json.loads(open(os.path.join(path, "essentia", "vgg-sr16000-mel48-hop2-log.json")).read())
    assert card["classes"] == list(TAGS) and card["inference"]["sample_rate"] == 16000
    assert card["schema"]["inputs"][0] == {"name": "mel", "type": "float", "shape": ["batch_size", 157, 48]}


def test_concurrent_exports_take_distinct_versions(tmp_path):
    """Version numbers are reserved with an atomic mkdir: processes exporting one model name at
    once never pick the same version (before, the second rename failed: "Directory not empty")."""
    import concurrent.futures

    base = str(tmp_path / "m")
    os.makedirs(os.path.join(base, "3"))  # a finished version
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        taken = list(pool.map(lambda _: export.reserve_version(base), range(16)))
    versions = sorted(v for v, _ in taken)
    assert versions == list(range(4, 20))
    assert all(os.path.isdir(r) and r.endswith(f".reserved-{v}") for v, r in taken)
    assert export.next_version(base) == 20  # reservations count: a crashed export's is skipped
    with pytest.raises(FileExistsError, match="being exported by another process"):
        export.reserve_version(base, 5)
    with pytest.raises(FileExistsError, match="versions are immutable"):
        export.reserve_version(base, 3)


def test_reload_equals_keras(exported, rendered):
    _, path, model, spec = exported
    report = export.check_reload(model, spec, path, features.load_audio(rendered[1], 16000))
    assert report["mel_max_abs_diff"] <= 1e-5 and report["waveform_max_abs_diff"] <= 1e-3


@pytest.mark.parametrize("name", ["sr16000-mel96-hop1-log", "sr16000-mel48-hop3-db",
                                  "sr12000-mel128-hop2-db", "sr12000-mel8-hop10-log"])
def test_in_graph_mel_equals_essentia_mel(rendered, name):
    config = MelConfig.from_name(name, duration=5.0)
    for path in rendered:
        audio = features.load_audio(path, config.sr)  # 6 s: centre-cropped to 5 s
        expected = features.melspectrogram(features.crop(audio, config.sr, 5.0).audio, config)
        got = export.waveform_to_mel(tf.constant(audio[None]), config).numpy()[0]
        assert got.shape == expected.shape == config.shape
        diff = np.abs(got - expected)
        assert np.median(diff) <= 1e-4 and diff.max() <= 0.05, (np.median(diff), diff.max())
    short = features.load_audio(rendered[0], config.sr)[: config.sr * 2]  # padded like extraction
    np.testing.assert_allclose(
        export.waveform_to_mel(tf.constant(short[None]), config).numpy()[0],
        features.melspectrogram(features.crop(short, config.sr, 5.0).audio, config), atol=0.05)


def test_patch_model_averages_patches(tmp_path, rendered):
    mel = MelConfig(16000, 32, 1, "log", 5.0)
    model = _model(mel, patch=64)
    spec = export.ExportSpec(mel, _config(mel, 64), TAGS)
    assert spec.patch_frames == 64
    path = export.export(model, spec, str(tmp_path))
    audio = features.load_audio(rendered[0], 16000)
    x = features.melspectrogram(features.crop(audio, 16000, 5.0).audio, mel)[None]
    expected = evaluate.patch_scores(model, tf.constant(x), 64).numpy()  # 313 frames: 4 patches
    loaded = tf.saved_model.load(path)
    got = loaded.signatures["serving_waveform"](audio=tf.constant(audio[None]))["probabilities"].numpy()
    assert np.abs(got - expected).max() <= 1e-3


def test_serving_example_signature(tiny_dataset, tmp_path):
    mel = MelConfig(16000, 16, 2, "log", 3.0)
    info = data.load_dataset_info(tiny_dataset)
    model = build(ModelConfig("vgg", width=0.05), mel, info.n_tags)
    path = export.export(model, export.ExportSpec(mel, ModelConfig("vgg", width=0.05), info.tags),
                         str(tmp_path))
    records = [r.numpy() for r in tf.data.TFRecordDataset(data.shard_files(tiny_dataset, mel, "test"))][:3]
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_example"](examples=tf.constant(records))
    views = np.stack([e["mel"] for e in data.read_examples(tiny_dataset, mel, "test")][:3])
    ref = loaded.signatures["serving_default"](mel=tf.constant(views))
    np.testing.assert_allclose(out["probabilities"].numpy(), ref["probabilities"].numpy(), atol=1e-6)
    assert out["top_k_tags"].shape == (3, 5) and out["tags"].shape == (3, info.n_tags)


@pytest.mark.parametrize("signature, value, message", [
    ("serving_default", np.zeros((2, 157), np.float32),
     "mel must be [batch, 157, 48] float32 (sr16000-mel48-hop2-log); got shape] [2 157]"),
    ("serving_default", np.zeros((1, 157, 40), np.float32),
     "mel must be [batch, 157, 48] float32 (sr16000-mel48-hop2-log); got shape] [1 157 40]"),
    ("serving_default", np.zeros((0, 157, 48), np.float32), "mel: empty batch"),
    ("serving_waveform", np.zeros((16000,), np.float32), "audio must be [batch, samples] mono float32 at 16000 Hz"),
    ("serving_waveform", np.full((1, 16000), np.nan, np.float32), "audio contains NaN or inf"),
    ("serving_waveform", np.zeros((0, 16000), np.float32), "audio: empty batch"),
])
def test_signature_validation(exported, signature, value, message):
    _, path, _, _ = exported
    fn = tf.saved_model.load(path).signatures[signature]
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        fn(**{serving.INPUT_NAMES[signature]: tf.constant(value)})
    assert message in str(err.value)


def test_saved_model_cli_lists_three_signatures(exported):
    _, path, _, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run([cli, "show", "--all", "--dir", path], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("serving_default", "serving_example", "serving_waveform"):
        assert f"signature_def['{name}']" in proc.stdout
    assert "outputs['probabilities']" in proc.stdout and "outputs['top_k_tags']" in proc.stdout


ESSENTIA_SCRIPT = """
import sys, numpy as np
import essentia.standard as es
from essentia import Pool
mel = np.load(sys.argv[2])
pool = Pool()
pool.set("mel", mel[:, None].astype(np.float32))
out = es.TensorflowPredict(graphFilename=sys.argv[1], inputs=["mel"], outputs=["probabilities"])(pool)
np.save(sys.argv[3], np.asarray(out["probabilities"]))
print("tensorflow loaded:", "tensorflow" in sys.modules)
"""


def test_essentia_tensorflow_predict_runs_the_frozen_graph(exported, rendered, tmp_path):
    _, path, _, spec = exported
    c = spec.mel_config
    x = np.stack([features.melspectrogram(features.crop(features.load_audio(p, 16000), 16000, 5.0).audio, c)
                  for p in rendered])
    np.save(tmp_path / "mel.npy", x)
    (tmp_path / "run.py").write_text(ESSENTIA_SCRIPT)
    pb = os.path.join(path, "essentia", "vgg-sr16000-mel48-hop2-log.pb")
    proc = subprocess.run([sys.executable, str(tmp_path / "run.py"), pb, str(tmp_path / "mel.npy"),
                           str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=300,
                          env=_essentia.child_env())  # without tftag's oneDNN default
    assert _essentia.child_env()["TF_ENABLE_ONEDNN_OPTS"] == ("0" if tftag.ONEDNN_DEFAULTED else
                                                             os.environ["TF_ENABLE_ONEDNN_OPTS"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tensorflow loaded: False" in proc.stdout  # Essentia's own TensorFlow only
    got = np.load(tmp_path / "out.npy").reshape(len(rendered), len(TAGS))
    ref = tf.saved_model.load(path).signatures["serving_default"](mel=tf.constant(x))["probabilities"]
    assert np.abs(got - ref.numpy()).max() <= 1e-5


def test_grpc_and_rest_clients_against_local_server(exported, rendered):
    _, path, _, spec = exported
    audio = features.load_audio(rendered[0], 16000)[: 16000 * 5]
    local = tf.saved_model.load(path).signatures["serving_waveform"](audio=tf.constant(audio[None]))
    server = serving.LocalServer(path, spec.model_name)
    try:
        grpc_port, rest_port = server.start_grpc(), server.start_rest()
        client = serving.GrpcClient(f"127.0.0.1:{grpc_port}", spec.model_name)
        out = client.predict(audio[None])
        np.testing.assert_allclose(out["probabilities"], local["probabilities"].numpy(), atol=1e-6)
        assert [t.decode() for t in out["top_k_tags"][0]] == [t.decode() for t in local["top_k_tags"].numpy()[0]]
        with pytest.raises(Exception, match="audio contains NaN or inf"):
            client.predict(np.full((1, 100), np.nan, np.float32))
        # Whole tracks over gRPC: serving_track takes mono audio of any length.
        long = np.concatenate([audio] * 4)  # 20 s: three full windows of 157 frames (5.024 s)
        track = client.predict(long, signature="serving_track")
        local_track = tf.saved_model.load(path).signatures["serving_track"](audio=tf.constant(long))
        assert track["taggram"].shape == (3, len(TAGS))
        np.testing.assert_allclose(track["taggram"], local_track["taggram"].numpy(), atol=1e-6)
        np.testing.assert_allclose(track["window_start_seconds"], [0.0, 5.024, 10.048], atol=1e-4)
        client.close()
        body = serving.rest_request([audio[:8]])
        assert body == {"signature_name": "serving_waveform",
                        "instances": [{"audio": audio[:8].tolist()}]}
        rows = serving.RestClient(f"127.0.0.1:{rest_port}", spec.model_name).predict([audio])
        assert len(rows) == 1 and sorted(rows[0]) == ["probabilities", "tags", "top_k_probabilities", "top_k_tags"]
        np.testing.assert_allclose(rows[0]["probabilities"], local["probabilities"].numpy()[0], atol=1e-6)
        assert list(rows[0]["tags"]) == list(TAGS)
        with pytest.raises(RuntimeError, match="HTTP 404"):
            serving.RestClient(f"127.0.0.1:{rest_port}", "other").predict([audio])
    finally:
        server.stop()


def test_tag_mode_on_a_folder_with_a_corrupt_file(exported, rendered, tmp_path):
    root, path, _, spec = exported
    folder = tmp_path / "music"
    folder.mkdir()
    for p in rendered:
        os.symlink(p, folder / os.path.basename(p))
    (folder / "corrupt.wav").write_text("not audio")
    out = tmp_path / "tags.json"
    # The README's command: no --run_dir needed.
    proc = run_module("tftag.main", "--mode=tag", f"--model_dir={os.path.dirname(path)}",
                      f"--audio={folder}", f"--output={out}")
    # Without --run_dir, tag mode writes its --output and the failures beside it, nothing else.
    assert sorted(os.listdir(tmp_path)) == ["music", "tags.failures.jsonl", "tags.json"]
    result = json.loads(out.read_text())
    assert len(result["files"]) == 2 and result["tags"] == list(TAGS)
    assert [os.path.basename(f["path"]) for f in result["failures"]] == ["corrupt.wav"]
    assert "tagged 2/3 files" in proc.stdout and "1 unreadable" in proc.stdout
    first = result["files"][str(folder / os.path.basename(rendered[0]))]
    # Whole tracks in the clip model's 5-s windows: the export's serving_track (in-graph mel)
    # gives the same taggram as the CLI's streamed mel.
    track = tf.saved_model.load(path).signatures["serving_track"](
        audio=tf.constant(features.load_audio(rendered[0], 16000)))
    assert first["windows"] == track["taggram"].shape[0] == 1  # 6 s: one full 5-s window
    np.testing.assert_allclose(first["taggram"]["probabilities"], track["taggram"].numpy(),
                               atol=1e-4)
    np.testing.assert_allclose([first["probabilities"][t] for t in TAGS],
                               track["probabilities"].numpy(), atol=1e-4)


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_tag_mode_through_a_server(exported, rendered, tmp_path, protocol):
    """--server scores the CLI's windows on the server (serving_window): the same whole-track
    taggram as the export's own serving_track."""
    _, path, _, spec = exported
    server = serving.LocalServer(path, spec.model_name)
    try:
        port = server.start_grpc() if protocol == "grpc" else server.start_rest()
        out = tmp_path / "tags.json"
        proc = run_module("tftag.main", "--mode=tag", f"--model_dir={path}",
                          f"--audio={rendered[0]}", f"--output={out}",
                          f"--server=127.0.0.1:{port}", f"--server_protocol={protocol}")
        result = json.loads(out.read_text())["files"][rendered[0]]
        track = tf.saved_model.load(path).signatures["serving_track"](
            audio=tf.constant(features.load_audio(rendered[0], 16000)))
        np.testing.assert_allclose(result["taggram"]["probabilities"], track["taggram"].numpy(),
                                   atol=1e-4)
        np.testing.assert_allclose([result["probabilities"][t] for t in TAGS],
                                   track["probabilities"].numpy(), atol=1e-4)
        assert f"with {spec.model_name} at 127.0.0.1:{port}" in proc.stdout
    finally:
        server.stop()
    bad = run_module("tftag.main", "--mode=tag", "--pretrained=MTT_musicnn", f"--audio={rendered[0]}",
                     f"--output={out}", "--server=127.0.0.1:1", check=False)
    assert bad.returncode == 2 and "--server scores with a served export: give its --model_dir" in bad.stderr
