"""Tagging whole tracks: ``--mode=tag`` with a pretrained model, an export or a TF Serving server.

The model is a pretrained model (``--pretrained=NAME``: a musicnn port, MTT_musicnn or MTT_vgg,
or a shipped tftag student, e.g. tftag_vgg_32x4; no export needed; :mod:`tftag.models.pretrained`)
or an export of :mod:`tftag.delivery.export` (``<export_dir>/<model_name>`` for its latest version, or
one version directory: sample rate from its Essentia model card, tags from ``assets/tags.txt``).
A track is tagged whole, in bounded memory (:mod:`tftag.tagging.tracks`): read in blocks, turned into
mel frames as it streams, cut into the model's windows (its input length: 3-s patches for
MTT_musicnn, the whole 29.1-s clip for a clip model), every ``--window_hop`` seconds
(default: the window length, non-overlapping, as musicnn). A file's result: the mean
probabilities over its windows, the taggram (window start/end seconds and per-window
probabilities) and, with ``--embeddings``, the penultimate-layer embedding per window and its
mean. A file shorter than one window is zero-padded to one and flagged ``padded``.

Decoding and the mel run in ``--workers`` processes (default: one per core; 1 = one background
thread) while the model, loaded once per run in this process, scores the windows they send
(:func:`tftag.tagging.tracks.tag_tracks`); a decoding worker that dies or fails otherwise than on
an unreadable file ends the run at once with a one-line error. An export is found and read by
:mod:`tftag.delivery.export_layout`. Results (:mod:`tftag.tagging.results`): ``.jsonl`` or
``.csv`` rows appended as each file is tagged (a crash loses only the files in flight; rerunning
the same command resumes, matching files by relative path + size + mtime; ``--retry_failed``
tags the unreadable ones again), or one ``.json`` document (with taggrams) at the end; unreadable
files are skipped and appended to ``<output stem>.failures.jsonl``. Optionally one ``.npz`` +
``.csv`` taggram per file (``--taggram_dir``), a taggram PNG per file (``--plot``) and embeddings
(``--embeddings``: with a .jsonl/.csv output, one mean embedding per file in the sharded store
``<output stem>.embeddings/`` of :mod:`tftag.tagging.embeddings`, resumed with the rows, which
``--mode=similar`` searches; with a .json output, one ``.embeddings.npz`` per file). With ``--server`` (TF Serving, gRPC or REST) the same windows are scored by
the server's ``serving_window`` signature: same outputs, nothing loaded here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import re
from typing import Callable, Sequence

import numpy as np
from absl import logging

from tftag.delivery import export_layout
from tftag.runs import runfiles
from tftag.tagging import embeddings as _embeddings
from tftag.tagging import results, tracks
from tftag.delivery.export_layout import model_version_dir
from tftag.models import pretrained as _pretrained
from tftag.tagging.results import top_tags  # noqa: F401  (kept importable here)
from tftag.tagging.tracks import TrackResult, tag_tracks  # noqa: F401  (the engine, kept importable here)

PROTOCOLS = ("grpc", "rest")
PRETRAINED = tuple(_pretrained.names())  # the pretrained registry's names at import


def check_args(model_dir: str | None, pretrained: str | None, server: str | None) -> None:
    """The model arguments of ``--mode=tag``: one of ``pretrained`` and ``model_dir``, and
    ``server`` only with ``model_dir``; else a ValueError naming the flags."""
    if bool(model_dir) == bool(pretrained):
        raise ValueError(f"--mode=tag needs --pretrained ({', '.join(_pretrained.names())}) or "
                         "--model_dir (an exported model), not both")
    if server and pretrained:
        raise ValueError("--server scores with a served export: give its --model_dir")


def check_protocol(protocol: str) -> None:
    """Raises a one-line ValueError unless ``protocol`` is one of PROTOCOLS."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--server_protocol={protocol!r}; known: {', '.join(PROTOCOLS)}")


