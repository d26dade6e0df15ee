"""``--mode=tag`` as an Apache Beam pipeline: a collection tagged across many workers.

Stages: ListAudioFiles (the files of ``--audio``, sorted, each given the shard of its place in
that order) -> Reshuffle -> TagFiles (one model per worker process, loaded at the first bundle;
each file decoded, cut into windows and scored by :func:`tftag.tagging.tracks.tag_tracks`, the
engine of ``--mode=tag``, so its row is the local run's; an unreadable file becomes a failure
record, never an error of the job) -> GroupByShard -> WriteShards (per shard, sorted by path:
``rows-SSSSS-of-NNNNN.jsonl`` and ``rows-SSSSS-of-NNNNN.failures.jsonl``, in the row format of
:mod:`tftag.tagging.results`, written under a temporary name and renamed, so a retried bundle
leaves no half shard). Then :func:`merge`, in the launching process, joins the shards into one
``tags.jsonl`` sorted by path and its failures manifest ``tags.failures.jsonl``.

Counters in the ``tftag.tagging.beam`` namespace: files_tagged, files_failed, audio_seconds
(whole seconds, rounded per file), shards_written (runners that report metrics; the summary's
counts come from the merged files whatever the runner). Runners, options and the Dask cluster are
extraction's (:mod:`tftag.extraction.pipeline`): every worker needs this repository importable,
the model (a shipped ``--pretrained`` or ``--model_dir`` export) and ``--audio`` and
``--output_dir`` at the same paths. Decoding never loads Essentia into a worker that holds
TensorFlow: formats libsndfile cannot read go to Essentia's child process
(:mod:`tftag.audio._essentia`).
"""

from __future__ import annotations

import dataclasses
import glob
import heapq
import json
import math
import os
import re
import threading
from typing import TYPE_CHECKING, Iterator, Sequence

from tftag.extraction import pipeline as beam_pipeline
from tftag.runs import runfiles
from tftag.tagging import results, tracks

import apache_beam as beam  # noqa: E402  (after tftag.features: see tftag/audio/_essentia.py)
from apache_beam.metrics.metric import Metrics  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

if TYPE_CHECKING:
    from tftag.tagging.tag import Tagger

NAMESPACE = "tftag.tagging.beam"
OUTPUT = "tags.jsonl"
SHARD = re.compile(r"^rows-(\d{5})-of-(\d{5})\.jsonl$")

# One model per worker process and model flags, shared by every bundle (the DaskRunner calls
# DoFn.setup once per partition).
_TAGGERS: dict[tuple, "Tagger"] = {}
_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class TagPlan:
    """What a Beam tagging job does.

    Attributes:
      audio: ``--audio``: a folder (searched recursively) or one file, at the same path on
        every worker; rows' ``rel_path`` is relative to it.
      output_dir: where the shards and the merged ``tags.jsonl`` go (shared by the workers).
      pretrained: a pretrained model's name, or None with ``model_dir``.
      model_dir: an export (``--model_dir``), or None with ``pretrained``.
      window_hop: seconds between window starts; 0 = the window length.
      block_seconds: seconds of audio decoded at a time.
      top_k: top tags per row.
      files_per_shard: files per output shard (the last one may hold fewer).
    """

    audio: str
    output_dir: str
    pretrained: str | None = None
    model_dir: str | None = None
    window_hop: float = 0.0
    block_seconds: float = tracks.BLOCK_SECONDS
    top_k: int = 5
    files_per_shard: int = 1000

    def __post_init__(self):
        from tftag.tagging.tag import check_args

        check_args(self.model_dir, self.pretrained, None)
        if self.files_per_shard < 1:
            raise ValueError(f"--files_per_shard={self.files_per_shard}: need at least 1")

    def num_shards(self, n_files: int) -> int:
        """Shards for ``n_files`` files (at least 1)."""
        return max(1, math.ceil(n_files / self.files_per_shard))

    @property
    def output(self) -> str:
        """The merged rows: ``<output_dir>/tags.jsonl``."""
        return os.path.join(self.output_dir, OUTPUT)


def shard_path(output_dir: str, index: int, count: int, partial: bool = False) -> str:
    """``<output_dir>/rows-SSSSS-of-NNNNN.jsonl`` (``partial``: the name it is written under)."""
    name = f"rows-{index:05d}-of-{count:05d}.jsonl"
    return os.path.join(output_dir, f".tmp-{name}" if partial else name)


