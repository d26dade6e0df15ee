"""Training: Adam (1e-3) on binary cross-entropy of logits, validation ROC-AUC, resumable.

The targets of the cross-entropy are the hard labels (``loss="bce"``) or, on a teacher-labelled
dataset, the teacher's probabilities (``loss="distill"``, knowledge distillation); validation
(early stopping, best weights) is on the hard labels either way.

A custom loop under a ``tf.distribute`` strategy (the default one for the visible devices
unless told otherwise). Every epoch reads the training split with a shuffle and patch seed
derived from (seed, epoch), so an interrupted run resumed from its last checkpoint (model,
optimizer, epoch, early-stopping state) ends in the same state as an uninterrupted one. After
each epoch the validation split is scored clip by clip (patch-averaged, :mod:`tftag.evaluate`);
the best weights by validation ROC-AUC are kept, and training stops after ``patience`` epochs
without improvement. With ``monitor="valid_loss"`` (cross-validation, :mod:`tftag.storage.folds`) the
best weights are those of the lowest validation loss (the training loss on clip probabilities)
and ``patience_unit="passes"`` counts the patience in passes over the training data (a patch
model's pass, and epoch, is as many random patches per clip as the clip has windows); the
outcome's ``stop_reason`` says why training ended: ``plateau`` (patience ran out) or ``cap``
(``epochs`` reached). With ``lr_reductions`` a plateau first lowers the learning rate
(× ``lr_factor``) and training goes on, the patience counted again, until the reductions are used
up; the stages' learning rates are in the history.

Run directory: ``checkpoints/`` (last state), ``best.weights.h5``, ``history.json``,
``progress.json`` (the steps of the epoch in progress at its last checkpoint), ``tb/train`` and
``tb/valid`` (TensorBoard). Long epochs are checkpointed every ``checkpoint_steps`` steps too,
so an interrupted run loses at most that many steps: it resumes inside the epoch, skipping the
batches it had trained on (the epoch's data order is the same), and ends as an uninterrupted run
does. SIGTERM or a first Ctrl-C (:func:`stop_requests`) checkpoints the step training is at
and stops it (:class:`tftag.errors.Stopped`): nothing is lost, a rerun resumes there. Progress
inside an epoch (step, running loss, examples/s) is logged every :data:`PROGRESS_SECONDS`.

``batch_size`` is the global batch: split evenly across the replicas in sync (an error if it
does not divide), the loss of a step averaged over the examples of the whole global batch, and
with more than one replica every BatchNorm layer normalizes with the statistics of the global
batch (``synchronized``), so the steps are those of one process. With
``strategy="multi_worker"`` (:mod:`tftag.runs.distributed`: MultiWorkerMirroredStrategy of
$TF_CONFIG) only the chief writes the run directory, scores validation (its decision is
broadcast to the others) and, in :func:`run_train`, scores the test split and exports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tftag import evaluate, patches
from tftag.runs import determinism, distributed, runfiles
from tftag.storage import data, folds
from tftag.errors import Stopped
from tftag.experiment import STRATEGIES as STRATEGY_NAMES  # the one list of the strategies
from tftag.experiment import TrainConfig  # noqa: F401  (defined beside the Experiment)
from tftag.features import MelConfig
from tftag.models import ModelConfig, build, training


# The learning-rate stage's entries of the checkpointed training state (--lr_reductions);
# checkpoints written before they existed hold neither.
LR_STATE = ("learning_rate", "lr_reductions")
# The epoch in progress at a mid-epoch checkpoint: steps done, their summed loss and seconds;
# checkpoints written before mid-epoch checkpoints existed hold none (they are at a boundary).
EPOCH_STATE = ("epoch_step", "epoch_loss_sum", "epoch_seconds")
CHECKPOINT_STEPS = 200  # a mid-epoch checkpoint every so many steps (MUSICNN pass: ~750)
PROGRESS_SECONDS = 60.0  # a progress line inside an epoch at most this often


def default_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over several GPUs, else the default strategy of the visible device."""
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


_MAKERS = {
    "auto": default_strategy,
    "default": tf.distribute.get_strategy,
    "mirrored": lambda: tf.distribute.MirroredStrategy(),
    "one_device_cpu": lambda: tf.distribute.OneDeviceStrategy("/cpu:0"),
    "multi_worker": distributed.strategy,  # made once per process, from $TF_CONFIG
}
# name -> strategy factory for each name of tftag.experiment.STRATEGIES, the one list of the
# strategies (a name there without a factory here is a KeyError at import).
STRATEGIES = {name: _MAKERS[name] for name in STRATEGY_NAMES}


def _save_weights_atomic(model, path: str) -> None:
    from tftag.runs import runfiles

    with runfiles.atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)


def _hparams(run_dir: str, mel_config: MelConfig, model_config: ModelConfig, cfg: TrainConfig,
             gmacs: float) -> None:
    from tensorboard.plugins.hparams import api as hp

    writer = tf.summary.create_file_writer(os.path.join(run_dir, "tb", "valid"))
    with writer.as_default():
        hp.hparams({
            "resolution": mel_config.name, "sr": mel_config.sr, "n_mels": mel_config.n_mels,
            "hop_factor": mel_config.hop_factor, "compression": mel_config.compression,
            "model": model_config.name, "width": model_config.width, "preset": model_config.preset,
            "gmacs": gmacs, "learning_rate": cfg.learning_rate, "batch_size": cfg.batch_size,
            "seed": cfg.seed, "loss": cfg.loss,
        })
    writer.close()


