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
import math
import random
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_search import machine
from server.retrieval import AUTO_CHUNKING, LocalMiniLMEmbedder, VectorIndex, chunk_text
from server.retrieval.fusion import reciprocal_rank_fusion


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
        n_chunks = 0
        for fid, _, passage in pairs:
            chunks = chunk_text(passage, *AUTO_CHUNKING)
            n_chunks += len(chunks)
            await index.add_file(store, fid, fid, chunks)
        await index.optimize(store)
        print(f"ingested {n_chunks} chunks in {time.perf_counter() - start:.1f} s", flush=True)

        shipped: dict[str, list[int | None]] = {"vector": [], "bm25": [], "hybrid": []}
        lists: list[tuple[str, list[str], list[str]]] = []
        for fid, query, _ in queries:
            for label, mode in (("vector", "vector"), ("bm25", "fts"), ("hybrid", "hybrid")):
                hits = await index.search([store], query, max_num_results=20, mode=mode)
                shipped[label].append(file_rank([h.file_id for h in hits], fid))
            vec = await index.search([store], query, max_num_results=50, mode="vector")
            fts = await index.search([store], query, max_num_results=50, mode="fts")
            lists.append((fid, [h.file_id for h in vec], [h.file_id for h in fts]))

    print("\nshipped search (VectorIndex.search, per-file ranks):")
    summary = {}
    for label, ranks in shipped.items():
        r5, nd = metrics(ranks)
        summary[label] = (r5, nd)
        print(f"  {label:<7} recall@5 {r5:.3f}  nDCG@10 {nd:.3f}")

    print("\nfusion sweep on the same lists (top-50 vector and BM25 files):")
    print("  k    depth  w_vec w_bm25   recall@5  nDCG@10")
    for k in (1, 10, 30, 60, 100):
        for depth in (20, 50):
            for wv, wb in ((1.0, 1.0), (1.0, 0.7), (0.7, 1.0)):
                ranks = [file_rank(weighted_rrf([v[:depth], b[:depth]], k, (wv, wb)), fid) for fid, v, b in lists]
                r5, nd = metrics(ranks)
                print(f"  {k:<4} {depth:<6} {wv:<5} {wb:<6} {r5:8.3f} {nd:8.3f}")
    plain = [file_rank([key for key, _ in reciprocal_rank_fusion([v, b])], fid) for fid, v, b in lists]
    r5, nd = metrics(plain)
    print(f"  server reciprocal_rank_fusion on top-50 lists: recall@5 {r5:.3f}  nDCG@10 {nd:.3f}")

    print("\n==== SUMMARY bench_retrieval_quality ====")
    print(machine())
    print(f"{len(pairs)} passages, {len(queries)} queries (stdlib docstrings: summary line -> rest)")
    for label, (r5, nd) in summary.items():
        print(f"{label:<7} recall@5 {r5:.3f}  nDCG@10 {nd:.3f}")
    best_single = max(max(summary["vector"]), max(summary["bm25"]))
    hybrid_best = summary["hybrid"][0] > max(summary["vector"][0], summary["bm25"][0]) and summary["hybrid"][1] > max(
        summary["vector"][1], summary["bm25"][1]
    )
    print(f"hybrid beats both on both metrics: {'YES' if hybrid_best else 'NO'} (best single {best_single:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--passages", type=int, default=None)
    parser.add_argument("--queries", type=int, default=None)
    args = parser.parse_args()
    args.passages = args.passages or (600 if args.quick else 1500)
    args.queries = args.queries or (150 if args.quick else 300)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
