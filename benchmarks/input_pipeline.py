r"""Input-pipeline headroom: tf.data examples/s alone vs the training-step rate of a small model.

    .venv/bin/python -m benchmarks.input_pipeline --dataset_dir=runs/quickstart/dataset

Measures, in one run on the same resolution: (a) examples/s of ``tftag.storage.data.make_dataset``
(read, parse, decimate, patch-crop, compress, batch; shuffled and repeating, as in training)
with nothing consuming it but a loop, and (b) examples/s of the training step (forward,
backward, Adam) of a small VGG-CNN fed from memory. Target: (a) / (b) >= 5. Without
--dataset_dir a 64-clip corpus is rendered and extracted into a temporary directory.
Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_string("dataset_dir", None, "An extracted dataset (default: make a small one).")
flags.DEFINE_string("resolution", "sr16000-mel96-hop1-log", "Resolution to read and train on.")
flags.DEFINE_float("width", 0.125, "VGG-CNN width of the model timed.")
flags.DEFINE_integer("batch_size", 16, "Batch size.")
flags.DEFINE_float("patch_seconds", 0.0, "Patch seconds (0 = whole clips).")
flags.DEFINE_integer("batches", 30, "Batches timed for each side.")
FLAGS = flags.FLAGS


def _make_dataset(tmp: str) -> str:
    run_dir = os.path.join(tmp, "run")
    subprocess.run([sys.executable, "-m", "tftag.main", "--mode=extract", f"--run_dir={run_dir}",
                    "--num_clips=64", "--clip_seconds=30", "--resolutions=" + FLAGS.resolution,
                    "--clips_per_shard=16"], check=True, capture_output=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(run_dir, "dataset")


def main(argv):
    del argv
    import tftag  # noqa: F401  # first: it sets TensorFlow's oneDNN switch
    import keras
    import tensorflow as tf

    from tftag.storage import data
    from tftag.features import MelConfig
    from tftag.models import ModelConfig, build

    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = FLAGS.dataset_dir or _make_dataset(tmp)
        info = data.load_dataset_info(dataset_dir)
        config = MelConfig.from_name(FLAGS.resolution, info.duration)
        model_config = ModelConfig("vgg", width=FLAGS.width, patch_seconds=FLAGS.patch_seconds or None)
        patch = model_config.patch_frames(config)
        ds = data.make_dataset(dataset_dir, config, "train", FLAGS.batch_size, patch,
                               shuffle_buffer=256, seed=0, repeat=True, drop_remainder=True)
        it = iter(ds)
        for _ in range(3):
            next(it)
        start = time.perf_counter()
        for _ in range(FLAGS.batches):
            mel, labels = next(it)
        pipeline_eps = FLAGS.batches * FLAGS.batch_size / (time.perf_counter() - start)

        model = build(model_config, config, info.n_tags)
        optimizer = keras.optimizers.Adam(1e-3)

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, model(x, training=True)))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        for _ in range(3):
            step(mel, labels).numpy()
        start = time.perf_counter()
        for _ in range(FLAGS.batches):
            step(mel, labels).numpy()
        train_eps = FLAGS.batches * FLAGS.batch_size / (time.perf_counter() - start)
    print(json.dumps({
        "benchmark": "input_pipeline", "resolution": config.name, "batch_size": FLAGS.batch_size,
        "patch_frames": patch, "model": f"vgg width {FLAGS.width}",
        "pipeline_examples_per_s": round(pipeline_eps, 1),
        "train_step_examples_per_s": round(train_eps, 1),
        "headroom": round(pipeline_eps / train_eps, 2), "target_headroom_min": 5.0,
    }, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
