r"""Extraction benchmark: the shared path for all 168 views vs naive recomputation per view.

    .venv/bin/python -m benchmarks.extraction --num_clips=4

Times, on the same rendered clips in one run:
  (a) shared: per sample rate one decode + one STFT, 7 filterbanks, 84 views (hops by
      decimation, compressions from the same power mel) -> all 168 configs;
  (b) naive: decode + STFT + mel + compression again for each of the 168 configs;
  (c) single: decode + STFT + one config (sr*-mel96-hop1-log), per sample rate.
Targets: (b)/(a) >= 20; per sample rate (a)/(c) <= 2. Also bytes per clip of the stored bases
against all 168 materialised float32 views, the serialized TFRecord size per storage codec
(tftag.storage.codecs) and each codec's error of the derived views. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
from absl import app, flags

from benchmarks.common import best_of

from tftag import features
from tftag.features import MelConfig

flags.DEFINE_integer("num_clips", 4, "Clips to time.", lower_bound=1)
flags.DEFINE_string("audio_dir", None, "Folder of clips to use; default: render --num_clips "
                    "clips of the built-in corpus.")
flags.DEFINE_integer("repeats", 1, "Timing repetitions (best of).", lower_bound=1)
FLAGS = flags.FLAGS


def _clips(tmp: str) -> list[str]:
    if FLAGS.audio_dir:
        names = sorted(os.listdir(FLAGS.audio_dir))
        return [os.path.join(FLAGS.audio_dir, n) for n in names][: FLAGS.num_clips]
    from tftag.datasets import synthetic

    corpus = synthetic.render_corpus(tmp, num_clips=FLAGS.num_clips, duration=30.0, sr=44100, seed=0)
    return [c.path for c in corpus.clips]




def main(argv):
    del argv
    grid = MelConfig.paper_grid()
    by_sr = features.group_by_sr(grid)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _clips(tmp)
        n = len(paths)
        # Warm caches (filterbanks, window, Essentia worker) outside the timings.
        for sr, configs in by_sr.items():
            features.melspectrograms(features.crop(features.load_audio(paths[0], sr), sr).audio, sr, configs)

        def shared(srs=tuple(by_sr), materialise=False):
            for path in paths:
                for sr in srs:
                    audio = features.crop(features.load_audio(path, sr), sr).audio
                    views = features.melspectrograms(audio, sr, by_sr[sr])
                    if materialise:
                        for v in views.values():
                            np.ascontiguousarray(v)

        def naive():
            for path in paths:
                for c in grid:
                    audio = features.crop(features.load_audio(path, c.sr), c.sr).audio
                    features.melspectrogram(audio, c)

        def single(sr):
            config = MelConfig(sr, 96, 1, "log")
            for path in paths:
                audio = features.crop(features.load_audio(path, sr), sr).audio
                features.melspectrogram(audio, config)

        t_shared = best_of(shared, FLAGS.repeats)
        t_shared_mat = best_of(lambda: shared(materialise=True), FLAGS.repeats)
        t_naive = best_of(naive, FLAGS.repeats)
        per_sr = {}
        for sr in by_sr:
            t_a = best_of(lambda: shared((sr,)), FLAGS.repeats)
            t_c = best_of(lambda: single(sr), FLAGS.repeats)
            per_sr[str(sr)] = {"shared_s_per_clip": round(t_a / n, 4),
                               "single_s_per_clip": round(t_c / n, 4),
                               "shared_over_single": round(t_a / t_c, 3)}

        # Storage: stored bases vs all views, and every codec's error of the derived views.
        bases = sorted({c.base for c in grid}, key=lambda b: (b.sr, -b.n_mels))
        base_bytes32 = sum(4 * b.n_frames * b.n_mels for b in bases)
        views_bytes32 = sum(4 * c.n_frames * c.n_mels for c in grid)
        from tftag.storage import codecs, data

        serialized = {name: 0 for name in codecs.names()}
        err = {name: {"db_abs_median": [], "db_abs_max": [], "log_abs_median": [],
                      "log_abs_max": [], "flushed_to_zero": []} for name in codecs.names()}
        for sr in by_sr:
            audio = features.crop(features.load_audio(paths[0], sr), sr).audio
            mels = features.base_mels(audio, sr, features.PAPER_N_MELS)
            for b in (b for b in bases if b.sr == sr):
                p32 = mels[b.n_mels]
                for name in codecs.names():
                    codec = codecs.get(name)
                    serialized[name] += len(data.serialize_example(
                        "clip", "train", p32, b, np.zeros(50, np.int64), "v", name))
                    back = codec.decode(codec.encode(p32), p32.shape)
                    for k in features.PAPER_HOP_FACTORS:
                        d = np.abs(features.compress(back[::k], "db") - features.compress(p32[::k], "db"))
                        lg = np.abs(features.compress(back[::k], "log") - features.compress(p32[::k], "log"))
                        e = err[name]
                        e["db_abs_median"].append(float(np.median(d)))
                        e["db_abs_max"].append(float(np.max(d)))
                        e["log_abs_median"].append(float(np.median(lg)))
                        e["log_abs_max"].append(float(np.max(lg)))
                        e["flushed_to_zero"].append(float(np.mean((back[::k] == 0) & (p32[::k] > 0))))

    result = {
        "benchmark": "extraction",
        "clips": n,
        "configs": len(grid),
        "shared_clips_per_s": round(n / t_shared, 3),
        "shared_materialised_clips_per_s": round(n / t_shared_mat, 3),
        "naive_clips_per_s": round(n / t_naive, 4),
        "naive_over_shared": round(t_naive / t_shared, 2),
        "target_naive_over_shared_min": 20,
        "per_sr": per_sr,
        "target_shared_over_single_max": 2.0,
        "bytes_per_clip": {
            "stored_float32": base_bytes32,
            "all_168_views_float32": views_bytes32,
            "views_over_stored": round(views_bytes32 / base_bytes32, 3),
            **{f"tfrecord_example_{name}": size for name, size in serialized.items()},
        },
        "codec_error": {name: {
            "db_abs_median_dB": round(float(np.median(e["db_abs_median"])), 6),
            "db_abs_max_dB": round(max(e["db_abs_max"]), 3),
            "log_abs_median": float(f"{np.median(e['log_abs_median']):.3g}"),
            "log_abs_max": float(f"{max(e['log_abs_max']):.3g}"),
            "fraction_flushed_to_zero": float(f"{np.mean(e['flushed_to_zero']):.3g}"),
        } for name, e in err.items()},
    }
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
