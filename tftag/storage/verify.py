"""Every integrity check of a dataset directory: its shard files against what dataset.json records.

Extraction records each shard's record count, byte size and sha256 in dataset.json
("shard_files", :func:`shard_manifest`, written by :func:`tftag.extraction.extractor.finalize`).

- Readers run a cheap pre-flight check before reading (:func:`check_shards`: present and of the
  recorded size, stat only) and raise :class:`CorruptDatasetError` naming the bad files.
- :func:`verify_dataset` checks every shard listed there: present, of its size, with its
  sha256; a shard that differs is also read record by record with TensorFlow's CRC checks to say
  what is wrong (a record that fails its CRC, a count that differs). Datasets written before the
  manifest existed are checked by reading every record of every shard instead (TFRecord CRCs),
  and their per-split record totals are compared with dataset.json's clip counts.

Statuses of a shard, most specific first: ``ok``, ``missing``, ``unreadable record``
(TensorFlow's message), ``record count mismatch``, ``size mismatch``, ``checksum mismatch``.

``python -m tftag.main --mode=verify --dataset_dir=DIR`` prints :meth:`VerifyReport.format`
and exits 1 unless :attr:`VerifyReport.ok`.

Built on :mod:`tftag.storage.dataset_dir`; TensorFlow is imported only to read records
(:func:`read_records`), never by importing this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Sequence

from tftag.storage.dataset_dir import (DatasetInfo, load_dataset_info, parse_shard_name, present_shards,
                               relative_name, shard_files)
from tftag.errors import DataError
from tftag.features import MelConfig

OK = "ok"
MISSING = "missing"
UNREADABLE = "unreadable record"
COUNT_MISMATCH = "record count mismatch"
SIZE_MISMATCH = "size mismatch"
CHECKSUM_MISMATCH = "checksum mismatch"
# Most specific first: a shard's status is the first of its findings in this order.
STATUSES = (OK, MISSING, UNREADABLE, COUNT_MISMATCH, SIZE_MISMATCH, CHECKSUM_MISMATCH)

_PROGRESS_MIN_SHARDS = 16
_MAX_LISTED = 5


def rebuild_hint(dataset_dir: str, verify: bool = True) -> str:
    """What to do about bad shards (the last line of every report of them).

    Args:
      dataset_dir: the dataset directory.
      verify: start with how to get a full report (``--mode=verify``).
    """
    rebuild = ("to rebuild, delete the bad shard file(s) and re-run the extraction into the same "
               "directory (it resumes: missing shards are noticed and rebuilt)")
    if not verify:
        return rebuild[0].upper() + rebuild[1:]
    return (f"run python -m tftag.main --mode=verify --dataset_dir={dataset_dir} for a full "
            f"report; {rebuild}")


class CorruptDatasetError(DataError, ValueError):
    """Shard files of a dataset directory are missing or damaged.

    The message (two lines) names the bad shard files and what is wrong with each, then says how
    to get a full report and how to rebuild. A :class:`tftag.errors.DataError` (entry points
    print it without a traceback and exit 1) and, for library callers, a ValueError.

    Attributes:
      dataset_dir: the dataset directory.
      problems: {shard file path: what is wrong}.
    """

    def __init__(self, dataset_dir: str, problems: dict[str, str]):
        self.dataset_dir = dataset_dir
        self.problems = dict(problems)
        items = list(self.problems.items())
        if len(items) == 1:
            first = f"bad shard file {items[0][0]}: {items[0][1]}"
        else:
            listed = "; ".join(f"{os.path.relpath(path, dataset_dir)} ({what})"
                               for path, what in items[:_MAX_LISTED])
            more = f"; and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
            first = f"{len(items)} bad shard files in {dataset_dir}: {listed}{more}"
        super().__init__(f"{first}\n{rebuild_hint(dataset_dir)}")

    def __reduce__(self):
        return type(self), (self.dataset_dir, self.problems)


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """The verdict on one shard file.

    Attributes:
      path: the shard's path relative to the dataset directory ("/"-separated).
      status: one of :data:`STATUSES`.
      detail: what exactly is wrong ("" when ok).
      records: records in the file (read, or recorded when its checksum matched); None if unknown.
      bytes: the file's size; None if it is missing.
    """

    path: str
    status: str
    detail: str = ""
    records: int | None = None
    bytes: int | None = None

    @property
    def ok(self) -> bool:
        """True if the shard is sound."""
        return self.status == OK

    def describe(self) -> str:
        """"<status>: <detail>" (just the status when there is no detail)."""
        return f"{self.status}: {self.detail}" if self.detail else self.status


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """The verdict on a dataset directory.

    Attributes:
      dataset_dir: the dataset directory.
      shards: one result per shard dataset.json lists, sorted by path.
      checksums: whether dataset.json records shard checksums (False for datasets written before
        tftag recorded them: every record was read instead).
      unexpected: shard files in the base directories that dataset.json does not list (warnings:
        they are not part of the dataset, but ``make_dataset`` would read them).
      problems: dataset-level problems (e.g. a split's record total differs from its clip count).
    """

    dataset_dir: str
    shards: tuple[ShardResult, ...]
    checksums: bool
    unexpected: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True if every shard is sound and there is no dataset-level problem."""
        return all(s.ok for s in self.shards) and not self.problems

    @property
    def bad(self) -> tuple[ShardResult, ...]:
        """The shards that are not sound."""
        return tuple(s for s in self.shards if not s.ok)

    @property
    def records(self) -> int:
        """Records in the shards whose count is known."""
        return sum(s.records or 0 for s in self.shards)

    @property
    def bytes(self) -> int:
        """Bytes of the shard files present."""
        return sum(s.bytes or 0 for s in self.shards)

    def format(self) -> str:
        """A short human summary: one line per bad shard or problem, warnings, a total line."""
        lines = [f"BAD {s.path}: {s.describe()}" for s in self.bad]
        lines += [f"BAD {p}" for p in self.problems]
        lines += [f"warning: unexpected shard file {u} (not listed in dataset.json)"
                  for u in self.unexpected]
        if not self.checksums:
            lines.append("note: dataset.json records no shard checksums (written by an older "
                         "tftag); every record was read and CRC-checked instead")
        n = len(self.shards)
        total = (f"{self.dataset_dir}: {n:,} shard{'s' if n != 1 else ''}, "
                 f"{self.records:,} records, {self.bytes / 1e6:.1f} MB")
        if self.ok:
            lines.append(f"{total}: all sound")
        else:
            counts: dict[str, int] = {}
            for s in self.bad:
                counts[s.status] = counts.get(s.status, 0) + 1
            what = [f"{status}: {k}" for status, k in sorted(counts.items(),
                                                              key=lambda kv: STATUSES.index(kv[0]))]
            if self.problems:
                what.append(f"{len(self.problems)} dataset-level problem"
                            f"{'s' if len(self.problems) != 1 else ''}")
            lines.append(f"{total}: {len(self.bad):,} bad shard{'s' if len(self.bad) != 1 else ''} "
                         f"({', '.join(what)})")
            lines.append(rebuild_hint(self.dataset_dir, verify=False))
        return "\n".join(lines)


def _tf_message(error: "tf.errors.OpError") -> str:
    """TensorFlow's error message without the op suffix and graph context."""
    message = (error.message or str(error)).strip().splitlines()[0]
    message = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", message)
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", message).strip()


def read_records(path: str) -> tuple[int, str | None]:
    """Reads every record of a TFRecord file with TensorFlow's CRC checks.

    Returns:
      (records read intact, None) or (records read before the error, TensorFlow's message).
    """
    import tensorflow as tf  # only here: importing tftag.storage.verify does not load it

    count = 0
    try:
        for _ in tf.data.TFRecordDataset(path, buffer_size=1 << 20).map(tf.strings.length):
            count += 1
    except tf.errors.OpError as e:
        return count, _tf_message(e)
    return count, None


def sha256_file(path: str) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stat_shard(dataset_dir: str, name: str, entry: dict[str, Any] | None) -> ShardResult:
    """The stat-only verdict on one shard file: ``missing``, ``size mismatch`` or ``ok``.

    Args:
      dataset_dir: the dataset directory.
      name: the shard's path relative to it.
      entry: its manifest entry {"records", "bytes", "sha256"}, or None (size not checked).

    Returns:
      The shard's :class:`ShardResult`; an ``ok`` one carries the recorded record count, not
      a counted one.
    """
    try:
        size = os.path.getsize(os.path.join(dataset_dir, name))
    except FileNotFoundError:
        return ShardResult(name, MISSING)
    except OSError as e:
        return ShardResult(name, MISSING, f"cannot stat: {e.strerror or e}")
    if entry is None:
        return ShardResult(name, OK, bytes=size)
    if size != entry["bytes"]:
        return ShardResult(name, SIZE_MISMATCH,
                           f"{size:,} bytes, dataset.json says {entry['bytes']:,}", bytes=size)
    return ShardResult(name, OK, records=entry["records"], bytes=size)


def check_shard(dataset_dir: str, name: str, entry: dict[str, Any] | None,
                read: bool = False) -> ShardResult:
    """Checks one shard file against its dataset.json entry.

    Args:
      dataset_dir: the dataset directory.
      name: the shard's path relative to it.
      entry: its manifest entry {"records", "bytes", "sha256"}, or None if there is none (every
        record is then read).
      read: also read the records of a shard whose size and checksum match.

    Returns:
      The shard's :class:`ShardResult`.
    """
    path = os.path.join(dataset_dir, name)
    stat = stat_shard(dataset_dir, name, entry)
    if stat.status == MISSING:
        return stat
    size = stat.bytes
    findings: dict[str, str] = {} if stat.ok else {stat.status: stat.detail}
    if entry is not None:
        if stat.ok:
            try:
                if sha256_file(path) != entry["sha256"]:
                    findings[CHECKSUM_MISMATCH] = "sha256 differs from dataset.json"
            except OSError as e:
                return ShardResult(name, UNREADABLE, f"cannot read the file: {e.strerror or e}",
                                   bytes=size)
        if not findings and not read:
            return stat
    records, error = read_records(path)
    if error is not None:
        findings[UNREADABLE] = f"{error} (after {records:,} intact records)"
        records = None
    elif entry is not None and records != entry["records"]:
        findings[COUNT_MISMATCH] = f"{records:,} records, dataset.json says {entry['records']:,}"
    if not findings:
        return ShardResult(name, OK, records=records, bytes=size)
    ordered = sorted(findings, key=STATUSES.index)
    detail = "; ".join([findings[ordered[0]]] + [f"{s} ({findings[s]})" for s in ordered[1:]])
    return ShardResult(name, ordered[0], detail, records=records, bytes=size)


def shard_stats(path: str) -> dict[str, Any]:
    """Record count, byte size and sha256 of one TFRecord file, in one sequential read.

    Records are counted from the TFRecord framing (8-byte length, 4-byte length CRC, data,
    4-byte data CRC); the CRCs are not checked here (TensorFlow checks them on every read).

    Returns:
      {"records": int, "bytes": int, "sha256": hex str}.

    Raises:
      ValueError: the file ends inside a record.
    """
    digest = hashlib.sha256()
    records = size = 0
    with open(path, "rb", buffering=1 << 20) as f:
        while True:
            header = f.read(12)
            if not header:
                break
            digest.update(header)
            size += len(header)
            if len(header) < 12:
                raise ValueError(f"{path}: truncated record header at byte {size - len(header)}")
            (remaining,) = struct.unpack("<Q", header[:8])
            remaining += 4  # the data CRC
            while remaining:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    raise ValueError(f"{path}: record {records} ends early at byte {size}")
                digest.update(chunk)
                size += len(chunk)
                remaining -= len(chunk)
            records += 1
    return {"records": records, "bytes": size, "sha256": digest.hexdigest()}


def shard_manifest(
    dataset_dir: str, paths: Sequence[str], workers: int | None = None
) -> dict[str, dict[str, Any]]:
    """{shard_name: shard_stats} of shard files (dataset.json's "shard_files"), read in parallel."""
    names = [relative_name(dataset_dir, p) for p in paths]
    for name in names:
        parse_shard_name(name)
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        stats = list(pool.map(shard_stats, [os.path.join(dataset_dir, n) for n in names]))
    return dict(sorted(zip(names, stats)))


def shard_problems(
    dataset_dir: str, info: DatasetInfo, base_names: Sequence[str] | None = None,
    split: str | None = None,
) -> dict[str, str]:
    """Stat-only check of shard files: present, and as large as dataset.json records.

    Args:
      dataset_dir: the dataset directory.
      info: its :class:`~tftag.storage.dataset_dir.DatasetInfo`.
      base_names: only these stored bases (default: all).
      split: only this split (default: all).

    Returns:
      {shard file path: what is wrong} ({} when every shard is present with its recorded size).
    """
    results = (stat_shard(dataset_dir, name, entry)
               for name, entry in info.expected_shards(base_names, split).items())
    return {os.path.join(dataset_dir, r.path): r.describe() for r in results if not r.ok}


def check_shards(
    dataset_dir: str, config: MelConfig, split: str | None, info: DatasetInfo | None = None
) -> None:
    """Cheap pre-flight check before reading ``config``'s shards of a split (stat only, no hashing).

    Raises:
      CorruptDatasetError: a shard file is missing or its size differs from dataset.json's.
    """
    info = info or load_dataset_info(dataset_dir)
    problems = shard_problems(dataset_dir, info, [config.base_name], split)
    if problems:
        raise CorruptDatasetError(dataset_dir, problems)


def verify_shards(
    dataset_dir: str, shards: dict[str, dict[str, Any] | None], read: bool = False,
    progress: bool | None = None, workers: int | None = None,
) -> tuple[ShardResult, ...]:
    """Checks shard files in parallel (:func:`check_shard`), with a progress bar for many.

    Args:
      dataset_dir: the dataset directory.
      shards: {relative path: manifest entry or None}.
      read: also read the records of shards whose checksum matches.
      progress: show a tqdm progress bar (default: for 16 or more shards, on a terminal).
      workers: parallel threads (default: the CPU count, at most 8).

    Returns:
      The results, sorted by path.
    """
    from tqdm import tqdm

    if progress is None:
        disable = True if len(shards) < _PROGRESS_MIN_SHARDS else None  # None: only on a tty
    else:
        disable = not progress
    results = []
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool, \
            tqdm(total=len(shards), unit="shard", desc="verify", disable=disable) as bar:
        futures = [pool.submit(check_shard, dataset_dir, name, entry, read)
                   for name, entry in shards.items()]
        for future in as_completed(futures):
            results.append(future.result())
            bar.update(1)
    return tuple(sorted(results, key=lambda r: r.path))


def _split_totals(info: DatasetInfo, results: Sequence[ShardResult]) -> list[str]:
    """Per (base, split): the records of its shards against dataset.json's clip count."""
    groups: dict[tuple[str, str], list[ShardResult]] = {}
    for r in results:
        base, split, _, _ = parse_shard_name(r.path)
        groups.setdefault((base, split), []).append(r)
    problems = []
    for (base, split), shards in sorted(groups.items()):
        if any(s.records is None for s in shards) or split not in info.splits:
            continue  # bad shards are reported on their own
        total = sum(s.records for s in shards)
        if total != info.splits[split]:
            problems.append(f"{base} {split}: {total:,} records in {len(shards)} shards, "
                            f"dataset.json says {info.splits[split]:,} clips")
    return problems


def verify_dataset(dataset_dir: str, *, read: bool | None = None, progress: bool | None = None,
                   workers: int | None = None) -> VerifyReport:
    """Checks every shard file of a dataset directory.

    Args:
      dataset_dir: the extraction's output directory (holding dataset.json).
      read: read every record of every shard with TensorFlow's CRC checks, even where the sha256
        matches (default: only when dataset.json records no checksums, or a checksum differs).
      progress: show a progress bar (default: for many shards, on a terminal).
      workers: parallel threads.

    Returns:
      The :class:`VerifyReport`; ``report.ok`` is False if anything is wrong.

    Raises:
      FileNotFoundError: no dataset.json (not a finished dataset directory).
      ValueError: dataset.json of another format version.
    """
    info = load_dataset_info(dataset_dir)
    checksums = info.shard_manifest is not None
    expected = info.expected_shards()
    results = verify_shards(dataset_dir, expected, read=bool(read) if checksums else True,
                            progress=progress, workers=workers)
    present = present_shards(dataset_dir)
    return VerifyReport(
        dataset_dir=dataset_dir,
        shards=results,
        checksums=checksums,
        unexpected=tuple(sorted(present - set(expected))),
        problems=tuple(_split_totals(info, results)),
    )


def bad_shards(dataset_dir: str, config: MelConfig, split: str | None) -> dict[str, str]:
    """The bad shard files a reader of ``config``'s base (one split, or all) would read.

    Checks the shards dataset.json lists for that base and split, and any other shard file
    :func:`tftag.storage.dataset_dir.shard_files` finds there (by reading it).

    Returns:
      {shard file path: what is wrong}, {} if all are sound.
    """
    info = load_dataset_info(dataset_dir)
    shards = info.expected_shards([config.base_name], split)
    for path in shard_files(dataset_dir, config, split):
        shards.setdefault(relative_name(dataset_dir, path), None)
    return {os.path.join(dataset_dir, r.path): r.describe()
            for r in verify_shards(dataset_dir, shards) if not r.ok}


def run_verify(dataset_dir: str | None) -> dict:
    """``--mode=verify``: prints the report of ``dataset_dir``; its summary (``ok``: all sound)."""
    if not dataset_dir:
        raise ValueError("--mode=verify needs --dataset_dir")
    report = verify_dataset(dataset_dir)
    print(report.format())
    return {"dataset_dir": dataset_dir, "ok": report.ok}
