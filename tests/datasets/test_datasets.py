"""The built-in corpus (determinism, labels = MIDI facts), catalogues and their errors, data cards."""

from __future__ import annotations

import csv
import json
import os

import mido
import numpy as np
import pytest

from tftag import datasets
from tftag.storage import datacard
from tftag.datasets import csv_catalog, mtat, synthetic

from conftest import run_module, write_clip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    return d, synthetic.render_corpus(str(d), num_clips=6, duration=3.0, sr=16000, seed=3)


def _files(d):
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            if n.endswith((".wav", ".mid", ".csv", ".txt", ".jsonl")) and not n.startswith("datacard"):
                p = os.path.join(root, n)
                out[os.path.relpath(p, d)] = open(p, "rb").read()
    return out


def test_same_seed_same_bytes(corpus, tmp_path):
    d, catalog = corpus
    again = synthetic.render_corpus(str(tmp_path / "again"), num_clips=6, duration=3.0, sr=16000,
                                    seed=3)
    first, second = _files(d), _files(tmp_path / "again")
    assert sorted(first) == sorted(second) and len(first) == 6 * 2 + 3
    assert all(first[k] == second[k] for k in first)
    assert [c.tags for c in again.clips] == [c.tags for c in catalog.clips]
    other = synthetic.render_corpus(str(tmp_path / "other"), num_clips=2, duration=3.0, sr=16000,
                                    seed=4)
    assert [c.tags for c in other.clips] != [c.tags for c in catalog.clips[:2]]


