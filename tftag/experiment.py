"""The Experiment: every setting of a run in one frozen object, written whole to its run dir.

An :class:`Experiment` holds the resolutions (:class:`~tftag.features.MelConfig`), the model
(:class:`~tftag.models.ModelConfig`, which owns the patch length), the training settings
(:class:`TrainConfig`), where the data comes from (:class:`DataConfig`) and what to export
(:class:`ExportConfig`). The entry point builds it once from the flags; train, evaluate, sweep,
tune and export take it. ``<run_dir>/configs.json`` holds it whole and :meth:`Experiment.load`
reads it back, so a run directory reproduces its run.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from tftag.runs import runfiles
from tftag.storage import codecs
from tftag.storage.folds import FoldConfig, HeldoutConfig
from tftag.features import MelConfig
from tftag.models import ModelConfig

CONFIGS_JSON = "configs.json"
STRATEGIES = ("auto", "default", "mirrored", "one_device_cpu", "multi_worker")
# Training losses: bce = binary cross-entropy on the hard labels; distill = binary cross-entropy
# against a teacher's probabilities (the soft labels of a teacher-labelled dataset).
LOSSES = ("bce", "distill")
# What early stopping watches: the validation macro ROC-AUC (higher is better; the default) or
# the validation loss (the training loss's BCE on clip probabilities; lower is better).
MONITORS = ("valid_roc_auc", "valid_loss")
# What --patience counts: epochs, or passes over the training data (an epoch of
# --steps_per_epoch steps may be a fraction of a pass).
PATIENCE_UNITS = ("epochs", "passes")
FORMAT_VERSION = 2


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
      batch_size: global batch size, split evenly across the replicas in sync (it must divide).
      epochs: maximum epochs.
      learning_rate: Adam learning rate (paper: 1e-3).
      patience: stop after this many epochs without a better validation ROC-AUC (0 = never).
      seed: seeds weights, shuffling, patch offsets and the built-in corpus.
      shuffle_buffer: examples in the shuffle buffer.
      steps_per_epoch: training steps per epoch; None = one pass over the training split.
      eval_batch_size: clips per evaluation batch.
      deterministic: bit-for-bit repeatable runs (see :mod:`tftag.runs.determinism`).
      strategy: tf.distribute strategy: auto (MirroredStrategy on several GPUs, else the
        default one), default, mirrored, one_device_cpu or multi_worker
        (MultiWorkerMirroredStrategy of $TF_CONFIG, train mode only; :mod:`tftag.runs.distributed`).
      loss: ``bce`` (binary cross-entropy on the hard labels) or ``distill`` (binary
        cross-entropy against the soft labels, the teacher's probabilities, of a
        teacher-labelled dataset). Validation early stopping uses the hard labels either way.
      valid_patches: patch models: validation scores this many evenly spaced patches per clip
        (1 = the centre one), as musicnn validates on patches; None = every patch. Test scores
        always use every patch (unless ``test_patches``).
      test_patches: patch models: the sweep's test scores this many evenly spaced patches per
        clip; None = every patch (the default and the paper's protocol).
      monitor: what early stopping and the best weights follow (:data:`MONITORS`).
      patience_unit: what ``patience`` counts (:data:`PATIENCE_UNITS`).
      lr_reductions: when the patience runs out, multiply the learning rate by ``lr_factor``
        and go on (the patience starts again) this many times before stopping; 0 = stop at
        the first plateau. The best weights are kept across the stages.
      lr_factor: the learning rate's factor at each reduction (0 < factor < 1).
    """

    batch_size: int = 32
    epochs: int = 20
    learning_rate: float = 1e-3
    patience: int = 5
    seed: int = 0
    shuffle_buffer: int = 512
    steps_per_epoch: int | None = None
    eval_batch_size: int = 16
    deterministic: bool = True
    strategy: str = "auto"
    loss: str = "bce"
    valid_patches: int | None = None
    test_patches: int | None = None
    monitor: str = "valid_roc_auc"
    patience_unit: str = "epochs"
    lr_reductions: int = 0
    lr_factor: float = 0.2

    def __post_init__(self):
        for name in ("valid_patches", "test_patches"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        for name in ("batch_size", "epochs", "eval_batch_size", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if self.lr_reductions < 0:
            raise ValueError(f"lr_reductions must be >= 0, got {self.lr_reductions}")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"lr_factor must be in (0, 1), got {self.lr_factor}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}")
        if self.patience_unit not in PATIENCE_UNITS:
            raise ValueError(f"patience_unit must be one of {', '.join(PATIENCE_UNITS)}, got "
                             f"{self.patience_unit!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the clips come from and how they are stored.

    Attributes:
      catalog: catalogue name (registry :mod:`tftag.datasets`).
      input: the catalogue's input (directory or CSV); None with ``synthetic`` renders the
        built-in corpus into ``<run_dir>/corpus``.
      dataset_dir: an extracted dataset to use; None = ``<run_dir>/dataset`` (made on demand).
      num_clips: built-in corpus: clips to render.
      clip_seconds: built-in corpus: seconds per clip.
      synth_sr: built-in corpus: sample rate of the WAVs.
      mel_dtype: storage codec of the base mels (registry :mod:`tftag.storage.codecs`).
      clips_per_shard: clips per TFRecord shard.
      direct_num_workers: Beam DirectRunner workers (0 = all cores).
      labels: "catalog" (the catalogue's tags) or "teacher:MTT_musicnn" / "teacher:MTT_vgg"
        (hard and soft labels from a pretrained model, :mod:`tftag.extraction.teacher`).
      teacher_top_k: teacher labels: hard labels per clip (its top-k tags).
      packages: ``debian`` catalogue: the Debian packages (empty = its quick subset).
      cache_dir: ``debian`` catalogue: downloads and unpacked packages (None = ~/.cache/tftag).
      min_tag_count: ``csv`` catalogue: keep tags with at least this many training clips.
      teacher_memo: teacher labels: memo file of the teacher's probabilities by clip content
        (:func:`tftag.extraction.teacher.read_memo`); None runs the teacher on every clip.
      train_clip_hop: ``debian`` catalogue: also cut training crops every this many seconds
        (:func:`tftag.datasets.debian.crop_offsets`; cross-validation trains on them, never
        tests on them); None = none.
    """

    catalog: str = "synthetic"
    input: str | None = None
    dataset_dir: str | None = None
    num_clips: int = 48
    clip_seconds: float = 30.0
    synth_sr: int = 16000
    mel_dtype: str = "float32"
    clips_per_shard: int = 256
    direct_num_workers: int = 1
    labels: str = "catalog"
    teacher_top_k: int = 3
    packages: tuple[str, ...] = ()
    cache_dir: str | None = None
    min_tag_count: int = 1
    teacher_memo: str | None = None
    train_clip_hop: float | None = None

    def __post_init__(self):
        from tftag import datasets
        from tftag.extraction import teacher

        datasets.REGISTRY.check(self.catalog, "catalog")
        codecs.REGISTRY.check(self.mel_dtype, "mel_dtype")
        if teacher.parse_labels(self.labels) is None and self.teacher_memo:
            raise ValueError(f"teacher_memo={self.teacher_memo} remembers teacher labels: it "
                             f"needs labels=teacher:<name>, got labels={self.labels}")
        if not 1 <= self.teacher_top_k <= len(teacher.tags()):
            raise ValueError(f"teacher_top_k must be in [1, 50], got {self.teacher_top_k}")
        for name in ("num_clips", "clips_per_shard", "min_tag_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.train_clip_hop is not None:
            from tftag.datasets import debian

            if self.catalog != "debian":
                raise ValueError(f"--train_clip_hop cuts training crops of the debian catalogue's "
                                 f"tracks; got --catalog={self.catalog}")
            if not 0 < self.train_clip_hop < debian.CLIP_SECONDS:
                raise ValueError(f"--train_clip_hop must be in (0, {debian.CLIP_SECONDS:g}) "
                                 f"seconds, got {self.train_clip_hop:g}")
        if self.catalog not in ("synthetic", "debian") and not self.input and not self.dataset_dir:
            raise ValueError(f"--input is required with --catalog={self.catalog} (or give an "
                             "extracted --dataset_dir)")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Whether and where train and sweep export their best model.

    Attributes:
      enabled: export at the end of train and sweep.
      export_dir: root of exports: ``<export_dir>/<model>-<resolution>/<version>/``.
      version: version to write; None = the next free integer.
      per_resolution: sweep: export the best run of every (model, resolution), not only the
        best one overall.
      tflite: TFLite files written beside each SavedModel, by precision (names in
        :data:`tftag.delivery.tflite.PRECISIONS`; empty = none).
      representative_clips: int8 TFLite: clips of the training split it is calibrated on.
    """

    enabled: bool = True
    export_dir: str = "export"
    version: int | None = None
    per_resolution: bool = False
    tflite: tuple[str, ...] = ()
    representative_clips: int = 100

    def __post_init__(self):
        from tftag.delivery import tflite  # no TensorFlow at import

        object.__setattr__(self, "tflite", tflite.check_precisions(tuple(self.tflite)))
        if self.representative_clips < 1:
            raise ValueError(f"representative_clips must be >= 1, got {self.representative_clips}")


@dataclasses.dataclass(frozen=True)
class SweepModel:
    """One model's own settings in a sweep (``--sweep_model=NAME:key=value,...``).

    Every field left None takes the experiment's value.

    Attributes:
      name: model name; must be one of the sweep's models.
      resolutions: names of the resolutions this model runs at (a subset of the experiment's;
        empty = all of them), e.g. MUSICNN at 128/96/48 bands × hop 1 beside a VGG-CNN grid.
      width: filter-count multiplier.
      patch_seconds: input patch seconds; 0 = whole clips.
      epochs: maximum epochs.
      steps_per_epoch: training steps per epoch.
      test_patches: patch models: test scores this many evenly spaced patches per clip
        (``all`` = every patch).
      valid_patches: patch models: validation scores this many evenly spaced patches per clip
        (``all`` = every patch).
    """

    name: str
    resolutions: tuple[str, ...] = ()
    width: float | None = None
    patch_seconds: float | None = None
    epochs: int | None = None
    steps_per_epoch: int | None = None
    test_patches: int | None = None
    valid_patches: int | None = None

    KEYS = ("resolutions", "width", "patch_seconds", "epochs", "steps_per_epoch", "test_patches",
            "valid_patches")
    ALL_PATCHES = 0  # test_patches / valid_patches = all: every patch (TrainConfig: None)

    @classmethod
    def parse(cls, text: str) -> "SweepModel":
        """``NAME:key=value,...`` (resolutions joined by ``+``) -> SweepModel."""
        name, _, rest = text.partition(":")
        values: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or key not in cls.KEYS:
                raise ValueError(f"{text!r}: {item!r} is not key=value with a key in "
                                 f"{', '.join(cls.KEYS)}")
            try:
                values[key] = (tuple(filter(None, value.split("+"))) if key == "resolutions"
                               else float(value) if key in ("width", "patch_seconds")
                               else cls.ALL_PATCHES if key.endswith("_patches") and value == "all"
                               else int(value))
            except ValueError:
                raise ValueError(f"{text!r}: {key}={value!r} is not a number") from None
        return cls(name.strip(), **values)

    def apply(self, model: ModelConfig, train: TrainConfig) -> tuple[ModelConfig, TrainConfig]:
        """``model`` and ``train`` with this model's settings."""
        changes: dict[str, Any] = {"name": self.name}
        if self.width is not None:
            changes["width"] = self.width
        if self.patch_seconds is not None:
            changes["patch_seconds"] = self.patch_seconds or None
        train_changes = {k: getattr(self, k) for k in ("epochs", "steps_per_epoch", "test_patches",
                                                      "valid_patches")
                         if getattr(self, k) is not None}
        for k in ("test_patches", "valid_patches"):
            if train_changes.get(k) == self.ALL_PATCHES:
                train_changes[k] = None
        return (dataclasses.replace(model, **changes),
                dataclasses.replace(train, **train_changes))


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run needs, built once.

    Attributes:
      mel_configs: the resolutions (one for train, evaluate, tune and export; any for sweep).
      model: the model; ``model.patch_seconds`` is the one owner of the patch length.
      train: training settings.
      data: the data source.
      export: what to export.
      run_dir: where the run writes; None for modes that need none.
      sweep_models: sweep: model names (empty = ``model.name`` alone).
      repeats: sweep: runs per (model, resolution), seeds seed, seed + 1, ...
      sweep_overrides: sweep: per-model settings (:class:`SweepModel`), e.g. other resolutions
        or patches for one model.
      folds: sweep: cross-validation by track group (:mod:`tftag.storage.folds`, :mod:`tftag.study.crossval`)
        instead of the dataset's splits; None = the splits.
      results_dir: cross-validation: where every finished run's ``result.json`` and
        ``test_predictions.npz`` go; None = ``<run_dir>/results``.
      heldout: train: hold whole packages out (:class:`tftag.storage.folds.HeldoutConfig`): train and
        validate on the rest, test on them; None = the dataset's splits.
    """

    mel_configs: tuple[MelConfig, ...]
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    export: ExportConfig = ExportConfig()
    run_dir: str | None = None
    sweep_models: tuple[str, ...] = ()
    repeats: int = 1
    sweep_overrides: tuple[SweepModel, ...] = ()
    folds: FoldConfig | None = None
    results_dir: str | None = None
    heldout: HeldoutConfig | None = None

    # Cross-validated runs train to convergence: patience of at least this many passes.
    MIN_FOLD_PATIENCE = 3

    def __post_init__(self):
        from tftag import models

        if not self.mel_configs:
            raise ValueError("no resolution given")
        if len({c.duration for c in self.mel_configs}) != 1:
            raise ValueError("all resolutions of one experiment need one duration")
        models.REGISTRY.check(self.model.name, "model")
        models.REGISTRY.check_all(self.sweep_models, "sweep_models")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        names = [m.name for m in self.model_configs]
        known = {c.name for c in self.mel_configs}
        for o in self.sweep_overrides:
            if o.name not in names:
                raise ValueError(f"sweep model {o.name!r} is not one of the sweep's models "
                                 f"({', '.join(names)})")
            unknown = [r for r in o.resolutions if r not in known]
            if unknown:
                raise ValueError(f"sweep model {o.name}: resolutions {unknown} are not among the "
                                 f"experiment's ({', '.join(sorted(known))})")
            o.apply(self.model, self.train)  # validates the values
        if self.folds is not None and self.heldout is not None:
            raise ValueError("--heldout_packages and --folds are two ways to split: give one")
        if self.folds is not None and self.train.patience < self.MIN_FOLD_PATIENCE:
            raise ValueError(f"--patience must be >= {self.MIN_FOLD_PATIENCE} (passes over a "
                             f"fold's training data) with --folds, got {self.train.patience}")

    @property
    def mel_config(self) -> MelConfig:
        """The one resolution of a single-resolution mode."""
        return self.one_resolution()

    def one_resolution(self, user: str = "this mode") -> MelConfig:
        """The one resolution; a ValueError saying that ``user`` (e.g. ``--mode=train``) takes
        one if there are several."""
        if len(self.mel_configs) != 1:
            names = ", ".join(c.name for c in self.mel_configs[:4])
            more = ", ..." if len(self.mel_configs) > 4 else ""
            raise ValueError(f"{user} takes one resolution: give --sr, --n_mels, "
                             f"--hop_factors and --compressions one value each, or one "
                             f"--resolutions (got {len(self.mel_configs)}: {names}{more})")
        return self.mel_configs[0]

    @property
    def model_configs(self) -> tuple[ModelConfig, ...]:
        """The sweep's models: ``model`` under each of ``sweep_models``."""
        return tuple(dataclasses.replace(self.model, name=n)
                     for n in (self.sweep_models or (self.model.name,)))

    def sweep_plan(self) -> list[tuple[ModelConfig, tuple[MelConfig, ...], TrainConfig]]:
        """The sweep per model: its config, its resolutions and its training settings."""
        overrides = {o.name: o for o in self.sweep_overrides}
        plan = []
        for model in self.model_configs:
            o = overrides.get(model.name)
            if o is None:
                plan.append((model, self.mel_configs, self.train))
                continue
            model_config, train_config = o.apply(model, self.train)
            mels = tuple(c for c in self.mel_configs if not o.resolutions or c.name in o.resolutions)
            plan.append((model_config, mels, train_config))
        return plan

    @property
    def patch_frames(self) -> int | None:
        """Patch frames at the one resolution (None = whole clips)."""
        return self.model.patch_frames(self.mel_config)

    @property
    def dataset_dir(self) -> str:
        """The dataset: ``data.dataset_dir``, else ``<run_dir>/dataset``."""
        if self.data.dataset_dir:
            return self.data.dataset_dir
        if not self.run_dir:
            raise ValueError("--dataset_dir or --run_dir is required")
        return os.path.join(self.run_dir, "dataset")

    def path(self, *parts: str) -> str:
        """A path inside the run directory."""
        if not self.run_dir:
            raise ValueError("--run_dir is required")
        return os.path.join(self.run_dir, *parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; :meth:`from_dict` inverts it. Resolutions carry their names."""
        d = dataclasses.asdict(self)
        d["mel_configs"] = [dict(dataclasses.asdict(c), name=c.name) for c in self.mel_configs]
        return {"format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Experiment":
        """The Experiment of :meth:`to_dict`."""
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"configs format_version {d.get('format_version')} is not "
                             f"{FORMAT_VERSION} (written by another tftag version)")
        mels = tuple(MelConfig(**{k: v for k, v in c.items() if k != "name"})
                     for c in d["mel_configs"])
        data = dict(d["data"], packages=tuple(d["data"].get("packages", ())))
        return cls(mel_configs=mels, model=ModelConfig(**d["model"]),
                   train=TrainConfig(**d["train"]), data=DataConfig(**data),
                   export=ExportConfig(**d["export"]), run_dir=d["run_dir"],
                   sweep_models=tuple(d["sweep_models"]), repeats=d["repeats"],
                   sweep_overrides=tuple(
                       SweepModel(**dict(o, resolutions=tuple(o["resolutions"])))
                       for o in d.get("sweep_overrides", ())),
                   folds=FoldConfig(**d["folds"]) if d.get("folds") else None,
                   results_dir=d.get("results_dir"),
                   heldout=HeldoutConfig(**d["heldout"]) if d.get("heldout") else None)

    def save(self, directory: str | None = None) -> str:
        """Writes ``configs.json`` into ``directory`` (default: the run directory); returns its
        path."""
        path = os.path.join(directory, CONFIGS_JSON) if directory else self.path(CONFIGS_JSON)
        runfiles.write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, run_dir: str) -> "Experiment":
        """The Experiment a run directory was made with (its ``configs.json``)."""
        path = os.path.join(run_dir, CONFIGS_JSON)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: {run_dir!r} is not a tftag run directory")
        experiment = cls.from_dict(runfiles.read_json(path))
        return dataclasses.replace(experiment, run_dir=run_dir)  # where it is now
