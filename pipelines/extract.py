r"""Apache Beam pipeline: audio files -> mel-spectrograms of every resolution -> sharded TFRecords.

    python -m pipelines.extract --input=DIR_OR_CSV --output_dir=DATASET_DIR \
        --sr=12000,16000 --n_mels=128,96,48,32,24,16,8 --hop_factors=1,2,3,4,5,10 \
        --compressions=db,log --runner=DirectRunner --direct_num_workers=2

Stages: ListPendingClips -> DecodeAndExtract (Essentia in an isolated child process; bad files
are recorded, never fatal) -> GroupByShard -> WriteShards; then dataset.json is written last.
Rerunning the same command after a crash resumes where it stopped.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from absl import app, flags, logging

from tftag import _essentia, datasets, extraction
from tftag.datasets import Catalog, Clip

import apache_beam as beam  # noqa: E402  (after tftag.features: see tftag/_essentia.py)
from apache_beam.metrics.metric import Metrics, MetricsFilter  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from tftag import data  # noqa: E402

from pipelines import mel_flags  # noqa: E402

NAMESPACE = "tftag.extract"
CATALOGS = ("auto", "synthetic", "mtat", "msd", "csv", "folder")
RUNNING_MODES = ("auto", "in_memory", "multi_threading", "multi_processing")

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this pipeline's flags (only when it runs as the entry point)."""
    flags.DEFINE_string("input", None, "What to extract: a folder of audio files (searched "
                        "recursively, unlabelled), a CSV with path,split,tags, a rendered built-in corpus, "
                        "an MTAT directory or an MSD directory (see --catalog).")
    flags.DEFINE_string("catalog", "auto", f"Catalogue reader: one of {', '.join(CATALOGS)}; auto = "
                        "synthetic (has corpus.json), mtat (has annotations_final.csv), msd (has "
                        "train.tsv), else folder for a directory and csv for a file.")
    flags.DEFINE_bool("describe", False, "Also write the data card (datacard.json/.txt, "
                      "tag_frequencies.png) of the catalogue into --output_dir.")
    flags.DEFINE_string("output_dir", None, "The dataset directory to write (shards, dataset.json, "
                        "failures.jsonl).")
    mel_flags.define_mel_flags()
    flags.DEFINE_enum("mel_dtype", "float32", list(data.MEL_DTYPES), "Storage dtype of the base power "
                      "mels (float16 halves the size; see README for its error).")
    flags.DEFINE_integer("clips_per_shard", 256, "Target clips per TFRecord shard.", lower_bound=1)
    flags.DEFINE_float("min_duration", 1.0, "Clips shorter than this (seconds) are skipped and "
                       "recorded.", lower_bound=0.0)
    flags.DEFINE_float("silence_threshold", 1e-5, "Clips whose peak |sample| is below this are "
                       "skipped as silent and recorded.", lower_bound=0.0)
    flags.DEFINE_integer("min_tag_count", 1, "csv catalogue: keep tags with at least this many "
                         "training clips.", lower_bound=1)
    flags.DEFINE_bool("overwrite", False, "Discard whatever extraction output is in --output_dir.")
    flags.DEFINE_bool("retry_failed", False, "On resume, retry clips recorded as failed.")
    flags.DEFINE_bool("keep_staging", False, "Keep the per-clip staging files after success.")
    flags.DEFINE_float("decode_timeout", 300.0, "Seconds one decode may take before it is recorded "
                       "as failed.", lower_bound=1.0)
    flags.DEFINE_integer("log_every", 25, "Log progress every N clips per worker.", lower_bound=1)
    flags.DEFINE_string("runner", "DirectRunner", "Beam runner (DirectRunner, DataflowRunner, "
                        "FlinkRunner, SparkRunner, PortableRunner, ...).")
    flags.DEFINE_integer("direct_num_workers", 1, "DirectRunner: parallel workers (0 = all cores).",
                         lower_bound=0)
    flags.DEFINE_enum("direct_running_mode", "auto", list(RUNNING_MODES), "DirectRunner mode; auto = "
                      "multi_processing when direct_num_workers != 1, else in_memory.")
    flags.DEFINE_list("pipeline_options", [], "Extra Beam pipeline options, comma-separated, e.g. "
                      "--pipeline_options=--project=P,--region=R,--temp_location=gs://B/tmp.")


