"""Where a cross-validated sweep stands (``--mode=status``): every run of its plan finished,
started or not started, how far a started run is from its stop, and the time left at the
speeds measured so far.

A converged study runs for hours in processes that stop and resume (one per fold in
``tools/run_real_music_study.sh``); this reads only the files they write, so it can run
beside them and trains, loads and writes nothing:

- a finished run: ``<results_dir>/<key>/result.json`` (:mod:`tftag.study.crossval`);
- a started run: ``runs/<key>/`` in the sweep's run directory or in one directory below it (a
  sweep split over processes with a run directory each, ``<run_dir>/fold<k>/``): its
  ``history.json`` (one entry per pass: validation loss, ``best``, learning rate, seconds),
  ``progress.json`` (steps of the pass in progress) and ``fold.json`` (its training clips).

How far from its stop: a run stops after ``patience`` passes without a better validation loss
once its learning-rate reductions are used up (:func:`tftag.train.train`), so replaying its
history gives the fewest passes it can still take (:func:`passes_left`). How many it will take
is estimated by the finished runs of the same model and resolution at the same stage (the median
of the passes they trained after as many learning-rate reductions as it has had: a run on its
last learning rate is a few passes from its stop, whatever its total;
:func:`typical_stage`), and its speed by its own last passes (a run without a measured pass: the median speed of the
runs of its model and resolution, finished or started).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import statistics
import time
from typing import Mapping, Sequence

from tftag import patches
from tftag.runs import runfiles
from tftag.study import analysis, crossval

# Seconds per pass are the mean of a started run's last this many passes.
RECENT_PASSES = 3


@dataclasses.dataclass(frozen=True)
class RunStatus:
    """One run of the plan.

    Attributes:
      key: the run's name (:attr:`tftag.study.crossval.FoldItem.key`).
      fold: its fold.
      state: ``done`` (result.json written), ``started`` (a run directory) or ``pending``.
      passes: passes (epochs) finished.
      steps: steps of the pass in progress, checkpointed.
      steps_per_pass: steps of one pass (None: not known yet).
      best_pass: the pass with the lowest validation loss so far (None: none).
      reductions: learning-rate reductions so far; ``max_reductions`` the recipe's.
      bad_passes: passes since the last better validation (or the last reduction).
      patience: passes without a better validation before a reduction or the stop.
      cap: the recipe's maximum number of passes.
      min_left: the fewest passes left (validation never better again); None if the run has no
        patience (it stops at the cap).
      expected_left: passes left expected from the finished runs of its model and resolution
        at the same stage: the median passes they trained after as many learning-rate
        reductions as this run has had, less the passes this run trained since its last
        (:func:`typical_stage`; at least ``min_left``); None if none finished and nothing
        bounds it.
      seconds_per_pass: training and validation seconds of one pass, measured; None if unknown.
      saved_seconds_ago: since its last checkpoint (started runs).
      test_roc_auc, stop_reason: of a finished run.
    """

    key: str
    fold: int
    state: str
    passes: int = 0
    steps: int = 0
    steps_per_pass: int | None = None
    best_pass: int | None = None
    reductions: int = 0
    max_reductions: int = 0
    bad_passes: int = 0
    patience: int = 0
    cap: int = 0
    min_left: int | None = None
    expected_left: float | None = None
    seconds_per_pass: float | None = None
    saved_seconds_ago: float | None = None
    test_roc_auc: float | None = None
    stop_reason: str | None = None

    @property
    def hours_left(self) -> float | None:
        """Expected hours of training left (0 when done), at its measured speed."""
        if self.state == "done":
            return 0.0
        if self.expected_left is None or self.seconds_per_pass is None:
            return None
        done = self.steps / self.steps_per_pass if self.steps_per_pass else 0.0
        return max(self.expected_left - done, 0.0) * self.seconds_per_pass / 3600.0


def replay(history: Sequence[Mapping]) -> tuple[int, int]:
    """``(reductions, bad_passes)`` after a training history, as :func:`tftag.train.train`
    counts them: a lower learning rate than the pass before is a reduction and restarts the
    count (:func:`tftag.study.analysis.reduction_passes`); a pass marked ``best`` resets it, any other
    adds one."""
    drops = analysis.reduction_passes(history)
    bad = 0
    for h in history[drops[-1] if drops else 0:]:
        bad = 0 if h.get("best") else bad + 1
    return len(drops), bad


def passes_left(patience: int, max_reductions: int, reductions: int, bad_passes: int,
                passes: int, cap: int) -> int | None:
    """The fewest passes before the run stops: the rest of this plateau, then a whole plateau
    per reduction left (never more than the cap allows). None without early stopping."""
    if not patience:
        return None
    left = max(patience - bad_passes, 0) + max(max_reductions - reductions, 0) * patience
    if bad_passes >= patience and reductions >= max_reductions:
        left = 0
    return max(min(left, cap - passes), 0)


def run_dirs(run_dir: str, key: str) -> list[str]:
    """Where a run may train: ``<run_dir>/runs/<key>`` and ``<run_dir>/*/runs/<key>``."""
    found = [os.path.join(run_dir, "runs", key)]
    found += sorted(glob.glob(os.path.join(glob.escape(run_dir), "*", "runs", glob.escape(key))))
    return [d for d in found if os.path.isdir(d)]


def _kind(item) -> tuple[str, float, str]:
    """(model, width, resolution) of a sweep item, as a result.json names them."""
    return item.model_config.name, item.model_config.width, item.mel_config.name


def _result_kind(r: Mapping) -> tuple:
    return r.get("model"), r.get("width"), r.get("resolution")


def stage_start(history: Sequence[Mapping], reductions: int) -> int | None:
    """The passes a run had finished when its ``reductions``-th learning-rate reduction took
    effect (0 for none; :func:`tftag.study.analysis.reduction_passes`); None if its history has fewer
    reductions."""
    if reductions <= 0:
        return 0
    drops = analysis.reduction_passes(history)
    return drops[reductions - 1] if len(drops) >= reductions else None


def typical_stage(results: Sequence[dict], item, reductions: int = 0) -> float | None:
    """The median passes the finished runs of the item's model and resolution (else of its
    model at any resolution) trained from their ``reductions``-th learning-rate reduction to
    their stop (all their passes for 0), from their learning curves; None if none finished or
    none reached that stage."""
    for n in (3, 2):  # (model, width, resolution), then (model, width)
        peers = []
        for r in results:
            if _result_kind(r)[:n] == _kind(item)[:n]:
                start = stage_start(r.get("curve") or [], reductions)
                if start is not None:
                    peers.append(r["epochs_done"] - start)
        if peers:
            return float(statistics.median(peers))
    return None


def status(experiment, now: float | None = None) -> list[RunStatus]:
    """The state of every run of the experiment's cross-validated plan (:func:`crossval.plan`),
    in its order.

    Args:
      experiment: a sweep with folds (``--folds``; ``--fold`` for one).
      now: the time the checkpoints' ages are counted from (default: now).
    """
    now = time.time() if now is None else now
    out = crossval.results_dir(experiment)
    items = crossval.plan(experiment)
    by_key = {i.key: i for i in items}
    results = {}
    for i in items:
        path = crossval.result_path(out, i.key)
        if os.path.exists(path):
            results[i.key] = runfiles.read_json(path)
    finished = list(results.values())
    rows = {}
    for i in items:
        cfg = i.item.train_config or experiment.train
        if i.key in results:
            rows[i.key] = _done(i.key, i.fold, results[i.key], cfg)
            continue
        dirs = run_dirs(experiment.run_dir, i.key) if experiment.run_dir else []
        if dirs:
            rows[i.key] = _started(i, max(dirs, key=runfiles.training_progress), cfg,
                                   finished, now)
    measured = {i.key: rows[i.key].seconds_per_pass for i in items
                if i.key in rows and rows[i.key].seconds_per_pass is not None}
    for i in items:  # no pass measured yet: the median speed of the runs at its resolution
        speeds = [v for k, v in measured.items() if _kind(by_key[k].item) == _kind(i.item)]
        speed = statistics.median(speeds) if speeds else None
        if i.key not in rows:
            cfg = i.item.train_config or experiment.train
            rows[i.key] = RunStatus(i.key, i.fold, "pending", cap=cfg.epochs,
                                    max_reductions=cfg.lr_reductions,
                                    expected_left=typical_stage(finished, i.item),
                                    seconds_per_pass=speed)
        elif i.key not in measured:
            rows[i.key] = dataclasses.replace(rows[i.key], seconds_per_pass=speed)
    return [rows[i.key] for i in items]


def _done(key: str, fold: int, r: dict, cfg) -> RunStatus:
    """A finished run, from its result.json."""
    return RunStatus(
        key, fold, "done", passes=r["epochs_done"], best_pass=r["best_epoch"],
        reductions=r.get("lr_reductions", 0), max_reductions=cfg.lr_reductions,
        patience=r.get("patience_epochs", cfg.patience), cap=r.get("max_epochs", cfg.epochs),
        min_left=0, expected_left=0.0,
        seconds_per_pass=r["train_seconds"] / r["epochs_done"] if r["epochs_done"] else None,
        test_roc_auc=r["test_roc_auc"], stop_reason=r["stop_reason"])


def _started(fold_item, run_dir: str, cfg, finished: Sequence[dict], now: float) -> RunStatus:
    """A run with a run directory: its history replayed (:func:`replay`); the passes expected
    from the ``finished`` runs' at the same stage (:func:`typical_stage`)."""
    from tftag import train

    item = fold_item.item
    passes, steps = runfiles.training_progress(run_dir)
    history_path = os.path.join(run_dir, runfiles.HISTORY_JSON)
    history = runfiles.read_json(history_path) if os.path.exists(history_path) else []
    fold_path = os.path.join(run_dir, crossval.FOLD_JSON)
    n_train = len(runfiles.read_json(fold_path)["train"]) if os.path.exists(fold_path) else None
    frames = item.patch_frames
    per_clip = patches.n_windows(item.mel_config.n_frames, frames) if frames else 1
    patience = train.patience_epochs(cfg, n_train, per_clip) if n_train else cfg.patience
    per_pass = history[-1]["steps"] if history else None
    if per_pass is None and n_train:
        per_pass = (train.epoch_steps(cfg, n_train, per_clip)
                    or train.steps_per_pass(n_train, cfg.batch_size))  # a clip (or one patch) each
    reductions, bad = replay(history)
    least = passes_left(patience, cfg.lr_reductions, reductions, bad, passes, cfg.epochs)
    typical = typical_stage(finished, item, reductions)
    if least is None:
        expected = float(cfg.epochs - passes)
    elif typical is None:
        expected = float(least)
    else:  # the stage's typical length, less the passes this run has already trained in it
        expected = float(max(least, typical - (passes - stage_start(history, reductions))))
    recent = [h["epoch_seconds"] + h.get("valid_seconds", 0.0)
              for h in history[-RECENT_PASSES:] if "epoch_seconds" in h]
    saved = [os.path.getmtime(p) for p in
             (history_path, os.path.join(run_dir, runfiles.PROGRESS_JSON)) if os.path.exists(p)]
    return RunStatus(
        fold_item.key, fold_item.fold, "started", passes=passes, steps=steps,
        steps_per_pass=per_pass,
        best_pass=max((h["epoch"] for h in history if h.get("best")), default=None),
        reductions=reductions, max_reductions=cfg.lr_reductions, bad_passes=bad,
        patience=patience, cap=cfg.epochs, min_left=least, expected_left=expected,
        seconds_per_pass=statistics.mean(recent) if recent else None,
        saved_seconds_ago=now - max(saved) if saved else None)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _hours(h: float | None) -> str:
    return "?" if h is None else f"{h:.1f}"


def table(rows: Sequence[RunStatus]) -> str:
    """The rows as a Markdown table."""
    lines = ["| run | state | passes | best pass | LR reductions | passes without better / "
             "patience | passes left: at least / expected | min per pass | h left | last "
             "checkpoint | test ROC-AUC % (stop) |",
             "|" + "---|" * 11]
    for r in rows:
        passes = f"{r.passes}" + (f" + {r.steps}/{r.steps_per_pass or '?'} steps" if r.steps else "")
        left = ("–" if r.state == "done" else
                f"{'–' if r.min_left is None else r.min_left} / "
                f"{'?' if r.expected_left is None else f'{r.expected_left:.0f}'}")
        no_better = f"{r.bad_passes} / {r.patience or '–'}" if r.state == "started" else "–"
        minutes = "?" if r.seconds_per_pass is None else f"{r.seconds_per_pass / 60:.1f}"
        result = (f"{100 * r.test_roc_auc:.2f} ({r.stop_reason})" if r.state == "done" else "")
        lines.append(
            f"| {r.key} | {r.state} | {passes if r.state != 'pending' else '–'} | "
            f"{'–' if r.best_pass is None else r.best_pass} | "
            f"{r.reductions} of {r.max_reductions} | "
            f"{no_better} | {left} | {minutes} | "
            f"{_hours(r.hours_left)} | {_ago(r.saved_seconds_ago)} | {result} |")
    return "\n".join(lines)


def summary(rows: Sequence[RunStatus]) -> dict:
    """Counts per state and, per fold, the runs left and their expected hours (one process per
    fold runs its runs one after another: the fold with the most hours sets the wall time)."""
    states = {s: sum(r.state == s for r in rows) for s in ("done", "started", "pending")}
    per_fold = {}
    for fold in sorted({r.fold for r in rows}):
        left = [r for r in rows if r.fold == fold and r.state != "done"]
        hours = [r.hours_left for r in left]
        per_fold[str(fold)] = {"runs_left": len(left),
                               "hours_left": None if None in hours else round(sum(hours), 2)}
    return {"runs": len(rows), **states, "folds": per_fold}


def run(experiment) -> dict:
    """``--mode=status``: prints the table and the per-fold hours left; returns the summary."""
    if experiment.folds is None:
        raise ValueError("--mode=status reports a cross-validated sweep: give its flags "
                         "(--folds=K, e.g. --flagfile=configs/real_music_study.flags)")
    rows = status(experiment)
    s = summary(rows)
    print(table(rows))
    print(f"\n{s['done']} of {s['runs']} runs done, {s['started']} started, "
          f"{s['pending']} not started (results: {crossval.results_dir(experiment)}). Passes "
          f"left expected: the median passes the finished runs of the same model and "
          f"resolution (else of the model) trained after as many learning-rate reductions as "
          f"the run has had, less those it has trained since; at least the fewest the stopping "
          f"rule allows.")
    for fold, f in s["folds"].items():
        if f["runs_left"]:
            print(f"fold {fold}: {f['runs_left']} run{'s' * (f['runs_left'] > 1)} left, "
                  f"~{_hours(f['hours_left'])} h of training at the speeds measured")
    return s
