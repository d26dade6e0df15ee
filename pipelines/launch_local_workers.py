r"""Starts N local workers of one multi-worker training run (``--strategy=multi_worker``).

    python -m pipelines.launch_local_workers --num_workers=2 --run_dir=runs/multi_worker -- \
        --flagfile=configs/multi_worker_local.flags --epochs=4

A try-out of :mod:`tftag.runs.distributed` on one machine (a real cluster starts one worker per host
with its own ``TF_CONFIG``). Everything after ``--`` goes to every worker's
``python -m tftag.main``, followed by ``--mode=train --strategy=multi_worker
--run_dir=<--run_dir>`` (last, so they win over a flagfile). Give a finished ``--dataset_dir``:
the workers must not extract into one run directory at once.

The launcher picks ``--num_workers`` free localhost ports, gives worker i the ``TF_CONFIG``
``{"cluster": {"worker": ["localhost:P0", ...]}, "task": {"type": "worker", "index": i}}``
(worker 0 is the chief), starts them and writes each one's stdout and stderr to
``<worker_log_dir>/worker-<i>.log`` (default ``<run_dir>/workers/``, appended with a header
per launch: the launcher owns these files; of the workers only the chief writes the run
directory). It echoes their lines prefixed ``[worker i]`` (``--echo``) and waits. If a worker
fails it stops the others and exits 1 naming the worker and its log; it exits 0 when every
worker exits 0. Rerun the same command to resume: every worker restores the chief's last
checkpoint. (``--worker_log_dir``, not ``--log_dir``: absl's logging owns that name.)

Each worker fixes its TensorFlow thread pools to ``$TFTAG_NUM_THREADS`` or the machine's CPU
count (:mod:`tftag.runs.determinism`), so N local workers oversubscribe the CPUs N times: fine for a
try-out; set ``TFTAG_NUM_THREADS`` to share them out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Sequence

from absl import app, flags

from tftag import cli

FLAGS = flags.FLAGS
APPENDED = ("--mode=train", "--strategy=multi_worker")  # then --run_dir
POLL_SECONDS = 0.2
STOP_SECONDS = 10.0  # a stopped worker's grace before it is killed
TAIL_LINES = 5


def define_flags() -> None:
    """Defines the launcher's flags (only when it runs as the entry point)."""
    flags.DEFINE_integer("num_workers", 2, "Worker processes to start.", lower_bound=1)
    flags.DEFINE_string("run_dir", None, "The run directory of the training run (passed to "
                        "every worker, after the flags given after --).")
    flags.DEFINE_string("worker_log_dir", None, "Where worker-<i>.log go (default "
                        "<run_dir>/workers).")
    flags.DEFINE_enum("echo", "all", ["all", "chief", "none"], "Workers whose log lines are also "
                      "printed, prefixed [worker i].")


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on localhost now (the OS's picks)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("localhost", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: Sequence[int], index: int) -> str:
    """The TF_CONFIG of local worker ``index`` in a cluster of workers on ``ports``."""
    return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def worker_command(args: Sequence[str], run_dir: str,
                   appended: Sequence[str] = APPENDED) -> list[str]:
    """``python -m tftag.main`` with ``args``, then the flags every worker must have
    (``appended``, then ``--run_dir``: last, so they win over a flagfile)."""
    return [sys.executable, "-m", "tftag.main", *args, *appended, f"--run_dir={run_dir}"]


@dataclasses.dataclass
class Worker:
    """One started worker: its index, process, log and the thread copying its output."""

    index: int
    process: subprocess.Popen
    log_path: str
    pump: threading.Thread

    @property
    def name(self) -> str:
        return f"worker {self.index}"


def _pump(stream: IO[str], log: IO[str], prefix: str | None) -> None:
    """Copies a worker's output lines into its log (and, with a prefix, to stdout)."""
    with log:
        for line in stream:
            log.write(line)
            log.flush()
            if prefix is not None:
                sys.stdout.write(f"{prefix} {line}")
                sys.stdout.flush()


def start_process(index: int, command: Sequence[str], env: dict[str, str], log_dir: str,
                  echo: str = "all") -> Worker:
    """Starts worker ``index`` (0 is the chief) running ``command`` with ``env`` added to the
    environment; its output is appended to ``<log_dir>/worker-<index>.log`` after a header with
    ``env`` and the command, and echoed per ``echo``."""
    env_text = " ".join(f"{k}={v}" for k, v in env.items())
    log_path = os.path.join(log_dir, f"worker-{index}.log")
    log = open(log_path, "a", encoding="utf-8")
    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {env_text}\n"
              f"=== {' '.join(command)}\n")
    log.flush()
    process = subprocess.Popen(list(command), env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1, errors="replace")
    shown = echo == "all" or (echo == "chief" and index == 0)
    pump = threading.Thread(target=_pump, args=(process.stdout, log,
                                                 f"[worker {index}]" if shown else None),
                            daemon=True)
    pump.start()
    return Worker(index, process, log_path, pump)


