r"""Starts a keras-tuner chief and N tuner workers of one ``--mode=how_low`` search on this machine.

    python -m pipelines.launch_tuner_workers --num_workers=2 --run_dir=runs/how_low -- \
        --flagfile=configs/how_low_quick.flags --dataset_dir=runs/quickstart/dataset

keras-tuner's own distributed mode (:mod:`tftag.search.tuner`): every process runs the same
``python -m tftag.main`` with the flags after ``--``, then ``--mode=how_low
--run_dir=<--run_dir>`` (last, so they win over a flagfile), and differs only in its
environment: ``KERASTUNER_TUNER_ID`` (``chief`` for worker 0, ``tuner0`` .. ``tuner<N-1>`` for
workers 1..N), ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` (``--oracle_ip``, and
``--oracle_port`` or a free port). The chief measures the costs, serves the oracle and, once
every trial has finished, computes the front, retrains, tests and exports the answer and writes
the run's record; the workers ask it for trials and train them into
``<run_dir>/trials/<trial_id>/`` (a shared run directory; on several machines it must be
mounted at the same path everywhere: BUILD.md "Past one machine"). Give a finished
``--dataset_dir``. Logs, echo, failure handling and resuming (rerun the same command) are those
of :mod:`pipelines.launch_local_workers`.
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import flags

from pipelines import launch_local_workers as local
from tftag import cli

FLAGS = flags.FLAGS
APPENDED = ("--mode=how_low",)  # then --run_dir


def define_flags() -> None:
    """The launcher's flags: those of :mod:`pipelines.launch_local_workers` (``--num_workers``
    counts the tuner workers, beside the chief) plus the oracle's address."""
    local.define_flags()
    flags.DEFINE_string("oracle_ip", "localhost", "Where the chief serves the oracle "
                        "(KERASTUNER_ORACLE_IP).")
    flags.DEFINE_integer("oracle_port", 0, "Its port (KERASTUNER_ORACLE_PORT); 0 = a free one.",
                         lower_bound=0)


def tuner_env(index: int, ip: str, port: int) -> dict[str, str]:
    """keras-tuner's environment of process ``index``: 0 is the chief, i >= 1 tuner ``i - 1``."""
    return {"KERASTUNER_TUNER_ID": "chief" if index == 0 else f"tuner{index - 1}",
            "KERASTUNER_ORACLE_IP": ip, "KERASTUNER_ORACLE_PORT": str(port)}


def start_tuners(num_workers: int, args: Sequence[str], run_dir: str, log_dir: str,
                 echo: str = "all", ip: str = "localhost", port: int = 0) -> list[local.Worker]:
    """Starts the chief and ``num_workers`` tuner workers; their output goes to ``log_dir``."""
    os.makedirs(log_dir, exist_ok=True)
    port = port or local.free_ports(1)[0]
    command = local.worker_command(args, run_dir, APPENDED)
    workers = []
    for i in range(num_workers + 1):
        env = tuner_env(i, ip, port)
        worker = local.start_process(i, command, env, log_dir, echo)
        workers.append(worker)
        print(f"started {env['KERASTUNER_TUNER_ID']}: pid {worker.process.pid}, oracle "
              f"{ip}:{port}, log {worker.log_path}", flush=True)
    return workers


def main(argv: list[str]) -> None:
    log_dir = local.log_dir_of(FLAGS.run_dir)
    local.exit_on_sigterm()
    local.supervise(start_tuners(FLAGS.num_workers, argv[1:], FLAGS.run_dir, log_dir,
                                 FLAGS.echo, FLAGS.oracle_ip, FLAGS.oracle_port), FLAGS.run_dir)


if __name__ == "__main__":
    define_flags()
    cli.run(main, pass_through=True)
