r"""tftag's entry point: ``python -m tftag.main --flagfile=configs/NAME.flags`` (``tftag``).

Each mode is one row of MODES (``--helpfull`` lists them; ``--mode=M --helpshort``, the flags M
reads). main() builds the Experiment and the mode's options (tftag.cli notes every flag read),
checks the row and dispatches; no runner reads a flag. A run directory holds flags.txt (a
flagfile), configs.json (the Experiment, as Experiment.load reads it back, with "mode", the
mode's "options" and "flags": every flag it read and its value), tb/ and summary.json, written
by the mode that made the directory (multi_worker: by the chief alone); another mode run on it
writes its own into <run_dir>/<mode>/ (tftag.runs.runrecord).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Callable

from absl import app, flags, logging

import tftag
from tftag import cli, experiment
from tftag.runs import distributed, runfiles, runrecord

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Mode:
    """What the entry point needs to know about one ``--mode``.

    Attributes:
      run: (the Experiment or None, the options or None) -> the mode's summary dict.
      options: the options dataclass of :mod:`tftag.cli` (fields named as their flags) or a
        function of the flags making it; None: the Experiment is all the mode takes.
      needs_run_dir / one_resolution: ``--run_dir`` is required / one resolution only (with
        ``pretrained_resolution`` and ``--pretrained``: the pretrained model's own).
      experiment: builds an Experiment from the flags (False: no Keras import).
      uses_strategy: trains under ``--strategy``; trains: its own way (no multi_worker).
      writes_record: whether this process writes the run's record (None: the chief does).
      folds: ``--folds/--fold``: "any", "one" (``--fold`` required), "ignored" or None (an error).
      about: what it does (``--mode``'s help); defaults: (flag, value) it takes without a
        flagfile when the flag is not given.
    """

    run: Callable[[Any, Any], dict]
    options: type | Callable[[], Any] | None = None
    needs_run_dir: bool = False
    one_resolution: bool = False
    pretrained_resolution: bool = False
    experiment: bool = True
    uses_strategy: bool = False
    trains: bool = False
    writes_record: Callable[[], bool] | None = None
    folds: str | None = None
    about: str = ""
    defaults: tuple[tuple[str, object], ...] = ()


def _train(exp, _) -> dict:
    from tftag import train
    return train.run_train(exp)


def _evaluate(exp, o: cli.EvaluateOptions) -> dict:
    from tftag import evaluate
    return evaluate.run_evaluate(exp, o.weights or exp.path("best.weights.h5"),
                                 None if o.split == "all" else o.split,
                                 tflite=",".join(o.tflite) or None)


def _sweep(exp, _) -> dict:  # --folds: cross-validated by track group (tftag.study.crossval)
    from tftag.study import crossval, sweep
    return (crossval if exp.folds else sweep).run(exp)


def _tune(exp, o: cli.TuneOptions) -> dict:
    from tftag.search import tune
    return tune.run(exp, o.max_trials)


def _how_low(exp, search) -> dict:
    from tftag.search import how_low
    return how_low.run(exp, search)


def _status(exp, _) -> dict:
    from tftag.study import status
    return status.run(exp)


def _extract(exp, _) -> dict:
    from tftag.extraction import extract
    return extract.extract(exp)


def _transcode(exp, _) -> dict:
    from tftag.storage import transcode
    return transcode.transcode_dataset(exp.data.dataset_dir, exp.path("dataset"),
                                       exp.data.mel_dtype)


def _profile(exp, o: cli.ProfileOptions) -> dict:
    from tftag import profile
    return profile.run(exp, o.latency_runs, o.latency_batches,
                       o.trace_steps if o.profile_trace else 0)


def _export(exp, o: cli.ExportOptions) -> dict:
    from tftag.delivery import export
    return export.run_export(exp, None if o.pretrained else o.weights or exp.path(
        "best.weights.h5"), o.pretrained)


def _tag(_, o: cli.TagOptions | cli.SimilarOptions) -> dict:  # --mode=tag and --mode=similar
    from tftag.tagging import similar, tag
    return (similar if isinstance(o, cli.SimilarOptions) else tag).run(o)


def _describe(exp, o: cli.DescribeOptions) -> dict:
    if o.pretrained:
        from tftag.delivery import modelcards
        return modelcards.describe(o.pretrained, as_json=o.json)
    from tftag.extraction import extract
    return extract.describe(exp)


def _ship(_, o: cli.ShipOptions) -> dict:  # ship reads the run directory's own Experiment
    from tftag.tagging import ship
    return ship.ship(o.run_dir, o.models_dir, o.ship_name, audio=o.audio, overwrite=o.overwrite)


def _verify(_, o: cli.VerifyOptions) -> dict:
    from tftag.storage import verify
    return verify.run_verify(o.dataset_dir)


def _report(_, o: cli.ReportOptions) -> dict:
    from tftag.study import report
    summary = report.run(o.name, o.out_root, o.runs_dir, o.run_dir, report.Options(
        n_resamples=o.n_resamples, seed=o.bootstrap_seed, unit=o.resample_by,
        top_k=o.teacher_top_k, alpha=o.alpha, power=o.power,
        frequent_min_positives=o.frequent_min_positives), o.compare, o.max_drop)
    print(json.dumps(summary))  # one JSON line: what was written
    return summary


MODES: dict[str, Mode] = {
    "train": Mode(_train, needs_run_dir=True, one_resolution=True, uses_strategy=True,
                  trains=True, about="train --model at one resolution, test and export its best "
                  "weights (--heldout_packages: a final student); tftag.train"),
    "evaluate": Mode(_evaluate, cli.EvaluateOptions, needs_run_dir=True, one_resolution=True,
                     about="ROC-AUC / PR-AUC of --weights or a --tflite file on --split"),
    "sweep": Mode(_sweep, needs_run_dir=True, trains=True, folds="any", about="every --models x "
                  "resolution x --repeats (--folds: cross-validated); tftag.study"),
    "tune": Mode(_tune, cli.TuneOptions, needs_run_dir=True, one_resolution=True, trains=True,
                 about="keras-tuner search of width, learning rate and dropout"),
    "how_low": Mode(_how_low, cli.how_low_search, needs_run_dir=True, trains=True,
                    writes_record=cli.how_low_chief, folds="one", about="cost-aware search of "
                    "resolution x model x width x codec: the front and its cheapest answer",
                    defaults=cli.HOW_LOW_DEFAULTS),
    "status": Mode(_status, writes_record=lambda: False, folds="any",
                   about="where a cross-validated sweep stands (reads only)"),
    "extract": Mode(_extract, needs_run_dir=True, folds="ignored",
                    about="a catalogue into <run_dir>/dataset (Apache Beam; resumes)"),
    "transcode": Mode(_transcode, needs_run_dir=True,
                      about="--dataset_dir stored again with --mel_dtype"),
    "profile": Mode(_profile, cli.ProfileOptions,
                    about="GMACs, parameters and latency at every resolution"),
    "export": Mode(_export, cli.ExportOptions, one_resolution=True, pretrained_resolution=True,
                   about="SavedModel (TF Serving), frozen graph (Essentia), --tflite files"),
    "tag": Mode(_tag, cli.TagOptions, experiment=False,
                about="tag tracks of --audio with --pretrained, --model_dir or --server"),
    "similar": Mode(_tag, cli.SimilarOptions, experiment=False, about="the --top_k tracks of an "
                    "embedding --index nearest to --query (cosine; exact, or HNSW when large)"),
    "describe": Mode(_describe, cli.DescribeOptions,
                     about="a catalogue's data card, or --pretrained's model card"),
    "ship": Mode(_ship, cli.ShipOptions, needs_run_dir=True, experiment=False,
                 about="a finished student run as a shipped pretrained model"),
    "verify": Mode(_verify, cli.VerifyOptions, experiment=False,
                   about="every shard of --dataset_dir against dataset.json"),
    "report": Mode(_report, cli.ReportOptions, experiment=False, writes_record=lambda: False,
                   about="a study's report from its committed files (--runs_dir or --run_dir)"),
}

flags.DEFINE_enum("mode", "train", list(MODES), "What to run: " + "; ".join(
    f"{name} = {m.about}" for name, m in MODES.items()) + ".")
cli.define_main_flags()
build_experiment = cli.build_experiment  # the Experiment of the flags (tests, notebooks)


def check_experiment(name: str, mode: Mode, exp: experiment.Experiment) -> None:
    """The table's checks of ``--mode=name`` on its Experiment, before anything runs."""
    if mode.one_resolution and not (mode.pretrained_resolution and cli.FLAGS.pretrained):
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
    if exp.train.strategy == "multi_worker" and mode.trains and not mode.uses_strategy:
        raise app.UsageError(f"--strategy=multi_worker trains with --mode=train only, not "
                             f"--mode={name}")


def configure(name: str, help_only: bool = False) -> tuple[Any, Any, dict[str, Any]]:
    """The Experiment and options of ``--mode=name``, checked, and every flag they read."""
    mode = MODES[name]
    cli.apply_mode_defaults(mode.defaults, sys.argv)
    with cli.reading_flags() as reads:
        if not cli.FLAGS.run_dir and mode.needs_run_dir and not help_only:
            raise app.UsageError(f"--mode={name} needs --run_dir (where the run is written)")
        cli.check_pretrained(name)
        exp = cli.build_experiment(name) if mode.experiment else None
        opts = (cli.options(mode.options) if isinstance(mode.options, type)
                else mode.options() if mode.options else None)
        if exp:
            check_experiment(name, mode, exp)
    return exp, opts, cli.flag_record(reads.names | {"mode"})


def main(argv) -> None:
    del argv
    if FLAGS.version:
        return print(f"tftag {tftag.__version__}")
    name, mode = FLAGS.mode, MODES[FLAGS.mode]
    exp, opts, flag_values = configure(name)
    if exp:  # before the first TensorFlow op: thread pools, then a multi_worker strategy
        distributed.setup(exp.train, mode.uses_strategy, exp.data.dataset_dir)
    run_dir = flag_values["run_dir"]
    record = runrecord.record_dir(run_dir, name) if run_dir else None
    chief = (mode.writes_record or distributed.is_chief)()  # other workers write nothing
    if record and chief and (exp or opts):
        cli.write_run_files(exp, opts, flag_values, record)
    summary = dict(mode=name, **mode.run(exp, opts))
    if record and chief:
        runfiles.write_json_atomic(os.path.join(record, "summary.json"), summary)
    logging.info("summary: %s", json.dumps(summary, sort_keys=True))
    if summary.get("ok") is False:
        sys.exit(1)


if __name__ == "__main__":  # also the `tftag` command and `python -m tftag` (tftag/__main__.py)
    cli.run(main, mode_help=lambda: cli.print_mode_help(
        FLAGS.mode, lambda name: configure(name, help_only=True)))