# The dataset feature each loss trains against (tftag.experiment.LOSSES).
TARGETS = {"bce": "labels", "distill": "soft_labels"}


def per_example_loss(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy of logits [b, n_tags] against targets in [0, 1], mean over tags: [b].

    The one loss of both modes: targets are the 0/1 hard labels (``bce``) or the teacher's
    probabilities (``distill``): -mean_t(p_t·log σ(z_t) + (1 - p_t)·log(1 - σ(z_t))).
    """
    return tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(targets, logits.dtype),
                                                logits=logits), axis=-1)


def teacher_labelled(info: data.DatasetInfo) -> bool:
    """Whether a dataset stores a teacher's soft labels (dataset.json "labels": "teacher:...")."""
    return str(info.raw.get("labels", "catalog")).startswith("teacher:")


def check_loss(loss: str, info: data.DatasetInfo) -> None:
    """Raises a clear ValueError when ``loss`` cannot train on the dataset of ``info``."""
    if loss not in TARGETS:
        raise ValueError(f"loss must be one of {', '.join(TARGETS)}, got {loss!r}")
    if loss == "distill" and not teacher_labelled(info):
        raise ValueError(
            f"--loss=distill trains on a teacher's soft labels, but the dataset {info.path} is "
            f"labelled {info.raw.get('labels', 'catalog')!r} (no soft labels); extract it with "
            "--labels=teacher:MTT_musicnn (or teacher:MTT_vgg), or use --loss=bce")


def train_step_fn(model, optimizer, strategy: tf.distribute.Strategy):
    """The training step: ``(x, targets) -> loss`` summed over replicas, one Adam update.

    The loss is :func:`per_example_loss` averaged over the examples of the global batch (all
    replicas; a partial last batch too); the forward pass is
    :func:`tftag.models.training.training_fn` (``model(x, training=True)`` rewritten for speed,
    same variables and updates).
    """
    forward = training.training_fn(model)

    def step(x, targets):  # targets: hard labels (bce) or the teacher's probabilities (distill)
        examples = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.shape(x)[0])
        with tf.GradientTape() as tape:
            logits = forward(x)
            loss = tf.nn.compute_average_loss(per_example_loss(targets, logits),
                                              global_batch_size=examples)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    # No AutoGraph: the step has no Python control flow on tensors (Keras 3 runs its own steps
    # unconverted too), and converting the model's and the optimizer's code again for every new
    # model cost seconds per training call — the graph, and so every number, is the same.
    @tf.function(autograph=False)
    def distributed_step(x, y):
        losses = strategy.run(step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    return distributed_step


class StepCache:
    """Built models, each with its optimizer and traced training step, kept across
    :func:`train` calls of one process (a search's trials: a promoted trial continues its
    parent's training from the parent's checkpoint).

    Building a model and tracing its step costs seconds, more than a small model's epoch. A
    call that resumes from a checkpoint restores every variable of the model and the optimizer
    (weights, BatchNorm statistics, dropout seed states, Adam's moments and step count; the
    restore asserts that each matched), so it may run on the entry of an earlier call with the
    same (model, resolution, tags, learning rate, strategy): the same numbers as a fresh build.
    A call without a checkpoint always builds its own.
    """

    def __init__(self):
        self._entries: dict = {}

    def get(self, key):
        """The (model, optimizer, step) of ``key``, or None."""
        return self._entries.get(key)

    def put(self, key, entry) -> None:
        """Keeps ``entry`` for ``key`` (the latest one wins)."""
        self._entries[key] = entry

    def __len__(self) -> int:
        return len(self._entries)


def _save_state(chief: bool, manager: tf.train.CheckpointManager,
                checkpoint: tf.train.Checkpoint, run_dir: str, epoch: int, step: int) -> None:
    """A mid-epoch checkpoint and, on the chief, ``progress.json`` (epoch, steps done)."""
    _save_checkpoint(chief, manager, checkpoint)
    if chief:
        data.write_json_atomic(os.path.join(run_dir, runfiles.PROGRESS_JSON),
                               {"epoch": epoch, "step": step})


def _save_checkpoint(chief: bool, manager: tf.train.CheckpointManager,
                     checkpoint: tf.train.Checkpoint) -> None:
    """The chief saves into the run directory; another worker saves too (saving may take part
    in collectives), outside it."""
    if chief:
        manager.save()
    else:
        with distributed.scratch_dir() as scratch:
            checkpoint.save(os.path.join(scratch, "ckpt"))


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_requests(enabled: bool = True) -> Iterator[dict]:
    """SIGTERM and a first Ctrl-C (SIGINT) become a request that the training loop reads between
    steps: ``{"signal": number or None}``. A second Ctrl-C interrupts at once, as usual.

    Only in the main thread (where Python runs signal handlers) and when ``enabled`` (not in a
    multi-worker job: a worker that stopped alone would leave the others waiting in their
    collectives); otherwise the signals keep their actions and the request stays None.
    The previous handlers are back when the block ends.
    """
    request: dict = {"signal": None}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    def handler(signum, frame):  # noqa: ARG001  (no logging here: it takes locks)
        request["signal"] = signum
        signal.signal(signal.SIGINT, previous[signal.SIGINT])  # the next Ctrl-C: at once

    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _stopped(request: dict, run_dir: str, epoch: int, step: int) -> Stopped:
    name = signal.Signals(request["signal"]).name
    where = f"epoch {epoch}, step {step}" if step else f"the start of epoch {epoch}"
    return Stopped(f"{run_dir}: training stopped by {name} at {where} (checkpointed); rerun the "
                   f"same command to resume there", request["signal"])


def train(
    dataset_dir: str,
    mel_config: MelConfig,
    model_config: ModelConfig,
    train_config: TrainConfig,
    run_dir: str,
    strategy: tf.distribute.Strategy | None = None,
    stop_after_epochs: int | None = None,
    fold: folds.FoldParts | None = None,
    steps: "StepCache | None" = None,
    checkpoint_steps: int = CHECKPOINT_STEPS,
    stop_after_steps: int | None = None,
) -> dict:
    """Trains (or resumes training) one model at one resolution.

    Args:
      dataset_dir: an extraction output directory with train and valid splits.
      mel_config: the input resolution.
      model_config: the model.
      train_config: the training settings.
      run_dir: where checkpoints, best weights, history and TensorBoard logs go (multi-worker:
        the chief's; every worker resumes from it).
      strategy: a tf.distribute strategy (default: the one ``train_config.strategy`` names).
      stop_after_epochs: end this call after so many epochs (simulates an interruption).
      fold: a cross-validation fold: train on its training part and validate on its validation
        part (clip ids over all splits) instead of the train and valid splits.
      steps: built models with their optimizer and traced step, kept by the caller across
        calls (:class:`StepCache`): a call that resumes from a checkpoint reuses the entry of
        the same model, resolution and settings instead of building and tracing them again.
      checkpoint_steps: a checkpoint every so many steps inside an epoch too (0: only at the
        end of an epoch); the results do not depend on it.
      stop_after_steps: end this call after so many training steps (simulates an interruption
        inside an epoch: what came after the last checkpoint is lost).

    Returns:
      {"best_weights", "best_epoch", "best_valid_roc_auc", "best_valid_pr_auc",
       "best_valid_loss", "epochs_done", "stopped_early", "stop_reason" ("plateau", "cap", or
       None when interrupted), "patience_epochs", "train_seconds", "history"}.
    """
    job = _job(dataset_dir, mel_config, model_config, train_config, run_dir, fold)
    loop = _setup(job, strategy, steps, checkpoint_steps)
    stopped_early = _run_epochs(job, loop, stop_after_epochs, stop_after_steps)
    return _outcome(job, loop, stopped_early)


@dataclasses.dataclass(frozen=True)
class _Job:
    """What one :func:`train` call trains on, checked.

    Attributes:
      dataset_dir: the extraction output directory.
      mel_config: the input resolution.
      model_config: the model.
      cfg: the training settings.
      run_dir: the run directory.
      info: the dataset's ``dataset.json``.
      patch_frames: the model's input patch in frames (None: whole clips).
      source: (split, clip ids) of the training and validation data ("train", "valid"): splits,
        or a fold's parts.
      train_clips: clips of the training data.
    """

    dataset_dir: str
    mel_config: MelConfig
    model_config: ModelConfig
    cfg: TrainConfig
    run_dir: str
    info: data.DatasetInfo
    patch_frames: int | None
    source: dict[str, tuple[str | None, tuple[str, ...] | None]]
    train_clips: int

    @property
    def lower_is_better(self) -> bool:
        """Whether the best weights are those of the lowest validation loss ("best" then holds
        -loss; else the validation ROC-AUC)."""
        return self.cfg.monitor == "valid_loss"

    @property
    def best_path(self) -> str:
        return os.path.join(self.run_dir, "best.weights.h5")

    @property
    def history_path(self) -> str:
        return os.path.join(self.run_dir, "history.json")


@dataclasses.dataclass(frozen=True)
class _Loop:
    """What the epochs of one :func:`train` call share once set up.

    Attributes:
      strategy: the tf.distribute strategy.
      chief: whether this process writes the run directory (multi-worker: the chief alone).
      model: the Keras model.
      optimizer: its Adam optimizer.
      step: the traced training step (:func:`train_step_fn`).
      state: the checkpointed training state (epoch, best score and epoch, epochs without
        improvement, learning-rate stage, :data:`EPOCH_STATE`).
      checkpoint: the checkpoint of the model, the optimizer and ``state``.
      manager: its manager (``<run_dir>/checkpoints``, the last one kept).
      from_chief: the chief's validation scores, broadcast to every worker.
      history: the records of the finished epochs (appended to).
      train_writer: TensorBoard ``tb/train`` (no-op off the chief).
      valid_writer: TensorBoard ``tb/valid`` (no-op off the chief).
      steps_per_epoch: steps of one epoch (None: one pass over the clips).
      patience: epochs without improvement before a plateau (0: never).
      checkpoint_steps: a mid-epoch checkpoint every so many steps (0: none).
    """

    strategy: tf.distribute.Strategy
    chief: bool
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step: Callable
    state: dict[str, tf.Variable]
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    from_chief: Callable
    history: list[dict]
    train_writer: Any
    valid_writer: Any
    steps_per_epoch: int | None
    patience: int
    checkpoint_steps: int


def _job(dataset_dir: str, mel_config: MelConfig, model_config: ModelConfig, cfg: TrainConfig,
         run_dir: str, fold: folds.FoldParts | None) -> _Job:
    """The training and validation data of a call, checked (non-empty, tags, loss)."""
    patch_frames = model_config.patch_frames(mel_config)
    info = data.load_dataset_info(dataset_dir)
    # (split, clip ids) of the training and validation data: splits, or a fold's parts.
    source = ({p: (None, fold.part(p)) for p in ("train", "valid")} if fold is not None
              else {p: (p, None) for p in ("train", "valid")})
    sizes = {p: len(clips) if clips is not None else info.splits.get(p, 0)
             for p, (_, clips) in source.items()}
    for split, size in sizes.items():
        if size == 0:
            raise ValueError(f"{dataset_dir}: {'fold %d part' % fold.fold if fold else 'split'} "
                             f"{split!r} is empty or missing; splits: {info.splits}")
    if info.n_tags == 0:
        raise ValueError(f"{dataset_dir}: the dataset has no tags to learn")
    check_loss(cfg.loss, info)
    return _Job(dataset_dir, mel_config, model_config, cfg, run_dir, info, patch_frames, source,
                sizes["train"])


def _setup(job: _Job, strategy: tf.distribute.Strategy | None, steps: "StepCache | None",
           checkpoint_steps: int) -> _Loop:
    """Determinism, the strategy, the model and its step, the state restored from the last
    checkpoint, the history and the TensorBoard writers."""
    cfg, run_dir = job.cfg, job.run_dir
    settings = determinism.configure(cfg.seed, cfg.deterministic)
    strategy = strategy or STRATEGIES[cfg.strategy]()  # after the thread pools (determinism)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(f"--batch_size={cfg.batch_size} is the global batch: it must divide "
                         f"evenly across the {replicas} replicas in sync")
    chief = strategy.extended.should_checkpoint  # multi-worker: only the chief writes run_dir
    if chief:
        os.makedirs(run_dir, exist_ok=True)
        data.write_json_atomic(os.path.join(run_dir, "determinism.json"), settings)
    checkpoints = os.path.join(run_dir, "checkpoints")
    model, optimizer, distributed_step = _model_and_step(job, strategy, steps, checkpoints)
    from_chief = distributed.chief_broadcast(strategy)
    state = _new_state(cfg, job.lower_is_better)
    checkpoint, manager = _restore(model, optimizer, state, checkpoints)
    distributed.check_restored_epoch(strategy, int(state["epoch"]), manager.directory)
    optimizer.learning_rate = float(state["learning_rate"])
    history = _read_history(job.history_path, int(state["epoch"]))
    train_writer, valid_writer = _summary_writers(job, chief, model)
    patches_per_clip = (patches.n_windows(job.mel_config.n_frames, job.patch_frames)
                        if job.patch_frames else 1)
    return _Loop(strategy, chief, model, optimizer, distributed_step, state, checkpoint, manager,
                 from_chief, history, train_writer, valid_writer,
                 epoch_steps(cfg, job.train_clips, patches_per_clip),
                 patience_epochs(cfg, job.train_clips, patches_per_clip), checkpoint_steps)


