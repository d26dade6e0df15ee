"""``debian``: real, freely licensed music from Debian packages (game soundtracks), unlabelled.

``--catalog=debian --packages=a,b,... --cache_dir=DIR`` downloads the packages with
``apt-get download`` into ``DIR/debs`` (reused on reruns), unpacks each with ``dpkg-deb -x``
into ``DIR/unpacked/<package>`` (Ogg files inside ``.pk3`` zip archives are taken out to
``<archive>.d/``), and keeps music:

- audio files of at least :data:`MIN_TRACK_SECONDS` (30 s);
- no sound effects or ambience: a path with a ``sounds``, ``sfx``, ``animals`` or ``library``
  folder, or a file name with one of :data:`EFFECT_WORDS`, is dropped;
- exact duplicates (same bytes; e.g. a track shipped by two packages) are kept once, the first in
  (package, path) order;
- looped tracks (the same music repeated, as planetblupi's 25-minute loops) are taken once:
  :func:`loop_period` finds the repetition period from the loudness envelope.

Clips are the non-overlapping 30-s segments of each kept track (``Clip.offset``,
``Clip.duration``), so a 4-minute track gives 8 clips. With ``train_clip_hop`` (seconds,
``--train_clip_hop``) a track also gives **training crops**: 30-s segments starting every
``train_clip_hop`` seconds that are not already clips (at 15 s: 15-45, 45-75, ...), in the
:data:`~tftag.datasets.CROPS` split, ids ``<package>/<path>@<offset>s``; cross-validation adds
a fold's crops to its training part only, never to validation or test (:mod:`tftag.storage.folds`).
**Splits are by track group**: the group
is the package plus the file name without version suffixes (``_fast``, ``_old``, ``-remix``, ...,
see :func:`group_name`), so near-duplicate versions stay on one side; a group goes to train /
valid / test by the first bytes of sha1(seed:group) (80 / 10 / 10 %).

Every track's package, path, licence (from the package's ``copyright`` file) and artist (Vorbis
comments) go into the catalogue's ``info`` (and so into ``dataset.json``). A package that is not
in the machine's apt sources, a failed download and an unreadable track are reported in
``skipped`` (and so ``failures.jsonl``), never fatal.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from typing import Sequence

import numpy as np
from absl import logging

from tftag.datasets import CROPS, SPLITS, Catalog, Clip, register

# bookworm main: 17 packages, 391 tracks, ~1,290 min (~2,400 clips of 30 s), ~2.9 GB.
ALL_PACKAGES = (
    "ufoai-music", "wesnoth-1.16-music", "naev-data", "supertux-data", "widelands-data",
    "nexuiz-music", "singularity-music", "supertuxkart-data", "marsshooter-data",
    "freedroidrpg-data", "pushover-data", "megaglest-data", "fillets-ng-data", "hyperrogue-music",
    "planetblupi-music-ogg", "lincity-ng-data", "extremetuxracer-data",
)
# Quick runs: ~210 MB of downloads, 42 tracks, 227 clips.
QUICK_PACKAGES = ("hyperrogue-music", "pushover-data", "marsshooter-data", "lincity-ng-data")
MIN_TRACK_SECONDS = 30.0
CLIP_SECONDS = 30.0
SPLIT_PERCENT = {"train": 80, "valid": 10, "test": 10}
AUDIO_EXTENSIONS = (".ogg", ".oga", ".flac", ".wav", ".mp3", ".opus")
EFFECT_FOLDERS = {"sounds", "sfx", "animals", "library"}
EFFECT_WORDS = ("thunder", "speech", "wind", "locomotive", "static", "airport", "radio",
                "dynamictest")
VERSION_SUFFIX = re.compile(r"([_\- ](fast|old|slow|remix|remake|loop|short|long|alt|v\d+))+$")
LOOP_MIN_SECONDS = 240.0  # tracks shorter than this are not searched for repetitions
SCAN_VERSION = 2  # part of the scan cache's keys: bump when a track record's rule changes


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/tftag/debian`` (default ``~/.cache/tftag/debian``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tftag", "debian")


def _run(cmd: Sequence[str], cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, LC_ALL="C"))


def download(package: str, cache_dir: str) -> str:
    """The package's .deb in ``cache_dir/debs`` (``apt-get download`` unless cached).

    Raises:
      LookupError: not in the machine's apt sources, or the download failed (the message says
        which, with apt's own words).
    """
    debs = os.path.join(cache_dir, "debs")
    os.makedirs(debs, exist_ok=True)
    cached = sorted(glob.glob(os.path.join(debs, f"{package}_*.deb")))
    if cached:
        return cached[-1]
    with tempfile.TemporaryDirectory(dir=debs, prefix=".download-") as tmp:
        proc = _run(["apt-get", "download", package], cwd=tmp)
        got = glob.glob(os.path.join(tmp, f"{package}_*.deb"))
        if proc.returncode != 0 or not got:
            reason = (proc.stderr or proc.stdout).strip().splitlines()
            reason = reason[-1] if reason else f"apt-get exited {proc.returncode}"
            if "Unable to locate package" in reason or "has no installation candidate" in reason:
                raise LookupError(f"{package}: not in this machine's apt sources ({reason}); "
                                  "run `apt-get update` or check the name")
            raise LookupError(f"{package}: apt-get download failed: {reason}")
        final = os.path.join(debs, os.path.basename(got[0]))
        os.replace(got[0], final)
    return final


def unpack(deb: str, package: str, cache_dir: str) -> str:
    """``dpkg-deb -x`` into ``cache_dir/unpacked/<package>`` (once; atomic), with ``.pk3``
    archives' audio taken out to ``<archive>.d/``. Returns the folder."""
    out = os.path.join(cache_dir, "unpacked", package)
    if os.path.exists(os.path.join(out, ".tftag-unpacked")):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{package}-", dir=os.path.dirname(out))
    try:
        proc = _run(["dpkg-deb", "-x", deb, tmp])
        if proc.returncode != 0:
            raise LookupError(f"{package}: dpkg-deb -x {deb} failed: {proc.stderr.strip()[:300]}")
        for pk3 in sorted(glob.glob(os.path.join(tmp, "**", "*.pk3"), recursive=True)):
            _unzip_audio(pk3)
        with open(os.path.join(tmp, ".tftag-unpacked"), "w", encoding="utf-8") as f:
            f.write(os.path.basename(deb) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _unzip_audio(pk3: str) -> None:
    try:
        with zipfile.ZipFile(pk3) as archive:
            for member in archive.namelist():
                if member.lower().endswith(AUDIO_EXTENSIONS) and ".." not in member.split("/"):
                    archive.extract(member, pk3 + ".d")
    except zipfile.BadZipFile as e:
        logging.warning("%s: not a zip archive (%s); skipped", pk3, e)


def _words(name: str) -> set[str]:
    """Lower-case words of a file name: split at _ - . spaces digits and camelCase humps."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    return {w for w in re.split(r"[^A-Za-z]+", spaced.lower()) if w}


def is_effect(rel_path: str) -> bool:
    """True for sound effects and ambience: a folder in :data:`EFFECT_FOLDERS` or a file-name
    word in :data:`EFFECT_WORDS` (whole words: ``bright_thunders`` is music, ``thunder`` not)."""
    parts = rel_path.split("/")
    name = os.path.splitext(parts[-1])[0]
    folders = {p.lower() for p in parts[:-1]}
    return bool(EFFECT_FOLDERS & folders) or bool(_words(name) & set(EFFECT_WORDS))


def group_name(package: str, rel_path: str) -> str:
    """Near-duplicate versions share a group: ``pkg:stem`` without version suffixes."""
    stem = os.path.splitext(os.path.basename(rel_path))[0].lower()
    return f"{package}:{VERSION_SUFFIX.sub('', stem)}"


def split_of(group: str, seed: int = 0) -> str:
    """train / valid / test (80 / 10 / 10 %) from sha1(f"{seed}:{group}")."""
    bucket = int.from_bytes(hashlib.sha1(f"{seed}:{group}".encode()).digest()[:4], "big") % 100
    edge = 0
    for split in SPLITS:
        edge += SPLIT_PERCENT[split]
        if bucket < edge:
            return split
    return SPLITS[-1]


def crop_offsets(usable_seconds: float, hop_seconds: float) -> list[float]:
    """Offsets (s) of a track's training crops: every ``hop_seconds`` from ``hop_seconds`` on,
    the whole :data:`CLIP_SECONDS` inside ``usable_seconds``, skipping the clips' own offsets
    (multiples of :data:`CLIP_SECONDS`)."""
    if not hop_seconds > 0:
        raise ValueError(f"--train_clip_hop must be > 0 seconds, got {hop_seconds}")
    out = []
    j = 1
    while (offset := round(j * hop_seconds, 6)) + CLIP_SECONDS <= usable_seconds + 1e-6:
        if abs(offset / CLIP_SECONDS - round(offset / CLIP_SECONDS)) > 1e-6:
            out.append(offset)
        j += 1
    return out


def loop_period(envelope: np.ndarray, rate: float, min_seconds: float = 30.0,
                max_error: float = 0.2) -> float | None:
    """The repetition period (seconds) of a looped track from its loudness envelope, or None.

    ``envelope`` is a standardized log-RMS curve at ``rate`` values per second. For every lag of
    at least ``min_seconds`` the mean squared difference between the curve and itself shifted is
    computed (via FFT); a track is a loop if the best lag differs by less than ``max_error`` (music
    that does not repeat differs by 0.5 or more; planetblupi's loops by 0.002-0.15), and its
    period is the shortest lag within 3 × (best error) of the best (a loop played four times
    matches at 1, 2 and 3 periods).
    """
    x = np.asarray(envelope, np.float64)
    n = x.size
    lo = int(min_seconds * rate)
    if n < 2 * lo:
        return None
    size = 1 << int(np.ceil(np.log2(2 * n)))
    spectrum = np.fft.rfft(x, size)
    corr = np.fft.irfft(spectrum * np.conj(spectrum), size)[:n]  # sum_t x[t] x[t + lag]
    sq = np.cumsum(x ** 2)
    lags = np.arange(lo, n - lo // 3)
    head = sq[n - 1 - lags]  # sum of x[:n - lag] ** 2
    tail = sq[-1] - sq[lags - 1]  # sum of x[lag:] ** 2
    error = (head + tail - 2 * corr[lags]) / (n - lags)
    best = float(error.min())
    if best > max_error:
        return None
    first = int(np.argmax(error <= max(3 * best, 1e-3)))
    return float(lags[first] / rate)


def _envelope(path: str, rate: int = 20) -> tuple[np.ndarray, float]:
    import soundfile as sf

    data, sr = sf.read(path, dtype="float32", always_2d=True)
    x = data.mean(axis=1)
    hop = sr // rate
    n = x.size // hop
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1))
    env = np.log(rms + 1e-6)
    return (env - env.mean()) / (env.std() + 1e-9), sr / hop


# Free-text (pre-DEP-5) ``copyright`` files: licence names found by phrase, in this order.
# Each row: (SPDX-style name, pattern); a GNU licence's version and "or later" are read after it.
FREE_TEXT_LICENCES = (
    ("LGPL", r"GNU (?:Lesser|Library) General Public Licen[cs]e"),
    ("GPL", r"GNU General Public Licen[cs]e"),
    ("CC-BY-SA", r"Creative\s+Commons\s+Attribution[- ]Share\s*Alike|CC[- ]BY[- ]SA"
                 r"|License Elements[^:]{0,160}: Attribution, ShareAlike"),  # the legal code
    ("CC-BY", r"Creative\s+Commons\s+Attribution(?![- ]Share)|CC[- ]BY(?![- ]SA)"),
    ("CC0", r"\bCC0\b|Creative Commons Zero"),
    ("Artistic", r"Artistic Licen[cs]e"),
    ("public-domain", r"public domain"),
    ("Expat", r"\bMIT\b|\bExpat\b"),
)


def free_text_licences(text: str) -> list[str]:
    """Licence names (``GPL-2+``, ``CC-BY-SA-3.0``, ...) a free-text copyright file names, in order.

    A GNU licence takes the first "version N" within 200 characters after its name, and ``+``
    when "any later version" follows within 300; a Creative Commons licence its "N.N" number.
    """
    flat = " ".join(text.split())
    found: list[tuple[int, str]] = []
    for name, pattern in FREE_TEXT_LICENCES:
        for m in re.finditer(pattern, flat, flags=re.IGNORECASE):
            tail = flat[m.end():m.end() + 300]
            full = name
            if name in ("GPL", "LGPL"):
                v = re.search(r"version (\d(?:\.\d)?)", tail[:200], flags=re.IGNORECASE)
                if v:
                    full += "-" + v.group(1)
                    if re.search(r"any later version", tail, flags=re.IGNORECASE):
                        full += "+"
            elif name.startswith("CC-BY"):
                v = re.match(r"[^.;]{0,40}?(\d\.\d)", tail)
                if v:
                    full += "-" + v.group(1)
            found.append((m.start(), full))
    names = list(dict.fromkeys(full for _, full in sorted(found)))  # in the file's order
    # "GPL" alone says nothing more than a versioned "GPL-2+" beside it (but "CC-BY" is not
    # said by "CC-BY-SA-3.0": only a version number counts)
    return [n for n in names
            if not any(re.fullmatch(re.escape(n) + r"-\d.*", o) for o in names)]


def _licence(root: str, package: str) -> str:
    """Licence names of the package's ``copyright`` file.

    DEP-5 files: their ``License:`` fields; free-text files: :func:`free_text_licences`; neither:
    ``see /usr/share/doc/<package>/copyright``.
    """
    path = os.path.join(root, "usr", "share", "doc", package, "copyright")
    if not os.path.exists(path):
        return "unknown (no copyright file)"
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    names = []
    for line in text.splitlines():
        if line.startswith("License:"):
            name = line[len("License:"):].strip()
            if name and name not in names:
                names.append(name)
    if not names:
        names = free_text_licences(text)
    return ", ".join(names) if names else f"see /usr/share/doc/{package}/copyright"


def _track_record(package: str, root: str, rel: str) -> dict:
    """Duration, rate, sha1, artist and loop period of one audio file (cached by the caller)."""
    import soundfile as sf

    path = os.path.join(root, rel)
    with open(path, "rb") as f:
        sha1 = hashlib.sha1(f.read()).hexdigest()
    with sf.SoundFile(path) as f:
        duration = f.frames / f.samplerate
        meta = f.copy_metadata()
        record = {"package": package, "path": rel, "sha1": sha1, "seconds": round(duration, 3),
                  "sr": f.samplerate, "channels": f.channels,
                  "artist": meta.get("artist", ""), "title": meta.get("title", "")}
    record["loop_seconds"] = None
    if duration >= LOOP_MIN_SECONDS:
        env, rate = _envelope(path)
        record["loop_seconds"] = loop_period(env, rate)
    return record


def scan_package(package: str, root: str, index: dict) -> tuple[list[dict], list[dict]]:
    """Kept tracks and skipped files (reasons) of an unpacked package; ``index`` caches records."""
    tracks, skipped = [], []
    for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if not path.lower().endswith(AUDIO_EXTENSIONS) or not os.path.isfile(path):
            continue
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        key = f"v{SCAN_VERSION}:{package}/{rel}:{os.path.getsize(path)}"
        if key not in index:
            try:
                index[key] = _track_record(package, root, rel)
            except Exception as e:  # noqa: BLE001  an unreadable file is reported, never fatal
                index[key] = {"package": package, "path": rel, "error": f"{type(e).__name__}: {e}"}
        record = index[key]
        where = os.path.join(root, rel)
        if "error" in record:
            skipped.append({"clip_id": f"{package}/{rel}", "path": where, "split": "",
                            "error": "UnreadableTrack",
                            "reason": record["error"]})
        elif record["seconds"] < MIN_TRACK_SECONDS:
            continue  # short sounds: not music tracks (not failures either)
        elif is_effect(rel):
            skipped.append({"clip_id": f"{package}/{rel}", "path": where, "split": "",
                            "error": "NotMusic",
                            "reason": "sound effect or ambience (folder / file-name rule)"})
        else:
            tracks.append(dict(record, abs_path=where))
    return tracks, skipped


@register("debian")
def load_debian(input_path: str | None = None, *, packages: Sequence[str] = QUICK_PACKAGES,
                cache_dir: str | None = None, seed: int = 0,
                train_clip_hop: float | None = None, **_unused) -> Catalog:
    """Fetches, unpacks and scans the packages; returns their 30-s clips, split by track group.

    Args:
      input_path: the cache directory (same as ``cache_dir``; either may be given).
      packages: Debian package names.
      cache_dir: where downloads, unpacked trees and the scan index live (default
        :func:`default_cache_dir`).
      seed: the split seed.
      train_clip_hop: seconds between training crops (None: no crops; :func:`crop_offsets`).
    """
    cache_dir = cache_dir or input_path or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    index_path = os.path.join(cache_dir, "index.json")
    index = {}
    if os.path.exists(index_path):
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    skipped: list[dict] = []
    tracks: list[dict] = []
    package_info: dict[str, dict] = {}
    for package in packages:
        try:
            deb = download(package, cache_dir)
            root = unpack(deb, package, cache_dir)
        except LookupError as e:
            logging.warning("skipped package %s", e)
            skipped.append({"clip_id": package, "path": package, "split": "",
                            "error": "PackageUnavailable",
                            "reason": str(e)})
            continue
        kept, bad = scan_package(package, root, index)
        skipped += bad
        tracks += kept
        package_info[package] = {"deb": os.path.basename(deb), "licence": _licence(root, package),
                                 "tracks": len(kept)}
    from tftag.runs.runfiles import write_json_atomic

    write_json_atomic(index_path, index)
    clips, track_info, seen = [], [], {}
    for t in tracks:
        if t["sha1"] in seen:
            skipped.append({"clip_id": f"{t['package']}/{t['path']}", "path": t["abs_path"],
                            "split": "", "error": "Duplicate",
                            "reason": f"same bytes as {seen[t['sha1']]}"})
            continue
        seen[t["sha1"]] = f"{t['package']}/{t['path']}"
        usable = t["loop_seconds"] or t["seconds"]
        group = group_name(t["package"], t["path"])
        split = split_of(group, seed)
        n = int(usable // CLIP_SECONDS)
        for k in range(n):
            clips.append(Clip(f"{t['package']}/{t['path']}#{k:03d}", t["abs_path"], split, (),
                              offset=k * CLIP_SECONDS, duration=CLIP_SECONDS, group=group))
        crops = crop_offsets(usable, train_clip_hop) if train_clip_hop else []
        for offset in crops:
            clips.append(Clip(f"{t['package']}/{t['path']}@{offset:g}s", t["abs_path"], CROPS,
                              (), offset=offset, duration=CLIP_SECONDS, group=group))
        track_info.append({
            "package": t["package"], "path": t["path"], "seconds": t["seconds"],
            "loop_seconds": t["loop_seconds"], "clips": n, "split": split, "group": group,
            **({"crops": len(crops)} if train_clip_hop else {}),
            "licence": package_info[t["package"]]["licence"], "artist": t["artist"],
            "title": t["title"]})
    if not clips:
        raise ValueError(f"--packages={','.join(packages)}: no music found "
                         f"({len(skipped)} problems, e.g. {skipped[0]['reason'] if skipped else '-'})")
    return Catalog(
        name="debian", clips=tuple(clips), tags=(), skipped=tuple(skipped),
        info={"cache_dir": os.path.abspath(cache_dir), "packages": package_info,
              "tracks": track_info, "clip_seconds": CLIP_SECONDS, "split_seed": seed,
              **({"train_clip_hop": train_clip_hop} if train_clip_hop else {}),
              "split_rule": "sha1(seed:group) % 100: < 80 train, < 90 valid, else test"},
    )


def describe_tracks(catalog: Catalog) -> dict:
    """Per-package track, minute and clip counts of a debian catalogue."""
    out: dict[str, dict] = {}
    for t in catalog.info.get("tracks", []):
        row = out.setdefault(t["package"], {"tracks": 0, "minutes": 0.0, "clips": 0})
        row["tracks"] += 1
        row["minutes"] = round(row["minutes"] + (t["loop_seconds"] or t["seconds"]) / 60, 1)
        row["clips"] += t["clips"]
    return out

