"""Embeddings at collection scale: ``--embeddings`` with a streamed ``--output`` (.jsonl/.csv).

One row per track, the mean over its windows of the penultimate-layer embedding (the input of
the logits layer), in sharded arrays beside the output, ``<output stem>.embeddings/``:

* ``shard-00000.npy``, ``shard-00001.npy``, ...: float32 [rows, d], rows appended as files are
  tagged, a new shard every ``shard_rows`` (:data:`SHARD_ROWS`) rows: a million tracks are 245
  files. Each is a plain ``.npy`` (``np.load(..., mmap_mode="r")``) once the run has closed it;
  while it is written its header is behind its rows (readers go by the index).
* ``index.jsonl``: one JSON line per track, appended after its row: ``path``, ``rel_path``,
  ``size``, ``mtime_ns`` (the identity :mod:`tftag.tagging.results` resumes by), ``shard``,
  ``row``, ``seconds``, ``windows``.
* ``index.rows.npy`` + ``index.rows.json``, ``ann.faiss`` + ``ann.json``: caches of
  :mod:`tftag.tagging.similar`, made at a query when the index changed since.
* ``meta.json``: the model (``model``: its name; ``resolution``: its mel resolution; ``source``:
  how to load it again), ``dim``, the windows (``window_frames``, ``hop_frames``) and
  ``shard_rows``: :mod:`tftag.tagging.similar` embeds a query with the same model and windows.

Resuming follows the output's rows: a row's embedding is written before the row itself, so a
kill leaves at most rows the index has and the output has not (tagged again, their old index
line superseded). Opening the store again cuts a torn last index line and the shard rows past the
last indexed row; it drops the index lines of files tagged again (changed since, or not in the
output) so each file is indexed once, in the last line of its ``rel_path`` (lines of files not
among the run's are kept). Rows no line refers to any more stay in their shard, never read. An
output tagged before without ``--embeddings`` gets the embeddings of its tagged files on a rerun
with it (those files are scored again; their output rows are not written twice).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import IO, Iterator, Mapping

import numpy as np

from tftag.runs import runfiles
from tftag.tagging.results import TEXT, FileKey, _complete_size, _records

SHARD_ROWS = 4096  # rows per shard: 1 M tracks = 245 shards (16 MB each at d = 1024)
META = "meta.json"
INDEX = "index.jsonl"
ROWS_CACHE, ROWS_STAMP = "index.rows.npy", "index.rows.json"  # --mode=similar's cache of it
FORMAT = 1
_DTYPE = np.dtype("<f4")


def store_dir(output: str) -> str:
    """``<output stem>.embeddings``: the store of a streamed ``--output``."""
    return os.path.splitext(output)[0] + ".embeddings"


def shard_path(directory: str, shard: int) -> str:
    """The file of shard number ``shard``."""
    return os.path.join(directory, f"shard-{shard:05d}.npy")


@dataclasses.dataclass(frozen=True)
class StoreMeta:
    """What every row of a store shares (``meta.json``).

    Attributes:
      model: the model's name (``Tagger.name``).
      resolution: its mel resolution (``MelConfig.name``), e.g. ``sr16000-mel8-hop10-log``.
      source: how to load it again: ``{"pretrained": name}`` or ``{"model_dir": path}`` (with
        ``server`` and ``protocol`` for a TF Serving model).
      window_frames / hop_frames: the windows the mean is over.
      dim: the embedding's size (0 until the first row).
      shard_rows: rows per shard.
    """

    model: str
    resolution: str
    source: dict
    window_frames: int
    hop_frames: int
    dim: int = 0
    shard_rows: int = SHARD_ROWS
    format: int = FORMAT

    @classmethod
    def read(cls, directory: str) -> "StoreMeta":
        """The meta of the store ``directory`` (a FileNotFoundError/ValueError naming it)."""
        path = os.path.join(directory, META)
        if not os.path.exists(path):
            raise FileNotFoundError(f"--index={directory!r} has no {META}: give the "
                                    "<output stem>.embeddings folder of a --mode=tag --embeddings "
                                    "run with a .jsonl or .csv --output")
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        if raw.get("format") != FORMAT:
            raise ValueError(f"{path}: store format {raw.get('format')!r}, this tftag reads "
                             f"{FORMAT}: tag again into a new --output")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def same_model(self, other: "StoreMeta") -> bool:
        """Whether ``other``'s rows can share a store with these (model, resolution, windows)."""
        return ((self.model, self.resolution, self.window_frames, self.hop_frames)
                == (other.model, other.resolution, other.window_frames, other.hop_frames))


