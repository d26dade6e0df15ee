"""The Beam runner flags the pipelines share (``pipelines/extract.py``, ``pipelines/tag.py``).

``--runner`` (DirectRunner and DaskRunner run here; any other name is handed to Beam with
``--pipeline_options``), the DirectRunner's workers and mode, the Dask scheduler or a
LocalCluster (:func:`tftag.extraction.pipeline.dask_cluster`), and :func:`beam_options`: the
pipeline options of the flags, inside the Dask cluster's lifetime.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from absl import app, flags

from tftag.extraction import pipeline

FLAGS = flags.FLAGS


def define_runner_flags(example_options: str) -> None:
    """Defines --runner, the DirectRunner, Dask and --pipeline_options flags (``example_options``:
    the example in --pipeline_options's help)."""
    flags.DEFINE_string("runner", "DirectRunner", "Beam runner: DirectRunner (in-process "
                        "FnApiRunner) or DaskRunner (a dask.distributed cluster) run here; "
                        "DataflowRunner, FlinkRunner, SparkRunner, PortableRunner are passed to "
                        "Beam with --pipeline_options (BUILD.md).")
    flags.DEFINE_string("dask_address", None, "DaskRunner: address of a running Dask scheduler "
                        "(tcp://host:8786); absent: a LocalCluster of --dask_workers processes.")
    flags.DEFINE_integer("dask_workers", 2, "DaskRunner without --dask_address: worker "
                         "processes of the LocalCluster (one thread each).", lower_bound=1)
    flags.DEFINE_float("dask_connect_timeout", 30.0, "DaskRunner: seconds to wait for the "
                       "scheduler at --dask_address.", lower_bound=0.1)
    flags.DEFINE_integer("direct_num_workers", 1, "DirectRunner: parallel workers (0 = all cores).",
                         lower_bound=0)
    flags.DEFINE_enum("direct_running_mode", "auto", list(pipeline.RUNNING_MODES), "DirectRunner mode; auto = "
                      "multi_processing when direct_num_workers != 1, else in_memory.")
    flags.DEFINE_list("pipeline_options", [], "Extra Beam pipeline options, comma-separated, e.g. "
                      f"--pipeline_options={example_options}.")


@contextlib.contextmanager
def beam_options() -> Iterator[tuple[object, dict]]:
    """(Beam pipeline options, the runner's record beside its name) of the flags; with
    --runner=DaskRunner, a LocalCluster started here lives as long as the block.

    Raises:
      app.UsageError: --dask_address without --runner=DaskRunner.
      ValueError: no Dask scheduler answers at --dask_address.
    """
    dask = pipeline.LOCAL_RUNNERS.get(FLAGS.runner) == "DaskRunner"
    if FLAGS.dask_address and not dask:
        raise app.UsageError(f"--dask_address is for --runner=DaskRunner, not --runner={FLAGS.runner}")
    if dask:
        cluster = pipeline.dask_cluster(FLAGS.dask_address, FLAGS.dask_workers,
                                        FLAGS.dask_connect_timeout)
        runner_info = ({"address": FLAGS.dask_address} if FLAGS.dask_address
                       else {"local_workers": FLAGS.dask_workers})
    else:
        cluster, runner_info = contextlib.nullcontext(None), {}
    with cluster as address:
        yield pipeline.pipeline_options(FLAGS.runner, FLAGS.direct_num_workers,
                                        FLAGS.direct_running_mode, FLAGS.pipeline_options,
                                        dask_address=address), runner_info