class ExtractClipFn(beam.DoFn):
    """Decodes and extracts one clip; stages its Examples or records why it was skipped."""

    def __init__(self, plan: extraction.ExtractionPlan, decode_timeout: float, log_every: int):
        self.plan = plan
        self.decode_timeout = decode_timeout
        self.log_every = log_every
        self.seen = Metrics.counter(NAMESPACE, "files_seen")
        self.decoded = Metrics.counter(NAMESPACE, "decoded")
        self.failed = Metrics.counter(NAMESPACE, "failed")
        self.padded = Metrics.counter(NAMESPACE, "padded")

    def setup(self):
        self._worker = _essentia.EssentiaWorker(timeout=self.decode_timeout)
        self._count = 0
        self._start = time.monotonic()

    def teardown(self):
        self._worker.close()

    def _decode(self, path: str, sr: int):
        return self._worker.call("load_audio", path, sr)

    def process(self, element):
        clip, label_indices = element
        self.seen.inc()
        try:
            records, padded = extraction.extract_clip(clip, label_indices, self.plan, self._decode)
            extraction.stage_clip(self.plan, clip, records, padded)
        except Exception as e:  # noqa: BLE001  one clip never takes the job down.
            record = extraction.failure_record(clip, e)
            extraction.stage_failure(self.plan, record)
            self.failed.inc()
            logging.warning("skipped %s: %s: %s", clip.path, record["error"], record["reason"])
            yield beam.pvalue.TaggedOutput("failed", record)
        else:
            self.decoded.inc()
            if padded:
                self.padded.inc()
            yield clip
        self._count += 1
        if self._count % self.log_every == 0:
            rate = self._count / max(time.monotonic() - self._start, 1e-9)
            logging.info("worker %d: %d clips processed (%.2f clips/s)", os.getpid(), self._count,
                         rate)


class WriteShardFn(beam.DoFn):
    """Writes one (split, shard) of every base from the staged clips."""

    def __init__(self, plan: extraction.ExtractionPlan, shard_counts: dict[str, int]):
        self.plan = plan
        self.shard_counts = shard_counts
        self.examples = Metrics.counter(NAMESPACE, "examples_written")
        self.shards = Metrics.counter(NAMESPACE, "shards_written")

    def process(self, element):
        (split, index), clip_ids = element
        n = extraction.write_shard(self.plan, split, index, self.shard_counts[split], list(clip_ids))
        self.examples.inc(n)
        self.shards.inc(len(self.plan.bases))
        yield n


def load_catalog() -> Catalog:
    """The catalogue named by --catalog/--input."""
    if not FLAGS.input:
        raise app.UsageError("--input is required: a folder of audio files or a catalogue CSV")
    if not os.path.exists(FLAGS.input):
        raise app.UsageError(f"--input={FLAGS.input!r} does not exist")
    name = FLAGS.catalog
    if name == "auto":
        name = datasets.detect(FLAGS.input)
    known = datasets.names()
    if name not in known:
        raise app.UsageError(f"--catalog={FLAGS.catalog!r}; known: auto, {', '.join(known)}")
    try:
        return datasets.load(name, FLAGS.input, min_tag_count=FLAGS.min_tag_count)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        raise app.UsageError(f"--catalog={name} --input={FLAGS.input}: {e}") from None


def pipeline_options(runner: str = "DirectRunner", direct_num_workers: int = 1,
                     direct_running_mode: str = "auto", extra: Sequence[str] = ()) -> PipelineOptions:
    """Beam options for a runner (DirectRunner: workers and running mode) plus extra args."""
    args = [f"--runner={runner}"] + list(extra)
    if runner in ("DirectRunner", "direct"):
        mode = direct_running_mode
        if mode == "auto":
            mode = "in_memory" if direct_num_workers == 1 else "multi_processing"
        args += [f"--direct_num_workers={direct_num_workers}", f"--direct_running_mode={mode}"]
    return PipelineOptions(args)


def make_runner(runner: str):
    """The runner for --runner; DirectRunner means Beam's local FnApiRunner.

    (Beam's own DirectRunner first tries to download the Prism binary, which fails offline.)
    """
    if runner in ("DirectRunner", "direct"):
        from apache_beam.runners.portability.fn_api_runner import fn_runner

        return fn_runner.FnApiRunner()
    return None  # taken from --runner in the pipeline options.


