"""Bit-for-bit repeatable seeded runs on one machine: seeds, op determinism and fixed thread pools.

Why seeds and ``tf.config.experimental.enable_op_determinism()`` are not enough on a CPU: the
float32 results of TensorFlow's Eigen kernels (the convolutions are tensor contractions whose
blocking along the summed dimension is chosen from the size of the intra-op thread pool) and of
its oneDNN kernels depend on how many threads that pool has. By default TensorFlow sizes the
pool from the CPUs the process may run on (its affinity mask, i.e. ``taskset``, a job
scheduler's or a container's cpuset) or from ``TF_NUM_INTRAOP_THREADS``, so the same seed on the
same machine gives runs that differ in the 7th-8th digit of the first epoch's loss, a gap that
grows with every step (up to points of ROC-AUC after a few epochs). Op determinism only
promises equal results for the *same* hardware configuration, and it leaves the pool size
alone. :func:`configure` therefore fixes both pools to a number that does not depend on how the
process was started (:func:`default_threads`).

``tf.data`` order and random patch offsets are made deterministic by
:func:`tftag.storage.data.make_dataset` itself whenever it is given a seed (ordered interleave and map,
stateless offsets keyed by (seed, element index)).

Call order (the entry point's duty):

* :func:`configure` must run before the first TensorFlow op of the process (TensorFlow creates
  its thread pools then and cannot resize them later). In ``tftag.main`` that is the top of
  ``main()``, before anything writes a summary or reads a dataset; importing TensorFlow or tftag
  modules first is fine. A later call with the same thread count (e.g. from ``train.train`` for
  every run of a sweep) only reseeds. Called too late, it cannot fix the pools: it logs a
  warning and reports ``"threads_fixed": False``.
* Nothing has to be set before ``import tensorflow`` for repeatability on one machine. The one
  switch TensorFlow reads at import is ``TF_ENABLE_ONEDNN_OPTS`` (oneDNN kernels; TensorFlow's
  default is on for CPUs with AVX-512/AMX, off otherwise; importing ``tftag`` turns it on unless
  the variable is set — 3x faster VGG-CNN training on AVX2: :mod:`tftag`): different values give
  different (each repeatable) numbers, so it is recorded here. To change it, export it before
  starting Python.

Speed: with the pools fixed at the machine's CPU count, an unconstrained run uses the threads
TensorFlow would pick anyway (same numbers as an unpinned run on the whole machine), and op
determinism costs no measurable time for tftag's models on CPU: on a 2-core AVX2 machine two
VGG (width 0.125) training steps and one forward pass on 16 clips of 96 bands × 1819 frames
took about 9 CPU-seconds with and without it (medians 9.1 and 9.0 s, within the ±5 % noise).
The ordered ``tf.data`` pipeline costs about 0.01 s more per batch of 16, hidden by
prefetching. A run confined to fewer CPUs than the pools have threads is oversubscribed rather
than given fewer threads; on one CPU, 2 threads against 1 cost no measurable CPU time.
Several processes on few cores are another matter: each gets :func:`default_threads` threads per
pool, ``TF_NUM_INTRAOP_THREADS`` is ignored (with a warning), and oversubscribed Eigen pools spin.
Give each of N processes ``TFTAG_NUM_THREADS`` = cores / N.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from absl import logging

THREADS_ENV = "TFTAG_NUM_THREADS"


def default_threads() -> int:
    """Threads of each TensorFlow pool for repeatable runs.

    ``$TFTAG_NUM_THREADS`` if set, else ``os.cpu_count()``: the machine's CPUs, which unlike
    TensorFlow's own default do not depend on the process's CPU affinity. Set the variable to
    the cpuset size in a container confined to fewer CPUs than its host, or to the same number
    on several machines to remove the thread count from the differences between them.

    Raises:
      ValueError: if ``$TFTAG_NUM_THREADS`` is not a positive integer.
    """
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"${THREADS_ENV} must be a positive integer, got {value!r}")
        return int(value)
    return os.cpu_count() or 1


def _tf_default_threads(env: str) -> int:
    """The pool size TensorFlow picks itself (for reporting a pool we could not fix)."""
    value = os.environ.get(env, "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def onednn_enabled() -> bool | None:
    """Whether TensorFlow's oneDNN custom kernels are on in this process (None: unknown)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # pragma: no cover - private module moved
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def _fix_threads(threads: int) -> tuple[int, int, bool]:
    """Sets both pools to ``threads``; returns (intra, inter, whether both are fixed)."""
    import tensorflow as tf

    setters = (
        (tf.config.threading.set_intra_op_parallelism_threads,
         tf.config.threading.get_intra_op_parallelism_threads, "TF_NUM_INTRAOP_THREADS"),
        (tf.config.threading.set_inter_op_parallelism_threads,
         tf.config.threading.get_inter_op_parallelism_threads, "TF_NUM_INTEROP_THREADS"),
    )
    actual, fixed = [], True
    for set_threads, get_threads, env in setters:
        try:
            set_threads(threads)  # a no-op when already set to this value
            actual.append(threads)
        except RuntimeError:  # the runtime is initialized: its pools keep their size
            current = get_threads() or _tf_default_threads(env)
            actual.append(current)
            fixed = fixed and current == threads
    ignored = {env: os.environ[env] for _, _, env in setters
               if os.environ.get(env, "").strip() not in ("", str(threads))}
    if ignored:  # a user who set them expects them to hold: several processes on few cores
        logging.warning(
            "determinism: %s ignored: repeatable runs fix both pools to %d threads; set $%s "
            "to change that (e.g. %s=1 for one process per core)",
            ", ".join(f"{k}={v}" for k, v in ignored.items()), threads, THREADS_ENV, THREADS_ENV)
    if not fixed:
        logging.warning(
            "determinism: TensorFlow's thread pools were created before configure() (intra-op "
            "%d, inter-op %d threads, not %d): results can change with the CPUs the process is "
            "allowed to use; call tftag.runs.determinism.configure before the first TensorFlow op",
            actual[0], actual[1], threads)
    return actual[0], actual[1], fixed