def _model_and_step(job: _Job, strategy: tf.distribute.Strategy, steps: "StepCache | None",
                    checkpoints: str) -> tuple:
    """(model, optimizer, traced step): the cache's entry when resuming, else built anew."""
    cfg = job.cfg
    key = (job.model_config, job.mel_config, job.info.n_tags, cfg.learning_rate, id(strategy))
    reused = steps.get(key) if steps is not None and tf.train.latest_checkpoint(checkpoints) \
        else None  # only a restore sets every variable (asserted in _restore): a fresh run builds
    if reused is not None:
        return reused
    with strategy.scope():
        model = build(job.model_config, job.mel_config, job.info.n_tags)
        optimizer = keras.optimizers.Adam(cfg.learning_rate)
        optimizer.build(model.trainable_variables)
    if strategy.num_replicas_in_sync > 1:  # batch statistics of the global batch, as in one process
        distributed.synchronize_batch_norm(model)
    distributed_step = train_step_fn(model, optimizer, strategy)
    if steps is not None:
        steps.put(key, (model, optimizer, distributed_step))
    return model, optimizer, distributed_step


def _new_state(cfg: TrainConfig, lower_is_better: bool) -> dict[str, tf.Variable]:
    """The training state's variables at the start of a run ("best" holds the score: -loss or
    ROC-AUC)."""
    return {
        "epoch": tf.Variable(0, dtype=tf.int64),
        "best": tf.Variable(-np.inf if lower_is_better else -1.0, dtype=tf.float64),
        "best_epoch": tf.Variable(-1, dtype=tf.int64), "bad_epochs": tf.Variable(0, dtype=tf.int64),
        # The learning rate of the current stage and the reductions so far (cfg.lr_reductions);
        # a checkpoint from before they existed restores without them (the first stage).
        "learning_rate": tf.Variable(cfg.learning_rate, dtype=tf.float64),
        "lr_reductions": tf.Variable(0, dtype=tf.int64),
        "epoch_step": tf.Variable(0, dtype=tf.int64),
        "epoch_loss_sum": tf.Variable(0.0, dtype=tf.float64),
        "epoch_seconds": tf.Variable(0.0, dtype=tf.float64),
    }


