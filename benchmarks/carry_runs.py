"""Carries a study's unfinished runs from one machine to the next, through the repository.

A run of the cross-validated study resumes from its run directory (``checkpoints/``, best
weights, ``history.json``: :mod:`tftag.train`), but a session may end on a machine that is then
lost; a MUSICNN run (1-1.5 h of a core) can outlast the time a session leaves after the
dataset's extraction, so without this it would never finish. ``save`` packs the run directory
of every run that has trained at least one epoch and has no ``result.json`` in the results
directory into ``<carry_dir>/<fold dir>/<run>.tar.gz`` (atomic; small: a MUSICNN w1/4 or
VGG-CNN w1/8 checkpoint with its optimizer state is a few MB) and deletes the packs of runs that
have finished since; commit ``carry_dir`` with the results. ``restore`` unpacks each pack into
the study's run directory unless that directory has trained as far or further, so rerunning the
study continues every carried run where it stopped (same epochs, same batches: a run's data
order is derived from its seed and epoch).

  python -m benchmarks.carry_runs --action=save      # before a session ends (then commit)
  python -m benchmarks.carry_runs --action=restore   # on a new machine, before the study
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import tarfile
import time

from absl import app, flags

from tftag import runfiles

FLAGS = flags.FLAGS
RESULT_JSON = "result.json"
HISTORY_JSON = "history.json"
SUFFIX = ".tar.gz"
PACK_ATTEMPTS = 5  # a run that is training may rotate its checkpoint files while it is packed


def define_flags() -> None:
    flags.DEFINE_enum("action", None, ["save", "restore", "list"], "What to do.")
    flags.DEFINE_string("study_dir", "runs/real_music_study",
                        "The study's run directory: one <fold dir>/runs/<run>/ per run.")
    flags.DEFINE_string("results_dir", "benchmarks/results/real_music/runs",
                        "The study's results: <run>/result.json of every finished run.")
    flags.DEFINE_string("carry_dir", "benchmarks/results/real_music/unfinished",
                        "Where the packs of unfinished runs go (committed).")
    flags.mark_flag_as_required("action")


def epochs_trained(run_dir: str) -> int:
    """Epochs in a run directory's ``history.json`` (a list, one entry per epoch; 0 if none)."""
    path = os.path.join(run_dir, HISTORY_JSON)
    if not os.path.exists(path):
        return 0
    history = runfiles.read_json(path)
    return len(history)


def unfinished_runs(study_dir: str, results_dir: str) -> dict[str, str]:
    """{"<fold dir>/<run>": run dir} of the runs with a checkpoint and no result yet."""
    out = {}
    for ckpt in sorted(glob.glob(os.path.join(study_dir, "*", "runs", "*", "checkpoints"))):
        run_dir = os.path.dirname(ckpt)
        run = os.path.basename(run_dir)
        parent = os.path.basename(os.path.dirname(os.path.dirname(run_dir)))
        if not os.path.exists(os.path.join(results_dir, run, RESULT_JSON)) and epochs_trained(run_dir):
            out[f"{parent}/{run}"] = run_dir
    return out


def _packs(carry_dir: str) -> dict[str, str]:
    return {os.path.relpath(p, carry_dir)[:-len(SUFFIX)]: p
            for p in sorted(glob.glob(os.path.join(carry_dir, "*", "*" + SUFFIX)))}


def _pack_epochs(path: str) -> int:
    with tarfile.open(path, "r:gz") as tar:
        member = tar.extractfile(HISTORY_JSON)
        return len(json.load(io.TextIOWrapper(member, encoding="utf-8")))


def pack_run(run_dir: str, attempts: int = PACK_ATTEMPTS,
             pause_seconds: float = 2.0) -> tuple[bytes, int] | None:
    """A consistent ``(tar.gz bytes, epochs)`` of a run directory, or None.

    A run still training may finish an epoch (new history, checkpoint rotated: a file listed
    a moment ago is gone) while it is packed; such a pack is thrown away and taken again, up to
    ``attempts`` times. Consistent means: no file vanished and the epoch count was the same
    before and after.
    """
    for attempt in range(attempts):
        if attempt:
            time.sleep(pause_seconds)
        before = epochs_trained(run_dir)
        buf = io.BytesIO()
        try:
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                for entry in sorted(os.listdir(run_dir)):
                    tar.add(os.path.join(run_dir, entry), arcname=entry)
        except FileNotFoundError:
            continue
        if epochs_trained(run_dir) == before:
            return buf.getvalue(), before
    return None


def save(study_dir: str, results_dir: str, carry_dir: str) -> dict:
    """Packs every unfinished run; deletes the packs of finished (or vanished-and-finished) runs."""
    saved, pruned, skipped = {}, [], {}
    for name, run_dir in unfinished_runs(study_dir, results_dir).items():
        pack = os.path.join(carry_dir, name + SUFFIX)
        packed_epochs = _pack_epochs(pack) if os.path.exists(pack) else 0
        have = epochs_trained(run_dir)
        if packed_epochs == have:
            continue  # nothing new: keep the committed pack (no new blob in the history)
        if packed_epochs > have:  # e.g. a stale copy restored elsewhere
            skipped[name] = (f"the pack has {packed_epochs} epochs, {run_dir} only {have}: "
                             "kept the pack")
            continue
        packed = pack_run(run_dir)
        if packed is None:
            skipped[name] = f"changed while packed {PACK_ATTEMPTS} times (training): try again"
            continue
        data, epochs = packed
        runfiles.write_bytes_atomic(os.path.join(carry_dir, name + SUFFIX), data)
        saved[name] = {"epochs": epochs, "bytes": len(data)}
    for name, path in _packs(carry_dir).items():
        if os.path.exists(os.path.join(results_dir, os.path.basename(name), RESULT_JSON)):
            os.remove(path)
            pruned.append(name)
    out = {"saved": saved, "pruned_finished": pruned}
    if skipped:
        out["skipped"] = skipped
    return out


def restore(study_dir: str, results_dir: str, carry_dir: str) -> dict:
    """Unpacks each pack whose run has no result and whose run directory is behind it."""
    restored, skipped = {}, {}
    for name, path in _packs(carry_dir).items():
        fold_dir, run = os.path.split(name)
        if os.path.exists(os.path.join(results_dir, run, RESULT_JSON)):
            skipped[name] = "finished (result.json exists): run save to delete the pack"
            continue
        target = os.path.join(study_dir, fold_dir, "runs", run)
        have, carried = epochs_trained(target), _pack_epochs(path)
        if have >= carried:
            skipped[name] = f"the run directory has {have} epochs, the pack {carried}"
            continue
        staging = target + ".restoring"
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(path, "r:gz") as tar:
            tar.extractall(staging, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        restored[name] = carried
    return {"restored": restored, "skipped": skipped}


def main(argv):
    del argv
    if FLAGS.action == "save":
        out = save(FLAGS.study_dir, FLAGS.results_dir, FLAGS.carry_dir)
    elif FLAGS.action == "restore":
        out = restore(FLAGS.study_dir, FLAGS.results_dir, FLAGS.carry_dir)
    else:
        out = {"unfinished": {n: epochs_trained(d)
                              for n, d in unfinished_runs(FLAGS.study_dir, FLAGS.results_dir).items()},
               "packs": {n: _pack_epochs(p) for n, p in _packs(FLAGS.carry_dir).items()}}
    print(json.dumps(out))


if __name__ == "__main__":
    define_flags()
    app.run(main)
