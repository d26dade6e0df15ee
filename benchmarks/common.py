"""Helpers shared by the benchmarks."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Instruction-set extensions that decide which CPU kernels TensorFlow runs (oneDNN's JIT kernels
# need AVX-512 or AMX for most of their speed; an AVX2-only CPU runs Eigen's): the /proc/cpuinfo
# flags a benchmark's figures depend on.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """The shortest wall time in seconds of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_identity(cpuinfo: str) -> dict[str, Any]:
    """Model name, family/model numbers and :data:`ISA_FLAGS` present, from /proc/cpuinfo text.

    The model name alone does not tell machines apart (a VM may say only "AMD EPYC"); family and
    model do (e.g. AMD family 23 model 1: Zen 1, AVX2 without AVX-512).
    """
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:  # the first processor's block is enough
                break
            continue
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name") or platform.processor() or None,
            "cpu_family": fields.get("cpu family"), "cpu_model_number": fields.get("model"),
            "isa": [f for f in ISA_FLAGS if f in flags]}


def machine_info() -> dict[str, Any]:
    """CPU (model, family, instruction sets), memory and library versions of this machine."""
    import tftag  # first: it sets TensorFlow's oneDNN switch (tests/test_import_order.py)

    import numpy as np
    import soundfile
    import tensorflow as tf

    cpuinfo = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpuinfo = f.read()
    mem = None
    if os.path.exists("/proc/meminfo"):
        for line in open("/proc/meminfo", encoding="utf-8"):
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) * 1024 / 2**30, 1)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        **cpu_identity(cpuinfo), "memory_gib": mem,
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {"tftag": tftag.__version__, "tensorflow": tf.__version__,
                     "keras": _version("keras"), "numpy": np.__version__,
                     "essentia": _version("essentia-tensorflow") or _version("essentia"),
                     "soundfile": soundfile.__version__,
                     "libsndfile": soundfile.__libsndfile_version__},
        "git_commit": commit,
        "tf_threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                       "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
    }
