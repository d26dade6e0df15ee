"""Extraction on Beam's DaskRunner (a dask.distributed cluster of worker processes).

The dataset must not depend on the runner: the same clip ids, the same Example bytes in every
shard, the same failures manifest and the same dataset.json apart from "created" and "runner";
a killed Dask run resumes; the worker processes load TensorFlow and never Essentia (it runs in
each worker's child process, tftag/audio/_essentia.py).
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from tftag.storage import data
from tftag.features import MelConfig

from conftest import kill_when_staged, run_module, write_clip

ARGS = ["--sr=16000", "--n_mels=48,16", "--hop_factors=1,2", "--compressions=log",
        "--duration=10", "--clips_per_shard=3"]
BASES = ("sr16000-mel48", "sr16000-mel16")


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    """Eight 12-s mixes in three formats plus a broken file, and the DirectRunner's dataset.

    (Equal bytes need the one-BLAS-thread filterbank product of tftag.features.power_mel: Dask
    workers run OpenBLAS on one thread, this process on all cores.)"""
    src = tmp_path_factory.mktemp("dask_music")
    for i in range(8):
        kwargs = ({"format": "OGG", "subtype": "VORBIS"} if i % 3 == 1 else
                  {"format": "FLAC"} if i % 3 == 2 else {})
        ext = {0: "wav", 1: "ogg", 2: "flac"}[i % 3]
        write_clip(str(src / f"clip{i:02d}.{ext}"), 12, 22050, seed=i, **kwargs)
    (src / "broken.wav").write_text("not audio")
    direct = tmp_path_factory.mktemp("direct") / "dataset"
    run_module("pipelines.extract", f"--input={src}", f"--output_dir={direct}", *ARGS)
    return src, direct


def assert_same_dataset(a, b, runner: dict):
    """Equal shards byte for byte, equal failures, dataset.json equal but for created/runner."""
    for base in BASES:
        names = sorted(os.listdir(a / base))
        assert names == sorted(os.listdir(b / base)) and names
        for name in names:
            assert (a / base / name).read_bytes() == (b / base / name).read_bytes(), (base, name)
    assert (a / "failures.jsonl").read_text() == (b / "failures.jsonl").read_text()
    meta_a = json.loads((a / "dataset.json").read_text())
    meta_b = json.loads((b / "dataset.json").read_text())
    assert meta_a["runner"] == {"name": "DirectRunner"} and meta_b["runner"] == runner
    for meta in (meta_a, meta_b):
        del meta["created"], meta["runner"]
    assert meta_a == meta_b
    ids = [e["clip_id"] for e in data.read_examples(str(b), MelConfig(16000, 16, 2, "log", 10.0))]
    assert sorted(ids) == [f"clip{i:02d}.{('wav', 'ogg', 'flac')[i % 3]}" for i in range(8)]


def test_killed_dask_run_resumes_to_the_direct_runners_dataset(music, tmp_path):
    """A 2-worker LocalCluster run, kill -9 of the whole job (client, scheduler, workers,
    Essentia children) mid-run, rerun: the DirectRunner's dataset, byte for byte."""
    src, direct = music
    out = tmp_path / "killed"
    args = [f"--input={src}", f"--output_dir={out}", *ARGS, "--runner=DaskRunner",
            "--dask_workers=2"]
    staged_at_kill = kill_when_staged([sys.executable, "-m", "pipelines.extract", *args], out, 2)
    assert 2 <= staged_at_kill < 8, staged_at_kill
    assert not (out / "dataset.json").exists()
    resumed = run_module("pipelines.extract", *args)
    assert f"{staged_at_kill} already staged" in resumed.stderr
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["runner"] == {"name": "DaskRunner", "local_workers": 2}
    assert summary["clips_written"] == 8 and summary["clips_failed"] == 1
    assert summary["beam_counters"] is None  # the DaskRunner reports no metrics
    assert_same_dataset(direct, out, {"name": "DaskRunner", "local_workers": 2})
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["clip_id"] for f in failures] == ["broken.wav"]


