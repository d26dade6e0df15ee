"""SavedModel export laid out for TF Serving: mel, tf.Example, raw-waveform and track signatures.

``export/<model_name>/<version>/`` (integer versions, the next free one by default) holds a
SavedModel whose clip signatures all return ``probabilities`` (sigmoid of the logits,
[batch, n_tags]), ``top_k_tags`` / ``top_k_probabilities`` ([batch, k]) and ``tags``
([batch, n_tags], the tag list):

- ``serving_default``: ``mel`` float32 [batch, n_frames, n_mels] at the model's resolution (a
  whole cropped clip, as extraction stores it);
- ``serving_example``: ``examples``, serialized ``tf.train.Example`` of :data:`tftag.storage.data.FEATURE_SPEC`
  (the stored hop-1 power mel of the model's (sr, n_mels));
- ``serving_waveform``: ``audio`` float32 mono [batch, samples] at the model's sample rate; the
  clip is centre-cropped / zero-padded like extraction and the mel is computed in-graph with
  TensorFlow ops using Essentia's window and MelBands filterbank (the same arrays
  :mod:`tftag.features` applies).

Two more signatures cover whole tracks in the model's own input windows (its patch, or the whole
clip of a clip model): ``serving_window``: ``mel`` [windows, window_frames, n_mels] →
``probabilities`` [windows, n_tags] and ``embedding`` [windows, d] (the input of the logits
layer); ``serving_track``: ``audio`` float32 mono [samples] of any length at the model's sample
rate → ``probabilities`` [n_tags] (mean over windows), ``taggram`` [windows, n_tags],
``window_start_seconds`` [windows], ``embedding`` [d] (mean), ``window_embeddings``
[windows, d] and ``padded`` (the track was shorter than one window and zero-padded). Windows are
consecutive and non-overlapping; a partial window at the end of a longer track is dropped, so
windows = floor(frames / window_frames), at least 1.

A patch model scores the non-overlapping patches of the clip and averages them, as evaluation
does (both cut by :mod:`tftag.patches`). ``assets/tags.txt`` holds the tag list. Beside the
SavedModel, ``essentia/`` holds a frozen GraphDef of the mel → probabilities function and a JSON
model card in the layout of Essentia's published models, for
``essentia.standard.TensorflowPredict`` (whose TensorFlow 2.5 cannot load a TensorFlow 2.21
SavedModel); :mod:`tftag.delivery.export_layout` reads this layout back without TensorFlow. Export
reloads the SavedModel and checks it against the Keras model before it is renamed into place.
With ``--tflite=...``, ``tflite/`` then receives TFLite files of the mel → probabilities
function (:mod:`tftag.delivery.tflite`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
from typing import Sequence

import numpy as np
import tensorflow as tf

import tftag
from tftag import features, patches
from tftag.delivery import export_layout
from tftag.storage import codecs, data
from tftag.features import MelConfig
from tftag.models import ModelConfig, inference_fn

TOP_K = 5
ESSENTIA_INPUT = "mel"
ESSENTIA_OUTPUT = "probabilities"


def installed_command(name: str) -> str:
    """How to run the console script ``name`` (``saved_model_cli``, ``tensorboard``) of the
    environment tftag runs in, for printed hints: its path beside this Python (a virtualenv's or
    conda's bin directory, e.g. ``.venv/bin/tensorboard``, which works without activating it),
    or the bare name when it is not there (e.g. ``pip install --user``: on PATH)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.isfile(path):
        return name
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else path


def waveform_to_mel(audio: tf.Tensor, config: MelConfig) -> tf.Tensor:
    """In-graph twin of crop + :func:`tftag.features.melspectrogram`: [b, samples] -> [b, T, F].

    Centre crop / zero pad to ``config.n_samples``, then :func:`signal_to_mel`.
    """
    n = config.n_samples
    length = tf.shape(audio)[1]
    short = tf.maximum(n - length, 0)
    audio = tf.pad(audio, [[0, 0], [short // 2, short - short // 2]])
    start = (tf.shape(audio)[1] - n) // 2
    audio = tf.ensure_shape(audio[:, start:start + n], [None, n])  # [b, n]
    return tf.ensure_shape(signal_to_mel(audio, config), [None, *config.shape])


def signal_to_mel(audio: tf.Tensor, config: MelConfig) -> tf.Tensor:
    """In-graph twin of :func:`tftag.features.melspectrogram` of whole signals (no crop):
    [b, n] -> [b, ceil(frame_count(n) / hop_factor), F].

    Essentia framing (512, hop 256, first frame centred on sample 0), Essentia's symmetric Hann,
    |rfft|², Essentia's MelBands matrix, decimation to the hop factor, compression.
    """
    n = tf.shape(audio)[1]
    half = features.N_FFT // 2
    n_frames = (n + half + features.BASE_HOP - 1) // features.BASE_HOP  # frame_count(n)
    after = (n_frames - 1) * features.BASE_HOP + features.N_FFT - half - n
    padded = tf.pad(audio, [[0, 0], [half, after]])
    frames = tf.signal.frame(padded, features.N_FFT, features.BASE_HOP)  # [b, N1, 512]
    frames = frames[:, :: config.hop_factor]  # only the frames kept by the hop factor
    window = tf.constant(features.hann_window(features.N_FFT))
    spectrum = tf.signal.rfft(frames * window, fft_length=[features.N_FFT])  # [b, T, 257]
    power = tf.math.real(spectrum) ** 2 + tf.math.imag(spectrum) ** 2
    fb = tf.constant(features.mel_filterbank(config.sr, config.n_mels))  # [257, F]
    mel = tf.einsum("btk,km->btm", power, fb)  # [b, T, F]
    return data.compress_tf(mel, config.compression)


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """What a SavedModel serves: resolution, model, patching and tags."""

    mel_config: MelConfig
    model_config: ModelConfig
    tags: tuple[str, ...]
    mel_dtype: "str | codecs.StorageCodec" = "float32"  # serving_example's storage codec
    metrics: dict | None = None
    name: str | None = None  # the TF Serving model name; None = <model>-<resolution>
    description: str | None = None  # the Essentia card's; None = said from name / model config

    @property
    def patch_frames(self) -> int | None:
        """Frames of the model's input patch (None: the whole clip), by the model config's rule."""
        return self.model_config.patch_frames(self.mel_config)

    @property
    def window_frames(self) -> int:
        """Frames of one model input: the patch, or the whole clip."""
        return self.patch_frames or self.mel_config.n_frames

    @property
    def model_name(self) -> str:
        """The TF Serving model name: ``name``, else ``<model>-<resolution>``."""
        return self.name or f"{self.model_config.name}-{self.mel_config.name}"


class ServingModule(tf.Module):
    """The exported object: a Keras model and its signatures."""

    def __init__(self, model, spec: ExportSpec, tags_file: str):
        super().__init__()
        self.model = model
        self.spec = spec
        self.tags_asset = tf.saved_model.Asset(tags_file)
        self._tags = tf.constant(list(spec.tags))
        c = spec.mel_config
        self._n_frames, self._n_mels = c.n_frames, c.n_mels
        self.serving_default = tf.function(
            self._from_mel, input_signature=[tf.TensorSpec(None, tf.float32, name="mel")])
        self.serving_example = tf.function(
            self._from_examples, input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        self.serving_waveform = tf.function(
            self._from_waveform, input_signature=[tf.TensorSpec(None, tf.float32, name="audio")])
        self.probabilities = tf.function(
            self._probabilities,
            input_signature=[tf.TensorSpec([None, c.n_frames, c.n_mels], tf.float32, name="mel")])
        # Whole tracks: the model's own input windows (a patch, or the whole clip).
        self.window_frames = spec.window_frames
        self._embedder = inference_fn(model)  # MUSICNN: its exact fast rewrite
        self.serving_window = tf.function(
            self._from_windows,
            input_signature=[tf.TensorSpec([None, self.window_frames, c.n_mels], tf.float32,
                                           name="mel")])
        self.serving_track = tf.function(
            self._from_track, input_signature=[tf.TensorSpec([None], tf.float32, name="audio")])

    def _from_windows(self, mel):
        logits, embedding = self._embedder(mel)
        return {"probabilities": tf.sigmoid(logits), "embedding": embedding}

    def _from_track(self, audio):
        c, w = self.spec.mel_config, self.window_frames
        audio = self._require(audio, tf.shape(audio)[0] > 0, ["audio: no samples"], [1])
        audio = self._require(audio, tf.reduce_all(tf.math.is_finite(audio)),
                              ["audio contains NaN or inf"], [1])
        mel = signal_to_mel(audio[tf.newaxis], c)[0]  # [T, F]
        windows, padded = patches.track_windows_tf(mel, w)  # [W, w, F]: full windows
        out = self._from_windows(tf.ensure_shape(windows, [None, w, c.n_mels]))
        starts = tf.cast(tf.range(tf.shape(windows)[0]), tf.float32) * (w * c.hop_length / c.sr)
        return {"probabilities": tf.reduce_mean(out["probabilities"], axis=0),
                "taggram": out["probabilities"], "window_start_seconds": starts,
                "embedding": tf.reduce_mean(out["embedding"], axis=0),
                "window_embeddings": out["embedding"], "padded": padded}

    def _probabilities(self, mel):
        return patches.mean_probabilities(self.model, mel, self.spec.patch_frames)

    def _outputs(self, mel):
        probabilities = self._probabilities(mel)  # [b, n_tags]
        k = min(TOP_K, len(self.spec.tags))
        top = tf.math.top_k(probabilities, k=k)
        batch = tf.shape(probabilities)[0]
        return {
            "probabilities": probabilities,
            "top_k_tags": tf.gather(self._tags, top.indices),
            "top_k_probabilities": top.values,
            "tags": tf.tile(self._tags[tf.newaxis], [batch, 1]),
        }

    @staticmethod
    def _require(x, ok, message: Sequence, placeholder_shape: Sequence[int]):
        """``x`` if ``ok`` holds; otherwise the call fails with ``message``.

        The failing branch hands on a well-formed placeholder, so that no other op can fail on
        the bad input first and hide the message.
        """

        def fail():
            with tf.control_dependencies([tf.debugging.Assert(False, list(message))]):
                return tf.zeros(placeholder_shape, x.dtype)

        return tf.cond(ok, lambda: tf.identity(x), fail)

    def _from_mel(self, mel):
        c = self.spec.mel_config
        shape = tf.shape(mel)
        good_shape = tf.cond(tf.equal(tf.rank(mel), 3),
                             lambda: tf.reduce_all(tf.equal(shape[1:], [c.n_frames, c.n_mels])),
                             lambda: tf.constant(False))
        one = [1, c.n_frames, c.n_mels]
        mel = self._require(mel, good_shape, [
            f"mel must be [batch, {c.n_frames}, {c.n_mels}] float32 ({c.name}); got shape", shape],
            one)
        mel = self._require(mel, tf.shape(mel)[0] > 0, ["mel: empty batch"], one)
        mel = self._require(mel, tf.reduce_all(tf.math.is_finite(mel)), ["mel contains NaN or inf"],
                            one)
        return self._outputs(tf.ensure_shape(mel, [None, c.n_frames, c.n_mels]))

    def _from_examples(self, examples):
        c = self.spec.mel_config
        examples = self._require(examples, tf.shape(examples)[0] > 0, ["examples: empty batch"],
                                 [0])

        def one(serialized):
            parsed = data.parse_example(serialized, self.spec.mel_dtype)
            mel = parsed["mel"]
            checks = [tf.debugging.assert_equal(
                tf.shape(mel), tf.constant([c.n_frames_hop1, c.n_mels]), message=(
                    f"examples must hold the stored hop-1 mel [{c.n_frames_hop1}, {c.n_mels}] "
                    f"of {c.base_name}"))]
            with tf.control_dependencies(checks):
                mel = tf.identity(mel)[:: c.hop_factor]
            return data.compress_tf(mel, c.compression)

        mel = tf.map_fn(one, examples, fn_output_signature=tf.TensorSpec([None, c.n_mels], tf.float32))
        return self._outputs(tf.ensure_shape(mel, [None, c.n_frames, c.n_mels]))

    def _from_waveform(self, audio):
        c = self.spec.mel_config
        audio = self._require(audio, tf.equal(tf.rank(audio), 2), [
            f"audio must be [batch, samples] mono float32 at {c.sr} Hz; got shape", tf.shape(audio)],
            [1, 1])
        audio = tf.ensure_shape(audio, [None, None])
        audio = self._require(audio, tf.shape(audio)[0] > 0, ["audio: empty batch"], [1, 1])
        audio = self._require(audio, tf.shape(audio)[1] > 0, ["audio: no samples"], [1, 1])
        audio = self._require(audio, tf.reduce_all(tf.math.is_finite(audio)),
                              ["audio contains NaN or inf"], [1, 1])
        return self._outputs(waveform_to_mel(tf.ensure_shape(audio, [None, None]), c))


RESERVED = ".reserved-"  # + version: taken by an export in progress (TF Serving ignores it)


def next_version(base_dir: str) -> int:
    """1 + the largest integer version in ``base_dir``, finished or reserved (1 if none)."""
    names = os.listdir(base_dir) if os.path.isdir(base_dir) else []
    versions = [int(d.removeprefix(RESERVED)) for d in names
                if d.isdigit() or (d.startswith(RESERVED) and d[len(RESERVED):].isdigit())]
    return max(versions, default=0) + 1


def reserve_version(base_dir: str, version: int | None = None) -> tuple[int, str]:
    """Takes a version for one export, safely across processes (an atomic ``mkdir``).

    Args:
      base_dir: ``<export_root>/<model_name>``.
      version: the version wanted; default: the next free one.

    Returns:
      (version, the reservation directory to remove once the version directory is in place).

    Raises:
      FileExistsError: ``version`` exists or another process is exporting it.
    """
    os.makedirs(base_dir, exist_ok=True)
    while True:
        v = version or next_version(base_dir)
        final, reservation = os.path.join(base_dir, str(v)), os.path.join(base_dir, f"{RESERVED}{v}")
        try:
            os.mkdir(reservation)
        except FileExistsError:
            if version:
                raise FileExistsError(f"{final} is being exported by another process") from None
            continue  # another export took it first: next_version now skips it
        if not os.path.exists(final):
            return v, reservation
        os.rmdir(reservation)
        if version:
            raise FileExistsError(f"{final} exists; versions are immutable (omit "
                                  "--export_version to take the next free one)")


def model_card(spec: ExportSpec, version: int) -> dict:
    """The JSON model card of the frozen graph, in the layout of Essentia's published models."""
    c = spec.mel_config
    return {
        "name": spec.model_name,
        "type": "Music auto-tagging",
        "link": "",
        "version": str(version),
        "description": spec.description or (
                        f"{spec.name}: the musicnn package's pretrained weights, ported by tftag "
                        f"{tftag.__version__}" if spec.name else
                        f"{spec.model_config.name} trained by tftag {tftag.__version__} at {c.name}"),
        "author": "tftag",
        "email": "",
        "release_date": "",
        "framework": "tensorflow",
        "framework_version": tf.__version__,
        "classes": list(spec.tags),
        "model_types": ["frozen_model"],
        "dataset": {"name": "", "size": None, "metrics": spec.metrics or {}},
        "schema": {
            "inputs": [{"name": ESSENTIA_INPUT, "type": "float",
                        "shape": ["batch_size", c.n_frames, c.n_mels]}],
            "outputs": [{"name": ESSENTIA_OUTPUT, "type": "float", "op": "Sigmoid",
                         "shape": ["batch_size", len(spec.tags)], "output_purpose": "predictions"}],
        },
        "inference": {
            "sample_rate": c.sr,
            "algorithm": "TensorflowPredict",
            "mel": dict(dataclasses.asdict(c), name=c.name, n_fft=c.n_fft, hop_length=c.hop_length,
                        n_frames=c.n_frames, chain="tftag.features.melspectrogram (Essentia)"),
            "patch_frames": spec.patch_frames,
            "serving_example_codec": codecs.get(spec.mel_dtype).describe(),
            "essentia_usage": (
                "TensorflowPredict(graphFilename=..., inputs=['mel'], outputs=['probabilities']) "
                "on a Pool holding 'mel' as a [batch, 1, n_frames, n_mels] tensor"),
        },
    }


def _freeze(module: ServingModule, path: str) -> None:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    concrete = module.probabilities.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    graph_def = frozen.graph.as_graph_def()
    # Name the input and output nodes as the model card says.
    input_name = frozen.inputs[0].op.name
    output_name = frozen.outputs[0].op.name
    for node in graph_def.node:
        if node.name == input_name:
            node.name = ESSENTIA_INPUT
        for i, inp in enumerate(node.input):
            if inp == input_name or inp.startswith(input_name + ":"):
                node.input[i] = inp.replace(input_name, ESSENTIA_INPUT, 1)
    identity = graph_def.node.add()
    identity.name = ESSENTIA_OUTPUT
    identity.op = "Identity"
    identity.input.append(output_name)
    identity.attr["T"].type = tf.float32.as_datatype_enum
    with open(path, "wb") as f:
        f.write(graph_def.SerializeToString())


def export(model, spec: ExportSpec, export_root: str = "export", version: int | None = None,
           check_audio: np.ndarray | None = None) -> str:
    """Writes ``<export_root>/<model_name>/<version>/`` atomically and checks the reload.

    Args:
      model: the trained Keras model (logits out), at ``spec.patch_frames`` input frames or the
        whole clip.
      spec: resolution, model config, tags, patching.
      export_root: the folder TF Serving's model base paths live in.
      version: integer version (default: the next free one).
      check_audio: optional mono audio [samples] for the waveform-vs-mel reload check.

    Returns:
      The version directory.

    Raises:
      RuntimeError: the reloaded SavedModel disagrees with the Keras model.
    """
    base = os.path.join(export_root, spec.model_name)
    version, reservation = reserve_version(base, version)  # concurrent exports get distinct ones
    final = os.path.join(base, str(version))
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base)
    try:
        tags_file = os.path.join(tmp, export_layout.TAGS_ASSET)
        with open(tags_file, "w", encoding="utf-8") as f:
            f.write("\n".join(spec.tags) + "\n")
        module = ServingModule(model, spec, tags_file)
        saved = os.path.join(tmp, "model")
        tf.saved_model.save(module, saved, signatures={
            "serving_default": module.serving_default,
            "serving_example": module.serving_example.get_concrete_function(),
            "serving_waveform": module.serving_waveform.get_concrete_function(),
            "serving_window": module.serving_window.get_concrete_function(),
            "serving_track": module.serving_track.get_concrete_function(),
        })
        essentia = os.path.join(saved, export_layout.ESSENTIA_DIR)
        os.makedirs(essentia, exist_ok=True)
        _freeze(module, os.path.join(essentia, f"{spec.model_name}.pb"))
        data.write_json_atomic(os.path.join(essentia, f"{spec.model_name}.json"),
                               model_card(spec, version))
        check_reload(model, spec, saved, check_audio)
        os.remove(tags_file)
        os.rename(saved, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.rmdir(reservation)
    return final


def check_reload(model, spec: ExportSpec, path: str, audio: np.ndarray | None = None,
                 atol: float = 1e-5) -> dict:
    """Reloads a SavedModel and compares its signatures with the Keras model.

    Returns:
      {"mel_max_abs_diff", "waveform_max_abs_diff" (if audio)}.
    """
    c = spec.mel_config
    loaded = tf.saved_model.load(path)
    rng = np.random.default_rng(0)
    if audio is None:
        audio = (0.1 * rng.standard_normal(c.n_samples)).astype(np.float32)
    mel = features.melspectrogram(features.crop(audio, c.sr, c.duration).audio, c)[None]
    expected = patches.mean_probabilities(model, tf.constant(mel), spec.patch_frames).numpy()
    got = loaded.signatures["serving_default"](mel=tf.constant(mel))["probabilities"].numpy()
    report = {"mel_max_abs_diff": float(np.abs(got - expected).max())}
    if report["mel_max_abs_diff"] > atol:
        raise RuntimeError(f"{path}: serving_default differs from the Keras model by "
                           f"{report['mel_max_abs_diff']:.2e} > {atol}")
    wave = loaded.signatures["serving_waveform"](audio=tf.constant(audio[None]))["probabilities"]
    report["waveform_max_abs_diff"] = float(np.abs(wave.numpy() - expected).max())
    if report["waveform_max_abs_diff"] > 1e-3:
        raise RuntimeError(f"{path}: serving_waveform differs from the mel path by "
                           f"{report['waveform_max_abs_diff']:.2e} > 1e-3")
    return report


load_tags = export_layout.load_tags  # the readers of this layout live in tftag.delivery.export_layout


def tag_probabilities(loaded, audio: np.ndarray) -> np.ndarray:
    """Probabilities [n_tags] of one mono clip through ``serving_waveform``."""
    out = loaded.signatures["serving_waveform"](audio=tf.constant(audio[None], tf.float32))
    return out["probabilities"].numpy()[0]


def export_weights(experiment, mel_config: MelConfig, model_config: ModelConfig, weights: str,
                   dataset_dir: str, metrics: dict | None = None) -> str:
    """Exports the model of ``model_config`` at ``mel_config`` with ``weights`` (tags and storage
    codec from the dataset) under the experiment's export settings; returns the version dir."""
    from absl import logging

    from tftag.models import build

    info = data.load_dataset_info(dataset_dir)
    model = build(model_config, mel_config, info.n_tags)
    model.load_weights(weights)
    spec = ExportSpec(mel_config, model_config, info.tags, info.codec, metrics)
    path = export(model, spec, experiment.export.export_dir, experiment.export.version)
    logging.info("exported %s", path)
    _export_tflite(model, spec, path, experiment.export, dataset_dir)
    return path


def _export_tflite(model, spec: ExportSpec, path: str, export_config, dataset_dir: str | None):
    """The ``--tflite`` files of an export (:mod:`tftag.delivery.tflite`), if any were asked for."""
    if not export_config.tflite:
        return
    from tftag.delivery import tflite

    summary = tflite.export_from_dataset(model, spec, path, export_config.tflite, dataset_dir,
                                         export_config.representative_clips)
    for precision, row in summary["files"].items():
        print(f"tflite {precision}: {os.path.join(path, tflite.TFLITE_DIR, row['file'])} "
              f"({row['bytes']} bytes, max |dp| {row['max_abs_diff']:.2e} on "
              f"{summary['check_clips']} clips, {row['latency_ms_per_clip']:.2f} ms/clip"
              + (f", integer-only {row['integer_only']}" if precision == "int8" else "") + ")")


def export_pretrained(name: str, export_config, dataset_dir: str | None = None) -> dict:
    """``--mode=export --pretrained=NAME``: a pretrained model (a musicnn port such as
    ``MTT_musicnn``, or a shipped student) as ``<export_dir>/<NAME>/<version>/`` with every
    signature, the Essentia frozen graph and model card, like a trained model's export, at the
    model's own resolution and window. TFLite files (``--tflite``) are checked on the test
    clips of ``dataset_dir`` (else on noise); int8 needs ``dataset_dir``."""
    from tftag.models import pretrained

    if "int8" in export_config.tflite and not dataset_dir:
        raise ValueError("--tflite=int8 calibrates on the training split of a dataset at the "
                         "model's resolution: give --dataset_dir")
    entry = pretrained.get(name)  # an unknown name: ValueError listing the known ones
    model = entry.load()
    spec = ExportSpec(entry.mel_config, entry.model_config, tuple(entry.tags), name=name,
                      description=None if entry.is_port else (
                          f"{name}: a {entry.model_config.name} student of "
                          f"{entry.card['teacher']} shipped with tftag {tftag.__version__}"))
    path = export(model, spec, export_config.export_dir, export_config.version)
    _export_tflite(model, spec, path, export_config, dataset_dir)
    print(f"exported {path}; inspect it with: {installed_command('saved_model_cli')} "
          f"show --all --dir {path}")
    return {"export_path": path}


def run_export(experiment, weights: str | None, pretrained: str | None = None) -> dict:
    """``--mode=export``: the experiment's model at its one resolution with ``weights``, or
    the pretrained model ``pretrained`` (at its own resolution; ``export_pretrained``)."""
    from tftag.extraction import extract
    from tftag.runs import runfiles

    if pretrained:
        return export_pretrained(pretrained, experiment.export, experiment.data.dataset_dir)

    runfiles.require_weights(weights)
    dataset_dir = extract.ensure_dataset(experiment)
    path = export_weights(experiment, experiment.mel_config, experiment.model, weights, dataset_dir)
    print(f"exported {path}; inspect it with: {installed_command('saved_model_cli')} "
          f"show --all --dir {path}")
    return {"export_path": path}

