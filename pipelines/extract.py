r"""Apache Beam pipeline: audio files -> mel-spectrograms of every resolution -> sharded TFRecords.

    python -m pipelines.extract --input=DIR_OR_CSV --output_dir=DATASET_DIR \
        --sr=12000,16000 --n_mels=128,96,48,32,24,16,8 --hop_factors=1,2,3,4,5,10 \
        --compressions=db,log --runner=DirectRunner --direct_num_workers=2

On a Dask cluster: ``--runner=DaskRunner --dask_address=tcp://scheduler:8786`` (workers need
this repository on PYTHONPATH and requirements.txt installed), or ``--runner=DaskRunner
--dask_workers=4`` for a LocalCluster of 4 worker processes on this machine.

The pipeline itself is :mod:`tftag.extraction.pipeline` (stages ListPendingClips -> DecodeAndExtract ->
GroupByShard -> WriteShards; dataset.json last). Rerunning the same command after a crash
resumes where it stopped.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from tftag import cli, datasets, experiment
from tftag.extraction import extract, extractor, pipeline
from tftag.storage import codecs

from pipelines import runners

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this pipeline's flags (only when it runs as the entry point)."""
    flags.DEFINE_string("catalog", "auto", f"Catalogue reader: auto or one of {', '.join(datasets.names())}; auto = "
                        "synthetic (has corpus.json), mtat (has annotations_final.csv), msd (has "
                        "train.tsv), else folder for a directory and csv for a file.")
    flags.DEFINE_bool("describe", False, "Also write the data card (datacard.json/.txt, "
                      "tag_frequencies.png) of the catalogue into --output_dir.")
    flags.DEFINE_string("output_dir", None, "The dataset directory to write (shards, dataset.json, "
                        "failures.jsonl).")
    cli.define_mel_flags()
    flags.DEFINE_string("mel_dtype", "float32", f"Storage codec of the base power mels: one of "
                        f"{', '.join(codecs.names())} (float16 halves the size, uint8 "
                        "quarters it; README 'Storage codecs and TFLite models' gives the error).")
    flags.DEFINE_integer("clips_per_shard", 256, "Target clips per TFRecord shard.", lower_bound=1)
    flags.DEFINE_float("min_duration", 1.0, "Clips shorter than this (seconds) are skipped and "
                       "recorded.", lower_bound=0.0)
    flags.DEFINE_float("silence_threshold", 1e-5, "Clips whose peak |sample| is below this are "
                       "skipped as silent and recorded.", lower_bound=0.0)
    flags.DEFINE_bool("overwrite", False, "Discard whatever extraction output is in --output_dir.")
    flags.DEFINE_bool("retry_failed", False, "On resume, retry clips recorded as failed.")
    flags.DEFINE_bool("keep_staging", False, "Keep the per-clip staging files after success.")
    flags.DEFINE_float("decode_timeout", 300.0, "Seconds one decode may take before it is recorded "
                       "as failed.", lower_bound=1.0)
    flags.DEFINE_integer("log_every", 25, "Log progress every N clips per worker.", lower_bound=1)
    cli.define_catalog_flags()
    cli.define_label_flags()
    runners.define_runner_flags("--project=P,--region=R,--temp_location=gs://B/tmp")


def data_config() -> experiment.DataConfig:
    """The data source of the flags (--catalog=auto resolved from --input)."""
    name = FLAGS.catalog
    if name == "auto":
        if not FLAGS.input:
            raise app.UsageError("--input is required: a folder of audio files or a catalogue CSV")
        name = datasets.detect(FLAGS.input)
    return cli.config(f"--catalog={name}", lambda: experiment.DataConfig(
        name, FLAGS.input, mel_dtype=FLAGS.mel_dtype, clips_per_shard=FLAGS.clips_per_shard,
        direct_num_workers=FLAGS.direct_num_workers, labels=FLAGS.labels,
        teacher_top_k=FLAGS.teacher_top_k, packages=tuple(FLAGS.packages),
        cache_dir=FLAGS.cache_dir, min_tag_count=FLAGS.min_tag_count,
        train_clip_hop=FLAGS.train_clip_hop),
        also_known={"catalog": ("auto",)})


def main(argv):
    del argv
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    configs = cli.mel_configs()
    data = data_config()
    catalog = extract.resolve_catalog(data, FLAGS.seed)  # as --mode=extract: the same split
    if FLAGS.describe:
        from tftag.storage import datacard

        print(datacard.format_card(datacard.write_card(catalog, FLAGS.output_dir)))
    plan = extractor.ExtractionPlan(
        output_dir=os.path.abspath(FLAGS.output_dir), configs=tuple(configs),
        tags=extract.plan_tags(catalog, FLAGS.labels), mel_dtype=FLAGS.mel_dtype,
        clips_per_shard=FLAGS.clips_per_shard, min_duration=FLAGS.min_duration,
        silence_threshold=FLAGS.silence_threshold, labels=FLAGS.labels,
        teacher_top_k=FLAGS.teacher_top_k, teacher_memo=FLAGS.teacher_memo,
    )
    try:
        state = extractor.prepare_output(plan, catalog, FLAGS.overwrite, FLAGS.retry_failed)
    except (FileExistsError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    if state == "complete":
        memo = extractor.remember_complete(plan)
        print(f"{FLAGS.output_dir}: already complete for these flags and input; nothing to do "
              "(--overwrite to redo)" + (f"; teacher memo: {memo}" if memo else ""))
        return 0
    with runners.beam_options() as (options, runner_info):
        try:
            summary = pipeline.run(plan, catalog, options, FLAGS.runner, FLAGS.decode_timeout,
                                   FLAGS.log_every, FLAGS.keep_staging, runner_info)
        except extractor.SharedStorageError as e:
            raise app.UsageError(str(e)) from None
    failures = os.path.join(FLAGS.output_dir, "failures.jsonl")
    print(f"extracted {summary['clips_written']}/{summary['clips_total']} clips into "
          f"{FLAGS.output_dir} ({summary['bases']} stored bases, {summary['views']} views, "
          f"{summary['clips_padded']} padded, {summary['seconds']} s); "
          f"{summary['clips_failed']} failed and {summary['catalog_skipped']} skipped by the "
          f"catalogue, see {failures}")
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main)