def _restore(model, optimizer, state: dict[str, tf.Variable],
             checkpoints: str) -> tuple[tf.train.Checkpoint, tf.train.CheckpointManager]:
    """The checkpoint of the model, the optimizer and ``state`` and its manager, restored from
    the last checkpoint in ``checkpoints`` if there is one."""
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, **state)
    manager = tf.train.CheckpointManager(checkpoint, checkpoints, max_to_keep=1)
    if manager.latest_checkpoint:
        saved = {name.split("/")[0] for name, _ in tf.train.list_variables(manager.latest_checkpoint)}
        # An older checkpoint lacks some state entries (LR_STATE, EPOCH_STATE): restore the
        # entries it holds; the missing ones keep their first-stage values.
        restoring = tf.train.Checkpoint(
            model=model, optimizer=optimizer, **{k: v for k, v in state.items() if k in saved})
        restoring.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        # The subset has its own save counter: carry it over so the next save is numbered
        # after the restored one instead of overwriting it (ckpt-N+1, not ckpt-1).
        checkpoint.save_counter.assign(restoring.save_counter)
        logging.info("resumed %s at epoch %d, step %d", manager.latest_checkpoint,
                     int(state["epoch"]), int(state["epoch_step"]))
    return checkpoint, manager


def _read_history(history_path: str, epoch: int) -> list[dict]:
    """The records of the epochs before ``epoch`` in ``history.json`` (none without it)."""
    history = []
    if os.path.exists(history_path):
        with open(history_path, encoding="utf-8") as f:
            history = json.load(f)
    return [h for h in history if h["epoch"] < epoch]


