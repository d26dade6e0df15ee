"""Who owns a run directory's record, and where another mode writes its own.

The rule: the mode that made a run directory owns its top-level record, ``flags.txt``,
``configs.json``, ``summary.json`` (and ``tb/config``); the owner is the ``--mode`` line of
that ``flags.txt`` (a directory without one belongs to the first mode that writes it). A run
of the same mode again (a resumed train or sweep) writes the top-level record as before. Any
other mode run on the directory later (``--mode=export --run_dir=<a training run>``) writes its
record into ``<run_dir>/<mode>/`` (``<run_dir>/export/flags.txt``, ``configs.json``,
``summary.json``, ``tb/config``) and never replaces the owner's files; the results it writes
itself (``evaluation_test.json``, the dataset, ...) keep their places.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os

RECORD_FILES = ("flags.txt", "configs.json", "summary.json")
FLAGS_TXT = RECORD_FILES[0]


def owner(run_dir: str) -> str | None:
    """The mode that made ``run_dir`` (its ``flags.txt``'s ``--mode``); None if none did."""
    path = os.path.join(run_dir, FLAGS_TXT)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("--mode="):
                return line.strip()[len("--mode="):]
    return None


def record_dir(run_dir: str, mode: str) -> str:
    """Where ``mode`` writes its record in ``run_dir``: the directory itself if ``mode`` made it
    (or nobody did yet), else ``<run_dir>/<mode>``."""
    made_by = owner(run_dir)
    return run_dir if made_by in (None, mode) else os.path.join(run_dir, mode)
