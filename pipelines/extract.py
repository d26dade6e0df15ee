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
import sys
import time

from absl import app, flags, logging

from tftag import _essentia, datasets, extraction, features
from tftag.datasets import Catalog, Clip

import apache_beam as beam  # noqa: E402  (after tftag.features: see tftag/_essentia.py)
from apache_beam.metrics.metric import Metrics, MetricsFilter  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from tftag import data  # noqa: E402

NAMESPACE = "tftag.extract"
CATALOGS = ("auto", "folder", "csv")
RUNNING_MODES = ("auto", "in_memory", "multi_threading", "multi_processing")

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "A folder of audio files (searched recursively, unlabelled) or "
                    "a catalogue file (CSV with path,split,tags).")
flags.DEFINE_string("catalog", "auto", f"Catalogue reader: one of {', '.join(CATALOGS)}; auto = "
                    "folder for a directory, csv for a file.")
flags.DEFINE_string("output_dir", None, "The dataset directory to write (shards, dataset.json, "
                    "failures.jsonl).")
flags.DEFINE_list("sr", ["12000", "16000"], "Sample rates in Hz (paper: 12000,16000; any >= 8000).")
flags.DEFINE_list("n_mels", [str(m) for m in features.PAPER_N_MELS],
                  "Mel band counts (paper: 128,96,48,32,24,16,8; any 4..256).")
flags.DEFINE_list("hop_factors", [str(k) for k in features.PAPER_HOP_FACTORS],
                  "Hop factors k (hop 256*k) offered by the dataset (paper: 1,2,3,4,5,10). "
                  "Only hop 1 is stored; every k is derived on read.")
flags.DEFINE_list("compressions", list(features.PAPER_COMPRESSIONS),
                  f"Compressions offered: any of {', '.join(features.COMPRESSIONS)}. Derived on read.")
flags.DEFINE_float("duration", features.DEFAULT_DURATION, "Centred crop in seconds (zero-padded "
                   "if shorter).")
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


def _ints(name: str) -> list[int]:
    try:
        return [int(v) for v in getattr(FLAGS, name)]
    except ValueError:
        raise app.UsageError(f"--{name} must be comma-separated integers, got "
                             f"{','.join(getattr(FLAGS, name))!r}") from None


def build_configs() -> list[features.MelConfig]:
    """MelConfigs from the flags, with errors naming the flag."""
    values = {"sr": _ints("sr"), "n_mels": _ints("n_mels"), "hop_factors": _ints("hop_factors"),
              "compressions": FLAGS.compressions}
    for name, vals in values.items():
        if not vals:
            raise app.UsageError(f"--{name} is empty")
    for name, field in (("sr", "sr"), ("n_mels", "n_mels"), ("hop_factors", "hop_factor"),
                        ("compressions", "compression")):
        for v in values[name]:
            try:
                features.MelConfig(**{"sr": 16000, "n_mels": 96, "hop_factor": 1,
                                      "compression": "log", "duration": FLAGS.duration,
                                      field: v})
            except (ValueError, TypeError) as e:
                raise app.UsageError(f"--{name}: {e}") from None
    return features.grid(values["sr"], values["n_mels"], values["hop_factors"],
                         values["compressions"], FLAGS.duration)


def load_catalog() -> Catalog:
    """The catalogue named by --catalog/--input."""
    if not FLAGS.input:
        raise app.UsageError("--input is required: a folder of audio files or a catalogue CSV")
    if not os.path.exists(FLAGS.input):
        raise app.UsageError(f"--input={FLAGS.input!r} does not exist")
    name = FLAGS.catalog
    if name == "auto":
        name = "folder" if os.path.isdir(FLAGS.input) else "csv"
    known = datasets.names()
    if name not in known:
        raise app.UsageError(f"--catalog={FLAGS.catalog!r}; known: auto, {', '.join(known)}")
    return datasets.load(name, FLAGS.input, min_tag_count=FLAGS.min_tag_count)


