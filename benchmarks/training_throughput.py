r"""Training throughput: examples/s and achieved GFLOP/s of tftag's training step, before/after.

    .venv/bin/python -m benchmarks.training_throughput --before_dir=/path/to/checkout-of-d5c958c

For VGG-CNN at widths 1/16, 1/8, 1/4, 1/2, 1 and MUSICNN (3-s patches) at 1/4, 1/2, 1, at the
16-kHz log resolutions 128×1, 96×1, 48×2, 32×4 and 8×10, times tftag's training step (forward,
backward, Adam; distillation loss on the teacher's probabilities, as the study trains) fed by
the real input pipeline (``tftag.data.make_dataset`` on a teacher-labelled dataset, shuffled and
repeating, as ``tftag.train`` reads it). With ``--before_dir`` (a checkout of the code before
issue 22) each configuration runs in two worker processes, one per code base, one after the
other on the same machine, same batch, same seed (the order alternates from one configuration
to the next), and the first step's loss of both is recorded.

Per configuration and side: the first step (tracing) and ``--warmup`` more steps are not timed;
then steps are timed until ``--budget_seconds`` have passed (at least ``--min_steps``).
examples/s = timed examples / timed seconds; GFLOP/s = examples/s × profiler GMACs/example × 3
(forward + two backward products) × 2 (FLOPs per MAC).

The dataset (64 rendered clips of the built-in corpus, 29.1-s crops, teacher-labelled with
MTT_musicnn; 48 train clips) is extracted once into ``--work_dir`` and reused. Output: one JSON
line per configuration and side on stdout and in ``<out_dir>/results.jsonl``, and the table
``<out_dir>/results.csv`` and ``results.md``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESOLUTIONS = ("sr16000-mel128-hop1-log", "sr16000-mel96-hop1-log", "sr16000-mel48-hop2-log",
               "sr16000-mel32-hop4-log", "sr16000-mel8-hop10-log")
WIDTHS = {"vgg": (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0), "musicnn": (1 / 4, 1 / 2, 1.0)}
PATCH_SECONDS = {"vgg": None, "musicnn": 3.0}  # VGG-CNN trains on whole clips, MUSICNN on patches
BATCH = 16
MAX_GMAC_PER_BATCH = 8.0  # large inputs: smaller batches (same on both sides), at least 2
SEED = 0
SHUFFLE_BUFFER = 512  # TrainConfig's default


def batch_for(gmacs: float) -> int:
    """The batch of a configuration: 16, halved while batch · GMAC/example > 8 (at least 2)."""
    batch = BATCH
    while batch > 2 and batch * gmacs > MAX_GMAC_PER_BATCH:
        batch //= 2
    return batch


# ----------------------------------------------------------------------------- worker process


def _legacy_step(model, optimizer, strategy):
    """The training step of tftag.train before issue 22 (it had no train_step_fn)."""
    import tensorflow as tf

    from tftag import train

    def step(x, targets):
        examples = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.shape(x)[0])
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.nn.compute_average_loss(train.per_example_loss(targets, logits),
                                              global_batch_size=examples)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def distributed_step(x, y):
        losses = strategy.run(step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    return distributed_step


def _measure(job: dict) -> dict:
    """Times one configuration with the tftag on sys.path (the worker's code base)."""
    import gc

    import keras
    import tensorflow as tf

    from tftag import data, determinism, profile, train
    from tftag.features import MelConfig
    from tftag.models import ModelConfig, build

    determinism.configure(SEED, job.get("deterministic", True))
    info = data.load_dataset_info(job["dataset_dir"])
    mel_config = MelConfig.from_name(job["resolution"], info.duration)
    model_config = ModelConfig(job["model"], width=job["width"],
                               patch_seconds=PATCH_SECONDS[job["model"]])
    strategy = tf.distribute.get_strategy()
    model = build(model_config, mel_config, info.n_tags)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    make_step = getattr(train, "train_step_fn", None) or _legacy_step
    step = make_step(model, optimizer, strategy)
    batch = job["batch"]
    ds = data.make_dataset(job["dataset_dir"], mel_config, "train", batch,
                           model_config.patch_frames(mel_config), shuffle_buffer=SHUFFLE_BUFFER,
                           seed=SEED * 100003, repeat=True, targets="soft_labels")
    batches = iter(ds)
    start = time.perf_counter()
    first_loss = float(step(*next(batches)))
    first_seconds = time.perf_counter() - start
    for _ in range(job["warmup"]):
        float(step(*next(batches)))
    times = []
    start = time.perf_counter()
    while len(times) < job["min_steps"] or time.perf_counter() - start < job["budget_seconds"]:
        t0 = time.perf_counter()
        float(step(*next(batches)))  # waits for the step (and the input pipeline)
        times.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - start
    gmacs = profile.gmacs(model)
    eps = len(times) * batch / seconds
    result = {
        "model": job["model"], "resolution": job["resolution"], "width": job["width"],
        "batch": batch, "side": job["side"], "gmacs": round(gmacs, 4),
        "first_loss": first_loss, "first_step_seconds": round(first_seconds, 2),
        "steps_timed": len(times), "median_step_seconds": round(statistics.median(times), 4),
        "examples_per_second": round(eps, 3), "gflops": round(eps * gmacs * 6, 2),
        "deterministic": job.get("deterministic", True),
        "training_fn": make_step is not _legacy_step,
    }
    del step, model, optimizer, batches, ds
    keras.backend.clear_session()
    gc.collect()
    return result


def worker() -> None:
    """Reads one JSON job per line on stdin, answers one JSON result per line on stdout."""
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not mix with the answers
    for line in sys.stdin:
        try:
            answer = _measure(json.loads(line))
        except Exception as e:  # noqa: BLE001  reported to the parent, which stops
            answer = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


# ----------------------------------------------------------------------------- parent process


class Worker:
    """A worker process running the tftag of ``root``."""

    def __init__(self, root: str, side: str):
        self.root, self.side = root, side
        self._start()

    def _start(self) -> None:
        env = dict(os.environ, PYTHONPATH=self.root, TF_CPP_MIN_LOG_LEVEL="2")
        python = os.path.join(self.root, ".venv", "bin", "python")
        self.proc = subprocess.Popen(
            [python if os.path.exists(python) else sys.executable, os.path.abspath(__file__),
             "--worker"], cwd=self.root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)

    def _ask(self, job: dict) -> str:
        try:
            self.proc.stdin.write(json.dumps(dict(job, side=self.side)) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return ""
        return self.proc.stdout.readline()

    def run(self, job: dict) -> dict:
        line = self._ask(job)
        if not line:  # the process died (once seen after ~25 configurations): a fresh one retries
            self.proc.wait(timeout=60)
            print(f"{self.side} worker exited with {self.proc.returncode}; restarting it",
                  file=sys.stderr, flush=True)
            self._start()
            line = self._ask(job)
        if not line:
            raise RuntimeError(f"the {self.side} worker died twice (job {job})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.side} worker: {answer['error']} (job {job})")
        return answer

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def ensure_dataset(work_dir: str) -> str:
    """The teacher-labelled benchmark dataset under ``work_dir`` (extracted on first use)."""
    dataset_dir = os.path.join(work_dir, "extract", "dataset")
    if not os.path.exists(os.path.join(dataset_dir, "dataset.json")):
        subprocess.run(
            [sys.executable, "-m", "tftag.main", "--mode=extract",
             f"--run_dir={os.path.join(work_dir, 'extract')}", "--num_clips=64",
             "--clip_seconds=30", "--labels=teacher:MTT_musicnn", "--duration=29.1",
             "--resolutions=" + ",".join(RESOLUTIONS), "--clips_per_shard=16",
             "--direct_num_workers=2"], check=True, cwd=REPO, capture_output=True)
    return dataset_dir


def _label(row: dict) -> str:
    width = row["width"]
    frac = "1" if width == 1 else f"1/{round(1 / width)}"
    mels, hop = row["resolution"].split("-")[1][3:], row["resolution"].split("-")[2][3:]
    name = "VGG-CNN" if row["model"] == "vgg" else "MUSICNN"
    return f"{name} {mels}×{hop}", frac


def write_tables(rows: list[dict], out_dir: str, wall_seconds: float) -> None:
    """results.csv and results.md: one row per configuration, before and after side by side."""
    import csv

    pairs: dict[tuple, dict] = {}
    for r in rows:
        pairs.setdefault((r["model"], r["resolution"], r["width"]), {})[r["side"]] = r
    table = []
    for (model, resolution, width), sides in pairs.items():
        after, before = sides.get("after"), sides.get("before")
        name, frac = _label(after or before)
        row = {"model": name, "width": frac, "resolution": resolution,
               "batch": (after or before)["batch"], "gmac_per_example": (after or before)["gmacs"]}
        for side, r in (("before", before), ("after", after)):
            row[f"{side}_examples_per_s"] = r["examples_per_second"] if r else ""
            row[f"{side}_gflops"] = r["gflops"] if r else ""
        if before and after:
            row["speedup"] = round(after["examples_per_second"] / before["examples_per_second"], 2)
            diff = abs(after["first_loss"] - before["first_loss"])
            row["first_loss_before"] = round(before["first_loss"], 7)
            row["first_loss_rel_diff"] = f"{diff / max(abs(before['first_loss']), 1e-12):.1e}"
        table.append(row)
    columns = list(table[0])
    for row in table:
        columns += [c for c in row if c not in columns]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(table)
    lines = [f"# Training throughput, before/after issue 22 (one run, {wall_seconds / 60:.1f} min)",
             "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in table]
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    from absl import app, flags

    flags.DEFINE_string("before_dir", None, "A checkout of the code before issue 22 (with its "
                        ".venv or this one); default: time this code base only.")
    flags.DEFINE_string("work_dir", os.path.join(REPO, "runs", "training_throughput"),
                        "Where the benchmark dataset is extracted once.")
    flags.DEFINE_string("out_dir", os.path.join(REPO, "benchmarks", "results",
                                                "training_throughput"), "Results directory.")
    flags.DEFINE_float("budget_seconds", 1.5, "Timed seconds per configuration and side.")
    flags.DEFINE_integer("warmup", 1, "Untimed steps after the first (tracing) step.")
    flags.DEFINE_integer("min_steps", 1, "Timed steps at least.")
    flags.DEFINE_list("models", list(WIDTHS), "Models to time.")
    flags.DEFINE_list("resolutions", list(RESOLUTIONS), "Resolutions to time.")
    flags.DEFINE_list("widths", [], "Only these widths (e.g. 0.125); default: all of a model's.")
    flags.DEFINE_bool("deterministic", True, "Op determinism and fixed thread pools, as training.")
    FLAGS = flags.FLAGS

    def run(argv):
        del argv
        t0 = time.monotonic()
        dataset_dir = ensure_dataset(FLAGS.work_dir)
        workers = {"after": Worker(REPO, "after")}
        if FLAGS.before_dir:
            workers["before"] = Worker(os.path.abspath(FLAGS.before_dir), "before")
        rows = []
        os.makedirs(FLAGS.out_dir, exist_ok=True)
        jsonl = open(os.path.join(FLAGS.out_dir, "results.jsonl"), "w", encoding="utf-8")
        index = 0
        for model in FLAGS.models:
            for resolution in FLAGS.resolutions:
                for width in WIDTHS[model]:
                    if FLAGS.widths and not any(abs(width - float(w)) < 1e-9 for w in FLAGS.widths):
                        continue
                    job = {"model": model, "resolution": resolution, "width": width,
                           "dataset_dir": dataset_dir, "warmup": FLAGS.warmup,
                           "min_steps": FLAGS.min_steps, "budget_seconds": FLAGS.budget_seconds,
                           "deterministic": FLAGS.deterministic}
                    job["batch"] = batch_for(_estimate_gmacs(model, resolution, width))
                    order = sorted(workers, reverse=index % 2 == 1)  # alternate who goes first
                    for side in order:
                        row = workers[side].run(job)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        jsonl.write(json.dumps(row) + "\n")
                        jsonl.flush()
                    index += 1
        jsonl.close()
        for w in workers.values():
            w.close()
        wall = time.monotonic() - t0
        write_tables(rows, FLAGS.out_dir, wall)
        print(json.dumps({"wall_seconds": round(wall, 1), "configurations": index}))

    app.run(run)


def _estimate_gmacs(model: str, resolution: str, width: float) -> float:
    """Analytic GMAC/example from layer shapes (tftag.profile), to choose the batch."""
    from tftag import profile
    from tftag.features import MelConfig
    from tftag.models import ModelConfig, build

    mel_config = MelConfig.from_name(resolution, 29.1)
    built = build(ModelConfig(model, width=width, patch_seconds=PATCH_SECONDS[model]),
                  mel_config, 50)
    return profile.analytic_macs(built) / 1e9


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    else:
        main()
