r"""Tagging speed: seconds per 30-s track, exported serving_waveform vs Essentia mel + Keras.

    .venv/bin/python -m benchmarks.clip_tagging --model_dir=export/vgg-sr16000-mel96-hop1-log

On the same rendered 30-s tracks, in one run: (a) decode (Essentia) + ``serving_waveform``
(in-graph mel + model) of the exported SavedModel, one track per call and all tracks in one
batch; (b) decode + ``tftag.features.melspectrogram`` (Essentia window/filterbank) + the
SavedModel's mel signature, one track per call and batched; (c) the ``musicnn`` package's own
tagger on the same files where it runs (it needs TF1-era Keras; the result says why if not).
Prints one JSON line with seconds per track and ratios.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time

import numpy as np
from absl import app, flags

from benchmarks.common import best_of

flags.DEFINE_string("model_dir", None, "Exported model (<export_dir>/<model_name>[/<version>]); "
                    "default: export an untrained width-1/8 VGG-CNN at 16 kHz, 96 bands, hop 1.")
flags.DEFINE_integer("num_tracks", 8, "Rendered 30-s tracks to tag.", lower_bound=1)
flags.DEFINE_integer("repeats", 2, "Timing repetitions (best of).", lower_bound=1)
FLAGS = flags.FLAGS




def main(argv):
    del argv
    import tftag  # noqa: F401  # first: it sets TensorFlow's oneDNN switch
    import tensorflow as tf

    from tftag import features
    from tftag.delivery import export
    from tftag.datasets import synthetic
    from tftag.features import MelConfig
    from tftag.models import ModelConfig, build

    with tempfile.TemporaryDirectory() as tmp:
        tracks = [c.path for c in synthetic.render_corpus(
            os.path.join(tmp, "corpus"), FLAGS.num_tracks, 30.0, 16000, seed=7).clips]
        if FLAGS.model_dir:
            version_dir = FLAGS.model_dir
            if not os.path.exists(os.path.join(version_dir, "saved_model.pb")):
                version_dir = max(glob.glob(os.path.join(version_dir, "[0-9]*")),
                                  key=lambda p: int(os.path.basename(p)))
        else:
            mel = MelConfig(16000, 96, 1, "log")
            model = build(ModelConfig("vgg", width=0.125), mel, 28)
            version_dir = export.export(model, export.ExportSpec(
                mel, ModelConfig("vgg", width=0.125), synthetic.TAGS), os.path.join(tmp, "export"))
        with open(glob.glob(os.path.join(version_dir, "essentia", "*.json"))[0]) as f:
            card = json.load(f)
        c = card["inference"]["mel"]
        config = MelConfig(c["sr"], c["n_mels"], c["hop_factor"], c["compression"], c["duration"])
        loaded = tf.saved_model.load(version_dir)
        wave_fn = loaded.signatures["serving_waveform"]
        mel_fn = loaded.signatures["serving_default"]
        features.load_audio(tracks[0], config.sr)  # start the Essentia worker outside timings

        def decode():
            return [features.load_audio(p, config.sr) for p in tracks]

        def waveform_single():
            for audio in decode():
                wave_fn(audio=tf.constant(audio[None]))["probabilities"].numpy()

        def waveform_batched():
            audios = [features.crop(a, config.sr, config.duration).audio for a in decode()]
            wave_fn(audio=tf.constant(np.stack(audios)))["probabilities"].numpy()

        def mel_single():
            for audio in decode():
                m = features.melspectrogram(features.crop(audio, config.sr, config.duration).audio, config)
                mel_fn(mel=tf.constant(m[None]))["probabilities"].numpy()

        def mel_batched():
            mels = [features.melspectrogram(features.crop(a, config.sr, config.duration).audio, config)
                    for a in decode()]
            mel_fn(mel=tf.constant(np.stack(mels)))["probabilities"].numpy()

        waveform_single(), mel_single()  # trace
        n = len(tracks)
        result = {
            "benchmark": "clip_tagging", "tracks": n, "track_seconds": 30.0, "model": version_dir,
            "resolution": config.name,
            "decode_s_per_track": round(best_of(decode, FLAGS.repeats) / n, 4),
            "waveform_single_s_per_track": round(best_of(waveform_single, FLAGS.repeats) / n, 4),
            "waveform_batched_s_per_track": round(best_of(waveform_batched, FLAGS.repeats) / n, 4),
            "essentia_mel_single_s_per_track": round(best_of(mel_single, FLAGS.repeats) / n, 4),
            "essentia_mel_batched_s_per_track": round(best_of(mel_batched, FLAGS.repeats) / n, 4),
        }
        result["waveform_over_essentia_mel_single"] = round(
            result["waveform_single_s_per_track"] / result["essentia_mel_single_s_per_track"], 3)
        try:
            from musicnn.tagger import top_tags  # noqa: F401

            start = time.perf_counter()
            for p in tracks:
                top_tags(p, model="MTT_musicnn", topN=5, print_tags=False)
            result["musicnn_package_s_per_track"] = round((time.perf_counter() - start) / n, 4)
        except Exception as e:  # noqa: BLE001  reported, not fatal
            result["musicnn_package"] = f"unavailable: {type(e).__name__}: {str(e)[:120]}"
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
