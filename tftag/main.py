r"""tftag's entry point: ``python -m tftag.main --flagfile=configs/NAME.flags``.

Modes (what each does lives in the library module named after it):
  extract   render the built-in corpus (--catalog=synthetic, no --input), extract the requested
            resolutions into <run_dir>/dataset (Apache Beam; resumes) — tftag.extraction.extract;
  describe  the data card of a catalogue (files into --run_dir if given) — tftag.extraction.extract; with
            --pretrained=NAME the model card of a pretrained model (--json: as JSON; NAME=all:
            the table of every one) — tftag.delivery.modelcards;
  train     train --model at one resolution, keep the best weights by validation ROC-AUC,
            evaluate them on the test split, export — tftag.train; with --heldout_packages,
            train on the other packages (early stopping on the validation loss) and test on
            those (a final student, tftag.storage.folds.HeldoutConfig);
  ship      a finished --run_dir (a --heldout_packages training run) as a shipped pretrained
            model <--models_dir>/<--ship_name>/ (weights + card.json) — tftag.tagging.ship;
  evaluate  macro ROC-AUC / PR-AUC of --weights (or a --tflite file) on --split — tftag.evaluate;
  sweep     every (--models × resolution × --repeats): results table, t-tests, plots, export of
            the best run — tftag.study.sweep; with --folds, cross-validated by track group, each run
            trained to convergence and recorded in --results_dir — tftag.study.crossval;
  tune      keras-tuner search of width, learning rate and dropout — tftag.search.tune;
  how_low   cost-aware keras-tuner search over resolution × model × width × storage codec: the
            accuracy/cost Pareto front and the cheapest configuration within --max_drop ROC-AUC
            points of the best, retrained, tested and exported (with --folds/--fold: on one
            fold of the cross-validated sweep, trained and validated as its runs) — tftag.search.how_low;
  export    --weights as a SavedModel (TF Serving) + frozen graph (Essentia), and TFLite files
            (--tflite) — tftag.delivery.export, tftag.delivery.tflite;
  tag       tag whole tracks of --audio with --pretrained=NAME (MTT_musicnn, a shipped
            student), an export (--model_dir) or a server (--server) — tftag.tagging.tag;
  status    where a cross-validated sweep stands: every run of its plan done, started (passes,
            learning-rate stage, passes left) or not started, and the hours left at the speeds
            measured; reads the run and results directories, writes nothing — tftag.study.status;
  profile   GMACs, parameters and latency at every resolution — tftag.profile;
  verify    check every shard of --dataset_dir against dataset.json — tftag.storage.verify;
  transcode --dataset_dir stored again with --mel_dtype into <run_dir>/dataset — tftag.storage.transcode.

What the entry point knows of each mode is one row of MODES (a Mode record: run dir needed, one
resolution, Experiment, strategy, runner); main() parses, builds the Experiment, checks the row
and dispatches. train, evaluate, sweep, tune, how_low, extract and transcode need --run_dir;
the others write there only if given. A run directory holds flags.txt (a valid flagfile),
configs.json (the whole Experiment; tftag.experiment.Experiment.load reads it back), TensorBoard
logs (tb/) and summary.json (--strategy=multi_worker: written by the chief alone; see
tftag.runs.distributed; how_low's keras-tuner workers write none: tftag.search.tuner).
Those three files belong to the mode that made the directory (the --mode of its flags.txt); a
run of another mode on it, e.g. --mode=export --run_dir=<a training run>, writes its own into
<run_dir>/<mode>/ and never replaces them (tftag.runs.runrecord).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
from typing import Any, Callable

from absl import app, flags, logging

import tftag
from tftag import cli, datasets, experiment, models
from tftag.runs import runfiles, runrecord
from tftag.storage import codecs, folds

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Mode:
    """What the entry point needs to know about one ``--mode``.

    Attributes:
      run: the runner: the Experiment (None without ``experiment``) -> its summary dict.
      needs_run_dir: ``--run_dir`` is required.
      one_resolution: takes exactly one resolution (checked before anything runs).
      pretrained_resolution: with ``--pretrained``, the pretrained model's own resolution is
        used instead (no one-resolution check).
      experiment: builds an Experiment from the flags (tag and verify read an export or a
        dataset: no Experiment, no Keras import).
      uses_strategy: trains under ``--strategy`` (multi_worker included; tftag.runs.distributed).
      trains: trains models its own way: ``--strategy=multi_worker`` is an error unless
        ``uses_strategy`` (other modes ignore the strategy).
      check: checks the mode's own flags before anything runs (raises a usage error).
      writes_record: whether this process writes the run's record (flags.txt, configs.json,
        summary.json); None = :func:`tftag.runs.distributed.is_chief`.
      folds: what it does with ``--folds/--fold`` (:mod:`tftag.storage.folds`): ``"any"`` (every fold,
        or ``--fold`` alone), ``"one"`` (``--fold`` is required), ``"ignored"`` (extract: folds
        are a view of the dataset it makes, so a study's flagfile extracts as it is), None (an
        error).
    """

    run: Callable[[Any], dict]
    needs_run_dir: bool = False
    one_resolution: bool = False
    pretrained_resolution: bool = False
    experiment: bool = True
    uses_strategy: bool = False
    trains: bool = False
    check: Callable[[], object] | None = None
    writes_record: Callable[[], bool] | None = None
    folds: str | None = None


_LIB = {"runfiles": "tftag.runs.runfiles", "runrecord": "tftag.runs.runrecord", "determinism": "tftag.runs.determinism", "distributed": "tftag.runs.distributed", "_essentia": "tftag.audio._essentia", "_essentia_guard": "tftag.audio._essentia_guard", "_essentia_ops": "tftag.audio._essentia_ops", "compressions": "tftag.audio.compressions", "codecs": "tftag.storage.codecs", "dataset_dir": "tftag.storage.dataset_dir", "data": "tftag.storage.data", "verify": "tftag.storage.verify", "transcode": "tftag.storage.transcode", "datacard": "tftag.storage.datacard", "folds": "tftag.storage.folds", "extraction": "tftag.extraction.plan", "pipeline": "tftag.extraction.pipeline", "extract": "tftag.extraction.extract", "teacher": "tftag.extraction.teacher", "export": "tftag.delivery.export", "export_layout": "tftag.delivery.export_layout", "serving": "tftag.delivery.serving", "tflite": "tftag.delivery.tflite", "litert": "tftag.delivery.litert", "modelcards": "tftag.delivery.modelcards", "crossval": "tftag.study.crossval", "sweep": "tftag.study.sweep", "status": "tftag.study.status", "study": "tftag.study.analysis", "stats": "tftag.study.stats", "pareto": "tftag.study.pareto", "how_low": "tftag.search.how_low", "search": "tftag.search.tuner", "tune": "tftag.search.tune", "tag": "tftag.tagging.tag", "tracks": "tftag.tagging.tracks", "ship": "tftag.tagging.ship"}


def _lib(name: str):
    return importlib.import_module(_LIB.get(name, f"tftag.{name}"))


def _weights(exp) -> str:
    return FLAGS.weights or exp.path("best.weights.h5")


def _profile(exp) -> dict:
    try:
        batches = tuple(int(b) for b in FLAGS.latency_batches)
    except ValueError:
        raise app.UsageError("--latency_batches must be comma-separated integers") from None
    return _lib("profile").run(exp, FLAGS.latency_runs, batches,
                               FLAGS.trace_steps if FLAGS.profile_trace else 0)


def _tag(exp) -> dict:
    return _lib("tag").tag(FLAGS.model_dir, FLAGS.audio or "", FLAGS.output, FLAGS.server,
                           FLAGS.server_protocol, FLAGS.top_k, pretrained=FLAGS.pretrained,
                           window_hop=FLAGS.window_hop, taggram_dir=FLAGS.taggram_dir,
                           plot=FLAGS.plot, embeddings=FLAGS.embeddings,
                           block_seconds=FLAGS.block_seconds)


def _describe(exp) -> dict:
    if FLAGS.pretrained:
        return _lib("modelcards").describe(FLAGS.pretrained, as_json=FLAGS.json)
    return _lib("extract").describe(exp)


def _ship(exp) -> dict:
    del exp  # ship reads the run directory's own Experiment
    return _lib("ship").ship(FLAGS.run_dir, FLAGS.models_dir, FLAGS.ship_name,
                             audio=FLAGS.audio, overwrite=FLAGS.overwrite)


def _report(exp) -> dict:
    del exp  # a report reads committed result files only
    from tftag.study import report

    if not FLAGS.name:
        raise app.UsageError("--mode=report needs --name (writes <out_root>/<name>/)")
    opts = report.Options(n_resamples=FLAGS.n_resamples, seed=FLAGS.bootstrap_seed,
                          unit=FLAGS.resample_by, top_k=FLAGS.teacher_top_k, alpha=FLAGS.alpha,
                          power=FLAGS.power, frequent_min_positives=FLAGS.frequent_min_positives)
    try:
        summary = report.run(FLAGS.name, FLAGS.out_root, FLAGS.runs_dir, FLAGS.run_dir, opts,
                             cli.named_dirs("compare", FLAGS.compare), FLAGS.max_drop)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    print(json.dumps(summary))  # one JSON line: what was written
    return summary


MODES: dict[str, Mode] = {
    "train": Mode(lambda exp: _lib("train").run_train(exp), needs_run_dir=True,
                  one_resolution=True, uses_strategy=True, trains=True),
    "evaluate": Mode(lambda exp: _lib("evaluate").run_evaluate(
        exp, _weights(exp), None if FLAGS.split == "all" else FLAGS.split,
        tflite=",".join(FLAGS.tflite) or None), needs_run_dir=True, one_resolution=True),
    # --folds: the cross-validated sweep (tftag.study.crossval) instead of the dataset's splits.
    "sweep": Mode(lambda exp: _lib("crossval" if exp.folds else "sweep").run(exp),
                  needs_run_dir=True, trains=True, folds="any"),
    "tune": Mode(lambda exp: _lib("tune").run(exp, FLAGS.max_trials), needs_run_dir=True,
                 one_resolution=True, trains=True),
    # keras-tuner workers (KERASTUNER_TUNER_ID without "chief") run trials and write no record.
    # --folds=K --fold=k: the search trains and validates on fold k as the sweep does.
    "how_low": Mode(lambda exp: _lib("how_low").run(exp, cli.how_low_search()),
                    needs_run_dir=True, trains=True, check=cli.how_low_search,
                    writes_record=lambda: _lib("search").role() != "worker", folds="one"),
    # Reads what the sweep's processes write (beside them): no record of its own.
    "status": Mode(lambda exp: _lib("status").run(exp), writes_record=lambda: False, folds="any"),
    "extract": Mode(lambda exp: _lib("extract").extract(exp), needs_run_dir=True,
                    folds="ignored"),
    "transcode": Mode(lambda exp: _lib("transcode").transcode_dataset(
        exp.data.dataset_dir, exp.path("dataset"), exp.data.mel_dtype), needs_run_dir=True),
    "profile": Mode(_profile),
    "export": Mode(lambda exp: _lib("export").run_export(
        exp, None if FLAGS.pretrained else _weights(exp), FLAGS.pretrained),
        one_resolution=True, pretrained_resolution=True),
    "tag": Mode(_tag, experiment=False),
    "describe": Mode(_describe),
    "ship": Mode(_ship, needs_run_dir=True, experiment=False),
    "verify": Mode(lambda exp: _lib("verify").run_verify(FLAGS.dataset_dir),
                   experiment=False),
    # Reads a study's committed files; the run dir (if any) is the sweep it reports on.
    "report": Mode(_report, experiment=False, writes_record=lambda: False),
}

flags.DEFINE_enum("mode", "train", list(MODES), "What to run.")
flags.DEFINE_bool("version", False, "Print tftag's version and exit.")
flags.DEFINE_string("run_dir", None, "Run directory (created): flags, configs, TensorBoard logs, "
                    "summary.json, and the dataset of --mode=extract.")
flags.DEFINE_string("catalog", "synthetic", cli.registry_help(datasets.REGISTRY, "Catalogue") +
                    " synthetic without --input renders the built-in corpus into <run_dir>/corpus.")
flags.DEFINE_integer("num_clips", 48, "Built-in corpus: clips to render.", lower_bound=1)
flags.DEFINE_float("clip_seconds", 30.0, "Built-in corpus: seconds per clip.", lower_bound=0.5)
flags.DEFINE_integer("synth_sr", 16000, "Built-in corpus: sample rate of the WAVs.",
                     lower_bound=8000)
cli.define_catalog_flags()
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
flags.DEFINE_list("models", [], "sweep, how_low: model names (default: --model).")
flags.DEFINE_multi_string(
    "sweep_model", [], "sweep: one model's own settings, NAME:key=value,... (repeat the flag per "
    "model); keys: resolutions (names joined by +; default all), width, patch_seconds (0 = whole "
    "clips), epochs, steps_per_epoch, test_patches (patches scored per test clip; default all), "
    "valid_patches (per validation clip; default --valid_patches); both take all. "
    "E.g. musicnn:patch_seconds=3,resolutions=sr16000-mel96-hop1-log+sr16000-mel48-hop1-log")
flags.DEFINE_integer("folds", None, "sweep, how_low: cross-validate by track group with K folds "
                     "(the same for every resolution; tftag.storage.folds) instead of the dataset's "
                     "splits (how_low: one --fold, trained and validated as the sweep's); "
                     "early stopping then follows the validation loss, --patience counts passes "
                     "over a fold's training data (>= 3) and --epochs is the cap. Default: the "
                     "splits (5 folds when only --fold is given).")
flags.DEFINE_integer("fold", None, "sweep with --folds: run only this fold (0 .. K-1); how_low: "
                     "the fold searched (required with --folds).")
flags.DEFINE_integer("fold_seed", 0, "sweep with --folds: seed of the fold and validation "
                     "groups (the same for every resolution and repeat); train with "
                     "--heldout_packages: seed of the validation groups.")
flags.DEFINE_list("heldout_packages", [], "train: hold these packages out (a clip's package: the "
                  "first part of its id, <package>/<path>#k in the debian catalogue): train on "
                  "the others but a seeded ~10 % validation part (by track group, as a fold's), "
                  "test on every clip of these; early stopping follows the validation loss, "
                  "--patience counts passes. For the final students (configs/real_music_students"
                  ".flags) that --mode=ship turns into pretrained models.")
flags.DEFINE_string("ship_name", None, "ship: the pretrained model's name (default: the naming "
                    "rule tftag_<model>_<n_mels>x<hop_factor>, tftag.models.pretrained"
                    ".student_name).")
flags.DEFINE_bool("overwrite", False, "ship: replace an existing <models_dir>/<ship_name>/.")
flags.DEFINE_bool("json", False, "describe --pretrained: print the model card as JSON.")
flags.DEFINE_string("results_dir", None, "sweep with --folds: where each finished run writes "
                    "<model>-w<width>-<resolution>-fold<k>-seed<s>/result.json and "
                    "test_predictions.npz (default <run_dir>/results); runs whose result.json "
                    "exists are skipped.")
flags.DEFINE_integer("repeats", 3, "sweep: runs per (model, resolution), seeds seed, seed+1, ...; "
                     "how_low: runs of the chosen and of the best candidate when retrained",
                     lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Global batch (split across replicas).", lower_bound=1)
flags.DEFINE_integer("epochs", 20, "Maximum training epochs.", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (paper: 1e-3).")
flags.DEFINE_integer("patience", 5, "Early stopping: epochs without a better validation ROC-AUC "
                     "(0 = off).", lower_bound=0)
flags.DEFINE_integer("lr_reductions", 0, "When the patience runs out: multiply the learning rate "
                     "by --lr_factor and go on (the patience starts again) this many times "
                     "before stopping; 0 = stop at the first plateau.", lower_bound=0)
flags.DEFINE_float("lr_factor", 0.2, "The learning rate's factor at each of --lr_reductions "
                   "(0 < factor < 1).")
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
cli.define_how_low_flags()
cli.define_export_flags()
cli.define_tag_flags()
cli.define_report_flags()
flags.DEFINE_float("width", 1.0, "Filter-count multiplier (1 = the paper's full-size model).")
flags.DEFINE_string("preset", "paper", "Architecture preset (musicnn: paper, musicnn_mtt).")
flags.DEFINE_float("dropout", -1.0, "Dropout rate; -1 = the architecture's own.")
flags.DEFINE_integer("latency_runs", 5, "profile: timed runs per batch size (median); 0 skips "
                     "latency. how_low --cost=latency: timed runs per candidate.", lower_bound=0)
flags.DEFINE_list("latency_batches", ["1", "32"], "profile: batch sizes to time.")
flags.DEFINE_bool("profile_trace", False, "profile: also trace a few training steps of the first "
                  "resolution into <run_dir>/tb/trace (needs --run_dir).")
flags.DEFINE_integer("trace_steps", 3, "profile: training steps in the trace.", lower_bound=1)


def build_experiment(mode: str | None = None) -> experiment.Experiment:
    """The Experiment of the flags (for ``mode``, default ``--mode``); a bad value is a
    UsageError naming its flag."""
    mode = mode or FLAGS.mode
    mel_configs = tuple(cli.mel_configs())  # checked first: no model registry (Keras) needed
    model = cli.config("--width/--preset/--dropout/--patch_seconds", lambda: models.ModelConfig(
        FLAGS.model, width=FLAGS.width, preset=FLAGS.preset,
        dropout=None if FLAGS.dropout < 0 else FLAGS.dropout,
        patch_seconds=FLAGS.patch_seconds or None))
    fold_config = None
    if FLAGS.folds is not None or FLAGS.fold is not None:  # cross-validation (tftag.storage.folds)
        fold_config = cli.config("--folds/--fold", lambda: folds.FoldConfig(
            **({"folds": FLAGS.folds} if FLAGS.folds is not None else {}), fold=FLAGS.fold,
            seed=FLAGS.fold_seed))
    heldout = None
    if FLAGS.heldout_packages:  # a final student: whole packages held out (tftag.storage.folds)
        heldout = cli.config("--heldout_packages", lambda: folds.HeldoutConfig(
            tuple(FLAGS.heldout_packages), seed=FLAGS.fold_seed))
    # Cross-validated runs and final students train to convergence: the lowest validation loss,
    # patience in passes.
    stopping = ({"monitor": "valid_loss", "patience_unit": "passes"}
                if fold_config or heldout else {})
    train = cli.config("--batch_size/--epochs/--learning_rate/--patience/--lr_factor", lambda: (
        experiment.TrainConfig(
            batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, learning_rate=FLAGS.learning_rate,
            patience=FLAGS.patience, lr_reductions=FLAGS.lr_reductions,
            lr_factor=FLAGS.lr_factor, seed=FLAGS.seed,
            steps_per_epoch=FLAGS.steps_per_epoch or None,
            deterministic=FLAGS.deterministic, strategy=FLAGS.strategy, loss=FLAGS.loss,
            valid_patches=FLAGS.valid_patches or None, **stopping)))
    data = cli.config(f"--catalog={FLAGS.catalog}/--labels", lambda: experiment.DataConfig(
        FLAGS.catalog, FLAGS.input, FLAGS.dataset_dir, FLAGS.num_clips, FLAGS.clip_seconds,
        FLAGS.synth_sr, FLAGS.mel_dtype, FLAGS.clips_per_shard, FLAGS.direct_num_workers,
        FLAGS.labels, FLAGS.teacher_top_k, tuple(FLAGS.packages), FLAGS.cache_dir,
        FLAGS.min_tag_count, FLAGS.teacher_memo, FLAGS.train_clip_hop))
    tflite = () if mode == "evaluate" else tuple(FLAGS.tflite)  # evaluate: --tflite is a file
    export = cli.config(f"--tflite={','.join(FLAGS.tflite)}", lambda: experiment.ExportConfig(
        FLAGS.export, FLAGS.export_dir, FLAGS.export_version or None, FLAGS.export_per_resolution,
        tflite, FLAGS.representative_clips), hint="(a .tflite file only with --mode=evaluate)")
    overrides = tuple(cli.config("--sweep_model", lambda t=text: experiment.SweepModel.parse(t))
                      for text in FLAGS.sweep_model)
    return cli.config("--resolutions/--models/--repeats/--sweep_model/--folds", lambda: (
        experiment.Experiment(mel_configs, model, train, data, export, FLAGS.run_dir,
                              tuple(FLAGS.models), FLAGS.repeats, overrides, fold_config,
                              FLAGS.results_dir, heldout)))


def check_experiment(name: str, mode: Mode, exp: experiment.Experiment) -> None:
    """The table's checks of ``--mode=name`` on its Experiment, before anything runs."""
    if mode.one_resolution and not (mode.pretrained_resolution and FLAGS.pretrained):
        exp.one_resolution(f"--mode={name}")  # a ValueError: a usage error (exit 2)
    if exp.folds is not None and mode.folds is None:
        takers = " or ".join(f"--mode={n}" for n, m in MODES.items() if m.folds in ("any", "one"))
        raise app.UsageError(f"--folds/--fold: only {takers} use folds, not --mode={name}")
    if exp.folds is not None and mode.folds == "one" and exp.folds.fold is None:
        raise app.UsageError(f"--mode={name} runs on one fold: add --fold=k "
                             f"(0 .. {exp.folds.folds - 1}) to --folds={exp.folds.folds}")
    if exp.heldout is not None and name != "train":
        raise app.UsageError(f"--heldout_packages trains a final student: use --mode=train, not "
                             f"--mode={name}")
    if mode.check:
        mode.check()
    if exp.train.strategy == "multi_worker" and mode.trains and not mode.uses_strategy:
        raise app.UsageError(f"--strategy=multi_worker trains with --mode=train only, not "
                             f"--mode={name}")