def start_workers(num_workers: int, args: Sequence[str], run_dir: str, log_dir: str,
                  echo: str = "all") -> list[Worker]:
    """Starts ``num_workers`` workers with their TF_CONFIG; their output goes to ``log_dir``."""
    os.makedirs(log_dir, exist_ok=True)
    ports = free_ports(num_workers)
    command = worker_command(args, run_dir)
    workers = []
    for i in range(num_workers):
        worker = start_process(i, command, {"TF_CONFIG": tf_config(ports, i)}, log_dir, echo)
        workers.append(worker)
        print(f"started worker {i}{' (chief)' if i == 0 else ''}: pid {worker.process.pid}, "
              f"localhost:{ports[i]}, log {worker.log_path}", flush=True)
    return workers


def stop(workers: Sequence[Worker]) -> None:
    """Terminates the workers still running (killed after STOP_SECONDS)."""
    running = [w for w in workers if w.process.poll() is None]
    for w in running:
        w.process.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for w in running:
        try:
            w.process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            w.process.kill()
            w.process.wait()


def _tail(path: str, n: int = TAIL_LINES) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n") for line in f.readlines()[-n:]]


def wait(workers: Sequence[Worker]) -> Worker | None:
    """Waits for every worker; stops the others as soon as one fails and returns it (None:
    every worker exited 0)."""
    try:
        while True:
            codes = [w.process.poll() for w in workers]
            failed = [w for w, code in zip(workers, codes) if code not in (None, 0)]
            if failed:
                stop(workers)
                return failed[0]
            if all(code == 0 for code in codes):
                return None
            time.sleep(POLL_SECONDS)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): leave no worker behind
        stop(workers)
        raise
    finally:
        for w in workers:
            w.pump.join(timeout=5)


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """SIGTERM ends the launcher as an exception would: :func:`supervise` stops the workers."""
    signal.signal(signal.SIGTERM, _terminated)


def supervise(workers: Sequence[Worker], run_dir: str) -> None:
    """Waits for the started workers; if one fails, prints its last lines, stops the others
    and exits 1 (130 when interrupted)."""
    try:
        failed = wait(workers)
    except KeyboardInterrupt:
        print("interrupted: the workers were stopped (rerun the command to resume)",
              file=sys.stderr)
        sys.exit(130)
    if failed is not None:
        for line in _tail(failed.log_path):
            print(f"[{failed.name}] {line}", file=sys.stderr)
        print(f"error: {failed.name} exited with code {failed.process.returncode} (the others "
              f"were stopped); its log: {failed.log_path}", file=sys.stderr)
        sys.exit(1)
    print(f"all {len(workers)} workers finished; the chief's summary: "
          f"{os.path.join(run_dir, 'summary.json')}", flush=True)


def log_dir_of(run_dir: str | None) -> str:
    """``--worker_log_dir``, else ``<run_dir>/workers`` (``--run_dir`` is required)."""
    if not run_dir:
        raise app.UsageError("--run_dir is required (the run directory every worker shares)")
    return FLAGS.worker_log_dir or os.path.join(run_dir, "workers")


def main(argv: list[str]) -> None:
    log_dir = log_dir_of(FLAGS.run_dir)
    exit_on_sigterm()
    supervise(start_workers(FLAGS.num_workers, argv[1:], FLAGS.run_dir, log_dir, FLAGS.echo),
              FLAGS.run_dir)


if __name__ == "__main__":
    define_flags()
    cli.run(main, pass_through=True)
