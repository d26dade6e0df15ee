"""Cross-validation folds by track group: a view of one extracted dataset, never a re-extraction.

Every clip belongs to a *track group* (the debian catalogue's near-duplicate versions of one
track, :func:`tftag.datasets.debian.group_name`; one clip is its own group elsewhere). Groups
are ordered by ``sha1(f"{seed}:{group}")`` and dealt, in that order, to the fold with the
fewest clips so far (ties: the lower fold), so folds are balanced in clips, seeded, and a group
never straddles two folds. Fold ``k`` tests its own clips; the other folds are its training
part, from which whole groups, again in seeded hash order, are held out until they make
≈ ``valid_fraction`` of it: the validation part that drives early stopping.

The folds depend on the dataset's clip ids and groups only, so every resolution of a dataset
sees the same folds. Readers filter one dataset by clip id (:func:`tftag.storage.data.make_dataset`
``clips=``). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterable, Mapping, Sequence

PARTS = ("train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class FoldConfig:
    """How a dataset is cut into folds (``--folds``, ``--fold``, ``--fold_seed``).

    Attributes:
      folds: K, the number of folds (>= 2).
      fold: run only this fold (0 .. K-1); None = all of them.
      seed: seeds the group order of folds and validation parts.
      valid_fraction: share of a fold's training part held out (by group) for validation.
    """

    folds: int = 5
    fold: int | None = None
    seed: int = 0
    valid_fraction: float = 0.1

    def __post_init__(self):
        if self.folds < 2:
            raise ValueError(f"--folds must be >= 2, got {self.folds}")
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise ValueError(f"--fold must be in 0..{self.folds - 1} (--folds={self.folds}), "
                             f"got {self.fold}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")

    @property
    def selected(self) -> tuple[int, ...]:
        """The folds to run: ``fold`` alone, or all of them."""
        return (self.fold,) if self.fold is not None else tuple(range(self.folds))


@dataclasses.dataclass(frozen=True)
class FoldParts:
    """The clip ids of one fold's training, validation and test parts (each sorted); a
    held-out-package split (:func:`heldout_parts`) is fold 0 of 1."""

    fold: int
    folds: int
    train: tuple[str, ...]
    valid: tuple[str, ...]
    test: tuple[str, ...]

    def part(self, name: str) -> tuple[str, ...]:
        """The clip ids of part ``name`` (train, valid or test)."""
        if name not in PARTS:
            raise ValueError(f"part must be one of {', '.join(PARTS)}, got {name!r}")
        return getattr(self, name)

    def describe(self) -> dict:
        """JSON-able record of the fold (for the run directory)."""
        return {"fold": self.fold, "folds": self.folds,
                **{name: list(self.part(name)) for name in PARTS}}


def _rank(seed: int, salt: str, group: str) -> bytes:
    return hashlib.sha1(f"{seed}:{salt}{group}".encode("utf-8")).digest()


def _by_group(groups: Mapping[str, str]) -> dict[str, list[str]]:
    members: dict[str, list[str]] = {}
    for clip_id, group in groups.items():
        members.setdefault(group, []).append(clip_id)
    return members


def fold_of_groups(groups: Mapping[str, str], folds: int, seed: int = 0) -> dict[str, int]:
    """{group: fold}: groups in ``sha1(seed:group)`` order, each to the fold with fewest clips.

    Args:
      groups: {clip_id: group} of every clip of the dataset.
      folds: K.
      seed: the fold seed.

    Raises:
      ValueError: fewer groups than folds (a fold would test nothing).
    """
    members = _by_group(groups)
    if len(members) < folds:
        raise ValueError(f"--folds={folds}: the dataset has only {len(members)} track groups; "
                         f"use --folds <= {len(members)}")
    sizes = [0] * folds
    out = {}
    for group in sorted(members, key=lambda g: _rank(seed, "", g)):
        k = min(range(folds), key=lambda i: (sizes[i], i))
        out[group] = k
        sizes[k] += len(members[group])
    return out


def fold_parts(groups: Mapping[str, str], config: FoldConfig, fold: int) -> FoldParts:
    """Fold ``fold``'s training, validation and test clip ids.

    The validation part: groups of the training part in ``sha1(seed:valid:group)`` order until
    they hold ``valid_fraction`` of its clips (at least one group; at least one stays to train:
    :func:`split_valid`).
    """
    if not 0 <= fold < config.folds:
        raise ValueError(f"--fold must be in 0..{config.folds - 1}, got {fold}")
    assignment = fold_of_groups(groups, config.folds, config.seed)
    members = _by_group(groups)
    test = sorted(c for g, k in assignment.items() if k == fold for c in members[g])
    rest = [g for g, k in assignment.items() if k != fold]
    train, valid = split_valid(rest, members, config.seed, config.valid_fraction)
    if not train:
        raise ValueError(f"--folds={config.folds}: fold {fold} leaves no training groups")
    return FoldParts(fold, config.folds, train, valid, tuple(test))


def split_valid(groups: Sequence[str], members: Mapping[str, Sequence[str]], seed: int,
                valid_fraction: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training clip ids, validation clip ids) of ``groups``: whole groups in
    ``sha1(seed:valid:group)`` order are held out for validation until they hold
    ``valid_fraction`` of the clips (at least one group; at least one stays to train)."""
    n_clips = sum(len(members[g]) for g in groups)
    valid_groups: list[str] = []
    held = 0
    for group in sorted(groups, key=lambda g: _rank(seed, "valid:", g)):
        if valid_groups and (held >= valid_fraction * n_clips
                             or len(valid_groups) == len(groups) - 1):
            break
        valid_groups.append(group)
        held += len(members[group])
    chosen = set(valid_groups)
    valid = sorted(c for g in valid_groups for c in members[g])
    train = sorted(c for g in groups if g not in chosen for c in members[g])
    return tuple(train), tuple(valid)


