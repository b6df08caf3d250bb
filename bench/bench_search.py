"""Benchmark server/retrieval: search latency, vector recall, FTS upkeep, ingestion.

    python bench/bench_search.py            # 10k and 100k chunks (several minutes on 2 cores)
    python bench/bench_search.py --quick    # 10k and 30k chunks, fewer queries

Prints figures, never asserts. What it uses:

* Text: real text from this machine — the .py files of Python's stdlib and of the
  installed packages — cut into ~1,000-character pieces at line ends (cheap; the real
  chunker is timed in the ingestion part). FTS and hybrid queries are 2-3 words drawn
  from random pieces.
* Vectors: random unit vectors (seeded), 384-d like the local model: embedding 100k
  chunks with the CPU model would take hours, and flat-search latency does not depend on
  the values. Random vectors are the hardest case for IVF indexes (no clusters), so the
  ANN recall printed is a lower bound for real embeddings.
* Query embedding: the real local MiniLM (numpy) on real-word queries, cache off.
* Recall@10 of the vector part: LanceDB's answer vs. exact numpy brute force.

Each figure is measured through ``VectorIndex``'s own code paths: ``_search`` (the
thread-side body of ``search``: vector + BM25 + RRF, no query embedding) and the public
``search`` coroutine (+ query embedding, + thread hop).
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

from server.retrieval import AUTO_CHUNKING, Chunk, LocalMiniLMEmbedder, VectorIndex, chunk_text, extract_text  # noqa: E402

DIM = 384


# ------------------------------------------------------------------ machine & corpus


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return (
        f"machine: nproc={os.cpu_count()} cpu={cpu!r} python={platform.python_version()} "
        f"numpy={np.__version__} loadavg(1m)={load[0]:.2f}"
    )


def source_files() -> Iterator[Path]:
    """Real text on this machine: stdlib and site-packages sources, tests excluded."""
    seen: set[str] = set()
    for key in ("stdlib", "purelib", "platlib"):
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
    while len(pieces) < count:  # not enough text on this machine: cycle it
        pieces.extend(pieces[: count - len(pieces)])
    return pieces


def word_queries(pieces: list[str], n: int, rng: random.Random) -> list[str]:
    out = []
    while len(out) < n:
        words = [w for w in "".join(c if c.isalnum() else " " for c in rng.choice(pieces)).split() if len(w) > 3]
        if len(words) >= 3:
            out.append(" ".join(rng.sample(words, rng.choice((2, 3)))))
    return out


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def pct(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    return f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  (n={len(ms)})"


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    fn()  # warm
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


# ------------------------------------------------------------------ building a store


def build_store(index: VectorIndex, store: str, pieces: list[str], vectors: np.ndarray, per_file: int) -> float:
    """Bulk load through VectorIndex's write path, one FTS rebuild at the end."""
    start = time.perf_counter()
    for f, lo in enumerate(range(0, len(pieces), per_file)):
        chunks = [Chunk(t, 0, i) for i, t in enumerate(pieces[lo : lo + per_file])]
        attrs = {"group": f"g{f % 10}", "n": float(f)}
        index._write_file(store, f"file_{f}", f"f{f}.py", chunks, attrs, vectors[lo : lo + per_file])
    table = index._open(store, create=False)
    table.optimize()
    return time.perf_counter() - start


def exact_top10(vectors: np.ndarray, queries: np.ndarray) -> list[list[int]]:
    sims = queries @ vectors.T
    return [list(np.argsort(-row)[:10]) for row in sims]


def vector_ids(table: Any, q: np.ndarray, configure: Callable[[Any], Any] | None = None) -> list[int]:
    builder = table.search(q, vector_column_name="vector").distance_type("cosine").limit(10)
    if configure is not None:
        builder = configure(builder)
    rows = builder.select(["file_id", "chunk_index", "_distance"]).to_list()
    return [f"{row['file_id']}#{row['chunk_index']}" for row in rows]


def rowkeys(per_file: int, idx: list[int]) -> list[str]:
    return [f"file_{i // per_file}#{i % per_file}" for i in idx]


# ------------------------------------------------------------------ sections


