"""Atomic files and TensorBoard notes of a run directory (JSON, CSV, text, images).

Every write goes to a temp file beside its target and is renamed into place (:func:`atomic_path`,
the one such helper of tftag), so a killed job never leaves half a file. Nothing here imports
TensorFlow until a TensorBoard summary is written: rendering the corpus or writing a data card
does not load it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from typing import Any, Iterable, Iterator, Mapping, Sequence


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """A temp path beside ``path`` to write to; renamed to ``path`` when the block succeeds.

    The one write-to-temp-then-rename of tftag: the temp file (``.tmp-*<suffix>`` in the target's
    directory, created empty and private) is given the mode a plain ``open()`` would give it (0666
    less the umask) and replaces ``path`` atomically when the ``with`` block ends without an
    exception; it is removed when the block raises (a killed job leaves at most a ``.tmp-*`` file,
    never half a ``path``). The target's directory is created if needed.

    Args:
      path: the file to write.
      suffix: the temp file's suffix, for writers that infer the format from it (``.png``).

    Yields:
      The temp file's path.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes bytes to a temp file beside ``path``, synced to disk, and renames it into place."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_npz_atomic(path: str, **arrays: Any) -> None:
    """Writes NumPy arrays as an uncompressed ``.npz`` atomically."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def save_figure_atomic(fig, path: str, dpi: int = 100) -> str:
    """Saves a matplotlib figure as PNG through a temp file and a rename, then closes it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def write_text_atomic(path: str, text: str) -> None:
    """Writes UTF-8 text atomically (a trailing newline is added if missing)."""
    write_bytes_atomic(path, (text if text.endswith("\n") else text + "\n").encode("utf-8"))


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes indented UTF-8 JSON atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False))


def write_csv_atomic(path: str, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str]) -> None:
    """Writes dict rows as CSV with a header atomically; keys not in ``fieldnames`` are ignored."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buf.getvalue().encode("utf-8"))


def require_weights(path: str) -> str:
    """``path`` if a weights file is there; else FileNotFoundError saying how to get one."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--weights={path!r} does not exist (train first, or point "
                                "--weights at a best.weights.h5)")
    return path


HISTORY_JSON = "history.json"  # a run directory's epochs (tftag.train), one entry per epoch
PROGRESS_JSON = "progress.json"  # {"epoch", "step"}: steps done of the epoch in progress


def training_progress(run_dir: str) -> tuple[int, int]:
    """``(epochs, steps)`` a run directory's checkpoint holds: finished epochs (its history) and
    the steps of the next epoch saved by a mid-epoch checkpoint (0 if none); comparable as a
    tuple. ``(0, 0)`` for a run directory without either file."""
    epochs = 0
    path = os.path.join(run_dir, HISTORY_JSON)
    if os.path.exists(path):
        epochs = len(read_json(path))
    steps = 0
    path = os.path.join(run_dir, PROGRESS_JSON)
    if os.path.exists(path):
        progress = read_json(path)
        if progress.get("epoch") == epochs:
            steps = int(progress.get("step", 0))
    return epochs, steps


def read_json(path: str) -> Any:
    """Reads a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def tensorboard_notes(logdir: str, texts: Mapping[str, str] = (), images: Mapping[str, str] = (),
                      scalars: Mapping[str, float] = ()) -> None:
    """Writes text (shown as code blocks), PNG images and scalars at step 0 to ``logdir``.

    Args:
      logdir: a TensorBoard run directory, e.g. ``<run_dir>/tb/config``.
      texts: {tag: text}; tables in Markdown are shown as they are.
      images: {tag: path of a PNG}.
      scalars: {tag: value}.
    """
    import tensorflow as tf

    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for tag, text in dict(texts).items():
            body = text if text.lstrip().startswith("|") else "```\n" + text + "\n```"
            tf.summary.text(tag, body, step=0)
        for tag, png in dict(images).items():
            image = tf.image.decode_png(tf.io.read_file(png), channels=4)[tf.newaxis]
            tf.summary.image(tag, image, step=0)
        for tag, value in dict(scalars).items():
            tf.summary.scalar(tag, value, step=0)
    writer.close()
