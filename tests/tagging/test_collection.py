"""Tagging a collection: rows that survive a kill -9, resuming (relative path + size + mtime),
--retry_failed, parallel decoding workers and decoding errors that end the run instead of
hanging it (tftag.tagging.results, tftag.tagging.tracks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

from conftest import ROOT, run_module, write_clip
from tftag.tagging import results, tracks
from tftag.features import MelConfig

STUDENT = "tftag_vgg_8x10"  # the cheapest shipped student: no training, tiny model
TAGS = ("rock", "piano", "drums")
SPEC = results.OutputSpec("m", TAGS, 3.0, 3.0, top_k=2)


def _result(path: str, seed: int = 0) -> tracks.TrackResult:
    taggram = np.random.default_rng(seed).random((2, len(TAGS))).astype(np.float32)
    return tracks.TrackResult(path, 6.0, np.array([0.0, 3.0]), 3.0, taggram, None, False)


def _folder(tmp_path, names=("a.wav", "b.wav", "sub/c.wav", "d.wav")) -> list[str]:
    paths = []
    for name in names:
        path = tmp_path / "music" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (10 + len(paths)))  # plan() reads names, sizes and mtimes only
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("ext", [".jsonl", ".csv"])
def test_resume_skips_tagged_drops_torn_and_changed_rows(tmp_path, ext):
    files = _folder(tmp_path)
    root, out = str(tmp_path / "music"), str(tmp_path / f"tags{ext}")
    with results.open_results(out, SPEC, root) as writer:
        for i, path in enumerate(files[:3]):
            writer.add(_result(path, i))
        writer.fail({"path": files[3], "error": "AudioDecodeError", "reason": "not audio"})
    rows = list(results.read_rows(out))
    assert [r["rel_path"] for r in rows] == ["a.wav", "b.wav", "sub/c.wav"]
    if ext == ".jsonl":
        assert set(rows[0]) >= {"path", "probabilities", "top", "size", "mtime_ns", "model"}
        assert rows[0]["probabilities"]["piano"] == float(_result(files[0], 0).probabilities[1])
    # Nothing to do on a rerun: the failed file is skipped too (unless retried, below).
    assert results.plan(out, files, root, SPEC) == results.Plan((), 3, 1, 0)
    # A kill tore the last line; b changed since it was tagged: both are tagged again, their
    # rows removed (each file stays in the output once).
    with open(out, "a") as f:
        f.write('{"path": "' + files[0][:5] if ext == ".jsonl" else files[0][:5])
    with open(files[1], "ab") as f:
        f.write(b"more")
    assert open(out).read().count("\n") == 3 + (ext == ".csv")
    plan = results.plan(out, files, root, SPEC)
    assert plan.todo == (files[1],) and (plan.done, plan.failed_before, plan.dropped) == (2, 1, 2)
    assert [r["rel_path"] for r in results.read_rows(out)] == ["a.wav", "sub/c.wav"]
    assert open(out).read().endswith("\n")
    # --retry_failed: the manifest keeps no record of the files retried (one is added back if
    # they fail again).
    plan = results.plan(out, files, root, SPEC, retry_failed=True)
    assert plan.todo == (files[1], files[3]) and plan.failed_before == 0
    assert not open(results.failures_path(out)).read()
    # Another model's output is refused, with the flag's name.
    other = results.OutputSpec("other", TAGS, 3.0, 3.0)
    with pytest.raises(ValueError, match="--output=.*give another --output or remove it"):
        results.plan(out, files, root, other)


def test_output_formats_and_json_is_written_at_the_end(tmp_path):
    with pytest.raises(ValueError, match=r"--output='tags.txt': give a .jsonl or .csv file"):
        results.check_output("tags.txt")
    with pytest.raises(ValueError, match="--retry_failed resumes a .jsonl or .csv --output"):
        results.check_output("tags.json", retry_failed=True)
    files = _folder(tmp_path, ("a.wav",))
    out = tmp_path / "tags.json"
    with pytest.raises(KeyboardInterrupt):
        with results.open_results(str(out), SPEC, str(tmp_path / "music")) as writer:
            writer.add(_result(files[0]))
            raise KeyboardInterrupt
    assert not out.exists()  # one document, written by a run that ends
    with results.open_results(str(out), SPEC, str(tmp_path / "music")) as writer:
        writer.add(_result(files[0]))
    doc = json.loads(out.read_text())
    assert doc["model"] == "m" and list(doc["files"]) == files and doc["failures"] == []


def test_the_streamed_writer_keeps_nothing_per_file(tmp_path):
    files = _folder(tmp_path, ("a.wav",))
    result = _result(files[0])
    writer = results.Results(str(tmp_path / "tags.jsonl"), SPEC, str(tmp_path / "music"))
    state = lambda: {k: (len(v) if hasattr(v, "__len__") else v)  # noqa: E731
                     for obj in (writer, writer._rows) for k, v in vars(obj).items()
                     if k not in ("_synced", "_file")}
    tracemalloc.start()
    for _ in range(250):  # warm-up: caches, buffers
        writer.add(result)
    before, used = state(), tracemalloc.get_traced_memory()[0]
    for _ in range(2000):
        writer.add(result)
    grown = tracemalloc.get_traced_memory()[0] - used
    tracemalloc.stop()
    writer.close()
    assert state() == before  # no list, dict or counter that grows with the rows
    assert grown < 10_000, grown  # 2000 more rows: nothing kept per row (a row is ~250 bytes)
    assert sum(1 for _ in open(tmp_path / "tags.jsonl")) == 2250


class _Silent:
    """A scorer of the right shapes whose scores do not matter."""

    spec = tracks.WindowSpec(MelConfig(16000, 16, 10, "log"), 30)

    def score(self, windows):
        return np.zeros((len(windows), 3), np.float32), np.zeros((len(windows), 0), np.float32)


def test_an_unexpected_error_in_the_decoding_thread_ends_the_run(tmp_path, monkeypatch):
    def broken(*_):
        raise ImportError("no module named soxr")
        yield  # noqa: unreachable  (a generator, as track_windows)

    monkeypatch.setattr(tracks, "track_windows", broken)
    start = time.monotonic()
    with pytest.raises(tracks.DecodingError, match=r"^ImportError: no module named soxr "
                                                   r"\(decoding a.wav\)$"):
        list(tracks.tag_tracks(_Silent(), ["a.wav", "b.wav"], workers=1))
    assert time.monotonic() - start < 5


def test_a_decoding_worker_killed_ends_the_run(tmp_path):
    path = write_clip(str(tmp_path / "a.wav"), 2.0, 16000)
    with tracks.DecoderPool(1) as pool:
        (pid,) = pool.pids
        got = list(tracks.tag_tracks(_Silent(), [path], pool=pool))  # the pool works
        assert got[0].taggram.shape == (1, 3)
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(tracks.DecodingError, match=rf"a decoding worker \(pid {pid}\) "
                                                       r"died \(killed by SIGKILL\)"):
            list(tracks.tag_tracks(_Silent(), [path] * 3, pool=pool))
        assert time.monotonic() - start < 10


# ----------------------------------------------------------------------------- the command

def _tag_args(folder, out, *extra) -> list[str]:
    return ["--mode=tag", f"--pretrained={STUDENT}", f"--audio={folder}", f"--output={out}",
            "--workers=2", *extra]


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """24 short 44.1 kHz stereo files (some in a subfolder) and one that is not audio."""
    folder = tmp_path_factory.mktemp("collection")
    (folder / "sub").mkdir()
    for i in range(24):
        write_clip(str(folder / ("sub" if i % 3 == 0 else "") / f"clip{i:02d}.flac"), 4.0 + i % 5,
                   44100, seed=i, channels=2)
    (folder / "broken.ogg").write_bytes(b"OggS not really audio")
    return folder


def test_kill_9_then_rerun_gives_every_file_once_as_an_uninterrupted_run(collection, tmp_path):
    from tftag.tagging import tag

    files = tag.audio_files(str(collection))
    reference = tmp_path / "reference.jsonl"  # uninterrupted, in this process, one thread
    summary = tag.tag(None, str(collection), str(reference), pretrained=STUDENT, workers=1,
                      embeddings=True)
    assert (summary["tagged"], summary["failed"]) == (24, 1)
    want = {r["rel_path"]: r for r in results.read_rows(str(reference))}

    out = tmp_path / "tags.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "tftag.main",
                             *_tag_args(collection, out, "--embeddings")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        deadline = time.monotonic() + 120
        while (not out.exists() or out.read_bytes().count(b"\n") < 6) and proc.poll() is None:
            assert time.monotonic() < deadline, "no rows within 120 s"
            time.sleep(0.01)
        children = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)  # the tagging process only: its workers must go too
        proc.wait()
        deadline = time.monotonic() + 10
        while any(map(_alive, children)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, children)), "decoding workers outlived their tagger"
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    at_kill = out.read_bytes().count(b"\n")
    assert 6 <= at_kill < 24, f"the kill came at {at_kill} of 24 rows"

    rerun = run_module("tftag.main", *_tag_args(collection, out, "--embeddings"))
    assert f"tagged {24 - at_kill}/{24 - at_kill} files with {STUDENT}" in rerun.stdout
    assert f"{at_kill} tagged before, skipped" in rerun.stdout
    # broken.ogg (decoded first) failed before the kill: not tried again (--retry_failed would)
    assert "1 unreadable before, skipped (--retry_failed retries them)" in rerun.stdout
    rows = list(results.read_rows(str(out)))
    assert sorted(r["rel_path"] for r in rows) == sorted(want)  # every file exactly once
    for row in rows:
        assert row["probabilities"] == want[row["rel_path"]]["probabilities"], row["rel_path"]
        assert {k: row[k] for k in ("size", "mtime_ns", "windows", "top")} == \
               {k: want[row["rel_path"]][k] for k in ("size", "mtime_ns", "windows", "top")}
    failed = results.failures_path(str(out))
    assert [json.loads(line)["rel_path"] for line in open(failed)] == ["broken.ogg"]
    assert len(files) == 25
    # The embedding store (--embeddings) too: every file indexed once, its row the
    # uninterrupted run's (tftag.tagging.embeddings; tests/tagging/test_similar.py).
    from tftag.tagging import embeddings

    def stored(output):
        directory = embeddings.store_dir(str(output))
        meta = embeddings.StoreMeta.read(directory)
        return {e.rel_path: embeddings.shard_vectors(directory, meta, e.shard,
                                                     np.array([e.row]))[0]
                for e in embeddings.read_entries(directory)}

    got, want_vectors = stored(out), stored(reference)
    lines = open(os.path.join(embeddings.store_dir(str(out)), embeddings.INDEX)).readlines()
    assert len(lines) == len(got) == 24 and sorted(got) == sorted(want)
    for rel, vector in got.items():
        np.testing.assert_allclose(vector, want_vectors[rel], rtol=1e-5, atol=1e-6)


def test_a_worker_whose_resampler_cannot_import_ends_the_run_at_once(collection, tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "soxr.py").write_text('raise ImportError("soxr: broken on purpose")\n')
    out = tmp_path / "tags.jsonl"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH"))
                                          if p))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tftag.main", *_tag_args(collection, out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert errors[0].startswith("error: ImportError: soxr: broken on purpose ("), errors
    assert "rerun the same command to resume" in errors[0]
    assert out.exists() and time.monotonic() - start < 120
