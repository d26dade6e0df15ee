"""Seeded runs are repeatable bit for bit on one machine (tftag.runs.determinism, tftag.storage.data).

Without fixed thread pools, TensorFlow sizes its intra-op pool from the CPUs the process may
use, and the float32 sums of its convolutions depend on that size: a run started on one CPU
differs from one started on two in the 8th digit of the first epoch's loss. The CLI test runs
the same tiny training twice, once as usual and once confined to one CPU that a busy loop
keeps busy too, and wants the same bits.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tftag.storage import data
from tftag.features import MelConfig

from conftest import ROOT, run_module

TRAIN_ARGS = ("--mode=train", "--sr=16000", "--n_mels=16", "--hop_factors=2",
              "--compressions=log", "--duration=3", "--width=0.125", "--epochs=1",
              "--batch_size=8", "--patience=0", "--export=false", "--seed=0")


def _h5_arrays(path: str) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file by name (the file's bytes may hold timestamps)."""
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return arrays


@contextlib.contextmanager
def _one_busy_cpu():
    """Children started inside may use one CPU only, and share it with a busy loop."""
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[0]})
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # inherits the CPU
    try:
        yield
    finally:
        os.sched_setaffinity(0, cpus)
        busy.kill()
        busy.wait()


def _numbers(obj, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a JSON object by path, less timings."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        timing = any(word in prefix for word in ("second", "time"))
        number = isinstance(obj, (int, float)) and not isinstance(obj, bool)
        return {prefix: obj} if number and not timing else {}
    return {k: v for key, value in items for k, v in _numbers(value, f"{prefix}/{key}").items()}


def _train(run_dir: str, dataset_dir: str) -> dict:
    run_module("tftag.main", f"--run_dir={run_dir}", f"--dataset_dir={dataset_dir}", *TRAIN_ARGS)
    with open(os.path.join(run_dir, "history.json"), encoding="utf-8") as f:
        history = [{k: v for k, v in h.items() if not k.endswith("_seconds")} for h in json.load(f)]
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
        results = _numbers(json.load(f))
    assert any("roc_auc" in k for k in results), results
    return {"history": history, "weights": _h5_arrays(os.path.join(run_dir, "best.weights.h5")),
            "results": results}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs to run once on one and once on all")
def test_seeded_training_is_bitwise_repeatable(tiny_dataset, tmp_path):
    first = _train(str(tmp_path / "all_cpus"), tiny_dataset)
    with _one_busy_cpu():
        second = _train(str(tmp_path / "one_busy_cpu"), tiny_dataset)
    losses = [h["loss"] for h in first["history"]]
    assert [h["loss"] for h in second["history"]] == losses  # exact floats, not approx
    assert second["history"] == first["history"]
    assert sorted(second["weights"]) == sorted(first["weights"])
    differing = [name for name, a in first["weights"].items()
                 if not np.array_equal(a, second["weights"][name])]
    assert not differing, f"best weights differ in {differing}"
    assert second["results"] == first["results"]


def test_configure_fixes_the_thread_pools():
    script = (
        "import json\n"
        "from tftag.runs import determinism\n"
        "a = determinism.configure(5, True, threads=3)\n"
        "import tensorflow as tf\n"
        "tf.constant(1.0) + 1.0  # the runtime and its pools exist from here on\n"
        "b = determinism.configure(6, True, threads=3)\n"
        "c = determinism.configure(7, True, threads=2)\n"
        "print(json.dumps([a, b, c]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b, c = json.loads(proc.stdout.strip().splitlines()[-1])
    for settings in (a, b):
        assert settings["intra_op_threads"] == settings["inter_op_threads"] == 3
        assert settings["threads_fixed"] and settings["op_determinism"]
    assert (a["seed"], b["seed"]) == (5, 6)
    # Too late to resize the pools: reported, not hidden.
    assert c["intra_op_threads"] == 3 and not c["threads_fixed"]
    assert "thread pools were created before configure()" in proc.stderr


def test_importing_tftag_turns_onednn_on_unless_chosen_and_tf_pool_variables_are_named():
    script = (
        "import json, os\n"
        "import tftag\n"
        "from tftag.runs import determinism\n"
        "s = determinism.configure(0, True, threads=1)\n"
        "print(json.dumps([os.environ['TF_ENABLE_ONEDNN_OPTS'], s['onednn']]))\n"
    )
    out = {}
    for choice in (None, "0"):
        env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
        env.update(TF_CPP_MIN_LOG_LEVEL="2", TF_NUM_INTRAOP_THREADS="4")
        if choice is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = choice
        proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[choice] = json.loads(proc.stdout.strip().splitlines()[-1])
        # the pools are fixed to 1 thread: the variable a user set does not hold, and is named
        assert "TF_NUM_INTRAOP_THREADS=4 ignored" in proc.stderr and "TFTAG_NUM_THREADS" in proc.stderr
    assert out[None] == ["1", True]  # on by default, whatever the CPU
    assert out["0"] == ["0", False]  # the user's choice holds


def test_patch_offsets_are_keyed_by_seed_and_index(tiny_dataset):
    config = MelConfig(16000, 16, 2, "log", 3.0)

    def patches(seed):
        ds = data.make_dataset(tiny_dataset, config, "train", batch_size=8, patch_frames=16,
                               shuffle_buffer=64, seed=seed, as_dict=True)
        batches = list(ds)
        return (np.concatenate([b["clip_id"].numpy() for b in batches]),
                np.concatenate([b["mel"].numpy() for b in batches]))

    ids, mels = patches(11)
    ids_again, mels_again = patches(11)
    np.testing.assert_array_equal(ids_again, ids)
    np.testing.assert_array_equal(mels_again, mels)  # same order, same windows
    full = {e["clip_id"]: e["mel"] for e in data.read_examples(tiny_dataset, config, "train")}
    starts = set()
    for clip_id, patch in zip(ids, mels):
        whole = full[clip_id.decode()]
        matches = [s for s in range(whole.shape[0] - 15)
                   if np.allclose(whole[s:s + 16], patch, rtol=1e-5, atol=1e-6)]
        assert matches, clip_id
        starts.add(matches[0])
    assert len(starts) > 1  # offsets still vary from clip to clip
    _, mels_other = patches(12)
    assert not np.array_equal(mels_other, mels)