def _tagger(plan: TagPlan) -> "Tagger":
    """This process's :class:`tftag.tagging.tag.Tagger` for the plan's model flags, loaded once."""
    key = (plan.pretrained, plan.model_dir, plan.window_hop)
    with _LOCK:
        if key not in _TAGGERS:
            from tftag.tagging.tag import load_tagger

            _TAGGERS[key] = load_tagger(plan.model_dir, plan.pretrained, None,
                                        window_hop=plan.window_hop)
        return _TAGGERS[key]


def output_spec(plan: TagPlan) -> results.OutputSpec:
    """The rows' shared fields (model, tags, windows) of this process's tagger."""
    tagger = _tagger(plan)
    return results.OutputSpec(tagger.name, tuple(tagger.tags), tagger.spec.window_seconds,
                              tagger.spec.hop * tagger.spec.frame_seconds, plan.top_k)


class TagFileFn(beam.DoFn):
    """Tags one file: yields ``(shard, TrackResult)``, or ``(shard, failure record)`` for a
    file that cannot be read (:data:`tftag.tagging.tracks.UNREADABLE`)."""

    def __init__(self, plan: TagPlan):
        self.plan = plan
        self.tagged = Metrics.counter(NAMESPACE, "files_tagged")
        self.failed = Metrics.counter(NAMESPACE, "files_failed")
        self.audio_seconds = Metrics.counter(NAMESPACE, "audio_seconds")

    def setup(self):
        self._tagger = _tagger(self.plan)

    def process(self, element):
        shard, path = element
        for item in tracks.tag_tracks(self._tagger, [path], self.plan.block_seconds):
            if isinstance(item, dict):
                self.failed.inc()
            else:
                self.tagged.inc()
                self.audio_seconds.inc(int(round(item.seconds)))
            yield shard, item


class WriteShardFn(beam.DoFn):
    """Writes one shard's rows and failures (sorted by path) with :class:`results.Results`."""

    def __init__(self, plan: TagPlan, count: int):
        self.plan, self.count = plan, count
        self.shards = Metrics.counter(NAMESPACE, "shards_written")

    def process(self, element):
        index, items = element
        partial = shard_path(self.plan.output_dir, index, self.count, partial=True)
        for path in (partial, results.failures_path(partial)):
            if os.path.exists(path):  # a retried bundle starts afresh
                os.remove(path)
        items = sorted(items, key=lambda item: item["path"] if isinstance(item, dict)
                       else item.path)
        with results.open_results(partial, output_spec(self.plan), self.plan.audio) as out:
            for item in items:
                if isinstance(item, dict):
                    out.fail(item)
                else:
                    out.add(item)
        final = shard_path(self.plan.output_dir, index, self.count)
        if os.path.exists(results.failures_path(partial)):
            os.replace(results.failures_path(partial), results.failures_path(final))
        os.replace(partial, final)
        self.shards.inc()
        yield final


def prepare_output(plan: TagPlan, overwrite: bool = False) -> None:
    """Creates ``output_dir``; an earlier job's shards or merged rows there are an error
    (naming the flag) unless ``overwrite``, which removes them."""
    os.makedirs(plan.output_dir, exist_ok=True)
    found = [p for p in glob.glob(os.path.join(plan.output_dir, "*"))
             if SHARD.match(os.path.basename(p).replace(".failures", ""))
             or os.path.basename(p) in (OUTPUT, os.path.basename(results.failures_path(OUTPUT)))]
    found += glob.glob(os.path.join(plan.output_dir, ".tmp-rows-*"))
    if found and not overwrite:
        raise ValueError(f"--output_dir={plan.output_dir!r} holds an earlier job's rows "
                         f"({os.path.basename(sorted(found)[0])}, ...): give another "
                         "--output_dir or --overwrite")
    for path in found:
        os.remove(path)


