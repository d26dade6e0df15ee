"""``--mode=similar``: which tracks of a collection sound like this one.

Method. A track is represented by its mean embedding: the penultimate-layer activations (the
input of the logits layer) of the model's windows, averaged over the track — the row
``--mode=tag --embeddings`` stores (:mod:`tftag.tagging.embeddings`). The query file is embedded
the same way, with the store's own model, resolution and windows (read from its ``meta.json``;
another model is refused), and its neighbours are the stored tracks of highest cosine similarity
(the dot product of the L2-normalised vectors; 1 = same direction; a zero vector scores 0).

The index is read as arrays (shard, row, line offset per track: ``index.rows.npy``, parsed from
``index.jsonl`` once per change of it); only the answers' index lines are read at a query.
Search is exact up to ``exact_max_rows`` indexed tracks: numpy over the store one shard-sized
slice at a time (memory-mapped), so memory stays one slice whatever the size.
Above it, an approximate HNSW graph (faiss-cpu's ``IndexHNSWFlat``, inner product on the
normalised vectors; M = :data:`HNSW_M`, efConstruction = :data:`HNSW_EF_CONSTRUCTION`,
efSearch = max(:data:`HNSW_EF_SEARCH`, k)) is built once and cached in the store
(``ann.faiss`` + ``ann.json`` + ``ann.rows.npy``, the shard and row of each of its vectors),
extended when tracks were only added to the index since (the rows it holds are the first of the
index's), rebuilt when lines were superseded (a track tagged again); its similarities are the exact cosines of the rows it returns, but it may miss a
true neighbour (recall < 1). The query's own file, when it is in the store, comes first with a
similarity of ≈ 1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Iterator

import numpy as np

from tftag.runs import runfiles
from tftag.tagging import embeddings as store
from tftag.tagging import tracks

EXACT_MAX_ROWS = 100_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
ANN_FILE = "ann.faiss"
ANN_STAMP = "ann.json"
ANN_ROWS = "ann.rows.npy"


@dataclasses.dataclass(frozen=True)
class Neighbour:
    """One answer: its rank (1 = nearest), file and cosine similarity to the query."""

    rank: int
    path: str
    rel_path: str
    similarity: float


def run(o) -> dict:
    """``--mode=similar`` from its options (:class:`tftag.cli.SimilarOptions`)."""
    return similar(o.query, o.index, o.top_k, pretrained=o.pretrained, model_dir=o.model_dir,
                   exact_max_rows=o.exact_max_rows, output=o.similar_output)


def similar(query: str, index: str, top_k: int = 10, *, pretrained: str | None = None,
            model_dir: str | None = None, exact_max_rows: int = EXACT_MAX_ROWS,
            output: str | None = None) -> dict:
    """Prints the ``top_k`` tracks of the store ``index`` nearest to the file ``query`` and
    writes them to ``output`` (JSON; None: not written).

    Args:
      query: an audio file (in the collection or not).
      index: an embedding store, ``<output stem>.embeddings`` of ``--mode=tag --embeddings``.
      top_k: neighbours returned.
      pretrained / model_dir: the model, when given: must be the store's (default: the store's).
      exact_max_rows: exact search up to this many indexed tracks, HNSW above.
      output: a JSON file for the answer.

    Returns:
      A summary: query, index, model, method (exact or hnsw), rows, neighbours ([path,
      similarity], nearest first), embed_seconds, search_seconds, ann (the HNSW graph:
      ``cached``, ``extended``, ``built`` or None: exact search), output.
    """
    if not query or not index:
        raise ValueError("--mode=similar needs --query=FILE (an audio file) and --index=DIR "
                         "(the <output stem>.embeddings folder of --mode=tag --embeddings)")
    if not os.path.isfile(query):
        raise FileNotFoundError(f"--query={query!r}: no such audio file")
    meta = store.StoreMeta.read(index)
    rows = store.read_rows(index)
    if not len(rows) or not meta.dim:
        raise ValueError(f"--index={index!r} holds no embeddings yet: tag a folder into it "
                         "first (--mode=tag --embeddings)")
    tagger = load_tagger(meta, index, pretrained, model_dir)
    start = time.perf_counter()
    vector = embed(tagger, query)
    embed_seconds = time.perf_counter() - start
    start = time.perf_counter()
    method = "exact" if len(rows) <= exact_max_rows else "hnsw"
    ann = None
    if method == "exact":
        positions, sims = exact_search(meta, rows, vector, top_k)
    else:
        positions, sims, ann = ann_search(meta, rows, vector, top_k)
    search_seconds = time.perf_counter() - start
    found = [Neighbour(rank, (e := rows.entry(p)).path, e.rel_path, float(s))
             for rank, (p, s) in enumerate(zip(positions, sims), 1)]
    print(f"{len(found)} nearest of {len(rows)} tracks to {query} ({meta.model}, {method}, "
          f"{search_seconds * 1000:.1f} ms):")
    for n in found:
        print(f"{n.rank:4d}  {n.similarity:.4f}  {n.path}")
    summary = {"query": query, "index": index, "model": meta.model, "method": method,
               "rows": len(rows), "neighbours": [[n.path, n.similarity] for n in found],
               "embed_seconds": round(embed_seconds, 4),
               "search_seconds": round(search_seconds, 6), "ann": ann, "output": output}
    if output:
        runfiles.write_json_atomic(output, dict(summary, neighbours=[
            dataclasses.asdict(n) for n in found]))
    return summary


def load_tagger(meta: store.StoreMeta, index: str, pretrained: str | None = None,
                model_dir: str | None = None):
    """The store's model with its windows; a ValueError naming the flag when ``pretrained`` or
    ``model_dir`` is another model, or when the model now has another resolution."""
    from tftag.tagging import tag

    source = meta.source
    if pretrained and source.get("pretrained") != pretrained or model_dir and (
            source.get("model_dir") != os.path.abspath(model_dir)):
        given = f"--pretrained={pretrained}" if pretrained else f"--model_dir={model_dir}"
        raise ValueError(f"{given}: --index={index!r} was made with {meta.model} "
                         f"({meta.resolution}); a query is embedded with the same model: leave "
                         "the flag out")
    tagger = tag.load_tagger(source.get("model_dir"), source.get("pretrained"),
                             source.get("server"), source.get("protocol", "grpc"))
    got = (tagger.name, tagger.spec.mel_config.name, tagger.spec.window_frames)
    if got != (meta.model, meta.resolution, meta.window_frames):
        raise ValueError(f"--index={index!r} was made with {meta.model} ({meta.resolution}, "
                         f"{meta.window_frames}-frame windows); that model is now {got[0]} "
                         f"({got[1]}, {got[2]}): tag the collection again with it")
    tagger.spec = tracks.WindowSpec(tagger.spec.mel_config, meta.window_frames, meta.hop_frames)
    return tagger


def embed(tagger, path: str, block_seconds: float = tracks.BLOCK_SECONDS) -> np.ndarray:
    """The mean embedding [d] of one file (a ValueError naming ``--query`` if unreadable)."""
    (item,) = list(tracks.tag_tracks(tagger, [path], block_seconds, embeddings=True))
    if isinstance(item, dict):
        raise ValueError(f"--query={path!r}: {item['reason']}")
    return item.mean_embedding.astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    """Rows (or a vector) scaled to L2 norm 1; zero rows stay zero."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1)).astype(np.float32)


