r"""Whole-track tagging side by side: tftag (pretrained MTT_musicnn) vs the musicnn package.

    .venv/bin/python -m benchmarks.tagging --musicnn_python=/root/musicnn-venv/bin/python

On the same real-music files, in one run: a folder of ``--num_tracks`` excerpts of
``--track_seconds`` s cut from Debian-packaged music (fetched by the ``debian`` catalogue), one
``--long_minutes`` file and one ``--huge_minutes`` file (tracks joined). Each tagger runs in its
own process: tftag through :func:`tftag.tag.tag_tracks` (model loaded once, decoding in a
background thread), the musicnn package through ``musicnn.extractor.extractor`` (its model is
rebuilt per file, as its API does) in its own virtualenv (``--musicnn_python``; it needs numpy
1.x and TF1-era Keras: see BUILD.md). Start-up (imports, model load) is excluded: each worker
times its loop over the files. Peak RSS of each worker process comes from ``wait4``. Prints one
JSON line: seconds per minute of audio per tagger and file set, speed-ups, peak RSS, and the
agreement of track-level tags (top-5 overlap, max |Δ| of mean probabilities).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

flags.DEFINE_string("musicnn_python", None, "Python of a virtualenv with the musicnn package "
                    "(numpy 1.26.4, tensorflow-cpu 2.21.0, tf_keras, librosa 0.11.0, "
                    "musicnn 0.1.0 --no-deps); absent: tftag alone, and the output says why.")
flags.DEFINE_integer("num_tracks", 12, "Excerpts in the folder.", lower_bound=1)
flags.DEFINE_float("track_seconds", 35.0, "Seconds per excerpt.")
flags.DEFINE_float("long_minutes", 20.0, "Minutes of the long file (0 = skip).")
flags.DEFINE_float("huge_minutes", 60.0, "Minutes of the file whose peak RSS is measured with "
                   "tftag only (0 = skip).")
flags.DEFINE_list("packages", ["hyperrogue-music", "lincity-ng-data", "marsshooter-data"],
                  "Debian packages the music comes from.")
flags.DEFINE_string("cache_dir", None, "debian catalogue cache (default ~/.cache/tftag).")
flags.DEFINE_string("worker", None, "internal: run one tagger over --files and print JSON.")
flags.DEFINE_list("files", [], "internal: the files of a worker.")
FLAGS = flags.FLAGS

MUSICNN_WORKER = r"""
import json, os, sys, time
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
from musicnn.extractor import extractor
files = sys.argv[1:]
extractor(files[0], model="MTT_musicnn", input_length=3, input_overlap=False)  # warm-up
out, start = {}, time.perf_counter()
for path in files:
    taggram, tags = extractor(path, model="MTT_musicnn", input_length=3, input_overlap=False,
                              extract_features=False)
    out[path] = {"mean": np.asarray(taggram).mean(axis=0).tolist(), "windows": len(taggram)}
