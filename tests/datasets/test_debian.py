"""The debian catalogue on a fake package built here with dpkg-deb, and teacher labels."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile

import numpy as np
import pytest
import soundfile as sf

from conftest import run_module, tone_mix
from tftag.datasets import debian

PKG = "tftag-fake-music"
OGG = {"format": "OGG", "subtype": "VORBIS"}


def _ogg(path, seconds, seed, sr=22050):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, tone_mix(seconds, sr, seed), sr, **OGG)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache dir whose debs/ holds a fake package: 2 songs of one group, a .pk3 song, an
    effect, a 5-s sound, a duplicate and an unreadable file."""
    root = tmp_path_factory.mktemp("pkg") / PKG
    music = root / "usr/share/games/fake/music"
    _ogg(str(music / "song_a.ogg"), 35, 1)
    _ogg(str(music / "song_a_fast.ogg"), 40, 2)
    (music / "zz_copy_of_a.ogg").write_bytes((music / "song_a.ogg").read_bytes())
    _ogg(str(root / "usr/share/games/fake/sounds/birds.ogg"), 45, 3)
    _ogg(str(root / "usr/share/games/fake/sfx_click.ogg"), 5, 4)
    (music / "broken.ogg").write_bytes(np.random.default_rng(0).bytes(5000))
    pk3_song = root / "tmp_song.ogg"
    _ogg(str(pk3_song), 65, 5)
    with zipfile.ZipFile(root / "usr/share/games/fake/data.pk3", "w") as z:
        z.write(pk3_song, "sound/cdtracks/pk3song.ogg")
    os.remove(pk3_song)
    doc = root / f"usr/share/doc/{PKG}"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Format: https://www.debian.org/doc/packaging-manuals/"
                                   "copyright-format/1.0/\n\nFiles: *\nLicense: CC-BY-4.0\n")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        f"Package: {PKG}\nVersion: 1.0\nArchitecture: all\nMaintainer: tftag <t@example.org>\n"
        "Description: test music\n")
    cache = tmp_path_factory.mktemp("cache")
    (cache / "debs").mkdir()
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root),
                    str(cache / "debs" / f"{PKG}_1.0_all.deb")], check=True, capture_output=True)
    return cache


def test_catalogue_keeps_music_and_reports_the_rest(cache):
    cat = debian.load_debian(packages=[PKG, "tftag-no-such-package"], cache_dir=str(cache))
    ids = sorted(c.clip_id for c in cat.clips)
    base = f"{PKG}/usr/share/games/fake"
    assert ids == [f"{base}/data.pk3.d/sound/cdtracks/pk3song.ogg#000",
                   f"{base}/data.pk3.d/sound/cdtracks/pk3song.ogg#001",
                   f"{base}/music/song_a.ogg#000", f"{base}/music/song_a_fast.ogg#000"]
    pk3 = [c for c in cat.clips if "pk3song" in c.clip_id]
    assert [(c.offset, c.duration) for c in pk3] == [(0.0, 30.0), (30.0, 30.0)]
    # Near-duplicate versions share a group and so a split.
    a = {c.split for c in cat.clips if "song_a" in c.clip_id}
    assert len(a) == 1 and a <= {"train", "valid", "test"}
    problems = {(s["error"], os.path.basename(s["path"])) for s in cat.skipped}
    assert problems == {("PackageUnavailable", "tftag-no-such-package"),
                        ("NotMusic", "birds.ogg"), ("UnreadableTrack", "broken.ogg"),
                        ("Duplicate", "zz_copy_of_a.ogg")}  # song_a.ogg is first in path order
    dup = next(s for s in cat.skipped if s["error"] == "Duplicate")
    assert dup["reason"].endswith("music/song_a.ogg")
    assert "not in this machine's apt sources" in next(
        s["reason"] for s in cat.skipped if s["error"] == "PackageUnavailable")
    assert cat.info["packages"][PKG]["licence"] == "CC-BY-4.0"
    tracks = {t["path"].split("/")[-1]: t for t in cat.info["tracks"]}
    assert tracks["pk3song.ogg"]["clips"] == 2 and tracks["song_a_fast.ogg"]["seconds"] == 40.0
    # A rerun reuses the download, the unpacked tree and the scan index.
    again = debian.load_debian(packages=[PKG], cache_dir=str(cache))
    assert sorted(c.clip_id for c in again.clips) == ids
    assert json.loads((cache / "index.json").read_text())


