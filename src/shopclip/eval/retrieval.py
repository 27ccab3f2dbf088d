"""Retrieval and recommendation tasks on embeddings (VL-CLIP style: HITS@k, MRR, NDCG…).

Two relevance definitions, reported side by side because they answer different questions:

* ``exact`` — binary: the same product (the query's own listing, or a listing in the
  same ``group`` of re-listed identical products). "Did it find *this* product?"
* ``category`` — graded: 2 for the same leaf category (full path), 1 for the same parent
  path, 0 otherwise. "Are the results the right *kind* of product?" NDCG uses the
  grades; hit/recall/precision/MRR/MAP count grade > 0.

Queries without any relevant item (a product with no group in ``exact`` similar-items)
are excluded from the averages and counted in ``n_queries_skipped`` (see
:mod:`shopclip.eval.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shopclip.eval.data import ProductSet
from shopclip.eval.metrics import rank_from_scores, recall_at_k, retrieval_metrics

DEFAULT_KS = (1, 5, 10)


def exact_relevance(query: ProductSet, gallery: ProductSet) -> np.ndarray:
    """1 where the gallery item is the query's product (same id, or same non-empty group)."""
    qi, gi = np.asarray(query.ids, dtype=object), np.asarray(gallery.ids, dtype=object)
    rel = qi[:, None] == gi[None, :]
    qg = np.asarray([g or "" for g in query.groups], dtype=object)
    gg = np.asarray([g or "" for g in gallery.groups], dtype=object)
    rel |= (qg[:, None] == gg[None, :]) & (qg[:, None] != "")
    return rel.astype(np.float64)


def graded_relevance(query_paths: Sequence[str], query_parents: Sequence[str], gallery: ProductSet) -> np.ndarray:
    """2 for the same full category path, 1 for the same parent path, else 0 (none for '')."""
    qp, qpar = np.asarray(query_paths, dtype=object), np.asarray(query_parents, dtype=object)
    gp, gpar = np.asarray(gallery.paths, dtype=object), np.asarray(gallery.parents, dtype=object)
    same_leaf = (qp[:, None] == gp[None, :]) & (qp[:, None] != "")
    same_parent = (qpar[:, None] == gpar[None, :]) & (qpar[:, None] != "")
    return np.where(same_leaf, 2.0, np.where(same_parent, 1.0, 0.0))


def category_relevance(query: ProductSet, gallery: ProductSet) -> np.ndarray:
    return graded_relevance(query.paths, query.parents, gallery)


def _metrics(scores: np.ndarray, rel: np.ndarray, ks: Sequence[int], exclude_self: bool = False) -> dict[str, float]:
    return retrieval_metrics(scores, rel, ks, exclude_self=exclude_self)


