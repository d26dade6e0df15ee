"""Multi-worker training: ``tf.distribute.MultiWorkerMirroredStrategy`` configured by $TF_CONFIG.

``--strategy=multi_worker`` trains one model with N processes ("workers") on one machine or
several, each running ``python -m tftag.main --mode=train ...`` with its own ``TF_CONFIG``
(``pipelines.launch_local_workers`` starts N of them on one machine). Synchronous data
parallelism: every step, each replica computes the gradients of its part of the global batch,
the gradients are summed across workers (collective all-reduce) and every worker applies the
same update, so all copies of the model stay equal.

Roles. The chief is the task of type ``chief``, else worker 0 of a cluster without one
(TensorFlow's own rule, ``strategy.extended.should_checkpoint``). Only the chief writes into the
run directory: checkpoints/, best.weights.h5, history.json, determinism.json, tb/, results.json,
per_tag.txt, the export, and in ``tftag.main`` flags.txt, configs.json and summary.json. The
other workers write nothing there, do not score the test split and do not export. (The chief's
export computes what a one-process export of the same weights computes; its functions record
the worker's session options, cluster included, which loading in a plain process ignores.)

Start-up order (:func:`setup`, called by the entry point before any other TensorFlow op):
thread pools and seeds first (:func:`tftag.runs.determinism.configure`: TensorFlow sizes its pools
once), then the strategy, which configures collective ops and starts the worker's gRPC server
(TensorFlow allows that only before its runtime is initialized). The strategy is made once per
process; :func:`strategy` returns it.

Lockstep (every worker must run the same collectives in the same order, or they hang):

* Input: each worker reads the whole training split with the same seed (same order, same patch
  offsets), auto-sharded by ``AutoShardPolicy.DATA``: each global batch of ``--batch_size``
  examples is cut into per-replica batches of ``batch_size / num_replicas_in_sync`` (worker 0
  the first slice, worker 1 the next, ...), so step k of N workers consumes exactly the examples
  of step k of one process. The global batch must divide evenly. When the split runs out, all
  workers stop together (a final partial batch is split as evenly as it goes; a replica may get
  an empty batch). The step loss is the sum of the per-example losses over the global batch
  divided by the number of examples in that global batch (all-reduced), as one process
  averages it, partial batch included.
* Validation and early stopping: the chief alone scores the validation split; its ROC-AUC and
  PR-AUC are broadcast to every worker (:func:`chief_broadcast`, an all-reduce only the chief
  contributes to: exact), so every worker takes the same best/patience decision and stops at
  the same epoch. Scoring validation on every worker would cost N times the compute and, on
  hosts with other CPUs, could differ in the last bit and flip a decision.
* Checkpoints: at the end of each epoch every worker saves: the chief into
  ``<run_dir>/checkpoints``, the others into a private temporary directory outside the run
  directory, deleted right after (:func:`scratch_dir`). tftag's models hold only mirrored
  (on-write) variables, whose saving runs no collective, but a sync-on-read variable would make
  a chief-only save hang; saving everywhere is the pattern that works for both. On resume every
  worker restores the chief's last checkpoint (a file system shared by the hosts) and reads the
  chief's history.json; a worker that restored another epoch than the chief (it does not see
  the chief's run directory) stops every worker with an error (:func:`check_restored_epoch`)
  instead of running other epochs than the others.
* End: after the chief's test evaluation and export every worker meets the others at
  :func:`barrier`: a worker that exits stops sending heartbeats, and TensorFlow's coordination
  service then aborts the collectives of the workers still running.

BatchNorm: with more than one replica in sync, every ``BatchNormalization`` layer is switched
to ``synchronized=True`` (:func:`synchronize_batch_norm`): the batch statistics are those of
the global batch, as in one process, not of each replica's slice. The flag is read when the
layer is called and creates no variable, so saved weights load into a normally built model.
Rounding still differs: one process computes mean((x - mean)²), synchronized BatchNorm
E[x²] - E[x]² from all-reduced sums. Dropout: each replica draws the masks of its own slice
from its copy of the seed generator (equal copies: the slices get equal masks), so with
dropout > 0 (musicnn) the masks, and the losses, differ from one process's.

Measured (tests/runs/test_distributed.py: VGG width 0.05, no dropout, 36 training clips, global
batch 8 = 5 steps per epoch, 2 CPU workers on one 2-core machine vs one process): the epoch
losses differ by 3.2e-8 and 2.2e-8 (relative; float32 rounding), the validation and test
ROC-AUC not at all; the test allows 1e-5. Without synchronized BatchNorm they differ by 1e-3
and 5e-2. Speed: each step all-reduces the gradients and, per BatchNorm layer, three statistics
tensors; on one 2-core machine the workers' first epoch (tracing, collective set-up) takes
about 20 s against 5 s for one process, later epochs 1.5 s against 0.1 s: the local launcher is
for trying the set-up out, not for speed.

Nothing here imports TensorFlow at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator, Sequence

from absl import logging

from tftag.runs import determinism

TF_CONFIG = "TF_CONFIG"
EXPECTED = ('TF_CONFIG={"cluster": {"worker": ["host:port", ...]}, '
            '"task": {"type": "worker", "index": i}}')
JOBS = ("chief", "worker")

_PROCESS: dict[str, Any] = {}  # "task" and "strategy" of this process, once made


@dataclasses.dataclass(frozen=True)
class Task:
    """This process's place in the cluster of $TF_CONFIG.

    Attributes:
      cluster: job name ("chief", "worker") -> its "host:port" addresses.
      type: this task's job.
      index: this task's index in its job.
    """

    cluster: dict[str, tuple[str, ...]]
    type: str
    index: int

    @property
    def num_workers(self) -> int:
        """Training processes in the cluster (chief included)."""
        return sum(len(a) for a in self.cluster.values())

    @property
    def is_chief(self) -> bool:
        """The chief task, else worker 0 of a cluster without one."""
        return self.type == "chief" or (self.type == "worker" and self.index == 0
                                        and "chief" not in self.cluster)

    @property
    def name(self) -> str:
        """E.g. "worker 1" or "chief 0"."""
        return f"{self.type} {self.index}"


def _bad(what: str) -> ValueError:
    return ValueError(f"--strategy=multi_worker needs {EXPECTED}: {what}")


def parse_tf_config(text: str | None) -> Task:
    """The :class:`Task` of a $TF_CONFIG value.

    Raises:
      ValueError: one line naming TF_CONFIG, what it should be and what is wrong, if ``text``
        is empty, not JSON, or lacks a cluster of chief/worker "host:port" lists and a task
        (type, index) in it.
    """
    if not text or not text.strip():
        raise _bad("$TF_CONFIG is not set")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(f"$TF_CONFIG is not JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(config, dict):
        raise _bad("$TF_CONFIG is not a JSON object")
    cluster = config.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise _bad('no "cluster" object of jobs')
    unknown = sorted(set(cluster) - set(JOBS))
    if unknown:
        raise _bad(f"cluster job(s) {', '.join(unknown)}: only chief and worker train")
    addresses: dict[str, tuple[str, ...]] = {}
    for job, hosts in cluster.items():
        if (not isinstance(hosts, list) or not hosts
                or not all(isinstance(h, str) and h.rpartition(":")[2].isdigit() for h in hosts)):
            raise _bad(f'cluster "{job}" must be a non-empty list of "host:port", got '
                       f"{json.dumps(hosts)}")
        addresses[job] = tuple(hosts)
    if len(addresses.get("chief", ())) > 1:
        raise _bad('a cluster has at most one "chief"')
    everyone = [h for hosts in addresses.values() for h in hosts]
    if len(set(everyone)) != len(everyone):
        raise _bad("an address appears twice in the cluster")
    task = config.get("task")
    if not isinstance(task, dict):
        raise _bad('no "task" object')
    task_type, index = task.get("type"), task.get("index")
    if task_type not in addresses:
        raise _bad(f'task "type" {json.dumps(task_type)} is not a job of the cluster '
                   f"({', '.join(addresses)})")
    if not isinstance(index, int) or isinstance(index, bool) or not (
            0 <= index < len(addresses[task_type])):
        raise _bad(f'task "index" {json.dumps(index)} is not an index of the '
                   f"{len(addresses[task_type])} {task_type} address(es)")
    return Task(addresses, task_type, index)


def setup(train_config, uses_strategy: bool, dataset_dir: str | None) -> dict[str, Any]:
    """The entry point's start-up, before any other TensorFlow op: seeds and thread pools
    (:func:`tftag.runs.determinism.configure`), then, for ``--strategy=multi_worker`` in a mode that
    uses the strategy (``--mode=train``), the strategy of $TF_CONFIG.

    Args:
      train_config: the experiment's :class:`tftag.experiment.TrainConfig`.
      uses_strategy: whether the mode trains under the strategy (the entry point's table of
        modes says; the others ignore it).
      dataset_dir: the experiment's ``data.dataset_dir`` (None: extracted into the run dir).

    Returns:
      The settings of :func:`tftag.runs.determinism.configure`.

    Raises:
      ValueError: multi_worker without a finished ``dataset_dir``, or with a missing or
        malformed $TF_CONFIG.
    """
    multi = train_config.strategy == "multi_worker" and uses_strategy
    if multi:
        parse_tf_config(os.environ.get(TF_CONFIG))  # a bad TF_CONFIG fails before TensorFlow
        if not dataset_dir:
            raise ValueError("--strategy=multi_worker needs --dataset_dir (a finished dataset: "
                             "N workers must not extract into one run directory at once)")
    settings = determinism.configure(train_config.seed, train_config.deterministic)
    if multi:
        strategy()
    return settings


def strategy():
    """This process's ``MultiWorkerMirroredStrategy`` from $TF_CONFIG, made on the first call.

    Raises:
      ValueError: $TF_CONFIG is missing or malformed (:func:`parse_tf_config`).
      RuntimeError: TensorFlow ran an op before the first call (see :func:`setup`).
    """
    if "strategy" not in _PROCESS:
        task = parse_tf_config(os.environ.get(TF_CONFIG))
        import tensorflow as tf

        try:
            made = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as e:
            raise RuntimeError(f"MultiWorkerMirroredStrategy must be made before the first "
                               f"TensorFlow op of the process (tftag.runs.distributed.setup): {e}"
                               ) from e
        _PROCESS.update(task=task, strategy=made)
        logging.info("multi-worker: %s of %d workers (%s), %d replicas in sync", task.name,
                     task.num_workers, "the chief" if task.is_chief else "not the chief",
                     made.num_replicas_in_sync)
    return _PROCESS["strategy"]


def task() -> Task | None:
    """This process's :class:`Task` once :func:`strategy` made the strategy, else None."""
    return _PROCESS.get("task")


