"""What tftag's entry points share: resolution flags and short, exit-2 usage errors.

Only entry points (``tftag/main.py``, ``pipelines/*.py``) import this module; library modules
take dataclasses. :func:`run` replaces ``absl.app.run``: a bad flag value or a usage error prints
one line naming the flag, the value and the allowed values, plus one hint line, and exits 2 —
no page of flag help, no traceback (``--show_traceback`` shows it).
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Mapping, Sequence, TypeVar

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


def run(main: Callable[[list[str]], object], pass_through: bool = False) -> None:
    """``absl.app.run(main)`` with short errors: usage errors exit 2, data errors exit 1, a
    training stopped on a signal (:class:`tftag.errors.Stopped`) 128 + the signal's number.

    Args:
      main: the entry point's main(argv).
      pass_through: hand the arguments after ``--`` to ``main`` (argv[1:]) instead of
        rejecting every non-flag argument.
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

    app.run(wrapped, flags_parser=_parse)


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
                        "or one version directory.")
    flags.DEFINE_string("audio", None, "tag: an audio file or a folder (searched recursively); "
                        "ship: the files its speed is measured on (default: the held-out "
                        "packages' tracks in the debian cache).")
    flags.DEFINE_string("output", "tags.json", "tag: where to write all probabilities: .json or .csv.")
    flags.DEFINE_string("server", None, "tag: host:port of a TF Serving server to use instead of "
                        "loading --model_dir (which still provides tags and sample rate).")
    flags.DEFINE_enum("server_protocol", "grpc", ["grpc", "rest"], "tag: protocol of --server.")
    flags.DEFINE_integer("top_k", 5, "tag: tags printed per file.", lower_bound=1)
    flags.DEFINE_string("pretrained", None, "tag/export/describe: a pretrained model of "
                        "tftag.models.pretrained (" + ", ".join(tag.PRETRAINED) + ", or a shipped "
                        "student such as tftag_vgg_32x4: its own resolution, window and tags) "
                        "instead of --model_dir / --weights; describe: its model card "
                        "(all = the table of every one).")
    flags.DEFINE_string("models_dir", None, "Shipped models (<dir>/<name>/card.json + weights): "
                        "tag/export/describe register those of this folder too (as "
                        "$TFTAG_MODELS_DIR does); ship writes <dir>/<name>/ (default: the "
                        "package's tftag/models/weights).")
    flags.DEFINE_float("window_hop", 0.0, "tag: seconds between window starts (0 = the window "
                       "length: non-overlapping windows, as musicnn).", lower_bound=0.0)
    flags.DEFINE_string("taggram_dir", None, "tag: write one .npz + .csv taggram per file here.")
    flags.DEFINE_bool("plot", False, "tag: write a taggram PNG per file (into --taggram_dir, else "
                      "<output stem>_taggrams/).")
    flags.DEFINE_bool("embeddings", False, "tag: write <file>.embeddings.npz per file: windows "
                      "[W, d] (the input of the logits layer per window) and mean [d].")
    flags.DEFINE_float("block_seconds", 30.0, "tag: seconds of audio decoded at a time (bounds "
                       "memory on long files).", lower_bound=1.0)


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
    flags.DEFINE_enum("resample_by", "clip", ["clip", "track_group"], "report --runs_dir: what "
                      "one bootstrap draw resamples: a clip, or all clips of a track group at once.")
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


def define_how_low_flags() -> None:
    """The flags of ``--mode=how_low`` (:mod:`tftag.search.how_low`; it also reads the resolution
    flags, --models, --sweep_model, --epochs, --repeats, --latency_runs and the export flags)."""
    from tftag.search import how_low

    flags.DEFINE_list("widths", [], "how_low: model widths to search (default: the model's own, "
                      "--width or its --sweep_model width).")
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