def test_rules():
    assert debian.group_name("supertuxkart-data", "m/cocoa_river_fast.ogg") == \
        debian.group_name("supertuxkart-data", "m/cocoa_river.ogg") == "supertuxkart-data:cocoa_river"
    assert debian.group_name("supertux-data", "m/airship_old.ogg") == "supertux-data:airship"
    assert debian.group_name("x", "rybky01.ogg") != debian.group_name("x", "rybky02.ogg")
    assert [debian.is_effect(p) for p in (
        "a/sounds/day.ogg", "a/sfx/x.ogg", "a/thunder.ogg", "t/steamLocomotive.ogg",
        "a/bright_thunders.ogg", "a/call_of_the_winding_path.ogg", "m/Ambience.ogg")] == \
        [True, True, True, True, False, False, False]
    splits = [debian.split_of(f"g{i}") for i in range(1000)]
    assert 750 < splits.count("train") < 850 and splits.count("valid") > 60
    assert debian.split_of("g1", seed=0) == debian.split_of("g1", seed=0)


def test_free_text_copyright_licences():
    # Pre-DEP-5 copyright files (4 of the 17 study packages, e.g. wesnoth-1.16-music,
    # fillets-ng-data) name their licences in prose; their first line is "This package was
    # debianized by ...", which the model cards showed as the licence before.
    wesnoth_like = """This package was originally debianized by Someone <a@b.c>
    License:
            it under the terms of the GNU General Public License version 2
            or at your option any later version.
            modify it under the terms of the GNU Library General Public
            License as published by the Free Software Foundation; either
            version 2 of the License, or (at your option) any later version.
            * Dual licensed under the MIT (MIT-LICENSE.txt)"""
    assert debian.free_text_licences(wesnoth_like) == ["GPL-2+", "LGPL-2+", "Expat"]
    assert debian.free_text_licences(
        "The music is under the Creative Commons Attribution-ShareAlike 3.0 licence; the\n"
        "sounds are CC-BY 4.0 and in the public domain; GNU General Public License,\n"
        "version 3.") == ["CC-BY-SA-3.0", "CC-BY-4.0", "public-domain", "GPL-3"]
    assert debian.free_text_licences(
        "Music: Creative Commons Attribution; art: CC-BY-SA 3.0; code: GNU General Public "
        "License, and parts GNU General Public License version 2.") == [
            "CC-BY", "CC-BY-SA-3.0", "GPL-2"]
    assert debian.free_text_licences("Copyright 2001 Somebody. All rights reserved.") == []
    # singularity-music quotes the CC BY-SA legal code, which names itself only this way
    assert debian.free_text_licences(
        "CREATIVE COMMONS PUBLIC LICENSE (\"CCPL\")... \"License Elements\" means the\n"
        "following high-level license attributes as selected by Licensor and indicated in the\n"
        "title of this License: Attribution, ShareAlike.") == ["CC-BY-SA"]


def test_licence_of_an_unpacked_package(tmp_path):
    doc = tmp_path / "usr" / "share" / "doc"
    for pkg, text in {"dep5": "Files: *\nLicense: GPL-2+\n\nFiles: m/*\nLicense: CC0-1.0\n",
                      "prose": "This package was debianized by X.\nGNU General Public License",
                      "none": "This package was debianized by X.\nAsk the author."}.items():
        (doc / pkg).mkdir(parents=True)
        (doc / pkg / "copyright").write_text(text)
    assert debian._licence(str(tmp_path), "dep5") == "GPL-2+, CC0-1.0"
    assert debian._licence(str(tmp_path), "prose") == "GPL"
    assert debian._licence(str(tmp_path), "none") == "see /usr/share/doc/none/copyright"
    assert debian._licence(str(tmp_path), "absent") == "unknown (no copyright file)"