def is_chief() -> bool:
    """Whether this process writes the run's files: True unless it is a non-chief worker."""
    t = task()
    return t is None or t.is_chief


def is_multi_worker(strategy_) -> bool:
    """Whether ``strategy_`` is a MultiWorkerMirroredStrategy."""
    import tensorflow as tf

    return isinstance(strategy_, tf.distribute.MultiWorkerMirroredStrategy)


def worker_sum(strategy_) -> Callable[[Sequence[float]], list[float]]:
    """A function that returns, on every worker, the sum over the workers of their values
    (each worker's once, however many replicas it has); the identity for other strategies.

    A collective: every worker must call it at the same point. The values travel as float64
    through an all-reduce in which only each worker's first replica contributes, so a sum with
    one non-zero term (:func:`chief_broadcast`) is exact.
    """
    if not is_multi_worker(strategy_):
        return list
    import tensorflow as tf

    local_replicas = len(strategy_.extended.worker_devices)

    def first_replica_only(values):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return tf.where(replica % local_replicas == 0, values, tf.zeros_like(values))

    @tf.function
    def total(values):
        return strategy_.reduce(tf.distribute.ReduceOp.SUM,
                                strategy_.run(first_replica_only, args=(values,)), axis=None)

    return lambda values: total(tf.constant(list(values), tf.float64)).numpy().tolist()


