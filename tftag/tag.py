"""Tagging whole tracks: ``--mode=tag`` with a pretrained model, an export or a TF Serving server.

The model is a pretrained musicnn port (``--pretrained=MTT_musicnn|MTT_vgg``, no export needed)
or an export of :mod:`tftag.export` (``<export_dir>/<model_name>`` for its latest version, or
one version directory: sample rate from its Essentia model card, tags from ``assets/tags.txt``).
A track is tagged whole, in bounded memory (:mod:`tftag.tracks`): read in blocks, turned into
mel frames as it streams, cut into the model's windows (its input length: 3-s patches for
MTT_musicnn, the whole 29.1-s clip for a clip model), every ``--window_hop`` seconds
(default: the window length, non-overlapping, as musicnn). A file's result: the mean
probabilities over its windows, the taggram (window start/end seconds and per-window
probabilities) and, with ``--embeddings``, the penultimate-layer embedding per window and its
mean. A file shorter than one window is zero-padded to one and flagged ``padded``.

Decoding and mel run in a background thread while the model scores the previous windows (NumPy,
libsndfile and soxr release the GIL), and the model is loaded once per run. Unreadable files
are skipped and listed in ``<output>.failures.jsonl``; outputs are written atomically: JSON
(probabilities, top tags and taggram per file) or CSV (one row per file), and optionally one
``.npz`` + ``.csv`` taggram per file (``--taggram_dir``), a taggram PNG per file (``--plot``)
and embeddings (``--embeddings``). With ``--server`` (TF Serving, gRPC or REST) the same windows
are scored by the server's ``serving_window`` signature: same outputs, nothing loaded here.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import queue
import re
import threading
from typing import Callable, Iterator, Sequence

import numpy as np
from absl import logging

from tftag import runfiles

PROTOCOLS = ("grpc", "rest")


def check_protocol(protocol: str) -> None:
    """Raises a one-line ValueError unless ``protocol`` is one of PROTOCOLS."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--server_protocol={protocol!r}; known: {', '.join(PROTOCOLS)}")


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


def write_failures(output: str, failures: list[dict]) -> str | None:
    """``<output stem>.failures.jsonl`` (one JSON record per skipped file), atomically; None
    when nothing failed."""
    if not failures:
        return None
    failed = os.path.splitext(output)[0] + ".failures.jsonl"
    runfiles.write_text_atomic(failed, "".join(json.dumps(f) + "\n" for f in failures))
    return failed