def test_dask_address_of_a_running_cluster_keeps_essentia_out_of_the_workers(music, tmp_path):
    """--dask_address: a scheduler started elsewhere; its workers import TensorFlow, not Essentia."""
    from distributed import Client, LocalCluster

    src, direct = music
    out = tmp_path / "remote"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        run_module("pipelines.extract", f"--input={src}", f"--output_dir={out}", *ARGS,
                   "--runner=DaskRunner", f"--dask_address={address}")
        with Client(address) as client:
            modules = client.run(lambda: sorted(m for m in ("essentia", "tensorflow", "tftag.extraction.pipeline")
                                                if m in sys.modules))
    assert len(modules) == 2
    assert all(found == ["tensorflow", "tftag.extraction.pipeline"] for found in modules.values()), modules
    assert_same_dataset(direct, out, {"name": "DaskRunner", "address": address})


def test_teacher_labels_on_dask_equal_the_direct_runners(music, tmp_path):
    """Teacher labels: TensorFlow (the teacher) in the Dask workers, Essentia in their children;
    the soft and hard labels, and every shard, equal the DirectRunner's byte for byte."""
    src, _ = music
    subset = tmp_path / "three"
    subset.mkdir()
    for name in ("clip00.wav", "clip01.ogg", "clip02.flac"):
        (subset / name).symlink_to(src / name)
    args = [f"--input={subset}", "--sr=16000", "--n_mels=16", "--hop_factors=1",
            "--compressions=log", "--duration=10", "--labels=teacher:MTT_musicnn"]
    run_module("pipelines.extract", *args, f"--output_dir={tmp_path / 'direct'}")
    run_module("pipelines.extract", *args, f"--output_dir={tmp_path / 'dask'}",
               "--runner=DaskRunner", "--dask_workers=2")
    names = sorted(os.listdir(tmp_path / "direct" / "sr16000-mel16"))
    assert names == sorted(os.listdir(tmp_path / "dask" / "sr16000-mel16"))
    for name in names:
        assert ((tmp_path / "direct" / "sr16000-mel16" / name).read_bytes()
                == (tmp_path / "dask" / "sr16000-mel16" / name).read_bytes()), name
    examples = list(data.read_examples(str(tmp_path / "dask"), MelConfig(16000, 16, 1, "log", 10.0)))
    assert len(examples) == 3
    assert all(e["soft_labels"].shape == (50,) and e["labels"].sum() == 3 for e in examples)


def test_dask_address_needs_the_dask_runner(music, tmp_path):
    src, _ = music
    proc = run_module("pipelines.extract", f"--input={src}", f"--output_dir={tmp_path / 'x'}",
                      *ARGS, "--dask_address=tcp://127.0.0.1:1", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--dask_address is for --runner=DaskRunner, not --runner=DirectRunner" in proc.stderr


def test_an_unreachable_scheduler_is_a_one_line_error(music, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src, _ = music
    proc = run_module("pipelines.extract", f"--input={src}", f"--output_dir={tmp_path / 'x'}",
                      *ARGS, "--runner=DaskRunner", f"--dask_address=tcp://127.0.0.1:{port}",
                      "--dask_connect_timeout=2", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (f"--dask_address=tcp://127.0.0.1:{port}: no Dask scheduler answered within 2 s"
            in proc.stderr), proc.stderr[-2000:]
    assert not (tmp_path / "x" / "dataset.json").exists()


def test_a_worker_that_cannot_see_the_output_dir_says_so(tmp_path):
    """Remote workers write into --output_dir: one that lacks it names the shared-filesystem need."""
    from tftag.extraction import extractor

    plan = extractor.ExtractionPlan(str(tmp_path / "elsewhere"), (MelConfig(16000, 16, 1, "log", 10.0),),
                                     ("a",))
    with pytest.raises(extractor.SharedStorageError,
                       match=r"--output_dir=.*elsewhere is not visible on worker host .*: it must "
                             r"be a directory every worker mounts at the same path"):
        extractor.check_visible(plan)
    os.makedirs(os.path.join(plan.staging_dir, "clips"))
    extractor.check_visible(plan)  # visible: no error