def run(
    plan: extraction.ExtractionPlan,
    catalog: Catalog,
    options: PipelineOptions,
    runner: str = "DirectRunner",
    decode_timeout: float = 300.0,
    log_every: int = 25,
    keep_staging: bool = False,
) -> dict:
    """Runs the Beam pipeline for the pending clips, then finalises the dataset directory.

    Call :func:`tftag.extraction.prepare_output` first.

    Returns:
      A summary: clip counts, seconds, Beam counters.
    """
    counts = extraction.shard_counts(plan, catalog)
    pending = extraction.pending_clips(plan, catalog.clips)
    staged = [c for c in catalog.clips if os.path.exists(plan.staged_path(c.clip_id))]
    logging.info("%d clips in the catalogue: %d to extract, %d already staged, %d already failed",
                 len(catalog.clips), len(pending), len(staged),
                 len(catalog.clips) - len(pending) - len(staged))
    elements = [(c, catalog.label_indices(c)) for c in pending]

    def shard_key(clip: Clip):
        return (clip.split, data.shard_index(clip.clip_id, counts[clip.split])), clip.clip_id

    pipeline = beam.Pipeline(runner=make_runner(runner), options=options)
    extracted = (
        pipeline
        | "ListPendingClips" >> beam.Create(elements)
        | "Reshuffle" >> beam.Reshuffle()
        | "DecodeAndExtract" >> beam.ParDo(
            ExtractClipFn(plan, decode_timeout, log_every)
        ).with_outputs("failed", main="extracted")
    )
    earlier = pipeline | "ListStagedClips" >> beam.Create(staged)
    _ = (
        (extracted.extracted, earlier)
        | "AllStagedClips" >> beam.Flatten()
        | "KeyByShard" >> beam.Map(shard_key)
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteShardFn(plan, counts))
    )
    # Beam's multi-processing workers must import tftag and pipelines too.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = root + os.pathsep + os.environ.get("PYTHONPATH", "")
    started = time.monotonic()
    result = pipeline.run()
    result.wait_until_finish()
    elapsed = time.monotonic() - started
    metrics = {
        m.key.metric.name: m.committed
        for m in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    }
    source = {"catalog": catalog.name, **catalog.info}
    meta = extraction.finalize(plan, catalog, source, keep_staging=keep_staging)
    meta_summary = {
        "clips_total": meta["clips_total"], "clips_written": meta["clips_written"],
        "clips_failed": meta["clips_failed"], "clips_padded": meta["clips_padded"],
        "catalog_skipped": meta["catalog_skipped_count"],
        "splits": meta["splits"], "bases": len(plan.bases), "views": len(plan.configs),
        "seconds": round(elapsed, 2), "beam_counters": metrics,
    }
    return meta_summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    configs = mel_flags.mel_configs()
    catalog = load_catalog()
    if FLAGS.describe:
        from tftag import datacard

        print(datacard.format_card(datacard.write_card(catalog, FLAGS.output_dir)))
    plan = extraction.ExtractionPlan(
        output_dir=FLAGS.output_dir, configs=tuple(configs), tags=catalog.tags,
        mel_dtype=FLAGS.mel_dtype, clips_per_shard=FLAGS.clips_per_shard,
        min_duration=FLAGS.min_duration, silence_threshold=FLAGS.silence_threshold,
    )
    try:
        state = extraction.prepare_output(plan, catalog, FLAGS.overwrite, FLAGS.retry_failed)
    except FileExistsError as e:
        raise app.UsageError(str(e)) from None
    if state == "complete":
        print(f"{FLAGS.output_dir}: already complete for these flags and input; nothing to do "
              "(--overwrite to redo)")
        return 0
    options = pipeline_options(FLAGS.runner, FLAGS.direct_num_workers, FLAGS.direct_running_mode,
                               FLAGS.pipeline_options)
    summary = run(plan, catalog, options, FLAGS.runner, FLAGS.decode_timeout, FLAGS.log_every,
                  FLAGS.keep_staging)
    failures = os.path.join(FLAGS.output_dir, data.FAILURES_JSONL)
    print(f"extracted {summary['clips_written']}/{summary['clips_total']} clips into "
          f"{FLAGS.output_dir} ({summary['bases']} stored bases, {summary['views']} views, "
          f"{summary['clips_padded']} padded, {summary['seconds']} s); "
          f"{summary['clips_failed']} failed and {summary['catalog_skipped']} skipped by the "
          f"catalogue, see {failures}")
    print(json_line(summary))
    return 0


def json_line(obj) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


if __name__ == "__main__":
    define_flags()
    flags.mark_flag_as_required("output_dir")
    app.run(main)
