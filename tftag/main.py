r"""tftag's entry point: ``python -m tftag.main --flagfile=configs/NAME.flags``.

Modes:
  extract   render the built-in corpus when --catalog=synthetic has no --input, then extract
            mel-spectrograms of the requested resolutions into <run_dir>/dataset (Apache Beam);
  describe  print and write the data card of a catalogue into <run_dir>;
  train     train --model at one resolution (dataset from --dataset_dir or made as in extract),
            keep the best weights by validation ROC-AUC, evaluate them on the test split;
  evaluate  macro ROC-AUC / PR-AUC (patch-averaged) of --weights on --split, per-tag table;
  sweep     train and evaluate every (--models × resolution) --repeats times; results.csv,
            results.md (mean ± std, GMACs, storage, time, t-test vs the full resolution), plots;
  tune      keras-tuner search of width, learning rate and dropout at one resolution;
  export    write the trained model (--weights) as a SavedModel for TF Serving in
            <export_dir>/<model>-<resolution>/<version>/ (+ frozen graph for Essentia);
  tag       tag audio files or folders (--audio) with an exported model (--model_dir) or a
            TF Serving server (--server), writing --output (.json or .csv);
  profile   GMACs (TF profiler and analytic), parameters and latency of --model at every
            requested resolution: a table, profile.json and profile.csv; --profile_trace adds a
            TensorBoard profiler trace of a few training steps.

Every run writes a self-describing --run_dir: flags.txt (the flags as used, a valid flagfile),
configs.json (resolved configs), TensorBoard logs (tb/) and summary.json.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time

import numpy as np

from absl import app, flags, logging

from pipelines import mel_flags
from tftag import datacard, datasets, extraction

MODES = ("train", "evaluate", "sweep", "tune", "profile", "export", "tag", "extract", "describe")
CATALOGS = ("synthetic", "mtat", "msd", "csv", "folder")

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "train", list(MODES), "What to run.")
flags.DEFINE_string("run_dir", None, "Run directory (created): flags, configs, TensorBoard logs, "
                    "summary.json, and the dataset of --mode=extract.")
flags.DEFINE_enum("catalog", "synthetic", list(CATALOGS), "Which collection: the built-in corpus "
                  "or a user's MTAT / MSD / CSV / folder (see --input).")
flags.DEFINE_string("input", None, "Catalogue input (MTAT or MSD directory, CSV file, audio "
                    "folder, rendered corpus). Empty with --catalog=synthetic: render the corpus "
                    "into <run_dir>/corpus.")
flags.DEFINE_integer("num_clips", 48, "Built-in corpus: clips to render.", lower_bound=1)
flags.DEFINE_float("clip_seconds", 30.0, "Built-in corpus: seconds per rendered clip.",
                   lower_bound=0.5)
flags.DEFINE_integer("synth_sr", 16000, "Built-in corpus: sample rate of the WAVs.",
                     lower_bound=8000)
flags.DEFINE_integer("seed", 0, "Seed (corpus composition).")
mel_flags.define_mel_flags()
flags.DEFINE_enum("mel_dtype", "float32", ["float32", "float16"], "Storage dtype of base mels.")
flags.DEFINE_integer("clips_per_shard", 256, "Clips per TFRecord shard.", lower_bound=1)
flags.DEFINE_integer("direct_num_workers", 1, "Beam DirectRunner workers (0 = all cores).",
                     lower_bound=0)
flags.DEFINE_string("dataset_dir", None, "An extracted dataset directory to train on; default: "
                    "make one in <run_dir>/dataset from --catalog/--input (as --mode=extract).")
flags.DEFINE_string("model", "vgg", "Model name from the registry: musicnn, musicnn_vgg, vgg.")
flags.DEFINE_list("models", [], "sweep: model names (default: --model).")
flags.DEFINE_integer("repeats", 3, "sweep: runs per (model, resolution), seeds seed, seed+1, ...",
                     lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Global batch size.", lower_bound=1)
flags.DEFINE_integer("epochs", 20, "Maximum training epochs.", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (paper: 1e-3).")
flags.DEFINE_integer("patience", 5, "Early stopping: epochs without a better validation ROC-AUC "
                     "(0 = off).", lower_bound=0)
flags.DEFINE_float("patch_seconds", 0.0, "Train and score on patches of this many seconds "
                   "(clip score = mean over non-overlapping patches); 0 = whole clips.",
                   lower_bound=0.0)
flags.DEFINE_integer("steps_per_epoch", 0, "Training steps per epoch; 0 = one pass over the "
                     "training split.", lower_bound=0)
flags.DEFINE_enum("strategy", "auto", ["auto", "default", "mirrored", "one_device_cpu"],
                  "tf.distribute strategy; auto = MirroredStrategy on several GPUs, else the "
                  "default strategy of the visible device.")
flags.DEFINE_bool("deterministic", True, "TensorFlow op determinism (repeatable runs).")
flags.DEFINE_string("weights", None, "evaluate: weights file (default <run_dir>/best.weights.h5).")
flags.DEFINE_enum("split", "test", ["train", "valid", "test", "all"], "evaluate: which split.")
flags.DEFINE_integer("max_trials", 5, "tune: keras-tuner trials.", lower_bound=1)
flags.DEFINE_bool("export", True, "train/sweep: export the (best) trained model at the end.")
flags.DEFINE_string("export_dir", "export", "Root of exported models (TF Serving base paths are "
                    "<export_dir>/<model_name>).")
flags.DEFINE_integer("export_version", 0, "Version to write (0 = the next free integer).",
                     lower_bound=0)
flags.DEFINE_string("model_dir", None, "tag: an exported model: <export_dir>/<model_name> (latest "
                    "version) or one version directory.")
flags.DEFINE_string("audio", None, "tag: an audio file or a folder (searched recursively).")
flags.DEFINE_string("output", None, "tag: where to write all probabilities: .json or .csv.")
flags.DEFINE_string("server", None, "tag: host:port of a TF Serving server to use instead of "
                    "loading --model_dir (which still provides tags and sample rate).")
flags.DEFINE_enum("server_protocol", "grpc", ["grpc", "rest"], "tag: protocol of --server.")
flags.DEFINE_integer("top_k", 5, "tag: tags printed per file.", lower_bound=1)
flags.DEFINE_float("width", 1.0, "Filter-count multiplier (1 = the paper's full-size model).")
flags.DEFINE_string("preset", "paper", "Architecture preset (musicnn: paper, musicnn_mtt).")
flags.DEFINE_float("dropout", -1.0, "Dropout rate; -1 = the architecture's own.")
flags.DEFINE_integer("patch_frames", 0, "Model input frames; 0 = the whole crop of each "
                     "resolution.", lower_bound=0)
flags.DEFINE_integer("latency_runs", 5, "profile: timed runs per batch size (median reported); "
                     "0 skips latency.", lower_bound=0)
flags.DEFINE_list("latency_batches", ["1", "32"], "profile: batch sizes to time.")
flags.DEFINE_bool("profile_trace", False, "profile: also capture a TensorBoard profiler trace of "
                  "a few training steps (first resolution) into <run_dir>/tb/trace.")
flags.DEFINE_integer("trace_steps", 3, "profile: training steps in the trace.", lower_bound=1)


def _write_run_files(configs) -> None:
    from tftag.data import write_bytes_atomic, write_json_atomic

    os.makedirs(FLAGS.run_dir, exist_ok=True)
    write_bytes_atomic(os.path.join(FLAGS.run_dir, "flags.txt"),
                       FLAGS.flags_into_string().encode("utf-8"))
    write_json_atomic(os.path.join(FLAGS.run_dir, "configs.json"),
                      {"mel_configs": [dict(dataclasses.asdict(c), name=c.name) for c in configs]})
    import tensorflow as tf

    writer = tf.summary.create_file_writer(os.path.join(FLAGS.run_dir, "tb", "config"))
    with writer.as_default():
        tf.summary.text("flags", "```\n" + FLAGS.flags_into_string() + "\n```", step=0)
    writer.close()


def _catalog():
    if FLAGS.catalog == "synthetic" and not FLAGS.input:
        from tftag.datasets import synthetic

        corpus_dir = os.path.join(FLAGS.run_dir, "corpus")
        started = time.monotonic()
        catalog = synthetic.render_corpus(corpus_dir, FLAGS.num_clips, FLAGS.clip_seconds,
                                          FLAGS.synth_sr, FLAGS.seed, progress=True)
        logging.info("built-in corpus: %d clips in %s (%.1f s)", len(catalog.clips), corpus_dir,
                     time.monotonic() - started)
        return catalog
    if not FLAGS.input:
        raise app.UsageError(f"--input is required with --catalog={FLAGS.catalog}")
    try:
        return datasets.load(FLAGS.catalog, FLAGS.input)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        raise app.UsageError(f"--catalog={FLAGS.catalog} --input={FLAGS.input}: {e}") from None


def _tensorboard_card(card: dict, png: str) -> None:
    import tensorflow as tf

    writer = tf.summary.create_file_writer(os.path.join(FLAGS.run_dir, "tb", "data"))
    with writer.as_default():
        tf.summary.text("datacard", "```\n" + datacard.format_card(card) + "\n```", step=0)
        image = tf.image.decode_png(tf.io.read_file(png), channels=4)[tf.newaxis]
        tf.summary.image("tag_frequencies", image, step=0)
        for split, n in card["splits"].items():
            tf.summary.scalar(f"clips/{split}", n, step=0)
    writer.close()


def run_describe() -> dict:
    catalog = _catalog()
    card = datacard.write_card(catalog, FLAGS.run_dir)
    print(datacard.format_card(card))
    _tensorboard_card(card, os.path.join(FLAGS.run_dir, "tag_frequencies.png"))
    return {"mode": "describe", "datacard": os.path.join(FLAGS.run_dir, "datacard.json"),
            "clips": card["clips"], "splits": card["splits"]}


def run_extract(configs) -> dict:
    from pipelines import extract

    catalog = _catalog()
    card = datacard.write_card(catalog, FLAGS.run_dir)
    _tensorboard_card(card, os.path.join(FLAGS.run_dir, "tag_frequencies.png"))
    dataset_dir = os.path.join(FLAGS.run_dir, "dataset")
    plan = extraction.ExtractionPlan(dataset_dir, tuple(configs), catalog.tags, FLAGS.mel_dtype,
                                     FLAGS.clips_per_shard)
    state = extraction.prepare_output(plan, catalog, overwrite=False, retry_failed=False)
    if state == "complete":
        logging.info("%s is complete already", dataset_dir)
        from tftag.data import load_dataset_info

        meta = load_dataset_info(dataset_dir).raw
        summary = {k: meta[k] for k in ("clips_total", "clips_written", "clips_failed", "splits")}
    else:
        options = extract.pipeline_options("DirectRunner", FLAGS.direct_num_workers)
        summary = extract.run(plan, catalog, options)
    print(f"extracted {summary['clips_written']}/{summary['clips_total']} clips into {dataset_dir}")
    return {"mode": "extract", "dataset_dir": dataset_dir, **summary}


def model_config():
    """The ModelConfig of the flags, with errors naming the flag."""
    from tftag import models

    if FLAGS.model not in models.names():
        raise app.UsageError(f"--model={FLAGS.model!r}; known: {', '.join(models.names())}")
    try:
        return models.ModelConfig(
            FLAGS.model, width=FLAGS.width, preset=FLAGS.preset,
            dropout=None if FLAGS.dropout < 0 else FLAGS.dropout,
            patch_frames=FLAGS.patch_frames or None,
        )
    except ValueError as e:
        raise app.UsageError(f"--width/--dropout/--patch_frames: {e}") from None




def run_profile(configs) -> dict:
    import csv

    import keras

    from tftag import models, profile
    from tftag.data import write_bytes_atomic, write_json_atomic

    try:
        batches = [int(b) for b in FLAGS.latency_batches]
    except ValueError:
        raise app.UsageError("--latency_batches must be comma-separated integers") from None
    mc = model_config()
    # Compression does not change the cost: one row per (sr, n_mels, hop factor).
    seen, resolutions = set(), []
    for c in configs:
        if (c.sr, c.n_mels, c.hop_factor) not in seen:
            seen.add((c.sr, c.n_mels, c.hop_factor))
            resolutions.append(c)
    rows = []
    for i, config in enumerate(resolutions, start=1):
        try:
            model = models.build(mc, config, 50)
        except ValueError as e:
            raise app.UsageError(f"--model={mc.name} at {config.name}: {e}") from None
        row = {"config": config.name.rsplit("-", 1)[0], "n_frames": mc.n_frames(config),
               "n_mels": config.n_mels}
        row.update(profile.profile_model(model, FLAGS.latency_runs, tuple(batches)))
        rows.append(row)
        logging.info("[%d/%d] %s", i, len(resolutions), json.dumps(row))
        if FLAGS.profile_trace and i == 1:
            profile.trace_training(model, os.path.join(FLAGS.run_dir, "tb", "trace"),
                                   FLAGS.trace_steps)
        keras.backend.clear_session()
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    table = "\n".join([" ".join(f"{c:>{widths[c]}}" for c in columns)]
                      + [" ".join(f"{str(r[c]):>{widths[c]}}" for c in columns) for r in rows])
    print(f"model {mc.name} (width {mc.width}, preset {mc.preset}), 50 tags, MACs per example")
    print(table)
    write_json_atomic(os.path.join(FLAGS.run_dir, "profile.json"),
                      {"model": dataclasses.asdict(mc), "rows": rows})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(os.path.join(FLAGS.run_dir, "profile.csv"), buf.getvalue().encode())
    import tensorflow as tf

    writer_tb = tf.summary.create_file_writer(os.path.join(FLAGS.run_dir, "tb", "profile"))
    with writer_tb.as_default():
        tf.summary.text("profile", "```\n" + table + "\n```", step=0)
        for step, row in enumerate(rows):
            tf.summary.scalar("gmacs", row["gmacs_profiler"], step=step)
    writer_tb.close()
    return {"mode": "profile", "model": mc.name, "rows": len(rows),
            "profile_json": os.path.join(FLAGS.run_dir, "profile.json"),
            "profile_csv": os.path.join(FLAGS.run_dir, "profile.csv")}


def train_config(patch_frames=None):
    """The TrainConfig of the flags, with errors naming the flag."""
    from tftag.train import TrainConfig

    try:
        return TrainConfig(
            batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, learning_rate=FLAGS.learning_rate,
            patch_frames=patch_frames, patience=FLAGS.patience, seed=FLAGS.seed,
            steps_per_epoch=FLAGS.steps_per_epoch or None, deterministic=FLAGS.deterministic,
        )
    except ValueError as e:
        raise app.UsageError(f"--learning_rate/--batch_size/--epochs: {e}") from None


def _one(configs):
    if len(configs) != 1:
        raise app.UsageError(
            f"--mode={FLAGS.mode} takes one resolution: give --sr, --n_mels, --hop_factors and "
            f"--compressions one value each (got {len(configs)} configs: "
            f"{', '.join(c.name for c in configs[:4])}{', ...' if len(configs) > 4 else ''})")
    return configs[0]


def _patch_frames(config):
    if not FLAGS.patch_seconds:
        return None
    return min(config.n_frames, max(16, config.frames_in(FLAGS.patch_seconds)))


def _dataset(configs) -> str:
    """--dataset_dir checked against the configs, or a dataset made as --mode=extract does."""
    from tftag.data import load_dataset_info

    if FLAGS.dataset_dir:
        try:
            info = load_dataset_info(FLAGS.dataset_dir)
            for c in configs:
                info.check(c)
        except (FileNotFoundError, ValueError) as e:
            raise app.UsageError(f"--dataset_dir: {e}") from None
        return FLAGS.dataset_dir
    return run_extract(configs)["dataset_dir"]


def _export(config, mc, patch, weights, dataset_dir, metrics=None) -> str:
    """Exports the model with ``weights`` for TF Serving; returns the version directory."""
    from tftag import export
    from tftag.data import load_dataset_info
    from tftag.models import build

    info = load_dataset_info(dataset_dir)
    model = build(dataclasses.replace(mc, patch_frames=patch), config, info.n_tags)
    model.load_weights(weights)
    spec = export.ExportSpec(config, mc, info.tags, patch, info.mel_dtype, metrics)
    path = export.export(model, spec, FLAGS.export_dir, FLAGS.export_version or None)
    logging.info("exported %s", path)
    return path


def run_export(configs) -> dict:
    config = _one(configs)
    dataset_dir = _dataset(configs)
    weights = FLAGS.weights or os.path.join(FLAGS.run_dir, "best.weights.h5")
    if not os.path.exists(weights):
        raise app.UsageError(f"--weights={weights!r} does not exist (train first, or point "
                             "--weights at a best.weights.h5)")
    path = _export(config, model_config(), _patch_frames(config), weights, dataset_dir)
    print(f"exported {path}; inspect it with: .venv/bin/saved_model_cli show --all --dir {path}")
    return {"mode": "export", "export_path": path}


def _model_version_dir(model_dir: str) -> str:
    if os.path.exists(os.path.join(model_dir, "saved_model.pb")):
        return model_dir
    versions = sorted((int(d) for d in os.listdir(model_dir) if d.isdigit()), reverse=True) \
        if os.path.isdir(model_dir) else []
    if not versions:
        raise app.UsageError(f"--model_dir={model_dir!r} holds no SavedModel version "
                             "(expected <export_dir>/<model_name>[/<version>])")
    return os.path.join(model_dir, str(versions[0]))


def run_tag(configs) -> dict:
    del configs
    import csv
    import glob

    from tqdm import tqdm

    from tftag import export, features, serving
    from tftag._essentia import DecoderCrashedError
    from tftag.data import write_bytes_atomic, write_json_atomic
    from tftag.datasets.folder import AUDIO_EXTENSIONS

    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required with --mode=tag (an exported model)")
    if not FLAGS.audio or not os.path.exists(FLAGS.audio):
        raise app.UsageError(f"--audio={FLAGS.audio!r}: no such file or folder")
    version_dir = _model_version_dir(FLAGS.model_dir)
    tags = export.load_tags(version_dir)
    with open(glob.glob(os.path.join(version_dir, "essentia", "*.json"))[0], encoding="utf-8") as f:
        card = json.load(f)
    sr = int(card["inference"]["sample_rate"])
    if os.path.isdir(FLAGS.audio):
        files = sorted(p for p in glob.glob(os.path.join(FLAGS.audio, "**", "*"), recursive=True)
                       if p.lower().endswith(AUDIO_EXTENSIONS))
    else:
        files = [FLAGS.audio]
    if FLAGS.server:
        model_name = os.path.basename(os.path.dirname(version_dir.rstrip("/")))
        client = (serving.GrpcClient(FLAGS.server, model_name) if FLAGS.server_protocol == "grpc"
                  else serving.RestClient(FLAGS.server, model_name))

        def probabilities(audio):
            if FLAGS.server_protocol == "grpc":
                return client.predict(audio[None])["probabilities"][0]
            return client.predict([audio])[0]["probabilities"]
    else:
        import tensorflow as tf

        loaded = tf.saved_model.load(version_dir)

        def probabilities(audio):
            return export.tag_probabilities(loaded, audio)

    results, failures = {}, []
    for path in tqdm(files, desc="tag", unit="file", disable=len(files) < 2):
        try:
            audio = features.load_audio(path, sr)
        except (features.AudioDecodeError, FileNotFoundError, DecoderCrashedError) as e:
            failures.append({"path": path, "error": type(e).__name__, "reason": str(e)})
            logging.warning("skipped %s: %s", path, e)
            continue
        p = np.asarray(probabilities(audio), dtype=float)
        results[path] = p
        top = ", ".join(f"{t} {v:.2f}" for t, v in export.top_tags(tags, p, FLAGS.top_k))
        print(f"{path}: {top}")
    output = FLAGS.output or os.path.join(FLAGS.run_dir, "tags.json")
    if output.endswith(".csv"):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path"] + tags)
        for path, p in results.items():
            writer.writerow([path] + [f"{v:.6f}" for v in p])
        write_bytes_atomic(output, buf.getvalue().encode())
    else:
        write_json_atomic(output, {
            "model": version_dir, "tags": tags,
            "files": {path: {"probabilities": dict(zip(tags, map(float, p))),
                             "top": export.top_tags(tags, p, FLAGS.top_k)}
                      for path, p in results.items()},
            "failures": failures})
    if failures:
        failed = os.path.splitext(output)[0] + ".failures.jsonl"
        write_bytes_atomic(failed, "".join(json.dumps(f) + "\n" for f in failures).encode())
    print(f"tagged {len(results)}/{len(files)} files with {version_dir} -> {output}"
          + (f"; {len(failures)} unreadable, see {failed}" if failures else ""))
    return {"mode": "tag", "files": len(files), "tagged": len(results), "failed": len(failures),
            "output": output, "model": version_dir}


def run_train(configs) -> dict:
    from tftag import evaluate, train
    from tftag.data import load_dataset_info, write_bytes_atomic, write_json_atomic

    config = _one(configs)
    dataset_dir = _dataset(configs)
    mc, patch = model_config(), _patch_frames(config)
    strategy = train.STRATEGIES[FLAGS.strategy]()
    outcome = train.train(dataset_dir, config, mc, train_config(patch), FLAGS.run_dir, strategy)
    model = train.load_best(FLAGS.run_dir, dataset_dir, config, mc, patch)
    info = load_dataset_info(dataset_dir)
    metrics = evaluate.evaluate(model, dataset_dir, config, "test", info.tags, patch)
    table = evaluate.format_per_tag(metrics)
    print(table)
    results = os.path.join(FLAGS.run_dir, "results.json")
    write_json_atomic(results, {"test": metrics.as_dict(), "train": outcome})
    write_bytes_atomic(os.path.join(FLAGS.run_dir, "per_tag.txt"), (table + "\n").encode())
    return {"mode": "train", "resolution": config.name, "model": mc.name,
            "test_roc_auc": metrics.roc_auc, "test_pr_auc": metrics.pr_auc,
            "best_valid_roc_auc": outcome["best_valid_roc_auc"],
            "best_epoch": outcome["best_epoch"], "epochs_done": outcome["epochs_done"],
            "best_checkpoint": outcome["best_weights"], "results": results,
            "dataset_dir": dataset_dir,
            "export_path": _export(config, mc, patch, outcome["best_weights"], dataset_dir,
                                   {"test_roc_auc": metrics.roc_auc, "test_pr_auc": metrics.pr_auc})
            if FLAGS.export else None}


def run_evaluate(configs) -> dict:
    from tftag import evaluate
    from tftag.data import load_dataset_info, write_bytes_atomic, write_json_atomic
    from tftag.models import build

    config = _one(configs)
    dataset_dir = _dataset(configs)
    mc, patch = model_config(), _patch_frames(config)
    weights = FLAGS.weights or os.path.join(FLAGS.run_dir, "best.weights.h5")
    if not os.path.exists(weights):
        raise app.UsageError(f"--weights={weights!r} does not exist (train first, or point "
                             "--weights at a best.weights.h5)")
    info = load_dataset_info(dataset_dir)
    model = build(dataclasses.replace(mc, patch_frames=patch), config, info.n_tags)
    model.load_weights(weights)
    split = None if FLAGS.split == "all" else FLAGS.split
    if split is not None and info.splits.get(split, 0) == 0:
        raise app.UsageError(f"--split={split}: empty in {dataset_dir} (splits {info.splits})")
    metrics = evaluate.evaluate(model, dataset_dir, config, split, info.tags, patch)
    table = evaluate.format_per_tag(metrics)
    print(table)
    path = os.path.join(FLAGS.run_dir, f"evaluation_{FLAGS.split}.json")
    write_json_atomic(path, dict(metrics.as_dict(), weights=weights, resolution=config.name))
    write_bytes_atomic(os.path.join(FLAGS.run_dir, f"per_tag_{FLAGS.split}.txt"),
                       (table + "\n").encode())
    return {"mode": "evaluate", "split": FLAGS.split, "roc_auc": metrics.roc_auc,
            "pr_auc": metrics.pr_auc, "results": path, "weights": weights}


def run_sweep(configs) -> dict:
    from tftag import models, sweep
    from tftag.data import write_bytes_atomic, write_json_atomic

    dataset_dir = _dataset(configs)
    names = FLAGS.models or [FLAGS.model]
    unknown = [n for n in names if n not in models.names()]
    if unknown:
        raise app.UsageError(f"--models: unknown {unknown}; known: {', '.join(models.names())}")
    base = model_config()
    model_configs = [dataclasses.replace(base, name=n) for n in names]
    items = sweep.make_items(model_configs, configs, FLAGS.repeats, FLAGS.seed,
                             FLAGS.patch_seconds or None)
    results = sweep.run_sweep(items, dataset_dir, train_config(), FLAGS.run_dir)
    rows = sweep.summarize(results)
    table = sweep.markdown_table(rows)
    print(table)
    sweep.write_csv(results, os.path.join(FLAGS.run_dir, "results.csv"))
    write_json_atomic(os.path.join(FLAGS.run_dir, "summary_rows.json"), rows)
    write_bytes_atomic(os.path.join(FLAGS.run_dir, "results.md"), (table + "\n").encode())
    plots = sweep.plot(rows, FLAGS.run_dir)
    import tensorflow as tf

    writer = tf.summary.create_file_writer(os.path.join(FLAGS.run_dir, "tb", "sweep"))
    with writer.as_default():
        tf.summary.text("results", table, step=0)
        for path in plots:
            image = tf.image.decode_png(tf.io.read_file(path), channels=4)[tf.newaxis]
            tf.summary.image(os.path.basename(path)[:-4], image, step=0)
    writer.close()
    best = max(rows, key=lambda r: r["roc_auc_mean"])
    # The best run of the best resolution: its checkpoint, exported for serving.
    run = max((r for r in results if r["resolution"] == best["resolution"]
               and r["model"] == best["model"]), key=lambda r: r["test_roc_auc"])
    item = next(i for i in items if i.model_config.name == run["model"]
                and i.mel_config.name == run["resolution"] and i.seed == run["seed"])
    best_checkpoint = os.path.join(FLAGS.run_dir, "runs", item.key, "best.weights.h5")
    export_path = None
    if FLAGS.export:
        export_path = _export(item.mel_config, item.model_config, item.patch_frames,
                              best_checkpoint, dataset_dir,
                              {"test_roc_auc": run["test_roc_auc"], "test_pr_auc": run["test_pr_auc"]})
    print(f"results: {os.path.join(FLAGS.run_dir, 'results.md')}; plots: {', '.join(plots)}; "
          f"TensorBoard: .venv/bin/tensorboard --logdir {FLAGS.run_dir}; exported: {export_path}")
    return {"mode": "sweep", "runs": len(results), "rows": len(rows),
            "results_csv": os.path.join(FLAGS.run_dir, "results.csv"),
            "results_table": os.path.join(FLAGS.run_dir, "results.md"), "plots": plots,
            "best": {k: best[k] for k in ("model", "resolution", "roc_auc_mean", "pr_auc_mean")},
            "dataset_dir": dataset_dir, "best_checkpoint": best_checkpoint,
            "export_path": export_path}


def run_tune(configs) -> dict:
    from tftag import tune
    from tftag.data import write_bytes_atomic, write_json_atomic

    config = _one(configs)
    dataset_dir = _dataset(configs)
    outcome = tune.tune(dataset_dir, config, model_config(),
                        train_config(_patch_frames(config)), FLAGS.run_dir, FLAGS.max_trials)
    best = outcome["best"]
    flagfile = "\n".join([
        "# Best keras-tuner trial (val ROC-AUC %.4f) of %s" % (outcome["best_score"], FLAGS.run_dir),
        "--mode=train", f"--model={FLAGS.model}", f"--preset={FLAGS.preset}",
        f"--width={best['width']}", f"--learning_rate={best['learning_rate']:.6g}",
        f"--dropout={best['dropout']:.2f}", f"--sr={config.sr}", f"--n_mels={config.n_mels}",
        f"--hop_factors={config.hop_factor}", f"--compressions={config.compression}",
        f"--duration={config.duration}", f"--patch_seconds={FLAGS.patch_seconds}",
        f"--dataset_dir={dataset_dir}", ""])
    path = os.path.join(FLAGS.run_dir, "best.flags")
    write_bytes_atomic(path, flagfile.encode())
    write_json_atomic(os.path.join(FLAGS.run_dir, "tune.json"), outcome)
    print(f"best trial: {best} (val ROC-AUC {outcome['best_score']:.4f}); flagfile {path}")
    return {"mode": "tune", "best": best, "best_score": outcome["best_score"],
            "best_flagfile": path, "trials": len(outcome["trials"])}


MODE_FUNCTIONS = {"extract": run_extract, "describe": lambda configs: run_describe(),
                  "profile": run_profile, "train": run_train, "evaluate": run_evaluate,
                  "sweep": run_sweep, "tune": run_tune, "export": run_export, "tag": run_tag}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.run_dir:
        raise app.UsageError("--run_dir is required")
    configs = mel_flags.mel_configs()
    _write_run_files(configs)
    summary = MODE_FUNCTIONS[FLAGS.mode](configs)
    from tftag.data import write_json_atomic

    write_json_atomic(os.path.join(FLAGS.run_dir, "summary.json"), summary)
    logging.info("summary: %s", json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
