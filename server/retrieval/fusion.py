"""Weighted reciprocal rank fusion of ranked candidate lists.

Why our own RRF rather than LanceDB's hybrid query + ``RRFReranker``: a
search may span several vector stores (one table each), so the two lists
have to be merged across tables anyway, and the fused score has to be mapped
into OpenAI's [0, 1] range, which the reranker does not do.

RRF (Cormack et al., 2009): score(d) = Σ_lists w_list / (k + rank(d)). It
needs no score calibration between BM25 and cosine, which is its point.

The constants were chosen with bench/bench_retrieval_quality.py (940 stdlib
docstring passages, 300 summary-line queries, picked on one half of the
queries and checked on the other). The textbook k = 60 with equal weights
was tuned for fusing 1000-deep TREC runs; on two 20-40-deep lists it lets a
passage ranked low by both lists beat one ranked first by the stronger list,
and hybrid scored *below* vector-only (nDCG@10 0.675 vs 0.681). k = 10,
20 candidates per list and BM25 at half the weight of the vector list gave
recall@5 0.833 / 0.840 and nDCG@10 0.698 / 0.711 on the two halves, against
vector-only 0.840 / 0.787 and 0.682 / 0.680 and BM25-only 0.687 / 0.747 and
0.572 / 0.622. (Query rewriting is not done; a keyword-heavy corpus would
favour a higher BM25 weight, hence the parameters.)

The reported score is normalised by its maximum, Σ_lists w / (k + 1): a
chunk ranked first by every list scores 1.0.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

__all__ = ["BM25_WEIGHT", "HYBRID_DEPTH", "RRF_K", "VECTOR_WEIGHT", "reciprocal_rank_fusion"]

RRF_K = 10
VECTOR_WEIGHT = 1.0
BM25_WEIGHT = 0.5
HYBRID_DEPTH = 20  # candidates per list (at least max_num_results)
K = TypeVar("K", bound=Hashable)


def reciprocal_rank_fusion(
    ranked_lists: Sequence[Sequence[K]], k: int = RRF_K, weights: Sequence[float] | None = None
) -> list[tuple[K, float]]:
    """Keys with normalised fused scores in (0, 1], best first; ties keep
    the order of first appearance (earlier lists win). ``weights`` default
    to 1 per list."""
    if not ranked_lists:
        return []
    weights = list(weights) if weights is not None else [1.0] * len(ranked_lists)
    if len(weights) != len(ranked_lists) or any(w <= 0 for w in weights):
        raise ValueError("one positive weight per list")
    scores: dict[K, float] = {}
    for ranking, weight in zip(ranked_lists, weights, strict=True):
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + weight / (k + rank)
    best = sum(weights) / (k + 1)
    order = sorted(scores.items(), key=lambda item: -item[1])
    return [(key, min(1.0, score / best)) for key, score in order]