def configure(seed: int, deterministic: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Seeds every generator and, if ``deterministic``, makes this process's runs repeatable.

    Seeds Python's ``random``, NumPy's global generator, TensorFlow's global seed and Keras's
    seed generator (``keras.utils.set_random_seed``). With ``deterministic``, also enables
    TensorFlow op determinism and fixes the intra-op and inter-op thread pools to ``threads``.
    Idempotent: call it before the first TensorFlow op, and again (same ``threads``) to reseed.

    Args:
      seed: the run's seed.
      deterministic: make the run bit-for-bit repeatable on this machine.
      threads: size of both thread pools; default :func:`default_threads`. Ignored unless
        ``deterministic``.

    Returns:
      The settings in force, JSON-serializable, to record in the run directory: seed,
      deterministic, op_determinism, intra_op_threads, inter_op_threads, threads_fixed
      (False if the pools existed already with another size), onednn, cpu_count,
      affinity_cpus, tensorflow version and the relevant environment variables.

    Raises:
      ValueError: if ``threads`` is given and not positive.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    import tensorflow as tf

    if deterministic:
        intra, inter, fixed = _fix_threads(threads or default_threads())
        tf.config.experimental.enable_op_determinism()
    else:
        intra = tf.config.threading.get_intra_op_parallelism_threads() or _tf_default_threads(
            "TF_NUM_INTRAOP_THREADS")
        inter = tf.config.threading.get_inter_op_parallelism_threads() or _tf_default_threads(
            "TF_NUM_INTEROP_THREADS")
        fixed = False
    import keras  # after the pools are fixed: nothing may initialize the runtime before

    keras.utils.set_random_seed(seed)  # Python, NumPy, TensorFlow and Keras seeds
    try:
        from tensorflow.python.framework import config as tf_config

        op_determinism = bool(tf_config.is_op_determinism_enabled())
    except (ImportError, AttributeError):  # pragma: no cover - private API moved
        op_determinism = deterministic
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "seed": int(seed),
        "deterministic": bool(deterministic),
        "op_determinism": op_determinism,
        "intra_op_threads": int(intra),
        "inter_op_threads": int(inter),
        "threads_fixed": bool(fixed),
        "onednn": onednn_enabled(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": affinity,
        "tensorflow": tf.__version__,
        "python": sys.version.split()[0],
        "env": {k: os.environ[k] for k in (THREADS_ENV, "TF_ENABLE_ONEDNN_OPTS",
                                            "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                                            "OMP_NUM_THREADS") if k in os.environ},
    }
