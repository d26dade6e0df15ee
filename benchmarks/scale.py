r"""MSD-scale cost model: per-clip costs measured on this machine, projected to 241,904 clips.

    .venv/bin/python -m benchmarks.scale                          # default run, <= 10 min
    .venv/bin/python -m benchmarks.scale --quick --out_dir=/tmp/scale   # smoke run, <= 1 min
    .venv/bin/python -m benchmarks.scale --num_clips=25860 --workers=1,4,16   # MTAT instead

Measured (medians over --measure_clips clips x --repeats; 30-s stereo 44.1-kHz tone mixes
written as MP3 (CBR 128 kbps, as MSD previews) and WAV, or the files of --audio_dir):
  * decode seconds per clip at 12 and 16 kHz and at the file's own rate (no resampling):
    Essentia MonoLoader in its isolated child process, as the extraction pipeline runs it;
  * all-configs extraction seconds per clip: ``tftag.extraction.extractor.extract_clip`` with a plan
    covering the paper's 168 views (2 decodes, 14 hop-1 power bases, serialized Examples), then
    staging and shard writing (the rest of a worker's per-clip work), per storage codec;
  * bytes per clip of the base layout (the shard files tftag writes) vs every one of the 168
    views materialised (values x bytes per value + the measured per-Example overhead);
  * read + derive seconds per clip of a view from the base layout (NumPy decode + derive, and
    ``tftag.storage.data.read_examples``) and ``tftag.storage.data.make_dataset`` examples/s;
  * training examples/s of real train steps (forward, backward, Adam, as ``tftag.train``) on
    random input of the right shape, VGG-CNN and MUSICNN at the paper's width.
Projected (--num_clips, --workers, --parallel_efficiency, --epochs): extraction wall time on N
workers, storage of all 168 resolutions per codec in both layouts, and training epoch time on
this machine's CPU. GPU training is not measured here. The machine may be shared: the load
average is recorded at every step, and CPU seconds (this process + the decoder process) are
recorded beside the wall times, since other load inflates them much less.

Writes --out_dir/scale.json (every measured input, the projections, the machine and its load
average), projection.md (tables for BUILD.md) and projection.csv; prints one JSON line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import glob
import importlib
import json
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from absl import app, flags, logging

from benchmarks.common import machine_info
from tftag import features
from tftag.features import MelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT_DIR = os.path.join(ROOT, "benchmarks", "results", "scale")
MSD_CLIPS = 241_904  # the paper's MSD fragments
MSD_TRAIN_CLIPS = 201_680  # the paper's MSD training split
MP3_COMPRESSION_LEVEL = 0.65  # libsndfile 1.2 MP3, constant bitrate: 128 kbps
N_TAGS = 50
TAGS = tuple(f"tag{i:02d}" for i in range(N_TAGS))
LABELS = (0, 7, 13)  # three positive tags per clip, as typical multi-hot rows
GB = 1e9
DEFAULT_TRAIN = (
    "vgg:sr16000-mel128-hop1-log:4", "vgg:sr16000-mel96-hop1-log:4",
    "vgg:sr16000-mel48-hop2-log:8", "vgg:sr16000-mel32-hop4-log:16",
    "vgg:sr16000-mel8-hop10-log:32", "musicnn:sr16000-mel96-hop1-log:16:3",
)
QUICK_TRAIN = ("vgg:sr16000-mel8-hop10-log:8",)
MODEL_NAMES = {"vgg": "VGG-CNN", "musicnn": "MUSICNN"}
GPU_NOTE = ("GPU numbers are not measured here: every training time is this machine's CPU "
            "(one process on its shared cores) and says nothing about a GPU's.")


# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """One timed training configuration.

    Attributes:
      model: registry name (``vgg`` or ``musicnn``).
      resolution: the input resolution, e.g. ``sr16000-mel96-hop1-log``.
      batch_size: examples per timed step (small for large inputs, to bound memory).
      patch_seconds: input patch length (MUSICNN: 3 s); None = the whole 29.1-s crop.
    """

    model: str
    resolution: str
    batch_size: int
    patch_seconds: float | None = None

    @classmethod
    def parse(cls, text: str) -> "TrainSpec":
        """Parses ``model:resolution:batch[:patch_seconds]``, e.g.
        ``musicnn:sr16000-mel96-hop1-log:16:3``."""
        parts = text.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"bad training spec {text!r}; expected model:resolution:batch"
                             "[:patch_seconds], e.g. vgg:sr16000-mel96-hop1-log:4")
        MelConfig.from_name(parts[1])
        batch = int(parts[2])
        if batch < 1:
            raise ValueError(f"{text}: batch must be >= 1")
        return cls(parts[0], parts[1], batch, float(parts[3]) if len(parts) == 4 else None)

    def label(self, duration: float) -> str:
        """``VGG-CNN 96×1`` (n_mels × hop factor)."""
        c = MelConfig.from_name(self.resolution, duration)
        return f"{MODEL_NAMES.get(self.model, self.model)} {c.n_mels}×{c.hop_factor}"


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to measure and how to project it.

    Attributes:
      measure_clips: clips measured (medians over them).
      repeats: timing repetitions per clip.
      clip_seconds: length of the generated clips (MSD previews: 30 s).
      duration: crop of the extraction (the paper's 29.1 s).
      formats: generated audio formats (``mp3``, ``wav``); the first is the primary one
        (storage, reading and the training-input measurements use it).
      codecs: storage codecs (:mod:`tftag.storage.codecs`); every one is extracted from the primary
        format, the other formats with the first codec only.
      audio_dir: measure these files instead of generated ones (grouped by extension).
      train: training configurations timed.
      width: model width (1.0 = the paper's).
      train_steps: timed training steps (median) after ``warmup_steps``.
      warmup_steps: untimed steps first (the first one traces the graph).
      pipeline_seconds: length of each timed ``make_dataset`` loop.
      extraction_threads: BLAS threads during extraction (1 = the cost of one single-core worker).
      num_clips: clips of the projection.
      train_clips: training-split clips of the projection (epoch size).
      workers: worker counts of the extraction projection.
      parallel_efficiency: efficiency of N > 1 workers (1 = perfect scaling); None = the one
        measured on Beam's DaskRunner (``runner_workers``), else 0.9.
      runner_workers: also run tftag's Beam pipeline on ``runner_clips`` clips with the
        DirectRunner (1 process) and on a Dask LocalCluster of 1 and of this many workers
        (0 = skip): the measured parallel efficiency of the DaskRunner on this machine.
      runner_clips: clips of that measurement (generated, or the primary format of audio_dir).
      epochs: training epochs of the projection.
    """

    measure_clips: int = 3
    repeats: int = 3
    clip_seconds: float = 30.0
    duration: float = features.DEFAULT_DURATION
    formats: tuple[str, ...] = ("mp3", "wav")
    codecs: tuple[str, ...] = ("float32", "float16", "uint8")
    audio_dir: str | None = None
    train: tuple[TrainSpec, ...] = tuple(TrainSpec.parse(s) for s in DEFAULT_TRAIN)
    width: float = 1.0
    train_steps: int = 3
    warmup_steps: int = 1
    pipeline_seconds: float = 1.0
    extraction_threads: int = 1
    num_clips: int = MSD_CLIPS
    train_clips: int = MSD_TRAIN_CLIPS
    workers: tuple[int, ...] = (1, 8, 32, 128)
    parallel_efficiency: float | None = None
    runner_workers: int = 2
    runner_clips: int = 16
    epochs: int = 20

    @property
    def assumed_efficiency(self) -> float:
        """The efficiency used when none is given or measured."""
        return 0.9 if self.parallel_efficiency is None else self.parallel_efficiency