def audio_files(audio: str) -> list[str]:
    """A file, or every audio file below a folder (recursive, sorted)."""
    from tftag.datasets.folder import AUDIO_EXTENSIONS

    if not os.path.exists(audio):
        raise FileNotFoundError(f"--audio={audio!r}: no such file or folder")
    if os.path.isdir(audio):
        return sorted(p for p in glob.glob(os.path.join(audio, "**", "*"), recursive=True)
                      if p.lower().endswith(AUDIO_EXTENSIONS))
    return [audio]


def tag(model_dir: str | None, audio: str, output: str, server: str | None = None,
        protocol: str = "grpc", top_k: int = 5, *, pretrained: str | None = None,
        window_hop: float = 0.0, taggram_dir: str | None = None, plot: bool = False,
        embeddings: bool = False, block_seconds: float = 30.0, workers: int = 1,
        retry_failed: bool = False) -> dict:
    """Tags a file or a folder; prints the top tags per file and writes ``output``.

    Args:
      model_dir: an export (``<export_dir>/<model_name>`` or a version directory), or None
        with ``pretrained``.
      audio: a file or a folder (searched recursively).
      output: ``.jsonl`` or ``.csv`` (a row appended per file as it is tagged; a rerun resumes)
        or ``.json`` (one document at the end): :mod:`tftag.tagging.results`.
      server: host:port of a TF Serving server serving ``model_dir``'s model: windows are scored
        there (``serving_window``) instead of loading the model here.
      protocol: ``grpc`` or ``rest`` (with ``server``).
      top_k: tags printed (and stored in JSON) per file.
      pretrained: a name of the pretrained registry (``MTT_musicnn``, ``MTT_vgg``, a shipped
        student such as ``tftag_vgg_32x4``) instead of ``model_dir``.
      window_hop: seconds between window starts; 0 = the window length (no overlap).
      taggram_dir: where to write one ``.npz`` + ``.csv`` taggram per file (and the plots and
        embeddings); None = no taggram files (plots and embeddings then go to
        ``<output stem>_taggrams/``).
      plot: write a taggram PNG per file.
      embeddings: with a .jsonl/.csv ``output``, each file's mean embedding into the sharded
        store ``<output stem>.embeddings/`` (:mod:`tftag.tagging.embeddings`); with a .json
        one, ``<stem>.embeddings.npz`` per file (``windows`` [W, d], ``mean`` [d]).
      block_seconds: seconds of audio decoded at a time (bounds memory on long files).
      workers: decoding processes (0 = one per core); 1 = one decoding thread in this process.
      retry_failed: with a .jsonl/.csv output, tag again the files its failures manifest lists
        (unchanged ones are skipped otherwise).

    Returns:
      A summary: files, tagged, failed, skipped (tagged before), failed_before (skipped),
      output, model, workers, side_outputs (files written beside ``output``), and with a
      store: embeddings (its folder), embedded_only (files tagged before, embedded now).

    Raises:
      tftag.tagging.tracks.DecodingError: decoding failed otherwise than on an unreadable file
        (rows written stay).
    """
    check_args(model_dir, pretrained, server)
    check_protocol(protocol)  # before the folder is searched
    streamed = results.check_output(output, retry_failed) in results.STREAMED
    if model_dir:
        model_version_dir(model_dir)  # a bad --model_dir fails before the folder is searched
    files = audio_files(audio)
    workers = workers or tracks.default_workers()
    npz = embeddings and not streamed  # .json: one .embeddings.npz per file
    side = SideOutputs(taggram_dir, taggram_dir or (os.path.splitext(output)[0] + "_taggrams"
                                                    if plot or npz else None), plot, npz)
    with contextlib.ExitStack() as stack:
        # The decoding workers start first: their imports overlap the model's load.
        pool = (stack.enter_context(tracks.DecoderPool(min(workers, len(files))))
                if workers > 1 and len(files) > 1 else None)
        tagger = load_tagger(model_dir, pretrained, server, protocol, window_hop)
        spec = results.OutputSpec(tagger.name, tuple(tagger.tags), tagger.spec.window_seconds,
                                  tagger.spec.hop * tagger.spec.frame_seconds, top_k)
        plan = results.plan(output, files, audio, spec, retry_failed)
        store, embed_only = (_open_store(output, files, audio, plan, tagger, model_source(
            model_dir, pretrained, server, protocol)) if embeddings and streamed else (None, ()))
        if store is not None:
            stack.callback(store.close)
        out = stack.enter_context(results.open_results(output, spec, audio))
        try:
            tagged, failed, written = _tag_files(tagger, plan.todo + embed_only, out, audio,
                                                 side, block_seconds, pool, store,
                                                 frozenset(embed_only))
        except tracks.DecodingError as e:
            raise tracks.DecodingError(
                f"{e}; the rows written so far stay: rerun the same command to resume"
                if out.format in results.STREAMED else
                f"{e}; a .json output is written at the end only (.jsonl keeps rows)") from None
    print(f"tagged {tagged}/{len(plan.todo)} files with {tagger.name} -> {output}"
          + (f"; {plan.done} tagged before, skipped" if plan.done else "")
          + (f"; {plan.failed_before} unreadable before, skipped (--retry_failed retries them)"
             if plan.failed_before else "")
          + (f"; taggrams, plots, embeddings in {side.folder}" if written else "")
          + (f"; embeddings in {store.directory} ({store.count} files"
             + (f", {len(embed_only)} tagged before embedded now" if embed_only else "") + ")"
             if store is not None else "")
          + (f"; {failed} unreadable, see {out.failures_file}" if failed else ""))
    return {"files": len(files), "tagged": tagged, "failed": failed, "skipped": plan.done,
            "failed_before": plan.failed_before, "output": output, "model": tagger.name,
            "workers": workers, "side_outputs": written,
            **({"embeddings": store.directory, "embedded_only": len(embed_only)}
               if store is not None else {})}


