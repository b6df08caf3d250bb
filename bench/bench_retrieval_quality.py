"""Retrieval quality of vector-only, BM25-only and hybrid search on real text.

    python bench/bench_retrieval_quality.py            # ~1,500 passages, 300 queries (~2-4 min on 2 cores)
    python bench/bench_retrieval_quality.py --quick    # 600 passages, 150 queries

The evaluation set is built offline from this machine, and is honest about how:

* Corpus: docstrings of functions, methods and classes in the Python standard library
  (``inspect``-free: parsed with ``ast`` from the .py sources, tests and private names
  excluded). A docstring qualifies if its first line is a whole sentence (ends with a period) of
  >= 5 words and the rest has >= 15 words.
* Query: the docstring's first line (its summary). Passage: the *rest* of the
  docstring, prefixed by ``<module>.<qualname>`` -- the summary line itself is removed
  from the passage, so the query's exact words are not handed to BM25 for free.
  Each passage is its own "file"; the relevant file for a query is the one its summary
  came from (one relevant document per query; other passages may also be on topic, so
  absolute numbers are a lower bound).
* Ingestion and search go through the server's code: ``chunk_text`` with the auto
  strategy, ``VectorIndex.add_file`` (real local MiniLM embeddings, LanceDB table, native
  FTS index), ``VectorIndex.search`` for the shipped modes. Ranking is per file (the
  first chunk of a file counts).
* Metrics: recall@5 (relevant file in the top 5) and nDCG@10 (binary relevance, one
  relevant file: 1/log2(rank+1)), averaged over queries. A sweep over RRF's k,
  candidate depth and list weights is computed from the same two ranked lists.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import hashlib
import math
import random
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_search import machine
from server.retrieval import AUTO_CHUNKING, LocalMiniLMEmbedder, VectorIndex, chunk_text
from server.retrieval.fusion import BM25_WEIGHT, HYBRID_DEPTH, RRF_K, VECTOR_WEIGHT


def docstring_pairs(limit: int, seed: int) -> list[tuple[str, str, str]]:
    """(id, query, passage) triples from stdlib docstrings; see the module docstring."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[tuple[str, str, str]] = []
    seen_queries: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part.startswith(("test", "_", "idlelib", "site-packages", "lib2to3")) for part in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text("utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        module = ".".join(rel.with_suffix("").parts)
        stack: list[tuple[ast.AST, str]] = [(tree, module)]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    continue
                if child.name.startswith("_"):
                    continue
                qual = f"{prefix}.{child.name}"
                if isinstance(child, ast.ClassDef):
                    stack.append((child, qual))
                doc = ast.get_docstring(child)
                if not doc:
                    continue
                first, _, rest = doc.strip().partition("\n")
                first, rest = " ".join(first.split()), rest.strip()
                if not first.endswith(".") or len(first.split()) < 5 or len(rest.split()) < 15:
                    continue
                if first in seen_queries:
                    continue
                seen_queries.add(first)
                out.append((qual, first, f"{qual}\n{rest}"))
    random.Random(seed).shuffle(out)
    return out[:limit]


def ndcg10(rank: int | None) -> float:
    return 0.0 if rank is None or rank > 10 else 1.0 / math.log2(rank + 1)


def file_rank(ranked_files: Sequence[str], relevant: str) -> int | None:
    seen: list[str] = []
    for f in ranked_files:
        if f not in seen:
            seen.append(f)
            if f == relevant:
                return len(seen)
    return None


def metrics(ranks: list[int | None]) -> tuple[float, float]:
    r5 = sum(1 for r in ranks if r is not None and r <= 5) / len(ranks)
    return r5, sum(ndcg10(r) for r in ranks) / len(ranks)


def per_file(hits: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """A ranked chunk list as a ranked file list (first chunk of a file counts)."""
    seen: dict[str, float] = {}
    for f, score in hits:
        seen.setdefault(f, score)
    return list(seen.items())


def score_fusion(vec: list[tuple[str, float]], bm25: list[tuple[str, float]], alpha: float) -> list[str]:
    top = max((s for _, s in bm25), default=0.0) or 1.0
    scores: dict[str, float] = {}
    for f, s in vec:
        scores[f] = scores.get(f, 0.0) + alpha * s
    for f, s in bm25:
        scores[f] = scores.get(f, 0.0) + (1 - alpha) * s / top
    return [f for f, _ in sorted(scores.items(), key=lambda kv: -kv[1])]


def weighted_rrf(lists: list[list[str]], k: int, weights: Sequence[float]) -> list[str]:
    scores: dict[str, float] = {}
    for ranking, w in zip(lists, weights, strict=True):
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + w / (k + rank)
    return [key for key, _ in sorted(scores.items(), key=lambda kv: -kv[1])]


async def run(args: argparse.Namespace) -> None:
    print(machine(), flush=True)
    pairs = docstring_pairs(args.passages, seed=7)
    queries = pairs[: args.queries]
    print(f"corpus: {len(pairs)} stdlib docstring passages; {len(queries)} queries (summary lines)", flush=True)
    embedder = LocalMiniLMEmbedder()
    embedder.warmup()
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
        index = VectorIndex(str(Path(tmp) / "db"), embedder, fts_reindex_rows=10**9)
        store = "vs_quality"
        start = time.perf_counter()
        files = [(fid, chunk_text(passage, *AUTO_CHUNKING)) for fid, _, passage in pairs]
        texts = [c.text for _, chunks in files for c in chunks]
        # Embeddings of this exact corpus are kept in the temp dir: a re-run (e.g. to try
        # fusion settings) skips the ~1-4 min of MiniLM on 2 cores. Same model, same vectors.
        digest = hashlib.sha256("\x00".join([embedder.name, *texts]).encode()).hexdigest()[:16]
        cache = Path(tempfile.gettempdir()) / f"threadlog_quality_{digest}.npy"
        if cache.is_file() and not args.no_cache:
            vectors = np.load(cache)
            how = f"embeddings from {cache}"
        else:
            vectors = embedder.embed(texts)
            np.save(cache, vectors)
            how = "embedded now"
        offset = 0
        for fid, chunks in files:
            index._write_file(store, fid, fid, chunks, {}, vectors[offset : offset + len(chunks)])
            offset += len(chunks)
        await index.optimize(store)
        print(f"ingested {len(texts)} chunks in {time.perf_counter() - start:.1f} s ({how})", flush=True)

        shipped: dict[str, list[int | None]] = {"vector": [], "bm25": [], "hybrid": []}
        lists: list[tuple[str, list[tuple[str, float]], list[tuple[str, float]]]] = []
        for fid, query, _ in queries:
            for label, mode in (("vector", "vector"), ("bm25", "fts"), ("hybrid", "hybrid")):
                hits = await index.search([store], query, max_num_results=20, mode=mode)
                shipped[label].append(file_rank([h.file_id for h in hits], fid))
            vec = await index.search([store], query, max_num_results=50, mode="vector")
            fts = await index.search([store], query, max_num_results=50, mode="fts")
            lists.append(
                (fid, per_file([(h.file_id, h.score) for h in vec]), per_file([(h.file_id, h.score) for h in fts]))
            )

    print("\nshipped search (VectorIndex.search, per-file ranks):")
    summary = {}
    for label, ranks in shipped.items():
        r5, nd = metrics(ranks)
        summary[label] = (r5, nd)
        print(f"  {label:<7} recall@5 {r5:.3f}  nDCG@10 {nd:.3f}")

    half = len(lists) // 2
    print(
        "\nfusion sweep on the same two lists (per-file, top 50 each; depth = candidates per list);\n"
        f"tune = queries 1-{half}, test = queries {half + 1}-{len(lists)} (pick on tune, read test):"
    )
    print("  RRF  k   depth  w_vec w_bm25   tune r@5 nDCG@10   test r@5 nDCG@10")

    def both(ranks: list[int | None]) -> str:
        tune, test = metrics(ranks[:half]), metrics(ranks[half:])
        return f"{tune[0]:8.3f} {tune[1]:7.3f}   {test[0]:8.3f} {test[1]:7.3f}"

    for k in (1, 3, 5, 10, 20, 60):
        for depth in (10, 20, 40):
            for wv, wb in ((1.0, 1.0), (1.0, 0.5)):
                ranks = [
                    file_rank(weighted_rrf([[f for f, _ in v[:depth]], [f for f, _ in b[:depth]]], k, (wv, wb)), fid)
                    for fid, v, b in lists
                ]
                print(f"       {k:<3} {depth:<6} {wv:<5} {wb:<6} {both(ranks)}")
    print("  score fusion: alpha*cosine + (1-alpha)*bm25/max(bm25), top 40 each")
    for alpha in (0.3, 0.5, 0.7, 0.9):
        ranks = [file_rank(score_fusion(v[:40], b[:40], alpha), fid) for fid, v, b in lists]
        print(f"       alpha {alpha:<4}                 {both(ranks)}")
    print("  shipped search on the test half:")
    for label, ranks in shipped.items():
        r5, nd = metrics(ranks[half:])
        print(f"       {label:<7} recall@5 {r5:.3f}  nDCG@10 {nd:.3f}")

    print("\n==== SUMMARY bench_retrieval_quality ====")
    print(machine())
    print(f"{len(pairs)} passages, {len(queries)} queries (stdlib docstrings: summary line -> rest)")
    for label, (r5, nd) in summary.items():
        print(f"{label:<7} recall@5 {r5:.3f}  nDCG@10 {nd:.3f}")
    wins = all(summary["hybrid"][i] > max(summary["vector"][i], summary["bm25"][i]) for i in (0, 1))
    test = {label: metrics(ranks[half:]) for label, ranks in shipped.items()}
    print("test half only: " + ", ".join(f"{label} r@5 {r5:.3f} nDCG@10 {nd:.3f}" for label, (r5, nd) in test.items()))
    print(f"fusion: weighted RRF k={RRF_K}, weights vector {VECTOR_WEIGHT} / BM25 {BM25_WEIGHT}, depth {HYBRID_DEPTH}")
    se = math.sqrt(summary["hybrid"][0] * (1 - summary["hybrid"][0]) / len(queries))
    print(f"hybrid beats both on both metrics: {'YES' if wins else 'NO'} (recall@5 standard error ~{se:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--passages", type=int, default=None)
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--no-cache", action="store_true", help="embed the corpus even if cached")
    args = parser.parse_args()
    args.passages = args.passages or (600 if args.quick else 1500)
    args.queries = args.queries or (150 if args.quick else 300)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