# ----------------------------------------------------------------------------- held-out packages


@dataclasses.dataclass(frozen=True)
class HeldoutConfig:
    """Final training with whole packages held out (``--heldout_packages``, ``--fold_seed``).

    Training uses every clip outside ``packages`` but a validation part (whole track groups,
    ≈ ``valid_fraction`` of them, chosen as a fold's: :func:`split_valid`); the test part is
    every clip of ``packages``, which training never sees.

    Attributes:
      packages: the held-out packages (a clip's package: :func:`clip_package`).
      seed: seeds the validation groups.
      valid_fraction: share of the training clips held out (by group) for validation.
    """

    packages: tuple[str, ...]
    seed: int = 0
    valid_fraction: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "packages", tuple(self.packages))
        if not self.packages:
            raise ValueError("--heldout_packages is empty")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")


def clip_package(clip_id: str) -> str:
    """The package (collection) of a clip: the first part of its id (the debian catalogue's
    ids are ``<package>/<path>#<k>``), or the whole id of a top-level file."""
    return clip_id.split("/", 1)[0]


def heldout_parts(groups: Mapping[str, str], config: HeldoutConfig) -> FoldParts:
    """The training, validation and test clip ids of a held-out-package split (as fold 0 of 1).

    Raises:
      ValueError: a package the dataset does not have (the message lists the dataset's), a
        track group with clips both inside and outside the held-out packages, or nothing left to
        train on.
    """
    known = sorted({clip_package(c) for c in groups})
    unknown = [p for p in config.packages if p not in known]
    if unknown:
        raise ValueError(f"--heldout_packages: unknown package {', '.join(map(repr, unknown))}; "
                         f"the dataset's packages: {', '.join(known)}")
    members = _by_group(groups)
    held = set(config.packages)
    test, rest = [], []
    for group, clips in members.items():
        inside = {clip_package(c) in held for c in clips}
        if len(inside) > 1:
            raise ValueError(f"--heldout_packages: track group {group!r} has clips inside and "
                             "outside the held-out packages")
        (test.extend(clips) if inside.pop() else rest.append(group))
    if not rest:
        raise ValueError(f"--heldout_packages={','.join(config.packages)} holds out every "
                         "package: nothing left to train on")
    train, valid = split_valid(rest, members, config.seed, config.valid_fraction)
    return FoldParts(0, 1, train, valid, tuple(sorted(test)))


def default_group(clip_id: str) -> str:
    """A clip's group when nothing names one: its source file (a segment clip ``file#003``
    shares it with the file's other segments), else the clip itself."""
    return clip_id.split("#", 1)[0]


def clip_groups(clip_ids: Iterable[str], meta: Mapping) -> dict[str, str]:
    """{clip_id: track group} of a dataset's clips from its ``dataset.json`` dictionary.

    Looked up in order: ``"groups"`` (written by extraction since issue 23), the debian
    catalogue's track records (``source.tracks``: ``package/path`` -> group, so datasets
    extracted earlier give the same groups), else :func:`default_group`.
    """
    stored = meta.get("groups") or {}
    tracks = {f"{t['package']}/{t['path']}": t["group"]
              for t in (meta.get("source") or {}).get("tracks", ()) if "group" in t}
    out = {}
    for clip_id in clip_ids:
        file_id = default_group(clip_id)
        out[clip_id] = stored.get(clip_id) or tracks.get(file_id) or file_id
    return out


def add_crops(parts: FoldParts, groups: Mapping[str, str], crops: Mapping[str, str]) -> FoldParts:
    """``parts`` with the training crops (:data:`tftag.datasets.CROPS`) of its training groups
    added to its training part; crops of validation and test groups stay out.

    Args:
      parts: a fold's (or a held-out split's) parts of the dataset's clips.
      groups: {clip_id: group} of those clips.
      crops: {crop id: group} of the dataset's training crops.
    """
    if not crops:
        return parts
    training = {groups[c] for c in parts.train}
    extra = [c for c, g in crops.items() if g in training]
    return dataclasses.replace(parts, train=tuple(sorted(parts.train + tuple(extra))))


def check_partition(parts: Sequence[FoldParts], groups: Mapping[str, str]) -> None:
    """Raises ValueError unless every clip is tested exactly once and no group is split across
    folds or between a fold's parts (a guard for the fold rules above)."""
    tested = [c for p in parts for c in p.test]
    if sorted(tested) != sorted(groups):
        raise ValueError("folds do not test every clip exactly once")
    for p in parts:
        seen: dict[str, str] = {}
        for name in PARTS:
            for c in p.part(name):
                if seen.setdefault(groups[c], name) != name:
                    raise ValueError(f"fold {p.fold}: group {groups[c]!r} in two parts")