def tag(model_dir: str | None, audio: str, output: str, server: str | None = None,
        protocol: str = "grpc", top_k: int = 5, *, pretrained: str | None = None,
        window_hop: float = 0.0, taggram_dir: str | None = None, plot: bool = False,
        embeddings: bool = False, block_seconds: float = 30.0) -> dict:
    """Tags a file or a folder; prints the top tags per file and writes ``output``.

    Args:
      model_dir: an export (``<export_dir>/<model_name>`` or a version directory), or None
        with ``pretrained``.
      audio: a file or a folder (searched recursively).
      output: ``.json`` or ``.csv`` path.
      server: host:port of a TF Serving server serving ``model_dir``'s model: windows are scored
        there (``serving_window``) instead of loading the model here.
      protocol: ``grpc`` or ``rest`` (with ``server``).
      top_k: tags printed (and stored in JSON) per file.
      pretrained: ``MTT_musicnn`` or ``MTT_vgg`` instead of ``model_dir``.
      window_hop: seconds between window starts; 0 = the window length (no overlap).
      taggram_dir: where to write one ``.npz`` + ``.csv`` taggram per file (and the plots and
        embeddings); None = no taggram files (plots and embeddings then go to
        ``<output stem>_taggrams/``).
      plot: write a taggram PNG per file.
      embeddings: write ``<stem>.embeddings.npz`` per file (``windows`` [W, d], ``mean`` [d]).
      block_seconds: seconds of audio decoded at a time (bounds memory on long files).

    Returns:
      A summary: files, tagged, failed, output, model.
    """
    from tqdm import tqdm

    from tftag import export, tracks

    if bool(pretrained) == bool(model_dir):
        raise ValueError("give one of --pretrained (MTT_musicnn, MTT_vgg) or --model_dir")
    if server and not model_dir:
        raise ValueError("--server needs --model_dir: the export the server serves (its model "
                         "card and tags)")
    check_protocol(protocol)  # before the folder is searched
    if model_dir:
        model_version_dir(model_dir)  # a bad --model_dir fails before the folder is searched
    files = audio_files(audio)
    if server:
        tagger = Tagger.from_server(model_dir, server, protocol)
    else:
        tagger = Tagger.pretrained(pretrained) if pretrained else Tagger.from_export(model_dir)
    if window_hop:
        tagger.spec = tracks.WindowSpec(tagger.spec.mel_config, tagger.spec.window_frames,
                                        max(1, tagger.spec.mel_config.frames_in(window_hop)))
    side_dir = taggram_dir or (os.path.splitext(output)[0] + "_taggrams"
                               if plot or embeddings else None)
    tags = tagger.tags
    results: dict[str, TrackResult] = {}
    failures: list[dict] = []
    written: list[str] = []
    progress = tqdm(total=len(files), desc="tag", unit="file", disable=len(files) < 2)
    for item in tag_tracks(tagger, files, block_seconds, embeddings):
        progress.update(1)
        if isinstance(item, dict):
            failures.append(item)
            logging.warning("skipped %s: %s", item["path"], item["reason"])
            continue
        results[item.path] = item
        stem = output_stem(item.path, audio)
        if taggram_dir:
            written += write_taggram(item, tags, stem, taggram_dir)
        if embeddings:
            written.append(write_embeddings(item, stem, side_dir))
        if plot:
            written.append(plot_taggram(item, tags, f"{os.path.basename(item.path)} "
                                        f"({tagger.name})", os.path.join(side_dir, f"{stem}.png")))
        top = ", ".join(f"{t} {v:.2f}" for t, v in export.top_tags(tags, item.probabilities, top_k))
        print(f"{item.path}: {top}" + (" (shorter than one window: padded)" if item.padded else ""))
    progress.close()
    failed = write_track_results(output, tagger, results, failures, top_k)
    print(f"tagged {len(results)}/{len(files)} files with {tagger.name} -> {output}"
          + (f"; taggrams, plots, embeddings in {side_dir}" if written else "")
          + (f"; {len(failures)} unreadable, see {failed}" if failed else ""))
    return {"files": len(files), "tagged": len(results), "failed": len(failures),
            "output": output, "model": tagger.name, "side_outputs": written}


def write_track_results(output: str, tagger: "Tagger", results: dict, failures: list[dict],
                        top_k: int) -> str | None:
    """Writes ``output`` (.csv: one row per file; else JSON with taggrams) and the failures
    list, atomically. Returns the failures file, or None when every file was tagged."""
    from tftag import export

    tags = tagger.tags
    if output.endswith(".csv"):
        rows = [dict({"path": path, "seconds": f"{r.seconds:.3f}", "windows": len(r.taggram),
                      "padded": int(r.padded)},
                     **{t: f"{v:.6f}" for t, v in zip(tags, r.probabilities)})
                for path, r in results.items()]
        runfiles.write_csv_atomic(output, rows, ["path", "seconds", "windows", "padded", *tags])
    else:
        runfiles.write_json_atomic(output, {
            "model": tagger.name, "tags": tags,
            "window_seconds": tagger.spec.window_seconds,
            "hop_seconds": tagger.spec.hop * tagger.spec.frame_seconds,
            "files": {path: {
                "seconds": r.seconds, "windows": len(r.taggram), "padded": r.padded,
                "probabilities": dict(zip(tags, map(float, r.probabilities))),
                "top": export.top_tags(tags, r.probabilities, top_k),
                "taggram": {"start": [round(float(x), 4) for x in r.starts],
                            "end": [round(float(x + r.window_seconds), 4) for x in r.starts],
                            "probabilities": np.round(r.taggram, 6).tolist()}}
                for path, r in results.items()},
            "failures": failures})
    return write_failures(output, failures)


