"""Shared fixtures: small real audio files made on the spot, and an extracted dataset."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

# Essentia before TensorFlow: the test modules use both in this process (the order that works;
# the other orders are tested in subprocesses by test_features.test_any_import_order_works).
import essentia.standard  # noqa: F401  isort: skip
import numpy as np
import pytest
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Fixture files checked into the repository (each directory's README says where they come from).
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def tone_mix(seconds: float, sr: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A deterministic chord + bass + noise-burst mix, [samples] or [samples, channels]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    y = sum(0.15 / (h + 1) * np.sin(2 * np.pi * f0 * r * (h + 1) * t)
            for r in (1, 1.25, 1.5) for h in range(4))
    y += 0.2 * np.sin(2 * np.pi * f0 / 2 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    beat = (np.mod(t, 0.5) < 0.03).astype(float)
    y += 0.3 * beat * rng.standard_normal(t.size)
    y = (y / np.max(np.abs(y)) * 0.8).astype(np.float32)
    if channels > 1:
        y = np.stack([y * (1 - 0.2 * c) for c in range(channels)], axis=1)
    return y


def write_clip(path: str, seconds: float, sr: int, seed: int = 0, **kwargs) -> str:
    channels = kwargs.pop("channels", 1)
    sf.write(path, tone_mix(seconds, sr, seed, channels), sr, **kwargs)
    return path


def run_module(module: str, *args: str, check: bool = True, timeout: float = 600):
    """Runs ``python -m module args`` from the project root; returns the CompletedProcess."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr[-5000:]}")
    return proc


def staged_clips(out) -> int:
    """Clips staged in an extraction's ``_staging`` (finished ones: an interrupted write leaves a
    hidden .tmp-* file)."""
    d = os.path.join(str(out), "_staging", "clips")
    return len([p for p in os.listdir(d) if p.endswith(".tfrecord") and not p.startswith(".")]) \
        if os.path.isdir(d) else 0


def kill_when_staged(cmd, out, at_least: int, timeout: float = 300) -> int:
    """Starts ``cmd`` in its own session, kill -9s the whole group once ``at_least`` clips are
    staged in ``out`` (or it ends, or ``timeout``); returns the clips staged at the kill."""
    import signal
    import time

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while staged_clips(out) < at_least and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return staged_clips(out)


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory):
    """Good clips in several formats plus every kind of bad input, and a catalogue CSV."""
    d = tmp_path_factory.mktemp("audio")
    rows = []
    good = [
        ("train", "a.wav", 12, 16000, {}, "piano;drums"),
        ("train", "b.flac", 12, 44100, {}, "piano"),
        ("train", "c.ogg", 12, 22050, {"format": "OGG", "subtype": "VORBIS"}, "drums;bass"),
        ("train", "d.mp3", 12, 16000, {"format": "MP3"}, "bass"),
        ("valid", "e_stereo_24bit.wav", 12, 48000, {"subtype": "PCM_24", "channels": 2}, "piano"),
        ("valid", "f_8bit.wav", 12, 8000, {"subtype": "PCM_U8"}, "drums"),
        ("test", "g_opus.opus", 12, 48000, {"format": "OGG", "subtype": "OPUS"}, "piano;bass"),
        ("test", "h_short.wav", 3, 16000, {}, "bass"),
        ("test", "ü_non_ascii é.wav", 12, 16000, {}, "piano;drums"),
        ("train", "i_6ch.wav", 12, 16000, {"channels": 6, "subtype": "FLOAT"}, "drums"),
    ]
    for seed, (split, name, seconds, sr, kw, tags) in enumerate(good):
        write_clip(str(d / name), seconds, sr, seed=seed, **kw)
        rows.append((name, split, tags))
    # Bad inputs: each must be skipped and recorded.
    (d / "empty.wav").write_bytes(b"")
    (d / "text.mp3").write_text("this is not audio\n")
    (d / "random.flac").write_bytes(np.random.default_rng(0).bytes(4096))
    full = (d / "a.wav").read_bytes()
    (d / "truncated.wav").write_bytes(full[:40])  # header only, no data
    (d / "truncated_half.wav").write_bytes(full[: len(full) // 2])  # header claims 12 s
    rows.append(("truncated_half.wav", "train", "piano"))
    sf.write(str(d / "silent.wav"), np.zeros(16000 * 5, np.float32), 16000)
    sf.write(str(d / "tiny.wav"), tone_mix(0.2, 16000), 16000)
    for name, split in (("empty.wav", "train"), ("text.mp3", "valid"), ("random.flac", "train"),
                        ("truncated.wav", "test"), ("silent.wav", "train"),
                        ("tiny.wav", "valid"), ("missing.wav", "test")):
        rows.append((name, split, "piano"))
    with open(d / "catalog.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "split", "tags"])
        writer.writerows(rows)
    return d


BAD_CLIPS = {
    "empty.wav": "empty file",
    "text.mp3": "Essentia could not decode",
    "random.flac": "Essentia could not decode",
    "truncated.wav": "Essentia could not decode",  # 40 bytes: not even a whole header
    "silent.wav": "silent",
    "tiny.wav": "too short",
    "missing.wav": "no such audio file",
}

EXTRACT_ARGS = ("--sr=12000,16000", "--n_mels=96,48,8", "--hop_factors=1,2,3,10",
                "--compressions=db,log,power", "--duration=10", "--clips_per_shard=2")


@pytest.fixture(scope="session")
def extracted(audio_dir, tmp_path_factory):
    """The Beam pipeline (DirectRunner, 2 workers) run once on the catalogue."""
    out = tmp_path_factory.mktemp("dataset")
    proc = run_module("pipelines.extract", f"--input={audio_dir / 'catalog.csv'}",
                      f"--output_dir={out}", "--direct_num_workers=2", *EXTRACT_ARGS)
    return out, proc


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tiny")
    run_module("tftag.main", "--mode=extract", f"--run_dir={run_dir}", "--num_clips=48",
               "--clip_seconds=3", "--sr=16000", "--n_mels=16", "--hop_factors=2",
               "--compressions=log", "--duration=3", "--clips_per_shard=8")
    return str(run_dir / "dataset")
