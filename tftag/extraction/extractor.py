"""Per-clip extraction and the dataset directory's staging, resume and finalisation logic.

Runner-agnostic: ``pipelines/extract.py`` wires these functions into an Apache Beam pipeline.

Crash safety: every clip's Examples go to ``_staging/clips/<key>.tfrecord`` (one atomic file
per clip, the done-list), every skipped clip to ``_staging/failed/<key>.json``. Shards are then
rebuilt from the staging files (idempotent, atomic renames) and ``dataset.json`` is written last,
so a run killed at any point resumes without missing, duplicate or half-written records.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
from typing import Callable, Iterable, Sequence

import numpy as np
from absl import logging

from tftag import features
from tftag.storage import codecs, data
from tftag.extraction import teacher as teacher_lib
from tftag.datasets import Catalog, Clip
from tftag.features import MelConfig

STAGING = "_staging"
PLAN_JSON = "plan.json"


class SharedStorageError(RuntimeError):
    """A worker cannot see the dataset directory the launcher prepared (not a shared filesystem)."""


def check_visible(plan: "ExtractionPlan") -> None:
    """Raises SharedStorageError unless this process sees the staging area of ``plan``.

    Workers on other hosts write staged clips and shards straight into ``plan.output_dir``, so
    it must be on a filesystem every worker mounts at the same path (NFS, Lustre, a FUSE mount).
    """
    if not os.path.isdir(os.path.join(plan.staging_dir, "clips")):
        import socket

        raise SharedStorageError(
            f"--output_dir={plan.output_dir} is not visible on worker host {socket.gethostname()}: "
            "it must be a directory every worker mounts at the same path (shared filesystem)")


class ClipRejected(ValueError):
    """A clip decoded but is unusable (too short, silent); the message is the reason."""


@dataclasses.dataclass(frozen=True)
class ExtractionPlan:
    """What to extract into one dataset directory.

    Attributes:
      output_dir: the dataset directory.
      configs: requested views (their (sr, n_mels) bases are what is stored).
      tags: the dataset's tag list.
      mel_dtype: storage codec of the base power mels (:mod:`tftag.storage.codecs`: float32, float16, uint8).
      clips_per_shard: target clips per TFRecord shard.
      min_duration: clips shorter than this many seconds are skipped.
      silence_threshold: clips whose peak |sample| is below this are skipped as silent.
      labels: "catalog" (the catalogue's tags) or "teacher:<name>" (:mod:`tftag.extraction.teacher`: hard
        and soft labels from a pretrained model; ``tags`` must then be the teacher's).
      teacher_top_k: teacher labels: tags per clip in the hard labels.
      teacher_memo: teacher labels: a memo file (.npz, :func:`tftag.extraction.teacher.read_memo`) read
        before the teacher runs and added to after; it changes no stored byte, so it is not
        part of the plan's identity.
    """

    output_dir: str
    configs: tuple[MelConfig, ...]
    tags: tuple[str, ...]
    mel_dtype: str = "float32"
    clips_per_shard: int = 256
    min_duration: float = 1.0
    silence_threshold: float = 1e-5
    labels: str = "catalog"
    teacher_top_k: int = 3
    teacher_memo: str | None = None

    def __post_init__(self):
        if not self.configs:
            raise ValueError("no mel configs requested")
        if teacher_lib.parse_labels(self.labels) and tuple(self.tags) != teacher_lib.tags():
            raise ValueError(f"labels={self.labels}: the tag list must be the teacher's 50 tags")
        codecs.get(self.mel_dtype)  # unknown names: ValueError listing the known ones
        if self.clips_per_shard < 1:
            raise ValueError(f"clips_per_shard must be >= 1, got {self.clips_per_shard}")
        if len({c.duration for c in self.configs}) != 1:
            raise ValueError("all mel configs of one dataset need the same duration")
        if self.teacher_memo and not self.teacher:
            raise ValueError(f"teacher_memo={self.teacher_memo} remembers teacher labels: it "
                             f"needs labels=teacher:<name>, got labels={self.labels}")

    @property
    def duration(self) -> float:
        """Crop length in seconds."""
        return self.configs[0].duration

    @property
    def bases(self) -> tuple[MelConfig, ...]:
        """Stored arrays: hop-1 power mels per (sr, n_mels), sr ascending, bands descending."""
        keys = sorted({(c.sr, c.n_mels) for c in self.configs}, key=lambda k: (k[0], -k[1]))
        return tuple(MelConfig(sr, m, 1, "power", self.duration) for sr, m in keys)

    @property
    def tags_version(self) -> str:
        """Hash of the tag list."""
        return data.tags_version(self.tags)

    def describe(self) -> dict:
        """The JSON-able identity of this plan (compared on resume)."""
        return {
            "views": [c.name for c in self.configs],
            "bases": [b.name for b in self.bases],
            "duration": self.duration,
            "mel_dtype": self.mel_dtype,
            "tags_version": self.tags_version,
            "clips_per_shard": self.clips_per_shard,
            "min_duration": self.min_duration,
            "silence_threshold": self.silence_threshold,
            **({"labels": self.labels, "teacher_top_k": self.teacher_top_k}
               if self.labels != "catalog" else {}),
        }

    @property
    def teacher(self) -> str | None:
        """The teacher's name, or None for catalogue labels."""
        return teacher_lib.parse_labels(self.labels)

    # Paths -----------------------------------------------------------------------------------
    @property
    def staging_dir(self) -> str:
        return os.path.join(self.output_dir, STAGING)

    def clip_key(self, clip_id: str) -> str:
        """File-name-safe key of a clip id."""
        return hashlib.sha1(clip_id.encode("utf-8")).hexdigest()

    @property
    def memo_staging_dir(self) -> str:
        """Teacher labels computed by this extraction, until the memo file takes them."""
        return os.path.join(self.staging_dir, "teacher_memo")

    def staged_path(self, clip_id: str) -> str:
        return os.path.join(self.staging_dir, "clips", self.clip_key(clip_id) + ".tfrecord")

    def failed_path(self, clip_id: str) -> str:
        return os.path.join(self.staging_dir, "failed", self.clip_key(clip_id) + ".json")

    def padded_marker(self, clip_id: str) -> str:
        return os.path.join(self.staging_dir, "padded", self.clip_key(clip_id))


Decoder = Callable[..., np.ndarray]  # decode(path, sr[, offset, duration]) -> mono float32


def extract_clip(
    clip: Clip, label_indices: Sequence[int], plan: ExtractionPlan, decode: Decoder,
    teacher=None,
) -> tuple[list[bytes], bool]:
    """Decodes one clip at every sample rate and serializes one Example per stored base.

    Args:
      clip: the clip.
      label_indices: indices of its tags in ``plan.tags``.
      plan: what to extract.
      decode: ``decode(path, sr) -> mono float32`` (e.g. :func:`tftag.features.load_audio`);
        segment clips call ``decode(path, sr, offset, duration)``.
      teacher: a :class:`tftag.extraction.teacher.Teacher` when ``plan.labels`` names one: its hard labels
        replace ``label_indices`` and its probabilities are stored as ``soft_labels``.

    Returns:
      (serialized Examples in ``plan.bases`` order, whether the clip was zero-padded).

    Raises:
      ClipRejected: too short or silent. Decoding errors propagate.
    """
    if plan.teacher and (teacher is None or teacher.name != plan.teacher):
        raise ValueError(f"labels={plan.labels} needs the {plan.teacher} teacher")
    by_sr = features.group_by_sr(plan.bases)
    crops = {}
    for sr in sorted(set(by_sr) | ({teacher_lib.SR} if plan.teacher else set())):
        audio = decode(clip.path, sr, *clip.segment) if clip.segment else decode(clip.path, sr)
        seconds = audio.size / sr
        if seconds < plan.min_duration:
            raise ClipRejected(
                f"too short: {seconds:.3f} s < min_duration {plan.min_duration} s"
            )
        peak = float(np.max(np.abs(audio)))
        if peak < plan.silence_threshold:
            raise ClipRejected(f"silent: peak {peak:.2e} < silence_threshold {plan.silence_threshold}")
        crops[sr] = features.crop(audio, sr, plan.duration)
    soft = None
    if plan.teacher:
        labels, soft = teacher.label(crops[teacher_lib.SR].audio, plan.duration)
    else:
        labels = data.multi_hot(label_indices, len(plan.tags))
    records: dict[str, bytes] = {}
    padded_any = False
    for sr, bases in by_sr.items():
        cropped = crops[sr]
        padded_any |= cropped.padded
        mels = features.base_mels(cropped.audio, sr, (b.n_mels for b in bases))
        for base in bases:
            records[base.name] = data.serialize_example(
                clip.clip_id, clip.split, mels[base.n_mels], base, labels, plan.tags_version,
                plan.mel_dtype, cropped.padded, soft,
            )
    return [records[b.name] for b in plan.bases], padded_any


def stage_clip(plan: ExtractionPlan, clip: Clip, records: Sequence[bytes], padded: bool) -> None:
    """Stores a clip's Examples atomically in the staging area (marks it done)."""
    if padded:
        data.write_bytes_atomic(plan.padded_marker(clip.clip_id), b"")
    data.write_tfrecord_atomic(plan.staged_path(clip.clip_id), records)


def stage_failure(plan: ExtractionPlan, record: dict) -> None:
    """Records a skipped clip atomically in the staging area."""
    data.write_json_atomic(plan.failed_path(record["clip_id"]), record)


def failure_record(clip: Clip, error: BaseException) -> dict:
    """The failures.jsonl entry of a skipped clip."""
    return {
        "clip_id": clip.clip_id,
        "path": clip.path,
        "split": clip.split,
        "error": type(error).__name__,
        "reason": str(error),
    }


# ----------------------------------------------------------------------------- staging


def prepare_output(plan: ExtractionPlan, catalog: Catalog, overwrite: bool, retry_failed: bool) -> str:
    """Checks the output directory against this plan before any work.

    A finished dataset of this plan whose shard files are missing or not the size dataset.json
    records (a stat of each, no hashing) is reopened: the bad shards and dataset.json are removed
    and the run rebuilds them.

    Returns:
      "complete" if the directory already holds this exact dataset, else "todo".

    Raises:
      FileExistsError: the directory holds a different dataset or run (use --overwrite).
      ValueError: ``plan.teacher_memo`` is not a memo of this teacher and crop duration.
    """
    if plan.teacher_memo:
        teacher_lib.read_memo(plan.teacher_memo, plan.teacher, plan.duration)
    identity = dict(plan.describe(), catalog=catalog.fingerprint())
    dataset_json = os.path.join(plan.output_dir, data.DATASET_JSON)
    plan_json = os.path.join(plan.staging_dir, PLAN_JSON)
    if overwrite:
        clear_output(plan.output_dir)
    elif os.path.exists(dataset_json):
        with open(dataset_json, encoding="utf-8") as f:
            existing = json.load(f).get("plan")
        if existing != identity:
            raise FileExistsError(
                f"--output_dir={plan.output_dir!r} already holds a dataset made from other input "
                "or configs; pass --overwrite to replace it, or choose another --output_dir"
            )
        damaged = _damaged_shards(plan.output_dir)
        if not damaged:
            return "complete"
        logging.warning("%s: %d shard file(s) missing or damaged (%s); rebuilding the dataset",
                        plan.output_dir, len(damaged),
                        "; ".join(f"{p}: {what}" for p, what in list(damaged.items())[:5]))
        for path in damaged:
            if os.path.exists(path):
                os.remove(path)
        os.remove(dataset_json)
    elif os.path.exists(plan_json):
        with open(plan_json, encoding="utf-8") as f:
            existing = json.load(f)
        if existing != identity:
            raise FileExistsError(
                f"--output_dir={plan.output_dir!r} holds an unfinished run with other input or "
                "configs; pass --overwrite to discard it, or rerun with the same flags to resume"
            )
    os.makedirs(os.path.join(plan.staging_dir, "clips"), exist_ok=True)
    os.makedirs(os.path.join(plan.staging_dir, "failed"), exist_ok=True)
    os.makedirs(os.path.join(plan.staging_dir, "padded"), exist_ok=True)
    if retry_failed:
        for path in glob.glob(os.path.join(plan.staging_dir, "failed", "*.json")):
            os.remove(path)
    data.write_json_atomic(plan_json, identity)
    return "todo"


def remember_complete(plan: ExtractionPlan) -> dict | None:
    """A complete dataset's teacher labels added to ``plan.teacher_memo`` (None: no memo asked).

    Read off the stored mels (:func:`tftag.extraction.teacher.memo_from_dataset`); a dataset that cannot
    give the memo keys (no lossless 16 kHz 8-band base) is logged and left alone.
    """
    if not plan.teacher_memo:
        return None
    try:
        return teacher_lib.memo_from_dataset(plan.output_dir, plan.teacher_memo)
    except ValueError as e:
        logging.warning("teacher memo not written: %s", e)
        return None


def _damaged_shards(output_dir: str) -> dict[str, str]:
    """{shard path: what is wrong} of a finished dataset: missing, or not its recorded size."""
    try:
        info = data.load_dataset_info(output_dir)
    except (ValueError, KeyError):  # another format: the plan identity decides alone
        return {}
    return data.shard_problems(output_dir, info)


def clear_output(output_dir: str) -> None:
    """Removes what an extraction wrote into ``output_dir`` (and nothing else)."""
    for name in (data.DATASET_JSON, data.FAILURES_JSONL):
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            os.remove(path)
    for path in glob.glob(os.path.join(output_dir, "sr*-mel*")) + [os.path.join(output_dir, STAGING)]:
        if os.path.isdir(path):
            shutil.rmtree(path)


def pending_clips(plan: ExtractionPlan, clips: Iterable[Clip]) -> list[Clip]:
    """Clips with neither a staged result nor a recorded failure."""
    return [
        c for c in clips
        if not os.path.exists(plan.staged_path(c.clip_id))
        and not os.path.exists(plan.failed_path(c.clip_id))
    ]


def shard_counts(plan: ExtractionPlan, catalog: Catalog) -> dict[str, int]:
    """{split: number of shards}, from the catalogue's clip counts."""
    return {
        split: data.num_shards_for(n, plan.clips_per_shard)
        for split, n in catalog.split_counts().items()
    }


def write_shard(plan: ExtractionPlan, split: str, index: int, count: int, clip_ids: Sequence[str]) -> int:
    """Writes shard ``index`` of ``split`` for every base from the staged clips (atomically).

    Returns:
      The number of Examples written.
    """
    per_base: list[list[bytes]] = [[] for _ in plan.bases]
    import tensorflow as tf

    for clip_id in sorted(clip_ids):
        records = [r.numpy() for r in tf.data.TFRecordDataset(plan.staged_path(clip_id))]
        if len(records) != len(plan.bases):
            raise RuntimeError(
                f"{plan.staged_path(clip_id)}: {len(records)} records, expected {len(plan.bases)}"
            )
        for bucket, record in zip(per_base, records):
            bucket.append(record)
    for base, records in zip(plan.bases, per_base):
        data.write_tfrecord_atomic(
            data.shard_path(plan.output_dir, base.base_name, split, index, count), records
        )
    return sum(len(r) for r in per_base)


def finalize(plan: ExtractionPlan, catalog: Catalog, source: dict, keep_staging: bool = False,
             runner: dict | None = None) -> dict:
    """Completes the dataset directory after all clips are staged and shards written.

    ``runner`` (the Beam runner of the last run, e.g.
    ``{"name": "DaskRunner", "local_workers": 2}``) is recorded as ``dataset.json`` "runner";
    the rest does not depend on the runner.

    Writes empty shards for hash buckets no clip fell into, removes shard files of other shard
    counts, writes failures.jsonl and finally dataset.json (with every shard's record count, size
    and sha256 under "shard_files"); removes the staging area.

    Returns:
      The dataset.json dictionary.
    """
    counts = shard_counts(plan, catalog)
    ok_clips, failures = [], []
    for clip in catalog.clips:
        if os.path.exists(plan.staged_path(clip.clip_id)):
            ok_clips.append(clip)
        elif os.path.exists(plan.failed_path(clip.clip_id)):
            with open(plan.failed_path(clip.clip_id), encoding="utf-8") as f:
                failures.append(json.load(f))
        else:
            raise RuntimeError(f"clip {clip.clip_id!r} was neither extracted nor recorded as failed")
    expected = set()
    for base in plan.bases:
        for split, count in counts.items():
            for index in range(count):
                path = data.shard_path(plan.output_dir, base.base_name, split, index, count)
                expected.add(os.path.abspath(path))
                if not os.path.exists(path):
                    data.write_tfrecord_atomic(path, [])
        for path in glob.glob(os.path.join(plan.output_dir, base.base_name, "*.tfrecord")):
            if os.path.abspath(path) not in expected:
                os.remove(path)
        # Temp files of writes interrupted by an earlier crash.
        for path in glob.glob(os.path.join(plan.output_dir, base.base_name, ".tmp-*")):
            os.remove(path)
    # Rows the catalogue itself skipped (missing audio, protocol exclusions) are failures too.
    failures.extend(dict(r, stage="catalog") for r in catalog.skipped)
    failures.sort(key=lambda r: r["clip_id"])
    data.write_bytes_atomic(
        os.path.join(plan.output_dir, data.FAILURES_JSONL),
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in failures).encode("utf-8"),
    )
    splits: dict[str, int] = {s: 0 for s in counts}
    for clip in ok_clips:
        splits[clip.split] += 1
    padded = sum(os.path.exists(plan.padded_marker(c.clip_id)) for c in ok_clips)
    # Every shard's record count, size and sha256 (one read of each), for tftag.storage.verify and the
    # readers' pre-flight check.
    shard_files = data.shard_manifest(plan.output_dir, sorted(expected))
    meta = data.dataset_metadata(
        configs=plan.configs,
        mel_dtype=plan.mel_dtype,
        tags=plan.tags,
        splits=splits,
        shards=counts,
        source=source,
        extra={
            "clips_total": len(catalog.clips),
            "clips_written": len(ok_clips),
            "clips_failed": len(failures) - len(catalog.skipped),
            "catalog_skipped_count": len(catalog.skipped),
            "clips_padded": padded,
            **({"runner": runner} if runner else {}),
            "plan": dict(plan.describe(), catalog=catalog.fingerprint()),
            "labels": plan.labels,
            **({"teacher": {"name": plan.teacher, "top_k": plan.teacher_top_k,
                            "hard_labels": "the clip's top-k tags by teacher probability",
                            "soft_labels": "mean sigmoid over non-overlapping 3-s patches of "
                                           "the 16 kHz 96-band log mel"}}
               if plan.teacher else {}),
            data.SHARD_FILES: shard_files,
            # Track groups named by the catalogue (tftag.storage.folds; other clips: their own file).
            **({"groups": {c.clip_id: c.group for c in ok_clips if c.group}}
               if any(c.group for c in ok_clips) else {}),
        },
    )
    data.write_json_atomic(os.path.join(plan.output_dir, data.DATASET_JSON), meta)
    if not keep_staging:
        shutil.rmtree(plan.staging_dir, ignore_errors=True)
    logging.info(
        "dataset complete: %d clips written, %d failed, splits %s", len(ok_clips), len(failures),
        splits,
    )
    return meta
