"""Reciprocal rank fusion of ranked candidate lists.

Why our own RRF rather than LanceDB's hybrid query + ``RRFReranker``: a
search may span several vector stores (one table each), so the two lists
have to be merged across tables anyway, and the fused score has to be mapped
into OpenAI's [0, 1] range, which the reranker does not do.

RRF (Cormack et al., 2009): score(d) = Σ_lists 1 / (k + rank(d)), k = 60.
It needs no score calibration between BM25 and cosine, which is its point.
The reported score is normalised by its maximum, Σ_lists 1 / (k + 1): a
chunk ranked first by every list scores 1.0, one ranked first by one of two
lists and absent from the other 0.5.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

__all__ = ["RRF_K", "reciprocal_rank_fusion"]

RRF_K = 60
K = TypeVar("K", bound=Hashable)


def reciprocal_rank_fusion(ranked_lists: Sequence[Sequence[K]], k: int = RRF_K) -> list[tuple[K, float]]:
    """Keys with normalised fused scores in (0, 1], best first; ties keep
    the order of first appearance (earlier lists win)."""
    if not ranked_lists:
        return []
    scores: dict[K, float] = {}
    for ranking in ranked_lists:
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    best = len(ranked_lists) / (k + 1)
    order = sorted(scores.items(), key=lambda item: -item[1])
    return [(key, min(1.0, score / best)) for key, score in order]
