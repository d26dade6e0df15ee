"""Running a tftag ``.tflite`` file: the interpreter wrapper and the integer-only check.

A file written by :mod:`tftag.delivery.tflite` holds the mel → probabilities function of the model's own
input window: ``mel`` [1, window_frames, n_mels] → ``probabilities`` [1, n_tags].
:class:`TFLiteModel` runs it clip by clip; a clip's probabilities are the mean over its windows,
cut by :mod:`tftag.patches` exactly as evaluation cuts them for the Keras model.

The interpreter is LiteRT's (``ai_edge_litert``, the successor of ``tf.lite.Interpreter``, which
TensorFlow 2.21 deprecates); without that package, ``tf.lite.Interpreter``. Loading and running
a file imports no TensorFlow when LiteRT is installed (this module never imports it otherwise).
"""

from __future__ import annotations

import os

import numpy as np

from tftag import patches

# Tensor dtypes of an integer-only model: int8 activations, weights and I/O; int32 biases and
# shape operands.
INTEGER_DTYPES = (np.int8, np.int32)


def interpreter_class():
    """LiteRT's ``Interpreter`` (``ai_edge_litert``), else ``tf.lite.Interpreter``."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # LiteRT not installed: TensorFlow's own (deprecated) interpreter
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


class TFLiteModel:
    """A ``.tflite`` file of :func:`tftag.delivery.tflite.convert` run by the interpreter, clip by clip.

    Attributes:
      window_frames, n_mels: the input [1, window_frames, n_mels] of the file.
      n_tags: probabilities per clip.
      input_dtype: np.float32, or np.int8 (quantized with ``input_quantization``).
    """

    def __init__(self, path_or_bytes: str | bytes, num_threads: int = 1):
        """Loads a file (a path, or its bytes); ``num_threads``: interpreter threads."""
        cls = interpreter_class()
        if isinstance(path_or_bytes, (bytes, bytearray)):
            self.path = None
            self.interpreter = cls(model_content=bytes(path_or_bytes), num_threads=num_threads)
        else:
            if not os.path.isfile(path_or_bytes):
                raise FileNotFoundError(f"{path_or_bytes!r}: no such .tflite file")
            self.path = path_or_bytes
            self.interpreter = cls(model_path=path_or_bytes, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0]["shape"]) != 3:
            raise ValueError(f"{self.path or 'model'}: not a tftag TFLite file (expected one "
                             "input [1, frames, n_mels] and one output)")
        self._input, self._output = inputs[0], outputs[0]
        _, self.window_frames, self.n_mels = (int(v) for v in self._input["shape"])
        self.n_tags = int(self._output["shape"][-1])
        self.input_dtype = self._input["dtype"]
        self.input_quantization = self._input["quantization"]  # (scale, zero_point)
        self.output_quantization = self._output["quantization"]

    def _run(self, window: np.ndarray) -> np.ndarray:
        """Probabilities [n_tags] of one model input [window_frames, n_mels]."""
        x = window[None]
        if self.input_dtype != np.float32:
            scale, zero = self.input_quantization
            info = np.iinfo(self.input_dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        self.interpreter.set_tensor(self._input["index"], x.astype(self.input_dtype))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._output["index"])[0]
        if self._output["dtype"] != np.float32:
            scale, zero = self.output_quantization
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)

    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        """Probabilities [w, n_tags] of model inputs [w, window_frames, n_mels] (one each)."""
        windows = np.asarray(windows, np.float32)
        return (np.stack([self._run(w) for w in windows]) if len(windows)
                else np.zeros((0, self.n_tags), np.float32))

    def predict(self, mel: np.ndarray) -> np.ndarray:
        """Clip probabilities [b, n_tags] of mels [b, T, F]: the mean over the clip's windows
        (:func:`tftag.patches.windows`), as :func:`tftag.patches.mean_probabilities`."""
        mel = np.asarray(mel, np.float32)
        if mel.ndim != 3 or mel.shape[2] != self.n_mels:
            raise ValueError(f"mel must be [batch, frames, {self.n_mels}]; got {mel.shape}")
        batch = patches.windows(mel, self.window_frames)
        return np.stack([np.mean([self._run(w) for w in clip], axis=0) for clip in batch]) \
            if len(batch) else np.zeros((0, self.n_tags), np.float32)

    clip_probabilities = predict  # what tftag.evaluate.predict_clips calls


def load_checked(path: str, mel_config, n_tags: int) -> TFLiteModel:
    """The TFLite file of ``--tflite`` for evaluation, checked against the resolution and tags.

    Raises:
      FileNotFoundError: ``path`` is not an existing ``.tflite`` file.
      ValueError: its input or output does not fit ``mel_config`` and ``n_tags``.
    """
    if not path.endswith(".tflite") or not os.path.isfile(path):
        raise FileNotFoundError(f"--tflite={path}: no such .tflite file (with --mode=evaluate, "
                                "--tflite names one file)")
    model = TFLiteModel(path)
    if model.n_mels != mel_config.n_mels or model.n_tags != n_tags:
        raise ValueError(f"--tflite={path}: input [1, {model.window_frames}, {model.n_mels}] → "
                         f"{model.n_tags} tags does not fit {mel_config.name} with {n_tags} tags")
    return model


def non_integer_tensors(path_or_bytes: str | bytes) -> list[str]:
    """The tensors of a TFLite model that are not int8 / int32, as ``"name: dtype"``.

    Every tensor in the interpreter's tensor table is checked: weights, biases, intermediate
    activations, inputs and outputs. int8 (activations, weights, I/O) and int32 (biases, shape
    operands) are integer; any float32 / float16 tensor means some kernel runs in float (a
    DEQUANTIZE → float op → QUANTIZE island, float weights, or float I/O).
    """
    model = TFLiteModel(path_or_bytes)
    return [f"{t['name']}: {np.dtype(t['dtype']).name}"
            for t in model.interpreter.get_tensor_details()
            if np.dtype(t["dtype"]) not in [np.dtype(d) for d in INTEGER_DTYPES]]


def integer_only(path_or_bytes: str | bytes) -> bool:
    """Whether every tensor of the model is int8 or int32 (:func:`non_integer_tensors`)."""
    return not non_integer_tensors(path_or_bytes)