def build(pipeline: beam.Pipeline, plan: TagPlan, files: Sequence[str]) -> None:
    """Adds the stages of the job over ``files`` (sorted) to ``pipeline``."""
    count = plan.num_shards(len(files))
    elements = [(i * count // len(files), path) for i, path in enumerate(files)]
    _ = (
        pipeline
        | "ListAudioFiles" >> beam.Create(elements)
        | "Reshuffle" >> beam.Reshuffle()
        | "TagFiles" >> beam.ParDo(TagFileFn(plan))
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteShardFn(plan, count))
    )


def _shards(output_dir: str) -> list[str]:
    """The complete set of row shards in ``output_dir``, in order (else a ValueError naming
    what is missing)."""
    found = {}
    for name in os.listdir(output_dir):
        m = SHARD.match(name)
        if m:
            found[(int(m.group(2)), int(m.group(1)))] = os.path.join(output_dir, name)
    counts = {count for count, _ in found}
    if not found:
        raise ValueError(f"--output_dir={output_dir!r} holds no rows-SSSSS-of-NNNNN.jsonl shard")
    if len(counts) > 1:
        raise ValueError(f"--output_dir={output_dir!r} mixes shards of jobs with "
                         f"{sorted(counts)} shards: remove the stale ones")
    count = counts.pop()
    missing = [i for i in range(count) if (count, i) not in found]
    if missing:
        raise ValueError(f"--output_dir={output_dir!r}: shard "
                         f"{os.path.basename(shard_path(output_dir, missing[0], count))} (and "
                         f"{len(missing) - 1} more) missing: the job did not finish")
    return [found[(count, i)] for i in range(count)]


def _keyed_lines(path: str) -> Iterator[tuple[str, str]]:
    """(path field, line) of each record of a .jsonl shard, torn lines left out."""
    with open(path, **results.TEXT) as f:
        for line in f:
            if line.endswith("\n"):
                yield json.loads(line)["path"], line


def merge(output_dir: str) -> dict:
    """Joins the shards of ``output_dir`` into ``tags.jsonl`` and ``tags.failures.jsonl``
    (rows sorted by path; written atomically; the shards stay).

    Returns:
      {"output", "failures", "tagged", "failed", "shards", "audio_seconds"}.

    Raises:
      ValueError: no shards, or an incomplete or mixed set (naming the shard).
    """
    shards = _shards(output_dir)
    output = os.path.join(output_dir, OUTPUT)
    counts = {"tagged": 0, "failed": 0}
    audio_seconds = 0.0
    for source, target, kind in ((shards, output, "tagged"),
                                 ([results.failures_path(s) for s in shards],
                                  results.failures_path(output), "failed")):
        streams = [_keyed_lines(p) for p in source if os.path.exists(p)]
        with runfiles.atomic_path(target) as tmp, open(tmp, "w", **results.TEXT) as out:
            for _, line in heapq.merge(*streams, key=lambda item: item[0]):
                out.write(line)
                counts[kind] += 1
                if kind == "tagged":
                    audio_seconds += json.loads(line)["seconds"]
            out.flush()
            os.fsync(out.fileno())
    return {"output": output, "failures": results.failures_path(output), **counts,
            "shards": len(shards), "audio_seconds": round(audio_seconds, 3)}


def run(plan: TagPlan, options: PipelineOptions, runner: str = "DirectRunner",
        overwrite: bool = False, runner_info: dict | None = None) -> dict:
    """Tags every audio file of ``plan.audio`` on Beam, then merges the shards.

    Returns:
      The summary of :func:`merge` plus files, seconds, runner and beam_counters (None when
      the runner reports no metrics, as the DaskRunner).

    Raises:
      FileNotFoundError / ValueError: a bad ``--audio`` or ``--output_dir`` (naming the flag).
    """
    from tftag.tagging.tag import audio_files

    files = audio_files(plan.audio)
    if not files:
        raise ValueError(f"--audio={plan.audio!r}: no audio files there")
    prepare_output(plan, overwrite)
    if beam_pipeline.LOCAL_RUNNERS.get(runner) == "DaskRunner":
        beam_pipeline.set_dask_partitions(options, len(files))
    pipeline = beam.Pipeline(runner=beam_pipeline.make_runner(runner), options=options)
    build(pipeline, plan, files)
    elapsed, metrics = beam_pipeline.run_pipeline(pipeline, NAMESPACE)
    summary = merge(plan.output_dir)
    return {"files": len(files), **summary, "seconds": round(elapsed, 2),
            "runner": {"name": beam_pipeline.LOCAL_RUNNERS.get(runner, runner),
                       **(runner_info or {})},
            "beam_counters": metrics}