# ----------------------------------------------------------------------------- whole tracks

PRETRAINED = ("MTT_musicnn", "MTT_vgg")  # tftag.models.pretrained.VARIABLE_MAPS (tested)
BATCH_WINDOWS = 8  # windows per model call (MTT_musicnn: 23 ms/window at 8, 30 at 16-32)
QUEUE_ITEMS = 8  # decoded batches waiting for the model (bounds memory)


@dataclasses.dataclass(frozen=True)
class TrackResult:
    """One tagged file.

    Attributes:
      path: the file.
      seconds: its duration at the model's sample rate.
      starts: window start times [W] in seconds; a window ends ``window_seconds`` later.
      window_seconds: seconds one window covers.
      taggram: per-window probabilities [W, n_tags].
      embeddings: per-window penultimate-layer embeddings [W, d], or None.
      padded: the file was shorter than one window (zero-padded to one).
    """

    path: str
    seconds: float
    starts: np.ndarray
    window_seconds: float
    taggram: np.ndarray
    embeddings: np.ndarray | None
    padded: bool

    @property
    def probabilities(self) -> np.ndarray:
        """Track-level probabilities [n_tags]: the mean over windows."""
        return self.taggram.mean(axis=0)

    @property
    def mean_embedding(self) -> np.ndarray | None:
        """The mean embedding [d], or None."""
        return None if self.embeddings is None else self.embeddings.mean(axis=0)


def _card_mel_config(card: dict):
    """The MelConfig of an export's Essentia model card."""
    from tftag.features import MelConfig

    mel = card["inference"]["mel"]
    return MelConfig(**{k: mel[k] for k in ("sr", "n_mels", "hop_factor", "compression", "duration")})


