"""What tftag's entry points share: resolution flags and short, exit-2 usage errors.

Only entry points (``tftag/main.py``, ``pipelines/*.py``) import this module; library modules
take dataclasses. :func:`run` replaces ``absl.app.run``: a bad flag value or a usage error prints
one line naming the flag, the value and the allowed values, plus one hint line, and exits 2 —
no page of flag help, no traceback (``--show_traceback`` shows it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Mapping, Sequence, TypeVar

from absl import app, flags

from tftag import features
from tftag.storage import codecs
from tftag.errors import DataError, Stopped
from tftag.registry import UnknownNameError

T = TypeVar("T")

FLAGS = flags.FLAGS
HINT = "see --helpfull for every flag"
MAX_MESSAGE_LINES = 3

flags.DEFINE_bool("show_traceback", False, "On an error, show the Python traceback too.")


def _fail(message: str, code: int, hint: bool = True) -> None:
    lines = str(message).strip().splitlines() or ["unknown error"]
    if len(lines) > MAX_MESSAGE_LINES:
        lines = lines[:MAX_MESSAGE_LINES] + [f"... ({len(lines) - MAX_MESSAGE_LINES} more lines)"]
    print("error: " + "\n  ".join(lines), file=sys.stderr)
    if hint:
        print(HINT, file=sys.stderr)
    sys.exit(code)


def _parse(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _fail(str(e), 2)
    return []  # not reached


# Errors a user can cause with flags or inputs; anything else is a bug and keeps its traceback.
USAGE_ERRORS = (app.UsageError, ValueError, FileNotFoundError, FileExistsError,
                NotADirectoryError)


def run(main: Callable[[list[str]], object], pass_through: bool = False,
        mode_help: Callable[[], None] | None = None) -> None:
    """``absl.app.run(main)`` with short errors: usage errors exit 2, data errors exit 1, a
    training stopped on a signal (:class:`tftag.errors.Stopped`) 128 + the signal's number.

    Args:
      main: the entry point's main(argv).
      pass_through: hand the arguments after ``--`` to ``main`` (argv[1:]) instead of
        rejecting every non-flag argument.
      mode_help: prints ``--helpshort`` (the flags of the ``--mode`` given) after the flags
        are parsed; None leaves ``--helpshort`` to absl.
    """

    def wrapped(argv):
        if len(argv) > 1 and not pass_through:
            _fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)", 2)
        try:
            return main(argv)
        except Stopped as e:  # checkpointed: not an error, no help hint
            print(f"stopped: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
        except DataError as e:
            if FLAGS.show_traceback:
                raise
            _fail(str(e), 1, hint=False)  # the message says the fix
        except USAGE_ERRORS as e:
            if FLAGS.show_traceback:
                raise
            _fail(str(e), 2)

    def parse(argv: list[str]) -> list[str]:
        if mode_help is not None and "--helpshort" in argv:  # the mode's flags, not absl's list
            _parse([a for a in argv if a != "--helpshort"])
            mode_help()
            sys.exit(0)
        return _parse(argv)

    app.run(wrapped, flags_parser=parse)


def define_mel_flags(duration_name: str = "duration") -> None:
    """Defines --sr, --n_mels, --hop_factors, --compressions, --resolutions and the crop flag."""
    flags.DEFINE_list("sr", ["12000", "16000"], "Sample rates in Hz (paper: 12000,16000; any "
                      ">= 8000).")
    flags.DEFINE_list("n_mels", [str(m) for m in features.PAPER_N_MELS],
                      "Mel band counts (paper: 128,96,48,32,24,16,8; any 4..256).")
    flags.DEFINE_list("hop_factors", [str(k) for k in features.PAPER_HOP_FACTORS],
                      "Hop factors k (hop 256*k) (paper: 1,2,3,4,5,10). Only hop 1 is stored; "
                      "every k is derived on read.")
    flags.DEFINE_list("compressions", list(features.PAPER_COMPRESSIONS),
                      f"Compressions: any of {', '.join(features.COMPRESSIONS)}. Derived on read.")
    flags.DEFINE_float(duration_name, features.DEFAULT_DURATION, "Centred crop in seconds "
                       "(zero-padded if shorter).")
    flags.DEFINE_list("resolutions", [], "Explicit resolutions by name (e.g. "
                      "sr16000-mel96-hop1-log,sr16000-mel32-hop4-log) instead of the grid of "
                      "--sr × --n_mels × --hop_factors × --compressions.")


def flagfile_text() -> str:
    """The flags of tftag's own modules as used, one per line: a valid ``--flagfile``.

    (Flags other libraries define once loaded, such as absl's testing flags, are left out: a
    later run that reads the file back may not load those libraries before parsing.)
    """
    lines = []
    for module, module_flags in sorted(FLAGS.flags_by_module_dict().items()):
        if module.startswith(("tftag", "pipelines")) or module.endswith(".py"):  # .py: the script
            for flag in sorted(module_flags, key=lambda f: f.name):
                text = flag.serialize()
                if text:
                    lines.append(text)
    return "\n".join(lines) + "\n"


def define_catalog_flags() -> None:
    """The catalogue flags both extraction entry points take (beside their own ``--catalog``):
    --input, --seed, --min_tag_count, --packages, --cache_dir, --train_clip_hop
    (:func:`tftag.extraction.extract.resolve_catalog` reads them from a ``DataConfig``)."""
    flags.DEFINE_string("input", None, "Catalogue input: a folder of audio files (searched "
                        "recursively, unlabelled), a CSV with path,split,tags, a rendered "
                        "built-in corpus, an MTAT directory or an MSD directory (see --catalog).")
    flags.DEFINE_integer("seed", 0, "Seed of the built-in corpus and of the debian catalogue's "
                         "split; tftag.main: also of weights, shuffling and patches.")
    flags.DEFINE_integer("min_tag_count", 1, "csv catalogue: keep tags with at least this many "
                         "training clips.", lower_bound=1)
    flags.DEFINE_list("packages", [], "--catalog=debian: Debian packages (default: a ~210 MB "
                      "subset; tftag.datasets.debian.ALL_PACKAGES lists the 17 of the study).")
    flags.DEFINE_string("cache_dir", None, "--catalog=debian: downloads and unpacked packages "
                        "(default ~/.cache/tftag/debian).")
    flags.DEFINE_float("train_clip_hop", None, "--catalog=debian: also cut 30-s training crops "
                       "every this many seconds between the non-overlapping clips (e.g. 15); "
                       "cross-validation trains on a fold's crops, never validates or tests on "
                       "them. Default: none.")


def define_label_flags() -> None:
    """Defines --labels and --teacher_top_k (tftag.extraction.teacher)."""
    flags.DEFINE_string("labels", "catalog", "catalog (the catalogue's tags) or "
                        "teacher:MTT_musicnn / teacher:MTT_vgg (top-k hard and soft labels from a "
                        "pretrained model; see tftag.extraction.teacher).")
    flags.DEFINE_integer("teacher_top_k", 3, "Teacher labels: hard labels per clip.", lower_bound=1)
    flags.DEFINE_string("teacher_memo", None, "Teacher labels: a memo file (.npz) of the "
                        "teacher's probabilities by clip content, read before the teacher runs "
                        "and added to after (a re-extraction of the same music skips the "
                        "teacher; on a complete float32 dataset it is read off the stored mels).")


def define_export_flags() -> None:
    """The export flags of train, sweep and export (``--tflite`` also names evaluate's file)."""
    from tftag.delivery import tflite

    flags.DEFINE_bool("export", True, "train/sweep: export the (best) trained model at the end.")
    flags.DEFINE_string("export_dir", "export", "Root of exports: "
                        "<export_dir>/<model_name>/<version>.")
    flags.DEFINE_bool("export_per_resolution", False, "sweep: export the best run of every (model, "
                      "resolution) row, not only the best row.")
    flags.DEFINE_integer("export_version", 0, "Version to write (0 = the next free integer).",
                         lower_bound=0)
    flags.DEFINE_list("tflite", [], f"export/train/sweep: also write TFLite files of these "
                      f"precisions ({', '.join(tflite.PRECISIONS)}) into <version>/tflite/; "
                      "evaluate: one .tflite file to evaluate instead of --weights.")
    flags.DEFINE_integer("representative_clips", 100, "--tflite=int8: clips of the training "
                         "split of --dataset_dir to calibrate on.", lower_bound=1)


def define_tag_flags() -> None:
    """The flags of ``--mode=tag`` (and ``--pretrained`` of ``--mode=export``)."""
    from tftag.tagging import tag

    flags.DEFINE_string("model_dir", None, "tag: an export: <export_dir>/<model_name> (latest version) "
                        "or one version directory; similar: must be --index's model (default: it).")
    flags.DEFINE_string("audio", None, "tag: an audio file or a folder (searched recursively); "
                        "ship: the files its speed is measured on (default: the held-out "
                        "packages' tracks in the debian cache).")
    flags.DEFINE_string("output", "tags.json", "tag: where to write the probabilities: .jsonl or "
                        ".csv (a row appended per file as it is tagged: a crash loses only the "
                        "files in flight, and rerunning the same command resumes, skipping the "
                        "files whose relative path, size and mtime match a row; rows in "
                        "completion order) or .json (one document with taggrams, written at the "
                        "end: small folders). Unreadable files go to <stem>.failures.jsonl.")
    flags.DEFINE_string("server", None, "tag: host:port of a TF Serving server to use instead of "
                        "loading --model_dir (which still provides tags and sample rate).")
    flags.DEFINE_enum("server_protocol", "grpc", ["grpc", "rest"], "tag: protocol of --server.")
    flags.DEFINE_integer("top_k", 5, "tag: tags printed per file; similar: neighbours returned.",
                         lower_bound=1)
    flags.DEFINE_string("pretrained", None, "tag/export/describe: a pretrained model of "
                        "tftag.models.pretrained (" + ", ".join(tag.PRETRAINED) + ", or a shipped "
                        "student such as tftag_vgg_32x4: its own resolution, window and tags) "
                        "instead of --model_dir / --weights; describe: its model card "
                        "(all = the table of every one); similar: must be --index's model "
                        "(default: it).")
    flags.DEFINE_string("models_dir", None, "Shipped models (<dir>/<name>/card.json + weights): "
                        "tag/export/describe register those of this folder too (as "
                        "$TFTAG_MODELS_DIR does); ship writes <dir>/<name>/ (default: the "
                        "package's tftag/models/weights).")
    flags.DEFINE_float("window_hop", 0.0, "tag: seconds between window starts (0 = the window "
                       "length: non-overlapping windows, as musicnn).", lower_bound=0.0)
    flags.DEFINE_string("taggram_dir", None, "tag: write one .npz + .csv taggram per file here.")
    flags.DEFINE_bool("plot", False, "tag: write a taggram PNG per file (into --taggram_dir, else "
                      "<output stem>_taggrams/).")
    flags.DEFINE_bool("embeddings", False, "tag: also write each file's embedding (the input of "
                      "the logits layer, the mean over its windows). With a .jsonl/.csv --output "
                      "(collections): sharded arrays + an index in <output stem>.embeddings/ "
                      "(shard-NNNNN.npy, float32 [rows, d], a new shard every 4096 files; "
                      "index.jsonl: path, rel_path, size, mtime_ns, shard, row; meta.json: the "
                      "model), resumed with the rows; --mode=similar searches it. With a .json "
                      "--output (small folders): <file>.embeddings.npz per file: windows [W, d] "
                      "and mean [d].")
    flags.DEFINE_float("block_seconds", 30.0, "tag: seconds of audio decoded at a time (bounds "
                       "memory on long files).", lower_bound=1.0)
    flags.DEFINE_integer("workers", 0, "tag: decoding processes feeding the model (0 = one per "
                         "core; 1 = one decoding thread, files in folder order).", lower_bound=0)
    flags.DEFINE_bool("retry_failed", False, "tag: on a rerun, tag again the files of "
                      "<stem>.failures.jsonl (else unchanged ones are skipped); .jsonl/.csv.")


def define_similar_flags() -> None:
    """The flags of ``--mode=similar`` (it also reads --top_k, --pretrained and --model_dir)."""
    flags.DEFINE_string("query", None, "similar: the audio file whose nearest tracks are wanted.")
    flags.DEFINE_string("index", None, "similar: an embedding store, the <output stem>.embeddings "
                        "folder of --mode=tag --embeddings with a .jsonl/.csv --output; the query "
                        "is embedded with its model (--pretrained/--model_dir, if given, must be "
                        "it).")
    flags.DEFINE_integer("exact_max_rows", 100_000, "similar: exact cosine search (numpy, shard "
                         "by shard) up to this many tracks; above, an HNSW graph (faiss-cpu) "
                         "built once and cached in --index (extended with tracks added since, rebuilt when one "
                         "was tagged again).",
                         lower_bound=0)
    flags.DEFINE_string("similar_output", "similar.json", "similar: the JSON file of the answer "
                        "(query, model, method, the neighbours: rank, path, similarity).")


def define_report_flags() -> None:
    """``--mode=report``: a study's report rebuilt from its committed files."""
    flags.DEFINE_string("runs_dir", None, "report: a cross-validated study's per-run files "
                        "(<model>-w<width>-<resolution>-fold<k>-seed<s>/result.json and "
                        "test_predictions.npz), e.g. benchmarks/results/real_music/runs; or "
                        "--run_dir: a finished fixed-budget sweep (<run_dir>/runs/*/result.json).")
    flags.DEFINE_string("name", None, "report: the study's name; writes <out_root>/<name>/.")
    flags.DEFINE_string("out_root", os.path.join("benchmarks", "results"),
                        "report: root of the study reports.")
    flags.DEFINE_integer("n_resamples", 1000, "report --runs_dir: bootstrap resamples.",
                         lower_bound=100)
    flags.DEFINE_integer("bootstrap_seed", 0, "report --runs_dir: seed of the bootstrap resamples.")
    flags.DEFINE_enum("resample_by", "track_group", ["clip", "track_group"], "report --runs_dir: "
                      "what one bootstrap draw resamples for the primary figures: all clips of a "
                      "track group at once (the default: a track's clips are not independent), or "
                      "a clip; every comparison carries clip- and package-level figures beside.")
    flags.DEFINE_float("power", 0.8, "report --runs_dir: power of the minimum detectable effect.")
    from tftag.study import analysis

    flags.DEFINE_integer("frequent_min_positives", analysis.FREQUENT_TAG_MIN_POSITIVES, "report --runs_dir: the sensitivity view "
                         "averages the tags with at least this many positives among the clips "
                         "compared (report.json 'frequent_tags'); 1 turns it off.", lower_bound=1)
    flags.DEFINE_multi_string("compare", [], "report: NAME=DIR of another study: with --run_dir, "
                              "a fixed-budget sweep's run directory, drawn beside it; with "
                              "--runs_dir, another cross-validated study's per-run files, each "
                              "configuration both ran compared paired clip by clip.")
    flags.DEFINE_float("alpha", 0.05, "report: significance level of 'no significant loss'.")


def named_dirs(flag: str, items) -> list[tuple[str, str]]:
    """``NAME=DIR`` flag values as (name, dir) pairs; a UsageError naming the flag otherwise."""
    out = []
    for item in items:
        label, eq, path = item.partition("=")
        if not (eq and label and path):
            raise app.UsageError(f"--{flag}={item!r}: expected NAME=DIR")
        out.append((label, path))
    return out


# --mode=how_low without a flagfile: a budget a laptop runs (configs/how_low_quick.flags' widths,
# epochs, hops and compression; ~16 candidates on a small dataset). The paper's full-size
# model is one flag away (--widths=1).
HOW_LOW_DEFAULTS = (("widths", ["0.0625", "0.125"]), ("epochs", 9), ("hop_factors",
                    ["1", "2", "4", "10"]), ("compressions", ["log"]), ("repeats", 2))


def how_low_chief() -> bool:
    """Whether this how_low process writes the run's record (keras-tuner workers run trials and
    write none)."""
    from tftag.search import tuner

    return tuner.role() != "worker"


def apply_mode_defaults(defaults, argv: Sequence[str]) -> None:
    """Without a ``--flagfile`` in ``argv``, gives each flag of ``defaults`` ((name, value)
    pairs) that value unless the command line set it (a flagfile names its own budget)."""
    if any(a.startswith(("--flagfile", "-flagfile")) for a in argv):
        return
    for name, value in defaults:
        if not FLAGS[name].present:
            FLAGS[name].value = value


def define_how_low_flags() -> None:
    """The flags of ``--mode=how_low`` (:mod:`tftag.search.how_low`; it also reads the resolution
    flags, --models, --sweep_model, --epochs, --repeats, --latency_runs and the export flags)."""
    from tftag.search import how_low

    flags.DEFINE_list("widths", [], "how_low: model widths to search (empty: the model's own, "
                      "--width or its --sweep_model width; how_low's default without the flag: "
                      "0.0625,0.125, and --epochs=9 --hop_factors=1,2,4,10 --compressions=log "
                      "--repeats=2: a laptop's budget).")
    flags.DEFINE_list("mel_dtypes", [], "how_low: storage codecs to search (default: the "
                      "dataset's own; any other is a transcoded copy of --dataset_dir in "
                      "<run_dir>/datasets/<codec>). " + registry_help(codecs.REGISTRY, "Each"))
    costs = [how_low.COSTS.get(n) for n in how_low.COSTS.names()]
    oracles = [how_low.ORACLES.get(n) for n in how_low.ORACLES.names()]
    flags.DEFINE_enum("cost", "gmacs", [c.name for c in costs], "how_low: the front's cost: "
                      + "; ".join(f"{c.name} = {c.note}" for c in costs) + ".")
    flags.DEFINE_float("max_drop", 1.0, "how_low: the answer is the cheapest front point within "
                       "this many ROC-AUC points (percent) of the best found.")
    flags.DEFINE_enum("oracle", "pareto", [o.name for o in oracles], "how_low: the search: "
                      + "; ".join(f"{o.name} = {o.note}" for o in oracles)
                      + ". Its top fidelity is --epochs.")
    flags.DEFINE_integer("hyperband_factor", 3, "how_low: successive halving keeps 1/factor of "
                         "the candidates of each rung, which train factor times longer.")
    flags.DEFINE_integer("hyperband_iterations", 1, "how_low --oracle=hyperband: Hyperband "
                         "iterations (each runs every bracket).")


def how_low_search():
    """The :class:`tftag.search.how_low.SearchConfig` of the flags; a bad value is a UsageError naming
    its flag and the allowed values."""
    from tftag.search import how_low

    try:
        widths = tuple(float(w) for w in FLAGS.widths)
    except ValueError:
        raise app.UsageError(f"--widths must be comma-separated numbers > 0, got "
                             f"{','.join(FLAGS.widths)!r}") from None
    return config("--max_drop/--hyperband_factor/--hyperband_iterations/--widths/--mel_dtypes"
                  "/--latency_runs", lambda: how_low.SearchConfig(
                      FLAGS.cost, FLAGS.max_drop, FLAGS.oracle, FLAGS.hyperband_factor,
                      FLAGS.hyperband_iterations, widths, tuple(FLAGS.mel_dtypes),
                      FLAGS.latency_runs))


def _ints(name: str) -> list[int]:
    try:
        return [int(v) for v in getattr(FLAGS, name)]
    except ValueError:
        raise app.UsageError(f"--{name} must be comma-separated integers, got "
                             f"{','.join(getattr(FLAGS, name))!r}") from None


def mel_configs(duration_name: str = "duration") -> list[features.MelConfig]:
    """The MelConfig grid of the flags, with errors naming the flag and the allowed values."""
    duration = getattr(FLAGS, duration_name)
    if FLAGS.resolutions:
        try:
            return [features.MelConfig.from_name(n, duration) for n in FLAGS.resolutions]
        except (ValueError, TypeError) as e:
            raise app.UsageError(f"--resolutions: {e}") from None
    values = {"sr": _ints("sr"), "n_mels": _ints("n_mels"), "hop_factors": _ints("hop_factors"),
              "compressions": list(FLAGS.compressions)}
    fields = {"sr": "sr", "n_mels": "n_mels", "hop_factors": "hop_factor",
              "compressions": "compression"}
    for name, vals in values.items():
        if not vals:
            raise app.UsageError(f"--{name} is empty")
        for v in vals:
            try:
                features.MelConfig(**{"sr": 16000, "n_mels": 96, "hop_factor": 1,
                                      "compression": "log", "duration": duration, fields[name]: v})
            except (ValueError, TypeError) as e:
                raise app.UsageError(f"--{name}: {e}") from None
    return features.grid(values["sr"], values["n_mels"], values["hop_factors"],
                         values["compressions"], duration)


def registry_help(registry, what: str) -> str:
    """Flag help listing a registry's names, e.g. "Model: one of musicnn, musicnn_vgg, vgg."."""
    return f"{what}: one of {', '.join(registry.names())}."


# The flag of each config field that holds a registry name (the registry checks the config).
FLAG_OF_FIELD = {"catalog": "catalog", "mel_dtype": "mel_dtype", "model": "model",
                 "sweep_models": "models"}


def config(flag_names: str, make: Callable[[], T], hint: str = "",
           also_known: Mapping[str, Sequence[str]] | None = None) -> T:
    """``make()`` (a config built from flags); its errors as one-line UsageErrors.

    An unknown registry name names its flag and the known names (``--model='resnet'; known:
    musicnn, ...``, plus the entry point's own ``also_known`` values of that flag); any other
    ValueError or TypeError is prefixed with ``flag_names`` and followed by ``hint``.
    """
    try:
        return make()
    except UnknownNameError as e:
        flag = FLAG_OF_FIELD.get(e.field or "", e.field or e.kind)
        known = ", ".join([*(also_known or {}).get(flag, ()), *e.known])
        if flag in FLAGS and isinstance(FLAGS[flag].value, list):
            raise app.UsageError(f"--{flag}: unknown {list(e.names)}; known: {known}") from None
        raise app.UsageError(f"--{flag}={e.names[0]!r}; known: {known}") from None
    except (ValueError, TypeError) as e:
        raise app.UsageError(f"{flag_names}: {e}{' ' + hint if hint else ''}") from None


def define_main_flags() -> None:
    """Every flag of ``tftag.main`` but ``--mode`` (defined beside the mode table); each
    flag's help names the modes that read it."""
    from tftag import datasets

    flags.DEFINE_bool("version", False, "Print tftag's version and exit.")
    flags.DEFINE_string("run_dir", None, "Run directory (created): flags, configs, TensorBoard logs, "
                        "summary.json, and the dataset of --mode=extract.")
    flags.DEFINE_string("catalog", "synthetic", registry_help(datasets.REGISTRY, "Catalogue") +
                        " synthetic without --input renders the built-in corpus into <run_dir>/corpus.")
    flags.DEFINE_integer("num_clips", 48, "Built-in corpus: clips to render.", lower_bound=1)
    flags.DEFINE_float("clip_seconds", 30.0, "Built-in corpus: seconds per clip.", lower_bound=0.5)
    flags.DEFINE_integer("synth_sr", 16000, "Built-in corpus: sample rate of the WAVs.",
                         lower_bound=8000)
    define_catalog_flags()
    define_mel_flags()
    flags.DEFINE_string("mel_dtype", "float32", registry_help(codecs.REGISTRY, "Storage codec "
                        "of the base mels"))
    flags.DEFINE_integer("clips_per_shard", 256, "Clips per TFRecord shard.", lower_bound=1)
    define_label_flags()
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
    define_train_flags()
    define_how_low_flags()
    define_export_flags()
    define_tag_flags()
    define_similar_flags()
    define_report_flags()
    define_model_flags()


def define_train_flags() -> None:
    """The training flags of train, sweep, tune and how_low (and evaluate's, tune's own)."""
    from tftag import experiment

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


def define_model_flags() -> None:
    """The model's flags (--width, --preset, --dropout) and profile's."""
    flags.DEFINE_float("width", 1.0, "Filter-count multiplier (1 = the paper's full-size model).")
    flags.DEFINE_string("preset", "paper", "Architecture preset (musicnn: paper, musicnn_mtt).")
    flags.DEFINE_float("dropout", -1.0, "Dropout rate; -1 = the architecture's own.")
    flags.DEFINE_integer("latency_runs", 5, "profile: timed runs per batch size (median); 0 skips "
                         "latency. how_low --cost=latency: timed runs per candidate.", lower_bound=0)
    flags.DEFINE_list("latency_batches", ["1", "32"], "profile: batch sizes to time.")
    flags.DEFINE_bool("profile_trace", False, "profile: also trace a few training steps of the first "
                      "resolution into <run_dir>/tb/trace (needs --run_dir).")
    flags.DEFINE_integer("trace_steps", 3, "profile: training steps in the trace.", lower_bound=1)


def build_experiment(mode: str | None = None) -> Any:
    """The Experiment of the flags (for ``mode``, default ``--mode``); a bad value is a
    UsageError naming its flag."""
    from tftag import experiment, models
    from tftag.storage import folds

    mode = mode or FLAGS.mode
    mels = tuple(mel_configs())  # checked first: no model registry (Keras) needed
    model = config("--width/--preset/--dropout/--patch_seconds", lambda: models.ModelConfig(
        FLAGS.model, width=FLAGS.width, preset=FLAGS.preset,
        dropout=None if FLAGS.dropout < 0 else FLAGS.dropout,
        patch_seconds=FLAGS.patch_seconds or None))
    fold_config = None
    if FLAGS.folds is not None or FLAGS.fold is not None:  # cross-validation (tftag.storage.folds)
        fold_config = config("--folds/--fold", lambda: folds.FoldConfig(
            **({"folds": FLAGS.folds} if FLAGS.folds is not None else {}), fold=FLAGS.fold,
            seed=FLAGS.fold_seed))
    heldout = None
    if FLAGS.heldout_packages:  # a final student: whole packages held out (tftag.storage.folds)
        heldout = config("--heldout_packages", lambda: folds.HeldoutConfig(
            tuple(FLAGS.heldout_packages), seed=FLAGS.fold_seed))
    # Cross-validated runs and final students train to convergence: the lowest validation loss,
    # patience in passes.
    stopping = ({"monitor": "valid_loss", "patience_unit": "passes"}
                if fold_config or heldout else {})
    train = config("--batch_size/--epochs/--learning_rate/--patience/--lr_factor", lambda: (
        experiment.TrainConfig(
            batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, learning_rate=FLAGS.learning_rate,
            patience=FLAGS.patience, lr_reductions=FLAGS.lr_reductions,
            lr_factor=FLAGS.lr_factor, seed=FLAGS.seed,
            steps_per_epoch=FLAGS.steps_per_epoch or None,
            deterministic=FLAGS.deterministic, strategy=FLAGS.strategy, loss=FLAGS.loss,
            valid_patches=FLAGS.valid_patches or None, **stopping)))
    data = config(f"--catalog={FLAGS.catalog}/--labels", lambda: experiment.DataConfig(
        FLAGS.catalog, FLAGS.input, FLAGS.dataset_dir, FLAGS.num_clips, FLAGS.clip_seconds,
        FLAGS.synth_sr, FLAGS.mel_dtype, FLAGS.clips_per_shard, FLAGS.direct_num_workers,
        FLAGS.labels, FLAGS.teacher_top_k, tuple(FLAGS.packages), FLAGS.cache_dir,
        FLAGS.min_tag_count, FLAGS.teacher_memo, FLAGS.train_clip_hop))
    tflite = () if mode == "evaluate" else tuple(FLAGS.tflite)  # evaluate: --tflite is a file
    export = config(f"--tflite={','.join(FLAGS.tflite)}", lambda: experiment.ExportConfig(
        FLAGS.export, FLAGS.export_dir, FLAGS.export_version or None, FLAGS.export_per_resolution,
        tflite, FLAGS.representative_clips), hint="(a .tflite file only with --mode=evaluate)")
    overrides = tuple(config("--sweep_model", lambda t=text: experiment.SweepModel.parse(t))
                      for text in FLAGS.sweep_model)
    return config("--resolutions/--models/--repeats/--sweep_model/--folds", lambda: (
        experiment.Experiment(mels, model, train, data, export, FLAGS.run_dir,
                              tuple(FLAGS.models), FLAGS.repeats, overrides, fold_config,
                              FLAGS.results_dir, heldout)))


class FlagReads:
    """``FLAGS`` that remembers the names of the flags read through it (:func:`reading_flags`)."""

    def __init__(self, values: flags.FlagValues):
        self._values = values
        self.names: set[str] = set()

    def __getattr__(self, name: str):
        value = getattr(self._values, name)
        self.names.add(name)
        return value

    def __getitem__(self, name: str):
        self.names.add(name)
        return self._values[name]

    def __contains__(self, name: str) -> bool:
        return name in self._values


@contextlib.contextmanager
def reading_flags():
    """While open, the flags this module's builders read are collected: yields a
    :class:`FlagReads` whose ``names`` the run's record lists (``configs.json`` "flags")."""
    global FLAGS
    reads = FlagReads(FLAGS)
    FLAGS = reads
    try:
        yield reads
    finally:
        FLAGS = reads._values


def flag_record(names) -> dict[str, object]:
    """``{name: value}`` of the named flags (JSON-able: lists stay lists)."""
    return {name: FLAGS[name].value for name in sorted(names)}


# The options of the modes that take more than the Experiment: one frozen dataclass per mode,
# its fields named as the flags they come from (the run's record lists them under "options").

@dataclasses.dataclass(frozen=True)
class EvaluateOptions:
    """``--mode=evaluate``: the weights (or a .tflite file) and the split."""
    weights: str | None
    split: str
    tflite: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """``--mode=export``: the weights, or a pretrained model instead."""
    weights: str | None
    pretrained: str | None


@dataclasses.dataclass(frozen=True)
class TuneOptions:
    """``--mode=tune``."""
    max_trials: int


@dataclasses.dataclass(frozen=True)
class ProfileOptions:
    """``--mode=profile``: latency runs and batches, and the optional training trace."""
    latency_runs: int
    latency_batches: tuple[int, ...]
    profile_trace: bool
    trace_steps: int


@dataclasses.dataclass(frozen=True)
class TagOptions:
    """``--mode=tag``: the model (pretrained, export or server), the audio, the outputs, the
    decoding workers and whether a rerun retries the unreadable files."""
    model_dir: str | None
    audio: str | None
    output: str
    server: str | None
    server_protocol: str
    top_k: int
    pretrained: str | None
    window_hop: float
    taggram_dir: str | None
    plot: bool
    embeddings: bool
    block_seconds: float
    workers: int
    retry_failed: bool


@dataclasses.dataclass(frozen=True)
class SimilarOptions:
    """``--mode=similar``: the query file, the embedding store, how many neighbours, the model
    check, the exact/approximate threshold and the answer's file."""
    query: str | None
    index: str | None
    top_k: int
    pretrained: str | None
    model_dir: str | None
    exact_max_rows: int
    similar_output: str


@dataclasses.dataclass(frozen=True)
class DescribeOptions:
    """``--mode=describe``: a pretrained model's card instead of a catalogue's data card."""
    pretrained: str | None
    json: bool


@dataclasses.dataclass(frozen=True)
class ShipOptions:
    """``--mode=ship``: the finished run, where it ships to and under which name."""
    run_dir: str
    models_dir: str | None
    ship_name: str | None
    audio: str | None
    overwrite: bool


@dataclasses.dataclass(frozen=True)
class VerifyOptions:
    """``--mode=verify``."""
    dataset_dir: str | None


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """``--mode=report``: the study (``runs_dir``, or a fixed-budget sweep's ``run_dir``), where
    its report goes and the statistical settings (:class:`tftag.study.report.Options`)."""
    name: str | None
    out_root: str
    runs_dir: str | None
    run_dir: str | None
    compare: tuple[tuple[str, str], ...]
    n_resamples: int
    bootstrap_seed: int
    resample_by: str
    teacher_top_k: int
    alpha: float
    power: float
    frequent_min_positives: int
    max_drop: float


def _int_list(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in getattr(FLAGS, name))
    except ValueError:
        raise app.UsageError(f"--{name} must be comma-separated integers, got "
                             f"{','.join(getattr(FLAGS, name))!r}") from None


# How a field is read from its flag when not as it is (lists become tuples).
_FIELD_READERS: dict[str, Callable[[], object]] = {
    "latency_batches": lambda: _int_list("latency_batches"),
    "compare": lambda: tuple(named_dirs("compare", FLAGS.compare)),
}


def options(cls: type[T]) -> T:
    """The ``cls`` options of the flags: each field from the flag of its name."""
    values = {}
    for field in dataclasses.fields(cls):
        read = _FIELD_READERS.get(field.name)
        value = read() if read else getattr(FLAGS, field.name)
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def print_mode_help(mode: str, configure: Callable[[str], object]) -> None:
    """``--mode=M --helpshort``: the flags ``configure(M)`` reads with the flags given (a usage
    error on the way still lists those read before it), one block each."""
    with reading_flags() as reads:
        try:
            configure(mode)
        except (app.UsageError, ValueError):
            pass
    values = reads._values
    print(f"--mode={mode} reads these flags (with the flags given; --helpfull lists all):")
    for name in sorted(reads.names - {"mode"}):
        flag = values[name]
        print(f"  --{name}: {flag.help}\n    (default: {flag.default_as_str or 'none'})")


def write_run_files(exp, opts, flag_values: dict, directory: str) -> None:
    """The run's record (:mod:`tftag.runs.runrecord`) into ``directory``: flags.txt,
    configs.json (the Experiment, the mode, its options and every flag it read: ``flag_values``)
    and the flags in TensorBoard."""
    from tftag import experiment
    from tftag.runs import runfiles

    runfiles.write_text_atomic(os.path.join(directory, "flags.txt"), flagfile_text())
    configs = dict(exp.to_dict() if exp else {}, mode=flag_values["mode"], flags=flag_values,
                   options=dataclasses.asdict(opts) if dataclasses.is_dataclass(opts) else {})
    runfiles.write_json_atomic(os.path.join(directory, experiment.CONFIGS_JSON), configs)
    runfiles.tensorboard_notes(os.path.join(directory, "tb", "config"), texts={
        "flags": flagfile_text(), "experiment": json.dumps(configs, indent=2)})


def check_pretrained(mode: str) -> None:
    """Registers ``--models_dir``'s shipped models (not for ship, which writes there) and checks
    ``--pretrained`` against the pretrained registry (a UsageError listing the known names)."""
    from tftag.models import pretrained

    if FLAGS.models_dir and mode != "ship":
        config("--models_dir", lambda: pretrained.add_models_dir(FLAGS.models_dir))
    if FLAGS.pretrained and not (mode == "describe" and FLAGS.pretrained == "all"):
        config("--pretrained", lambda: pretrained.REGISTRY.check(FLAGS.pretrained, "pretrained"))