def test_crop_offsets():
    """Crops start every hop, fit inside the track and skip the clips' own offsets."""
    assert debian.crop_offsets(100.0, 15.0) == [15.0, 45.0]  # 60: a clip; 75 + 30 > 100
    assert debian.crop_offsets(65.0, 10.0) == [10.0, 20.0]
    assert debian.crop_offsets(35.0, 10.0) == []
    assert debian.crop_offsets(90.0, 7.5) == [7.5, 15.0, 22.5, 37.5, 45.0, 52.5]
    with pytest.raises(ValueError, match="--train_clip_hop must be > 0"):
        debian.crop_offsets(100.0, 0.0)


def test_training_crops_are_extracted_apart_from_the_clips(cache, tmp_path):
    """--train_clip_hop=10 stores 3 crops (song_a_fast 10-40 s, pk3song 10-40 and 20-50 s) in
    their own split with the clips' groups; the clips and their groups are those of an
    extraction without crops; a crop's mel is its track 10 s on (the overlap matches clip #000)."""
    from tftag.storage import data
    from tftag.datasets import CROPS
    from tftag.features import MelConfig

    config = MelConfig(16000, 16, 1, "log")
    common = [f"--cache_dir={cache}", f"--packages={PKG}", "--catalog=debian",
              f"--resolutions={config.name}", "--duration=29.1"]
    run_module("tftag.main", "--mode=extract", f"--run_dir={tmp_path / 'plain'}", *common)
    # A study's flagfile extracts as it is: extraction ignores --folds (a view of its dataset).
    proc = run_module("tftag.main", "--mode=extract", f"--run_dir={tmp_path / 'crops'}",
                      "--train_clip_hop=10", "--folds=2", *common)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plain, with_crops = str(tmp_path / "plain" / "dataset"), str(tmp_path / "crops" / "dataset")
    info = json.loads(open(os.path.join(with_crops, "dataset.json")).read())
    assert info["splits"][CROPS] == 3 and info["source"]["train_clip_hop"] == 10.0
    groups, crops = data.dataset_groups(with_crops, config)
    assert (groups, {}) == data.dataset_groups(plain, config)
    song, pk3 = f"{PKG}/usr/share/games/fake/music/song_a_fast.ogg", \
        f"{PKG}/usr/share/games/fake/data.pk3.d/sound/cdtracks/pk3song.ogg"
    assert crops == {f"{song}@10s": f"{PKG}:song_a", f"{pk3}@10s": f"{PKG}:pk3song",
                     f"{pk3}@20s": f"{PKG}:pk3song"}
    assert all(s != CROPS for s in info["splits"] if info["splits"][s] == 4)
    mels = {e["clip_id"]: e["mel"] for e in data.read_examples(with_crops, config)}
    assert sorted(mels) == sorted(list(groups) + list(crops))
    shift = round(10 * config.sr / config.hop_length)  # frames in 10 s
    a, b = mels[f"{pk3}#000"][shift + 8:-8], mels[f"{pk3}@10s"][8:len(mels[f"{pk3}#000"]) - shift - 8]
    np.testing.assert_allclose(a, b, atol=1e-3)  # 1.4e-4 measured; 0.98 at a 0-s offset


def test_loop_period():
    rng = np.random.default_rng(0)
    loop = rng.standard_normal(20 * 50)  # a 50-s loop at 20 values per second
    env = np.concatenate([loop] * 6 + [loop[:200]]) + 0.05 * rng.standard_normal(20 * 50 * 6 + 200)
    assert debian.loop_period(env, 20.0) == pytest.approx(50.0, abs=0.1)
    assert debian.loop_period(rng.standard_normal(20 * 300), 20.0) is None


