"""Compute cost of a model: GMACs from the TF profiler and from layer shapes, parameters, latency.

MAC convention (tests/fixtures/paper-notes.md §4): one example; convolutions = output positions × kernel volume
(kh·kw·C_in·C_out), dense = in·out; BatchNorm, activations, pooling and biases are not counted.
The TF profiler counts 2 float ops per multiply-add of Conv2D and MatMul, so MACs = FLOPs / 2.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time

import numpy as np
import tensorflow as tf

_MAC_OPS = ["Conv2D", "Conv3D", "MatMul", "BatchMatMulV2", "DepthwiseConv2dNative"]
# Output tags of a profiled model without a dataset: MTAT's top 50, the paper's output layer.
DEFAULT_N_TAGS = 50


def _concrete(model, batch: int):
    spec = tf.TensorSpec([batch, *model.input_shape[1:]], tf.float32)

    @tf.autograph.experimental.do_not_convert
    def forward(x):
        return model(x, training=False)

    return tf.function(forward).get_concrete_function(spec)


def gmacs(model, batch: int = 1) -> float:
    """GMACs per example from the TF profiler's float-op count of the traced inference graph.

    Only multiply-accumulate ops (Conv2D, MatMul, ...) are counted; MACs = FLOPs / 2.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tensorflow.python.profiler import model_analyzer, option_builder

    graph = convert_variables_to_constants_v2(_concrete(model, batch)).graph
    options = (option_builder.ProfileOptionBuilder(
        option_builder.ProfileOptionBuilder.float_operation()).with_empty_output().build())
    options["account_type_regexes"] = _MAC_OPS
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        flops = model_analyzer.profile(graph, options=options).total_float_ops
    return flops / 2 / batch / 1e9


def analytic_macs(model) -> int:
    """MACs per example from layer shapes: conv = output positions × kernel volume; dense = in·out."""
    total = 0
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None or not layer.weights:
            continue
        positions = int(np.prod(layer.output.shape[1:-1])) if len(layer.output.shape) > 2 else 1
        total += positions * int(np.prod(kernel.shape))
    return total


def param_count(model) -> int:
    """All parameters (trainable and BatchNorm statistics)."""
    return int(model.count_params())


def latency_ms(model, batch: int = 1, runs: int = 10, warmup: int = 2, seed: int = 0) -> float:
    """Median wall time in ms of ``runs`` inference calls on random input of ``batch`` examples."""
    forward = _concrete(model, batch)
    x = tf.random.stateless_normal([batch, *model.input_shape[1:]], seed=[seed, 0])
    for _ in range(warmup):
        forward(x).numpy()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        forward(x).numpy()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def profile_model(model, latency_runs: int = 10, batches: tuple[int, ...] = (1, 32)) -> dict:
    """GMACs (profiler and analytic), parameters and median latency at each batch size."""
    result = {
        "gmacs_profiler": round(gmacs(model), 4),
        "gmacs_analytic": round(analytic_macs(model) / 1e9, 4),
        "params": param_count(model),
    }
    for b in batches:
        if latency_runs > 0:
            result[f"latency_ms_b{b}"] = round(latency_ms(model, b, latency_runs), 2)
    return result


def trace_training(model, logdir: str, steps: int = 5, batch: int = 4, n_tags: int | None = None) -> str:
    """Captures a TensorBoard profiler trace of ``steps`` training steps on random data."""
    n_tags = n_tags or model.output_shape[-1]
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
                  loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
    x = tf.random.stateless_normal([batch, *model.input_shape[1:]], seed=[1, 0])
    y = tf.cast(tf.random.stateless_uniform([batch, n_tags], seed=[2, 0]) > 0.8, tf.float32)
    model.train_on_batch(x, y)  # build and compile outside the trace
    tf.profiler.experimental.start(logdir)
    try:
        for _ in range(steps):
            model.train_on_batch(x, y)
    finally:
        tf.profiler.experimental.stop()
    return logdir



def format_table(rows: list[dict]) -> str:
    """Right-aligned plain-text table of dict rows (columns of the first row)."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = [" ".join(f"{c:>{widths[c]}}" for c in columns)]
    lines += [" ".join(f"{str(r[c]):>{widths[c]}}" for c in columns) for r in rows]
    return "\n".join(lines)


def run_profile(model_config, mel_configs, n_tags: int = DEFAULT_N_TAGS, latency_runs: int = 5,
                batches: tuple[int, ...] = (1, 32), out_dir: str | None = None,
                trace_steps: int = 0) -> dict:
    """``--mode=profile``: GMACs, parameters and latency of a model at every resolution.

    Compression does not change the cost, so there is one row per (sr, n_mels, hop factor).
    Prints the table; with ``out_dir`` also writes ``profile.json``, ``profile.csv`` and
    TensorBoard notes (``tb/profile``), and ``trace_steps`` > 0 records a profiler trace of that
    many training steps of the first resolution into ``tb/trace``.

    Returns:
      {"model", "rows", and the paths written}.
    """
    import dataclasses
    import json
    import os

    import keras
    from absl import logging

    from tftag import models
    from tftag.runs import runfiles

    seen, resolutions = set(), []
    for c in mel_configs:
        if (c.sr, c.n_mels, c.hop_factor) not in seen:
            seen.add((c.sr, c.n_mels, c.hop_factor))
            resolutions.append(c)
    rows = []
    for i, config in enumerate(resolutions, start=1):
        model = models.build(model_config, config, n_tags)
        row = {"config": config.name.rsplit("-", 1)[0], "n_frames": model_config.n_frames(config),
               "n_mels": config.n_mels}
        row.update(profile_model(model, latency_runs, tuple(batches)))
        rows.append(row)
        logging.info("[%d/%d] %s", i, len(resolutions), json.dumps(row))
        if out_dir and trace_steps and i == 1:
            trace_training(model, os.path.join(out_dir, "tb", "trace"), trace_steps)
        keras.backend.clear_session()
    table = format_table(rows)
    mc = model_config
    print(f"model {mc.name} (width {mc.width}, preset {mc.preset}), {n_tags} tags, MACs per example")
    print(table)
    summary = {"model": mc.name, "rows": len(rows)}
    if out_dir:
        paths = {"profile_json": os.path.join(out_dir, "profile.json"),
                 "profile_csv": os.path.join(out_dir, "profile.csv")}
        runfiles.write_json_atomic(paths["profile_json"],
                                   {"model": dataclasses.asdict(mc), "rows": rows})
        runfiles.write_csv_atomic(paths["profile_csv"], rows, list(rows[0]))
        runfiles.tensorboard_notes(os.path.join(out_dir, "tb", "profile"),
                                   texts={"profile": table})
        summary.update(paths)
    return summary


def run(experiment, latency_runs: int = 5, batches: tuple[int, ...] = (1, 32),
        trace_steps: int = 0) -> dict:
    """``--mode=profile``: :func:`run_profile` of the experiment's model at its resolutions,
    with as many output tags as its ``--dataset_dir`` has (else :data:`DEFAULT_N_TAGS`); files
    into its run directory if it has one.

    Raises:
      ValueError: ``trace_steps`` without a run directory to write the trace into.
    """
    if trace_steps and not experiment.run_dir:
        raise ValueError("--profile_trace writes into --run_dir: give one")
    n_tags = DEFAULT_N_TAGS
    if experiment.data.dataset_dir:
        from tftag.storage import data

        n_tags = data.load_dataset_info(experiment.data.dataset_dir).n_tags
    return run_profile(experiment.model, experiment.mel_configs, n_tags, latency_runs, batches,
                       experiment.run_dir, trace_steps)