def slices(meta: store.StoreMeta, rows: store.Rows,
           size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(first position, vectors [n, d]) of consecutive slices of the indexed tracks ``rows``
    (``size`` each: default the store's shard size), each read from the shards its rows are in
    (a contiguous run of one shard, the usual case, as a view of it: nothing copied)."""
    size = size or meta.shard_rows
    for begin in range(0, len(rows), size):
        part_shards, part_rows = rows.shard[begin:begin + size], rows.row[begin:begin + size]
        if np.all(part_shards == part_shards[0]):
            yield begin, store.shard_vectors(rows.directory, meta, int(part_shards[0]),
                                             part_rows)
            continue
        out = np.empty((len(part_rows), meta.dim), np.float32)
        for shard in np.unique(part_shards):
            mask = part_shards == shard
            out[mask] = store.shard_vectors(rows.directory, meta, int(shard), part_rows[mask])
        yield begin, out


def _top(sims: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest of ``sims``, largest first (ties: lower index first)."""
    if len(sims) > k:
        part = np.argpartition(-sims, k - 1)[:k]
        return part[np.lexsort((part, -sims[part]))]
    return np.argsort(-sims, kind="stable")


def exact_search(meta: store.StoreMeta, rows: store.Rows, query: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions in ``rows``, cosine similarities) of the ``k`` nearest, nearest first."""
    q = unit(query)
    best_pos = np.empty(0, np.int64)
    best_sim = np.empty(0, np.float32)
    for begin, vectors in slices(meta, rows):
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
        sims = (vectors @ q) / np.where(norms > 0, norms, 1)
        top = _top(sims, k)
        pos = np.concatenate([best_pos, begin + top])
        sims = np.concatenate([best_sim, sims[top]])
        keep = _top(sims, k)
        best_pos, best_sim = pos[keep], sims[keep]
    return best_pos, best_sim


def ann_search(meta: store.StoreMeta, rows: store.Rows, query: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray, str]:
    """As :func:`exact_search`, through the cached HNSW graph; also what :func:`ann_index`
    did."""
    graph, status = ann_index(meta, rows)
    graph.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
    sims, positions = graph.search(unit(query)[None], min(k, len(rows)))
    keep = positions[0] >= 0
    return positions[0][keep].astype(np.int64), sims[0][keep], status


def ann_index(meta: store.StoreMeta, rows: store.Rows):
    """The store's HNSW graph (ids: positions in ``rows``) and what was done: ``cached`` (read
    from ``ann.faiss``, made from the index as it is), ``extended`` (the tracks added since
    appended to it) or ``built``; a graph extended or built is cached."""
    import faiss

    directory = rows.directory
    stamp = dict(store.index_stamp(directory), rows=len(rows), m=HNSW_M,
                 ef_construction=HNSW_EF_CONSTRUCTION)
    path, stamp_path = os.path.join(directory, ANN_FILE), os.path.join(directory, ANN_STAMP)
    held_path = os.path.join(directory, ANN_ROWS)
    table = np.stack([rows.shard, rows.row], axis=1)
    held = None
    if all(map(os.path.exists, (path, stamp_path, held_path))):
        with open(stamp_path, encoding="utf-8") as f:
            old = json.load(f)
        held = np.load(held_path)
        if old == stamp:  # memory-mapped vectors: a query need not read the whole file
            graph = faiss.read_index(path, getattr(faiss, "IO_FLAG_MMAP_IFC", 0))
            if graph.ntotal == len(rows):
                return graph, "cached"
        same = {k: v for k, v in old.items() if k in ("m", "ef_construction")} == {
            "m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION}
        if not (same and len(held) <= len(rows) and np.array_equal(held, table[:len(held)])):
            held = None
    if held is not None:
        graph, status, start = faiss.read_index(path), "extended", len(held)
    else:
        graph = faiss.IndexHNSWFlat(meta.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        status, start = "built", 0
    if os.path.exists(stamp_path):  # no stamp until the new graph and its rows are written
        os.remove(stamp_path)
    added = store.Rows(directory, rows.shard[start:], rows.row[start:], rows.offset[start:])
    for _, vectors in slices(meta, added):
        graph.add(unit(vectors))
    with runfiles.atomic_path(path) as tmp:
        faiss.write_index(graph, tmp)
    with runfiles.atomic_path(held_path, ".npy") as tmp:
        np.save(tmp, table)
    runfiles.write_json_atomic(stamp_path, stamp)
    return graph, status
