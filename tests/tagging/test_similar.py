"""Embeddings at collection scale and ``--mode=similar`` (tftag.tagging.embeddings,
tftag.tagging.similar): sharded rows + an index resumed with the output's rows, and the nearest
tracks of a query, exact and through the cached HNSW graph."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from conftest import run_module
from tftag.tagging import embeddings, results, similar, tag

STUDENT = "tftag_vgg_8x10"  # the cheapest shipped student: no training, tiny model
SR = 16000


def _clip(i: int, seconds: float = 6.0) -> np.ndarray:
    """Track i: a tone (its pitch 0.9 octave above track i-1's) pulsing at its own rate, over
    noise of one of three levels; tracks this different are far apart for the student."""
    rng = np.random.default_rng(i)
    t = np.arange(int(seconds * SR)) / SR
    y = 0.5 * np.sin(2 * np.pi * 80 * 2 ** (0.9 * i) * t) * (0.6 + 0.4 * np.sin(
        2 * np.pi * (0.5 + i) * t))
    y += (0.02 + 0.08 * (i % 3)) * rng.standard_normal(t.size)
    return (y / np.abs(y).max() * 0.8).astype(np.float32)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """7 tracks (2 in a subfolder), a near-duplicate of the first (a little noise added) and a
    file that is not audio."""
    folder = tmp_path_factory.mktemp("similar")
    (folder / "sub").mkdir()
    for i in range(7):
        sf.write(str(folder / ("sub" if i in (2, 5) else "") / f"mix{i}.wav"), _clip(i), SR)
    noisy = _clip(0) + 0.01 * np.random.default_rng(9).standard_normal(6 * SR)
    sf.write(str(folder / "zz_mix0_noisy.wav"), noisy.astype(np.float32), SR)
    (folder / "broken.wav").write_bytes(b"RIFF not really audio")
    return folder


def _tag(folder, out, **kw) -> dict:
    return tag.tag(None, str(folder), str(out), pretrained=STUDENT, embeddings=True, workers=1,
                   **kw)


def _index_lines(directory) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(directory, embeddings.INDEX))]


def test_store_shards_index_and_resume(collection, tmp_path, monkeypatch):
    monkeypatch.setattr(embeddings, "SHARD_ROWS", 3)  # 8 tracks: shards of 3, 3 and 2 rows
    out = tmp_path / "tags.jsonl"
    summary = _tag(collection, out)
    store = embeddings.store_dir(str(out))
    assert (summary["tagged"], summary["failed"], summary["embeddings"]) == (8, 1, store)
    meta = embeddings.StoreMeta.read(store)
    assert (meta.model, meta.resolution, meta.shard_rows) == (STUDENT, "sr16000-mel8-hop10-log", 3)
    shards = [np.load(embeddings.shard_path(store, i)) for i in range(3)]
    assert [s.shape for s in shards] == [(3, meta.dim), (3, meta.dim), (2, meta.dim)]
    assert sorted(os.listdir(store)) == ["index.jsonl", "meta.json", "shard-00000.npy",
                                         "shard-00001.npy", "shard-00002.npy"]
    lines = _index_lines(store)
    rows = {r["rel_path"]: r for r in results.read_rows(str(out))}
    assert sorted(e["rel_path"] for e in lines) == sorted(rows) and len(rows) == 8
    assert [(e["shard"], e["row"]) for e in lines] == [(i // 3, i % 3) for i in range(8)]
    assert all(e["size"] == rows[e["rel_path"]]["size"] for e in lines)
    # The stored row is the mean embedding of a .json run's per-file npz (the old rule).
    npz_run = _tag(collection / "sub", tmp_path / "small.json")
    assert npz_run["side_outputs"] == 2
    npz = np.load(tmp_path / "small_taggrams" / "mix2.embeddings.npz")
    row = next(e for e in lines if e["rel_path"] == "sub/mix2.wav")
    np.testing.assert_allclose(shards[row["shard"]][row["row"]], npz["mean"], rtol=1e-5, atol=1e-6)

    # A rerun: nothing to do, nothing added.
    again = _tag(collection, out)
    assert (again["tagged"], again["skipped"], again["embedded_only"]) == (0, 8, 0)
    assert _index_lines(store) == lines
    assert len(embeddings.read_rows(store)) == 8  # parsed and cached (index.rows.npy)
    # A kill after a row was stored but before its output row (the last output row dropped), a
    # torn index line and stray shard bytes; and one file changed since: tagged again, each file
    # indexed once, the changed file's old line superseded.
    kept = open(out).read().splitlines(keepends=True)
    open(out, "w").writelines(kept[:-1])
    last = json.loads(kept[-1])["rel_path"]
    with open(os.path.join(store, embeddings.INDEX), "a") as f:
        f.write('{"path": "torn')
    with open(embeddings.shard_path(store, 2), "ab") as f:
        f.write(b"\0" * 10)
    sf.write(str(collection / "mix3.wav"), _clip(3, 5.0), SR)  # changed: size and mtime
    third = _tag(collection, out)
    assert third["tagged"] == 2 and third["skipped"] == 6
    lines = _index_lines(store)
    assert sorted(e["rel_path"] for e in lines) == sorted(rows)  # once each
    assert {e["rel_path"] for e in lines[-2:]} == {last, "mix3.wav"}
    # The stray bytes and the superseded last row were cut: the new rows follow the last kept.
    assert [(e["shard"], e["row"]) for e in lines[-2:]] == [(2, 1), (2, 2)]
    assert np.load(embeddings.shard_path(store, 2)).shape == (3, meta.dim)
    rows = embeddings.read_rows(store)  # the cache of the index before: stale, made again
    assert [rows.entry(i).rel_path for i in range(len(rows))] == [e["rel_path"] for e in lines]
    assert (rows.shard[-1], rows.row[-1]) == (2, 2)
    # An output tagged without --embeddings gets them on a rerun with it, rows not doubled.
    plain = tmp_path / "plain.csv"
    tag.tag(None, str(collection), str(plain), pretrained=STUDENT, workers=1)
    filled = _tag(collection, plain)
    assert (filled["tagged"], filled["embedded_only"]) == (0, 8)
    assert len(list(results.read_rows(str(plain)))) == 8
    assert len(embeddings.read_entries(embeddings.store_dir(str(plain)))) == 8


@pytest.fixture(scope="module")
def store(collection, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "tags.jsonl"
    _tag(collection, out)
    return embeddings.store_dir(str(out))


def test_similar_finds_the_track_then_its_near_duplicate(collection, store, tmp_path):
    query = str(collection / "mix0.wav")
    exact = similar.similar(query, store, 3, output=str(tmp_path / "similar.json"))
    (first, s1), (second, s2), _ = exact["neighbours"]
    assert exact["method"] == "exact" and exact["rows"] == 8
    assert first == query and s1 == pytest.approx(1.0, abs=1e-5)
    assert second == str(collection / "zz_mix0_noisy.wav") and s2 > exact["neighbours"][2][1]
    written = json.loads((tmp_path / "similar.json").read_text())
    assert written["neighbours"][0] == {"rank": 1, "path": query, "rel_path": "mix0.wav",
                                        "similarity": s1}
    # The HNSW path (forced by a tiny threshold): the same answers; built once, then cached.
    ann = similar.similar(query, store, 3, exact_max_rows=1)
    assert ann["method"] == "hnsw" and ann["ann"] == "built"
    assert [p for p, _ in ann["neighbours"]] == [p for p, _ in exact["neighbours"]]
    np.testing.assert_allclose([s for _, s in ann["neighbours"]],
                               [s for _, s in exact["neighbours"]], atol=1e-5)
    assert similar.similar(query, store, 3, exact_max_rows=1)["ann"] == "cached"
    # Another model is refused in one line, with the flag.
    with pytest.raises(ValueError, match=r"^--pretrained=MTT_musicnn: --index=.* was made with "
                                         r"tftag_vgg_8x10 \(sr16000-mel8-hop10-log\)"):
        similar.similar(query, store, 3, pretrained="MTT_musicnn")
    with pytest.raises(FileNotFoundError, match="--index=.* has no meta.json"):
        similar.similar(query, str(tmp_path), 3)


def test_the_command(collection, store, tmp_path):
    out = tmp_path / "answer.json"
    proc = run_module("tftag.main", "--mode=similar", f"--query={collection / 'sub' / 'mix5.wav'}",
                      f"--index={store}", "--top_k=2", f"--similar_output={out}")
    assert "2 nearest of 8 tracks" in proc.stdout
    answer = json.loads(out.read_text())
    assert answer["neighbours"][0]["rel_path"] == "sub/mix5.wav"
    assert answer["model"] == STUDENT and answer["method"] == "exact"


def test_the_hnsw_graph_is_extended_with_added_tracks_and_rebuilt_when_one_is_superseded(
        tmp_path):
    from tftag.tagging.results import FileKey

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((60, 16)).astype(np.float32)
    meta = embeddings.StoreMeta("m", "r", {"pretrained": "m"}, 1, 1, shard_rows=16)
    directory = str(tmp_path / "store")

    def add(rows, redo=()):
        current = {f"{i}.wav": FileKey(f"{i}.wav", 1, i) for i in range(60)}
        writer = embeddings.EmbeddingStore(directory, meta).open(current, set(redo))
        for i in rows:
            writer.add(f"/m/{i}.wav", current[f"{i}.wav"], vectors[i], 1.0, 1)
        writer.close()
        return embeddings.read_rows(directory)

    def answers(rows, status):
        graph, got = similar.ann_index(embeddings.StoreMeta.read(directory), rows)
        assert got == status and graph.ntotal == len(rows)
        exact = [similar.exact_search(embeddings.StoreMeta.read(directory), rows, q, 5)[0]
                 for q in vectors[:len(rows)]]
        found = [graph.search(similar.unit(q)[None], 5)[1][0] for q in vectors[:len(rows)]]
        assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(found, exact)]) > 0.95

    answers(add(range(40)), "built")
    answers(add(range(40, 60)), "extended")  # 20 tracks added: appended to the graph
    rows = add([3], redo=["3.wav"])  # tagged again: its line superseded, positions move
    assert len(rows) == 60 and rows.entry(59).rel_path == "3.wav"
    answers(rows, "built")
    answers(rows, "cached")
