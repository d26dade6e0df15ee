"""``--mode=tag``'s outputs: rows that survive a crash, the failures manifest, and resuming.

The format is the extension of ``--output``:

* ``.jsonl``: one JSON object per file and line, appended as the file is tagged: ``path``,
  ``rel_path``, ``size``, ``mtime_ns``, ``model``, ``seconds``, ``windows``, ``padded``,
  ``probabilities`` ({tag: value}) and ``top`` ([[tag, value], ...], the ``top_k`` most probable).
* ``.csv``: one row per file, appended: the columns of :data:`CSV_FIELDS`, then one per tag
  (6 decimals).
* ``.json``: one document (model, tags, window and hop seconds, per file its probabilities, top
  tags and taggram, the failures), written atomically at the end: for small folders. It is held in
  memory until then and not resumed (a rerun tags every file again).

Streamed rows (``.jsonl``, ``.csv``) are flushed to the operating system as each is written, so a
crash or ``kill -9`` loses only the files being decoded or scored, and synced to disk every
FSYNC_SECONDS and at the end; the writer keeps no per-file state, so memory does not grow with the
number of files (taggrams are per-file side outputs of :mod:`tftag.tagging.tag`; embeddings go
to the sharded store of :mod:`tftag.tagging.embeddings`).
Unreadable files go to ``<output stem>.failures.jsonl`` (path, rel_path, size, mtime_ns, error,
reason), appended as they fail, whatever the format.

Resuming (``.jsonl``, ``.csv``) is by file identity, not content: a file is the one of a row when
its path relative to ``--audio`` (its name when ``--audio`` is one file), its size and its
modification time (ns) are the row's. A rerun of the same command on the same output skips the
files that have a row, and those in the failures manifest unless ``retry_failed``. Before it
appends, it tidies what an interrupted or older run left: a last line without its newline (torn
by a kill) is cut off and its file tagged again; the row or failure record of a file whose size
or mtime changed is removed and the file tagged again (its new row is appended: each file is in
the output once); rows of files not among this run's are kept. The output so ends with the rows
and probabilities of an uninterrupted run, in completion order rather than folder order. An
output with another model's rows (or other CSV columns) is refused.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import time
from typing import IO, Iterator, Mapping, Sequence

import numpy as np

from tftag.runs import runfiles
from tftag.tagging.tracks import TrackResult

FORMATS = (".jsonl", ".csv", ".json")
STREAMED = (".jsonl", ".csv")
FSYNC_SECONDS = 5.0
CSV_FIELDS = ("path", "seconds", "windows", "padded", "rel_path", "size", "mtime_ns", "model")
TEXT = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}  # any file name


def output_format(output: str) -> str:
    """The format of ``--output``: one of FORMATS (else a ValueError naming the flag)."""
    ext = os.path.splitext(output)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"--output={output!r}: give a .jsonl or .csv file (rows written as files "
                         "are tagged; a rerun resumes) or a .json file (written at the end)")
    return ext


def check_output(output: str, retry_failed: bool = False) -> str:
    """The format of ``--output``, checked with ``--retry_failed`` (which needs a streamed
    one); else a ValueError naming the flags."""
    fmt = output_format(output)
    if retry_failed and fmt not in STREAMED:
        raise ValueError(f"--retry_failed resumes a .jsonl or .csv --output, not {output!r} "
                         "(a .json output is written whole at the end)")
    return fmt


def failures_path(output: str) -> str:
    """``<output stem>.failures.jsonl``: one JSON record per unreadable file."""
    return os.path.splitext(output)[0] + ".failures.jsonl"


def top_tags(tags: Sequence[str], probabilities: np.ndarray,
             k: int = 5) -> list[tuple[str, float]]:
    """The k most probable tags with their probabilities."""
    order = np.argsort(-probabilities)[:k]
    return [(tags[i], float(probabilities[i])) for i in order]


def rel_path(path: str, root: str) -> str:
    """``path`` relative to ``root`` ('/'-separated), or its name when ``root`` is a file."""
    rel = os.path.relpath(path, root) if os.path.isdir(root) else os.path.basename(path)
    return rel.replace(os.sep, "/")


@dataclasses.dataclass(frozen=True)
class FileKey:
    """What makes a file the one a row was made of (no content hash).

    Attributes:
      rel_path: its path relative to ``--audio`` ('/'-separated; its name when ``--audio`` is
        one file).
      size: bytes (-1: it could not be read).
      mtime_ns: modification time in nanoseconds (-1: it could not be read).
    """

    rel_path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str, root: str) -> "FileKey":
        """The key of ``path``, found below (or as) ``root``, as it is now."""
        try:
            st = os.stat(path)
        except OSError:  # gone: it will fail to read, and be recorded
            return cls(rel_path(path, root), -1, -1)
        return cls(rel_path(path, root), st.st_size, st.st_mtime_ns)

    @classmethod
    def of_record(cls, record: Mapping) -> "FileKey | None":
        """The key a row or failure record holds (None: it holds none)."""
        try:
            return cls(str(record["rel_path"]), int(record["size"]), int(record["mtime_ns"]))
        except (KeyError, TypeError, ValueError):
            return None

    def fields(self) -> dict:
        """``{"rel_path", "size", "mtime_ns"}``, as rows hold them."""
        return {"rel_path": self.rel_path, "size": self.size, "mtime_ns": self.mtime_ns}


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """What the rows of one run share.

    Attributes:
      model: the model's name (every row of an output must have it).
      tags: the model's tags (the CSV's tag columns).
      window_seconds / hop_seconds: the windows (the .json document's header).
      top_k: top tags per row.
    """

    model: str
    tags: tuple[str, ...]
    window_seconds: float
    hop_seconds: float
    top_k: int = 5

    @property
    def csv_header(self) -> list[str]:
        """The columns of a CSV output."""
        return [*CSV_FIELDS, *self.tags]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run does, given what earlier runs wrote to its output.

    Attributes:
      todo: the files to tag, in folder order.
      done: files skipped: tagged before and unchanged.
      failed_before: files skipped: recorded as unreadable and unchanged (``retry_failed``
        retries them).
      dropped: rows removed: torn by a kill, or of files changed since.
      done_paths: the relative paths of the ``done`` files (not compared).
    """

    todo: tuple[str, ...]
    done: int = 0
    failed_before: int = 0
    dropped: int = 0
    done_paths: frozenset[str] = dataclasses.field(default=frozenset(), compare=False,
                                                   repr=False)


# ----------------------------------------------------------------------------- reading back

def _complete_size(path: str) -> int:
    """The bytes of ``path`` up to and with its last newline (a kill can tear the line after)."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            step = min(pos, 1 << 16)
            f.seek(pos - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                return pos - step + nl + 1
            pos -= step
    return 0


def _records(path: str, fmt: str, size: int) -> Iterator[tuple[dict, object]]:
    """(record, what to write back) of each complete row of the first ``size`` bytes; an
    unreadable line gives ``{}``. For a CSV the header is checked by the caller: the first
    item is ({"header": fields}, header row)."""
    with open(path, **TEXT) as f:
        lines = _bounded_lines(f, size)
        if fmt == ".csv":
            rows = csv.reader(lines)
            header = next(rows, None)
            if header is not None:
                yield {"header": header}, header
                for row in rows:
                    yield dict(zip(header, row)), row
            return
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            yield (record if isinstance(record, dict) else {}), line


def _bounded_lines(f: IO[str], size: int) -> Iterator[str]:
    """The lines of a text file opened with newline='' whose bytes lie within ``size``."""
    read = 0
    for line in f:
        read += len(line.encode("utf-8", "surrogateescape"))
        if read > size:
            return
        yield line


@dataclasses.dataclass
class _Scan:
    """One pass over a file of rows: which to keep, and the keys they hold."""

    keep: set[int]  # indices of the records kept
    keys: dict[str, FileKey]  # rel_path -> key of the kept records of this run's files
    total: int  # records read (the header excluded)


def _scan(path: str, fmt: str, size: int, spec: OutputSpec | None,
          current: Mapping[str, FileKey], drop: set[str]) -> _Scan:
    """Reads a row file (``spec``: the output, checked against it; None: a failures manifest);
    keeps the last record of each file unless its file changed or is in ``drop``."""
    last: dict[str, tuple[int, FileKey]] = {}
    total = 0
    for i, (record, _) in enumerate(_records(path, fmt, size)):
        if "header" in record:
            if spec is not None and record["header"] != spec.csv_header:
                raise ValueError(f"--output={path!r} has other columns than this run's "
                                 f"({spec.model}: {', '.join(CSV_FIELDS)} and its "
                                 f"{len(spec.tags)} tags): give another --output or remove it")
            continue
        total += 1
        if spec is not None and record.get("model", spec.model) != spec.model:
            raise ValueError(f"--output={path!r} holds rows of model {record.get('model')!r}, "
                             f"not {spec.model!r}: give another --output or remove it")
        key = FileKey.of_record(record)
        if key is not None:
            last[key.rel_path] = (i, key)
    keep, keys = set(), {}
    for rel, (i, key) in last.items():
        now = current.get(rel)
        if now is None:  # not among this run's files: kept as it is
            keep.add(i)
        elif now == key and rel not in drop:
            keep.add(i)
            keys[rel] = key
    if fmt == ".csv":
        keep.add(0)  # the header
    return _Scan(keep, keys, total)


def _tidy(path: str, fmt: str, size: int, scan: _Scan) -> int:
    """Cuts a torn last line off ``path`` and rewrites it without the records not kept;
    returns the records (and torn lines) removed."""
    torn = int(os.path.getsize(path) > size)
    kept = len(scan.keep) - (1 if fmt == ".csv" else 0)
    if kept == scan.total:
        if torn:
            os.truncate(path, size)
        return torn
    with runfiles.atomic_path(path) as tmp, open(tmp, "w", **TEXT) as out:
        writer = csv.writer(out, lineterminator="\n") if fmt == ".csv" else None
        for i, (_, raw) in enumerate(_records(path, fmt, size)):
            if i in scan.keep:
                writer.writerow(raw) if writer else out.write(raw)
        out.flush()
        os.fsync(out.fileno())
    return scan.total - kept + torn


def plan(output: str, files: Sequence[str], root: str, spec: OutputSpec,
         retry_failed: bool = False) -> Plan:
    """Which of ``files`` (found below ``root``, ``--audio``) to tag into ``output``, after
    tidying it and its failures manifest (see the module's docstring).

    Raises:
      ValueError: ``output`` holds another model's rows or other columns; ``retry_failed``
        with a .json output.
    """
    fmt = check_output(output, retry_failed)
    if fmt not in STREAMED:
        return Plan(tuple(files))
    current = {}
    for path in files:
        key = FileKey.of(path, root)
        current[key.rel_path] = key
    done: dict[str, FileKey] = {}
    dropped = 0
    if os.path.exists(output):
        size = _complete_size(output)
        scan = _scan(output, fmt, size, spec, current, set())
        dropped = _tidy(output, fmt, size, scan)
        done = scan.keys
    failed: dict[str, FileKey] = {}
    manifest = failures_path(output)
    if os.path.exists(manifest):
        retried = set(current) if retry_failed else set(done)
        size = _complete_size(manifest)
        scan = _scan(manifest, ".jsonl", size, None, current, retried)
        _tidy(manifest, ".jsonl", size, scan)
        failed = scan.keys
    todo = tuple(p for p in files if (rel := rel_path(p, root)) not in done and rel not in failed)
    return Plan(todo, len(done), len(failed), dropped, frozenset(done))


def read_rows(output: str) -> Iterator[dict]:
    """The rows of a .jsonl or .csv output as dicts (CSV values as text), torn lines left out."""
    fmt = output_format(output)
    for record, _ in _records(output, fmt, _complete_size(output)):
        if record and "header" not in record:
            yield record


# ----------------------------------------------------------------------------- writing

class _Appender:
    """A text file appended to line by line: each line flushed to the OS at once, the file
    synced to disk every FSYNC_SECONDS and at :meth:`close`. Opened at the first line."""

    def __init__(self, path: str, header: Sequence[str] | None = None):
        self.path, self._header = path, header
        self._file: IO[str] | None = None
        self._csv = None
        self._synced = time.monotonic()

    def open(self) -> IO[str]:
        """Opens the file for appending (a new CSV gets its header); returns it."""
        if self._file is not None:
            return self._file
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._file = open(self.path, "a", **TEXT)
        if self._header is not None:
            self._csv = csv.writer(self._file, lineterminator="\n")
            if self._file.tell() == 0:
                self._csv.writerow(self._header)
        return self._file

    def write(self, line: str | Sequence[object]) -> None:
        """Appends a text line (with its newline) or, for a CSV, a row."""
        f = self.open()
        self._csv.writerow(line) if self._csv else f.write(line)
        f.flush()
        if time.monotonic() - self._synced >= FSYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        """Flushes and syncs the file to disk."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        self._synced = time.monotonic()

    def close(self) -> None:
        """Syncs and closes the file (it reopens at the next line)."""
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None


class Results:
    """Where a run's results go: :meth:`add` per tagged file, :meth:`fail` per unreadable one,
    :meth:`close` at the end (also after an error: what was written stays).

    Streamed formats append and keep nothing per file; ``.json`` keeps its document until
    :meth:`close` writes it. Use :func:`open_results`.
    """

    def __init__(self, output: str, spec: OutputSpec, root: str):
        self.output, self.spec, self.root = output, spec, root
        self.format = output_format(output)
        self._failures = _Appender(failures_path(output))
        if self.format == ".csv":
            self._rows = _Appender(output, spec.csv_header)
        elif self.format == ".jsonl":
            self._rows = _Appender(output)
        else:
            self._document: dict = {"files": {}, "failures": []}
            if os.path.exists(self._failures.path):  # a .json run starts afresh
                os.remove(self._failures.path)
        if self.format in STREAMED:
            self._rows.open()  # the output exists from the start (a CSV with its header)

    def add(self, result: TrackResult) -> None:
        """Writes one tagged file's row (the file's key taken now)."""
        tags, probs = self.spec.tags, result.probabilities
        if self.format == ".json":
            self._document["files"][result.path] = _json_entry(result, self.spec)
            return
        key = FileKey.of(result.path, self.root)
        if self.format == ".csv":
            self._rows.write([result.path, f"{result.seconds:.3f}", len(result.taggram),
                              int(result.padded), key.rel_path, key.size, key.mtime_ns,
                              self.spec.model, *(f"{v:.6f}" for v in probs)])
            return
        row = {"path": result.path, **key.fields(), "model": self.spec.model,
               "seconds": result.seconds, "windows": len(result.taggram),
               "padded": result.padded, "probabilities": dict(zip(tags, map(float, probs))),
               "top": top_tags(tags, probs, self.spec.top_k)}
        self._rows.write(json.dumps(row) + "\n")

    def fail(self, record: Mapping) -> None:
        """Records an unreadable file (``{"path", "error", "reason"}``) in the manifest."""
        record = {"path": record["path"], **FileKey.of(record["path"], self.root).fields(),
                  **{k: v for k, v in record.items() if k != "path"}}
        self._failures.write(json.dumps(record) + "\n")
        if self.format == ".json":
            self._document["failures"].append(record)

    @property
    def failures_file(self) -> str | None:
        """The failures manifest, if one exists."""
        return self._failures.path if os.path.exists(self._failures.path) else None

    def close(self, complete: bool = True) -> None:
        """Syncs the streamed files; writes the .json document (``complete``: the run ended
        normally; an interrupted .json run writes nothing)."""
        self._failures.close()
        if self.format != ".json":
            self._rows.close()
        elif complete:
            runfiles.write_json_atomic(self.output, {
                "model": self.spec.model, "tags": list(self.spec.tags),
                "window_seconds": self.spec.window_seconds, "hop_seconds": self.spec.hop_seconds,
                **self._document})


def _json_entry(r: TrackResult, spec: OutputSpec) -> dict:
    return {"seconds": r.seconds, "windows": len(r.taggram), "padded": r.padded,
            "probabilities": dict(zip(spec.tags, map(float, r.probabilities))),
            "top": top_tags(spec.tags, r.probabilities, spec.top_k),
            "taggram": {"start": [round(float(x), 4) for x in r.starts],
                        "end": [round(float(x + r.window_seconds), 4) for x in r.starts],
                        "probabilities": np.round(r.taggram, 6).tolist()}}


@contextlib.contextmanager
def open_results(output: str, spec: OutputSpec, root: str) -> Iterator[Results]:
    """:class:`Results` for ``output``, closed at the end of the block (on an error too: the
    streamed rows stay; a .json document is written only by a run that ends normally)."""
    results = Results(output, spec, root)
    try:
        yield results
    except BaseException:
        results.close(complete=False)
        raise
    results.close()
