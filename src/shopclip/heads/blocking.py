"""Which pairs of listings are worth comparing: blocking for dedupe.

Comparing every pair grows with the square of the catalog. Each listing is compared
instead with its ``k`` nearest neighbours in the fused space (an ANN index: exact up to
the index's threshold, HNSW above, so the work grows near-linearly), and with every
listing whose photo file has the same content hash (a re-used photo is always a
candidate, however many copies there are). Optionally only listings of the same
top-level category are compared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shopclip.index import create_index
from shopclip.index.store import l2_normalize


def knn_pairs(vectors: np.ndarray, k: int, *, batch: int = 2048) -> np.ndarray:
    """(m, 2) unique pairs ``i < j`` where one is among the other's ``k`` nearest neighbours."""
    x = l2_normalize(np.asarray(vectors, dtype=np.float32))
    n = len(x)
    if n < 2 or k <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    index = create_index("faiss", dim=x.shape[1])
    ids = [str(i) for i in range(n)]
    index.add(ids, x)
    found: list[np.ndarray] = []
    for start in range(0, n, batch):
        hits = index.search(x[start : start + batch], min(k + 1, n))
        for r, row in enumerate(hits):
            i = start + r
            js = np.asarray([int(h.id) for h in row if int(h.id) != i][:k], dtype=np.int64)
            if js.size:
                found.append(np.stack([np.minimum(i, js), np.maximum(i, js)], axis=1))
    return _unique(found)


def same_hash_pairs(hashes: Sequence[str | None], *, max_group: int = 1000) -> np.ndarray:
    """(m, 2) pairs of listings whose photos have the same content hash (groups over
    ``max_group`` are a placeholder photo, not a duplicate: skipped)."""
    groups: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        if h:
            groups.setdefault(h, []).append(i)
    found = []
    for members in groups.values():
        if 1 < len(members) <= max_group:
            m = np.asarray(members, dtype=np.int64)
            a, b = np.triu_indices(len(m), 1)
            found.append(np.stack([m[a], m[b]], axis=1))
    return _unique(found)


def same_top_level(pairs: np.ndarray, categories: Sequence[str | None]) -> np.ndarray:
    """The pairs whose two listings share a top-level category (or either has none)."""
    tops = [str(c).split(">", 1)[0].strip() if c else "" for c in categories]
    keep = [not tops[a] or not tops[b] or tops[a] == tops[b] for a, b in pairs.tolist()]
    return pairs[np.asarray(keep, dtype=bool)] if len(pairs) else pairs


def _unique(parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(parts).astype(np.int64), axis=0)


def connected_groups(n: int, edges: np.ndarray) -> list[list[int]]:
    """Connected components (union-find) of size >= 2, each sorted, largest first."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in np.asarray(edges, dtype=np.int64).reshape(-1, 2).tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    return sorted((sorted(c) for c in comps.values() if len(c) > 1), key=lambda c: (-len(c), c[0]))


__all__ = ["connected_groups", "knn_pairs", "same_hash_pairs", "same_top_level"]