def run(o) -> dict:
    """``--mode=tag`` from its options (:class:`tftag.cli.TagOptions`)."""
    return tag(o.model_dir, o.audio or "", o.output, o.server, o.server_protocol, o.top_k,
               pretrained=o.pretrained, window_hop=o.window_hop, taggram_dir=o.taggram_dir,
               plot=o.plot, embeddings=o.embeddings, block_seconds=o.block_seconds,
               workers=o.workers, retry_failed=o.retry_failed)


def model_source(model_dir: str | None, pretrained: str | None, server: str | None,
                 protocol: str = "grpc") -> dict:
    """How to load the model of ``--mode=tag``'s flags again (an embedding store's meta)."""
    if pretrained:
        return {"pretrained": pretrained}
    return {"model_dir": os.path.abspath(model_dir),
            **({"server": server, "protocol": protocol} if server else {})}


def _open_store(output: str, files: Sequence[str], root: str, plan: results.Plan,
                tagger: "Tagger", source: dict
                ) -> tuple[_embeddings.EmbeddingStore, tuple[str, ...]]:
    """The embedding store of a streamed ``output``, tidied for this run's ``plan``, and the
    files tagged before that it lacks (embedded again, their rows not written twice)."""
    current = {key.rel_path: key for key in (results.FileKey.of(p, root) for p in files)}
    meta = _embeddings.StoreMeta(tagger.name, tagger.spec.mel_config.name, source,
                                 tagger.spec.window_frames, tagger.spec.hop,
                                 shard_rows=_embeddings.SHARD_ROWS)
    store = _embeddings.EmbeddingStore(_embeddings.store_dir(output), meta).open(
        current, {results.rel_path(p, root) for p in plan.todo})
    missing = tuple(p for p in files if (rel := results.rel_path(p, root)) in plan.done_paths
                    and rel not in store.entries)
    return store, missing