def bench_size(n: int, args: argparse.Namespace, embedder: LocalMiniLMEmbedder, workdir: Path) -> None:
    rng = random.Random(n)
    per_file = 1000
    print(f"\n=== {n:,} chunks (real text ~1,000 chars each, random unit vectors) ===")
    pieces = text_pieces(n)
    vectors = unit_vectors(n, seed=n)
    index = VectorIndex(str(workdir / f"db{n}"), embedder, fts_reindex_rows=10**9, query_cache_size=0)
    store = "vs_bench"
    build_s = build_store(index, store, pieces, vectors, per_file)
    table = index._open(store, create=False)
    mb = sum(len(p) for p in pieces) / 1e6
    print(f"load {n:,} rows ({mb:.1f} MB text) + FTS index + optimize: {build_s:.1f} s")
    print(f"usage_bytes: {asyncio.run(index.usage_bytes(store)) / 1e6:.1f} MB")

    q_vecs = unit_vectors(args.queries, seed=n + 1)
    q_words = word_queries(pieces, args.queries, rng)
    it_v = iter(q_vecs.tolist() * 10)
    it_w = iter(q_words * 10)

    def one(mode: str) -> Callable[[], Any]:
        def run() -> Any:
            qvec = np.asarray(next(it_v), dtype=np.float32) if mode != "fts" else None
            return index._search([store], next(it_w), qvec, 20, 0.0, None, mode)

        return run

    print("without query embedding (VectorIndex._search, top 20):")
    for mode in ("vector", "fts", "hybrid"):
        print(f"  {mode:<7} {pct(timed(one(mode), args.queries))}")
    flt = {
        "type": "and",
        "filters": [{"type": "eq", "key": "group", "value": "g3"}, {"type": "gt", "key": "n", "value": 5}],
    }

    def filtered() -> Any:
        return index._search([store], next(it_w), np.asarray(next(it_v), dtype=np.float32), 20, 0.0, flt, "hybrid")

    print(f"  hybrid + filter (eq AND gt, ~10% rows) {pct(timed(filtered, args.queries))}")

    embed_q = iter(word_queries(pieces, args.queries * 3, rng))
    print("with query embedding (await VectorIndex.search, local MiniLM, cache off):")
    samples: dict[str, list[float]] = {"embed only": [], "vector": [], "hybrid": []}

    async def run_search() -> None:
        for _ in range(args.queries):
            q = next(embed_q)
            start = time.perf_counter()
            embedder.embed([q])
            samples["embed only"].append(time.perf_counter() - start)
            for mode in ("vector", "hybrid"):
                q = next(embed_q) if mode == "hybrid" else q + " x"
                start = time.perf_counter()
                await index.search([store], q, max_num_results=20, mode=mode)
                samples[mode].append(time.perf_counter() - start)

    asyncio.run(run_search())
    for name, values in samples.items():
        print(f"  {name:<10} {pct(values)}")

    # Recall of the vector part vs exact brute force.
    nq = min(args.queries, 100)
    truth = [rowkeys(per_file, t) for t in exact_top10(vectors, q_vecs[:nq])]

    def recall(configure: Callable[[Any], Any] | None) -> tuple[float, list[float]]:
        hits, times = 0, []
        for q, t in zip(q_vecs[:nq], truth, strict=True):
            start = time.perf_counter()
            got = vector_ids(table, q, configure)
            times.append(time.perf_counter() - start)
            hits += len(set(got) & set(t))
        return hits / (10 * nq), times

    r, times = recall(None)
    print(f"vector recall@10 vs numpy exact (flat search, no ANN index): {r:.3f}   {pct(times)}")
    if n >= args.ann_min:
        bench_ann(table, recall)
    bench_fts_upkeep(index, store, table, q_words, embedder)


def bench_ann(table: Any, recall: Callable[[Callable[[Any], Any] | None], tuple[float, list[float]]]) -> None:
    from lancedb.index import HnswSq, IvfFlat, IvfPq

    print("ANN indexes on the same rows (recall@10 vs exact, latency of the raw LanceDB query):")
    configs: list[tuple[str, Any, list[tuple[str, Callable[[Any], Any]]]]] = [
        (
            "IVF_PQ default",
            IvfPq(distance_type="cosine"),
            [
                ("nprobes=20 (default)", lambda b: b),
                ("nprobes=50 refine=10", lambda b: b.nprobes(50).refine_factor(10)),
                ("nprobes=100 refine=20", lambda b: b.nprobes(100).refine_factor(20)),
            ],
        ),
        (
            "IVF_FLAT",
            IvfFlat(distance_type="cosine"),
            [("nprobes=20", lambda b: b.nprobes(20)), ("nprobes=64", lambda b: b.nprobes(64))],
        ),
        (
            "IVF_HNSW_SQ",
            HnswSq(distance_type="cosine"),
            [("ef=100", lambda b: b.ef(100)), ("ef=300 refine=5", lambda b: b.ef(300).refine_factor(5))],
        ),
    ]
    for name, config, variants in configs:
        start = time.perf_counter()
        table.create_index("vector", config=config, replace=True)
        build = time.perf_counter() - start
        for label, configure in variants:
            r, times = recall(configure)
            print(f"  {name:<15} build {build:6.1f} s  {label:<24} recall@10 {r:.3f}   {pct(times)}")
        for idx in table.list_indices():
            if "vector" in idx.columns:
                table.drop_index(idx.name)


