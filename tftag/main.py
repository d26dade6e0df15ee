r"""tftag's entry point: ``python -m tftag.main --flagfile=configs/NAME.flags``.

Modes (what each does lives in the library module named after it):
  extract   render the built-in corpus (--catalog=synthetic, no --input), extract the requested
            resolutions into <run_dir>/dataset (Apache Beam; resumes) — tftag.pipeline;
  describe  the data card of a catalogue (files into --run_dir if given) — tftag.datacard;
  train     train --model at one resolution, keep the best weights by validation ROC-AUC,
            evaluate them on the test split, export — tftag.train;
  evaluate  macro ROC-AUC / PR-AUC of --weights (or a --tflite file) on --split — tftag.evaluate;
  sweep     every (--models × resolution × --repeats): results table, t-tests, plots, export of
            the best run — tftag.sweep;
  tune      keras-tuner search of width, learning rate and dropout — tftag.tune;
  export    --weights as a SavedModel (TF Serving) + frozen graph (Essentia), and TFLite files
            (--tflite) — tftag.export, tftag.tflite;
  tag       tag whole tracks of --audio with --pretrained=MTT_musicnn, an export (--model_dir)
            or a server (--server) — tftag.tag;
  profile   GMACs, parameters and latency at every resolution — tftag.profile;
  verify    check every shard of --dataset_dir against dataset.json — tftag.verify;
  transcode --dataset_dir stored again with --mel_dtype into <run_dir>/dataset — tftag.transcode.

train, evaluate, sweep, tune, extract and transcode need --run_dir; the others write there only if
given. A run directory holds flags.txt (a valid flagfile), configs.json (the whole Experiment;
tftag.experiment.Experiment.load reads it back), TensorBoard logs (tb/) and summary.json
(--strategy=multi_worker: written by the chief alone; see tftag.distributed).
"""

from __future__ import annotations

import importlib
import json
import os
import sys

from absl import app, flags, logging

from tftag import cli, codecs, datasets, experiment, models, runfiles

NEEDS_RUN_DIR = ("train", "evaluate", "sweep", "tune", "extract", "transcode")
MODES = (*NEEDS_RUN_DIR, "profile", "export", "tag", "describe", "verify")
ONE_RESOLUTION = ("train", "evaluate", "tune", "export")

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "train", list(MODES), "What to run.")
flags.DEFINE_string("run_dir", None, "Run directory (created): flags, configs, TensorBoard logs, "
                    "summary.json, and the dataset of --mode=extract.")
flags.DEFINE_string("catalog", "synthetic", cli.registry_help(datasets.REGISTRY, "Catalogue") +
                    " synthetic without --input renders the built-in corpus into <run_dir>/corpus.")
flags.DEFINE_string("input", None, "Catalogue input (MTAT or MSD directory, CSV file, audio "
                    "folder, rendered corpus).")
flags.DEFINE_integer("num_clips", 48, "Built-in corpus: clips to render.", lower_bound=1)
flags.DEFINE_float("clip_seconds", 30.0, "Built-in corpus: seconds per clip.", lower_bound=0.5)
flags.DEFINE_integer("synth_sr", 16000, "Built-in corpus: sample rate of the WAVs.",
                     lower_bound=8000)
flags.DEFINE_integer("seed", 0, "Seed of weights, shuffling, patches and the built-in corpus.")
cli.define_mel_flags()
flags.DEFINE_string("mel_dtype", "float32", cli.registry_help(codecs.REGISTRY, "Storage codec "
                    "of the base mels"))
flags.DEFINE_integer("clips_per_shard", 256, "Clips per TFRecord shard.", lower_bound=1)
cli.define_label_flags()
flags.DEFINE_integer("direct_num_workers", 1, "Beam DirectRunner workers (0 = all cores).",
                     lower_bound=0)
flags.DEFINE_string("dataset_dir", None, "An extracted dataset directory; default: "
                    "<run_dir>/dataset, made from --catalog/--input as --mode=extract does.")
