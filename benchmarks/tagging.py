r"""Whole-track tagging side by side: tftag's MTT_musicnn, every shipped student, the musicnn package.

    .venv/bin/python -m benchmarks.tagging --musicnn_python=/root/musicnn-venv/bin/python

On the same real-music files, in one run: a folder of ``--num_tracks`` excerpts of
``--track_seconds`` s cut from Debian-packaged music (fetched by the ``debian`` catalogue; by
default the students' held-out packages, which no student saw; ``--audio=FOLDER``: your files
instead), one ``--long_minutes`` file and one ``--huge_minutes`` file (tracks joined). Each
tagger runs in its own process: tftag's MTT_musicnn through :func:`tftag.tagging.tag.tag_tracks` (model
loaded once, decoding in a background thread); every shipped student (``--students``, default
all of :func:`tftag.models.pretrained.students`) the same way through its SavedModel
(``--mode=export --pretrained=NAME``, the ``serving_window`` signature) and through its TFLite
``dynamic`` file (one interpreter thread); the musicnn package through
``musicnn.extractor.extractor`` (its model is rebuilt per file, as its API does) in its own
virtualenv (``--musicnn_python``; it needs numpy 1.x and TF1-era Keras: see BUILD.md). Start-up
(imports, model load, export, conversion) is excluded: each worker times its loop over the
files after a warm-up file. Peak RSS of each worker process comes from ``wait4``. Each tftag
worker also times the model alone on precomputed mel windows of the first file (the embedded
case): windows (examples) per second and seconds of audio per second.

Prints one JSON line: seconds per minute of audio per tagger and file set, speed-ups (tftag
MTT_musicnn / student and musicnn package / student, end to end; model-only ratios of examples/s
and of audio seconds/s against MTT_musicnn), peak RSS, and the agreement of track-level tags
with MTT_musicnn (top-5 overlap, max |Δ| of mean probabilities) where the tags are the same.
``--in_process`` runs the tftag workers in this process (no RSS; the tests' tiny run).
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
flags.DEFINE_list("packages", ["singularity-music", "megaglest-data"],
                  "Debian packages the music comes from (default: the students' held-out "
                  "packages, configs/real_music_students.flags).")
flags.DEFINE_string("audio", None, "A folder of audio files to tag instead of the Debian "
                    "excerpts (the long and huge files are then skipped).")
flags.DEFINE_list("students", ["all"], "Shipped students to run (all = every one of "
                  "tftag.models.pretrained.students(); empty = none).")
flags.DEFINE_string("models_dir", None, "Also register the shipped models of this folder.")
flags.DEFINE_integer("model_only_windows", 64, "Model alone: precomputed windows timed.",
                     lower_bound=1)
flags.DEFINE_bool("in_process", False, "Run the tftag workers in this process (no peak RSS).")
flags.DEFINE_string("pretrained", "MTT_musicnn", "internal: the worker's pretrained model.")
flags.DEFINE_enum("worker_path", "keras", ["keras", "savedmodel", "tflite_dynamic"],
                  "internal: how the worker scores (PATHS).")
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


# How a tftag worker scores: the pretrained model as loaded, its SavedModel, its TFLite file.
PATHS = ("keras", "savedmodel", "tflite_dynamic")


def _tagger(name: str, path: str, tmp: str):
    """The tag.Tagger of a pretrained model through ``path`` (exported / converted into
    ``tmp`` first: start-up, not timed)."""
    from tftag.tagging import tag

    if path == "keras":
        return tag.Tagger.pretrained(name)
    from tftag import experiment
    from tftag.delivery import export

    out = export.export_pretrained(name, experiment.ExportConfig(
        export_dir=tmp, tflite=("dynamic",) if path == "tflite_dynamic" else ()))
    if path == "savedmodel":
        return tag.Tagger.from_export(out["export_path"])
    from tftag.delivery import tflite

    return tag.Tagger.from_tflite(os.path.join(out["export_path"], tflite.TFLITE_DIR,
                                               f"{name}-dynamic.tflite"), name)


def _model_only(tagger, path: str, n: int) -> dict:
    """Windows (examples) per second of the model alone on ``n`` precomputed mel windows of
    the file at ``path`` (at most 8 distinct ones from its start, repeated: decoding the whole
    of a 60-min file here would add gigabytes to the worker's peak RSS)."""
    from tftag import features, patches

    spec = tagger.spec
    seconds = min(n, 8) * spec.window_seconds + 1.0
    mel = features.melspectrogram(features.load_audio(path, spec.mel_config.sr, duration=seconds),
                                  spec.mel_config)
    windows = patches.windows(mel[None], spec.window_frames)[0]  # [w, frames, n_mels]
    windows = np.resize(windows, (n, *windows.shape[1:])).astype(np.float32)
    tagger.score(windows[:8])  # warm-up
    start = time.perf_counter()
    tagger.score(windows)
    seconds = time.perf_counter() - start
    return {"windows": n, "seconds": round(seconds, 4),
            "examples_per_s": round(n / seconds, 2),
            "audio_seconds_per_s": round(n * spec.window_seconds / seconds, 2)}


def _tftag_worker(files: list[str], name: str = "MTT_musicnn", path: str = "keras",
                  model_only_windows: int = 64) -> dict:
    from tftag.tagging import tag

    with tempfile.TemporaryDirectory() as tmp:
        tagger = _tagger(name, path, tmp)
        list(tag.tag_tracks(tagger, files[:1]))  # warm-up: trace the model, start the decoder
        out, start = {}, time.perf_counter()
        for r in tag.tag_tracks(tagger, files):
            if isinstance(r, dict):
                raise RuntimeError(f"{r['path']}: {r['reason']}")
            out[r.path] = {"mean": r.probabilities.tolist(), "windows": len(r.taggram)}
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "tags": tagger.tags, "files": out,
                "model_only": _model_only(tagger, files[0], model_only_windows)}


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


