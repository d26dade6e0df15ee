"""Multi-worker training (tftag.runs.distributed, pipelines.launch_local_workers) on the tiny corpus.

Two local workers started by the launcher (TF_CONFIG per worker, worker 0 the chief) train the
same model as one process with the same global batch (8) and seed; the training split (36 clips)
makes 5 steps per epoch, the last a partial batch of 4 (2 per worker).

Tolerance: every epoch's mean training loss agrees within LOSS_RTOL = 1e-5 (relative). Measured
on a 2-core AVX2 machine: 3.2e-8 (epoch 0) and 2.2e-8 (epoch 1), i.e. float32 rounding: each
worker convolves 4 examples instead of 8 (other blocking of the sums), synchronized BatchNorm
computes E[x²] - E[x]² from all-reduced sums where one process computes mean((x - mean)²), and
the gradients are summed across workers in another order. The margin covers other CPUs and
thread counts; a real semantic difference is far outside it: with per-worker BatchNorm
statistics (no ``synchronized``) the losses differ by 1e-3 (epoch 0) and 5e-2 (epoch 1). The
weights themselves are compared through what they compute (validation and test ROC-AUC): the
biases of the convolutions followed by BatchNorm get gradients that are pure rounding noise,
which Adam scales to full-size steps, so those biases differ by up to ~lr per step in any two
runs that round differently, without changing any output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading

import pytest

from tftag import evaluate, train
from tftag.runs import distributed
from tftag.storage import data
from tftag.features import MelConfig
from tftag.models import ModelConfig

from conftest import run_module

MEL = MelConfig(16000, 16, 2, "log", 3.0)
MODEL = ModelConfig("vgg", width=0.05)  # no dropout: the masks would differ from one process's
LOSS_RTOL = 1e-5
ARGS = ("--resolutions=sr16000-mel16-hop2-log", "--duration=3", "--model=vgg", "--width=0.05",
        "--batch_size=8", "--patience=0", "--seed=3", "--export=false")


def _listing(run_dir) -> tuple[set[str], dict[str, list[int]]]:
    """(relative paths with TensorBoard event files as <events>, {directory: [event file pids]})."""
    paths, events = set(), {}
    for folder, _, files in os.walk(run_dir):
        rel = os.path.relpath(folder, run_dir)
        for name in files:
            if name.startswith("events.out.tfevents."):
                pid = int(name.split(".")[-3])  # events.out.tfevents.<time>.<host>.<pid>.<n>.v2
                events.setdefault(rel, []).append(pid)
                name = "<events>"
            paths.add(os.path.normpath(os.path.join(rel, name)))
    return paths, events


def _launch(tiny_dataset, run_dir, *args):
    proc = run_module("pipelines.launch_local_workers", "--num_workers=2", f"--run_dir={run_dir}",
                      "--echo=chief", "--", f"--dataset_dir={tiny_dataset}", *ARGS, *args)
    assert "all 2 workers finished" in proc.stdout, proc.stdout[-3000:]
    return int(re.search(r"started worker 0 \(chief\): pid (\d+)", proc.stdout).group(1)), proc


def test_two_workers_train_as_one_process_and_resume(tiny_dataset, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"  # TMPDIR of the workers: the non-chief's checkpoint scratch
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    run_dir = tmp_path / "multi"
    chief_1, proc = _launch(tiny_dataset, run_dir, "--epochs=1")
    assert "[worker 0] " in proc.stdout and "[worker 1] " not in proc.stdout  # --echo=chief
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_done"] == 1 and "worker" not in summary  # the chief's summary
    assert (run_dir / "best.weights.h5").exists()
    assert (run_dir / "checkpoints" / "checkpoint").exists()
    first = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in first] == [0]

    # A second launch with more epochs resumes from the chief's checkpoint: epoch 1 only.
    chief_2, _ = _launch(tiny_dataset, run_dir, "--epochs=2")
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1] and history[0] == first[0]
    for i in (0, 1):
        log = (run_dir / "workers" / f"worker-{i}.log").read_text()
        second = log.split("TF_CONFIG=")[-1]  # the second launch's part (after its header)
        assert f"resumed {run_dir}/checkpoints/ckpt-1 at epoch 1" in second
        assert " epoch 1: loss" in second and " epoch 0: loss" not in second

    # The run directory holds what one process writes, plus the launcher's logs; every
    # TensorBoard file is a chief's (one launch: tb/config 1, tb/train 1, tb/valid 2 with the
    # hparams); the non-chief's checkpoint scratch is gone.
    paths, events = _listing(run_dir)
    assert paths == {"best.weights.h5", "checkpoints/checkpoint", "configs.json",
                     "checkpoints/ckpt-2.data-00000-of-00001", "checkpoints/ckpt-2.index",
                     "determinism.json", "flags.txt", "history.json", "per_tag.txt",
                     "results.json", "summary.json", "tb/config/<events>", "tb/train/<events>",
                     "tb/valid/<events>", "workers/worker-0.log", "workers/worker-1.log"}
    assert {d: sorted(p) for d, p in events.items()} == {
        "tb/config": [chief_1, chief_2], "tb/train": [chief_1, chief_2],
        "tb/valid": [chief_1, chief_1, chief_2, chief_2]}
    assert not list(scratch.glob("tftag-worker-checkpoint-*"))

    # One process, same global batch and seed, 2 epochs straight.
    cfg = train.TrainConfig(batch_size=8, epochs=2, patience=0, seed=3)
    expected = train.train(tiny_dataset, MEL, MODEL, cfg, str(tmp_path / "single"))["history"]
    assert [h["steps"] for h in history] == [h["steps"] for h in expected] == [5, 5]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in expected],
                                                         rel=LOSS_RTOL)
    assert [h["valid_roc_auc"] for h in history] == pytest.approx(
        [h["valid_roc_auc"] for h in expected], abs=1e-6)  # the chief's decision, broadcast
    # The best weights load into a normally built model (synchronized BatchNorm left no trace)
    # and score the test split as one process's do.
    model = train.load_best(str(run_dir), tiny_dataset, MEL, MODEL)
    assert not any(getattr(layer, "synchronized", False) for layer in model.layers)
    single = train.load_best(str(tmp_path / "single"), tiny_dataset, MEL, MODEL)
    tags = data.load_dataset_info(tiny_dataset).tags
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test"]["roc_auc"] == pytest.approx(
        evaluate.evaluate(single, tiny_dataset, MEL, "test", tags).roc_auc, abs=1e-6)


def test_a_bad_tf_config_is_a_one_line_error(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["localhost:1"]}, "task": {}')
    proc = run_module("tftag.main", "--mode=train", "--strategy=multi_worker",
                      f"--run_dir={tmp_path / 'run'}", f"--dataset_dir={tiny_dataset}", *ARGS,
                      check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert error == (f"error: --strategy=multi_worker needs {distributed.EXPECTED}: $TF_CONFIG "
                     "is not JSON (Expecting ',' delimiter at character 51)")
    assert distributed.EXPECTED.startswith('TF_CONFIG={"cluster": {"worker": ["host:port", ...]}')
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize("text, message", [
    (None, "$TF_CONFIG is not set"),
    ("[]", "$TF_CONFIG is not a JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', 'no "cluster" object of jobs'),
    ('{"cluster": {"ps": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
     "cluster job(s) ps: only chief and worker train"),
    ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}',
     'cluster "worker" must be a non-empty list of "host:port", got ["a"]'),
    ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}',
     "an address appears twice"),
    ('{"cluster": {"worker": ["a:1"]}}', 'no "task" object'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
     'task "type" "chief" is not a job of the cluster (worker)'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
     'task "index" 1 is not an index of the 1 worker address(es)'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": true}}',
     'task "index" true'),
])
def test_parse_tf_config_errors(text, message):
    with pytest.raises(ValueError) as e:
        distributed.parse_tf_config(text)
    assert str(e.value).startswith(f"--strategy=multi_worker needs {distributed.EXPECTED}: ")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_chief_is_the_chief_task_else_worker_0():
    def task(cluster, kind, index):
        return distributed.parse_tf_config(json.dumps({"cluster": cluster,
                                                       "task": {"type": kind, "index": index}}))

    workers = {"worker": ["a:1", "b:2"]}
    assert [task(workers, "worker", i).is_chief for i in (0, 1)] == [True, False]
    second = task(workers, "worker", 1)
    assert second.num_workers == 2 and second.name == "worker 1"
    with_chief = {"chief": ["c:3"], "worker": ["a:1", "b:2"]}
    assert task(with_chief, "chief", 0).is_chief and task(with_chief, "chief", 0).num_workers == 3
    assert not any(task(with_chief, "worker", i).is_chief for i in (0, 1))
    assert distributed.is_chief()  # this process has no multi-worker strategy: it writes


def test_multi_worker_setup_errors(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    cfg = train.TrainConfig(strategy="multi_worker")
    with pytest.raises(ValueError, match=r"needs --dataset_dir \(a finished dataset"):
        distributed.setup(cfg, True, None)
    # A mode that does not use the strategy ignores it (the entry point refuses it for sweep
    # and tune: tests/test_experiment.py); no TF_CONFIG is parsed, no strategy is made.
    monkeypatch.setenv("TF_CONFIG", "not json")
    distributed.setup(cfg, False, None)
    assert distributed.task() is None


def test_the_global_batch_must_divide_across_replicas(tiny_dataset, tmp_path):
    class TwoReplicas:  # a stand-in: the check comes before the strategy is used
        num_replicas_in_sync = 2

    with pytest.raises(ValueError, match="--batch_size=7 is the global batch: it must divide "
                                         "evenly across the 2 replicas in sync"):
        train.train(tiny_dataset, MEL, MODEL, train.TrainConfig(batch_size=7),
                    str(tmp_path / "run"), strategy=TwoReplicas())
    assert not (tmp_path / "run").exists()


def test_synchronized_batch_norm_keeps_the_weights_layout(tmp_path):
    from tftag.models import build

    model = build(MODEL, MEL, 5)
    assert distributed.synchronize_batch_norm(model) == 5  # input_bn + one per conv block
    assert distributed.synchronize_batch_norm(model) == 0  # already switched
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    plain = build(MODEL, MEL, 5)
    plain.load_weights(path)
    assert [v.shape for v in plain.weights] == [v.shape for v in model.weights]


def _worker(index: int, code: str):
    from pipelines import launch_local_workers as launch

    process = subprocess.Popen([sys.executable, "-c", code])
    pump = threading.Thread(target=lambda: None)
    pump.start()
    return launch.Worker(index, process, f"worker-{index}.log", pump)


def test_the_launcher_stops_the_others_when_a_worker_fails():
    from pipelines import launch_local_workers as launch

    workers = [_worker(0, "import time; time.sleep(120)"), _worker(1, "import sys; sys.exit(3)")]
    failed = launch.wait(workers)
    assert failed is workers[1] and failed.process.returncode == 3
    assert workers[0].process.returncode is not None  # stopped, not left running
    assert launch.wait([_worker(0, "pass"), _worker(1, "pass")]) is None
    config = json.loads(launch.tf_config([1234, 5678], 1))
    assert config == {"cluster": {"worker": ["localhost:1234", "localhost:5678"]},
                      "task": {"type": "worker", "index": 1}}
    assert launch.worker_command(["--flagfile=x.flags"], "r")[-4:] == [
        "--flagfile=x.flags", "--mode=train", "--strategy=multi_worker", "--run_dir=r"]


def test_the_launcher_names_a_failed_worker_and_its_log(tmp_path):
    run_dir = tmp_path / "run"  # no --dataset_dir: every worker stops with a one-line error
    proc = run_module("pipelines.launch_local_workers", "--num_workers=2", f"--run_dir={run_dir}",
                      "--echo=none", "--", *ARGS, check=False)
    assert proc.returncode == 1
    match = re.search(r"error: worker (\d) exited with code 2 \(the others were stopped\); its "
                      r"log: (\S+)", proc.stderr)
    assert match, proc.stderr[-2000:]
    assert match.group(2) == str(run_dir / "workers" / f"worker-{match.group(1)}.log")
    log = open(match.group(2)).read()
    assert "error: --strategy=multi_worker needs --dataset_dir (a finished dataset" in log
    assert sorted(os.listdir(run_dir)) == ["workers"]  # nothing else was written
