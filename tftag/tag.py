"""Tagging audio files with an exported model (or a TF Serving server): ``--mode=tag``.

The model is an export of :mod:`tftag.export` (``<export_dir>/<model_name>`` for its latest
version, or one version directory); its sample rate comes from the Essentia model card beside
it, its tags from ``assets/tags.txt``. Every file is decoded with :func:`tftag.features.load_audio`
and scored through the ``serving_waveform`` signature (centre crop of the model's duration).
Unreadable files are skipped and listed in ``<output>.failures.jsonl``; outputs are written
atomically as JSON (probabilities and top tags per file) or CSV (one row per file).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Callable, Sequence

import numpy as np
from absl import logging

from tftag import runfiles

PROTOCOLS = ("grpc", "rest")


def model_version_dir(model_dir: str) -> str:
    """``model_dir`` if it is a SavedModel, else its highest integer version directory."""
    if os.path.exists(os.path.join(model_dir, "saved_model.pb")):
        return model_dir
    versions = sorted((int(d) for d in os.listdir(model_dir) if d.isdigit()), reverse=True) \
        if os.path.isdir(model_dir) else []
    if not versions:
        raise FileNotFoundError(f"--model_dir={model_dir!r} holds no SavedModel version "
                                "(expected <export_dir>/<model_name>[/<version>])")
    return os.path.join(model_dir, str(versions[0]))


def audio_files(audio: str) -> list[str]:
    """A file, or every audio file below a folder (recursive, sorted)."""
    from tftag.datasets.folder import AUDIO_EXTENSIONS

    if not os.path.exists(audio):
        raise FileNotFoundError(f"--audio={audio!r}: no such file or folder")
    if os.path.isdir(audio):
        return sorted(p for p in glob.glob(os.path.join(audio, "**", "*"), recursive=True)
                      if p.lower().endswith(AUDIO_EXTENSIONS))
    return [audio]


def model_card(version_dir: str) -> dict:
    """The Essentia model card of an export (sample rate, mel config, tags)."""
    cards = glob.glob(os.path.join(version_dir, "essentia", "*.json"))
    if not cards:
        raise FileNotFoundError(f"{version_dir}: no essentia/*.json model card (not a tftag export)")
    return runfiles.read_json(cards[0])


def _scorer(version_dir: str, server: str | None, protocol: str) -> Callable[[np.ndarray], np.ndarray]:
    from tftag import export, serving

    if server:
        if protocol not in PROTOCOLS:
            raise ValueError(f"--server_protocol={protocol!r}; known: {', '.join(PROTOCOLS)}")
        model_name = os.path.basename(os.path.dirname(version_dir.rstrip("/")))
        if protocol == "grpc":
            client = serving.GrpcClient(server, model_name)
            return lambda audio: client.predict(audio[None])["probabilities"][0]
        rest = serving.RestClient(server, model_name)
        return lambda audio: rest.predict([audio])[0]["probabilities"]
    import tensorflow as tf

    loaded = tf.saved_model.load(version_dir)
    return lambda audio: export.tag_probabilities(loaded, audio)


def write_results(output: str, version_dir: str, tags: Sequence[str], results: dict,
                  failures: list[dict], top_k: int) -> str | None:
    """Writes ``output`` (.csv: one row per file; else JSON) and the failures list, atomically.

    Returns:
      The failures file, or None when every file was tagged.
    """
    from tftag import export

    if output.endswith(".csv"):
        rows = [dict({"path": path}, **{t: f"{v:.6f}" for t, v in zip(tags, p)})
                for path, p in results.items()]
        runfiles.write_csv_atomic(output, rows, ["path", *tags])
    else:
        runfiles.write_json_atomic(output, {
            "model": version_dir, "tags": list(tags),
            "files": {path: {"probabilities": dict(zip(tags, map(float, p))),
                             "top": export.top_tags(tags, p, top_k)}
                      for path, p in results.items()},
            "failures": failures})
    if not failures:
        return None
    failed = os.path.splitext(output)[0] + ".failures.jsonl"
    runfiles.write_text_atomic(failed, "".join(json.dumps(f) + "\n" for f in failures))
    return failed


def tag(model_dir: str, audio: str, output: str, server: str | None = None,
        protocol: str = "grpc", top_k: int = 5) -> dict:
    """Tags a file or a folder; prints the top tags per file and writes ``output``.

    Args:
      model_dir: an export (``<export_dir>/<model_name>`` or a version directory).
      audio: a file or a folder (searched recursively).
      output: ``.json`` or ``.csv`` path.
      server: host:port of a TF Serving server to score with instead of loading the model.
      protocol: ``grpc`` or ``rest`` (with ``server``).
      top_k: tags printed (and stored in JSON) per file.

    Returns:
      A summary: files, tagged, failed, output, model.
    """
    from tqdm import tqdm

    from tftag import export, features
    from tftag._essentia import DecoderCrashedError

    version_dir = model_version_dir(model_dir)
    files = audio_files(audio)
    tags = export.load_tags(version_dir)
    sr = int(model_card(version_dir)["inference"]["sample_rate"])
    probabilities = _scorer(version_dir, server, protocol)
    results, failures = {}, []
    for path in tqdm(files, desc="tag", unit="file", disable=len(files) < 2):
        try:
            samples = features.load_audio(path, sr)
        except (features.AudioDecodeError, FileNotFoundError, DecoderCrashedError) as e:
            failures.append({"path": path, "error": type(e).__name__, "reason": str(e)})
            logging.warning("skipped %s: %s", path, e)
            continue
        p = np.asarray(probabilities(samples), dtype=float)
        results[path] = p
        top = ", ".join(f"{t} {v:.2f}" for t, v in export.top_tags(tags, p, top_k))
        print(f"{path}: {top}")
    failed = write_results(output, version_dir, tags, results, failures, top_k)
    print(f"tagged {len(results)}/{len(files)} files with {version_dir} -> {output}"
          + (f"; {len(failures)} unreadable, see {failed}" if failed else ""))
    return {"files": len(files), "tagged": len(results), "failed": len(failures),
            "output": output, "model": version_dir}
