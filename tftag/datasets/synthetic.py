"""The built-in corpus: procedurally composed MIDI rendered by FluidSynth, tagged by construction.

Every clip is composed from a seeded generator (chord progression, melody, bass line, drum
pattern), written as a General MIDI file and rendered with FluidSynth and the FluidR3 GM
SoundFont. Its tags are facts of the composition, multi-label like MagnaTagATune, with a skewed
frequency: instruments present, drums / no drums, fast / slow tempo, loud / quiet, low / high
register, solo / ensemble, major / minor, waltz (3/4), staccato / legato. Timbre and register
tags need frequency detail, tempo, meter and articulation tags need time detail.

Splits follow MagnaTagATune's folder split: clip i lives in folder ``i % 16`` (hex); folders
0-b train, c valid, d-f test. The same seed gives a byte-identical corpus.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from tftag.datasets import Catalog, Clip, check_unique_ids, register

SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
CORPUS_VERSION = 1
TICKS_PER_BEAT = 480
DRUM_CHANNEL = 9
FOLDER_SPLITS = {**{f: "train" for f in "0123456789ab"}, "c": "valid", "d": "test", "e": "test",
                 "f": "test"}


@dataclasses.dataclass(frozen=True)
class Instrument:
    """A General MIDI instrument of the corpus and the roles it can play."""

    tag: str
    program: int  # 0-based General MIDI program
    roles: tuple[str, ...]
    lead_weight: float = 0.0
    chords_weight: float = 0.0


INSTRUMENTS = (
    Instrument("piano", 0, ("lead", "chords"), 5.0, 5.0),
    Instrument("organ", 16, ("lead", "chords"), 0.8, 1.5),
    Instrument("guitar", 24, ("lead", "chords"), 2.0, 2.5),
    Instrument("bass", 33, ("bass",)),
    Instrument("strings", 48, ("chords",), 0.0, 3.0),
    Instrument("violin", 40, ("lead",), 2.0),
    Instrument("cello", 42, ("lead",), 1.0),
    Instrument("flute", 73, ("lead",), 2.0),
    Instrument("brass", 61, ("lead", "chords"), 0.8, 1.0),
    Instrument("choir", 52, ("chords",), 0.0, 0.6),
    Instrument("synth lead", 80, ("lead",), 1.5),
    Instrument("synth pad", 89, ("chords",), 0.0, 1.5),
    Instrument("harp", 46, ("lead", "chords"), 0.6, 0.7),
)
BY_TAG = {i.tag: i for i in INSTRUMENTS}
TAGS = tuple(i.tag for i in INSTRUMENTS) + (
    "drums", "no drums", "fast", "slow", "loud", "quiet", "low", "high", "solo", "ensemble",
    "major", "minor", "waltz", "staccato", "legato",
)

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
PROGRESSIONS = ((0, 4, 5, 3), (0, 3, 4, 4), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 0, 4), (0, 1, 4, 0))
RHYTHMS = {  # melody durations (beats) per bar
    4: ((1, 1, 1, 1), (2, 1, 1), (0.5, 0.5, 1, 2), (1.5, 0.5, 1, 1), (0.5,) * 8, (1, 0.5, 0.5, 2)),
    3: ((1, 1, 1), (2, 1), (0.5, 0.5, 1, 1), (1.5, 0.5, 1), (0.5,) * 6),
}
TEMPO = {"slow": (60, 80), "medium": (96, 120), "fast": (140, 176)}
DYNAMICS = {"quiet": ((32, 52), 0.3), "medium": ((68, 88), 0.6), "loud": ((100, 124), 1.0)}
ARTICULATION = {"staccato": 0.3, "medium": 0.75, "legato": 1.0}
# Lowest melody note; the melody spans at most 23 semitones above it, so the registers never
# overlap: low melodies stay below MIDI 60, high ones at or above 84.
REGISTER = {"low": 36, "medium": 60, "high": 84}


@dataclasses.dataclass(frozen=True)
class Part:
    """One MIDI track: an instrument in a role on a channel."""

    role: str  # lead, chords, bass, drums
    tag: str
    program: int
    channel: int


@dataclasses.dataclass(frozen=True)
class Song:
    """The composition parameters of one clip; its tags follow from them."""

    clip_id: str
    index: int
    tempo_bpm: int
    beats_per_bar: int
    root: int
    mode: str
    register: str
    dynamics: str
    articulation: str
    parts: tuple[Part, ...]
    progression: tuple[int, ...]

    @property
    def folder(self) -> str:
        return format(self.index % 16, "x")

    @property
    def split(self) -> str:
        return FOLDER_SPLITS[self.folder]

    @property
    def has_drums(self) -> bool:
        return any(p.role == "drums" for p in self.parts)

    @property
    def tempo_class(self) -> str:
        return next(k for k, (lo, hi) in TEMPO.items() if lo <= self.tempo_bpm <= hi)

    @property
    def tags(self) -> tuple[str, ...]:
        """The clip's tags in vocabulary order."""
        melodic = [p for p in self.parts if p.role != "drums"]
        tags = {p.tag for p in melodic}
        tags.add("drums" if self.has_drums else "no drums")
        tags.add(self.mode)
        for value in (self.tempo_class, self.dynamics, self.articulation):
            if value != "medium":
                tags.add(value)
        if self.register != "medium":
            tags.add(self.register)
        if len(melodic) == 1 and not self.has_drums:
            tags.add("solo")
        if len(melodic) >= 3:
            tags.add("ensemble")
        if self.beats_per_bar == 3:
            tags.add("waltz")
        return tuple(t for t in TAGS if t in tags)


