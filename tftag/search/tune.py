"""Hyper-parameter search with keras-tuner at one resolution: width, learning rate, dropout.

The objective is Keras' multi-label ROC-AUC on patch-cropped validation batches (a fast proxy
of :mod:`tftag.evaluate`'s clip-level metric). Trials are logged to TensorBoard; a rerun
continues the same search (keras-tuner's own trial state in ``<out_dir>/tuner``).
"""

from __future__ import annotations

import dataclasses
import os

from tftag.runs import runfiles
from tftag.storage import data, verify
from tftag.storage.dataset_dir import load_dataset_info
from tftag.features import MelConfig
from tftag.models import ModelConfig, build
from tftag.train import TrainConfig

WIDTHS = (0.0625, 0.125, 0.25)


def _raise_if_corrupt(dataset_dir: str, mel_config: MelConfig, error: Exception | None) -> None:
    """Raises a :class:`~tftag.storage.verify.CorruptDatasetError` from ``error`` if a shard of the
    resolution's base is corrupt."""
    problems = verify.bad_shards(dataset_dir, mel_config, None)
    if problems:
        raise verify.CorruptDatasetError(dataset_dir, problems) from error


def tune(dataset_dir: str, mel_config: MelConfig, model_config: ModelConfig,
         train_config: TrainConfig, out_dir: str, max_trials: int = 5) -> dict:
    """Runs the search; returns {"best": {width, learning_rate, dropout}, "best_score", "trials"}."""
    import keras
    import keras_tuner as kt

    from tftag.runs import determinism

    determinism.configure(train_config.seed, train_config.deterministic)
    info = load_dataset_info(dataset_dir)
    patch = model_config.patch_frames(mel_config)
    train_ds = data.make_dataset(dataset_dir, mel_config, "train", train_config.batch_size, patch,
                                 shuffle_buffer=train_config.shuffle_buffer, seed=train_config.seed)
    valid_ds = data.make_dataset(dataset_dir, mel_config, "valid", train_config.eval_batch_size,
                                 patch, seed=train_config.seed)

    def build_model(hp):
        config = dataclasses.replace(
            model_config, width=hp.Choice("width", list(WIDTHS)),
            dropout=hp.Float("dropout", 0.0, 0.5, step=0.1))
        model = build(config, mel_config, info.n_tags)
        model.compile(
            optimizer=keras.optimizers.Adam(hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")),
            loss=keras.losses.BinaryCrossentropy(from_logits=True),
            metrics=[keras.metrics.AUC(multi_label=True, num_labels=info.n_tags, from_logits=True,
                                       name="roc_auc")],
        )
        return model

    tuner = kt.RandomSearch(
        build_model, objective=kt.Objective("val_roc_auc", direction="max"),
        max_trials=max_trials, seed=train_config.seed, directory=out_dir, project_name="tuner",
    )
    try:
        with data.naming_corrupt_shards(dataset_dir, mel_config, None):
            tuner.search(train_ds, validation_data=valid_ds, epochs=train_config.epochs, verbose=0,
                         callbacks=[keras.callbacks.TensorBoard(os.path.join(out_dir, "tb", "tune"))])
    except RuntimeError as e:
        # keras-tuner catches a trial's read error and, after its retries, raises its own
        # RuntimeError: name the corrupt shard behind it, if that is what it was.
        _raise_if_corrupt(dataset_dir, mel_config, e)
        raise
    # keras-tuner records a trial's error (a corrupt shard too) as a FAILED trial and goes on.
    failed = [t for t in tuner.oracle.trials.values() if t.status == "FAILED"]
    if failed:
        _raise_if_corrupt(dataset_dir, mel_config, None)
    if not any(t.score is not None for t in tuner.oracle.trials.values()):
        first = (getattr(failed[0], "message", "") or "").strip().splitlines() if failed else []
        raise RuntimeError(f"every tuning trial failed ({len(failed)}); the last line of the first "
                           f"error: {first[-1] if first else 'unknown'}")
    best_trial = tuner.oracle.get_best_trials(1)[0]
    trials = [{"trial": t.trial_id, "score": t.score, **t.hyperparameters.values}
              for t in tuner.oracle.trials.values() if t.score is not None]
    return {"best": dict(best_trial.hyperparameters.values), "best_score": best_trial.score,
            "trials": sorted(trials, key=lambda t: -t["score"])}


def best_flagfile(experiment, outcome: dict, dataset_dir: str) -> str:
    """A flagfile that trains the best trial: the experiment's flags with its hyper-parameters."""
    best, config, m = outcome["best"], experiment.mel_config, experiment.model
    lines = [
        f"# Best keras-tuner trial (val ROC-AUC {outcome['best_score']:.4f}) of {experiment.run_dir}",
        "--mode=train", f"--model={m.name}", f"--preset={m.preset}", f"--width={best['width']}",
        f"--learning_rate={best['learning_rate']:.6g}", f"--dropout={best['dropout']:.2f}",
        f"--resolutions={config.name}", f"--duration={config.duration}",
        f"--patch_seconds={m.patch_seconds or 0}", f"--dataset_dir={dataset_dir}",
        f"--seed={experiment.train.seed}", f"--batch_size={experiment.train.batch_size}",
    ]
    return "\n".join(lines) + "\n"


def run(experiment, max_trials: int) -> dict:
    """``--mode=tune``: the search at the experiment's one resolution; writes ``tune.json`` and
    ``best.flags`` (a flagfile that trains the best trial)."""
    from tftag.extraction.extract import ensure_dataset

    dataset_dir = ensure_dataset(experiment)
    outcome = tune(dataset_dir, experiment.mel_config, experiment.model, experiment.train,
                   experiment.run_dir, max_trials)
    path = experiment.path("best.flags")
    runfiles.write_text_atomic(path, best_flagfile(experiment, outcome, dataset_dir))
    runfiles.write_json_atomic(experiment.path("tune.json"), outcome)
    print(f"best trial: {outcome['best']} (val ROC-AUC {outcome['best_score']:.4f}); flagfile {path}")
    return {"best": outcome["best"], "best_score": outcome["best_score"],
            "best_flagfile": path, "trials": len(outcome["trials"])}