def _summary_writers(job: _Job, chief: bool, model) -> tuple:
    """The chief's hyper-parameters and its ``tb/train``, ``tb/valid`` writers; no-op writers
    on the other workers."""
    from tftag import profile

    if chief:
        _hparams(job.run_dir, job.mel_config, job.model_config, job.cfg,
                 profile.analytic_macs(model) / 1e9)
        return (tf.summary.create_file_writer(os.path.join(job.run_dir, "tb", "train")),
                tf.summary.create_file_writer(os.path.join(job.run_dir, "tb", "valid")))
    noop = tf.summary.create_noop_writer()
    return noop, noop


def _run_epochs(job: _Job, loop: _Loop, stop_after_epochs: int | None,
                stop_after_steps: int | None) -> bool:
    """Trains epoch after epoch until the epoch cap, a plateau with no learning-rate reduction
    left, a stop request or this call's limits; True when a plateau ended training."""
    state = loop.state
    epochs_this_call = steps_this_call = 0
    # SIGTERM / a first Ctrl-C: checkpoint the step training is at, then stop (Stopped); the
    # summaries of finished epochs are flushed either way.
    with contextlib.ExitStack() as closing:
        closing.callback(loop.valid_writer.close)
        closing.callback(loop.train_writer.close)
        stop = closing.enter_context(stop_requests(not distributed.is_multi_worker(loop.strategy)))
        while int(state["epoch"]) < job.cfg.epochs:
            epoch = int(state["epoch"])
            if stop["signal"] is not None:  # came in validation: the epoch's end is saved
                raise _stopped(stop, job.run_dir, epoch, int(state["epoch_step"]))
            if _plateau_ends(job, loop, epoch):
                return True
            if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
                break
            steps_left = None if stop_after_steps is None else stop_after_steps - steps_this_call
            taken, totals = _train_epoch(job, loop, epoch, stop, steps_left)
            steps_this_call += taken
            if totals is None:  # stop_after_steps reached inside the epoch
                break
            _end_epoch(job, loop, epoch, *totals)
            epochs_this_call += 1
    return False


def _plateau_ends(job: _Job, loop: _Loop, epoch: int) -> bool:
    """True when patience ran out with no reduction left; with reductions left, a plateau
    lowers the learning rate (× ``lr_factor``) and the patience starts again."""
    state, cfg = loop.state, job.cfg
    if not (loop.patience and int(state["bad_epochs"]) >= loop.patience):
        return False
    if int(state["lr_reductions"]) >= cfg.lr_reductions:
        return True
    state["learning_rate"].assign(float(state["learning_rate"]) * cfg.lr_factor)
    state["lr_reductions"].assign_add(1)
    state["bad_epochs"].assign(0)
    loop.optimizer.learning_rate = float(state["learning_rate"])
    logging.info("%s %s epoch %d: no better validation for %d epochs: learning rate "
                 "%.3g (reduction %d of %d)", job.model_config.name, job.mel_config.name, epoch,
                 loop.patience, float(state["learning_rate"]), int(state["lr_reductions"]),
                 cfg.lr_reductions)
    return False