def _pick(rng: np.random.Generator, options: Sequence[Instrument], weight: Callable, exclude=()):
    cands = [i for i in options if weight(i) > 0 and i.tag not in exclude]
    w = np.array([weight(i) for i in cands])
    return cands[rng.choice(len(cands), p=w / w.sum())]


def compose(seed: int, index: int) -> Song:
    """The composition of clip ``index`` of the corpus with ``seed`` (pure function)."""
    rng = np.random.default_rng([seed, index])
    solo = rng.random() < 0.18
    lead = _pick(rng, INSTRUMENTS, lambda i: i.lead_weight)
    parts = [Part("lead", lead.tag, lead.program, 0)]
    if not solo:
        if rng.random() < 0.8:
            chords = _pick(rng, INSTRUMENTS, lambda i: i.chords_weight, exclude={lead.tag})
            parts.append(Part("chords", chords.tag, chords.program, 1))
        if rng.random() < 0.6:
            parts.append(Part("bass", "bass", BY_TAG["bass"].program, 2))
        if rng.random() < 0.65:
            parts.append(Part("drums", "drums", 0, DRUM_CHANNEL))
    tempo_class = rng.choice(list(TEMPO), p=[0.3, 0.4, 0.3])
    lo, hi = TEMPO[tempo_class]
    return Song(
        clip_id=f"synth{index:06d}",
        index=index,
        tempo_bpm=int(rng.integers(lo, hi + 1)),
        beats_per_bar=3 if rng.random() < 0.2 else 4,
        root=int(rng.integers(0, 12)),
        mode="major" if rng.random() < 0.55 else "minor",
        register=str(rng.choice(list(REGISTER), p=[0.25, 0.5, 0.25])),
        dynamics=str(rng.choice(list(DYNAMICS), p=[0.25, 0.5, 0.25])),
        articulation=str(rng.choice(list(ARTICULATION), p=[0.25, 0.5, 0.25])),
        parts=tuple(parts),
        progression=PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))],
    )


def _scale_note(song: Song, degree: int, base: int) -> int:
    """MIDI pitch of a scale degree (>= 0), counted from the first tonic at or above ``base``."""
    scale = MAJOR if song.mode == "major" else MINOR
    octave, step = divmod(degree, 7)
    tonic = base + (song.root - base) % 12
    return tonic + 12 * octave + scale[step]


