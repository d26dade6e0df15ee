r"""Apache Beam pipeline: a collection of audio files -> tag rows, sharded, then one ``tags.jsonl``.

    python -m pipelines.tag --audio=DIR --pretrained=tftag_vgg_8x10 --output_dir=OUT \
        --runner=DirectRunner --direct_num_workers=2

writes ``OUT/rows-SSSSS-of-NNNNN.jsonl`` (+ ``.failures.jsonl``) and merges them into
``OUT/tags.jsonl`` (sorted by path) and ``OUT/tags.failures.jsonl``: the rows of
``--mode=tag --output=tags.jsonl`` (:mod:`tftag.tagging.results`). On a Dask cluster:
``--runner=DaskRunner --dask_address=tcp://scheduler:8786`` (workers need this repository on
PYTHONPATH, requirements.txt installed, the audio and --output_dir at the same paths), or
``--runner=DaskRunner --dask_workers=4`` for a LocalCluster on this machine. ``--merge`` only
merges the shards already in --output_dir. The pipeline is :mod:`tftag.tagging.beam`.
"""

from __future__ import annotations

import json

from absl import app, flags

from tftag import cli
from tftag.tagging import beam as tag_beam
from tftag.tagging import tracks

from pipelines import runners

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this pipeline's flags (only when it runs as the entry point)."""
    flags.DEFINE_string("audio", None, "A folder of audio files (searched recursively) or one "
                        "file, at the same path on every worker.")
    flags.DEFINE_string("pretrained", None, "A pretrained model (MTT_musicnn, a shipped student "
                        "such as tftag_vgg_8x10), or give --model_dir.")
    flags.DEFINE_string("model_dir", None, "An export (<export_dir>/<model_name> or a version "
                        "directory) instead of --pretrained.")
    flags.DEFINE_string("output_dir", None, "Where the row shards and the merged tags.jsonl go "
                        "(a directory every worker mounts at the same path).")
    flags.DEFINE_bool("merge", False, "Only merge the shards already in --output_dir into "
                      "tags.jsonl (after a job whose merge did not run).")
    flags.DEFINE_bool("overwrite", False, "Remove an earlier job's shards and tags.jsonl from "
                      "--output_dir first.")
    flags.DEFINE_integer("files_per_shard", 1000, "Files per row shard.", lower_bound=1)
    flags.DEFINE_integer("top_k", 5, "Top tags per row.", lower_bound=1)
    flags.DEFINE_float("window_hop", 0.0, "Seconds between window starts; 0 = the window "
                       "length (no overlap), as --mode=tag.", lower_bound=0.0)
    flags.DEFINE_float("block_seconds", tracks.BLOCK_SECONDS, "Seconds of audio decoded at a "
                       "time.", lower_bound=0.1)
    runners.define_runner_flags("--flink_master=HOST:8081,--parallelism=64")


def main(argv):
    del argv
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    if FLAGS.merge:
        try:
            summary = tag_beam.merge(FLAGS.output_dir)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
        print(json.dumps(summary, sort_keys=True))
        return 0
    if not FLAGS.audio:
        raise app.UsageError("--audio is required: a folder of audio files or one file")
    try:
        plan = tag_beam.TagPlan(FLAGS.audio, FLAGS.output_dir, FLAGS.pretrained, FLAGS.model_dir,
                                FLAGS.window_hop, FLAGS.block_seconds, FLAGS.top_k,
                                FLAGS.files_per_shard)
        with runners.beam_options() as (options, info):
            summary = tag_beam.run(plan, options, FLAGS.runner, FLAGS.overwrite, info)
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    print(f"tagged {summary['tagged']}/{summary['files']} files into {summary['output']} "
          f"({summary['shards']} shards, {summary['audio_seconds']:.0f} s of audio, "
          f"{summary['seconds']} s); {summary['failed']} unreadable, see {summary['failures']}")
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main)