def _epoch_dataset(job: _Job, loop: _Loop, epoch: int) -> tuple[tf.data.Dataset, int]:
    """The epoch's training batches (seeded by (seed, epoch)) after the ``done`` steps already
    trained at a mid-epoch checkpoint: (dataset, done)."""
    cfg = job.cfg
    ds = data.make_dataset(
        job.dataset_dir, job.mel_config, job.source["train"][0], cfg.batch_size, job.patch_frames,
        shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed * 100003 + epoch,
        repeat=loop.steps_per_epoch is not None, targets=TARGETS[cfg.loss],
        clips=job.source["train"][1],
    )
    if loop.steps_per_epoch is not None:
        ds = ds.take(loop.steps_per_epoch)
    done = int(loop.state["epoch_step"])  # resumed inside this epoch: its first batches are done
    if done:
        ds = ds.skip(done)
    return distributed.shard_by_data(ds), done  # each worker: its slice of every global batch


def _train_epoch(job: _Job, loop: _Loop, epoch: int, stop: dict,
                 steps_left: int | None) -> tuple[int, tuple[int, float, float] | None]:
    """Trains the rest of one epoch, checkpointing every ``checkpoint_steps`` steps and at a
    stop request (then :class:`Stopped`).

    Returns:
      (steps taken, (the epoch's steps, summed loss, seconds)), or (steps taken, None) when
      ``steps_left`` ran out first.
    """
    state = loop.state
    ds, done = _epoch_dataset(job, loop, epoch)
    losses, taken = [], 0
    t0 = last_log = time.monotonic()
    with data.naming_corrupt_shards(job.dataset_dir, job.mel_config, job.source["train"][0]):
        for x, y in loop.strategy.experimental_distribute_dataset(ds):
            losses.append(float(loop.step(x, y)))
            step = done + len(losses)
            stopping = stop["signal"] is not None
            if stopping or (loop.checkpoint_steps and step % loop.checkpoint_steps == 0):
                _save_inside_epoch(job, loop, epoch, step, sum(losses), t0)
                if stopping:
                    raise _stopped(stop, job.run_dir, epoch, step)
                done, losses, t0 = step, [], time.monotonic()
            now = time.monotonic()
            if now - last_log >= PROGRESS_SECONDS:
                last_log = now
                _log_progress(job, loop, epoch, step, losses, now - t0)
            taken += 1
            if steps_left is not None and taken >= steps_left:
                return taken, None
    n_steps = done + len(losses)
    loss_sum = float(state["epoch_loss_sum"]) + sum(losses)
    return taken, (n_steps, loss_sum, float(state["epoch_seconds"]) + time.monotonic() - t0)


def _save_inside_epoch(job: _Job, loop: _Loop, epoch: int, step: int, loss_sum: float,
                       t0: float) -> None:
    """A mid-epoch checkpoint: the steps done, their summed loss and seconds in the state."""
    state = loop.state
    state["epoch_step"].assign(step)
    state["epoch_loss_sum"].assign(float(state["epoch_loss_sum"]) + loss_sum)
    state["epoch_seconds"].assign(float(state["epoch_seconds"]) + time.monotonic() - t0)
    _save_state(loop.chief, loop.manager, loop.checkpoint, job.run_dir, epoch, step)


def _log_progress(job: _Job, loop: _Loop, epoch: int, step: int, losses: list[float],
                  seconds: float) -> None:
    """A progress line: step, running loss of the epoch, examples per second over the
    ``seconds`` since the last checkpoint (or the epoch's start)."""
    logging.info("%s %s epoch %d: step %d%s, loss %.4f, %.1f examples/s",
                 job.model_config.name, job.mel_config.name, epoch, step,
                 f"/{loop.steps_per_epoch}" if loop.steps_per_epoch else "",
                 (float(loop.state["epoch_loss_sum"]) + sum(losses)) / step,
                 len(losses) * job.cfg.batch_size / max(seconds, 1e-9))


def _validate(job: _Job, loop: _Loop) -> list[float]:
    """[ROC-AUC, PR-AUC, loss] of the validation data: scored by the chief, every worker
    takes its numbers."""
    cfg = job.cfg
    scores = [0.0, 0.0, 0.0]  # the chief scores validation; every worker takes its decision
    if loop.chief:
        split, clips = job.source["valid"]
        p = evaluate.predict_clips(loop.model, job.dataset_dir, job.mel_config, split,
                                   job.patch_frames, cfg.eval_batch_size, cfg.valid_patches, clips)
        metrics = evaluate.scores(p, job.info.tags)
        targets = p.soft_labels if TARGETS[cfg.loss] == "soft_labels" else p.labels
        scores = [metrics.roc_auc, metrics.pr_auc, evaluate.clip_bce(targets, p.probabilities)]
    return loop.from_chief(scores)


