"""The Apache Beam extraction pipeline: catalogue -> mel-spectrograms -> sharded TFRecords.

Stages: ListPendingClips -> DecodeAndExtract (Essentia in an isolated child process; bad files
are recorded, never fatal) -> GroupByShard -> WriteShards; then ``dataset.json`` is written last
(:func:`tftag.extraction.extractor.finalize`). Counters in the ``tftag.extraction.extract`` namespace: files_seen,
decoded, failed, padded, examples_written, shards_written (runners that report metrics).

Runners: "DirectRunner" means Beam's local FnApiRunner; "DaskRunner" runs on a
``dask.distributed`` cluster (:func:`dask_cluster`: a scheduler address, or a ``LocalCluster``
of worker processes); any other name is handed to Beam with ``--pipeline_options``. Every runner
writes through the same staging area, so datasets, resume and failures are runner-independent;
a worker process keeps one Essentia child and one teacher for all its bundles
(:func:`_worker_resources`). :func:`tftag.extraction.extract.extract` (``--mode=extract``) and
``pipelines/extract.py`` (the stand-alone entry point) run it; the catalogue, the data card and
the dataset check live in :mod:`tftag.extraction.extract`, which imports this module only to extract.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
from typing import Iterator, Sequence

from absl import logging

import tftag
from tftag.audio import _essentia
from tftag.extraction import extractor
from tftag.datasets import Catalog, Clip

import apache_beam as beam  # noqa: E402  (after tftag.features: see tftag/audio/_essentia.py)
from apache_beam.metrics.metric import Metrics, MetricsFilter  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from tftag.storage import data  # noqa: E402

NAMESPACE = "tftag.extraction.extract"
RUNNING_MODES = ("auto", "in_memory", "multi_threading", "multi_processing")
# Runners tftag runs itself (tests run both); others are passed to Beam by name (BUILD.md).
LOCAL_RUNNERS = {"DirectRunner": "DirectRunner", "direct": "DirectRunner",
                 "DaskRunner": "DaskRunner", "dask": "DaskRunner"}
# Dask: bag partitions per pending clip list are capped so that GroupByShard stays small.
MAX_DASK_PARTITIONS = 1024

# One Essentia child (and teacher) per worker thread and plan settings, shared by every bundle
# the thread runs: DaskRunner calls DoFn.setup/teardown once per partition (bundle).
_RESOURCES: dict[tuple, tuple] = {}


def _worker_resources(decode_timeout: float, plan: extractor.ExtractionPlan) -> tuple:
    """This thread's (EssentiaWorker, teacher or None) for these settings, made once.

    With ``plan.teacher_memo`` the teacher is a :class:`tftag.extraction.teacher.MemoTeacher` that reads
    the memo file and loads the model only at its first miss.
    """
    key = (threading.get_ident(), decode_timeout, plan.teacher, plan.teacher_top_k,
           plan.teacher_memo, plan.output_dir)
    if key not in _RESOURCES:
        worker = _essentia.EssentiaWorker(timeout=decode_timeout)
        atexit.register(worker.close)
        model = None
        if plan.teacher and plan.teacher_memo:
            from tftag.extraction import teacher as teacher_lib

            model = teacher_lib.MemoTeacher(
                plan.teacher, plan.teacher_top_k,
                known=teacher_lib.read_memo(plan.teacher_memo, plan.teacher, plan.duration),
                stage_dir=plan.memo_staging_dir)
        elif plan.teacher:
            from tftag.extraction.teacher import Teacher

            model = Teacher(plan.teacher, plan.teacher_top_k)
        _RESOURCES[key] = (worker, model)
    return _RESOURCES[key]


class ExtractClipFn(beam.DoFn):
    """Decodes and extracts one clip; stages its Examples or records why it was skipped.

    Outputs the extracted clips only: a skipped clip's record goes to the staging area (the
    failures manifest is built from there), not to a tagged output, which the DaskRunner would
    merge into the main one.
    """

    def __init__(self, plan: extractor.ExtractionPlan, decode_timeout: float, log_every: int):
        self.plan = plan
        self.decode_timeout = decode_timeout
        self.log_every = log_every
        self.seen = Metrics.counter(NAMESPACE, "files_seen")
        self.decoded = Metrics.counter(NAMESPACE, "decoded")
        self.failed = Metrics.counter(NAMESPACE, "failed")
        self.padded = Metrics.counter(NAMESPACE, "padded")
        self.memo_hits = Metrics.counter(NAMESPACE, "teacher_memo_hits")

    def setup(self):
        extractor.check_visible(self.plan)
        self._worker, self._teacher = _worker_resources(self.decode_timeout, self.plan)
        self._count = 0
        self._start = time.monotonic()

    def _decode(self, path: str, sr: int, *segment):
        return self._worker.call("load_audio", path, sr, *segment)

    def process(self, element):
        clip, label_indices = element
        self.seen.inc()
        hits = getattr(self._teacher, "hits", 0)
        try:
            records, padded = extractor.extract_clip(clip, label_indices, self.plan, self._decode,
                                                      self._teacher)
            extractor.stage_clip(self.plan, clip, records, padded)
        except Exception as e:  # noqa: BLE001  one clip never takes the job down.
            record = extractor.failure_record(clip, e)
            extractor.stage_failure(self.plan, record)
            self.failed.inc()
            logging.warning("skipped %s: %s: %s", clip.path, record["error"], record["reason"])
        else:
            self.decoded.inc()
            self.memo_hits.inc(getattr(self._teacher, "hits", 0) - hits)
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

    def __init__(self, plan: extractor.ExtractionPlan, shard_counts: dict[str, int]):
        self.plan = plan
        self.shard_counts = shard_counts
        self.examples = Metrics.counter(NAMESPACE, "examples_written")
        self.shards = Metrics.counter(NAMESPACE, "shards_written")

    def process(self, element):
        (split, index), clip_ids = element
        n = extractor.write_shard(self.plan, split, index, self.shard_counts[split], list(clip_ids))
        self.examples.inc(n)
        self.shards.inc(len(self.plan.bases))
        yield n


def pipeline_options(runner: str = "DirectRunner", direct_num_workers: int = 1,
                     direct_running_mode: str = "auto", extra: Sequence[str] = (),
                     dask_address: str | None = None) -> PipelineOptions:
    """Beam options for a runner plus extra args.

    DirectRunner: workers and running mode; DaskRunner: the scheduler address
    (``--dask_client_address``, from :func:`dask_cluster`).
    """
    name = LOCAL_RUNNERS.get(runner, runner)
    args = [f"--runner={name}"] + list(extra)
    if name == "DirectRunner":
        mode = direct_running_mode
        if mode == "auto":
            mode = "in_memory" if direct_num_workers == 1 else "multi_processing"
        args += [f"--direct_num_workers={direct_num_workers}", f"--direct_running_mode={mode}"]
    if name == "DaskRunner" and dask_address:
        args.append(f"--dask_client_address={dask_address}")
    return PipelineOptions(args)


def make_runner(runner: str):
    """The runner for --runner; DirectRunner means Beam's local FnApiRunner.

    (Beam's own DirectRunner first tries to download the Prism binary, which fails offline.)
    """
    name = LOCAL_RUNNERS.get(runner)
    if name == "DirectRunner":
        from apache_beam.runners.portability.fn_api_runner import fn_runner

        return fn_runner.FnApiRunner()
    if name == "DaskRunner":
        from apache_beam.runners.dask.dask_runner import DaskRunner

        return DaskRunner()
    return None  # taken from --runner in the pipeline options.


def export_repository_path() -> None:
    """Puts this repository on ``$PYTHONPATH`` (once) for the worker processes this one starts."""
    root = tftag.PACKAGE_PARENT
    paths = os.environ.get("PYTHONPATH", "")
    if root not in paths.split(os.pathsep):
        os.environ["PYTHONPATH"] = root + (os.pathsep + paths if paths else "")


@contextlib.contextmanager
def dask_cluster(address: str | None = None, workers: int = 2,
                 connect_timeout: float = 30.0) -> Iterator[str]:
    """The address of a Dask scheduler for the DaskRunner.

    Args:
      address: a running scheduler (``tcp://host:8786``), checked to answer within
        ``connect_timeout`` seconds; its workers need this repository on ``PYTHONPATH`` and
        ``requirements.txt`` installed.
      workers: without ``address``, a ``distributed.LocalCluster`` of this many worker processes
        (one thread each) is started here and closed on exit.
      connect_timeout: seconds to wait for the scheduler at ``address``.

    Yields:
      The scheduler address.

    Raises:
      ValueError: no scheduler answers at ``address`` (one line naming it).
    """
    import logging as std_logging

    from distributed import Client, LocalCluster

    # The scheduler (LocalCluster) and the client run in this process: their INFO lines
    # (connections, workers) would drown the progress lines under absl's handler.
    std_logging.getLogger("distributed").setLevel(std_logging.WARNING)
    if address:
        try:
            with Client(address, timeout=connect_timeout) as client:
                n_workers = len(client.scheduler_info()["workers"])
        except (OSError, TimeoutError) as e:
            raise ValueError(f"--dask_address={address}: no Dask scheduler answered within "
                             f"{connect_timeout:g} s ({type(e).__name__})") from None
        if not n_workers:
            logging.warning("Dask scheduler %s has no workers yet: the job waits for them", address)
        logging.info("Dask scheduler %s with %d workers", address, n_workers)
        yield address
        return
    export_repository_path()  # spawned workers import tftag (TensorFlow, never Essentia)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=std_logging.WARNING) as cluster:
        logging.info("Dask LocalCluster: %d worker processes at %s", workers,
                     cluster.scheduler_address)
        yield cluster.scheduler_address


def run_pipeline(pipeline: beam.Pipeline, namespace: str) -> tuple[float, dict | None]:
    """Runs ``pipeline`` to the end (the DaskRunner's client closed after it).

    Returns:
      (seconds, {counter name: committed value} of ``namespace``, or None when the runner
      reports no metrics, as the DaskRunner).
    """
    export_repository_path()  # Beam's multi-processing workers must import tftag too
    started = time.monotonic()
    result = pipeline.run()
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)  # the DaskRunner's distributed.Client
        if client is not None:
            client.close()
    elapsed = time.monotonic() - started
    try:
        metrics = {
            m.key.metric.name: m.committed
            for m in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
        }
    except NotImplementedError:  # DaskRunner: "collecting metrics will come later"
        metrics = None
    return elapsed, metrics


def set_dask_partitions(options: PipelineOptions, n_clips: int) -> None:
    """One pending clip per Dask bag partition, up to MAX_DASK_PARTITIONS, unless the user set
    ``--dask_npartitions`` or ``--dask_partition_size`` (Beam's default, 128 elements per
    partition, would put a small extraction on one worker)."""
    from apache_beam.runners.dask.dask_runner import DaskOptions

    dask = options.view_as(DaskOptions)
    if dask.npartitions is None and dask.partition_size is None:
        dask.npartitions = max(1, min(n_clips, MAX_DASK_PARTITIONS))


def run(
    plan: extractor.ExtractionPlan,
    catalog: Catalog,
    options: PipelineOptions,
    runner: str = "DirectRunner",
    decode_timeout: float = 300.0,
    log_every: int = 25,
    keep_staging: bool = False,
    runner_info: dict | None = None,
) -> dict:
    """Runs the Beam pipeline for the pending clips, then finalises the dataset directory.

    Call :func:`tftag.extraction.extractor.prepare_output` first. ``runner_info`` (e.g. the Dask workers)
    is recorded with the runner's name as ``dataset.json`` "runner".

    Returns:
      A summary: clip counts, seconds, runner, Beam counters (None when the runner reports no
      metrics, as the DaskRunner).
    """
    counts = extractor.shard_counts(plan, catalog)
    pending = extractor.pending_clips(plan, catalog.clips)
    staged = [c for c in catalog.clips if os.path.exists(plan.staged_path(c.clip_id))]
    logging.info("%d clips in the catalogue: %d to extract, %d already staged, %d already failed",
                 len(catalog.clips), len(pending), len(staged),
                 len(catalog.clips) - len(pending) - len(staged))
    elements = [(c, catalog.label_indices(c)) for c in pending]

    def shard_key(clip: Clip):
        return (clip.split, data.shard_index(clip.clip_id, counts[clip.split])), clip.clip_id

    if LOCAL_RUNNERS.get(runner) == "DaskRunner":
        set_dask_partitions(options, len(elements))
    pipeline = beam.Pipeline(runner=make_runner(runner), options=options)
    extracted = (
        pipeline
        | "ListPendingClips" >> beam.Create(elements)
        | "Reshuffle" >> beam.Reshuffle()
        | "DecodeAndExtract" >> beam.ParDo(ExtractClipFn(plan, decode_timeout, log_every))
    )
    earlier = pipeline | "ListStagedClips" >> beam.Create(staged)
    _ = (
        (extracted, earlier)
        | "AllStagedClips" >> beam.Flatten()
        | "KeyByShard" >> beam.Map(shard_key)
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteShardFn(plan, counts))
    )
    elapsed, metrics = run_pipeline(pipeline, NAMESPACE)
    memo = None
    if plan.teacher and plan.teacher_memo:  # before finalize: it clears the staging area
        from tftag.extraction import teacher as teacher_lib

        memo = teacher_lib.merge_staged(plan.teacher_memo, plan.teacher, plan.duration,
                                        plan.memo_staging_dir)
        logging.info("teacher memo %s: %d entries, %d added by this extraction",
                     plan.teacher_memo, memo["entries"], memo["added"])
    source = {"catalog": catalog.name, **catalog.info}
    recorded_runner = {"name": LOCAL_RUNNERS.get(runner, runner), **(runner_info or {})}
    meta = extractor.finalize(plan, catalog, source, keep_staging=keep_staging,
                               runner=recorded_runner)
    meta_summary = {
        "clips_total": meta["clips_total"], "clips_written": meta["clips_written"],
        "clips_failed": meta["clips_failed"], "clips_padded": meta["clips_padded"],
        "catalog_skipped": meta["catalog_skipped_count"],
        "splits": meta["splits"], "bases": len(plan.bases), "views": len(plan.configs),
        "seconds": round(elapsed, 2), "runner": recorded_runner, "beam_counters": metrics,
    }
    if memo is not None:
        meta_summary["teacher_memo"] = memo
    return meta_summary