flags.DEFINE_string("model", "vgg", "Model name from the registry tftag.models (vgg, musicnn, "
                    "musicnn_vgg, ...); an unknown name is an error listing the known ones.")
flags.DEFINE_list("models", [], "sweep: model names (default: --model).")
flags.DEFINE_multi_string(
    "sweep_model", [], "sweep: one model's own settings, NAME:key=value,... (repeat the flag per "
    "model); keys: resolutions (names joined by +; default all), width, patch_seconds (0 = whole "
    "clips), epochs, steps_per_epoch, test_patches (patches scored per test clip; default all). "
    "E.g. musicnn:patch_seconds=3,resolutions=sr16000-mel96-hop1-log+sr16000-mel48-hop1-log")
flags.DEFINE_integer("repeats", 3, "sweep: runs per (model, resolution), seeds seed, seed+1, ...",
                     lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Global batch (split across replicas).", lower_bound=1)
flags.DEFINE_integer("epochs", 20, "Maximum training epochs.", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (paper: 1e-3).")
flags.DEFINE_integer("patience", 5, "Early stopping: epochs without a better validation ROC-AUC "
                     "(0 = off).", lower_bound=0)
flags.DEFINE_float("patch_seconds", 0.0, "Model input: patches of this many seconds (clip score "
                   "= mean over non-overlapping patches); 0 = whole clips.", lower_bound=0.0)
flags.DEFINE_integer("steps_per_epoch", 0, "Training steps per epoch; 0 = one pass over the "
                     "training split.", lower_bound=0)
flags.DEFINE_integer("valid_patches", 0, "Patch models: validation scores this many evenly "
                     "spaced patches per clip (1 = the centre one); 0 = all. Test scores always "
                     "use every patch.", lower_bound=0)
flags.DEFINE_enum("strategy", "auto", list(experiment.STRATEGIES), "tf.distribute strategy: auto "
                  "(mirrored on several GPUs, else default) or multi_worker ($TF_CONFIG).")
flags.DEFINE_enum("loss", "bce", list(experiment.LOSSES), "Training loss: bce = binary "
                  "cross-entropy on the hard labels; distill = binary cross-entropy against the "
                  "teacher's probabilities (soft labels of a --labels=teacher:... dataset).")
flags.DEFINE_bool("deterministic", True, "Bit-for-bit repeatable runs (same seed, same numbers).")
flags.DEFINE_string("weights", None, "evaluate/export: weights (default <run_dir>/best.weights.h5).")
flags.DEFINE_enum("split", "test", ["train", "valid", "test", "all"], "evaluate: which split.")
flags.DEFINE_integer("max_trials", 5, "tune: keras-tuner trials.", lower_bound=1)
cli.define_export_flags()
cli.define_tag_flags()
flags.DEFINE_float("width", 1.0, "Filter-count multiplier (1 = the paper's full-size model).")
flags.DEFINE_string("preset", "paper", "Architecture preset (musicnn: paper, musicnn_mtt).")
flags.DEFINE_float("dropout", -1.0, "Dropout rate; -1 = the architecture's own.")
flags.DEFINE_integer("latency_runs", 5, "profile: timed runs per batch size (median); 0 skips "
                     "latency.", lower_bound=0)
flags.DEFINE_list("latency_batches", ["1", "32"], "profile: batch sizes to time.")
flags.DEFINE_bool("profile_trace", False, "profile: also trace a few training steps of the first "
                  "resolution into <run_dir>/tb/trace (needs --run_dir).")
flags.DEFINE_integer("trace_steps", 3, "profile: training steps in the trace.", lower_bound=1)


def _config(cls, flag_names: str, *args, **kwargs):
    try:
        return cls(*args, **kwargs)
    except (ValueError, TypeError) as e:
        raise app.UsageError(f"{flag_names}: {e}") from None


def build_experiment() -> experiment.Experiment:
    """The Experiment of the flags; a bad value is a UsageError naming its flag."""
    mel_configs = tuple(cli.mel_configs())  # checked first: no model registry (Keras) needed
    for flag, registry in (("catalog", datasets.REGISTRY), ("mel_dtype", codecs.REGISTRY),
                           ("model", models.REGISTRY)):
        cli.check_name(flag, registry)
    unknown = [n for n in FLAGS.models if n not in models.names()]
    if unknown:
        raise app.UsageError(f"--models: unknown {unknown}; known: {', '.join(models.names())}")
    model = _config(models.ModelConfig, "--width/--preset/--dropout/--patch_seconds", FLAGS.model,
                    width=FLAGS.width, preset=FLAGS.preset,
                    dropout=None if FLAGS.dropout < 0 else FLAGS.dropout,
                    patch_seconds=FLAGS.patch_seconds or None)
    train = _config(experiment.TrainConfig, "--batch_size/--epochs/--learning_rate/--patience",
                    batch_size=FLAGS.batch_size, epochs=FLAGS.epochs,
                    learning_rate=FLAGS.learning_rate, patience=FLAGS.patience, seed=FLAGS.seed,
                    steps_per_epoch=FLAGS.steps_per_epoch or None,
                    deterministic=FLAGS.deterministic, strategy=FLAGS.strategy, loss=FLAGS.loss,
                    valid_patches=FLAGS.valid_patches or None)
    data = _config(experiment.DataConfig, f"--catalog={FLAGS.catalog}/--labels", FLAGS.catalog,
                   FLAGS.input, FLAGS.dataset_dir, FLAGS.num_clips, FLAGS.clip_seconds,
                   FLAGS.synth_sr, FLAGS.mel_dtype, FLAGS.clips_per_shard, FLAGS.direct_num_workers,
                   FLAGS.labels, FLAGS.teacher_top_k, tuple(FLAGS.packages), FLAGS.cache_dir)
    export = experiment.ExportConfig(FLAGS.export, FLAGS.export_dir, FLAGS.export_version or None,
                                     FLAGS.export_per_resolution, cli.tflite_precisions(FLAGS.mode),
                                     FLAGS.representative_clips)
    overrides = tuple(_config(experiment.SweepModel.parse, "--sweep_model", text)
                      for text in FLAGS.sweep_model)
    return _config(experiment.Experiment, "--resolutions/--models/--repeats/--sweep_model",
                   mel_configs, model, train, data, export, FLAGS.run_dir,
                   tuple(FLAGS.models), FLAGS.repeats, overrides)


def _lib(name: str):
    return importlib.import_module(f"tftag.{name}")


def _weights(exp) -> str:
    return FLAGS.weights or exp.path("best.weights.h5")


def _profile(exp) -> dict:
    try:
        batches = tuple(int(b) for b in FLAGS.latency_batches)
    except ValueError:
        raise app.UsageError("--latency_batches must be comma-separated integers") from None
    if FLAGS.profile_trace and not exp.run_dir:
        raise app.UsageError("--profile_trace writes into --run_dir: give one")
    return _lib("profile").run_profile(exp.model, exp.mel_configs, 50, FLAGS.latency_runs, batches,
                                       exp.run_dir, FLAGS.trace_steps if FLAGS.profile_trace else 0)


def _describe(exp) -> dict:
    pipeline = _lib("pipeline")
    catalog = pipeline.catalog_of(exp)
    card = (pipeline.write_datacard(catalog, exp.run_dir) if exp.run_dir
            else _lib("datacard").describe(catalog))
    print(_lib("datacard").format_card(card))
    return {"clips": card["clips"], "splits": card["splits"]}


def _verify(exp) -> dict:
    if not FLAGS.dataset_dir:
        raise app.UsageError("--mode=verify needs --dataset_dir")
    report = _lib("verify").verify_dataset(FLAGS.dataset_dir)
    print(report.format())
    return {"dataset_dir": FLAGS.dataset_dir, "ok": report.ok}


def _tag(exp) -> dict:
    if bool(FLAGS.model_dir) == bool(FLAGS.pretrained):
        raise app.UsageError("--mode=tag needs --pretrained (MTT_musicnn, MTT_vgg) or --model_dir "
                             "(an exported model), not both")
    if FLAGS.server and FLAGS.pretrained:
        raise app.UsageError("--server scores with a served export: give its --model_dir")
    return _lib("tag").tag(FLAGS.model_dir, FLAGS.audio or "", FLAGS.output, FLAGS.server,
                           FLAGS.server_protocol, FLAGS.top_k, pretrained=FLAGS.pretrained,
                           window_hop=FLAGS.window_hop, taggram_dir=FLAGS.taggram_dir,
                           plot=FLAGS.plot, embeddings=FLAGS.embeddings,
                           block_seconds=FLAGS.block_seconds)


RUN_MODE = {
    "extract": lambda exp: _lib("pipeline").extract(exp),
    "describe": _describe,
    "train": lambda exp: _lib("train").run_train(exp),
    "evaluate": lambda exp: _lib("evaluate").run_evaluate(
        exp, _weights(exp), None if FLAGS.split == "all" else FLAGS.split,
        tflite=",".join(FLAGS.tflite) or None),
    "sweep": lambda exp: _lib("sweep").run(exp),
    "tune": lambda exp: _lib("tune").run(exp, FLAGS.max_trials),
    "export": lambda exp: (_lib("export").export_pretrained(FLAGS.pretrained, exp.export,
                                                            exp.data.dataset_dir)
                           if FLAGS.pretrained else _lib("export").run_export(exp, _weights(exp))),
    "tag": _tag,
    "transcode": lambda exp: _lib("transcode").transcode_dataset(
        exp.data.dataset_dir, exp.path("dataset"), exp.data.mel_dtype),
    "profile": _profile,
    "verify": _verify,
}


def write_run_files(exp) -> None:
    """flags.txt, configs.json (the whole Experiment) and the flags in TensorBoard."""
    runfiles.write_text_atomic(exp.path("flags.txt"), cli.flagfile_text())
    exp.save()
    runfiles.tensorboard_notes(exp.path("tb", "config"), texts={
        "flags": cli.flagfile_text(), "experiment": json.dumps(exp.to_dict(), indent=2)})


def main(argv) -> None:
    del argv
    if FLAGS.mode in NEEDS_RUN_DIR and not FLAGS.run_dir:
        raise app.UsageError(f"--mode={FLAGS.mode} needs --run_dir (where the run is written)")
    # tag and verify read an export or a dataset: no Experiment (and no Keras import) needed.
    exp = build_experiment() if FLAGS.mode not in ("tag", "verify") else None
    pretrained_export = FLAGS.mode == "export" and FLAGS.pretrained  # its own resolution
    if exp and FLAGS.mode in ONE_RESOLUTION and len(exp.mel_configs) != 1 and not pretrained_export:
        try:
            exp.mel_config
        except ValueError as e:
            raise app.UsageError(str(e).replace("this mode", f"--mode={FLAGS.mode}")) from None
    if exp:  # before the first TensorFlow op: thread pools, then a multi_worker strategy
        _lib("distributed").setup(exp.train, FLAGS.mode, exp.data.dataset_dir)
    if exp and exp.run_dir and _lib("distributed").is_chief():  # other workers write nothing
        write_run_files(exp)
    summary = dict(mode=FLAGS.mode, **RUN_MODE[FLAGS.mode](exp))
    if FLAGS.run_dir and _lib("distributed").is_chief():
        runfiles.write_json_atomic(os.path.join(FLAGS.run_dir, "summary.json"), summary)
    logging.info("summary: %s", json.dumps(summary, sort_keys=True))
    if summary.get("ok") is False:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