def test_extraction_with_teacher_labels(cache, tmp_path):
    """Teacher labels in the TFRecords equal the pretrained model on the same mel; every track
    is a clip source or in failures.jsonl; the job exits 0."""
    import tensorflow as tf

    from tftag import evaluate
    from tftag.extraction import teacher
    from tftag.storage import data
    from tftag.features import MelConfig
    from tftag.models import pretrained

    run_dir = tmp_path / "run"
    proc = run_module("tftag.main", "--mode=extract", f"--run_dir={run_dir}", "--catalog=debian",
                      f"--cache_dir={cache}", f"--packages={PKG},tftag-no-such-package",
                      "--labels=teacher:MTT_musicnn", "--resolutions=sr16000-mel96-hop1-log",
                      "--duration=29.1")
    assert proc.returncode == 0 and "extracted 4/4 clips" in proc.stdout
    info = json.loads((run_dir / "dataset" / "dataset.json").read_text())
    assert info["labels"] == "teacher:MTT_musicnn" and info["tags"] == list(teacher.tags())
    assert info["source"]["packages"][PKG]["licence"] == "CC-BY-4.0"
    failures = [json.loads(line) for line in (run_dir / "dataset" / "failures.jsonl").open()]
    assert sorted(f["error"] for f in failures) == ["Duplicate", "NotMusic", "PackageUnavailable",
                                                    "UnreadableTrack"]
    model = pretrained.load_musicnn("MTT_musicnn")
    examples = list(data.read_examples(str(run_dir / "dataset"), MelConfig(16000, 96, 1, "log")))
    assert len(examples) == 4
    for ex in examples:
        expected = evaluate.patch_scores(model, tf.constant(ex["mel"][None]), 187).numpy()[0]
        np.testing.assert_allclose(ex["soft_labels"], expected, atol=1e-5)
        top3 = set(np.argsort(-expected)[:3])
        assert set(np.flatnonzero(ex["labels"])) == top3


def test_both_entry_points_split_with_the_seed(cache, tmp_path):
    """pipelines/extract.py and --mode=extract resolve the catalogue through one function: the
    same --seed gives the same clips in the same splits (seed 7 moves both groups of the fake
    package away from their seed-0 splits)."""
    from tftag.storage import data
    from tftag.features import MelConfig

    catalogue = [f"--cache_dir={cache}", f"--packages={PKG}", "--catalog=debian", "--seed=7",
                 "--resolutions=sr16000-mel16-hop1-log"]
    run_dir, out = tmp_path / "run", tmp_path / "out"
    run_module("tftag.main", "--mode=extract", f"--run_dir={run_dir}", *catalogue)
    run_module("pipelines.extract", f"--output_dir={out}", *catalogue)
    config = MelConfig(16000, 16, 1, "log")

    def splits(dataset_dir):
        names = json.loads((dataset_dir / "dataset.json").read_text())["splits"]
        return {split: sorted(e["clip_id"] for e in data.read_examples(str(dataset_dir), config,
                                                                         split=split))
                for split in names}

    main_splits, pipeline_splits = splits(run_dir / "dataset"), splits(out)
    assert main_splits == pipeline_splits
    groups = {"song_a": "valid", "pk3song": "train"}  # seed 0: train and test
    assert {g: debian.split_of(f"{PKG}:{g}", 7) for g in groups} == groups
    assert {g: debian.split_of(f"{PKG}:{g}", 0) for g in groups} == {"song_a": "train",
                                                                      "pk3song": "test"}
    by_clip = {c: s for s, clips in main_splits.items() for c in clips}
    assert len(by_clip) == 4
    assert by_clip == {c: groups["pk3song" if "pk3song" in c else "song_a"] for c in by_clip}
    for dataset_dir in (run_dir / "dataset", out):
        assert json.loads((dataset_dir / "dataset.json").read_text())["source"]["split_seed"] == 7
