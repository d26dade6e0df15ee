r"""Seconds per how_low trial, before/after: the per-trial overhead of a search's trainings.

    .venv/bin/python -m benchmarks.trial_overhead --before_dir=CHECKOUT \
        --dataset_dir=runs/how_low/synthetic/corpus/dataset

Each side (this checkout, and ``--before_dir``, a checkout of the code before the change) runs
in its own worker process, both at once on the same machine with the same niceness (so both see
the same load), the sequence of trainings a successive-halving search runs in one process, as
:class:`tftag.search.tuner.TrialRunner` runs them: for each candidate of ``--candidates``, a 1-epoch
trial from scratch (rung 0), then, for each, a promoted trial: a copy of its run directory
trained on to 3 epochs (rung 1); ``keras.backend.clear_session()`` after each trial. A side
whose ``tftag.train.train`` takes ``steps`` passes it one :class:`tftag.train.StepCache` for the
whole sequence, as the search does.

Per trial: wall seconds of the call, CPU seconds of the process (``time.process_time``: all its
threads), and the training + validation seconds of its new epochs (what the how_low benchmark's
``compute_ratio`` sums). The epoch's losses and validation ROC-AUCs of both sides are compared
(the change must keep every number). Prints one JSON line: the means per rung and side, and
``same_numbers``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CANDIDATES = ("sr16000-mel96-hop1-log:0.125", "sr16000-mel48-hop4-log:0.0625",
              "sr16000-mel16-hop10-log:0.125", "sr16000-mel48-hop2-log:0.125")


def worker(dataset_dir: str, out: str, candidates: list[str], duration: float) -> list[dict]:
    """Runs the trial sequence with the tftag on ``sys.path``; returns one record per trial."""
    import dataclasses
    import inspect
    import shutil

    import tftag  # noqa: F401  # first: it sets TensorFlow's oneDNN switch
    import keras

    from tftag import train
    from tftag.experiment import TrainConfig
    from tftag.features import MelConfig
    from tftag.models import ModelConfig

    steps = train.StepCache() if "steps" in inspect.signature(train.train).parameters else None
    cfg = TrainConfig(batch_size=16, epochs=1, patience=3, seed=0)
    specs = []
    for text in candidates:
        name, width = text.split(":")
        specs.append((MelConfig.from_name(name, duration), ModelConfig("vgg", width=float(width))))
    records = []

    def trial(rung: int, i: int, epochs: int) -> None:
        mel, model = specs[i]
        run_dir = os.path.join(out, f"r{rung}-{i}")
        if rung:
            shutil.copytree(os.path.join(out, f"r{rung - 1}-{i}"), run_dir)
        kwargs = {"steps": steps} if steps is not None else {}
        wall, cpu = time.monotonic(), time.process_time()
        outcome = train.train(dataset_dir, mel, model, dataclasses.replace(cfg, epochs=epochs),
                              run_dir, **kwargs)
        keras.backend.clear_session()
        new = outcome["history"][-(epochs - (1 if rung else 0)):]
        records.append({"rung": rung, "candidate": candidates[i],
                        "wall_seconds": round(time.monotonic() - wall, 3),
                        "cpu_seconds": round(time.process_time() - cpu, 3),
                        "train_seconds": round(sum(h["epoch_seconds"] + h["valid_seconds"]
                                                   for h in new), 3),
                        "numbers": [(h["loss"], h["valid_roc_auc"]) for h in new]})

    for i in range(len(specs)):
        trial(0, i, 1)
    for i in range(len(specs)):
        trial(1, i, 3)
    return records


def main() -> None:
    from absl import app, flags

    flags.DEFINE_string("before_dir", None, "A checkout of the code before the change (with a "
                        ".venv, or this one's Python is used).")
    flags.DEFINE_string("dataset_dir", None, "An extracted dataset holding the candidates' "
                        "resolutions (e.g. the how_low benchmark's built-in corpus).")
    flags.DEFINE_list("candidates", list(CANDIDATES), "resolution:width of each VGG-CNN "
                      "candidate.")
    flags.DEFINE_float("duration", 10.0, "The dataset's clip seconds.")
    flags.DEFINE_string("work_dir", os.path.join(REPO, "runs", "trial_overhead"),
                        "Run directories of the trials (made afresh).")
    flags.DEFINE_string("out", os.path.join(REPO, "benchmarks", "results", "how_low",
                                            "trial_overhead.json"), "The JSON line's file.")

    def run(argv):
        del argv
        import shutil

        if not FLAGS.before_dir or not FLAGS.dataset_dir:
            raise app.UsageError("give --before_dir (a checkout of the code before) and "
                                 "--dataset_dir")
        sides = {"before": os.path.abspath(FLAGS.before_dir), "after": REPO}
        procs = {}
        for side, root in sides.items():
            out = os.path.join(FLAGS.work_dir, side)
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            python = os.path.join(root, ".venv", "bin", "python")
            procs[side] = subprocess.Popen(
                [python if os.path.exists(python) else sys.executable, os.path.abspath(__file__),
                 "--worker", os.path.abspath(FLAGS.dataset_dir), out, ",".join(FLAGS.candidates),
                 str(FLAGS.duration)], cwd=root, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True,
                env=dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="2"))
        load_before = os.getloadavg()
        records = {}
        for side, proc in procs.items():
            stdout, _ = proc.communicate()
            if proc.returncode:
                raise RuntimeError(f"the {side} worker exited {proc.returncode}")
            records[side] = json.loads(stdout.strip().splitlines()[-1])
        result = {"benchmark": "trial_overhead", "candidates": FLAGS.candidates,
                  "load_average_start": [round(x, 2) for x in load_before],
                  "load_average_end": [round(x, 2) for x in os.getloadavg()],
                  "same_numbers": [r["numbers"] for r in records["before"]]
                  == [r["numbers"] for r in records["after"]]}
        for rung, name in ((0, "rung0"), (1, "promoted")):
            for side, recs in records.items():
                rows = [r for r in recs if r["rung"] == rung]
                for figure in ("wall_seconds", "cpu_seconds", "train_seconds"):
                    result[f"{name}_{figure}_{side}"] = round(
                        statistics.mean(r[figure] for r in rows), 2)
        result["trials"] = records
        from tftag.runs import runfiles

        os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
        runfiles.write_text_atomic(FLAGS.out, json.dumps(result, sort_keys=True) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "trials"}, sort_keys=True))

    FLAGS = flags.FLAGS
    app.run(run)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3], sys.argv[4].split(","),
                                float(sys.argv[5]))))
    else:
        main()
