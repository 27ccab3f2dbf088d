"""Rank fusion of several ranked lists (pure functions): reciprocal rank fusion and a weighted score mix.

Both take lists of (id, score), best first, and return one fused list, best first.
RRF (Cormack et al. 2009) uses ranks only: score(d) = Σ_lists 1 / (k + rank_d), rank from 1,
k = 60 as in Elasticsearch, OpenSearch and Weaviate. The weighted mix min-max normalises each
list's scores to [0, 1] (a list whose scores are all equal gets 1 everywhere) and sums them
with the given weights; a product missing from a list gets 0 from it. `boost` adds a fixed
amount to the fused score of the products in a set (those holding every query word, say),
so a set of surer matches can be lifted by a margin chosen on dev queries.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["RRF_K", "boost", "minmax", "rrf", "weighted"]

RRF_K = 60
Ranked = Sequence[tuple[str, float]]


def rrf(lists: Sequence[Ranked], k: int = RRF_K, weights: Sequence[float] | None = None) -> list[tuple[str, float]]:
    weights = weights or [1.0] * len(lists)
    scores: dict[str, float] = {}
    for w, ranked in zip(weights, lists, strict=True):
        for rank, (i, _) in enumerate(ranked, 1):
            scores[i] = scores.get(i, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def minmax(ranked: Ranked) -> list[tuple[str, float]]:
    if not ranked:
        return []
    values = [s for _, s in ranked]
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-12:
        return [(i, 1.0) for i, _ in ranked]
    return [(i, (s - lo) / (hi - lo)) for i, s in ranked]


def weighted(lists: Sequence[Ranked], weights: Sequence[float]) -> list[tuple[str, float]]:
    scores: dict[str, float] = {}
    for w, ranked in zip(weights, lists, strict=True):
        for i, s in minmax(ranked):
            scores[i] = scores.get(i, 0.0) + w * s
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def boost(fused: Ranked, ids: Sequence[str], amount: float) -> list[tuple[str, float]]:
    """`fused` with `amount` added to the score of each product in `ids` (one missing from
    `fused` joins it at `amount`), re-sorted best first with ties by id."""
    if not ids or amount == 0:
        return list(fused)
    scores = dict(fused)
    for i in dict.fromkeys(ids):
        scores[i] = scores.get(i, 0.0) + amount
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
