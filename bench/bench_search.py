"""Search latency and vector recall of server/retrieval at 10k and 100k chunks.

    python bench/bench_search.py             # 10k and 100k chunks (~3 min on 2 cores)
    python bench/bench_search.py --quick     # 10k and 30k, fewer queries
    python bench/bench_search.py --ann       # also build LanceDB ANN indexes at the largest size (slow)

Prints figures and a summary block, never asserts. What it measures, honestly:

* Code path: ``VectorIndex.search`` -- what ``POST /v1/vector_stores/{id}/search``
  calls after validating the body (the route adds JSON (de)serialisation and, at most
  once a second per store, a ``last_active_at`` event). Hybrid = exact vector top-k +
  LanceDB native BM25 FTS, fused by RRF. "without embedding" times ``_search`` (the
  worker-thread body) with a precomputed query vector; "with embedding" awaits the
  public coroutine with the query-vector cache off, so every query runs the real
  local MiniLM (numpy) on a fresh query.
* Rows: real text from this machine (stdlib + site-packages .py files, ~1,000-char
  pieces), so BM25 works on real term statistics; vectors are random unit vectors
  (seeded, 384-d): embedding 100k chunks with MiniLM on 2 CPU cores takes ~1 h, and
  the latency of exact search does not depend on the values.
* Recall@10 of the vector part: the index's answer vs numpy brute force over the
  vectors as generated (independent of the index's cache), unfiltered and filtered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.retrieval import Chunk, LocalMiniLMEmbedder, VectorIndex
from server.retrieval.filters import compile_filter

DIM = 384
PER_FILE = 2000
FILTER = {
    "type": "and",
    "filters": [{"type": "eq", "key": "group", "value": "g3"}, {"type": "gte", "key": "n", "value": 0}],
}


def machine() -> str:
    import lancedb

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return (
        f"machine: cpu={cpu!r} cores={os.cpu_count()} python={platform.python_version()} "
        f"lancedb={lancedb.__version__} numpy={np.__version__} "
        f"loadavg={load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}"
    )


def source_files() -> Iterator[Path]:
    """Real text on this machine: stdlib and site-packages sources, tests excluded."""
    seen: set[str] = set()
    for key in ("stdlib", "purelib"):
        root = Path(sysconfig.get_paths()[key])
        if str(root) in seen or not root.is_dir():
            continue
        seen.add(str(root))
        for path in sorted(root.rglob("*.py")):
            rel = str(path.relative_to(root)).lower()
            if "test" in rel or (key == "stdlib" and "site-packages" in rel):
                continue
            yield path


def text_pieces(count: int, size: int = 1000) -> list[str]:
    """``count`` pieces of ~``size`` characters, cut at line ends."""
    pieces: list[str] = []
    for path in source_files():
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        buf: list[str] = []
        length = 0
        for line in text.splitlines():
            buf.append(line)
            length += len(line) + 1
            if length >= size:
                pieces.append("\n".join(buf))
                buf, length = [], 0
                if len(pieces) >= count:
                    return pieces
    base = len(pieces)
    while len(pieces) < count:  # not enough text on this machine: cycle it
        pieces.append(pieces[len(pieces) % base])
    return pieces


def word_queries(pieces: list[str], n: int, rng: random.Random) -> list[str]:
    """2-4 words of >3 letters drawn from one random piece: realistic keyword-ish queries."""
    out: list[str] = []
    while len(out) < n:
        words = [w for w in "".join(c if c.isalnum() else " " for c in rng.choice(pieces)).split() if len(w) > 3]
        if len(words) >= 4:
            out.append(" ".join(rng.sample(words, rng.choice((2, 3, 4)))))
    return out


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples)
    return statistics.median(ms), ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]


def fmt(samples: list[float]) -> str:
    p50, p99 = percentiles(samples)
    return f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  (n={len(samples)})"


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    fn()  # warm
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def build_store(index: VectorIndex, store: str, pieces: list[str], vectors: np.ndarray) -> float:
    """Bulk load through VectorIndex's write path, FTS index folded in once at the end."""
    start = time.perf_counter()
    for f, lo in enumerate(range(0, len(pieces), PER_FILE)):
        chunks = [Chunk(t, 0, i) for i, t in enumerate(pieces[lo : lo + PER_FILE])]
        attrs = {"group": f"g{f % 10}", "n": float(f)}
        index._write_file(store, f"file_{f}", f"f{f}.py", chunks, attrs, vectors[lo : lo + PER_FILE])
    index._optimize(store)
    return time.perf_counter() - start


def key_of(i: int) -> str:
    return f"file_{i // PER_FILE}#{i % PER_FILE}"