def song_events(song: Song, duration: float, seed: int) -> list[tuple[float, int, int, int, float]]:
    """Notes as (start beat, channel, pitch, velocity, length in beats), covering ``duration``."""
    rng = np.random.default_rng([seed, song.index, 1])
    beats = song.beats_per_bar
    n_bars = int(np.ceil(duration * song.tempo_bpm / 60 / beats)) + 1
    (vlo, vhi), _ = DYNAMICS[song.dynamics]
    art = ARTICULATION[song.articulation]
    low = REGISTER[song.register]
    events = []

    def vel():
        return int(rng.integers(vlo, vhi + 1))

    degree = 3  # melody: random walk on scale degrees 0..6 above the register's tonic
    for bar in range(n_bars):
        t0 = bar * beats
        chord = song.progression[bar % len(song.progression)]
        for part in song.parts:
            if part.role == "lead":
                rhythm = RHYTHMS[beats][int(rng.integers(len(RHYTHMS[beats])))]
                t = t0
                for d in rhythm:
                    degree = int(np.clip(degree + rng.integers(-2, 3), 0, 6))
                    events.append((t, part.channel, _scale_note(song, degree, low), vel(), d * art))
                    t += d
            elif part.role == "chords":
                base = max(low - 12, 36)
                tones = [_scale_note(song, chord + k, base) for k in (0, 2, 4)]
                if part.tag in ("harp", "guitar"):  # arpeggiated eighths
                    for j in range(beats * 2):
                        events.append((t0 + j / 2, part.channel, tones[j % 3], vel(), 0.5 * art))
                else:
                    for pitch in tones:
                        events.append((t0, part.channel, pitch, vel(), beats * art))
            elif part.role == "bass":
                pitch = _scale_note(song, chord, 28)
                for b in range(0, beats, 2 if beats == 4 else 3):
                    events.append((t0 + b, part.channel, pitch, vel(), 2 * art if beats == 4 else 3 * art))
            elif part.role == "drums":
                for j in range(beats * 2):  # closed hi-hat eighths
                    events.append((t0 + j / 2, DRUM_CHANNEL, 42, vel(), 0.25))
                events.append((t0, DRUM_CHANNEL, 36, vel(), 0.5))  # kick on 1
                if beats == 4:
                    events.append((t0 + 2, DRUM_CHANNEL, 36, vel(), 0.5))
                    events.append((t0 + 1, DRUM_CHANNEL, 38, vel(), 0.5))  # snare on 2 and 4
                    events.append((t0 + 3, DRUM_CHANNEL, 38, vel(), 0.5))
                else:
                    events.append((t0 + 1, DRUM_CHANNEL, 38, vel(), 0.5))
                    events.append((t0 + 2, DRUM_CHANNEL, 38, vel(), 0.5))
    return events


def write_midi(song: Song, duration: float, seed: int, path: str) -> None:
    """Writes the song as a type-1 General MIDI file."""
    import mido

    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    meta = mido.MidiTrack()
    meta.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(song.tempo_bpm), time=0))
    meta.append(mido.MetaMessage("time_signature", numerator=song.beats_per_bar, denominator=4,
                                 time=0))
    midi.tracks.append(meta)
    events = song_events(song, duration, seed)
    for part in song.parts:
        track = mido.MidiTrack()
        track.append(mido.MetaMessage("track_name", name=f"{part.role}:{part.tag}", time=0))
        if part.role != "drums":
            track.append(mido.Message("program_change", channel=part.channel, program=part.program,
                                      time=0))
        timeline = []
        for start, channel, pitch, velocity, length in events:
            if channel != part.channel:
                continue
            on = int(round(start * TICKS_PER_BEAT))
            off = on + max(1, int(round(length * TICKS_PER_BEAT)))
            timeline.append((on, 1, pitch, velocity))
            timeline.append((off, 0, pitch, 0))
        timeline.sort()
        now = 0
        for tick, is_on, pitch, velocity in timeline:
            kind = "note_on" if is_on else "note_off"
            track.append(mido.Message(kind, channel=part.channel, note=pitch, velocity=velocity,
                                      time=tick - now))
            now = tick
        midi.tracks.append(track)
    midi.save(path)


