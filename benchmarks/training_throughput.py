r"""Training throughput: examples/s and achieved GFLOP/s of tftag's training step, before/after.

    .venv/bin/python -m benchmarks.training_throughput --before_dir=/path/to/checkout-of-d5c958c

For VGG-CNN at widths 1/16, 1/8, 1/4, 1/2, 1 and MUSICNN (3-s patches) at 1/4, 1/2, 1, at the
16-kHz log resolutions 128×1, 96×1, 48×2, 32×4 and 8×10, times tftag's training step (forward,
backward, Adam; distillation loss on the teacher's probabilities, as the study trains) fed by
the real input pipeline (``tftag.storage.data.make_dataset`` on a teacher-labelled dataset, shuffled and
repeating, as ``tftag.train`` reads it). With ``--before_dir`` (a checkout of the code before
issue 22) each configuration runs in two worker processes, one per code base, taking turns on
the same machine, same batch, same seed (who starts alternates from one configuration to the
next), and the first step's loss of both is recorded.

Per configuration, both sides are built and run their first (tracing) step and ``--warmup``
more steps untimed; then each side times ``--rounds`` windows of ``--budget_seconds / rounds``
(at least ``--min_steps`` steps each), the sides taking turns, and its figure is the median
of its windows (a window of ~1000 examples/s varies by ±15 % here; the median of windows
interleaved in time with the other side's is robust to one lucky or unlucky window).
examples/s = timed examples / timed seconds of a window; GFLOP/s = examples/s × profiler GMACs/example × 3
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
SETTLE_SECONDS = 0.25  # pause before each timed window


def batch_for(gmacs: float) -> int:
    """The batch of a configuration: 16, halved while batch · GMAC/example > 8 (at least 2)."""
    batch = BATCH
    while batch > 2 and batch * gmacs > MAX_GMAC_PER_BATCH:
        batch //= 2
    return batch


# ----------------------------------------------------------------------------- worker process


def _legacy_step(model, optimizer, strategy):
    """The training step of tftag.train before issue 22 (it had no train_step_fn)."""
    import tftag  # noqa: F401  # first: it sets TensorFlow's oneDNN switch
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


_STATE: dict = {}  # the worker's prepared configuration, between its commands


def _prepare(job: dict) -> dict:
    """Builds the configuration with the tftag on sys.path (the worker's code base), runs the
    first (tracing) step and the warm-up steps; the model stays for :func:`_time`."""
    # tftag first, as training imports it: importing tftag chooses TensorFlow's oneDNN kernels
    # (TF_ENABLE_ONEDNN_OPTS, read once when TensorFlow loads; on without AVX-512 only if set).
    # Keras first loaded TensorFlow with its own default: Eigen's kernels on an AVX2 machine.
    import tftag  # noqa: F401  # isort: skip

    import keras
    import tensorflow as tf

    from tftag import profile, train
    from tftag.runs import determinism
    from tftag.storage import data
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
    ds = data.make_dataset(job["dataset_dir"], mel_config, "train", job["batch"],
                           model_config.patch_frames(mel_config), shuffle_buffer=SHUFFLE_BUFFER,
                           seed=SEED * 100003, repeat=True, targets="soft_labels")
    batches = iter(ds)
    start = time.perf_counter()
    first_loss = float(step(*next(batches)))
    first_seconds = time.perf_counter() - start
    for _ in range(job["warmup"]):
        float(step(*next(batches)))
    _STATE.update(step=step, batches=batches, job=job, windows=[])
    return {"first_loss": first_loss, "first_step_seconds": round(first_seconds, 2),
            "gmacs": profile.gmacs(model), "training_fn": make_step is not _legacy_step}


def _time(seconds: float, min_steps: int) -> dict:
    """Times steps of the prepared configuration for ``seconds`` (at least ``min_steps``)."""
    step, batches = _STATE["step"], _STATE["batches"]
    times = []
    start = time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        float(step(*next(batches)))  # waits for the step (and the input pipeline)
        times.append(time.perf_counter() - t0)
    window = {"steps": len(times), "seconds": time.perf_counter() - start,
              "median_step_seconds": statistics.median(times)}
    _STATE["windows"].append(window)
    return {"examples_per_second": len(times) * _STATE["job"]["batch"] / window["seconds"]}


def _finish() -> dict:
    """Drops the prepared configuration; returns its timed windows."""
    import gc

    import tftag  # noqa: F401  # first: it sets TensorFlow's oneDNN switch
    import keras

    windows = _STATE.pop("windows")
    _STATE.clear()
    keras.backend.clear_session(free_memory=False)  # names and state; freeing is gc's job
    gc.collect()
    return {"windows": windows}


def worker() -> None:
    """Reads one JSON command per line on stdin (prepare / time / finish), answers one JSON line."""
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not mix with the answers
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["cmd"] == "prepare":
                answer = _prepare(command["job"])
            elif command["cmd"] == "time":
                answer = _time(command["seconds"], command["min_steps"])
            else:
                answer = _finish()
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

    def send(self, command: dict) -> bool:
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
            return True
        except BrokenPipeError:
            return False

    def receive(self, command: dict) -> dict:
        """The answer to ``command`` (sent before); a worker that died on ``prepare`` (once seen
        after ~25 configurations) is restarted and asked again."""
        line = self.proc.stdout.readline()
        if not line and command["cmd"] == "prepare":
            self.proc.wait(timeout=60)
            print(f"{self.side} worker exited with {self.proc.returncode}; restarting it",
                  file=sys.stderr, flush=True)
            self._start()
            line = self.proc.stdout.readline() if self.send(command) else ""
        if not line:
            raise RuntimeError(f"the {self.side} worker died ({command})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.side} worker: {answer['error']} ({command})")
        return answer

    def ask(self, command: dict) -> dict:
        self.send(command)
        return self.receive(command)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def measure(workers: dict, job: dict, rounds: int, first: int = 0) -> list[dict]:
    """One configuration on every side: prepared side by side (in parallel: untimed), then
    ``rounds`` timed windows per side, the sides taking turns (``first`` chooses who starts);
    a side's figure is the median of its windows."""
    sides = sorted(workers)
    order = sides[first % len(sides):] + sides[:first % len(sides)]
    prepared = ask_all(workers, {"cmd": "prepare", "job": job})
    rates: dict[str, list[float]] = {side: [] for side in order}
    for _ in range(rounds):
        for side in order:
            time.sleep(SETTLE_SECONDS)  # the other side's input pipeline refills its buffers
            answer = workers[side].ask({"cmd": "time", "seconds": job["budget_seconds"] / rounds,
                                        "min_steps": job["min_steps"]})
            rates[side].append(answer["examples_per_second"])
    finished = ask_all(workers, {"cmd": "finish"})
    rows = []
    for side in order:
        eps, gmacs = statistics.median(rates[side]), prepared[side]["gmacs"]
        rows.append({
            "model": job["model"], "resolution": job["resolution"], "width": job["width"],
            "batch": job["batch"], "side": side, "gmacs": round(gmacs, 4),
            "first_loss": prepared[side]["first_loss"],
            "first_step_seconds": prepared[side]["first_step_seconds"],
            "steps_timed": sum(w["steps"] for w in finished[side]["windows"]),
            "window_examples_per_second": [round(r, 3) for r in rates[side]],
            "examples_per_second": round(eps, 3), "gflops": round(eps * gmacs * 6, 2),
            "deterministic": job.get("deterministic", True),
            "training_fn": prepared[side]["training_fn"],
        })
    return rows


def ask_all(workers: dict, command: dict) -> dict:
    """Sends ``command`` to every worker at once, then collects the answers by side."""
    for worker_ in workers.values():
        worker_.send(command)
    return {side: worker_.receive(command) for side, worker_ in workers.items()}


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


def write_tables(rows: list[dict], out_dir: str, wall_seconds: float,
                 machine: dict | None = None) -> None:
    """results.csv and results.md: one row per configuration, before and after side by side;
    results.md names the ``machine`` (:func:`benchmarks.common.machine_info`) above the table."""
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
             ""]
    if machine:
        lines += [f"Machine: {machine['cpu_model']} (family {machine['cpu_family']}, model "
                  f"{machine['cpu_model_number']}), {machine['cpu_count']} CPUs, instruction sets "
                  f"{', '.join(machine['isa']) or 'unknown'}; TensorFlow "
                  f"{machine['versions']['tensorflow']}.", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
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
    flags.DEFINE_float("budget_seconds", 2.0, "Timed seconds per configuration and side "
                       "(split over --rounds windows).")
    flags.DEFINE_integer("warmup", 1, "Untimed steps after the first (tracing) step.")
    flags.DEFINE_integer("min_steps", 1, "Timed steps per window at least.")
    flags.DEFINE_integer("rounds", 4, "Timed windows per side, alternating sides.")
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
        # The figures depend on the CPU's instruction sets (oneDNN's kernels on AVX-512, Eigen's
        # on AVX2 only: ~3x apart for MUSICNN, README): the first line names the machine.
        from benchmarks.common import machine_info  # not at the top: workers run this file

        machine = machine_info()
        jsonl.write(json.dumps({"machine": machine}) + "\n")
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
                    print(f"[{time.monotonic() - t0:6.0f} s] {model} {resolution} width {width:g}",
                          file=sys.stderr, flush=True)
                    for row in measure(workers, job, FLAGS.rounds, first=index % 2):
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        jsonl.write(json.dumps(row) + "\n")
                        jsonl.flush()
                    index += 1
        jsonl.close()
        for w in workers.values():
            w.close()
        wall = time.monotonic() - t0
        write_tables(rows, FLAGS.out_dir, wall, machine)
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
