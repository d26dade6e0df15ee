"""Tagging on Beam (pipelines/tag.py, tftag.tagging.beam): the DirectRunner and the DaskRunner
give the rows of ``--mode=tag --output=tags.jsonl`` on the same folder — same paths, keys and
fields, probabilities within 1e-6 (equal bit for bit here) — and record the broken file in the
failures manifest; shards are merged sorted by path, and a stale or incomplete output is one
line naming it."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import run_module, write_clip
from tftag.extraction import pipeline
from tftag.tagging import beam as tag_beam
from tftag.tagging import results

STUDENT = "tftag_vgg_8x10"  # the cheapest shipped student: no training
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    """Four tracks (WAV, stereo 44.1-kHz Vorbis, FLAC in a sub-folder, one shorter than a
    window) plus a broken file, and ``--mode=tag``'s rows of them (2 decoding workers)."""
    from tftag.tagging import tag

    src = tmp_path_factory.mktemp("beam_music")
    (src / "sub").mkdir()
    write_clip(str(src / "a.wav"), 12, 22050, seed=0)
    write_clip(str(src / "b.ogg"), 8, 44100, seed=1, format="OGG", subtype="VORBIS", channels=2)
    write_clip(str(src / "sub" / "c.flac"), 20, 16000, seed=2, format="FLAC")
    write_clip(str(src / "d.wav"), 2, 16000, seed=3)
    (src / "broken.wav").write_text("not audio")
    local = str(tmp_path_factory.mktemp("local") / "tags.jsonl")
    summary = tag.tag(None, str(src), local, pretrained=STUDENT, workers=2)
    assert (summary["tagged"], summary["failed"]) == (4, 1)
    return src, local


def _rows(path: str) -> list[dict]:
    return sorted(results.read_rows(path), key=lambda row: row["path"])


def _failures(path: str) -> list[dict]:
    with open(results.failures_path(path)) as f:
        return sorted((json.loads(line) for line in f), key=lambda r: r["path"])


def assert_same_rows(local: str, merged: str) -> None:
    """Rows of ``merged`` (sorted by path) are the local run's; the failures too."""
    rows, expected = list(results.read_rows(merged)), _rows(local)
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    assert [r["path"] for r in rows] == [r["path"] for r in expected] and len(rows) == 4
    for row, want in zip(rows, expected):
        probs, want_probs = row.pop("probabilities"), want.pop("probabilities")
        assert list(probs) == list(want_probs)
        assert max(abs(probs[t] - want_probs[t]) for t in probs) <= TOLERANCE, row["path"]
        row.pop("top"), want.pop("top")
        assert row == want
    failures = _failures(merged)
    assert failures == _failures(local)
    assert [f["rel_path"] for f in failures] == ["broken.wav"]
    assert failures[0]["error"] == "AudioDecodeError"


def test_direct_runner_gives_the_local_rows(music, tmp_path):
    """In-process DirectRunner, 3 shards of at most 2 files; counters; stale output refused."""
    src, local = music
    plan = tag_beam.TagPlan(str(src), str(tmp_path / "out"), pretrained=STUDENT,
                            files_per_shard=2)
    summary = tag_beam.run(plan, pipeline.pipeline_options("DirectRunner"))
    assert (summary["files"], summary["tagged"], summary["failed"], summary["shards"]) == (5, 4, 1, 3)
    assert summary["beam_counters"] == {"files_tagged": 4, "files_failed": 1,
                                        "audio_seconds": 42, "shards_written": 3}
    names = sorted(os.listdir(plan.output_dir))
    assert names == ["rows-00000-of-00003.jsonl", "rows-00001-of-00003.failures.jsonl",
                     "rows-00001-of-00003.jsonl", "rows-00002-of-00003.jsonl",
                     "tags.failures.jsonl", "tags.jsonl"]
    assert_same_rows(local, plan.output)
    with open(local) as f, open(plan.output) as g:  # bit for bit here, in sorted order
        assert sorted(f.read().splitlines()) == sorted(g.read().splitlines())
    with pytest.raises(ValueError, match=r"--output_dir=.*out' holds an earlier job's rows "
                                         r"\(rows-00000-of-00003.jsonl, ...\).*--overwrite"):
        tag_beam.prepare_output(plan)
    # The merge alone, again: the same files; a missing shard is named.
    before = open(plan.output).read()
    assert tag_beam.merge(plan.output_dir)["tagged"] == 4 and open(plan.output).read() == before
    partial = tmp_path / "partial"
    shutil.copytree(plan.output_dir, partial)
    os.remove(partial / "rows-00001-of-00003.jsonl")
    with pytest.raises(ValueError, match=r"shard rows-00001-of-00003.jsonl \(and 0 more\) "
                                         r"missing: the job did not finish"):
        tag_beam.merge(str(partial))


def test_dask_runner_gives_the_local_rows(music, tmp_path):
    """pipelines/tag.py on a LocalCluster of 2 worker processes (TensorFlow in the workers,
    Essentia in their children), one file per shard."""
    src, local = music
    out = tmp_path / "dask"
    proc = run_module("pipelines.tag", f"--audio={src}", f"--pretrained={STUDENT}",
                      f"--output_dir={out}", "--files_per_shard=1", "--runner=DaskRunner",
                      "--dask_workers=2")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["runner"] == {"name": "DaskRunner", "local_workers": 2}
    assert (summary["tagged"], summary["failed"], summary["shards"]) == (4, 1, 5)
    assert summary["beam_counters"] is None  # the DaskRunner reports no metrics
    assert_same_rows(local, str(out / "tags.jsonl"))


def test_the_model_flags_are_checked_first(tmp_path):
    with pytest.raises(ValueError, match="needs --pretrained .* or --model_dir"):
        tag_beam.TagPlan(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="--files_per_shard=0: need at least 1"):
        tag_beam.TagPlan(str(tmp_path), str(tmp_path / "out"), STUDENT, files_per_shard=0)