def render_wav(midi_path: str, wav_path: str, sr: int, duration: float, gain: float,
               soundfont: str = SOUNDFONT) -> None:
    """Renders MIDI with FluidSynth; writes ``duration`` s of mono PCM16 at ``sr`` atomically."""
    import soundfile as sf

    if shutil.which("fluidsynth") is None:
        raise RuntimeError("fluidsynth not found: `apt-get install fluidsynth fluid-soundfont-gm` "
                           "(bash .ci/setup does it)")
    if not os.path.exists(soundfont):
        raise FileNotFoundError(f"SoundFont {soundfont} not found: `apt-get install "
                                "fluid-soundfont-gm` or pass --soundfont")
    directory = os.path.dirname(os.path.abspath(wav_path))
    with tempfile.TemporaryDirectory(dir=directory, prefix=".render-") as tmp:
        raw = os.path.join(tmp, "raw.wav")
        proc = subprocess.run(
            ["fluidsynth", "-ni", "-q", "-g", "1.0", "-r", str(sr), "-o", "synth.cpu-cores=1",
             "-F", raw, soundfont, midi_path],
            capture_output=True, text=True, timeout=600,
        )
        if proc.returncode != 0 or not os.path.exists(raw):
            raise RuntimeError(f"fluidsynth failed on {midi_path}: {proc.stderr.strip()[-500:]}")
        audio, file_sr = sf.read(raw, dtype="float32", always_2d=True)
        assert file_sr == sr, (file_sr, sr)
        mono = audio.mean(axis=1) * gain
        n = int(round(duration * sr))
        out = np.zeros(n, dtype=np.float32)
        out[: min(n, mono.size)] = mono[:n]
        fade = min(n, int(0.02 * sr))
        out[n - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
        peak = float(np.max(np.abs(out)))
        if peak > 0.99:
            out *= 0.99 / peak
        part = os.path.join(tmp, "out.wav")
        sf.write(part, out, sr, subtype="PCM_16")
        os.replace(part, wav_path)


@dataclasses.dataclass(frozen=True)
class CorpusSettings:
    """What makes a corpus (num_clips may grow; everything else must stay equal on resume)."""

    seed: int = 0
    duration: float = 30.0
    sr: int = 16000
    soundfont: str = SOUNDFONT

    def describe(self) -> dict:
        return dict(dataclasses.asdict(self), version=CORPUS_VERSION)


def render_corpus(
    output_dir: str,
    num_clips: int,
    duration: float = 30.0,
    sr: int = 16000,
    seed: int = 0,
    workers: int = 0,
    soundfont: str = SOUNDFONT,
    overwrite: bool = False,
    progress: bool = False,
) -> Catalog:
    """Renders (or completes) the built-in corpus in ``output_dir`` and returns its catalogue.

    Writes ``audio/<folder>/<clip_id>.wav``, ``midi/<folder>/<clip_id>.mid``, ``catalog.csv``
    (clip_id, path, split, tags), ``tags.txt``, ``metadata.jsonl`` (the composition of every
    clip) and ``corpus.json``. Clips whose WAV exists are not rendered again (resume).

    Raises:
      FileExistsError: ``output_dir`` holds a corpus with other settings (and not overwrite).
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if duration <= 0:
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    settings = CorpusSettings(seed, float(duration), int(sr), soundfont)
    corpus_json = os.path.join(output_dir, "corpus.json")
    if os.path.exists(corpus_json):
        with open(corpus_json, encoding="utf-8") as f:
            existing = json.load(f)
        if existing.get("settings") != settings.describe():
            if not overwrite:
                raise FileExistsError(
                    f"{output_dir} holds a corpus made with {existing.get('settings')}; pass "
                    "--overwrite or another --output_dir"
                )
            for sub in ("audio", "midi"):
                shutil.rmtree(os.path.join(output_dir, sub), ignore_errors=True)
    os.makedirs(output_dir, exist_ok=True)
    songs = [compose(seed, i) for i in range(num_clips)]

    def audio_path(song):
        return os.path.join(output_dir, "audio", song.folder, song.clip_id + ".wav")

    def render(song):
        wav = audio_path(song)
        if os.path.exists(wav):
            return False
        mid = os.path.join(output_dir, "midi", song.folder, song.clip_id + ".mid")
        os.makedirs(os.path.dirname(mid), exist_ok=True)
        os.makedirs(os.path.dirname(wav), exist_ok=True)
        write_midi(song, duration, seed, mid)
        render_wav(mid, wav, sr, duration, DYNAMICS[song.dynamics][1], soundfont)
        return True

    n_workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        results = pool.map(render, songs)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(songs), desc="render", unit="clip")
        rendered = sum(results)
    _write_catalog_files(output_dir, songs, settings, num_clips, audio_path)
    catalog = load_synthetic(output_dir)
    return dataclasses.replace(catalog, info=dict(catalog.info, rendered_now=rendered))


def _write_catalog_files(output_dir, songs, settings, num_clips, audio_path) -> None:
    from tftag.runs.runfiles import write_bytes_atomic, write_json_atomic

    lines = ["clip_id,path,split,tags"]
    rows = []
    for song in songs:
        rel = os.path.relpath(audio_path(song), output_dir).replace(os.sep, "/")
        rows.append([song.clip_id, rel, song.split, ";".join(song.tags)])
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(lines[0].split(","))
    writer.writerows(rows)
    write_bytes_atomic(os.path.join(output_dir, "catalog.csv"), buf.getvalue().encode())
    write_bytes_atomic(os.path.join(output_dir, "tags.txt"), ("\n".join(TAGS) + "\n").encode())
    meta = "".join(json.dumps(dict(dataclasses.asdict(s), split=s.split, tags=list(s.tags))) + "\n"
                   for s in songs)
    write_bytes_atomic(os.path.join(output_dir, "metadata.jsonl"), meta.encode())
    write_json_atomic(os.path.join(output_dir, "corpus.json"),
                      {"settings": settings.describe(), "num_clips": num_clips})


@register("synthetic")
def load_synthetic(input_path: str, **_unused) -> Catalog:
    """Reads a rendered corpus directory (``catalog.csv`` and ``tags.txt``).

    The tag list is the corpus vocabulary (:data:`TAGS`, fixed order), so label vectors mean the
    same thing for corpora of any size.
    """
    catalog_csv = os.path.join(input_path, "catalog.csv")
    tags_txt = os.path.join(input_path, "tags.txt")
    for path in (catalog_csv, tags_txt):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} not found: render the corpus first (python -m pipelines.synth "
                f"--output_dir={input_path})"
            )
    with open(tags_txt, encoding="utf-8") as f:
        tags = tuple(line.strip() for line in f if line.strip())
    clips = []
    with open(catalog_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            clip_tags = tuple(t for t in row["tags"].split(";") if t)
            unknown = sorted(set(clip_tags) - set(tags))
            if unknown:
                raise ValueError(f"{catalog_csv}: clip {row['clip_id']} has tags {unknown} "
                                 "not in tags.txt")
            clips.append(Clip(row["clip_id"], os.path.join(input_path, row["path"]), row["split"],
                              clip_tags))
    check_unique_ids(clips, catalog_csv)
    train_tags = {t for c in clips if c.split == "train" for t in c.tags}
    return Catalog(
        name="synthetic",
        clips=tuple(clips),
        tags=tags,
        info={"input": os.path.abspath(input_path),
              "tags_without_train_clips": [t for t in tags if t not in train_tags]},
    )