@dataclasses.dataclass(frozen=True)
class Entry:
    """One indexed track: its file's identity and where its row is."""

    path: str
    rel_path: str
    size: int
    mtime_ns: int
    shard: int
    row: int
    seconds: float = 0.0
    windows: int = 0

    @property
    def key(self) -> FileKey:
        """The identity of the file the row was made of."""
        return FileKey(self.rel_path, self.size, self.mtime_ns)

    @classmethod
    def of_record(cls, record: Mapping) -> "Entry | None":
        """The entry of an index line (None: not one)."""
        try:
            return cls(str(record["path"]), str(record["rel_path"]), int(record["size"]),
                       int(record["mtime_ns"]), int(record["shard"]), int(record["row"]),
                       float(record.get("seconds", 0.0)), int(record.get("windows", 0)))
        except (KeyError, TypeError, ValueError):
            return None


def _index_lines(path: str, size: int) -> Iterator[tuple[Entry | None, str]]:
    """(entry or None, raw line) of each complete line within the first ``size`` bytes."""
    for record, line in _records(path, ".jsonl", size):
        yield Entry.of_record(record), line


def read_entries(directory: str) -> list[Entry]:
    """The store's entries, the last line of each ``rel_path``, in index order (a torn last line
    left out; safe while a run appends)."""
    path = os.path.join(directory, INDEX)
    if not os.path.exists(path):
        return []
    last: dict[str, Entry] = {}
    for entry, _ in _index_lines(path, _complete_size(path)):
        if entry is not None:
            last.pop(entry.rel_path, None)  # re-inserted: the order of the last line
            last[entry.rel_path] = entry
    return list(last.values())


@dataclasses.dataclass(frozen=True)
class Rows:
    """The store's indexed tracks as arrays (what a search reads per query): track i's row is
    row ``row[i]`` of shard ``shard[i]``, its index line starts at byte ``offset[i]`` of
    ``index.jsonl``; :meth:`entry` reads that line."""

    directory: str
    shard: np.ndarray
    row: np.ndarray
    offset: np.ndarray

    def __len__(self) -> int:
        return len(self.shard)

    def entry(self, i: int) -> Entry:
        """Track i's :class:`Entry`, read from its index line (a ValueError if that line is not
        it any more: a run rewrote the index since it was read)."""
        with open(os.path.join(self.directory, INDEX), "rb") as f:
            f.seek(int(self.offset[i]))
            try:
                record = json.loads(f.readline().decode("utf-8", "surrogateescape"))
            except ValueError:
                record = None
        entry = Entry.of_record(record) if isinstance(record, dict) else None
        if entry is None or (entry.shard, entry.row) != (self.shard[i], self.row[i]):
            raise ValueError(f"{self.directory}/{INDEX}: no entry at byte {self.offset[i]}: the "
                             "index changed while it was read; run the query again")
        return entry


def index_stamp(directory: str) -> dict:
    """What ``index.jsonl`` is now (its bytes and mtime): caches built from it keep it."""
    st = os.stat(os.path.join(directory, INDEX))
    return {"index_bytes": st.st_size, "index_mtime_ns": st.st_mtime_ns}


