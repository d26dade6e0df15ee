"""Carries a study's unfinished runs from one machine to the next, through the repository.

A run of the cross-validated study resumes from its run directory (``checkpoints/``, best
weights, ``history.json``: :mod:`tftag.train`), but a session may end on a machine that is then
lost; a MUSICNN run (1-1.5 h of a core) can outlast the time a session leaves after the
dataset's extraction, so without this it would never finish. ``save`` packs the run directory
of every run that has a checkpoint (an epoch, or a mid-epoch one: a MUSICNN pass is ~750 steps,
checkpointed every 200) and has no ``result.json`` in the results
directory into ``<carry_dir>/<fold dir>/<run>.tar.gz`` (atomic; small: a MUSICNN w1/4 or
VGG-CNN w1/8 checkpoint with its optimizer state is a few MB) and deletes the packs of runs that
have finished since; commit ``carry_dir`` with the results. ``restore`` unpacks each pack into
the study's run directory unless that directory has trained as far or further, so rerunning the
study continues every carried run where it stopped (same epochs, same batches: a run's data
order is derived from its seed and epoch; inside an epoch it skips the batches done).

  python -m tools.carry_runs --action=save      # before a session ends (then commit)
  python -m tools.carry_runs --action=restore   # on a new machine, before the study
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import tarfile
import tempfile
import time

from absl import app, flags

from tftag.runs import runfiles

FLAGS = flags.FLAGS
RESULT_JSON = "result.json"
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
    """Epochs in a run directory's ``history.json`` (0 if none)."""
    return progress(run_dir)[0]


def progress(run_dir: str) -> tuple[int, int]:
    """``(epochs, steps)`` of a run directory (:func:`tftag.runs.runfiles.training_progress`)."""
    return runfiles.training_progress(run_dir)


def unfinished_runs(study_dir: str, results_dir: str) -> dict[str, str]:
    """{"<fold dir>/<run>": run dir} of the runs with a checkpoint and no result yet."""
    out = {}
    for ckpt in sorted(glob.glob(os.path.join(study_dir, "*", "runs", "*", "checkpoints"))):
        run_dir = os.path.dirname(ckpt)
        run = os.path.basename(run_dir)
        parent = os.path.basename(os.path.dirname(os.path.dirname(run_dir)))
        if not os.path.exists(os.path.join(results_dir, run, RESULT_JSON)) and \
                progress(run_dir) > (0, 0):
            out[f"{parent}/{run}"] = run_dir
    return out


def _describe(at: tuple[int, int]) -> str:
    return f"{at[0]} epochs" + (f" + {at[1]} steps" if at[1] else "")


def _packs(carry_dir: str) -> dict[str, str]:
    return {os.path.relpath(p, carry_dir)[:-len(SUFFIX)]: p
            for p in sorted(glob.glob(os.path.join(carry_dir, "*", "*" + SUFFIX)))}


def _pack_progress(path: str) -> tuple[int, int]:
    """``(epochs, steps)`` of a pack, as :func:`progress` of the run directory it holds."""
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(path, "r:gz") as tar:
            for name in (runfiles.HISTORY_JSON, runfiles.PROGRESS_JSON):
                if name in tar.getnames():
                    tar.extract(name, tmp, filter="data")
        return progress(tmp)


def pack_run(run_dir: str, attempts: int = PACK_ATTEMPTS,
             pause_seconds: float = 2.0) -> tuple[bytes, tuple[int, int]] | None:
    """A consistent ``(tar.gz bytes, (epochs, steps))`` of a run directory, or None.

    A run still training may checkpoint (new history or progress, checkpoint rotated: a file
    listed a moment ago is gone) while it is packed; such a pack is thrown away and taken again,
    up to ``attempts`` times. Consistent means: no file vanished and the progress was the same
    before and after.
    """
    for attempt in range(attempts):
        if attempt:
            time.sleep(pause_seconds)
        before = progress(run_dir)
        buf = io.BytesIO()
        try:
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                for entry in sorted(os.listdir(run_dir)):
                    tar.add(os.path.join(run_dir, entry), arcname=entry)
        except FileNotFoundError:
            continue
        if progress(run_dir) == before:
            return buf.getvalue(), before
    return None


def save(study_dir: str, results_dir: str, carry_dir: str) -> dict:
    """Packs every unfinished run; deletes the packs of finished (or vanished-and-finished) runs."""
    saved, pruned, skipped = {}, [], {}
    for name, run_dir in unfinished_runs(study_dir, results_dir).items():
        pack = os.path.join(carry_dir, name + SUFFIX)
        packed = _pack_progress(pack) if os.path.exists(pack) else (0, 0)
        have = progress(run_dir)
        if packed == have:
            continue  # nothing new: keep the committed pack (no new blob in the history)
        if packed > have:  # e.g. a stale copy restored elsewhere
            skipped[name] = (f"the pack has {_describe(packed)}, {run_dir} only "
                             f"{_describe(have)}: kept the pack")
            continue
        taken = pack_run(run_dir)
        if taken is None:
            skipped[name] = f"changed while packed {PACK_ATTEMPTS} times (training): try again"
            continue
        data, (epochs, steps) = taken
        runfiles.write_bytes_atomic(os.path.join(carry_dir, name + SUFFIX), data)
        saved[name] = {"epochs": epochs, "steps": steps, "bytes": len(data)}
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
        have, carried = progress(target), _pack_progress(path)
        if have >= carried:
            skipped[name] = (f"the run directory has {_describe(have)}, "
                             f"the pack {_describe(carried)}")
            continue
        staging = target + ".restoring"
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(path, "r:gz") as tar:
            tar.extractall(staging, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        restored[name] = carried[0] if not carried[1] else list(carried)
    return {"restored": restored, "skipped": skipped}


def main(argv):
    del argv
    if FLAGS.action == "save":
        out = save(FLAGS.study_dir, FLAGS.results_dir, FLAGS.carry_dir)
    elif FLAGS.action == "restore":
        out = restore(FLAGS.study_dir, FLAGS.results_dir, FLAGS.carry_dir)
    else:
        runs = unfinished_runs(FLAGS.study_dir, FLAGS.results_dir)
        out = {"unfinished": {n: _describe(progress(d)) for n, d in runs.items()},
               "packs": {n: _describe(_pack_progress(p))
                         for n, p in _packs(FLAGS.carry_dir).items()}}
    print(json.dumps(out))


if __name__ == "__main__":
    define_flags()
    app.run(main)