def bench_fts_upkeep(index: VectorIndex, store: str, table: Any, q_words: list[str], embedder: Any) -> None:
    print("FTS upkeep after adding one 50-chunk file:")
    pieces = text_pieces(50, size=1200)
    vectors = unit_vectors(50, seed=7)
    start = time.perf_counter()
    index._write_file(store, "file_new", "new.py", [Chunk(t, 0, i) for i, t in enumerate(pieces)], {}, vectors)
    write = time.perf_counter() - start
    it = iter(q_words * 10)

    def fts() -> Any:
        return index._search([store], next(it), None, 20, 0.0, None, "fts")

    before = pct(timed(fts, 50))
    start = time.perf_counter()
    table.optimize()
    opt = time.perf_counter() - start
    after = pct(timed(fts, 50))
    print(f"  write {write * 1000:.0f} ms; fts with 50 unindexed rows: {before}")
    print(f"  optimize() (compact + fold into FTS index + prune): {opt * 1000:.0f} ms; fts after: {after}")
    start = time.perf_counter()
    index._remove_file(store, "file_new")
    print(f"  remove_file: {(time.perf_counter() - start) * 1000:.0f} ms")


def bench_ingest(args: argparse.Namespace, embedder: LocalMiniLMEmbedder, workdir: Path) -> None:
    """parse -> chunk -> embed -> write with the local model, AUTO chunking."""
    budget = 150_000 if args.quick else 600_000
    files: list[tuple[str, bytes]] = []
    total = 0
    for path in source_files():
        data = path.read_bytes()
        if 2_000 < len(data) < 60_000:
            files.append((path.name, data))
            total += len(data)
            if total >= budget:
                break
    index = VectorIndex(str(workdir / "ingest"), embedder)
    spent = {"parse": 0.0, "chunk": 0.0, "embed": 0.0, "write": 0.0}
    n_chunks = tokens = 0
    for i, (name, data) in enumerate(files):
        t0 = time.perf_counter()
        text = extract_text(name, data)
        t1 = time.perf_counter()
        chunks = chunk_text(text, *AUTO_CHUNKING)
        t2 = time.perf_counter()
        vectors = embedder.embed([c.text for c in chunks])
        t3 = time.perf_counter()
        index._write_file("vs_ingest", f"file_{i}", name, chunks, {}, vectors)
        t4 = time.perf_counter()
        for key, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            spent[key] += dt
        n_chunks += len(chunks)
        tokens += sum(c.token_count for c in chunks)
    wall = sum(spent.values())
    print(
        f"\n=== ingestion, local MiniLM, AUTO chunking {AUTO_CHUNKING} ===\n"
        f"{len(files)} files, {total / 1e6:.2f} MB, {n_chunks} chunks, {tokens:,} chunk tokens in {wall:.1f} s: "
        f"{n_chunks / wall:.1f} chunks/s, {total / 1e6 / wall:.3f} MB/s, {tokens / wall:,.0f} tokens/s"
    )
    print("  where the time goes: " + ", ".join(f"{k} {v / wall:.1%} ({v:.1f} s)" for k, v in spent.items()))
    print("  (write includes the FTS optimize() after every file, the default upkeep policy)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default=None, help="comma-separated chunk counts")
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--ann-min", type=int, default=100_000, help="run the ANN comparison at sizes >= this")
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([10_000, 30_000] if args.quick else [10_000, 100_000])
    )
    args.queries = args.queries or (60 if args.quick else 200)
    if args.quick and not any(s >= args.ann_min for s in sizes):
        args.ann_min = max(sizes)
    print(machine())
    embedder = LocalMiniLMEmbedder()
    embedder.warmup()
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        for n in sizes:
            bench_size(n, args, embedder, Path(tmp))
        if not args.skip_ingest:
            bench_ingest(args, embedder, Path(tmp))
    print("\n" + machine())


if __name__ == "__main__":
    main()