def read_rows(directory: str) -> Rows:
    """The indexed tracks of :func:`read_entries`, as :class:`Rows`: read from the cache
    ``index.rows.npy`` when it was made from the index as it is, else parsed and cached (once
    per change of the index: a million lines take seconds to parse, the cache milliseconds)."""
    path = os.path.join(directory, INDEX)
    cache, stamp_path = os.path.join(directory, ROWS_CACHE), os.path.join(directory, ROWS_STAMP)
    if not os.path.exists(path):
        return Rows(directory, *np.zeros((3, 0), np.int64))
    stamp = index_stamp(directory)
    if os.path.exists(cache) and os.path.exists(stamp_path):
        with open(stamp_path, encoding="utf-8") as f:
            if json.load(f) == stamp:
                return Rows(directory, *np.load(cache).T)
    last: dict[str, tuple[int, int, int]] = {}
    size, offset = _complete_size(path), 0
    with open(path, "rb") as f:
        for line in f:
            if offset + len(line) > size:
                break
            try:
                entry = Entry.of_record(json.loads(line.decode("utf-8", "surrogateescape")))
            except ValueError:
                entry = None
            if entry is not None:
                last.pop(entry.rel_path, None)  # re-inserted: the order of the last line
                last[entry.rel_path] = (entry.shard, entry.row, offset)
            offset += len(line)
    table = np.array(list(last.values()), np.int64).reshape(-1, 3)
    with runfiles.atomic_path(cache, ".npy") as tmp:
        np.save(tmp, table)
    runfiles.write_json_atomic(stamp_path, stamp)
    return Rows(directory, *table.T)


def _data_offset(f: IO[bytes]) -> int:
    """The byte offset of a .npy file's data (its header read)."""
    f.seek(0)
    version = np.lib.format.read_magic(f)
    (np.lib.format.read_array_header_1_0 if version == (1, 0)
     else np.lib.format.read_array_header_2_0)(f)
    return f.tell()


def _write_header(f: IO[bytes], rows: int, dim: int) -> int:
    """(Re)writes a .npy header for [rows, dim] float32 at the start of ``f``; returns its size
    (the same for any ``rows``: numpy pads it so it can grow in place)."""
    f.seek(0)
    np.lib.format.write_array_header_1_0(
        f, {"descr": _DTYPE.str, "fortran_order": False, "shape": (rows, dim)})
    return f.tell()


def shard_rows_on_disk(path: str, dim: int) -> tuple[int, int]:
    """(data offset, whole rows) of a shard file as it is now (its header may lag behind)."""
    with open(path, "rb") as f:
        offset = _data_offset(f)
    return offset, (os.path.getsize(path) - offset) // (dim * _DTYPE.itemsize)