def cross_modal(text: np.ndarray, image: np.ndarray, ps: ProductSet, ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """Text→image and image→text over one product set (each product's text and photo)."""
    s = text @ image.T
    exact, cat = exact_relevance(ps, ps), category_relevance(ps, ps)
    return {
        "t2i": {"exact": _metrics(s, exact, ks), "category": _metrics(s, cat, ks)},
        "i2t": {"exact": _metrics(s.T, exact.T, ks), "category": _metrics(s.T, cat.T, ks)},
    }


def similar_items(x: np.ndarray, ps: ProductSet, ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """Item→item ("similar items") within one set, the query itself excluded."""
    s = x @ x.T
    return {
        "exact": _metrics(s, exact_relevance(ps, ps), ks, exclude_self=True),
        "category": _metrics(s, category_relevance(ps, ps), ks, exclude_self=True),
    }


def category_classes(ps: ProductSet, min_count: int = 1) -> list[str]:
    """Full category paths with at least ``min_count`` products, sorted."""
    counts: dict[str, int] = {}
    for p in ps.paths:
        if p:
            counts[p] = counts.get(p, 0) + 1
    return sorted(c for c, n in counts.items() if n >= min_count)


def category_query_relevance(classes: Sequence[str], gallery: ProductSet) -> np.ndarray:
    """(c, n) graded relevance of class-path queries: 2 same path, 1 same parent path."""
    parents = [c.rsplit(" > ", 1)[0] if " > " in c else c for c in classes]
    return graded_relevance(list(classes), parents, gallery)


def category_query(scores: np.ndarray, classes: Sequence[str], gallery: ProductSet,
                   ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Query by category name: ``scores`` (c, n) of one prompt per class path against the gallery."""
    return _metrics(scores, category_query_relevance(classes, gallery), ks)


def recall_curve(scores: np.ndarray, rel: np.ndarray, max_k: int = 50, exclude_self: bool = False) -> list[float]:
    """Mean recall@k for k = 1..max_k (queries without relevant items skipped)."""
    rel = np.asarray(rel, dtype=np.float64).copy()
    s = np.asarray(scores, dtype=np.float64).copy()
    if exclude_self:
        np.fill_diagonal(rel, 0.0)
        np.fill_diagonal(s, -np.inf)
    keep = rel.sum(axis=1) > 0
    if not keep.any():
        return []
    s, rel = s[keep], rel[keep]
    k = min(max_k, s.shape[1])
    order = rank_from_scores(s, k)
    ranked = np.take_along_axis(rel, order, axis=1)
    n_rel = (rel > 0).sum(axis=1)
    return [float(np.mean(recall_at_k(ranked, j, n_rel))) for j in range(1, k + 1)]


# ----------------------------------------------------------------------- recommendation


def read_pairs(path: str | Path) -> list[tuple[str, str, float]]:
    """Co-view / co-purchase pairs: JSONL or CSV with two id columns and an optional ``weight``.

    Accepted id columns: ``a``/``b``, ``id_a``/``id_b``, ``source``/``target``,
    ``product_id``/``other_id``.
    """
    import csv
    import json

    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        with open(path, encoding="utf-8") as fp:
            rows = [json.loads(line) for line in fp if line.strip()]
    else:
        with open(path, encoding="utf-8", newline="") as fp:
            rows = list(csv.DictReader(fp))
    names = [("a", "b"), ("id_a", "id_b"), ("source", "target"), ("product_id", "other_id")]
    out: list[tuple[str, str, float]] = []
    for n, row in enumerate(rows, 1):
        pair = next(((row[x], row[y]) for x, y in names if x in row and y in row), None)
        if pair is None:
            raise ValueError(f"{path}: row {n} has none of the id column pairs {names}")
        w = float(row.get("weight", 1.0) or 1.0)
        out.append((str(pair[0]), str(pair[1]), w))
    return out


def pair_relevance(ps: ProductSet, pairs: Sequence[tuple[str, str, float]]) -> np.ndarray:
    """Symmetric (n, n) relevance from product pairs inside the set (max weight wins)."""
    at = {pid: i for i, pid in enumerate(ps.ids)}
    rel = np.zeros((len(ps), len(ps)))
    for a, b, w in pairs:
        if a in at and b in at and a != b:
            i, j = at[a], at[b]
            rel[i, j] = rel[j, i] = max(rel[i, j], w)
    return rel


def recommendation(x: np.ndarray, ps: ProductSet, *, k: int = 10, pairs: Sequence[tuple[str, str, float]] | None = None,
                   ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """Top-k similar products per product: relevance from categories/groups and, if given, pairs.

    Also reports catalog coverage@k (share of products recommended at least once) and
    leaf diversity@k (distinct leaf categories per list / k) — a system that always
    returns the same popular items scores well on relevance and poorly on both.
    """
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    kk = min(k, max(len(ps) - 1, 1))
    top = rank_from_scores(s, kk)
    paths = np.asarray(ps.paths, dtype=object)
    out: dict[str, Any] = {
        "k": kk,
        "category": _metrics(x @ x.T, category_relevance(ps, ps), ks, exclude_self=True),
        "group": _metrics(x @ x.T, exact_relevance(ps, ps), ks, exclude_self=True),
        f"coverage@{kk}": float(len(np.unique(top)) / max(len(ps), 1)),
        f"leaf_diversity@{kk}": float(np.mean([len(set(paths[row])) / kk for row in top])) if len(top) else float("nan"),
    }
    if pairs is None:
        out["pairs"] = {"status": "skipped", "reason": "no co-view/co-purchase pairs file given (--pairs)"}
    else:
        rel = pair_relevance(ps, pairs)
        n_with = int((rel.sum(axis=1) > 0).sum())
        out["pairs"] = _metrics(x @ x.T, rel, ks, exclude_self=True) if n_with else {
            "status": "skipped", "reason": "no pair has both products in the evaluated split"}
        out["pairs_in_split"] = int((rel > 0).sum() // 2)
    return out


__all__ = ["category_classes", "category_query", "category_query_relevance", "category_relevance", "cross_modal", "exact_relevance",
           "graded_relevance", "pair_relevance", "read_pairs", "recall_curve", "recommendation", "similar_items"]
