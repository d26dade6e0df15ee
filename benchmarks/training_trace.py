r"""Where a training step's time goes: a TF-profiler trace of a few steps, summarised by op.

    .venv/bin/python -m benchmarks.training_trace --before_dir=/path/to/checkout-of-d5c958c

Traces ``--steps`` training steps (after two untimed ones) of one configuration (default
MUSICNN 96×1 width 1/4, 3-s patches, batch 16, random input) with this code base's training step
and, with ``--before_dir``, the previous code's (in a subprocess with that checkout on its
path), and writes ``<out_dir>/trace_<side>.csv`` (op type, total self time over the steps, share)
and ``trace.md`` (the top ops side by side). Op times are summed over TensorFlow's inter-op
threads (two ops can run at once), so the total exceeds the wall time of the steps.
"""

from __future__ import annotations

import collections
import csv
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def summarise(trace_dir: str) -> dict[str, float]:
    """{op type: milliseconds} of the TensorFlow op events of a profiler trace."""
    import tftag  # noqa: F401  # first: it sets TensorFlow's oneDNN switch
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals: collections.Counter = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name and "::" not in name:  # "<node>:<op type>" (not executor events)
                    totals[name.rsplit(":", 1)[1]] += event.duration_ps / 1e9
    return dict(totals)


def trace(job: dict) -> dict:
    """Runs in the side's process: traces the steps, returns the summary and the step time."""
    # tftag first, as training imports it: importing tftag chooses TensorFlow's oneDNN kernels
    # (TF_ENABLE_ONEDNN_OPTS, read once when TensorFlow loads; on without AVX-512 only if set).
    # Keras first loaded TensorFlow with its own default: Eigen's kernels on an AVX2 machine.
    import tftag  # noqa: F401  # isort: skip

    import keras
    import tensorflow as tf

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from training_throughput import PATCH_SECONDS, SEED, _legacy_step  # noqa: E402

    from tftag import train
    from tftag.runs import determinism
    from tftag.features import MelConfig
    from tftag.models import ModelConfig, build

    determinism.configure(SEED)
    mel_config = MelConfig.from_name(job["resolution"])
    model_config = ModelConfig(job["model"], width=job["width"],
                               patch_seconds=PATCH_SECONDS[job["model"]])
    model = build(model_config, mel_config, 50)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    step = (getattr(train, "train_step_fn", None) or _legacy_step)(
        model, optimizer, tf.distribute.get_strategy())
    shape = [job["batch"], model_config.n_frames(mel_config), mel_config.n_mels]
    x = tf.random.stateless_uniform(shape, [1, 2], 0.0, 3.0)
    y = tf.random.stateless_uniform([job["batch"], 50], [3, 4])
    for _ in range(2):
        float(step(x, y))
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(job["steps"]):
            float(step(x, y))
        seconds = (time.perf_counter() - start) / job["steps"]
        tf.profiler.experimental.stop()
        ops = summarise(logdir)
    return {"step_seconds": seconds, "ops_ms": ops}


def main() -> None:
    from absl import app, flags

    flags.DEFINE_string("before_dir", None, "A checkout of the code before issue 22.")
    flags.DEFINE_string("out_dir", os.path.join(REPO, "benchmarks", "results",
                                                "training_throughput"), "Results directory.")
    flags.DEFINE_string("model", "musicnn", "Model.")
    flags.DEFINE_string("resolution", "sr16000-mel96-hop1-log", "Resolution.")
    flags.DEFINE_float("width", 0.25, "Width.")
    flags.DEFINE_integer("batch", 16, "Batch.")
    flags.DEFINE_integer("steps", 3, "Traced steps.")
    flags.DEFINE_integer("top", 12, "Ops listed in trace.md.")
    FLAGS = flags.FLAGS

    def run(argv):
        del argv
        job = {"model": FLAGS.model, "resolution": FLAGS.resolution, "width": FLAGS.width,
               "batch": FLAGS.batch, "steps": FLAGS.steps}
        sides = {"before": FLAGS.before_dir, "after": REPO} if FLAGS.before_dir else {"after": REPO}
        results = {}
        for side, root in sides.items():
            root = os.path.abspath(root)
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--job", json.dumps(job)], cwd=root,
                env=dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="2"),
                capture_output=True, text=True, check=True)
            results[side] = json.loads(out.stdout.strip().splitlines()[-1])
        os.makedirs(FLAGS.out_dir, exist_ok=True)
        lines = [f"# Training-step trace: {FLAGS.model} {FLAGS.resolution} width {FLAGS.width}, "
                 f"batch {FLAGS.batch}, {FLAGS.steps} steps", ""]
        for side, r in results.items():
            total = sum(r["ops_ms"].values())
            ranked = sorted(r["ops_ms"].items(), key=lambda kv: -kv[1])
            with open(os.path.join(FLAGS.out_dir, f"trace_{side}.csv"), "w", newline="",
                      encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["op", "ms_per_step", "share"])
                for op, ms in ranked:
                    writer.writerow([op, round(ms / FLAGS.steps, 1), round(ms / total, 4)])
            lines += [f"## {side}: {r['step_seconds']:.3f} s per step (wall), "
                      f"{total / FLAGS.steps:.0f} op-ms per step", "",
                      "| op | ms/step | share |", "|---|---|---|"]
            lines += [f"| {op} | {ms / FLAGS.steps:.1f} | {100 * ms / total:.1f} % |"
                      for op, ms in ranked[:FLAGS.top]]
            lines.append("")
        with open(os.path.join(FLAGS.out_dir, "trace.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
        print(json.dumps({side: round(r["step_seconds"], 3) for side, r in results.items()}))

    app.run(run)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--job":
        print(json.dumps(trace(json.loads(sys.argv[2]))))
    else:
        main()