def shard_vectors(directory: str, meta: StoreMeta, shard: int,
                  rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of shard ``shard``, float32 [len(rows), dim], read through a memory map
    (a contiguous run of rows: a read-only view of it, nothing copied)."""
    path = shard_path(directory, shard)
    offset, count = shard_rows_on_disk(path, meta.dim)
    if len(rows) and int(rows.max()) >= count:
        raise ValueError(f"{path}: the index refers to row {int(rows.max())} of {count}: the "
                         "store is damaged; tag into a new --output")
    data = np.memmap(path, _DTYPE, "r", offset=offset, shape=(count, meta.dim))
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows) and np.all(np.diff(rows) == 1):
        return data[rows[0]:rows[-1] + 1]
    return np.asarray(data[rows], np.float32)


class EmbeddingStore:
    """The store of one run: :meth:`open` (tidies what earlier runs left), :meth:`add` per
    tagged file, :meth:`close` at the end (also after an error: what was written stays)."""

    def __init__(self, directory: str, meta: StoreMeta):
        self.directory, self.meta = directory, meta
        self.entries: dict[str, Entry] = {}  # rel_path -> entry of this run's files, at open
        self.count = 0  # tracks indexed (nothing kept per track added: memory stays flat)
        self._shard, self._rows = 0, 0
        self._file: IO[bytes] | None = None
        self._index: IO[str] | None = None

    def open(self, current: Mapping[str, FileKey], redo: set[str]) -> "EmbeddingStore":
        """Checks the store's model against this run's and tidies it: keeps the last line of
        each file unless the file changed or is in ``redo`` (tagged again by this run)."""
        os.makedirs(self.directory, exist_ok=True)
        meta_path = os.path.join(self.directory, META)
        if os.path.exists(meta_path):
            old = StoreMeta.read(self.directory)
            if not old.same_model(self.meta):
                raise ValueError(f"{self.directory} holds embeddings of {old.model} "
                                 f"({old.resolution}, windows {old.window_frames}/"
                                 f"{old.hop_frames} frames), not {self.meta.model} "
                                 f"({self.meta.resolution}, {self.meta.window_frames}/"
                                 f"{self.meta.hop_frames}): give another --output or remove it")
            self.meta = dataclasses.replace(self.meta, dim=old.dim, shard_rows=old.shard_rows)
        self._tidy(current, redo)
        self._write_meta()
        return self

    def _tidy(self, current: Mapping[str, FileKey], redo: set[str]) -> None:
        index = os.path.join(self.directory, INDEX)
        if not os.path.exists(index):
            open(index, "a").close()
        size = _complete_size(index)
        kept: dict[str, tuple[Entry, str]] = {}
        total = 0
        for entry, line in _index_lines(index, size):
            total += 1
            if entry is None:
                continue
            kept.pop(entry.rel_path, None)
            now = current.get(entry.rel_path)
            if now is None or (now == entry.key and entry.rel_path not in redo):
                kept[entry.rel_path] = (entry, line)
        if len(kept) != total or os.path.getsize(index) != size:
            with runfiles.atomic_path(index) as tmp, open(tmp, "w", **TEXT) as out:
                out.writelines(line for _, line in kept.values())
        self.entries = {rel: e for rel, (e, _) in kept.items() if rel in current}
        self.count = len(kept)
        last = max((e.shard for e, _ in kept.values()), default=0)
        used = 1 + max((e.row for e, _ in kept.values() if e.shard == last), default=-1)
        self._shard, self._rows = last, used
        path = shard_path(self.directory, last)
        if os.path.exists(path) and self.meta.dim:  # rows past the last indexed one: cut
            offset, _ = shard_rows_on_disk(path, self.meta.dim)
            os.truncate(path, offset + used * self.meta.dim * _DTYPE.itemsize)
            with open(path, "r+b") as f:
                _write_header(f, used, self.meta.dim)
        if self._rows >= self.meta.shard_rows:
            self._shard, self._rows = self._shard + 1, 0

    def _write_meta(self) -> None:
        runfiles.write_json_atomic(os.path.join(self.directory, META),
                                   dataclasses.asdict(self.meta))

    def add(self, path: str, key: FileKey, embedding: np.ndarray, seconds: float,
            windows: int) -> Entry:
        """Appends one file's mean embedding [d], then its index line."""
        row = np.ascontiguousarray(embedding, _DTYPE).reshape(-1)
        if not self.meta.dim:
            self.meta = dataclasses.replace(self.meta, dim=int(row.size))
            self._write_meta()
        if row.size != self.meta.dim:
            raise ValueError(f"{path}: an embedding of {row.size} values in a store of "
                             f"{self.meta.dim} ({self.directory})")
        if self._rows >= self.meta.shard_rows:
            self._close_shard()
            self._shard, self._rows = self._shard + 1, 0
        f = self._shard_file()
        f.seek(0, os.SEEK_END)
        f.write(row.tobytes())
        f.flush()
        entry = Entry(path, key.rel_path, key.size, key.mtime_ns, self._shard, self._rows,
                      round(float(seconds), 3), int(windows))
        if self._index is None:
            self._index = open(os.path.join(self.directory, INDEX), "a", **TEXT)
        self._index.write(json.dumps({"path": path, **key.fields(), "shard": entry.shard,
                                      "row": entry.row, "seconds": entry.seconds,
                                      "windows": entry.windows}) + "\n")
        self._index.flush()
        self._rows += 1
        self.count += 1
        return entry

    def _shard_file(self) -> IO[bytes]:
        if self._file is None:
            path = shard_path(self.directory, self._shard)
            self._file = open(path, "r+b" if os.path.exists(path) else "w+b")
            if self._rows == 0:
                self._file.truncate(0)
                _write_header(self._file, 0, self.meta.dim)
        return self._file

    def _close_shard(self) -> None:
        """Writes the open shard's header (its rows) and syncs it."""
        if self._file is not None:
            _write_header(self._file, self._rows, self.meta.dim)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def close(self) -> None:
        """Closes the open shard (its header up to date) and syncs the index."""
        self._close_shard()
        if self._index is not None:
            self._index.flush()
            os.fsync(self._index.fileno())
            self._index.close()
            self._index = None