def test_corpus_files(corpus):
    d, catalog = corpus
    import soundfile as sf

    assert [c.clip_id for c in catalog.clips] == [f"synth{i:06d}" for i in range(6)]
    assert [c.split for c in catalog.clips] == ["train"] * 6  # folders 0-5
    for clip in catalog.clips:
        info = sf.info(clip.path)
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 48000, "PCM_16")
        audio, _ = sf.read(clip.path)
        assert np.abs(audio).max() > 1e-3  # real sound, not silence
        assert 4 <= len(clip.tags) <= 12
    assert catalog.tags == synthetic.TAGS
    with open(d / "catalog.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["path"] == "audio/0/synth000000.wav"


def _midi_facts(path):
    midi = mido.MidiFile(path)
    programs, drums, pitches, velocities = set(), False, [], []
    tempo = beats = None
    for track in midi.tracks:
        name = next((m.name for m in track if m.type == "track_name"), "")
        for m in track:
            if m.type == "set_tempo":
                tempo = mido.tempo2bpm(m.tempo)
            elif m.type == "time_signature":
                beats = m.numerator
            elif m.type == "program_change":
                programs.add(m.program)
            elif m.type == "note_on" and m.velocity > 0:
                velocities.append(m.velocity)
                if m.channel == 9:
                    drums = True
                elif name.startswith("lead:"):
                    pitches.append(m.note)
    return programs, drums, tempo, beats, pitches, velocities


def test_labels_match_the_midi(corpus, tmp_path):
    """Every tag is a fact of the MIDI file: programs, drum channel, tempo, meter, register."""
    d, catalog = corpus
    paths = {c.clip_id: str(d / "midi" / format(i % 16, "x") / f"{c.clip_id}.mid")
             for i, c in enumerate(catalog.clips)}
    tags = {c.clip_id: set(c.tags) for c in catalog.clips}
    for i in range(6, 60):  # more compositions, MIDI only
        song = synthetic.compose(3, i)
        paths[song.clip_id] = str(tmp_path / f"{song.clip_id}.mid")
        synthetic.write_midi(song, 3.0, 3, paths[song.clip_id])
        tags[song.clip_id] = set(song.tags)
    seen = set()
    for clip_id, path in paths.items():
        programs, drums, tempo, beats, pitches, velocities = _midi_facts(path)
        t = tags[clip_id]
        seen |= t
        for inst in synthetic.INSTRUMENTS:
            assert (inst.tag in t) == (inst.program in programs), (clip_id, inst.tag, programs)
        assert ("drums" in t) == drums and ("no drums" in t) == (not drums)
        assert ("fast" in t) == (tempo >= 140) and ("slow" in t) == (tempo <= 80)
        assert ("waltz" in t) == (beats == 3)
        assert ("low" in t) == (max(pitches) < 60) and ("high" in t) == (min(pitches) >= 84)
        assert ("loud" in t) == (min(velocities) >= 100) and ("quiet" in t) == (max(velocities) <= 52)
        assert ("solo" in t) == (len(programs) == 1 and not drums)
        assert ("major" in t) != ("minor" in t)
    assert len(seen) >= 24  # most of the vocabulary occurs in 60 clips


def test_tag_frequencies_are_skewed():
    counts = {t: 0 for t in synthetic.TAGS}
    for i in range(1000):
        for t in synthetic.compose(0, i).tags:
            counts[t] += 1
    assert counts["piano"] > 350 and counts["choir"] < 60  # like real tags: a long tail
    assert all(c > 0 for c in counts.values())


def test_resume_and_settings_guard(tmp_path):
    d = str(tmp_path / "c")
    first = synthetic.render_corpus(d, num_clips=3, duration=2.0, seed=1)
    assert first.info["rendered_now"] == 3
    grown = synthetic.render_corpus(d, num_clips=5, duration=2.0, seed=1)
    assert grown.info["rendered_now"] == 2 and len(grown.clips) == 5
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        synthetic.render_corpus(d, num_clips=5, duration=3.0, seed=1)


def test_synth_pipeline_and_data_card(tmp_path):
    out = tmp_path / "corpus"
    proc = run_module("pipelines.synth", "--num_clips=5", "--duration=2", f"--output_dir={out}",
                      "--seed=2")
    card = json.loads((out / "datacard.json").read_text())
    assert card["clips"] == 5 and card["splits"] == {"train": 5}
    assert card["durations"]["total_hours"] == pytest.approx(10 / 3600, abs=1e-4)
    assert sum(card["tag_counts"]["train"].values()) == sum(
        len(c.tags) for c in datasets.load("synthetic", str(out)).clips)
    assert (out / "tag_frequencies.png").read_bytes()[:4] == b"\x89PNG"
    assert "catalog synthetic: 5 clips, train 5" in proc.stdout
    described = run_module("pipelines.synth", "--mode=describe", f"--output_dir={out}")
    assert "catalog synthetic: 5 clips, train 5" in described.stdout
    assert "labels per clip" in described.stdout


# ----------------------------------------------------------------------------- MTAT


def _mtat_fixture(d):
    header = ["clip_id", "singer"] + list(mtat.TOP50_TAGS) + ["mp3_path"]
    rows = [  # (clip_id, folder, tags, has audio)
        ("2", "0", ["guitar", "classical"], True),
        ("6", "5", ["piano"], True),
        ("10", "b", [], True),
        ("11", "c", ["choral", "choir"], True),
        ("12", "d", ["techno", "beat"], True),
        ("13", "f", ["male vocal"], True),
        ("35644", "e", [], True),  # excluded by the community split
        ("20", "e", ["rock"], False),  # audio missing
        ("21", "a", ["violin", "strings"], True),
        ("22", "1", ["slow", "soft"], True),
    ]
    lines = ["\t".join(f'"{h}"' for h in header)]
    for clip_id, folder, tags, has_audio in rows:
        rel = f"{folder}/artist-album-{clip_id}-0-29.mp3"
        values = [clip_id, "0"] + ["1" if t in tags else "0" for t in mtat.TOP50_TAGS] + [rel]
        lines.append("\t".join(f'"{v}"' for v in values))
        if has_audio:
            os.makedirs(d / folder, exist_ok=True)
            write_clip(str(d / rel), 2.0, 16000, seed=int(clip_id) % 7, format="MP3")
    (d / mtat.ANNOTATIONS).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


def test_mtat_catalog(tmp_path):
    _mtat_fixture(tmp_path)
    cat = datasets.load("mtat", str(tmp_path))
    assert cat.tags == mtat.TOP50_TAGS and len(cat.tags) == 50 and cat.tags[:3] == ("guitar", "classical", "slow")
    by_id = {c.clip_id: c for c in cat.clips}
    assert sorted(by_id) == sorted(["2", "6", "10", "11", "12", "13", "21", "22"])
    assert {c: by_id[c].split for c in ("2", "10", "11", "12", "13")} == {
        "2": "train", "10": "train", "11": "valid", "12": "test", "13": "test"}
    assert set(by_id["11"].tags) == {"choral", "choir"} and by_id["10"].tags == ()
    assert cat.label_indices(by_id["2"]) == [0, 1]
    skipped = {r["clip_id"]: r for r in cat.skipped}
    assert skipped["35644"]["reason"] == "excluded by the community split (empty clip)"
    assert "audio file not found" in skipped["20"]["reason"] and skipped["20"]["split"] == "test"
    assert datasets.detect(str(tmp_path)) == "mtat"
    assert cat.info["split_counts"] == {"train": 5, "valid": 1, "test": 2} and not cat.info["paper_split"]


def test_mtat_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations_final.csv not found"):
        datasets.load("mtat", str(tmp_path))
    (tmp_path / mtat.ANNOTATIONS).write_text('"clip_id"\t"guitar"\t"mp3_path"\n"1"\t"1"\t"0/a.mp3"\n')
    with pytest.raises(ValueError, match="top-50 tag column\\(s\\) missing: classical, slow"):
        datasets.load("mtat", str(tmp_path))
    header = ["clip_id"] + list(mtat.TOP50_TAGS) + ["mp3_path"]
    row = ["1"] + ["0"] * 50 + ["x/a.mp3"]
    (tmp_path / mtat.ANNOTATIONS).write_text("\t".join(header) + "\n" + "\t".join(row) + "\n")
    with pytest.raises(ValueError, match="is not in a folder 0..f"):
        datasets.load("mtat", str(tmp_path))
    (tmp_path / mtat.ANNOTATIONS).write_text("\t".join(header) + "\n" + "\t".join(row[:-2]) + "\n")
    with pytest.raises(ValueError, match="50 fields, header has 52"):
        datasets.load("mtat", str(tmp_path))


def test_extract_mtat_records_catalogue_skips(tmp_path):
    src = tmp_path / "mtat"
    src.mkdir()
    _mtat_fixture(src)
    out = tmp_path / "ds"
    proc = run_module("pipelines.extract", f"--input={src}", f"--output_dir={out}", "--sr=16000",
                      "--n_mels=16", "--hop_factors=1", "--compressions=log", "--duration=2",
                      "--describe")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["source"]["catalog"] == "mtat" and meta["tags"] == list(mtat.TOP50_TAGS)
    assert meta["splits"] == {"test": 2, "train": 5, "valid": 1}
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["clip_id"], f["stage"]) for f in failures] == [("20", "catalog"), ("35644", "catalog")]
    assert "0 failed and 2 skipped by the catalogue" in proc.stdout
    assert (out / "tag_frequencies.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- CSV and MSD


def _write_csv(path, rows, header=("path", "split", "tags")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_csv_catalog_tag_list(tmp_path):
    rows = [("a.wav", "train", "rock;pop"), ("b.wav", "train", "rock"), ("c.wav", "train", "jazz"),
            ("d.wav", "valid", "pop;blues"), ("e.wav", "test", "")]
    _write_csv(tmp_path / "c.csv", rows)
    cat = datasets.load("csv", str(tmp_path / "c.csv"))
    assert cat.tags == ("rock", "jazz", "pop")  # train counts 2, 1, 1 (ties by name)
    assert cat.info["tags_not_in_list"] == ["blues"]
    assert cat.clips[0].path == str(tmp_path / "a.wav")
    assert datasets.load("csv", str(tmp_path / "c.csv"), min_tag_count=2).tags == ("rock",)


@pytest.mark.parametrize(
    "rows, header, message",
    [
        ([("a.wav", "train")], ("path", "split"), "missing column(s) tags"),
        ([("a.wav", "dev", "x")], ("path", "split", "tags"), "split 'dev' not one of train, valid, test"),
        ([("a.wav", "train", "x"), ("a.wav", "test", "y")], ("path", "split", "tags"),
         "1 duplicate clip ids, e.g. 'a.wav'"),
        ([("", "train", "x")], ("path", "split", "tags"), ":2: empty path"),
        ([], ("path", "split", "tags"), "no rows"),
    ],
)
def test_csv_errors(tmp_path, rows, header, message):
    _write_csv(tmp_path / "c.csv", rows, header)
    with pytest.raises(ValueError) as err:
        datasets.load("csv", str(tmp_path / "c.csv"))
    assert message in str(err.value)


def test_unknown_catalog():
    with pytest.raises(ValueError, match="unknown catalog 'magna'; known: csv, debian, folder, msd, mtat, synthetic"):
        datasets.load("magna", "x")


def test_msd_catalog(tmp_path):
    (tmp_path / "tags.txt").write_text("rock\npop\njazz\n")
    (tmp_path / "audio").mkdir()
    for i, split in enumerate(("train", "valid", "test")):
        write_clip(str(tmp_path / "audio" / f"TR{i}.wav"), 1.5, 16000, seed=i)
        lines = [f"TR{i}\taudio/TR{i}.wav\trock;80s", f"TRX{i}\taudio/missing{i}.wav\tpop"]
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    cat = datasets.load("msd", str(tmp_path))
    assert cat.tags == ("rock", "pop", "jazz") and len(cat.clips) == 3
    assert cat.info["tags_not_in_list"] == {"80s": 3}
    assert [r["clip_id"] for r in cat.skipped] == ["TRX0", "TRX1", "TRX2"]
    assert datasets.detect(str(tmp_path)) == "msd"
    (tmp_path / "test.tsv").write_text("TRX9\taudio/nope.wav\trock\n")
    with pytest.raises(ValueError, match="split\\(s\\) test have no usable tracks"):
        datasets.load("msd", str(tmp_path))
    (tmp_path / "valid.tsv").write_text("TR1 audio/TR1.wav rock\n")
    with pytest.raises(ValueError, match="valid.tsv:1: expected track_id<TAB>path<TAB>tags"):
        datasets.load("msd", str(tmp_path))


def test_format_card():
    cat = datasets.Catalog("t", (datasets.Clip("a", "/nope/a.wav", "train", ("x", "y")),
                                 datasets.Clip("b", "/nope/b.wav", "test", ("x",))), ("x", "y"))
    card = datacard.describe(cat)
    assert card["tag_counts"] == {"test": {"x": 1, "y": 0}, "train": {"x": 1, "y": 1}}
    assert card["unreadable"] == 2 and card["labels_per_clip"]["mean"] == 1.5
    text = datacard.format_card(card)
    assert text.splitlines()[0] == "catalog t: 2 clips, test 1, train 1"
    assert csv_catalog.build_tag_list(cat.clips, 1) == ("x", "y")