def check_pretrained(name: str) -> None:
    """Registers ``--models_dir``'s shipped models (not for ship, which writes there) and checks
    ``--pretrained`` against the pretrained registry (a UsageError listing the known names)."""
    from tftag.models import pretrained

    if FLAGS.models_dir and name != "ship":
        cli.config("--models_dir", lambda: pretrained.add_models_dir(FLAGS.models_dir))
    if FLAGS.pretrained and not (name == "describe" and FLAGS.pretrained == "all"):
        cli.config("--pretrained", lambda: pretrained.REGISTRY.check(FLAGS.pretrained,
                                                                      "pretrained"))


def write_run_files(exp, directory: str) -> None:
    """flags.txt, configs.json (the whole Experiment) and the flags in TensorBoard into
    ``directory`` (the run's record: tftag.runs.runrecord)."""
    runfiles.write_text_atomic(os.path.join(directory, "flags.txt"), cli.flagfile_text())
    exp.save(directory)
    runfiles.tensorboard_notes(os.path.join(directory, "tb", "config"), texts={
        "flags": cli.flagfile_text(), "experiment": json.dumps(exp.to_dict(), indent=2)})


def main(argv) -> None:
    del argv
    if FLAGS.version:
        print(f"tftag {tftag.__version__}")
        return
    name, mode = FLAGS.mode, MODES[FLAGS.mode]
    if mode.needs_run_dir and not FLAGS.run_dir:
        raise app.UsageError(f"--mode={name} needs --run_dir (where the run is written)")
    check_pretrained(name)
    exp = build_experiment(name) if mode.experiment else None
    if exp:
        check_experiment(name, mode, exp)
        # before the first TensorFlow op: thread pools, then a multi_worker strategy
        _lib("distributed").setup(exp.train, mode.uses_strategy, exp.data.dataset_dir)
    record = runrecord.record_dir(FLAGS.run_dir, name) if FLAGS.run_dir else None  # runrecord
    chief = (mode.writes_record or _lib("distributed").is_chief)()  # other workers write nothing
    if exp and record and chief:
        write_run_files(exp, record)
    summary = dict(mode=name, **mode.run(exp))
    if record and chief:
        runfiles.write_json_atomic(os.path.join(record, "summary.json"), summary)
    logging.info("summary: %s", json.dumps(summary, sort_keys=True))
    if summary.get("ok") is False:
        sys.exit(1)


if __name__ == "__main__":  # also the `tftag` command and `python -m tftag` (tftag/__main__.py)
    cli.run(main)