print(json.dumps({"seconds": time.perf_counter() - start, "tags": list(tags), "files": out}))
"""


def _tftag_worker(files: list[str]) -> dict:
    from tftag import tag

    tagger = tag.Tagger.pretrained("MTT_musicnn")
    list(tag.tag_tracks(tagger, files[:1]))  # warm-up: trace the model, start the decoder
    out, start = {}, time.perf_counter()
    for r in tag.tag_tracks(tagger, files):
        if isinstance(r, dict):
            raise RuntimeError(f"{r['path']}: {r['reason']}")
        out[r.path] = {"mean": r.probabilities.tolist(), "windows": len(r.taggram)}
    return {"seconds": time.perf_counter() - start, "tags": tagger.tags, "files": out}


def _peak_rss_run(cmd: list[str]) -> tuple[dict, float]:
    """Runs a worker; returns its JSON and the peak RSS (MB) of exactly this child (wait4)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} exited {proc.returncode}")
    return json.loads(stdout.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def _write_ogg(path: str, pieces: list[np.ndarray], sr: int) -> None:
    """Ogg Vorbis in small writes (libsndfile's Vorbis encoder crashes on writes of minutes)."""
    import soundfile

    with soundfile.SoundFile(path, "w", sr, 1, format="OGG") as f:
        for piece in pieces:
            for start in range(0, piece.size, 16384):
                f.write(piece[start:start + 16384])


def _music(tmp: str) -> tuple[list[str], list[str], list[str]]:
    """Excerpts, the long file and the huge file, written as Ogg Vorbis from Debian music."""
    from tftag import features
    from tftag.datasets import debian

    catalog = debian.load_debian(packages=tuple(FLAGS.packages), cache_dir=FLAGS.cache_dir)
    paths = sorted({c.path for c in catalog.clips})
    sr = 44100
    excerpts, pool = [], []
    for i, path in enumerate(paths):
        audio = features.load_audio(path, sr)
        pool.append(audio)
        if len(excerpts) < FLAGS.num_tracks and audio.size >= FLAGS.track_seconds * sr:
            start = (audio.size - int(FLAGS.track_seconds * sr)) // 2
            out = os.path.join(tmp, f"excerpt{len(excerpts):02d}.ogg")
            _write_ogg(out, [audio[start:start + int(FLAGS.track_seconds * sr)]], sr)
            excerpts.append(out)
        if len(excerpts) >= FLAGS.num_tracks and sum(a.size for a in pool) >= 25 * 60 * sr:
            break

    def joined(minutes: float, name: str) -> list[str]:
        if not minutes:
            return []
        need, parts, total = int(minutes * 60 * sr), [], 0
        while total < need:
            for a in pool:
                parts.append(a[: need - total])
                total += parts[-1].size
                if total >= need:
                    break
        path = os.path.join(tmp, name)
        _write_ogg(path, parts, sr)
        return [path]

    return excerpts, joined(FLAGS.long_minutes, "long.ogg"), joined(FLAGS.huge_minutes, "huge.ogg")


def _agreement(a: dict, b: dict) -> dict:
    top5 = [len(set(np.argsort(-np.array(a["files"][p]["mean"]))[:5])
                & set(np.argsort(-np.array(b["files"][p]["mean"]))[:5])) for p in a["files"]]
    diff = max(float(np.abs(np.array(a["files"][p]["mean"]) - np.array(b["files"][p]["mean"])).max())
               for p in a["files"])
    return {"top5_common_min": min(top5), "top5_common_mean": round(float(np.mean(top5)), 2),
            "tracks_with_4_of_5": sum(t >= 4 for t in top5), "tracks": len(top5),
            "max_abs_diff_mean_probability": round(diff, 4)}


def main(argv):
    del argv
    if FLAGS.worker == "tftag":
        print(json.dumps(_tftag_worker(FLAGS.files)))
        return
    me = [sys.executable, "-m", "benchmarks.tagging"]
    result: dict = {"benchmark": "tagging", "model": "MTT_musicnn"}
    with tempfile.TemporaryDirectory() as tmp:
        excerpts, long_file, huge_file = _music(tmp)
        sets = {"folder": excerpts, "long": long_file}
        for name, files in sets.items():
            if not files:
                continue
            minutes = FLAGS.track_seconds * len(files) / 60 if name == "folder" else FLAGS.long_minutes
            ours, rss = _peak_rss_run(me + ["--worker=tftag", f"--files={','.join(files)}"])
            row = {"files": len(files), "minutes": round(minutes, 2),
                   "tftag_s_per_min": round(ours["seconds"] / minutes, 3),
                   "tftag_peak_rss_mb": round(rss)}
            if FLAGS.musicnn_python:
                theirs, rss = _peak_rss_run([FLAGS.musicnn_python, "-c", MUSICNN_WORKER, *files])
                row.update({"musicnn_s_per_min": round(theirs["seconds"] / minutes, 3),
                            "musicnn_peak_rss_mb": round(rss),
                            "speedup": round(theirs["seconds"] / ours["seconds"], 2),
                            **_agreement(ours, theirs)})
            result[name] = row
        if huge_file:
            ours, rss = _peak_rss_run(me + ["--worker=tftag", f"--files={huge_file[0]}"])
            result["huge"] = {"minutes": FLAGS.huge_minutes, "tftag_peak_rss_mb": round(rss),
                              "tftag_s_per_min": round(ours["seconds"] / FLAGS.huge_minutes, 3)}
    if not FLAGS.musicnn_python:
        result["musicnn_package"] = ("not run: give --musicnn_python (a virtualenv with numpy "
                                     "1.26.4, tensorflow-cpu 2.21.0, tf_keras, librosa, musicnn)")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