def _tag_files(tagger: "Tagger", files: Sequence[str], out: results.Results, root: str,
               side: "SideOutputs", block_seconds: float, pool: tracks.DecoderPool | None,
               store: _embeddings.EmbeddingStore | None = None,
               embed_only: frozenset[str] = frozenset()) -> tuple[int, int, int]:
    """Tags ``files`` into ``out``, printing each file's top tags; returns (tagged, failed,
    side outputs written). With ``store``, a file's embedding is stored before its row is
    written (files of ``embed_only``, tagged before, get no row)."""
    from tqdm import tqdm

    tagged = failed = written = 0
    with tqdm(total=len(files), desc="tag", unit="file", disable=len(files) < 2) as progress:
        for item in tag_tracks(tagger, files, block_seconds, side.embeddings or bool(store),
                               pool=pool):
            progress.update(1)
            if isinstance(item, dict):
                out.fail(item)
                failed += 1
                logging.warning("skipped %s: %s", item["path"], item["reason"])
                continue
            if store is not None:
                store.add(item.path, results.FileKey.of(item.path, root), item.mean_embedding,
                          item.seconds, len(item.taggram))
                if item.path in embed_only:
                    continue
            out.add(item)
            tagged += 1
            written += side.write(item, tagger, output_stem(item.path, root))
            top = ", ".join(f"{t} {v:.2f}" for t, v in
                            top_tags(tagger.tags, item.probabilities, out.spec.top_k))
            print(f"{item.path}: {top}" + (" (shorter than one window: padded)"
                                           if item.padded else ""))
    return tagged, failed, written


def load_tagger(model_dir: str | None, pretrained: str | None, server: str | None,
                protocol: str = "grpc", window_hop: float = 0.0) -> "Tagger":
    """The Tagger of ``--mode=tag``'s model flags, with windows every ``window_hop`` s
    (0: the window length)."""
    if server:
        tagger = Tagger.from_server(model_dir, server, protocol)
    else:
        tagger = Tagger.pretrained(pretrained) if pretrained else Tagger.from_export(model_dir)
    if window_hop:
        tagger.spec = tracks.WindowSpec(tagger.spec.mel_config, tagger.spec.window_frames,
                                        max(1, tagger.spec.mel_config.frames_in(window_hop)))
    return tagger


@dataclasses.dataclass(frozen=True)
class SideOutputs:
    """A run's per-file outputs beside ``--output``.

    Attributes:
      taggram_dir: one ``.npz`` + ``.csv`` taggram per file here (None: none).
      folder: where embeddings and plots go (``taggram_dir``, else ``<output stem>_taggrams``).
      plot: a taggram PNG per file.
      embeddings: ``<stem>.embeddings.npz`` per file.
    """

    taggram_dir: str | None
    folder: str | None
    plot: bool = False
    embeddings: bool = False

    def write(self, result: TrackResult, tagger: "Tagger", stem: str) -> int:
        """Writes one file's side outputs; returns how many files were written."""
        written = []
        if self.taggram_dir:
            written += write_taggram(result, tagger.tags, stem, self.taggram_dir)
        if self.embeddings:
            written.append(write_embeddings(result, stem, self.folder))
        if self.plot:
            written.append(plot_taggram(
                result, tagger.tags, f"{os.path.basename(result.path)} ({tagger.name})",
                os.path.join(self.folder, f"{stem}.png")))
        return len(written)


# ----------------------------------------------------------------------------- scorers