def chief_broadcast(strategy_) -> Callable[[Sequence[float]], list[float]]:
    """A function that returns the chief's values on every worker (the other workers'
    arguments are ignored); the identity for other strategies. A collective (see
    :func:`worker_sum`)."""
    total = worker_sum(strategy_)
    chief = strategy_.extended.should_checkpoint
    return lambda values: total(values if chief else [0.0] * len(values))


def check_restored_epoch(strategy_, epoch: int, checkpoint_dir: str) -> None:
    """Raises on every worker if any restored another epoch than the chief (a collective).

    Raises:
      ValueError: a worker did not see the chief's checkpoints (no file system shared by
        the hosts): it would run other epochs than the others, and the collectives would hang.
    """
    if not is_multi_worker(strategy_):
        return
    (chief_epoch,) = chief_broadcast(strategy_)([float(epoch)])
    (differ,) = worker_sum(strategy_)([float(int(chief_epoch) != epoch)])
    if differ:
        raise ValueError(f"--strategy=multi_worker: {int(differ)} worker(s) restored another "
                         f"epoch than the chief's {int(chief_epoch)} from {checkpoint_dir} "
                         f"(this one: {epoch}): every worker must read the chief's run directory "
                         "(a file system shared by the hosts)")


def barrier() -> None:
    """Waits until every worker of this process's multi-worker strategy gets here (no-op
    without one)."""
    if "strategy" in _PROCESS:
        chief_broadcast(_PROCESS["strategy"])([0.0])


def shard_by_data(dataset):
    """``dataset`` (of global batches) with ``AutoShardPolicy.DATA``: under a multi-worker
    strategy, ``experimental_distribute_dataset`` then gives each worker its slice of every
    global batch (never whole files: FILE sharding would change which examples make a step).
    Other strategies ignore the option."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


@contextlib.contextmanager
def scratch_dir() -> Iterator[str]:
    """A private temporary directory outside the run directory, deleted on exit: where a
    non-chief worker saves the checkpoint it must save but nobody reads."""
    path = tempfile.mkdtemp(prefix="tftag-worker-checkpoint-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _layers(layer) -> Iterator[Any]:
    for sub in getattr(layer, "layers", ()):
        yield sub
        yield from _layers(sub)


def synchronize_batch_norm(model) -> int:
    """Sets ``synchronized=True`` on every ``BatchNormalization`` layer of ``model`` (nested
    models included): batch statistics over the global batch of all replicas (TensorFlow
    backend). Returns how many layers were switched.

    Keras reads the attribute in ``call`` (``BatchNormalization._moments`` passes it to
    ``ops.moments``), so switching a built model works before its training step is traced;
    it creates no variable, so the weights keep their layout.
    """
    import keras

    switched = 0
    for layer in _layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            switched += 1
    return switched
