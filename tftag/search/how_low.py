"""``--mode=how_low``: how low can *your* data go? A cost-aware search for the accuracy/cost
Pareto front of input resolution × model × width × storage codec, and its cheapest answer.

The paper answers "how low can the input resolution go" with a full grid of trainings; this
mode answers it for a user's dataset at a fraction of that cost:

1. **Space** (:class:`Candidate`): every resolution of the flags' grid (``--sr`` × ``--n_mels``
   × ``--hop_factors`` × ``--compressions``, or ``--resolutions``) that the dataset holds (values
   it does not hold are left out and logged; none left is an error), × each model of
   ``--models`` (with its ``--sweep_model`` settings) × ``--widths`` (default: the model's own
   width) × ``--mel_dtypes`` storage codecs (default: the dataset's own; any other is a
   transcoded copy of the dataset in ``<run_dir>/datasets/<codec>/``, :mod:`tftag.storage.transcode`).
2. **Cost** per candidate (:data:`COSTS`, ``--cost``): GMACs per clip (layer shapes, as
   :func:`tftag.study.sweep.costs`), stored bytes per clip (codec × resolution) or measured latency per
   clip (batch 1, median of ``--latency_runs``); all are recorded, measured once
   (``costs.json``).
3. **Search** (:mod:`tftag.search.tuner`): keras-tuner, multi-fidelity (``--oracle``: successive
   halving with Pareto promotion, or keras-tuner's Hyperband; ``--epochs`` is the top fidelity,
   ``--hyperband_factor`` the halving factor); each trial trains with :func:`tftag.train.train`
   in ``trials/<id>/``; the objective is validation ROC-AUC. A rerun resumes (keras-tuner's
   state in ``tuner/``, finished trials are not run again, an interrupted one resumes from its
   checkpoint).
4. **Front**: each evaluated candidate at the highest fidelity it reached; on the front when no
   other candidate is both cheaper (or as cheap) and better (:mod:`tftag.study.pareto`).
5. **Answer**: the cheapest front point within ``--max_drop`` ROC-AUC points of the best found,
   retrained to convergence (``--epochs``, ``--patience``) ``--repeats`` times beside the best
   one, both scored on the test split, the drop tested (independent t-test,
   :func:`tftag.study.stats.independent_t`); the chosen model is exported (SavedModel, ``--tflite``).

**A fold** (``--folds=K --fold=k``): the search trains and validates every trial on fold k's
training and validation parts (:func:`search_fold`), exactly as the cross-validated sweep's run
of the same configuration on that fold (:mod:`tftag.study.crossval`: early stopping on the validation
loss, patience in passes), and the answer is retrained and tested on the fold's test part; the
fold's clip ids are in ``fold.json``.

Run directory: ``front.csv`` (one row per evaluated candidate: :data:`FRONT_FIELDS`),
``front.md``, ``front.png`` (ROC-AUC vs cost, front drawn), ``chosen.flags`` (``--mode=train``
of the chosen configuration: ``python -m tftag.main --flagfile=<run_dir>/chosen.flags``),
``how_low.json`` (space, search settings, costs, answer), ``costs.json``, ``trials/``,
``retrain/`` (the sweep runs of the answer), ``tuner/``, ``tb/how_low`` (TensorBoard hparams of
every trial), and the entry point's ``summary.json`` with ``export_path``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging

from tftag.runs import runfiles
from tftag.study import pareto
from tftag.features import MelConfig
from tftag.storage.folds import FoldParts
from tftag.models import ModelConfig
from tftag.registry import Registry

FRONT_FIELDS = ("candidate", "resolution", "sr", "n_mels", "hop_factor", "compression", "model",
                "preset", "width", "mel_dtype", "val_roc_auc", "cost", "on_front", "epochs",
                "epochs_done", "trial_id", "trials", "gmacs", "storage_bytes", "latency_ms",
                "train_seconds")
SEARCH_JSON = "how_low.json"
COSTS_JSON = "costs.json"
EXPORT_JSON = "export.json"
FOLD_JSON = "fold.json"


@dataclasses.dataclass(frozen=True)
class Cost:
    """One cost axis of the front.

    Attributes:
      name: registry name (``--cost``).
      column: the key of the figure in a candidate's costs.
      label: axis label.
      note: one line for ``--helpfull``.
    """

    name: str
    column: str
    label: str
    note: str


COSTS: Registry[Cost] = Registry("cost", lambda: None)
for _cost in (
    Cost("gmacs", "gmacs", "GMAC per clip", "multiply-accumulates of one clip (layer shapes)"),
    Cost("bytes", "storage_bytes", "stored bytes per clip", "the stored mel of one clip "
         "(codec × resolution)"),
    Cost("latency", "latency_ms", "ms per clip (batch 1)", "measured inference time of one clip "
         "(median of --latency_runs)"),
):
    COSTS.register(_cost.name)(_cost)


@dataclasses.dataclass(frozen=True)
class OracleKind:
    """One search strategy.

    Attributes:
      name: registry name (``--oracle``).
      note: one line for ``--helpfull``.
      build: (candidate keys, {key: cost}, top epochs, SearchConfig, seed) -> a keras-tuner
        oracle (:mod:`tftag.search.tuner`, imported when called).
    """

    name: str
    note: str
    build: Callable[..., Any]


def _pareto_oracle(keys, costs, max_epochs, config, seed):
    from tftag.search import tuner

    return tuner.ParetoHalvingOracle(keys, costs, max_epochs, config.hyperband_factor, seed)


def _hyperband_oracle(keys, costs, max_epochs, config, seed):
    from tftag.search import tuner

    return tuner.hyperband_oracle(keys, max_epochs, config.hyperband_factor,
                                   config.hyperband_iterations, seed)


ORACLES: Registry[OracleKind] = Registry("oracle", lambda: None)
for _oracle in (
    OracleKind("pareto", "successive halving over every candidate, promoted by Pareto rank of "
               "(cost, partial ROC-AUC)", _pareto_oracle),
    OracleKind("hyperband", "keras-tuner's Hyperband (random candidates, promoted by ROC-AUC)",
               _hyperband_oracle),
):
    ORACLES.register(_oracle.name)(_oracle)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The settings of the search (the rest is the Experiment's).

    Attributes:
      cost: the front's cost axis (:data:`COSTS`).
      max_drop: the answer is the cheapest front point within this many ROC-AUC points
        (percent) of the best found.
      oracle: the search strategy (:data:`ORACLES`).
      hyperband_factor: successive halving keeps 1/factor of a rung (>= 2).
      hyperband_iterations: Hyperband iterations (``hyperband`` only).
      widths: model widths to search; empty = each model's own width.
      mel_dtypes: storage codecs to search; empty = the dataset's own.
      latency_runs: timed runs per candidate for the latency (``cost="latency"``).
    """

    cost: str = "gmacs"
    max_drop: float = 1.0
    oracle: str = "pareto"
    hyperband_factor: int = 3
    hyperband_iterations: int = 1
    widths: tuple[float, ...] = ()
    mel_dtypes: tuple[str, ...] = ()
    latency_runs: int = 5

    def __post_init__(self):
        from tftag.storage import codecs

        COSTS.check(self.cost, "cost")
        ORACLES.check(self.oracle, "oracle")
        codecs.REGISTRY.check_all(self.mel_dtypes, "mel_dtypes")
        if not (self.max_drop >= 0 and math.isfinite(self.max_drop)):
            raise ValueError(f"max_drop must be a number of ROC-AUC points >= 0, got "
                             f"{self.max_drop}")
        if self.hyperband_factor < 2:
            raise ValueError(f"hyperband_factor must be >= 2, got {self.hyperband_factor}")
        if self.hyperband_iterations < 1:
            raise ValueError(f"hyperband_iterations must be >= 1, got "
                             f"{self.hyperband_iterations}")
        bad = [w for w in self.widths if not (w > 0 and math.isfinite(w))]
        if bad:
            raise ValueError(f"widths must be > 0, got {bad}")
        if len(set(self.widths)) != len(self.widths) or len(set(self.mel_dtypes)) != len(
                self.mel_dtypes):
            raise ValueError("widths and mel_dtypes must not repeat a value")
        if self.cost == "latency" and self.latency_runs < 1:
            raise ValueError("cost=latency measures latency: latency_runs must be >= 1")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One point of the search space.

    Attributes:
      mel_config: the input resolution.
      model_config: the model (its width included).
      mel_dtype: the storage codec of the data it reads.
      train_config: its training settings (``epochs`` is the trial's fidelity).
    """

    mel_config: MelConfig
    model_config: ModelConfig
    mel_dtype: str
    train_config: Any  # tftag.experiment.TrainConfig

    @property
    def key(self) -> str:
        """Its name: ``<model>-<preset>-w<width>-<resolution>-<codec>``."""
        m = self.model_config
        return f"{m.name}-{m.preset}-w{m.width:g}-{self.mel_config.name}-{self.mel_dtype}"

    def fields(self) -> dict:
        """Its coordinates, as the columns of ``front.csv``."""
        c, m = self.mel_config, self.model_config
        return {"candidate": self.key, "resolution": c.name, "sr": c.sr, "n_mels": c.n_mels,
                "hop_factor": c.hop_factor, "compression": c.compression, "model": m.name,
                "preset": m.preset, "width": m.width, "mel_dtype": self.mel_dtype}


# ----------------------------------------------------------------------------- the space


def candidates(experiment, info, search: SearchConfig) -> tuple[Candidate, ...]:
    """The search space on a dataset: the experiment's resolutions the dataset holds × models
    (``experiment.sweep_plan()``) × widths × codecs, in that order.

    Raises:
      ValueError: the dataset holds none of the resolutions.
    """
    held, left_out = [], []
    for c in experiment.mel_configs:
        try:
            info.check(c)
            held.append(c)
        except ValueError:
            left_out.append(c.name)
    if left_out:
        logging.info("how_low: %d resolutions not stored in %s left out: %s", len(left_out),
                     info.path, ", ".join(left_out[:8]) + (", ..." if len(left_out) > 8 else ""))
    if not held:
        raise ValueError(f"--sr/--n_mels/--resolutions: the dataset {info.path} holds none of "
                         f"the {len(experiment.mel_configs)} requested resolutions; it holds "
                         f"{', '.join(info.base_names)} (any hop factor and compression of "
                         f"those) cropped to {info.duration} s")
    codecs = search.mel_dtypes or (info.codec.name,)
    out = []
    for model, mels, train_config in experiment.sweep_plan():
        for width in search.widths or (model.width,):
            m = dataclasses.replace(model, width=width)
            out += [Candidate(c, m, codec, train_config) for c in mels if c in held
                    for codec in codecs]
    if not out:
        raise ValueError("--sweep_model: no model is left with a resolution the dataset holds")
    return tuple(out)


def dataset_dirs(dataset_dir: str, info, mel_dtypes: Sequence[str], run_dir: str) -> dict:
    """{codec: dataset directory}: the dataset itself for its own codec, a transcoded copy in
    ``<run_dir>/datasets/<codec>`` for any other (made once; a rerun finds it)."""
    from tftag.storage import transcode

    dirs = {}
    for codec in mel_dtypes:
        if codec == info.codec.name:
            dirs[codec] = dataset_dir
            continue
        target = os.path.join(run_dir, "datasets", codec)
        if not os.path.exists(os.path.join(target, "dataset.json")):
            logging.info("how_low: storing %s again as %s in %s", dataset_dir, codec, target)
            transcode.transcode_dataset(dataset_dir, target, codec)
        dirs[codec] = target
    return dirs


def measure_costs(cands: Sequence[Candidate], infos: Mapping[str, Any], search: SearchConfig,
                  path: str) -> dict[str, dict]:
    """Each candidate's cost figures {"gmacs", "storage_bytes"[, "latency_ms"]}, measured once:
    read from ``path`` (``costs.json``) when there, the missing ones measured and added. The
    latency is timed once per (model, resolution): candidates that differ only in their storage
    codec run the same model."""
    import keras

    from tftag import models, profile
    from tftag.study import sweep

    known = runfiles.read_json(path) if os.path.exists(path) else {}
    latency = search.cost == "latency"
    timed = {(c.model_config, c.mel_config): known[c.key]["latency_ms"] for c in cands
             if "latency_ms" in known.get(c.key, {})}  # the codec does not change the model
    for c in cands:
        row = known.get(c.key)
        if row is not None and (not latency or "latency_ms" in row):
            continue
        info = infos[c.mel_dtype]
        row = sweep.costs(sweep.SweepItem(c.model_config, c.mel_config, 0), info)
        if latency:
            model = (c.model_config, c.mel_config)
            if model not in timed:
                full_clip = models.build(dataclasses.replace(c.model_config, patch_seconds=None),
                                         c.mel_config, info.n_tags)
                timed[model] = round(profile.latency_ms(full_clip, 1, search.latency_runs), 4)
            row["latency_ms"] = timed[model]
        known[c.key] = row
        keras.backend.clear_session()
    runfiles.write_json_atomic(path, known)
    return {c.key: known[c.key] for c in cands}


# ----------------------------------------------------------------------------- the front


def front_rows(cands: Sequence[Candidate], costs: Mapping[str, dict], trials: Sequence[dict],
               results: Mapping[str, dict], cost: str) -> list[dict]:
    """One row per evaluated candidate (its highest-fidelity finished trial), sorted by cost then
    key, with ``on_front``.

    Args:
      cands: the space.
      costs: {key: cost figures} (:func:`measure_costs`).
      trials: finished trials {"trial_id", "candidate", "epochs", "score"}
        (:func:`tftag.search.tuner.finished_trials`).
      results: {trial_id: the trial's result.json} (may lack some).
      cost: the cost axis (:data:`COSTS`).
    """
    column = COSTS.get(cost).column
    by_key = {c.key: c for c in cands}
    top: dict[str, dict] = {}
    count: dict[str, int] = {}
    for t in trials:
        if t["candidate"] not in by_key:
            continue
        count[t["candidate"]] = count.get(t["candidate"], 0) + 1
        best = top.get(t["candidate"])
        if best is None or (t["epochs"], t["trial_id"]) > (best["epochs"], best["trial_id"]):
            top[t["candidate"]] = t
    rows = []
    for key, t in top.items():
        figures = costs[key]
        result = results.get(t["trial_id"], {})
        rows.append({**by_key[key].fields(), "val_roc_auc": t["score"], "cost": figures[column],
                     "epochs": t["epochs"], "epochs_done": result.get("epochs_done"),
                     "trial_id": t["trial_id"], "trials": count[key],
                     "gmacs": figures["gmacs"], "storage_bytes": figures["storage_bytes"],
                     "latency_ms": figures.get("latency_ms"),
                     "train_seconds": result.get("train_seconds")})
    flags = pareto.on_front([(r["cost"], r["val_roc_auc"]) for r in rows])
    for r, f in zip(rows, flags):
        r["on_front"] = f
    return sorted(rows, key=lambda r: (r["cost"], r["candidate"]))


def write_front_csv(rows: Sequence[dict], path: str) -> None:
    """``front.csv``: :data:`FRONT_FIELDS`, ``on_front`` as ``true``/``false``."""
    runfiles.write_csv_atomic(path, [dict(r, on_front=str(bool(r["on_front"])).lower())
                                     for r in rows], FRONT_FIELDS)


def read_front_csv(path: str) -> list[dict]:
    """The rows of a ``front.csv`` with numbers and ``on_front`` parsed (empty cells: None)."""
    import csv

    numbers = {"sr": int, "n_mels": int, "hop_factor": int, "width": float, "val_roc_auc": float,
               "cost": float, "epochs": int, "epochs_done": int, "trials": int, "gmacs": float,
               "storage_bytes": int, "latency_ms": float, "train_seconds": float}
    with open(path, encoding="utf-8", newline="") as f:
        return [{k: (None if v == "" else v == "true" if k == "on_front"
                     else numbers[k](v) if k in numbers else v) for k, v in row.items()}
                for row in csv.DictReader(f)]


def answer(rows: Sequence[dict], max_drop: float) -> tuple[int, int]:
    """(index of the best row, index of the cheapest row within ``max_drop`` ROC-AUC points of
    it) — the chosen row is on the front."""
    points = [(r["cost"], r["val_roc_auc"]) for r in rows]
    best = pareto.cheapest_within(points, 0.0)
    return best, pareto.cheapest_within(points, max_drop / 100.0)


def markdown(rows: Sequence[dict], cost: str, best: int, chosen: int, max_drop: float,
             retrained: Mapping[str, dict] | None = None, p_value: float | None = None) -> str:
    """``front.md``: the answer, then every evaluated candidate by cost (front rows marked)."""
    spec = COSTS.get(cost)
    lines = [f"# How low can this data go? ({len(rows)} candidates evaluated, cost: {spec.label})",
             "",
             f"- best found: **{rows[best]['candidate']}**, validation ROC-AUC "
             f"{100 * rows[best]['val_roc_auc']:.2f} %, cost {rows[best]['cost']:.4g}",
             f"- chosen (cheapest front point within {max_drop:g} points of the best): "
             f"**{rows[chosen]['candidate']}**, validation ROC-AUC "
             f"{100 * rows[chosen]['val_roc_auc']:.2f} %, cost {rows[chosen]['cost']:.4g} "
             f"({rows[chosen]['cost'] / rows[best]['cost']:.1%} of the best's)"]
    for name, r in (retrained or {}).items():
        lines.append(f"- retrained {name} ({r['repeats']} runs): test ROC-AUC "
                     f"{100 * r['test_roc_auc_mean']:.2f} ± {100 * r['test_roc_auc_std']:.2f} %")
    if retrained and len(retrained) > 1:
        lines.append("- t-test, chosen vs best (test ROC-AUC): p = "
                     + (f"{p_value:.3f}" if p_value is not None else "– (needs --repeats >= 2)"))
    lines += ["", f"| front | candidate | val ROC-AUC % | {spec.label} | GMAC | KiB/clip | "
                  "epochs | trials |", "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        mark = "**chosen**" if i == chosen else "best" if i == best else (
            "yes" if r["on_front"] else "")
        lines.append(f"| {mark} | {r['candidate']} | {100 * r['val_roc_auc']:.2f} | "
                     f"{r['cost']:.4g} | {r['gmacs']:.4g} | {r['storage_bytes'] / 1024:.1f} | "
                     f"{r['epochs']} | {r['trials']} |")
    return "\n".join(lines)


def plot(rows: Sequence[dict], cost: str, best: int, chosen: int, max_drop: float,
         path: str) -> str:
    """``front.png``: validation ROC-AUC vs cost of every evaluated candidate, the front as a
    staircase, the best and the chosen point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for model in sorted({r["model"] for r in rows}):
        rs = [r for r in rows if r["model"] == model]
        ax.scatter([r["cost"] for r in rs], [100 * r["val_roc_auc"] for r in rs], s=18,
                   alpha=0.6, label=f"{model} (all evaluated)")
    front = sorted((r for r in rows if r["on_front"]), key=lambda r: r["cost"])
    ax.step([r["cost"] for r in front], [100 * r["val_roc_auc"] for r in front], where="post",
            color="black", lw=1.2, label="Pareto front")
    for r in front:
        ax.annotate(f"{r['n_mels']}×{r['hop_factor']} w{r['width']:g}"
                    + (f" {r['mel_dtype']}" if len({x['mel_dtype'] for x in rows}) > 1 else ""),
                    (r["cost"], 100 * r["val_roc_auc"]), fontsize=7, xytext=(3, -9),
                    textcoords="offset points")
    ax.axhline(100 * rows[best]["val_roc_auc"] - max_drop, color="grey", ls=":", lw=1,
               label=f"best − {max_drop:g} points")
    ax.scatter([rows[best]["cost"]], [100 * rows[best]["val_roc_auc"]], marker="D", s=60,
               facecolors="none", edgecolors="black", label="best")
    ax.scatter([rows[chosen]["cost"]], [100 * rows[chosen]["val_roc_auc"]], marker="*", s=160,
               color="red", label="chosen")
    return save_cost_plot(fig, ax, COSTS.get(cost).label, "validation ROC-AUC % (fidelity "
                          "reached)", "How low can this data go? (labels: bands × hop, width)",
                          path)


def save_cost_plot(fig, ax, cost_label: str, y_label: str, title: str, path: str) -> str:
    """Finishes a ROC-AUC-vs-cost figure (log cost axis, grid, legend) and saves it as a PNG."""
    ax.set_xscale("log")
    ax.set_xlabel(cost_label + " (log)")
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return runfiles.save_figure_atomic(fig, path, dpi=100)


def tensorboard_hparams(rows_by_trial: Sequence[dict], logdir: str) -> int:
    """TensorBoard hparams of every finished trial into ``<logdir>/<trial_id>`` (once; a rerun
    adds only new trials); returns how many were written."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    names = ("resolution", "sr", "n_mels", "hop_factor", "compression", "model", "width",
             "mel_dtype", "epochs")
    written = 0
    if not os.path.isdir(logdir):
        with tf.summary.create_file_writer(logdir).as_default():
            hp.hparams_config(hparams=[hp.HParam(n) for n in names],
                              metrics=[hp.Metric("val_roc_auc"), hp.Metric("cost"),
                                       hp.Metric("gmacs"), hp.Metric("storage_bytes")])
    for r in rows_by_trial:
        directory = os.path.join(logdir, r["trial_id"])
        if os.path.isdir(directory):
            continue
        writer = tf.summary.create_file_writer(directory)
        with writer.as_default():
            hp.hparams({n: r[n] for n in names}, trial_id=r["trial_id"])
            for metric in ("val_roc_auc", "cost", "gmacs", "storage_bytes"):
                tf.summary.scalar(metric, float(r[metric]), step=r["epochs"])
        writer.close()
        written += 1
    return written


# ----------------------------------------------------------------------------- the answer


def _retrain_dir(run_dir: str, cand: Candidate) -> str:
    """The sweep directory of a candidate's retrained runs: ``<run_dir>/retrain/<codec>``."""
    return os.path.join(run_dir, "retrain", cand.mel_dtype)


def _retrain_run_dir(run_dir: str, cand: Candidate, seed: int,
                     fold: FoldParts | None = None) -> str:
    """Where one retrained run of ``cand`` trains: its sweep run directory
    (:func:`tftag.study.sweep.item_run_dir`), or on a fold its cross-validation run directory
    ``<run_dir>/retrain/<codec>/runs/<fold item key>`` (:mod:`tftag.study.crossval`)."""
    from tftag.study import crossval, sweep

    item = sweep.SweepItem(cand.model_config, cand.mel_config, seed, cand.train_config)
    sweep_dir = _retrain_dir(run_dir, cand)
    if fold is None:
        return sweep.item_run_dir(sweep_dir, item)
    return os.path.join(sweep_dir, "runs", crossval.FoldItem(item, fold.fold).key)


def retrain(cand: Candidate, dataset_dir: str, repeats: int, seed: int, run_dir: str,
            trial_dir: str | None, fold: FoldParts | None = None) -> list[dict]:
    """Trains ``cand`` to convergence ``repeats`` times (seeds seed, seed + 1, ...) under
    ``<run_dir>/retrain/<codec>/`` (finished runs are skipped) and scores each on the test
    split (:func:`tftag.study.sweep.run_sweep`), or with ``fold`` (:class:`tftag.storage.folds.FoldParts`)
    on the fold's test clips as the cross-validated sweep does (:func:`tftag.study.crossval.run_items`,
    records in ``results/``). The first seed starts from a copy of the candidate's top trial
    (``trial_dir``, same seed and settings: its training continues where the trial stopped, as
    an uninterrupted run would)."""

    from tftag.search import tuner
    from tftag.study import crossval, sweep

    items = [sweep.SweepItem(cand.model_config, cand.mel_config, seed + r, cand.train_config)
             for r in range(repeats)]
    sweep_dir = _retrain_dir(run_dir, cand)
    first = _retrain_run_dir(run_dir, cand, seed, fold)
    if trial_dir and os.path.isdir(trial_dir) and not os.path.exists(first):
        os.makedirs(os.path.dirname(first), exist_ok=True)
        tuner.copy_run_dir(trial_dir, first)
    if fold is None:
        return sweep.run_sweep(items, dataset_dir, cand.train_config, sweep_dir)
    return crossval.run_items([crossval.FoldItem(i, fold.fold) for i in items],
                              {fold.fold: fold}, dataset_dir, cand.train_config,
                              os.path.join(sweep_dir, "runs"), os.path.join(sweep_dir, "results"))


def retrain_summary(results: Sequence[dict]) -> dict:
    """Mean ± std of the test and validation ROC-AUC of a candidate's retrained runs."""
    from statistics import mean, stdev

    test = [r["test_roc_auc"] for r in results]
    return {"repeats": len(results), "test_roc_auc_mean": mean(test),
            "test_roc_auc_std": stdev(test) if len(test) > 1 else 0.0,
            "test_pr_auc_mean": mean(r["test_pr_auc"] for r in results),
            "valid_roc_auc_mean": mean(r["valid_roc_auc"] for r in results),
            "test_roc_auc": test, "seeds": [r["seed"] for r in results]}


def chosen_flagfile(experiment, cand: Candidate, dataset_dir: str, row: dict) -> str:
    """``chosen.flags``: ``--mode=train`` of the chosen candidate (run dir
    ``<run_dir>/chosen``), with the search's training settings; on a fold (``--folds``), a
    cross-validated ``--mode=sweep`` of it on that fold instead (results in
    ``<run_dir>/chosen/results``)."""
    m, c, t = cand.model_config, cand.mel_config, cand.train_config
    folds = experiment.folds
    optional = {"dropout": m.dropout, "steps_per_epoch": t.steps_per_epoch,
                "valid_patches": t.valid_patches}
    lines = [
        f"# how_low {experiment.run_dir}: the cheapest Pareto-front point within the allowed drop "
        f"of the best (validation ROC-AUC {100 * row['val_roc_auc']:.2f} %, cost "
        f"{row['cost']:.4g})",
        "--mode=train" if folds is None else "--mode=sweep",
        f"--run_dir={experiment.path('chosen')}", f"--dataset_dir={dataset_dir}",
        f"--mel_dtype={cand.mel_dtype}", f"--model={m.name}", f"--preset={m.preset}",
        f"--width={m.width:g}", f"--resolutions={c.name}", f"--duration={c.duration:g}",
        f"--patch_seconds={m.patch_seconds or 0:g}", f"--seed={t.seed}",
        f"--batch_size={t.batch_size}", f"--epochs={t.epochs}",
        f"--learning_rate={t.learning_rate:g}", f"--patience={t.patience}",
        f"--loss={t.loss}", f"--export_dir={experiment.export.export_dir}",
    ] + [f"--{k}={v:g}" for k, v in optional.items() if v is not None]
    if folds is not None:
        lines += [f"--folds={folds.folds}", f"--fold={folds.fold}", f"--fold_seed={folds.seed}",
                  "--repeats=1"]
        if t.test_patches is not None:  # the sweep's own setting; no top-level flag has it
            lines.append(f"--sweep_model={m.name}:test_patches={t.test_patches}")
    if experiment.export.tflite:
        lines.append(f"--tflite={','.join(experiment.export.tflite)}")
    return "\n".join(lines) + "\n"


def _export(experiment, cand: Candidate, runs: Sequence[dict], dataset_dir: str,
            fold: FoldParts | None = None) -> str | None:
    """Exports the chosen candidate's run with the best validation ROC-AUC (once: a rerun finds
    ``export.json``)."""
    from tftag.delivery import export

    if not experiment.export.enabled:
        return None
    path = experiment.path(EXPORT_JSON)
    done = runfiles.read_json(path) if os.path.exists(path) else {}
    if done.get("candidate") == cand.key and os.path.isdir(done.get("export_path", "")):
        return done["export_path"]
    run = max(runs, key=lambda r: (r["valid_roc_auc"], -r["seed"]))
    weights = os.path.join(_retrain_run_dir(experiment.run_dir, cand, run["seed"], fold),
                           "best.weights.h5")
    exported = export.export_weights(experiment, cand.mel_config, cand.model_config, weights,
                                     dataset_dir, {"test_roc_auc": run["test_roc_auc"],
                                                   "test_pr_auc": run["test_pr_auc"]})
    runfiles.write_json_atomic(path, {"candidate": cand.key, "seed": run["seed"],
                                      "export_path": exported})
    return exported


def search_fold(experiment, dataset_dir: str) -> FoldParts | None:
    """The fold searched (``--folds=K --fold=k``): :class:`tftag.storage.folds.FoldParts`, the same
    parts as the cross-validated sweep's fold k (:func:`tftag.study.crossval.dataset_folds`). None
    without ``--folds``."""
    from tftag.study import crossval

    if experiment.folds is None:
        return None
    if experiment.folds.fold is None:
        raise ValueError(f"--mode=how_low searches one fold: add --fold=k (0 .. "
                         f"{experiment.folds.folds - 1}) to --folds={experiment.folds.folds}")
    _, parts = crossval.dataset_folds(dataset_dir, experiment)
    return parts[experiment.folds.fold]


def search_compute(rows: Sequence[dict], train_clips: int) -> dict:
    """What the search's trainings cost: wall seconds of training and validation (each
    candidate's chain of trials is one resumed training: its top trial's history holds every
    epoch) and clip-GMACs (epochs × training clips × GMACs per clip)."""
    return {"train_seconds": round(sum(r["train_seconds"] or 0.0 for r in rows), 2),
            "clip_gmacs": round(sum((r["epochs_done"] or 0) * train_clips * r["gmacs"]
                                    for r in rows), 3)}


def _check_same_search(path: str, record: dict) -> None:
    if not os.path.exists(path):
        return
    old = runfiles.read_json(path)
    for key in ("candidates", "oracle", "hyperband_factor", "hyperband_iterations", "max_epochs",
                "fold"):
        if old.get(key) != record[key]:
            raise ValueError(f"--run_dir: {os.path.dirname(path)} holds a how_low search with "
                             f"other {key} than these flags: rerun it with its own flags "
                             f"(flags.txt) or use a new --run_dir")


def _trial_results(tuner, trials: Sequence[dict]) -> dict[str, dict]:
    """{trial_id: its result.json} of the finished trials (an error if none finished)."""
    from tftag.search import tuner as kt_tuner

    if not trials:
        failed = [t for t in tuner.oracle.trials.values() if t.status == "FAILED"]
        last = ((failed[0].message or "").strip().splitlines() or ["unknown"])[-1] if failed \
            else "no trial ran"
        raise RuntimeError(f"how_low: no trial finished ({len(failed)} failed); the first "
                           f"error's last line: {last}")
    results = {}
    for t in trials:
        path = os.path.join(tuner.trial_dir(t["trial_id"]), kt_tuner.RESULT_JSON)
        if os.path.exists(path):
            results[t["trial_id"]] = runfiles.read_json(path)
    return results


def _trial_rows(trials: Sequence[dict], by_key: Mapping[str, Candidate],
                costs: Mapping[str, dict], column: str) -> list[dict]:
    """One row per finished trial (TensorBoard hparams)."""
    return [{**by_key[t["candidate"]].fields(), "trial_id": t["trial_id"], "epochs": t["epochs"],
             "val_roc_auc": t["score"], "cost": costs[t["candidate"]][column],
             "gmacs": costs[t["candidate"]]["gmacs"],
             "storage_bytes": costs[t["candidate"]]["storage_bytes"]}
            for t in trials if t["candidate"] in by_key]


def _retrain_answer(experiment, rows: Sequence[dict], best: int, chosen: int,
                    by_key: Mapping[str, Candidate], dirs: Mapping[str, str],
                    trial_dir: Callable[[str], str], fold: FoldParts | None = None
                    ) -> tuple[dict, dict, float | None]:
    """The chosen and the best candidate retrained (``experiment.repeats`` seeds each; once if
    they are the same): ({name: runs}, {name: summary}, p of the t-test or None)."""
    from tftag.study import stats

    runs: dict[str, list[dict]] = {}
    for name, row in (("chosen", rows[chosen]), ("best", rows[best])):
        if name == "best" and best == chosen:
            runs["best"] = runs["chosen"]
            continue
        cand = by_key[row["candidate"]]
        runs[name] = retrain(cand, dirs[cand.mel_dtype], experiment.repeats,
                             experiment.train.seed, experiment.run_dir,
                             trial_dir(row["trial_id"]), fold)
    summaries = {name: retrain_summary(r) for name, r in runs.items()}
    p_value = None if best == chosen else stats.independent_t(
        summaries["chosen"]["test_roc_auc"], summaries["best"]["test_roc_auc"])
    return runs, summaries, p_value


def run(experiment, search: SearchConfig) -> dict:
    """``--mode=how_low``: the search, its front and its answer (see the module docstring).

    As a keras-tuner worker (:func:`tftag.search.tuner.role`) it only runs trials and returns a
    short summary; the chief (or the one process) writes every file.

    Returns:
      The summary: counts, the best and the chosen candidate, the t-test, the files and
      ``export_path``.
    """
    from tftag.extraction import extract
    from tftag.storage import data
    from tftag.search import tuner as kt_tuner

    role = kt_tuner.role()
    if role != "alone" and not experiment.data.dataset_dir:
        raise ValueError("a distributed how_low search needs --dataset_dir (a finished dataset: "
                         "the chief and the workers must not extract into one run directory)")
    dataset_dir = experiment.data.dataset_dir or extract.ensure_dataset(experiment)
    try:
        info = data.load_dataset_info(dataset_dir)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"--dataset_dir: {e}") from None
    cands = candidates(experiment, info, search)
    dirs = dataset_dirs(dataset_dir, info, sorted({c.mel_dtype for c in cands}),
                        experiment.run_dir)
    fold = search_fold(experiment, dataset_dir)
    specs = {c.key: kt_tuner.TrialSpec(dirs[c.mel_dtype], c.mel_config, c.model_config,
                                        c.train_config, fold) for c in cands}
    keys = [c.key for c in cands]
    if role == "worker":
        tuner = kt_tuner.search(kt_tuner.worker_oracle(keys), specs, experiment.run_dir)
        return {"role": role, "tuner_id": tuner.tuner_id, "candidates": len(keys)}
    max_epochs = experiment.train.epochs
    record = {"candidates": keys, "oracle": search.oracle,
              "hyperband_factor": search.hyperband_factor,
              "hyperband_iterations": search.hyperband_iterations, "max_epochs": max_epochs,
              "search": dataclasses.asdict(search), "dataset_dir": dataset_dir,
              "dataset_dirs": dirs, "fold": None if fold is None else {
                  "fold": fold.fold, "folds": fold.folds, "seed": experiment.folds.seed,
                  **{f"{p}_clips": len(fold.part(p)) for p in ("train", "valid", "test")}}}
    _check_same_search(experiment.path(SEARCH_JSON), record)
    runfiles.write_json_atomic(experiment.path(SEARCH_JSON), record)
    if fold is not None:  # the clip ids of its parts, as each cross-validated run records them
        runfiles.write_json_atomic(experiment.path(FOLD_JSON), fold.describe())
    infos = {codec: data.load_dataset_info(d) for codec, d in dirs.items()}
    costs = measure_costs(cands, infos, search, experiment.path(COSTS_JSON))
    column = COSTS.get(search.cost).column
    oracle = ORACLES.get(search.oracle).build(  # keras-tuner takes a seed of 0 for none: + 1
        keys, {k: costs[k][column] for k in keys}, max_epochs, search, experiment.train.seed + 1)
    logging.info("how_low: %d candidates, oracle %s, up to %d epochs each", len(keys),
                 search.oracle, max_epochs)
    t0 = time.monotonic()
    tuner = kt_tuner.search(oracle, specs, experiment.run_dir)
    search_seconds = time.monotonic() - t0
    trials = kt_tuner.finished_trials(tuner.oracle)
    results = _trial_results(tuner, trials)
    rows = front_rows(cands, costs, trials, results, search.cost)
    best, chosen = answer(rows, search.max_drop)
    by_key = {c.key: c for c in cands}
    runs, retrained, p_value = _retrain_answer(experiment, rows, best, chosen, by_key, dirs,
                                               tuner.trial_dir, fold)
    chosen_cand = by_key[rows[chosen]["candidate"]]
    export_path = _export(experiment, chosen_cand, runs["chosen"], dirs[chosen_cand.mel_dtype],
                          fold)
    write_front_csv(rows, experiment.path("front.csv"))
    table = markdown(rows, search.cost, best, chosen, search.max_drop,
                     {"chosen": retrained["chosen"]} if best == chosen else retrained, p_value)
    runfiles.write_text_atomic(experiment.path("front.md"), table)
    png = plot(rows, search.cost, best, chosen, search.max_drop, experiment.path("front.png"))
    flags_path = experiment.path("chosen.flags")
    runfiles.write_text_atomic(flags_path, chosen_flagfile(
        experiment, chosen_cand, dirs[chosen_cand.mel_dtype], rows[chosen]))
    tensorboard_hparams(_trial_rows(trials, by_key, costs, column),
                        experiment.path("tb", "how_low"))
    train_clips = (len(fold.train) if fold is not None
                   else infos[chosen_cand.mel_dtype].splits.get("train", 0))
    compute = search_compute(rows, train_clips)
    outcome = {"chosen": dict(rows[chosen], retrained=retrained["chosen"]),
               "best": dict(rows[best], retrained=retrained["best"]),
               "p_value": p_value, "drop_points": round(
                   100 * (retrained["best"]["test_roc_auc_mean"]
                          - retrained["chosen"]["test_roc_auc_mean"]), 4),
               "search_compute": dict(compute, wall_seconds_this_call=round(search_seconds, 2)),
               "export_path": export_path}
    runfiles.write_json_atomic(experiment.path(SEARCH_JSON), dict(record, costs=costs, **outcome))
    print(table)
    print(f"front: {experiment.path('front.csv')}; plot: {png}; retrain the choice: python -m "
          f"tftag.main --flagfile={flags_path}; exported: {export_path}")
    return {"candidates": len(keys), "evaluated": len(rows), "trials": len(trials),
            "front_size": sum(r["on_front"] for r in rows), "cost": search.cost,
            "max_drop": search.max_drop, "best": rows[best]["candidate"],
            "chosen": rows[chosen]["candidate"], "p_value": p_value,
            "drop_points": outcome["drop_points"],
            "chosen_test_roc_auc": retrained["chosen"]["test_roc_auc_mean"],
            "best_test_roc_auc": retrained["best"]["test_roc_auc_mean"],
            "search_compute": outcome["search_compute"], "front_csv": experiment.path("front.csv"),
            "front_md": experiment.path("front.md"), "plot": png, "chosen_flags": flags_path,
            "dataset_dir": dataset_dir, "export_path": export_path}
