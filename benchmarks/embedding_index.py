r"""The embedding store of ``--embeddings`` and ``--mode=similar``'s search, at collection sizes.

    .venv/bin/python -m benchmarks.embedding_index --rows=100000,300000

Per size N: a store of N synthetic mean embeddings (``--dim``, default 256: the shipped
students'; clustered: 1 row in 100 is a centre, the others a centre plus noise, as tracks of a
collection group by style) written through :class:`tftag.tagging.embeddings.EmbeddingStore`
(rows/s: row + index line appended and flushed per track, as ``--mode=tag`` does), its index read
back (:func:`tftag.tagging.embeddings.read_rows`: parsed, then from its cache, as a query
finds it after the first), the exact search and
the HNSW search (build once, then cached: the cached graph's load is timed too) of
``--queries`` queries (stored rows plus a little noise), each timed after a warm-up query, and
the HNSW answers' recall@k against the exact ones. The model's embedding of the query (one
track's decoding and windows) is not included. Prints one JSON line (with the machine) and
appends it to ``--out``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import numpy as np
from absl import app, flags

flags.DEFINE_list("rows", ["100000"], "Store sizes (tracks).")
flags.DEFINE_integer("dim", 256, "Embedding size.")
flags.DEFINE_integer("queries", 20, "Queries timed per size.")
flags.DEFINE_integer("k", 10, "Neighbours per query.")
flags.DEFINE_integer("hnsw_max_rows", 300_000, "Sizes above this: exact search only (the "
                     "graph's build takes minutes per 100k rows on 2 cores).")
flags.DEFINE_string("out", "benchmarks/results/similar/embedding_index.jsonl", "Results file.")
FLAGS = flags.FLAGS


def _store(directory: str, n: int, dim: int, rng) -> float:
    """Writes a store of ``n`` clustered rows; returns its rows/s."""
    from tftag.tagging import embeddings
    from tftag.tagging.results import FileKey

    centres = rng.standard_normal((max(1, n // 100), dim)).astype(np.float32)
    meta = embeddings.StoreMeta("synthetic", "none", {"pretrained": "synthetic"}, 1, 1)
    store = embeddings.EmbeddingStore(directory, meta).open({}, set())
    start = time.perf_counter()
    for i in range(n):
        row = centres[i % len(centres)] + 0.3 * rng.standard_normal(dim).astype(np.float32)
        store.add(f"/music/{i:07d}.mp3", FileKey(f"{i:07d}.mp3", 1000 + i, i), row, 30.0, 1)
    store.close()
    return n / (time.perf_counter() - start)


def _median_time(fn, queries) -> tuple[float, list]:
    fn(queries[0])  # warm-up
    times, answers = [], []
    for q in queries:
        start = time.perf_counter()
        answers.append(fn(q))
        times.append(time.perf_counter() - start)
    return float(np.median(times)), answers


def measure(n: int, dim: int, n_queries: int, k: int, hnsw: bool = True) -> dict:
    """One size's figures."""
    from tftag.tagging import embeddings, similar

    rng = np.random.default_rng(0)
    directory = tempfile.mkdtemp(prefix="tftag-store-")
    try:
        rows_per_s = _store(directory, n, dim, rng)
        start = time.perf_counter()
        rows = embeddings.read_rows(directory)  # parsed, then cached
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        rows = embeddings.read_rows(directory)
        cached_s = time.perf_counter() - start
        meta = embeddings.StoreMeta.read(directory)
        picks = rng.choice(n, n_queries, replace=False)
        queries = [embeddings.shard_vectors(directory, meta, int(rows.shard[p]),
                                            rows.row[p:p + 1])[0]
                   + 0.05 * rng.standard_normal(dim).astype(np.float32) for p in picks]
        exact_s, exact = _median_time(lambda q: similar.exact_search(meta, rows, q, k)[0],
                                      queries)
        figures = {"rows": n, "dim": dim, "write_rows_per_s": round(rows_per_s),
                   "read_index_s": round(read_s, 3), "read_index_cached_s": round(cached_s, 4),
                   "exact_query_ms": round(exact_s * 1000, 2)}
        if not hnsw:
            return figures
        start = time.perf_counter()
        similar.ann_index(meta, rows)  # built
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        graph, _ = similar.ann_index(meta, rows)
        load_s = time.perf_counter() - start
        graph.hnsw.efSearch = max(similar.HNSW_EF_SEARCH, k)
        ann_s, ann = _median_time(
            lambda q: graph.search(similar.unit(q)[None], k)[1][0], queries)
        recall = np.mean([len(set(a) & set(e)) / k for a, e in zip(ann, exact)])
        sizes = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
        return {**figures, "store_mb": round(sizes / 2**20, 1),
                "files": len(os.listdir(directory)), "hnsw_build_s": round(build_s, 2), "hnsw_load_s": round(load_s, 3),
                "hnsw_query_ms": round(ann_s * 1000, 3), f"hnsw_recall_at_{k}": round(recall, 4)}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv) -> None:
    del argv
    from benchmarks.common import machine_info

    for n in map(int, FLAGS.rows):
        load = [round(x, 2) for x in os.getloadavg()]  # a shared machine: how busy it was
        result = dict(measure(n, FLAGS.dim, FLAGS.queries, FLAGS.k, n <= FLAGS.hnsw_max_rows),
                      load_average_before=load,
                      load_average_after=[round(x, 2) for x in os.getloadavg()],
                      date=time.strftime("%Y-%m-%d"), machine=machine_info())
        line = json.dumps(result)
        print(line, flush=True)
        os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
        with open(FLAGS.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    app.run(main)