def bench_size(n: int, args: argparse.Namespace, embedder: LocalMiniLMEmbedder, workdir: Path) -> dict[str, Any]:
    rng = random.Random(n)
    out: dict[str, Any] = {}
    print(f"\n=== {n:,} chunks (real text ~1,000 chars each, random unit vectors) ===", flush=True)
    pieces = text_pieces(n)
    vectors = unit_vectors(n, seed=n)
    index = VectorIndex(str(workdir / f"db{n}"), embedder, fts_reindex_rows=10**9, query_cache_size=0)
    store = "vs_bench"
    build_s = build_store(index, store, pieces, vectors)
    table = index._open(store, create=False)
    name = "s_" + store
    mb = sum(len(p) for p in pieces) / 1e6
    print(f"load {n:,} rows ({mb:.1f} MB text) + FTS index: {build_s:.1f} s", flush=True)
    start = time.perf_counter()
    index._vector_cache(name, table)
    print(f"vector cache load (first search after a write): {(time.perf_counter() - start) * 1000:.0f} ms")

    q_vecs = unit_vectors(max(args.queries, 100), seed=n + 1)
    q_words = word_queries(pieces, args.queries * 2, rng)
    it_v = iter(q_vecs.tolist() * 20)
    it_w = iter(q_words * 20)

    def one(mode: str, filters: Any = None) -> Callable[[], Any]:
        def run() -> Any:
            qvec = np.asarray(next(it_v), dtype=np.float32) if mode != "fts" else None
            return index._search([store], next(it_w), qvec, 20, 0.0, filters, mode)

        return run

    print("without query embedding (VectorIndex._search, top 20):")
    for mode in ("vector", "fts", "hybrid"):
        samples = timed(one(mode), args.queries)
        out[f"{mode} no-embed"] = samples
        print(f"  {mode:<24} {fmt(samples)}", flush=True)
    where = compile_filter(FILTER, table.schema.names)
    cache = index._vector_cache(name, table)
    assert cache is not None
    cache.masks.clear()
    start = time.perf_counter()
    index._filter_mask(cache, table, where)
    print(
        f"  filter mask (eq AND gte; 20% of rows at 10k, 10% at 100k), first use: "
        f"{(time.perf_counter() - start) * 1000:.1f} ms"
    )
    samples = timed(one("hybrid", FILTER), args.queries)
    out["hybrid+filter no-embed"] = samples
    print(f"  {'hybrid + filter (warm)':<24} {fmt(samples)}", flush=True)

    fresh = iter(word_queries(pieces, args.queries * 4, rng))
    print("with query embedding (await VectorIndex.search, real MiniLM, query cache off):")
    samples_e: dict[str, list[float]] = {"embed only": [], "vector": [], "hybrid": []}

    async def run_search() -> None:
        for _ in range(args.queries):
            q = next(fresh)
            start = time.perf_counter()
            embedder.embed([q])
            samples_e["embed only"].append(time.perf_counter() - start)
            for mode in ("vector", "hybrid"):
                q = next(fresh)
                start = time.perf_counter()
                await index.search([store], q, max_num_results=20, mode=mode)
                samples_e[mode].append(time.perf_counter() - start)

    asyncio.run(run_search())
    for label, values in samples_e.items():
        out[f"{label} +embed"] = values
        print(f"  {label:<24} {fmt(values)}", flush=True)

    # Recall@10 of the vector part vs numpy brute force over the generated vectors.
    nq = 100
    group3 = np.array([(i // PER_FILE) % 10 == 3 for i in range(n)])
    hits = hits_f = expected_f = 0
    for q in q_vecs[:nq]:
        sims = vectors @ q
        truth = {key_of(i) for i in np.argsort(-sims)[:10]}
        got = {r["chunk_id"] for r in index._vector_rows(name, table, q, None, 10)}
        hits += len(truth & got)
        masked = np.where(group3, sims, -np.inf)
        truth_f = {key_of(i) for i in np.argsort(-masked)[: min(10, int(group3.sum()))]}
        expected_f += len(truth_f)
        got_f = {r["chunk_id"] for r in index._vector_rows(name, table, q, where, 10)}
        hits_f += len(truth_f & got_f)
    out["recall"] = hits / (10 * nq)
    out["recall_filtered"] = hits_f / max(1, expected_f)
    print(f"vector recall@10 vs numpy exact: {out['recall']:.3f}; with the filter: {out['recall_filtered']:.3f}")

    # Why not LanceDB's own flat search: it re-reads the vector column per query.
    def lance_flat() -> Any:
        q = np.asarray(next(it_v), dtype=np.float32)
        return table.search(q).distance_type("cosine").limit(20).select(["chunk_id", "_distance"]).to_arrow()

    samples = timed(lance_flat, 10)
    out["lance flat"] = samples
    print(f"for comparison, LanceDB's own flat vector search (no cache): {fmt(samples)}", flush=True)
    if args.ann and n == max(args.sizes):
        bench_ann(table, vectors, q_vecs[:50])
    bench_fts_upkeep(index, store, q_words)
    return out


def bench_ann(table: Any, vectors: np.ndarray, queries: np.ndarray) -> None:
    from lancedb.index import IvfFlat, IvfPq

    print("LanceDB ANN indexes on the same rows (recall@10 vs exact, raw LanceDB query latency):")
    truth = [{key_of(i) for i in np.argsort(-(vectors @ q))[:10]} for q in queries]
    configs: list[tuple[str, Any, list[tuple[str, Callable[[Any], Any]]]]] = [
        (
            "IVF_PQ default",
            IvfPq(distance_type="cosine"),
            [
                ("nprobes=20", lambda b: b.nprobes(20)),
                ("nprobes=64 refine=10", lambda b: b.nprobes(64).refine_factor(10)),
            ],
        ),
        (
            "IVF_FLAT",
            IvfFlat(distance_type="cosine"),
            [(f"nprobes={p}", lambda b, p=p: b.nprobes(p)) for p in (20, 50)],
        ),
    ]
    for label, config, variants in configs:
        start = time.perf_counter()
        table.create_index("vector", config=config, replace=True)
        build = time.perf_counter() - start
        for vlabel, configure in variants:
            hits, times = 0, []
            for q, t in zip(queries, truth, strict=True):
                start = time.perf_counter()
                rows = configure(table.search(q).distance_type("cosine").limit(10)).select(["chunk_id"]).to_list()
                times.append(time.perf_counter() - start)
                hits += len({r["chunk_id"] for r in rows} & t)
            print(
                f"  {label:<15} build {build:6.1f} s  {vlabel:<22} "
                f"recall@10 {hits / (10 * len(queries)):.3f}  {fmt(times)}"
            )
        for idx in table.list_indices():
            if "vector" in idx.columns:
                table.drop_index(idx.name)


def bench_fts_upkeep(index: VectorIndex, store: str, q_words: list[str]) -> None:
    pieces = text_pieces(50, size=1200)
    start = time.perf_counter()
    index._write_file(
        store, "file_new", "new.py", [Chunk(t, 0, i) for i, t in enumerate(pieces)], {}, unit_vectors(50, 7)
    )
    write = time.perf_counter() - start
    it = iter(q_words * 10)

    def fts() -> Any:
        return index._search([store], next(it), None, 20, 0.0, None, "fts")

    before = fmt(timed(fts, 30))
    start = time.perf_counter()
    index._optimize(store)
    opt = time.perf_counter() - start
    print(
        f"FTS upkeep: adding a 50-chunk file {write * 1000:.0f} ms (incl. vector cache reload); "
        f"fts with 50 unindexed rows {before}; optimize() {opt * 1000:.0f} ms; fts after {fmt(timed(fts, 30))}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default=None, help="comma-separated chunk counts")
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--ann", action="store_true", help="also measure LanceDB ANN indexes at the largest size")
    args = parser.parse_args()
    args.sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([10_000, 30_000] if args.quick else [10_000, 100_000])
    )
    args.queries = args.queries or (60 if args.quick else 200)
    print(machine(), flush=True)
    embedder = LocalMiniLMEmbedder()
    embedder.warmup()
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        for n in args.sizes:
            results[n] = bench_size(n, args, embedder, Path(tmp))
    print("\n==== SUMMARY bench_search ====")
    print(machine())
    for n, r in results.items():
        for label in ("embed only +embed", "hybrid +embed", "hybrid no-embed", "vector no-embed", "fts no-embed"):
            p50, p99 = percentiles(r[label])
            print(f"{n:>7,} chunks  {label:<20} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms")
        p50, p99 = percentiles(r["hybrid+filter no-embed"])
        print(f"{n:>7,} chunks  {'hybrid+filter':<20} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms")
        print(f"{n:>7,} chunks  vector recall@10 {r['recall']:.3f} (filtered {r['recall_filtered']:.3f})")
    big = results[max(results)]
    p50, p99 = percentiles(big["hybrid +embed"])
    verdict = "MET" if p50 <= 25 and p99 <= 60 and big["recall"] >= 0.98 else "MISSED"
    print(f"goal at {max(results):,} (hybrid incl. embedding p50<=25, p99<=60 ms, recall>=0.98): {verdict}")


if __name__ == "__main__":
    main()