class Tagger:
    """A model that scores mel windows: its window spec, tags and scoring function.

    Build one with :meth:`pretrained` or :meth:`from_export`; :meth:`score` maps windows
    [w, window_frames, n_mels] to (probabilities [w, n_tags], embeddings [w, d]).
    """

    def __init__(self, name: str, spec, tags: Sequence[str],
                 score: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]):
        self.name, self.spec, self.tags, self._score = name, spec, list(tags), score

    @classmethod
    def pretrained(cls, name: str) -> "Tagger":
        """A pretrained musicnn port (``MTT_musicnn`` or ``MTT_vgg``): 3-s windows of the
        16 kHz 96-band log mel, the 50 MTAT tags."""
        import tensorflow as tf

        from tftag import tracks
        from tftag.models import inference_fn, pretrained

        if name not in PRETRAINED:
            raise ValueError(f"--pretrained={name!r}; known: {', '.join(PRETRAINED)}")
        run = tf.function(inference_fn(pretrained.load_musicnn(name)), reduce_retracing=True)

        def score(windows):
            logits, embedding = run(tf.constant(windows))
            return tf.sigmoid(logits).numpy(), embedding.numpy()

        spec = tracks.WindowSpec(pretrained.MEL_CONFIG, pretrained.PATCH_FRAMES)
        return cls(name, spec, pretrained.MTT_TAGS, score)

    @classmethod
    def from_server(cls, model_dir: str, server: str, protocol: str = "grpc") -> "Tagger":
        """Windows scored by a TF Serving server (its ``serving_window`` signature) serving the
        export ``model_dir`` (read here for its model card and tags only; the model name is the
        export's folder name)."""
        from tftag import export, serving, tracks

        check_protocol(protocol)
        version_dir = model_version_dir(model_dir)
        card = model_card(version_dir)
        config = _card_mel_config(card)
        window_frames = card["inference"].get("patch_frames") or config.n_frames
        model_name = os.path.basename(os.path.dirname(version_dir.rstrip("/")))
        if protocol == "grpc":
            client = serving.GrpcClient(server, model_name)

            def score(windows):
                out = client.predict(windows, signature="serving_window")
                return out["probabilities"], out["embedding"]
        else:  # rest
            client = serving.RestClient(server, model_name)

            def score(windows):
                rows = client.predict(list(windows), signature="serving_window")
                return (np.stack([r["probabilities"] for r in rows]),
                        np.stack([r["embedding"] for r in rows]))
        return cls(f"{model_name} at {server}", tracks.WindowSpec(config, int(window_frames)),
                   export.load_tags(version_dir), score)

    @classmethod
    def from_export(cls, model_dir: str) -> "Tagger":
        """An export's ``serving_window`` signature (exports made before it existed: re-export)."""
        import tensorflow as tf

        from tftag import export, tracks

        version_dir = model_version_dir(model_dir)
        card = model_card(version_dir)
        loaded = tf.saved_model.load(version_dir)
        if "serving_window" not in loaded.signatures:
            raise ValueError(f"--model_dir={model_dir!r}: this export has no serving_window "
                             "signature (made by an older tftag); export it again")
        fn = loaded.signatures["serving_window"]
        _, window_frames, n_mels = fn.structured_input_signature[1]["mel"].shape
        config = _card_mel_config(card)

        def score(windows):
            out = fn(mel=tf.constant(windows))
            return out["probabilities"].numpy(), out["embedding"].numpy()

        tagger = cls(version_dir, tracks.WindowSpec(config, int(window_frames)),
                     export.load_tags(version_dir), score)
        tagger._loaded = loaded  # keeps the SavedModel's resources alive
        return tagger

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [w, n_tags], embeddings [w, d]) of windows [w, frames, n_mels]."""
        probs, embs = [], []
        for start in range(0, len(windows), BATCH_WINDOWS):
            p, e = self._score(windows[start:start + BATCH_WINDOWS])
            probs.append(p)
            embs.append(e)
        return np.concatenate(probs), np.concatenate(embs)


def track_windows(path: str, spec, block_seconds: float) -> Iterator[tuple[np.ndarray, dict]]:
    """The model windows of one file, in batches of at most BATCH_WINDOWS, streamed from block
    reads; the last item's info holds ``seconds`` and ``padded``."""
    from tftag import tracks

    mel = tracks.StreamingMel(spec.mel_config)
    cutter = tracks.Windows(spec)
    samples = 0
    pending = []

    def flush():
        nonlocal pending
        out = np.concatenate(pending) if pending else np.zeros(
            (0, spec.window_frames, spec.mel_config.n_mels), np.float32)
        pending = []
        return out

    for block in tracks.read_blocks(path, spec.mel_config.sr, block_seconds):
        samples += block.size
        pending.append(cutter.push(mel.feed(block)))
        if sum(len(p) for p in pending) >= BATCH_WINDOWS:
            yield flush(), {}
    if samples == 0:
        from tftag import features

        raise features.AudioDecodeError(f"{path}: no samples")
    pending.append(cutter.push(mel.finish()))
    pending.append(cutter.finish())
    yield flush(), {"seconds": samples / spec.mel_config.sr, "padded": cutter.padded}