def _keep_best(job: _Job, loop: _Loop, epoch: int, roc_auc: float, valid_loss: float) -> bool:
    """Whether the epoch improved on the best score; if so its weights become the best
    (``best.weights.h5``), else one more epoch without improvement."""
    state = loop.state
    score = -valid_loss if job.lower_is_better else roc_auc
    improved = score > float(state["best"])
    if improved:
        if loop.chief:
            _save_weights_atomic(loop.model, job.best_path)
        state["best"].assign(score)
        state["best_epoch"].assign(epoch)
        state["bad_epochs"].assign(0)
    else:
        state["bad_epochs"].assign_add(1)
    return improved


def _end_epoch(job: _Job, loop: _Loop, epoch: int, n_steps: int, loss_sum: float,
               train_seconds: float) -> None:
    """Validation, the best weights, the epoch's record and summaries, and the checkpoint and
    history at the epoch's end."""
    state = loop.state
    t1 = time.monotonic()
    roc_auc, pr_auc, valid_loss = _validate(job, loop)
    valid_seconds = time.monotonic() - t1
    improved = _keep_best(job, loop, epoch, roc_auc, valid_loss)
    record = {"epoch": epoch, "loss": loss_sum / n_steps if n_steps else float("nan"),
              "steps": n_steps,
              "valid_roc_auc": roc_auc, "valid_pr_auc": pr_auc, "valid_loss": valid_loss,
              "learning_rate": float(state["learning_rate"]),
              "epoch_seconds": round(train_seconds, 3),
              "valid_seconds": round(valid_seconds, 3), "best": improved}
    loop.history.append(record)
    _epoch_summaries(loop, record, n_steps * job.cfg.batch_size / max(train_seconds, 1e-9))
    state["epoch"].assign(epoch + 1)
    for name in EPOCH_STATE:
        state[name].assign(0)
    _save_checkpoint(loop.chief, loop.manager, loop.checkpoint)
    if loop.chief:
        data.write_json_atomic(job.history_path, loop.history)
    logging.info("%s %s epoch %d: loss %.4f, valid loss %.4f, ROC-AUC %.4f, PR-AUC %.4f%s",
                 job.model_config.name, job.mel_config.name, epoch, record["loss"], valid_loss,
                 roc_auc, pr_auc, " (best)" if improved else "")


def _epoch_summaries(loop: _Loop, record: dict, examples_per_second: float) -> None:
    """The epoch's TensorBoard scalars: training loss, learning rate and speed; validation
    ROC-AUC, PR-AUC and loss."""
    epoch = record["epoch"]
    with loop.train_writer.as_default():
        tf.summary.scalar("loss", record["loss"], step=epoch)
        tf.summary.scalar("learning_rate", record["learning_rate"], step=epoch)
        tf.summary.scalar("examples_per_second", examples_per_second, step=epoch)
    with loop.valid_writer.as_default():
        tf.summary.scalar("roc_auc", record["valid_roc_auc"], step=epoch)
        tf.summary.scalar("pr_auc", record["valid_pr_auc"], step=epoch)
        tf.summary.scalar("loss", record["valid_loss"], step=epoch)


def _outcome(job: _Job, loop: _Loop, stopped_early: bool) -> dict:
    """The summary :func:`train` returns."""
    state, cfg, history, patience = loop.state, job.cfg, loop.history, loop.patience
    best = next((h for h in history if h["epoch"] == int(state["best_epoch"])), {})
    # A plateau ends the run only once the reductions are used up (with some left, the cap did).
    plateau = (bool(patience) and int(state["bad_epochs"]) >= patience
               and int(state["lr_reductions"]) >= cfg.lr_reductions)
    return {
        "best_weights": job.best_path,
        "best_epoch": int(state["best_epoch"]),
        "best_valid_roc_auc": best.get("valid_roc_auc", float(state["best"]))
        if job.lower_is_better else float(state["best"]),
        "best_valid_pr_auc": best.get("valid_pr_auc"),
        "best_valid_loss": best.get("valid_loss"),
        "epochs_done": int(state["epoch"]),
        "stopped_early": stopped_early,
        "stop_reason": ("plateau" if plateau else
                        "cap" if int(state["epoch"]) >= cfg.epochs else None),
        "patience_epochs": patience,
        "lr_reductions": int(state["lr_reductions"]),
        # Training + validation time of every epoch, across resumed calls.
        "train_seconds": round(sum(h["epoch_seconds"] + h.get("valid_seconds", 0.0)
                                   for h in history), 2),
        "history": history,
    }


def steps_per_pass(train_clips: int, batch_size: int, patches_per_clip: int = 1) -> int:
    """Steps of one pass over the training data: every clip, or for a patch model as many
    random patches per clip as it has non-overlapping windows (``patches_per_clip``)."""
    return math.ceil(train_clips * patches_per_clip / batch_size)


def epoch_steps(cfg: TrainConfig, train_clips: int, patches_per_clip: int = 1) -> int | None:
    """Steps of one epoch: ``cfg.steps_per_epoch``; else, counting in passes (cross-validation),
    a patch model's epoch is one pass over its training audio (``patches_per_clip`` random
    patches per clip, so it sees as much music per epoch as a whole-clip model); None = one
    pass over the clips, one random patch each."""
    if cfg.steps_per_epoch is not None:
        return cfg.steps_per_epoch
    if cfg.patience_unit == "passes" and patches_per_clip > 1:
        return steps_per_pass(train_clips, cfg.batch_size, patches_per_clip)
    return None