def _students() -> list[str]:
    from tftag.models import pretrained

    if FLAGS.models_dir:
        pretrained.add_models_dir(FLAGS.models_dir)
    if FLAGS.students == ["all"]:
        return pretrained.students()
    return [pretrained.REGISTRY.check(n, "students") for n in FLAGS.students]


def _run_tftag(files: list[str], name: str, path: str) -> tuple[dict, float | None]:
    """A tftag worker: its JSON and peak RSS (MB; None in process)."""
    if FLAGS.in_process:
        return _tftag_worker(files, name, path, FLAGS.model_only_windows), None
    cmd = [sys.executable, "-m", "benchmarks.tagging", "--worker=tftag", f"--pretrained={name}",
           f"--worker_path={path}", f"--model_only_windows={FLAGS.model_only_windows}",
           f"--files={','.join(files)}"]
    if FLAGS.models_dir:
        cmd.append(f"--models_dir={FLAGS.models_dir}")
    return _peak_rss_run(cmd)


def _student_row(ours: dict, rss: float | None, minutes: float, reference: dict,
                 musicnn: dict | None) -> dict:
    """A student's figures on a file set beside tftag's MTT_musicnn and the musicnn package."""
    row = {"s_per_min": round(ours["seconds"] / minutes, 4), "peak_rss_mb": rss and round(rss),
           "speedup_vs_tftag_musicnn": round(reference["seconds"] / ours["seconds"], 2)}
    if musicnn:
        row["speedup_vs_musicnn_package"] = round(musicnn["seconds"] / ours["seconds"], 2)
    if ours["tags"] == reference["tags"]:
        row["agreement_with_tftag_musicnn"] = _agreement(ours, reference)
    return row


def _model_only_ratios(rows: dict) -> dict:
    """Each model's model-only figures with the ratios to tftag's MTT_musicnn."""
    base = rows["MTT_musicnn"]
    return {k: dict(v, examples_per_s_ratio=round(v["examples_per_s"] / base["examples_per_s"], 2),
                    audio_seconds_per_s_ratio=round(v["audio_seconds_per_s"]
                                                    / base["audio_seconds_per_s"], 2))
            for k, v in rows.items()}


def main(argv):
    del argv
    if FLAGS.worker == "tftag":
        if FLAGS.models_dir:
            from tftag.models import pretrained

            pretrained.add_models_dir(FLAGS.models_dir)
        print(json.dumps(_tftag_worker(FLAGS.files, FLAGS.pretrained, FLAGS.worker_path,
                                       FLAGS.model_only_windows)))
        return
    me = [sys.executable, "-m", "benchmarks.tagging"]
    students = _students()
    result: dict = {"benchmark": "tagging", "model": "MTT_musicnn", "students": students,
                    "student_paths": list(PATHS[1:])}
    model_only: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if FLAGS.audio:
            from tftag.tagging import tag

            excerpts, long_file, huge_file = tag.audio_files(FLAGS.audio), [], []
        else:
            excerpts, long_file, huge_file = _music(tmp)
        sets = {"folder": excerpts, "long": long_file}
        for name, files in sets.items():
            if not files:
                continue
            if FLAGS.audio:
                from tftag import features

                minutes = sum(features.load_audio(f, 16000).size for f in files) / 16000 / 60
            else:
                minutes = (FLAGS.track_seconds * len(files) / 60 if name == "folder"
                           else FLAGS.long_minutes)
            ours, rss = _run_tftag(files, "MTT_musicnn", "keras")
            model_only.setdefault("MTT_musicnn", ours["model_only"])
            row = {"files": len(files), "minutes": round(minutes, 2),
                   "tftag_s_per_min": round(ours["seconds"] / minutes, 3),
                   "tftag_peak_rss_mb": rss and round(rss)}
            theirs = None
            if FLAGS.musicnn_python:
                theirs, rss = _peak_rss_run([FLAGS.musicnn_python, "-c", MUSICNN_WORKER, *files])
                row.update({"musicnn_s_per_min": round(theirs["seconds"] / minutes, 3),
                            "musicnn_peak_rss_mb": round(rss),
                            "speedup": round(theirs["seconds"] / ours["seconds"], 2),
                            **_agreement(ours, theirs)})
            row["students"] = {}
            for student in students:
                for path in PATHS[1:]:
                    got, rss = _run_tftag(files, student, path)
                    model_only.setdefault(f"{student}/{path}", got["model_only"])
                    row["students"].setdefault(student, {})[path] = _student_row(
                        got, rss, minutes, ours, theirs)
            result[name] = row
        if huge_file:
            ours, rss = _peak_rss_run(me + ["--worker=tftag", f"--files={huge_file[0]}"])
            result["huge"] = {"minutes": FLAGS.huge_minutes, "tftag_peak_rss_mb": round(rss),
                              "tftag_s_per_min": round(ours["seconds"] / FLAGS.huge_minutes, 3)}
    result["model_only"] = _model_only_ratios(model_only)
    if not FLAGS.musicnn_python:
        result["musicnn_package"] = ("not run: give --musicnn_python (a virtualenv with numpy "
                                     "1.26.4, tensorflow-cpu 2.21.0, tf_keras, librosa, musicnn)")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
