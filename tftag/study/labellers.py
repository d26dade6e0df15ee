"""A second labeller for a teacher-labelled study: another pretrained tagger's probabilities.

A study's hard labels are its teacher's top-k tags per clip. To check that a ranking of
resolutions is not an artefact of that one teacher, :func:`label_dataset` runs another
pretrained tagger (e.g. ``MTT_vgg``, the same 50 MTAT tags) over every clip's **stored** 16 kHz
96-band mel exactly as extraction runs the teacher (:class:`tftag.extraction.teacher.Teacher`:
log10(1 + 10000·x), mean sigmoid over non-overlapping 3-s patches) and writes a memo file
``clip_id -> probabilities`` (:func:`write_labels`); the report (TensorFlow-free) reads it with
:func:`read_labels` and scores every run's stored test predictions against its top-k tags.

Run once (TensorFlow), e.g.::

    python -m tftag.study.labellers runs/real_music_review/dataset MTT_vgg \\
        benchmarks/results/real_music/labels_mtt_vgg.npz

Only :func:`label_dataset` imports TensorFlow (inside it).
"""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np

LABELS_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Labels:
    """A labeller's probabilities per clip.

    Attributes:
      name: the labeller (a pretrained model's name, e.g. ``MTT_vgg``).
      clip_ids: the clips, sorted.
      probs: float32 [clips, tags], row i for ``clip_ids[i]``.
      tags: the tag list (the columns).
    """

    name: str
    clip_ids: tuple[str, ...]
    probs: np.ndarray
    tags: tuple[str, ...]

    def rows(self, clip_ids: tuple[str, ...] | list[str]) -> np.ndarray:
        """float64 [len(clip_ids), tags]: the probabilities of ``clip_ids``, in their order.

        Raises:
          ValueError: a clip the labeller has not labelled (named; label the dataset again).
        """
        index = {c: i for i, c in enumerate(self.clip_ids)}
        missing = [c for c in clip_ids if c not in index]
        if missing:
            raise ValueError(f"labeller {self.name}: {len(missing)} clips not labelled (e.g. "
                             f"{missing[0]!r}); run tftag.study.labellers.label_dataset on the "
                             "study's dataset again")
        return self.probs[[index[c] for c in clip_ids]].astype(np.float64)


def write_labels(path: str, labels: Labels, source: dict | None = None) -> None:
    """Writes ``labels`` as a compressed .npz (``clip_id``, ``probs``, ``tags``, ``identity``)."""
    import io

    from tftag.runs import runfiles

    order = np.argsort(np.asarray(labels.clip_ids), kind="stable")
    identity = {"format": LABELS_FORMAT, "labeller": labels.name, **(source or {})}
    buf = io.BytesIO()
    np.savez_compressed(buf, identity=np.array(json.dumps(identity, sort_keys=True)),
                        clip_id=np.asarray(labels.clip_ids)[order],
                        probs=np.asarray(labels.probs, np.float32)[order],
                        tags=np.asarray(labels.tags))
    runfiles.write_bytes_atomic(path, buf.getvalue())


def read_labels(path: str) -> Labels:
    """The labels of a file written by :func:`write_labels`.

    Raises:
      ValueError: not such a file, or one of another format (named).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            identity = json.loads(str(z["identity"]))
            ids = tuple(str(c) for c in z["clip_id"])
            probs = np.asarray(z["probs"], np.float32)
            tags = tuple(str(t) for t in z["tags"])
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a labeller's memo ({e}); write it with "
                         "tftag.study.labellers.label_dataset") from None
    if identity.get("format") != LABELS_FORMAT:
        raise ValueError(f"{path}: format {identity.get('format')}, expected {LABELS_FORMAT}; "
                         "label the dataset again")
    if probs.shape != (len(ids), len(tags)):
        raise ValueError(f"{path}: probs {probs.shape} for {len(ids)} clips and {len(tags)} tags")
    order = np.argsort(np.asarray(ids), kind="stable")
    return Labels(str(identity["labeller"]), tuple(np.asarray(ids)[order]), probs[order], tags)


def label_dataset(dataset_dir: str, name: str, path: str, check_teacher: int = 20) -> dict:
    """Labels every clip of an extracted dataset with the pretrained ``name`` (TensorFlow).

    Reads each clip's stored 16 kHz 96-band hop-1 power base, derives the teachers' input
    (:data:`tftag.models.pretrained.MEL_CONFIG`) and runs ``name`` as
    :meth:`tftag.extraction.teacher.Teacher.probabilities` does. With ``check_teacher`` > 0 the
    dataset's own teacher is first rerun the same way on that many clips and must reproduce
    their stored soft labels (max abs difference < 1e-3), so this path is the extraction's.

    Returns:
      {"labeller", "clips", "teacher_check_max_abs"}.

    Raises:
      ValueError: the dataset has no teacher or no 16 kHz 96-band base, or the teacher check
        fails (named).
    """
    from tftag.extraction import teacher
    from tftag.models import pretrained
    from tftag.storage import data

    info = data.load_dataset_info(dataset_dir)
    own = teacher.parse_labels(str(info.raw.get("labels", teacher.CATALOG)))
    config = pretrained.MEL_CONFIG.replace(duration=info.duration)
    if config.base_name not in info.base_names:
        raise ValueError(f"{dataset_dir}: no {config.base_name} base (bases "
                         f"{', '.join(info.base_names)}); extract it with --n_mels incl. 96")
    check_max = None
    if check_teacher > 0:
        if own is None:
            raise ValueError(f"{dataset_dir}: not teacher-labelled; pass check_teacher=0")
        ref = teacher.Teacher(own)
        diffs = []
        for i, e in enumerate(data.read_examples(dataset_dir, config)):
            if i >= check_teacher:
                break
            diffs.append(float(np.max(np.abs(ref.probabilities(e["mel"]) - e["soft_labels"]))))
        check_max = max(diffs)
        if check_max >= 1e-3:
            raise ValueError(f"{dataset_dir}: rerunning {own} on the stored mels differs from the "
                             f"stored soft labels by {check_max:.2e}: not the extraction's path")
    labeller = teacher.Teacher(name)
    ids, probs = [], []
    for e in data.read_examples(dataset_dir, config):
        ids.append(e["clip_id"])
        probs.append(labeller.probabilities(e["mel"]))
    write_labels(path, Labels(name, tuple(ids), np.stack(probs), labeller.tags),
                 {"dataset_clips": len(ids), "input": config.name, "teacher": own,
                  "teacher_check_max_abs": check_max})
    return {"labeller": name, "clips": len(ids), "teacher_check_max_abs": check_max}


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m tftag.study.labellers DATASET_DIR MODEL_NAME OUT.npz")
    print(json.dumps(label_dataset(*sys.argv[1:])))