def patience_epochs(cfg: TrainConfig, train_clips: int, patches_per_clip: int = 1) -> int:
    """Epochs without improvement before stopping: ``cfg.patience`` epochs, or (unit "passes")
    that many passes (:func:`steps_per_pass`) in epochs of :func:`epoch_steps` steps (rounded
    up); 0 = never stop."""
    steps = epoch_steps(cfg, train_clips, patches_per_clip)
    if cfg.patience_unit == "epochs" or not steps:
        return cfg.patience
    return math.ceil(cfg.patience * steps_per_pass(train_clips, cfg.batch_size, patches_per_clip)
                     / steps)


def load_best(run_dir: str, dataset_dir: str, mel_config: MelConfig, model_config: ModelConfig):
    """The model of a run directory with its best weights."""
    info = data.load_dataset_info(dataset_dir)
    model = build(model_config, mel_config, info.n_tags)
    path = os.path.join(run_dir, "best.weights.h5")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: train first (--mode=train --run_dir={run_dir})")
    model.load_weights(path)
    return model


HELDOUT_JSON = "heldout.json"  # a held-out-package run's parts: packages, train/valid/test ids


def heldout_split(dataset_dir: str, mel_config: MelConfig,
                  heldout: folds.HeldoutConfig) -> folds.FoldParts:
    """The held-out-package split of a dataset (:func:`tftag.storage.folds.heldout_parts`) from its
    clip ids and track groups."""
    groups, crops = data.dataset_groups(dataset_dir, mel_config)
    return folds.add_crops(folds.heldout_parts(groups, heldout), groups, crops)


def run_train(experiment) -> dict:
    """``--mode=train``: trains at the experiment's one resolution, evaluates the best weights on
    the test split, writes ``results.json`` and ``per_tag.txt`` and exports if asked.

    With held-out packages (``experiment.heldout``) it trains on the other packages' clips but a
    seeded validation part (by track group; early stopping on it) and tests on every clip of
    the held-out packages; ``heldout.json`` records the parts. ``--mode=ship`` turns such a run
    into a shipped pretrained model (:mod:`tftag.tagging.ship`).

    A non-chief multi-worker process trains, then waits for the chief's evaluation and export
    and returns a short summary (it writes nothing).

    Returns:
      The run's summary (metrics, best epoch and checkpoint, dataset and export paths).
    """
    from tftag.delivery import export
    from tftag.extraction import extract
    from tftag.runs import runfiles

    config, mc = experiment.mel_config, experiment.model
    dataset_dir = extract.ensure_dataset(experiment)
    parts = None  # held-out packages: train and validate on the rest, test on them
    if experiment.heldout is not None:
        parts = heldout_split(dataset_dir, config, experiment.heldout)
        if distributed.is_chief():
            runfiles.write_json_atomic(experiment.path(HELDOUT_JSON), dict(
                parts.describe(), packages=list(experiment.heldout.packages)))
    outcome = train(dataset_dir, config, mc, experiment.train, experiment.run_dir, fold=parts)
    if not distributed.is_chief():  # a non-chief worker: no test scores, no export, no files
        distributed.barrier()  # ... but it stays until the chief is done (see tftag.runs.distributed)
        return {"resolution": config.name, "model": mc.name, "worker": distributed.task().name,
                "best_valid_roc_auc": outcome["best_valid_roc_auc"],
                "best_epoch": outcome["best_epoch"], "epochs_done": outcome["epochs_done"]}
    model = load_best(experiment.run_dir, dataset_dir, config, mc)
    info = data.load_dataset_info(dataset_dir)
    metrics = evaluate.evaluate(model, dataset_dir, config, None if parts else "test", info.tags,
                                mc.patch_frames(config), experiment.train.eval_batch_size,
                                experiment.train.test_patches, parts.test if parts else None)
    table = evaluate.format_per_tag(metrics)
    print(table)
    results = experiment.path("results.json")
    runfiles.write_json_atomic(results, {"test": metrics.as_dict(), "train": outcome})
    runfiles.write_text_atomic(experiment.path("per_tag.txt"), table)
    export_path = None
    if experiment.export.enabled:
        export_path = export.export_weights(
            experiment, config, mc, outcome["best_weights"], dataset_dir,
            {"test_roc_auc": metrics.roc_auc, "test_pr_auc": metrics.pr_auc})
    distributed.barrier()  # multi-worker: the others waited for this evaluation and export
    return {"resolution": config.name, "model": mc.name,
            "test_roc_auc": metrics.roc_auc, "test_pr_auc": metrics.pr_auc,
            "test_top5_overlap": metrics.top5_overlap,
            "test_prob_correlation": metrics.prob_correlation, "loss": experiment.train.loss,
            "best_valid_roc_auc": outcome["best_valid_roc_auc"],
            "best_epoch": outcome["best_epoch"], "epochs_done": outcome["epochs_done"],
            "best_checkpoint": outcome["best_weights"], "results": results,
            "dataset_dir": dataset_dir, "export_path": export_path}