def tag_tracks(tagger: Tagger, files: Sequence[str], block_seconds: float = 30.0,
               embeddings: bool = False) -> Iterator[TrackResult | dict]:
    """Tags every file whole; yields a :class:`TrackResult` per file, or a failure record
    ``{"path", "error", "reason"}`` for a file that cannot be read.

    Decoding and mel computation run in a background thread, at most QUEUE_ITEMS batches
    ahead of the model.
    """
    from tftag import features
    from tftag._essentia import DecoderCrashedError

    errors = (features.AudioDecodeError, FileNotFoundError, DecoderCrashedError, RuntimeError,
              ValueError, OSError)
    items: queue.Queue = queue.Queue(maxsize=QUEUE_ITEMS)
    stop = threading.Event()

    def produce():
        for path in files:
            if stop.is_set():
                return
            try:
                for windows, info in track_windows(path, tagger.spec, block_seconds):
                    items.put((path, windows, info))
            except errors as e:  # noqa: PERF203  one bad file must not end the run
                items.put((path, None, {"error": type(e).__name__, "reason": str(e)}))
        items.put(None)

    worker = threading.Thread(target=produce, name="tftag-decode", daemon=True)
    worker.start()
    window_seconds = tagger.spec.window_seconds
    hop_seconds = tagger.spec.hop * tagger.spec.frame_seconds
    probs: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    try:
        while True:
            item = items.get()
            if item is None:
                break
            path, windows, info = item
            if windows is None:
                probs, embs = [], []
                yield {"path": path, **info}
                continue
            if len(windows):
                p, e = tagger.score(windows)
                probs.append(p)
                if embeddings:
                    embs.append(e)
            if "seconds" in info:  # the file's last batch
                taggram = np.concatenate(probs)
                yield TrackResult(path, info["seconds"],
                                  np.arange(len(taggram)) * hop_seconds, window_seconds, taggram,
                                  np.concatenate(embs) if embeddings else None, info["padded"])
                probs, embs = [], []
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                items.get_nowait()
            except queue.Empty:
                worker.join(0.05)


def output_stem(path: str, root: str) -> str:
    """A file name for a track's side outputs: its path below ``root`` with separators as
    ``__`` (unique within one run)."""
    rel = os.path.relpath(path, root) if os.path.isdir(root) else os.path.basename(path)
    return re.sub(r"[\\\\/]+", "__", os.path.splitext(rel)[0])


def write_taggram(result: TrackResult, tags: Sequence[str], stem: str, out_dir: str) -> list[str]:
    """``<stem>.npz`` (taggram, start, end, tags) and ``<stem>.csv`` (one row per window)."""
    os.makedirs(out_dir, exist_ok=True)
    ends = result.starts + result.window_seconds
    npz = os.path.join(out_dir, f"{stem}.npz")
    runfiles.write_npz_atomic(npz, taggram=result.taggram.astype(np.float32), start=result.starts,
                              end=ends, tags=np.array(list(tags)), padded=result.padded)
    rows = [dict({"start": f"{s:.3f}", "end": f"{e:.3f}"},
                 **{t: f"{v:.6f}" for t, v in zip(tags, row)})
            for s, e, row in zip(result.starts, ends, result.taggram)]
    csv_path = os.path.join(out_dir, f"{stem}.csv")
    runfiles.write_csv_atomic(csv_path, rows, ["start", "end", *tags])
    return [npz, csv_path]


def write_embeddings(result: TrackResult, stem: str, out_dir: str) -> str:
    """``<stem>.embeddings.npz``: ``windows`` [W, d], ``mean`` [d], ``start`` [W]."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{stem}.embeddings.npz")
    runfiles.write_npz_atomic(path, windows=result.embeddings.astype(np.float32),
                              mean=result.mean_embedding.astype(np.float32), start=result.starts)
    return path


def plot_taggram(result: TrackResult, tags: Sequence[str], title: str, path: str,
                 top: int | None = None) -> str:
    """A time × tag heat map of the taggram (musicnn-style), written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.arange(len(tags)) if top is None else np.argsort(-result.probabilities)[:top]
    grid = result.taggram[:, order].T  # [tags, windows]
    fig, ax = plt.subplots(figsize=(min(16, 4 + 0.08 * grid.shape[1]), 0.16 * len(order) + 1.5))
    end = float(result.starts[-1] + result.window_seconds) if len(result.starts) else 0.0
    ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="Blues", vmin=0, vmax=1,
              extent=(0.0, end, len(order) - 0.5, -0.5))
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([tags[i] for i in order], fontsize=7)
    ax.set_xlabel("seconds")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return runfiles.save_figure_atomic(fig, path, dpi=80)