class Tagger:
    """A model that scores mel windows: its window spec, tags and scoring function.

    Build one with :meth:`pretrained` or :meth:`from_export`; :meth:`score` maps windows
    [w, window_frames, n_mels] to (probabilities [w, n_tags], embeddings [w, d]).
    """

    def __init__(self, name: str, spec: tracks.WindowSpec, tags: Sequence[str],
                 score: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]):
        self.name, self.spec, self.tags, self._score = name, spec, list(tags), score

    @classmethod
    def pretrained(cls, name: str) -> "Tagger":
        """A pretrained model of :data:`tftag.models.pretrained.REGISTRY` (a musicnn port such
        as ``MTT_musicnn``: 3-s windows of the 16 kHz 96-band log mel, the 50 MTAT tags; or a
        shipped student: the resolution, window and tags of its card)."""
        try:
            entry = _pretrained.get(name)
        except ValueError as e:
            raise ValueError(f"--pretrained={name!r}: {e}") from None
        return cls.of_model(entry)

    @classmethod
    def of_model(cls, entry: "_pretrained.PretrainedModel") -> "Tagger":
        """A :class:`tftag.models.pretrained.PretrainedModel` (registered or not: ``--mode=ship``
        times a model before it is in place): its resolution, window and tags."""
        import tensorflow as tf

        from tftag.models import inference_fn

        run = tf.function(inference_fn(entry.load()), reduce_retracing=True)

        def score(windows):
            logits, embedding = run(tf.constant(windows))
            return tf.sigmoid(logits).numpy(), embedding.numpy()

        spec = tracks.WindowSpec(entry.mel_config, entry.window_frames)
        return cls(entry.name, spec, entry.tags, score)

    @classmethod
    def from_tflite(cls, path: str, name: str) -> "Tagger":
        """A ``.tflite`` file of :mod:`tftag.delivery.tflite` for the pretrained model ``name`` (its
        resolution and tags; the file's own window length); no embeddings ([w, 0])."""
        from tftag.delivery.litert import TFLiteModel

        entry = _pretrained.get(name)
        model = TFLiteModel(path)
        if (model.n_mels, model.n_tags) != (entry.mel_config.n_mels, len(entry.tags)):
            raise ValueError(f"{path}: input [{model.window_frames}, {model.n_mels}] -> "
                             f"{model.n_tags} tags does not fit {name} "
                             f"({entry.mel_config.name}, {len(entry.tags)} tags)")

        def score(windows):
            return model.predict_windows(windows), np.zeros((len(windows), 0), np.float32)

        return cls(f"{name} ({os.path.basename(path)})",
                   tracks.WindowSpec(entry.mel_config, model.window_frames), entry.tags, score)

    @classmethod
    def from_server(cls, model_dir: str, server: str, protocol: str = "grpc") -> "Tagger":
        """Windows scored by a TF Serving server (its ``serving_window`` signature) serving the
        export ``model_dir`` (read here for its model card and tags only; the model name is the
        export's folder name)."""
        from tftag.delivery import serving

        check_protocol(protocol)
        version_dir = model_version_dir(model_dir)
        card = export_layout.read_model_card(version_dir)
        config = export_layout.card_mel_config(card)
        window_frames = export_layout.card_window_frames(card)
        model_name = export_layout.model_name(version_dir)
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
        return cls(f"{model_name} at {server}", tracks.WindowSpec(config, window_frames),
                   export_layout.load_tags(version_dir), score)

    @classmethod
    def from_export(cls, model_dir: str) -> "Tagger":
        """An export's ``serving_window`` signature (exports made before it existed: re-export)."""
        import tensorflow as tf

        version_dir = model_version_dir(model_dir)
        card = export_layout.read_model_card(version_dir)
        loaded = tf.saved_model.load(version_dir)
        if "serving_window" not in loaded.signatures:
            raise ValueError(f"--model_dir={model_dir!r}: this export has no serving_window "
                             "signature (made by an older tftag); export it again")
        fn = loaded.signatures["serving_window"]
        _, window_frames, n_mels = fn.structured_input_signature[1]["mel"].shape
        config = export_layout.card_mel_config(card)

        def score(windows):
            out = fn(mel=tf.constant(windows))
            return out["probabilities"].numpy(), out["embedding"].numpy()

        tagger = cls(version_dir, tracks.WindowSpec(config, int(window_frames)),
                     export_layout.load_tags(version_dir), score)
        tagger._loaded = loaded  # keeps the SavedModel's resources alive
        return tagger

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [w, n_tags], embeddings [w, d]) of windows [w, frames, n_mels]."""
        probs, embs = [], []
        step = tracks.BATCH_WINDOWS
        for start in range(0, len(windows), step):
            p, e = self._score(windows[start:start + step])
            probs.append(p)
            embs.append(e)
        return np.concatenate(probs), np.concatenate(embs)


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
