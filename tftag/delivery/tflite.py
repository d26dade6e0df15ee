"""TFLite files of an export: conversion, checked writing, the ``tflite.json`` summary.

``--mode=export --tflite=float32,float16,dynamic,int8`` (and train / sweep, which export too)
writes ``<version_dir>/tflite/<model_name>-<precision>.tflite`` beside the SavedModel, plus
``tflite/tflite.json`` (bytes, max |Δp| against the Keras model on test clips, latency per clip
on one thread, integer-only check). Each file holds the mel → probabilities function of the
model's own input window: ``mel`` float32 [1, window_frames, n_mels] (the patch of a patch
model, else the whole clip) → ``probabilities`` [1, n_tags] (sigmoid of the logits). A patch
model's clip probabilities are the mean over its non-overlapping patches, computed in Python by
:class:`tftag.delivery.litert.TFLiteModel` (imported here as :class:`TFLiteModel`) through the same cut
(:mod:`tftag.patches`) as evaluation.

Precisions (:data:`PRECISIONS`):
  float32: the float graph as it is.
  float16: float16 weights (``target_spec.supported_types=[tf.float16]``), float kernels.
  dynamic: int8 weights, float activations (dynamic-range quantization; no calibration data).
  int8: full-integer quantization calibrated on clips of the training split, with int8 input
    and output tensors (their ``(scale, zero_point)`` are in the file; :class:`TFLiteModel`
    quantizes the mel and dequantizes the probabilities). TFLite cannot quantize ELU (the new
    quantizer silently keeps it in float between DEQUANTIZE/QUANTIZE, the old one refuses), so
    for int8 every ELU activation is rewritten as ``max(x, exp(min(x, 0)) - 1)`` (the same
    function up to float rounding, from the int8 kernels MINIMUM, EXP, SUB, MAXIMUM) before
    conversion. (``relu(x) + exp(min(x, 0)) - 1`` is integer-only too but loses more to the
    requantized ADD: max |Δp| 0.15 instead of 0.026 on the tests' tiny VGG.)

Running a file (the interpreter, the integer-only check) is :mod:`tftag.delivery.litert`'s, which
imports no TensorFlow when LiteRT is installed; its names are re-exported here.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Sequence

import numpy as np

from tftag import patches
from tftag.runs import runfiles
from tftag.delivery.litert import (  # noqa: F401  (re-exported: tftag.delivery.tflite.TFLiteModel is documented)
    INTEGER_DTYPES, TFLiteModel, integer_only, interpreter_class, non_integer_tensors)

PRECISIONS = ("float32", "float16", "dynamic", "int8")
TFLITE_DIR = "tflite"
SUMMARY_JSON = "tflite.json"
CHECK_CLIPS = 16  # test clips each written file is checked on
FLOAT32_ATOL = 1e-4


def check_precisions(precisions: Sequence[str]) -> tuple[str, ...]:
    """``precisions`` as a tuple if every name is one of :data:`PRECISIONS`; else ValueError."""
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise ValueError(f"unknown precision {', '.join(map(repr, bad))}; allowed: "
                         f"{', '.join(PRECISIONS)}")
    return tuple(precisions)


def _int8_friendly(model):
    """``model`` with every ELU activation computed from integer-quantizable ops (same weights,
    same function); ``model`` itself if it has none."""
    import keras
    import tensorflow as tf

    def is_elu(layer) -> bool:
        if isinstance(layer, keras.layers.ELU):
            return float(getattr(layer, "alpha", 1.0)) == 1.0
        return (isinstance(layer, keras.layers.Activation)
                and layer.activation is keras.activations.elu)

    if not any(is_elu(layer) for layer in model.layers):
        return model

    class QuantizableElu(keras.layers.Layer):
        """ELU (alpha 1) as max(x, exp(min(x, 0)) - 1): every op has an int8 kernel."""

        def call(self, x):
            return tf.maximum(x, tf.exp(tf.minimum(x, 0.0)) - 1.0)

    return keras.models.clone_model(  # other layers are shared, weights and all
        model, clone_function=lambda layer: QuantizableElu(name=layer.name) if is_elu(layer)
        else layer)


def convert(model, input_shape: tuple[int, int], precision: str,
            representative: np.ndarray | None = None) -> bytes:
    """Converts the mel → probabilities function of a Keras model to a TFLite flatbuffer.

    Args:
      model: a tftag Keras model (logits out).
      input_shape: (window_frames, n_mels) of one model input.
      precision: one of :data:`PRECISIONS`.
      representative: int8 only: calibration inputs [n, window_frames, n_mels].

    Returns:
      The ``.tflite`` bytes: input ``mel`` [1, window_frames, n_mels] (int8 for ``int8``, else
      float32) → probabilities [1, n_tags].
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    check_precisions([precision])
    if precision == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("int8 needs representative inputs (clips of the training split)")
        model = _int8_friendly(model)
    frames, n_mels = input_shape

    @tf.function(input_signature=[tf.TensorSpec([1, frames, n_mels], tf.float32, name="mel")],
                 autograph=False)
    def probabilities(mel):
        return tf.sigmoid(model(mel, training=False))

    # Keras 3 variables stay resource variables in a traced function: freeze them to constants.
    frozen = convert_variables_to_constants_v2(probabilities.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    if precision != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if precision == "int8":
        inputs = np.asarray(representative, np.float32)
        converter.representative_dataset = lambda: ([x[None]] for x in inputs)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with warnings.catch_warnings():  # the calibrated input range stands in for these stats
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()


def latency_ms(model: TFLiteModel, mel: np.ndarray, runs: int = 3) -> float:
    """Median milliseconds per clip of ``model.predict`` over the clips of ``mel`` [b, T, F]."""
    model.predict(mel[:1])  # warm-up
    times = []
    for _ in range(runs):
        for clip in mel:
            start = time.perf_counter()
            model.predict(clip[None])
            times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


def _write_checked(path: str, content: bytes, reference: np.ndarray, check_mels: np.ndarray,
                   precision: str) -> dict[str, Any]:
    """Checks ``content`` (loaded and run on ``check_mels``), then writes it to ``path``
    atomically; a file that fails the check is never written."""
    model = TFLiteModel(content, num_threads=1)
    diff = float(np.abs(model.predict(check_mels) - reference).max())
    if precision == "float32" and not diff <= FLOAT32_ATOL:
        raise RuntimeError(f"{path}: the float32 TFLite model differs from the Keras model by "
                           f"{diff:.2e} > {FLOAT32_ATOL} on {len(check_mels)} test clips")
    bad = non_integer_tensors(content)
    row = {"file": os.path.basename(path), "bytes": len(content), "max_abs_diff": diff,
           "latency_ms_per_clip": latency_ms(model, check_mels),
           "input_dtype": np.dtype(model.input_dtype).name,
           "input_quantization": [float(v) for v in model.input_quantization],
           "output_quantization": [float(v) for v in model.output_quantization],
           "integer_only": not bad}
    if precision == "int8":
        row["non_integer_tensors"] = bad
    runfiles.write_bytes_atomic(path, content)
    return row


def export_tflite(model, spec, version_dir: str, precisions: Sequence[str],
                  representative_mels: np.ndarray | None, check_mels: np.ndarray) -> dict:
    """Writes ``<version_dir>/tflite/<model_name>-<precision>.tflite`` and ``tflite.json``.

    Each file is written atomically, loaded and run on ``check_mels`` and compared with the Keras
    model's clip probabilities.

    Args:
      model: the trained Keras model (logits out) of ``spec``.
      spec: the export's :class:`tftag.delivery.export.ExportSpec` (name, resolution, window frames).
      version_dir: the SavedModel's version directory.
      precisions: names from :data:`PRECISIONS`.
      representative_mels: int8: clips [n, T, F] of the training split (their windows calibrate
        the quantization); may be None without int8.
      check_mels: test clips [n, T, F] the files are checked and timed on.

    Returns:
      The summary written to ``tflite/tflite.json``: {"model_name", "window_frames", "n_mels",
      "check_clips", "interpreter", "files": {precision: {"file", "bytes", "max_abs_diff",
      "latency_ms_per_clip", "integer_only", ...}}}.

    Raises:
      ValueError: an unknown precision, or int8 without representative clips.
      RuntimeError: the float32 file differs from the Keras model by more than 1e-4.
    """
    import tensorflow as tf

    check_precisions(precisions)
    if "int8" in precisions and (representative_mels is None or len(representative_mels) == 0):
        raise ValueError("--tflite=int8 needs clips of the training split to calibrate on: give "
                         "--dataset_dir (the dataset the model was trained on)")
    if len(check_mels) == 0:
        raise ValueError("no clips to check the TFLite files on")
    out_dir = os.path.join(version_dir, TFLITE_DIR)
    os.makedirs(out_dir, exist_ok=True)
    frames, n_mels = spec.window_frames, spec.mel_config.n_mels
    check_mels = np.asarray(check_mels, np.float32)
    reference = patches.mean_probabilities(model, tf.constant(check_mels),
                                           spec.patch_frames).numpy()
    representative = None
    if representative_mels is not None and len(representative_mels):
        representative = patches.windows(representative_mels, frames).reshape(-1, frames, n_mels)
    files = {}
    for precision in precisions:
        content = convert(model, (frames, n_mels), precision,
                          representative if precision == "int8" else None)
        path = os.path.join(out_dir, f"{spec.model_name}-{precision}.tflite")
        files[precision] = _write_checked(path, content, reference, check_mels, precision)
    cls = interpreter_class()
    summary = {"model_name": spec.model_name, "window_frames": frames, "n_mels": n_mels,
               "patch_frames": spec.patch_frames, "tags": list(spec.tags),
               "check_clips": int(len(check_mels)),
               "representative_windows": 0 if representative is None else int(len(representative)),
               "interpreter": f"{cls.__module__}.{cls.__name__}", "files": files}
    runfiles.write_json_atomic(os.path.join(out_dir, SUMMARY_JSON), summary)
    return summary


def dataset_mels(dataset_dir: str, mel_config, split: str | None, n: int,
                 clips: Sequence[str] | None = None) -> np.ndarray:
    """The first ``n`` clips [≤n, T, F] of a split of a dataset directory (dataset order), or
    of the clips with these ids (``split=None, clips=ids``: a fold's or held-out part)."""
    from tftag.storage import data

    mels, count = [], 0
    for batch in data.make_dataset(dataset_dir, mel_config, split, batch_size=16, as_dict=True,
                                   clips=clips):
        mels.append(batch["mel"].numpy()[: n - count])
        count += len(mels[-1])
        if count >= n:
            break
    return (np.concatenate(mels) if mels
            else np.zeros((0, mel_config.n_frames, mel_config.n_mels), np.float32))


def export_from_dataset(model, spec, version_dir: str, precisions: Sequence[str],
                        dataset_dir: str | None, representative_clips: int) -> dict:
    """:func:`export_tflite` with clips from a dataset directory: ``representative_clips`` of
    the training split (int8 only) and up to :data:`CHECK_CLIPS` of the test split (of any
    split if the test split is empty). Without a dataset, the files are checked on mels of
    noise, and int8 is an error naming ``--dataset_dir``."""
    from tftag import features
    from tftag.storage import data

    c = spec.mel_config
    representative = None
    if dataset_dir is None:
        if "int8" in precisions:
            raise ValueError("--tflite=int8 calibrates on the training split of the model's "
                             "dataset: give --dataset_dir")
        rng = np.random.default_rng(0)
        check = np.stack([features.melspectrogram(
            (0.1 * rng.standard_normal(c.n_samples)).astype(np.float32), c) for _ in range(2)])
        return export_tflite(model, spec, version_dir, precisions, None, check)
    splits = data.load_dataset_info(dataset_dir).splits
    if "int8" in precisions:
        if not splits.get("train"):
            raise ValueError(f"--tflite=int8: the training split of --dataset_dir={dataset_dir} "
                             "is empty (int8 calibrates on it)")
        representative = dataset_mels(dataset_dir, c, "train", representative_clips)
    split = "test" if splits.get("test") else max(splits, key=lambda s: splits[s])
    check = dataset_mels(dataset_dir, c, split, CHECK_CLIPS)
    return export_tflite(model, spec, version_dir, precisions, representative, check)