def pipeline_options() -> PipelineOptions:
    """Beam options from --runner, --direct_* and --pipeline_options."""
    args = [f"--runner={FLAGS.runner}"] + list(FLAGS.pipeline_options)
    if FLAGS.runner in ("DirectRunner", "direct"):
        mode = FLAGS.direct_running_mode
        if mode == "auto":
            mode = "in_memory" if FLAGS.direct_num_workers == 1 else "multi_processing"
        args += [f"--direct_num_workers={FLAGS.direct_num_workers}",
                 f"--direct_running_mode={mode}"]
    return PipelineOptions(args)


def make_runner():
    """The runner for --runner; DirectRunner means Beam's local FnApiRunner.

    (Beam's own DirectRunner first tries to download the Prism binary, which fails offline.)
    """
    if FLAGS.runner in ("DirectRunner", "direct"):
        from apache_beam.runners.portability.fn_api_runner import fn_runner

        return fn_runner.FnApiRunner()
    return None  # taken from --runner in the pipeline options.


def run(plan: extraction.ExtractionPlan, catalog: Catalog, options: PipelineOptions) -> dict:
    """Runs the Beam pipeline for the pending clips, then finalises the dataset directory."""
    counts = extraction.shard_counts(plan, catalog)
    pending = extraction.pending_clips(plan, catalog.clips)
    staged = [c for c in catalog.clips if os.path.exists(plan.staged_path(c.clip_id))]
    logging.info("%d clips in the catalogue: %d to extract, %d already staged, %d already failed",
                 len(catalog.clips), len(pending), len(staged),
                 len(catalog.clips) - len(pending) - len(staged))
    elements = [(c, catalog.label_indices(c)) for c in pending]

    def shard_key(clip: Clip):
        return (clip.split, data.shard_index(clip.clip_id, counts[clip.split])), clip.clip_id

    pipeline = beam.Pipeline(runner=make_runner(), options=options)
    extracted = (
        pipeline
        | "ListPendingClips" >> beam.Create(elements)
        | "Reshuffle" >> beam.Reshuffle()
        | "DecodeAndExtract" >> beam.ParDo(
            ExtractClipFn(plan, FLAGS.decode_timeout, FLAGS.log_every)
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
    started = time.monotonic()
    result = pipeline.run()
    result.wait_until_finish()
    elapsed = time.monotonic() - started
    metrics = {
        m.key.metric.name: m.committed
        for m in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    }
    source = {"catalog": catalog.name, **catalog.info}
    meta = extraction.finalize(plan, catalog, source, keep_staging=FLAGS.keep_staging)
    meta_summary = {
        "clips_total": meta["clips_total"], "clips_written": meta["clips_written"],
        "clips_failed": meta["clips_failed"], "clips_padded": meta["clips_padded"],
        "splits": meta["splits"], "bases": len(plan.bases), "views": len(plan.configs),
        "seconds": round(elapsed, 2), "beam_counters": metrics,
    }
    return meta_summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    configs = build_configs()
    catalog = load_catalog()
    plan = extraction.ExtractionPlan(
        output_dir=FLAGS.output_dir, configs=tuple(configs), tags=catalog.tags,
        mel_dtype=FLAGS.mel_dtype, clips_per_shard=FLAGS.clips_per_shard,
        min_duration=FLAGS.min_duration, silence_threshold=FLAGS.silence_threshold,
    )
    # Beam's multi-processing workers must import tftag and pipelines too.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = root + os.pathsep + os.environ.get("PYTHONPATH", "")
    try:
        state = extraction.prepare_output(plan, catalog, FLAGS.overwrite, FLAGS.retry_failed)
    except FileExistsError as e:
        raise app.UsageError(str(e)) from None
    if state == "complete":
        print(f"{FLAGS.output_dir}: already complete for these flags and input; nothing to do "
              "(--overwrite to redo)")
        return 0
    summary = run(plan, catalog, pipeline_options())
    failures = os.path.join(FLAGS.output_dir, data.FAILURES_JSONL)
    print(f"extracted {summary['clips_written']}/{summary['clips_total']} clips into "
          f"{FLAGS.output_dir} ({summary['bases']} stored bases, {summary['views']} views, "
          f"{summary['clips_padded']} padded, {summary['seconds']} s); "
          f"{summary['clips_failed']} skipped, see {failures}")
    print(json_line(summary))
    return 0


def json_line(obj) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


if __name__ == "__main__":
    flags.mark_flag_as_required("output_dir")
    app.run(main)