# ----------------------------------------------------------------------------- helpers


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


def summary(samples: Sequence[float], digits: int = 5) -> dict[str, Any]:
    """{median, min, max, n} of timing samples (seconds or rates)."""
    return {"median": round(statistics.median(samples), digits), "min": round(min(samples), digits),
            "max": round(max(samples), digits), "n": len(samples)}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def process_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of this process (all threads), or of process ``pid`` (Linux
    /proc; 0.0 when it cannot be read)."""
    if pid is None:
        return sum(os.times()[:2])
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# ----------------------------------------------------------------------------- audio


def tone_mix(seconds: float, sr: int, seed: int, channels: int = 2) -> np.ndarray:
    """A deterministic music-like test signal: a chord with harmonics, a pulsing bass, noise
    hits on the beat and a low noise floor; float32 [samples, channels] (right channel quieter)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    root = 110.0 * 2 ** (int(rng.integers(0, 12)) / 12)
    y = np.zeros_like(t)
    for ratio in (1.0, 1.26, 1.5):
        for harmonic in range(1, 5):
            y += 0.12 / harmonic * np.sin(2 * np.pi * root * ratio * harmonic * t)
    y += 0.2 * np.sin(2 * np.pi * root / 2 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    y += 0.3 * (np.mod(t, 0.5) < 0.04) * rng.standard_normal(t.size)
    y += 0.005 * rng.standard_normal(t.size)
    y = y / np.max(np.abs(y)) * 0.8
    return np.stack([y * (1.0 - 0.15 * c) for c in range(channels)], axis=1).astype(np.float32)


def write_clips(directory: str, n: int, seconds: float, formats: Sequence[str],
                sr: int = 44100) -> dict[str, list[str]]:
    """Writes ``n`` tone mixes per format (MP3: CBR 128 kbps; WAV: 16-bit PCM); {format: paths}."""
    import soundfile as sf

    out: dict[str, list[str]] = {f: [] for f in formats}
    for i in range(n):
        y = tone_mix(seconds, sr, seed=i)
        for fmt in formats:
            path = os.path.join(directory, f"clip{i:02d}.{fmt}")
            if fmt == "mp3":
                sf.write(path, y, sr, format="MP3", compression_level=MP3_COMPRESSION_LEVEL,
                         bitrate_mode="CONSTANT")
            elif fmt == "wav":
                sf.write(path, y, sr, subtype="PCM_16")
            else:
                raise ValueError(f"cannot generate format {fmt!r}; use mp3 or wav (or --audio_dir)")
            out[fmt].append(path)
    return out


def given_clips(directory: str, n: int) -> dict[str, list[str]]:
    """Up to ``n`` files of ``directory`` per extension: {extension: paths}."""
    out: dict[str, list[str]] = {}
    for name in sorted(os.listdir(directory)):
        ext = os.path.splitext(name)[1].lower().lstrip(".")
        if ext and len(out.setdefault(ext, [])) < n:
            out[ext].append(os.path.join(directory, name))
    if not out:
        raise ValueError(f"--audio_dir={directory}: no audio files")
    return out


def audio_info(paths: dict[str, list[str]]) -> dict[str, Any]:
    """Per format: files, mean bytes, kbps, sample rate, channels and seconds of the first."""
    import soundfile as sf

    out = {}
    for fmt, files in paths.items():
        info = sf.info(files[0])
        size = statistics.mean(os.path.getsize(p) for p in files)
        out[fmt] = {"files": len(files), "bytes_mean": int(size),
                    "kbps": round(size * 8 / info.duration / 1000, 1), "sr": info.samplerate,
                    "channels": info.channels, "seconds": round(info.duration, 3)}
    return out


# ----------------------------------------------------------------------------- measurements


def measure_decode(decode: Callable[[str, int], np.ndarray], paths: dict[str, list[str]],
                   repeats: int, cpu_clock: Callable[[], float]) -> dict[str, dict[str, Any]]:
    """Seconds per clip of one decode at each paper sample rate and at the file's own rate
    ("native": decode and downmix without resampling).

    Returns:
      {format: {"12000" | "16000" | "native": wall-seconds summary, "cpu_<same>": CPU-seconds
      summary (``cpu_clock``: this process + the decoder's)}}.
    """
    import soundfile as sf

    keys = [str(sr) for sr in features.PAPER_SRS] + ["native"]
    samples = {f: {k: [] for k in keys + [f"cpu_{k}" for k in keys]} for f in paths}
    for _ in range(repeats):
        for fmt, files in paths.items():
            for path in files:
                for key in keys:
                    sr = sf.info(path).samplerate if key == "native" else int(key)
                    cpu = cpu_clock()
                    samples[fmt][key].append(timed(lambda: decode(path, sr))[0])
                    samples[fmt][f"cpu_{key}"].append(cpu_clock() - cpu)
    return {f: {k: summary(v) for k, v in by_key.items()} for f, by_key in samples.items()}


def _catalog(name: str, paths: Sequence[str]):
    from tftag.datasets import Catalog, Clip

    clips = tuple(Clip(f"{name}-{i:03d}", p, "train", TAGS[:1]) for i, p in enumerate(paths))
    return Catalog(name, clips, TAGS)


def measure_extraction(decode: Callable[..., np.ndarray], paths: Sequence[str], codec: str,
                       grid: Sequence[MelConfig], work_dir: str, repeats: int, threads: int,
                       cpu_clock: Callable[[], float]) -> tuple[dict[str, Any], str]:
    """Per-clip extraction of every base of ``grid`` (the worker's whole per-clip work).

    Per clip and repeat: ``extraction.extract_clip`` (decode at each sr, base mels, serialize;
    the decode share timed inside), ``extraction.stage_clip``; per repeat ``write_shard`` of all
    clips (divided by the clips). Then ``finalize`` makes it a dataset directory. Besides wall
    time, ``cpu_clock`` (this process + the decoder's CPU seconds) gives the CPU cost, which
    other load on the machine changes much less.

    Returns:
      ({extract_s, decode_in_extract_s, compute_s, stage_s, shard_s, cpu_extract_stage_s,
        cpu_shard_s (summaries), total_s_per_clip, total_cpu_s_per_clip, bytes_per_clip,
        examples_per_clip}, the dataset directory).
    """
    from threadpoolctl import threadpool_limits

    from tftag.extraction import extractor

    catalog = _catalog(os.path.basename(work_dir), paths)
    plan = extractor.ExtractionPlan(work_dir, tuple(grid), TAGS, mel_dtype=codec)
    extractor.prepare_output(plan, catalog, overwrite=True, retry_failed=False)
    decode_time = [0.0]

    def timed_decode(*args):
        start = time.perf_counter()
        out = decode(*args)
        decode_time[0] += time.perf_counter() - start
        return out

    s: dict[str, list[float]] = {k: [] for k in ("extract", "decode", "compute", "stage", "shard",
                                                 "cpu_extract_stage", "cpu_shard")}
    n_records = 0
    with threadpool_limits(limits=threads):
        for _ in range(repeats):
            for clip in catalog.clips:
                decode_time[0] = 0.0
                cpu = cpu_clock()
                t_extract, (records, padded) = timed(
                    lambda: extractor.extract_clip(clip, LABELS, plan, timed_decode))
                t_stage, _ = timed(lambda: extractor.stage_clip(plan, clip, records, padded))
                s["cpu_extract_stage"].append(cpu_clock() - cpu)
                s["extract"].append(t_extract)
                s["decode"].append(decode_time[0])
                s["compute"].append(t_extract - decode_time[0])
                s["stage"].append(t_stage)
                n_records = len(records)
            cpu = cpu_clock()
            t_shard, _ = timed(lambda: extractor.write_shard(
                plan, "train", 0, 1, [c.clip_id for c in catalog.clips]))
            s["shard"].append(t_shard / len(catalog.clips))
            s["cpu_shard"].append((cpu_clock() - cpu) / len(catalog.clips))
    extractor.finalize(plan, catalog, source={"benchmark": "scale"})
    from tftag.storage import data

    shard_bytes = sum(os.path.getsize(p) for b in plan.bases for p in data.shard_files(work_dir, b))
    total = statistics.median(s["extract"]) + statistics.median(s["stage"]) \
        + statistics.median(s["shard"])
    out = {f"{k}_s": summary(v) for k, v in s.items()}
    out["decode_in_extract_s"] = out.pop("decode_s")
    out["total_s_per_clip"] = round(total, 5)
    out["total_cpu_s_per_clip"] = round(statistics.median(s["cpu_extract_stage"])
                                        + statistics.median(s["cpu_shard"]), 5)
    out["bytes_per_clip"] = shard_bytes / len(catalog.clips)
    out["examples_per_clip"] = n_records
    return out, work_dir


def measure_runners(paths: Sequence[str], grid: Sequence[MelConfig], work_dir: str,
                    workers: int) -> dict[str, Any]:
    """tftag's Beam pipeline on ``paths`` (all of ``grid``): DirectRunner in this process, then
    a Dask LocalCluster of 1 and of ``workers`` worker processes. Each is timed cold (a fresh
    run: TensorFlow's first ops and each worker's Essentia child start, ~4 s per worker) and
    then warm (a second run on the same processes): the warm runs give the steady-state
    throughput a long job sees. Parallel efficiency = (T1 / TN) / N of the warm Dask runs.

    Returns:
      {clips, workers, seconds and seconds_per_clip: {direct_1, dask_1, dask_N} (warm),
       cold_seconds (first runs), speedup, efficiency, dask_overhead (warm dask_1 / direct_1),
       same_shards (every run's shards byte-equal)}.
    """
    import hashlib

    from distributed import Client

    from tftag.extraction import extractor, pipeline

    catalog = _catalog("runners", paths)
    runs = [("direct_1", "DirectRunner", 1), ("dask_1", "DaskRunner", 1),
            (f"dask_{workers}", "DaskRunner", workers)]
    seconds, cold, digests = {}, {}, {}
    for key, runner, n in runs:
        cluster = (pipeline.dask_cluster(None, n) if runner == "DaskRunner"
                   else contextlib.nullcontext(None))
        with cluster as address:
            if address:
                with Client(address) as client:  # import tftag (and TensorFlow) in every worker
                    client.run(importlib.import_module, "tftag.extraction.pipeline")
            options = pipeline.pipeline_options(runner, 1, dask_address=address)
            for phase in ("cold", "warm"):
                out = os.path.join(work_dir, f"{key}-{phase}")
                plan = extractor.ExtractionPlan(out, tuple(grid), TAGS)
                extractor.prepare_output(plan, catalog, overwrite=True, retry_failed=False)
                logging.info("pipeline on %s with %d worker(s), %s: %d clips (load %s)", runner,
                             n, phase, len(paths), load_average())
                started = time.perf_counter()
                pipeline.run(plan, catalog, options, runner, log_every=10**6)
                (cold if phase == "cold" else seconds)[key] = round(
                    time.perf_counter() - started, 3)
                digests[f"{key}-{phase}"] = hashlib.sha256(b"".join(
                    open(f, "rb").read()
                    for f in sorted(glob.glob(os.path.join(out, "*", "*.tfrecord"))))).hexdigest()
    speedup = seconds["dask_1"] / seconds[f"dask_{workers}"]
    return {"clips": len(paths), "workers": workers, "seconds": seconds, "cold_seconds": cold,
            "seconds_per_clip": {k: round(v / len(paths), 4) for k, v in seconds.items()},
            "speedup": round(speedup, 3), "efficiency": round(speedup / workers, 3),
            "dask_overhead": round(seconds["dask_1"] / seconds["direct_1"], 3),
            "same_shards": len(set(digests.values())) == 1}


def storage_model(grid: Sequence[MelConfig], measured_bytes: dict[str, float]) -> dict[str, Any]:
    """Bytes per clip of the base layout (measured shard bytes) vs materialised views per codec.

    The materialised layout stores each view of ``grid`` as its own Example: its values at the
    codec's bytes per value plus the per-Example overhead measured in the base layout (proto
    fields, labels, TFRecord framing).
    """
    from tftag.storage import codecs

    bases = sorted({c.base for c in grid}, key=lambda b: (b.sr, -b.n_mels))
    base_values = sum(b.n_frames * b.n_mels for b in bases)
    view_values = sum(c.n_frames * c.n_mels for c in grid)
    out = {"bases": len(bases), "views": len(grid), "base_values_per_clip": base_values,
           "view_values_per_clip": view_values, "codecs": {}}
    for name, measured in measured_bytes.items():
        bpv = codecs.get(name).bytes_per_value
        overhead = (measured - base_values * bpv) / len(bases)
        materialised = view_values * bpv + overhead * len(grid)
        out["codecs"][name] = {
            "bytes_per_value": bpv,
            "base_layout_bytes_per_clip": round(measured, 1),
            "base_layout_value_bytes_per_clip": base_values * bpv,
            "overhead_bytes_per_example": round(overhead, 1),
            "materialised_bytes_per_clip": round(materialised, 1),
            "materialised_value_bytes_per_clip": view_values * bpv,
            "materialised_over_base": round(materialised / measured, 4),
        }
    f32 = out["codecs"].get("float32")
    if f32:
        for entry in out["codecs"].values():
            entry["base_over_float32_base"] = round(
                entry["base_layout_bytes_per_clip"] / f32["base_layout_bytes_per_clip"], 4)
    return out


def measure_read_derive(dataset_dir: str, codec: str, views: Sequence[MelConfig],
                        repeats: int) -> dict[str, Any]:
    """Per-clip seconds to get a view from the base layout.

    ``numpy_s``: codec decode of a stored base's bytes + :func:`tftag.features.derive` (what a
    reader does after I/O); ``read_examples_s``: :func:`tftag.storage.data.read_examples` over the
    dataset (TFRecord I/O, eager parse, decode, derive), divided by the clips.
    """
    import tensorflow as tf

    from tftag.storage import codecs, data

    codec_obj = codecs.get(codec)
    out = {}
    for view in views:
        record = next(iter(tf.data.TFRecordDataset(data.shard_files(dataset_dir, view, "train"))))
        feats = tf.train.Example.FromString(record.numpy()).features.feature
        raw = feats["mel"].bytes_list.value[0]
        shape = tuple(feats["shape"].int64_list.value)
        numpy_s = [timed(lambda: np.ascontiguousarray(
            features.derive(codec_obj.decode(raw, shape), view)))[0] for _ in range(5 * repeats)]
        per_clip = []
        for _ in range(repeats):
            t, rows = timed(lambda: list(data.read_examples(dataset_dir, view, "train")))
            per_clip.append(t / len(rows))
        out[view.name] = {"numpy_s": summary(numpy_s, 6), "read_examples_s": summary(per_clip, 6)}
    return out


def measure_pipeline(dataset_dir: str, config: MelConfig, patch_frames: int | None,
                     batch_size: int, seconds: float) -> float:
    """Examples/s of ``tftag.storage.data.make_dataset`` as training reads it (shuffled, repeating)."""
    from tftag.storage import data

    ds = data.make_dataset(dataset_dir, config, "train", batch_size, patch_frames,
                           shuffle_buffer=64, seed=0, repeat=True, drop_remainder=True)
    it = iter(ds)
    for _ in range(2):
        next(it)
    batches, start = 0, time.perf_counter()
    while batches < 3 or time.perf_counter() - start < seconds:
        next(it)
        batches += 1
    return batches * batch_size / (time.perf_counter() - start)


def measure_training(spec: TrainSpec, width: float, duration: float, steps: int,
                     warmup: int) -> dict[str, Any]:
    """Examples/s of real training steps (the step of :mod:`tftag.train`) on random input."""
    import keras
    import tensorflow as tf

    from tftag import profile, train
    from tftag.models import ModelConfig, build

    keras.backend.clear_session()
    gc.collect()
    config = MelConfig.from_name(spec.resolution, duration)
    model_config = ModelConfig(spec.model, width=width, patch_seconds=spec.patch_seconds)
    frames = model_config.n_frames(config)
    model = build(model_config, config, N_TAGS)
    optimizer = keras.optimizers.Adam(1e-3)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((spec.batch_size, frames, config.n_mels)), tf.float32)
    y = tf.constant(rng.random((spec.batch_size, N_TAGS)) < 0.06, tf.float32)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.nn.compute_average_loss(train.per_example_loss(y, model(x, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    warm = [timed(lambda: step(x, y).numpy())[0] for _ in range(warmup)]
    cpu_start = process_cpu_seconds()
    times = [timed(lambda: step(x, y).numpy())[0] for _ in range(steps)]
    cpu = process_cpu_seconds() - cpu_start
    out = {"model": spec.model, "resolution": config.name, "label": spec.label(duration),
           "input_shape": [frames, config.n_mels], "batch_size": spec.batch_size,
           "patch_seconds": spec.patch_seconds, "width": width,
           "gmacs_per_example": round(profile.analytic_macs(model) / 1e9, 4),
           "params": int(profile.param_count(model)), "warmup_s": [round(t, 3) for t in warm],
           "step_s": summary(times, 4),
           "examples_per_s": round(spec.batch_size / statistics.median(times), 3),
           "cores_busy": round(cpu / sum(times), 2),
           "cpu_seconds_per_example": round(cpu / (steps * spec.batch_size), 4),
           "load_average": load_average()}
    del model, optimizer
    keras.backend.clear_session()
    gc.collect()
    return out


# ----------------------------------------------------------------------------- projections


def extraction_hours(seconds_per_clip: float, clips: int, workers: int, efficiency: float) -> float:
    """Wall hours of ``clips`` on ``workers`` single-core workers: c·clips / (N·e), where e is
    ``efficiency`` for N > 1 and 1 for N = 1."""
    return seconds_per_clip * clips / (workers * (1.0 if workers == 1 else efficiency)) / 3600


def project(measured: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """MSD-scale extraction time, storage and CPU training time from the measured inputs."""
    runners = measured.get("runners")
    if settings.parallel_efficiency is not None:
        efficiency, source = settings.parallel_efficiency, "given (--parallel_efficiency)"
    elif runners:
        efficiency = runners["efficiency"]
        source = (f"measured: DaskRunner LocalCluster, {runners['workers']} vs 1 worker on "
                  f"{runners['clips']} clips of this machine")
    else:
        efficiency, source = settings.assumed_efficiency, "assumed"
    extraction = {}
    for key, m in measured["extraction"].items():
        extraction[key] = {
            "seconds_per_clip": m["total_s_per_clip"],
            "cpu_seconds_per_clip": m["total_cpu_s_per_clip"],
            "wall_hours": {str(n): round(extraction_hours(
                m["total_s_per_clip"], settings.num_clips, n, efficiency), 4)
                for n in settings.workers},
            "wall_hours_cpu_basis": {str(n): round(extraction_hours(
                m["total_cpu_s_per_clip"], settings.num_clips, n, efficiency),
                4) for n in settings.workers},
        }
    storage = {}
    for name, s in measured["storage"]["codecs"].items():
        base = s["base_layout_bytes_per_clip"] * settings.num_clips / GB
        mat = s["materialised_bytes_per_clip"] * settings.num_clips / GB
        storage[name] = {"base_layout_gb": round(base, 2), "materialised_gb": round(mat, 2),
                         "materialised_over_base": round(mat / base, 4)}
    training = {}
    for row in measured["training"]:
        epoch_h = settings.train_clips / row["examples_per_s"] / 3600
        entry = {"label": row["label"], "examples_per_s": row["examples_per_s"],
                 "epoch_hours_cpu": round(epoch_h, 3),
                 "run_hours_cpu": round(epoch_h * settings.epochs, 2),
                 "epoch_core_hours": round(
                     settings.train_clips * row["cpu_seconds_per_example"] / 3600, 3)}
        pipe = row.get("pipeline_examples_per_s")
        if pipe:
            entry["pipeline_epoch_hours"] = round(settings.train_clips / pipe / 3600, 4)
        training[f"{row['model']}:{row['resolution']}"] = entry
    return {
        "num_clips": settings.num_clips, "train_clips": settings.train_clips,
        "workers": list(settings.workers), "parallel_efficiency": efficiency,
        "parallel_efficiency_source": source,
        "epochs": settings.epochs,
        "assumptions": [
            "extraction: every worker is one single-core process like the one measured "
            f"(BLAS threads {settings.extraction_threads}); wall = seconds_per_clip x clips / "
            f"(N x {efficiency}) for N > 1 (efficiency 1 for N = 1; {source}); shared "
            "storage, scheduling and the final dataset.json pass are not modelled",
            "seconds_per_clip = extract_clip (2 decodes + 14 bases + serialize) + staging + "
            "shard writing, the per-clip work of tftag's Beam pipeline; wall_hours_cpu_basis "
            "uses the CPU seconds per clip (this process + the decoder process) instead, which "
            "other load on the machine inflates much less than the wall time",
            "storage: GB = 1e9 bytes; base layout = the measured shard bytes per clip; "
            "materialised = all 168 views stored separately at the codec's bytes per value plus "
            "the measured per-Example overhead",
            f"training: one epoch = {settings.train_clips:,} training clips (one example each; "
            "MUSICNN: one 3-s patch per clip) at the measured examples/s of this CPU, model "
            "width as measured; validation/evaluation time not included; epoch_core_hours = "
            "CPU seconds per example x clips (core-hours, less sensitive to other load)",
            GPU_NOTE,
        ],
        "extraction": extraction, "storage": storage, "training": training,
    }


# ----------------------------------------------------------------------------- reports


def _fmt(value: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, thousands separated."""
    if value == 0:
        return "0"
    magnitude = int(np.floor(np.log10(abs(value))))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def markdown(result: dict[str, Any]) -> str:
    """projection.md: measured inputs beside the MSD projections."""
    m, p, mach = result["measured"], result["projection"], result["machine"]
    n, workers = p["num_clips"], p["workers"]
    lines = [
        f"# Cost at MSD scale ({n:,} clips)",
        "",
        f"Measured {result['created']} on {mach['cpu_model']} ({mach['cpu_count']} CPUs, "
        f"{mach['memory_gib']} GiB, GPUs: {mach['gpus']}), shared with other work: load average "
        f"{mach['load_average_start']} at the start, {mach['load_average_end']} at the end, "
        f"max 1-min {result['load_average_max_1min']}. tftag {mach['versions']['tftag']}, "
        f"TensorFlow {mach['versions']['tensorflow']}, Keras {mach['versions']['keras']}, "
        f"Essentia {mach['versions']['essentia']}. Medians of {m['measure_clips']} clips × "
        f"{m['repeats']} repeats; audio: "
        + "; ".join(f"{f} {a['kbps']} kbps {a['sr']} Hz {a['channels']} ch {a['seconds']} s"
                    for f, a in m["audio"].items()) + ".",
        "",
        f"## Extraction of all {m['storage']['views']} views ({m['storage']['bases']} stored "
        "bases per clip)",
        "",
    ]
    header = ["audio", "codec", "decode 12 kHz s", "decode 16 kHz s", "decode native s",
              "extract_clip s", "+ stage + shard s/clip", "CPU s/clip"] + [
                  f"{w} worker{'s' if w > 1 else ''} h" for w in workers]
    rows = []
    for key, e in m["extraction"].items():
        fmt, codec = key.split("/")
        dec = m["decode"][fmt]
        proj = p["extraction"][key]
        rows.append([fmt, codec, _fmt(dec["12000"]["median"]), _fmt(dec["16000"]["median"]),
                     _fmt(dec["native"]["median"]), _fmt(e["extract_s"]["median"]),
                     _fmt(e["total_s_per_clip"]), _fmt(e["total_cpu_s_per_clip"])]
                    + [_fmt(proj["wall_hours"][str(w)]) for w in workers])
    lines += _table(header, rows)
    primary = f"{m['primary_format']}/{m['primary_codec']}"
    cpu_basis = ", ".join(f"{w}: {_fmt(h)} h" for w, h in
                          p["extraction"][primary]["wall_hours_cpu_basis"].items())
    lines += ["", f"Wall hours = s/clip (wall, the `+ stage + shard` column) × {n:,} / (N × "
              f"{p['parallel_efficiency']}) for N > 1 single-core workers (no efficiency loss "
              "at N = 1). extract_clip = 2 decodes (one per sample rate) + 14 hop-1 power bases "
              "+ serialize; decode = the pipeline's Essentia child process (MonoLoader: decode, "
              "downmix, resample; native = no resampling). CPU s/clip = CPU seconds of this "
              "process + the decoder, less inflated by the other load than the wall time; on "
              f"that basis {primary} takes {cpu_basis}. Efficiency: "
              f"{p['parallel_efficiency_source']}.", ""]
    runners = m.get("runners")
    if runners:
        n_w, sec = runners["workers"], runners["seconds_per_clip"]
        cold = runners.get("cold_seconds", {})
        lines += [f"tftag's Beam pipeline on {runners['clips']} of these clips (warm: a second "
                  "run on the same processes; cold first runs took "
                  + ", ".join(f"{k} {_fmt(v)} s" for k, v in cold.items())
                  + f"): DirectRunner (1 process) {_fmt(sec['direct_1'])} s/clip, DaskRunner 1 worker "
                  f"{_fmt(sec['dask_1'])} s/clip, {n_w} workers {_fmt(sec[f'dask_{n_w}'])} "
                  f"s/clip: speed-up {runners['speedup']}× on {n_w} workers, efficiency "
                  f"{runners['efficiency']} (workers, scheduler, client and decoders share this "
                  f"machine's {mach['cpu_count']} CPUs); shards byte-equal across the runs: "
                  f"{'yes' if runners['same_shards'] else 'NO'}.", ""]
    lines += ["## Storage of all 168 resolutions", ""]
    header = ["codec", "base layout B/clip (measured)", "materialised B/clip", "ratio",
              f"base layout GB ({n:,} clips)", "materialised GB"]
    rows = []
    for name, s in m["storage"]["codecs"].items():
        rows.append([name, f"{s['base_layout_bytes_per_clip']:,.0f}",
                     f"{s['materialised_bytes_per_clip']:,.0f}",
                     f"{s['materialised_over_base']:.2f}×",
                     f"{p['storage'][name]['base_layout_gb']:,.0f}",
                     f"{p['storage'][name]['materialised_gb']:,.0f}"])
    lines += _table(header, rows)
    lines += ["", "Base layout: the 14 hop-1 power mels per clip tftag stores (shard files as "
              "written); every hop and compression is derived on read. Materialised: each of "
              "the 168 views stored separately at the codec's bytes per value (plus the same "
              "per-Example overhead). GB = 1e9 bytes.", "",
              f"## Training on this CPU ({p['train_clips']:,} training clips per epoch, "
              f"{p['epochs']} epochs)", ""]
    header = ["model", "resolution", "input", "batch", "GMAC/ex", "train ex/s (measured)",
              "core-s/ex", "make_dataset ex/s", "derive ms/clip", "read_examples ms/clip",
              "epoch h (CPU)", f"{p['epochs']} epochs h (CPU)", "epoch core-h"]
    rows = []
    for row in m["training"]:
        key = f"{row['model']}:{row['resolution']}"
        rd = m["read_derive"].get(m["primary_codec"], {}).get(row["resolution"])
        pipe = row.get("pipeline_examples_per_s")
        rows.append([row["label"], row["resolution"],
                     "×".join(map(str, row["input_shape"])) + (
                         f" ({row['patch_seconds']:g}-s patch)" if row["patch_seconds"] else ""),
                     row["batch_size"], _fmt(row["gmacs_per_example"]),
                     _fmt(row["examples_per_s"]), _fmt(row["cpu_seconds_per_example"]),
                     _fmt(pipe) if pipe else "",
                     _fmt(rd["numpy_s"]["median"] * 1000) if rd else "",
                     _fmt(rd["read_examples_s"]["median"] * 1000) if rd else "",
                     _fmt(p["training"][key]["epoch_hours_cpu"]),
                     _fmt(p["training"][key]["run_hours_cpu"]),
                     _fmt(p["training"][key]["epoch_core_hours"])])
    lines += _table(header, rows)
    lines += ["", f"Train ex/s: median of {m['train_steps']} real train steps (forward, backward, "
              f"Adam) after {m['warmup_steps']} warm-up (the process kept "
              f"{', '.join(str(r['cores_busy']) for r in m['training'])} cores busy on average "
              "in the timed steps), model width "
              f"{m['training'][0]['width'] if m['training'] else ''} (the paper's), random input; "
              "batch sizes small for large inputs to bound memory. make_dataset ex/s: the "
              f"training input pipeline alone ({m['primary_codec']} base layout, shuffled, "
              "repeating, page-cached). derive: NumPy codec decode of one stored base's bytes + "
              "decimate + compress; read_examples: tftag.storage.data.read_examples per clip (TFRecord "
              "read, eager parse, decode, derive).", "", f"**{GPU_NOTE}**", ""]
    return "\n".join(lines)


def csv_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """projection.csv: one row per figure (kind, section, item, metric, value, unit)."""
    m, p = result["measured"], result["projection"]
    rows = []

    def add(kind, section, item, metric, value, unit):
        rows.append({"kind": kind, "section": section, "item": item, "metric": metric,
                     "value": value, "unit": unit})

    for fmt, by_key in m["decode"].items():
        for key, s in by_key.items():
            cpu = key.startswith("cpu_")
            add("measured", "decode", f"{fmt}/{key.removeprefix('cpu_')}",
                "cpu_seconds_per_clip" if cpu else "seconds_per_clip", s["median"], "s")
    for key, e in m["extraction"].items():
        for part in ("extract_s", "decode_in_extract_s", "compute_s", "stage_s", "shard_s",
                     "cpu_extract_stage_s", "cpu_shard_s"):
            add("measured", "extraction", key, part[:-2] + "_seconds_per_clip",
                e[part]["median"], "s")
        add("measured", "extraction", key, "total_seconds_per_clip", e["total_s_per_clip"], "s")
        add("measured", "extraction", key, "total_cpu_seconds_per_clip",
            e["total_cpu_s_per_clip"], "s")
        proj = p["extraction"][key]
        for w, h in proj["wall_hours"].items():
            add("projection", "extraction", key, f"wall_hours_{w}_workers", h, "h")
        for w, h in proj["wall_hours_cpu_basis"].items():
            add("projection", "extraction", key, f"wall_hours_{w}_workers_cpu_basis", h, "h")
    for name, s in m["storage"]["codecs"].items():
        add("measured", "storage", name, "base_layout_bytes_per_clip",
            s["base_layout_bytes_per_clip"], "B")
        add("measured", "storage", name, "materialised_bytes_per_clip",
            s["materialised_bytes_per_clip"], "B")
        for metric in ("base_layout_gb", "materialised_gb"):
            add("projection", "storage", name, metric, p["storage"][name][metric], "GB")
    for codec, views in m["read_derive"].items():
        for view, r in views.items():
            add("measured", "read_derive", f"{codec}/{view}", "numpy_seconds_per_clip",
                r["numpy_s"]["median"], "s")
            add("measured", "read_derive", f"{codec}/{view}", "read_examples_seconds_per_clip",
                r["read_examples_s"]["median"], "s")
    for codec, per in m["pipeline"].items():
        for res, eps in per.items():
            add("measured", "pipeline", f"{codec}/{res}", "examples_per_s", eps, "1/s")
    for row in m["training"]:
        key = f"{row['model']}:{row['resolution']}"
        add("measured", "training", key, "examples_per_s", row["examples_per_s"], "1/s")
        add("measured", "training", key, "cpu_seconds_per_example",
            row["cpu_seconds_per_example"], "s")
        for metric in ("epoch_hours_cpu", "run_hours_cpu", "epoch_core_hours"):
            add("projection", "training", key, metric, p["training"][key][metric], "h")
    return rows


# ----------------------------------------------------------------------------- the run


def run(settings: Settings, out_dir: str, work_dir: str | None = None) -> dict[str, Any]:
    """Measures, projects and writes scale.json, projection.md and projection.csv to ``out_dir``.

    Returns:
      The scale.json dictionary.
    """
    from tftag.audio import _essentia
    from tftag.runs import runfiles
    from tftag.models import ModelConfig

    started = time.monotonic()
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    loads = [load_average()]
    machine = machine_info()
    machine["load_average_start"] = loads[0]
    logging.info("load average %s; %s CPUs", loads[0], machine["cpu_count"])
    grid = MelConfig.paper_grid(settings.duration)
    views = sorted({MelConfig.from_name(t.resolution, settings.duration) for t in settings.train},
                   key=lambda c: (c.sr, -c.n_mels, c.hop_factor))
    primary_codec = settings.codecs[0]
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp, \
            _essentia.EssentiaWorker(timeout=300.0) as worker:
        def decode(path: str, sr: int, *segment) -> np.ndarray:
            return worker.call("load_audio", path, sr, *segment)

        def cpu_clock() -> float:
            # This process + the decoder child.
            child = worker.pid
            return process_cpu_seconds() + (process_cpu_seconds(child) if child else 0.0)

        if settings.audio_dir:
            paths = given_clips(settings.audio_dir, settings.measure_clips)
        else:
            logging.info("writing %d clips of %.0f s as %s", settings.measure_clips,
                         settings.clip_seconds, ", ".join(settings.formats))
            paths = write_clips(tmp, settings.measure_clips, settings.clip_seconds,
                                settings.formats)
        formats = list(paths)
        for sr in features.PAPER_SRS:  # start the worker, warm filterbanks and the window
            features.base_mels(features.crop(decode(paths[formats[0]][0], sr), sr).audio, sr,
                               features.PAPER_N_MELS)
        logging.info("decode timings (load %s)", load_average())
        decode_s = measure_decode(decode, paths, settings.repeats, cpu_clock)
        loads.append(load_average())

        extraction, datasets = {}, {}
        for fmt in formats:
            for codec in (settings.codecs if fmt == formats[0] else settings.codecs[:1]):
                logging.info("extraction %s/%s: %d clips × %d repeats (load %s)", fmt, codec,
                             len(paths[fmt]), settings.repeats, load_average())
                extraction[f"{fmt}/{codec}"], ds = measure_extraction(
                    decode, paths[fmt], codec, grid, os.path.join(tmp, f"{fmt}-{codec}"),
                    settings.repeats, settings.extraction_threads, cpu_clock)
                if fmt == formats[0]:
                    datasets[codec] = ds
                loads.append(load_average())
        storage = storage_model(grid, {c: extraction[f"{formats[0]}/{c}"]["bytes_per_clip"]
                                       for c in settings.codecs})
        runners = None
        if settings.runner_workers:
            if settings.audio_dir:
                runner_paths = given_clips(settings.audio_dir, settings.runner_clips)[formats[0]]
            else:
                runner_dir = os.path.join(tmp, "runner-audio")
                os.makedirs(runner_dir)
                runner_paths = write_clips(runner_dir, settings.runner_clips,
                                           settings.clip_seconds, formats[:1])[formats[0]]
            runners = measure_runners(runner_paths, grid, os.path.join(tmp, "runners"),
                                      settings.runner_workers)
            logging.info("runners: %s", runners)
            loads.append(load_average())

        logging.info("read + derive and input pipeline (load %s)", load_average())
        read_derive = {c: measure_read_derive(datasets[c], c, views, settings.repeats)
                       for c in settings.codecs}
        pipeline: dict[str, dict[str, float]] = {c: {} for c in settings.codecs}
        for spec in settings.train:
            config = MelConfig.from_name(spec.resolution, settings.duration)
            patch = ModelConfig(spec.model, patch_seconds=spec.patch_seconds).patch_frames(config)
            key = config.name + (f"-patch{patch}" if patch else "")
            for codec in settings.codecs:
                if key not in pipeline[codec]:
                    pipeline[codec][key] = round(measure_pipeline(
                        datasets[codec], config, patch, 32, settings.pipeline_seconds), 1)
        loads.append(load_average())

        training = []
        for spec in settings.train:
            logging.info("training %s %s batch %d (load %s)", spec.model, spec.resolution,
                         spec.batch_size, load_average())
            row = measure_training(spec, settings.width, settings.duration, settings.train_steps,
                                   settings.warmup_steps)
            config = MelConfig.from_name(spec.resolution, settings.duration)
            patch = ModelConfig(spec.model, patch_seconds=spec.patch_seconds).patch_frames(config)
            pipe = pipeline[primary_codec].get(config.name + (f"-patch{patch}" if patch else ""))
            row["pipeline_examples_per_s"] = pipe
            row["pipeline_headroom"] = round(pipe / row["examples_per_s"], 2) if pipe else None
            logging.info("  %.3f examples/s", row["examples_per_s"])
            training.append(row)
            loads.append(row["load_average"])
        audio = audio_info(paths)

    loads.append(load_average())
    machine["load_average_end"] = loads[-1]
    measured = {
        "measure_clips": settings.measure_clips, "repeats": settings.repeats,
        "train_steps": settings.train_steps, "warmup_steps": settings.warmup_steps,
        "extraction_threads": settings.extraction_threads, "duration": settings.duration,
        "primary_format": formats[0], "primary_codec": primary_codec,
        "audio": audio, "decode": decode_s, "extraction": extraction, "runners": runners,
        "storage": storage, "read_derive": read_derive, "pipeline": pipeline,
        "training": training,
    }
    result = {
        "benchmark": "scale", "created": created,
        "settings": dataclasses.asdict(settings),
        "machine": machine, "load_averages": loads,
        "load_average_max_1min": max(l[0] for l in loads),
        "measured": measured,
        "projection": project(measured, settings),
        "gpu": "not measured",
        "seconds": round(time.monotonic() - started, 1),
    }
    os.makedirs(out_dir, exist_ok=True)
    runfiles.write_json_atomic(os.path.join(out_dir, "scale.json"), result)
    runfiles.write_text_atomic(os.path.join(out_dir, "projection.md"), markdown(result))
    rows = csv_rows(result)
    runfiles.write_csv_atomic(os.path.join(out_dir, "projection.csv"), rows, list(rows[0]))
    return result


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The one JSON line printed: the main figures and ratios."""
    m, p = result["measured"], result["projection"]
    key = f"{m['primary_format']}/{m['primary_codec']}"
    storage = p["storage"]
    f32 = m["storage"]["codecs"].get("float32")
    return {
        "benchmark": "scale", "num_clips": p["num_clips"], "seconds": result["seconds"],
        "load_average_max_1min": result["load_average_max_1min"],
        "cpu_count": result["machine"]["cpu_count"],
        "extraction_s_per_clip": {k: e["total_s_per_clip"] for k, e in m["extraction"].items()},
        "extraction_cpu_s_per_clip": {k: e["total_cpu_s_per_clip"]
                                      for k, e in m["extraction"].items()},
        "decode_s_per_clip": {f: {k: s["median"] for k, s in d.items() if not k.startswith("cpu_")}
                              for f, d in m["decode"].items()},
        "decode_share_of_extraction": round(
            m["extraction"][key]["decode_in_extract_s"]["median"]
            / m["extraction"][key]["total_s_per_clip"], 3),
        "extraction_wall_hours": p["extraction"][key]["wall_hours"],
        "storage_gb": {c: [s["base_layout_gb"], s["materialised_gb"]] for c, s in storage.items()},
        "materialised_over_base": {c: s["materialised_over_base"] for c, s in storage.items()},
        "codec_over_float32": ({c: s["base_over_float32_base"]
                                for c, s in m["storage"]["codecs"].items()} if f32 else None),
        "train_examples_per_s": {k: t["examples_per_s"] for k, t in p["training"].items()},
        "epoch_hours_cpu": {k: t["epoch_hours_cpu"] for k, t in p["training"].items()},
        "gpu": "not measured",
    }


# ----------------------------------------------------------------------------- entry point


def define_flags() -> None:
    """The benchmark's flags (defined only when it runs as a program)."""
    flags.DEFINE_bool("quick", False, "A <= 1-minute smoke run: 1 clip, 1 repeat, one small "
                      "training configuration, 1 timed step (figures are rough).")
    flags.DEFINE_string("out_dir", DEFAULT_OUT_DIR, "Where scale.json, projection.md and "
                        "projection.csv are written.")
    flags.DEFINE_string("work_dir", None, "Parent of the temporary audio and datasets (default: "
                        "the system temp directory).")
    flags.DEFINE_integer("measure_clips", 3, "Clips measured (medians over them).", lower_bound=1)
    flags.DEFINE_integer("repeats", 3, "Timing repetitions per clip.", lower_bound=1)
    flags.DEFINE_float("clip_seconds", 30.0, "Seconds of the generated clips (MSD: 30).")
    flags.DEFINE_list("formats", ["mp3", "wav"], "Generated formats; the first is the primary one.")
    flags.DEFINE_list("codecs", ["float32", "float16", "uint8"], "Storage codecs measured.")
    flags.DEFINE_string("audio_dir", None, "Measure these audio files instead (up to "
                        "--measure_clips per extension).")
    flags.DEFINE_list("train", list(DEFAULT_TRAIN), "Training configurations timed: "
                      "model:resolution:batch[:patch_seconds].")
    flags.DEFINE_float("width", 1.0, "Model width of the timed training (1 = the paper's).")
    flags.DEFINE_integer("train_steps", 3, "Timed training steps (median).", lower_bound=1)
    flags.DEFINE_integer("warmup_steps", 1, "Untimed training steps first.", lower_bound=1)
    flags.DEFINE_float("pipeline_seconds", 1.0, "Seconds of each timed input-pipeline loop.")
    flags.DEFINE_integer("extraction_threads", 1, "BLAS threads during extraction (1: one "
                         "single-core worker).", lower_bound=1)
    flags.DEFINE_integer("num_clips", MSD_CLIPS, "Clips of the projection (MSD: 241,904).",
                         lower_bound=1)
    flags.DEFINE_integer("train_clips", None, "Training clips per epoch; default: the paper's "
                         "MSD share 201,680 / 241,904 of --num_clips.", lower_bound=1)
    flags.DEFINE_list("workers", ["1", "8", "32", "128"], "Worker counts of the extraction "
                      "projection.")
    flags.DEFINE_float("parallel_efficiency", None, "Parallel efficiency of N > 1 extraction "
                       "workers; default: the one measured on the DaskRunner (--runner_workers), "
                       "else 0.9.", lower_bound=0.01, upper_bound=1.0)
    flags.DEFINE_integer("runner_workers", 2, "Measure tftag's Beam pipeline on the DirectRunner "
                         "and on Dask LocalClusters of 1 and this many workers (0 = skip).",
                         lower_bound=0)
    flags.DEFINE_integer("runner_clips", 16, "Clips of the runner measurement.", lower_bound=1)
    flags.DEFINE_integer("epochs", 20, "Training epochs of the projection (tftag's default "
                         "maximum).", lower_bound=1)


def settings_from_flags() -> Settings:
    """The :class:`Settings` of the command line (``--quick`` overrides the measuring sizes)."""
    FLAGS = flags.FLAGS
    workers = tuple(int(w) for w in FLAGS.workers)
    if not workers or min(workers) < 1:
        raise app.UsageError(f"--workers must be positive integers, got {FLAGS.workers}")
    train_clips = FLAGS.train_clips or round(FLAGS.num_clips * MSD_TRAIN_CLIPS / MSD_CLIPS)
    quick = dict(measure_clips=1, repeats=1, train=tuple(TrainSpec.parse(s) for s in QUICK_TRAIN),
                 runner_workers=0,
                 train_steps=1, warmup_steps=1, pipeline_seconds=0.3) if FLAGS.quick else {}
    return Settings(**{
        "measure_clips": FLAGS.measure_clips, "repeats": FLAGS.repeats,
        "clip_seconds": FLAGS.clip_seconds, "formats": tuple(FLAGS.formats),
        "codecs": tuple(FLAGS.codecs), "audio_dir": FLAGS.audio_dir,
        "train": tuple(TrainSpec.parse(s) for s in FLAGS.train), "width": FLAGS.width,
        "train_steps": FLAGS.train_steps, "warmup_steps": FLAGS.warmup_steps,
        "pipeline_seconds": FLAGS.pipeline_seconds,
        "extraction_threads": FLAGS.extraction_threads, "num_clips": FLAGS.num_clips,
        "train_clips": train_clips, "workers": workers,
        "parallel_efficiency": FLAGS.parallel_efficiency, "epochs": FLAGS.epochs,
        "runner_workers": FLAGS.runner_workers, "runner_clips": FLAGS.runner_clips,
        **quick,
    })


def main(argv):
    del argv
    settings = settings_from_flags()
    result = run(settings, flags.FLAGS.out_dir, flags.FLAGS.work_dir)
    logging.info("wrote %s/{scale.json,projection.md,projection.csv} in %.0f s",
                 flags.FLAGS.out_dir, result["seconds"])
    print(json.dumps(headline(result), sort_keys=True))


if __name__ == "__main__":
    define_flags()
    app.run(main)
