"""Retrieval, classification and clustering metrics in pure, vectorised numpy.

Nothing here imports scikit-learn: evaluation must run in the slim install, and
the metrics are small enough to own. The test-suite checks every function
against scikit-learn (where it has an equivalent) and against slow loops.

Conventions
-----------
Ranking metrics work on ``rel_ranked``: a ``(q, L)`` array holding, for each
query, the relevance of the gallery items in ranked order (best first), as made
by :func:`rank_from_scores` + :func:`gather_relevance`. Relevance is graded
(``>= 0``); an item is *relevant* when its relevance is ``> 0``. Because the
ranked list may be truncated (``L < n``), functions that need the total number
of relevant items per query take ``n_relevant`` (shape ``(q,)``); when it is
``None`` it is counted from ``rel_ranked`` itself, which is only right for
untruncated lists.

* **Ties in scores** are broken deterministically: equal scores rank by lower
  gallery (column) index first (a stable sort on ``-score``). NaN scores rank
  last. Tie-averaging metrics (scikit-learn's ``ndcg_score``) can therefore
  differ from ours on tied scores; ours is what a real top-k system returns.
* **Queries with no relevant item** have undefined recall/AP/NDCG. Per-query
  functions return ``NaN`` for them, and every average (``mrr``,
  ``mean_average_precision``, :func:`retrieval_metrics`) *excludes* them by
  default (``skip_empty=True``), reporting how many were skipped as
  ``n_queries_skipped``. With ``skip_empty=False`` they count as 0.
* ``precision@k`` divides by ``k`` even when fewer than ``k`` items exist
  (the fixed-cutoff, trec_eval convention), so it is comparable across galleries.
* ``k`` larger than the list length simply uses the whole list.

Classification metrics follow scikit-learn's ``zero_division=0`` semantics;
binary-score metrics take ``y_true`` with positives as ``y_true > 0`` (so
``{0, 1}``, ``{-1, 1}`` and booleans all work); clustering metrics are computed
from a sparse contingency table, so they scale with the number of non-empty
cells rather than ``n_classes * n_clusters``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "accuracy",
    "ari",
    "average_precision",
    "average_precision_score",
    "best_f1_threshold",
    "binary_f1_at",
    "bootstrap_ci",
    "confusion_matrix",
    "f1_scores",
    "gather_relevance",
    "hits_at_k",
    "homogeneity_completeness_v_measure",
    "mean_average_precision",
    "mean_over_queries",
    "mrr",
    "ndcg_at_k",
    "nmi",
    "precision_at_k",
    "precision_at_recall",
    "precision_recall_curve",
    "rank_from_scores",
    "recall_at_k",
    "recall_at_precision",
    "reciprocal_rank",
    "retrieval_metrics",
    "roc_auc",
    "v_measure",
    "wilson_interval",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Gain = Literal["linear", "exponential"]

# Rows of the (q, n) score matrix ranked per chunk in retrieval_metrics, so the
# int64 argsort of a large query set never needs more than ~128 MiB at once.
_CHUNK_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------- ranking


def rank_from_scores(scores: ArrayLike, k: int | None = None) -> IntArray:
    """Gallery indices sorted best-first per query, shape ``(q, min(k, n))``.

    Ties go to the lower column index (stable sort on ``-score``) so results are
    reproducible and match what a top-k index returns; NaN scores rank last.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (queries, gallery), got shape {s.shape}")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order = np.argsort(-s, axis=1, kind="stable").astype(np.int64, copy=False)
    return order if k is None else order[:, :k]


def gather_relevance(relevance: ArrayLike, ranked: ArrayLike) -> FloatArray:
    """Relevance in ranked order: ``out[i, j] = relevance[i, ranked[i, j]]``."""
    rel = _as_relevance(relevance)
    idx = np.asarray(ranked, dtype=np.int64)
    if idx.ndim != 2 or idx.shape[0] != rel.shape[0]:
        raise ValueError(f"ranked must be (q, L) with q={rel.shape[0]}, got shape {idx.shape}")
    return np.take_along_axis(rel, idx, axis=1)


def _as_relevance(relevance: ArrayLike) -> FloatArray:
    rel = np.asarray(relevance, dtype=np.float64)
    if rel.ndim != 2:
        raise ValueError(f"relevance must be 2-D (queries, items), got shape {rel.shape}")
    if rel.size and (np.isnan(rel).any() or rel.min() < 0):
        raise ValueError("relevance must be finite and >= 0")
    return rel


def _n_relevant(rel: FloatArray, n_relevant: ArrayLike | None) -> FloatArray:
    if n_relevant is None:
        return (rel > 0).sum(axis=1).astype(np.float64)
    n_rel = np.asarray(n_relevant, dtype=np.float64).reshape(-1)
    if n_rel.shape[0] != rel.shape[0]:
        raise ValueError(f"n_relevant must have {rel.shape[0]} entries, got {n_rel.shape[0]}")
    return n_rel


def _cut(rel: FloatArray, k: int | None) -> FloatArray:
    if k is None:
        return rel
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return rel[:, :k]


def _nan_where_empty(values: FloatArray, n_rel: FloatArray) -> FloatArray:
    return np.where(n_rel > 0, values, np.nan)


def hits_at_k(rel_ranked: ArrayLike, k: int, n_relevant: ArrayLike | None = None) -> FloatArray:
    """Per query: 1.0 if any relevant item is in the top ``k`` (hit rate), else 0.0."""
    rel = _as_relevance(rel_ranked)
    n_rel = _n_relevant(rel, n_relevant)
    hit = (_cut(rel, k) > 0).any(axis=1).astype(np.float64)
    return _nan_where_empty(hit, n_rel)


def recall_at_k(rel_ranked: ArrayLike, k: int, n_relevant: ArrayLike | None = None) -> FloatArray:
    """Per query: fraction of all relevant items found in the top ``k``."""
    rel = _as_relevance(rel_ranked)
    n_rel = _n_relevant(rel, n_relevant)
    found = (_cut(rel, k) > 0).sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _nan_where_empty(found / n_rel, n_rel)


def precision_at_k(rel_ranked: ArrayLike, k: int, n_relevant: ArrayLike | None = None) -> FloatArray:
    """Per query: relevant items in the top ``k`` divided by ``k`` (even if fewer than ``k`` exist)."""
    rel = _as_relevance(rel_ranked)
    n_rel = _n_relevant(rel, n_relevant)
    found = (_cut(rel, k) > 0).sum(axis=1).astype(np.float64)
    return _nan_where_empty(found / float(k), n_rel)


def reciprocal_rank(
    rel_ranked: ArrayLike, k: int | None = None, n_relevant: ArrayLike | None = None
) -> FloatArray:
    """Per query: ``1 / rank`` of the first relevant item within the top ``k`` (0 if none there)."""
    rel = _as_relevance(rel_ranked)
    n_rel = _n_relevant(rel, n_relevant)
    is_rel = _cut(rel, k) > 0
    first = np.argmax(is_rel, axis=1)  # 0 when no relevant item: masked below
    rr = np.where(is_rel.any(axis=1), 1.0 / (first + 1.0), 0.0)
    return _nan_where_empty(rr, n_rel)


def mrr(
    rel_ranked: ArrayLike,
    k: int | None = None,
    n_relevant: ArrayLike | None = None,
    skip_empty: bool = True,
) -> float:
    """Mean reciprocal rank over queries (queries without relevant items skipped by default)."""
    return mean_over_queries(reciprocal_rank(rel_ranked, k, n_relevant), skip_empty)


def average_precision(
    rel_ranked: ArrayLike, k: int | None = None, n_relevant: ArrayLike | None = None
) -> FloatArray:
    """Per query AP on binary relevance (``> 0``), normalised by *all* relevant items.

    ``AP = sum_{i <= k, item i relevant} precision@i / n_relevant``: dividing by the
    total (not by those retrieved) penalises relevant items missing from the cut.
    """
    rel = _as_relevance(rel_ranked)
    n_rel = _n_relevant(rel, n_relevant)
    is_rel = (_cut(rel, k) > 0).astype(np.float64)
    ranks = np.arange(1, is_rel.shape[1] + 1, dtype=np.float64)
    prec_at_hits = np.cumsum(is_rel, axis=1) / ranks * is_rel
    with np.errstate(divide="ignore", invalid="ignore"):
        return _nan_where_empty(prec_at_hits.sum(axis=1) / n_rel, n_rel)


def mean_average_precision(
    rel_ranked: ArrayLike,
    k: int | None = None,
    n_relevant: ArrayLike | None = None,
    skip_empty: bool = True,
) -> float:
    """MAP over queries (queries without relevant items skipped by default)."""
    return mean_over_queries(average_precision(rel_ranked, k, n_relevant), skip_empty)


def _gains(rel: FloatArray, gain: Gain) -> FloatArray:
    if gain == "linear":
        return rel
    if gain == "exponential":
        return np.exp2(rel) - 1.0
    raise ValueError(f"gain must be 'linear' or 'exponential', got {gain!r}")


def _dcg(gains: FloatArray) -> FloatArray:
    discounts = 1.0 / np.log2(np.arange(2, gains.shape[1] + 2, dtype=np.float64))
    return gains @ discounts


def ndcg_at_k(
    rel_ranked: ArrayLike,
    k: int | None = None,
    relevance: ArrayLike | None = None,
    gain: Gain = "linear",
) -> FloatArray:
    """Per query graded NDCG@k with discount ``1 / log2(rank + 1)``.

    The ideal DCG is built from *all* relevance values of the query (``relevance``,
    shape ``(q, n)``; defaults to ``rel_ranked``, right only for untruncated lists),
    so relevant items the ranking missed still lower the score. Linear gain
    (``rel``) matches scikit-learn's ``ndcg_score``; ``"exponential"`` uses
    ``2**rel - 1``. Queries whose ideal DCG is 0 (nothing relevant) give NaN.
    """
    rel = _as_relevance(rel_ranked)
    full = rel if relevance is None else _as_relevance(relevance)
    if full.shape[0] != rel.shape[0]:
        raise ValueError(f"relevance must have {rel.shape[0]} rows, got {full.shape[0]}")
    dcg = _dcg(_gains(_cut(rel, k), gain))
    ideal_rel = -np.sort(-full, axis=1)
    ideal = _dcg(_gains(_cut(ideal_rel, k), gain))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ideal > 0, dcg / ideal, np.nan)


def mean_over_queries(values: ArrayLike, skip_empty: bool = True) -> float:
    """Average per-query values; NaN entries (queries without relevant items) are
    skipped, or counted as 0 when ``skip_empty=False``. NaN if nothing is left."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not skip_empty:
        v = np.nan_to_num(v, nan=0.0)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def _drop_self(ranked: IntArray, first_query: int = 0) -> IntArray:
    """Remove each query's own index from its ranked list (or the last entry if absent).

    Row ``r`` of ``ranked`` belongs to query ``first_query + r`` (for chunked ranking).
    """
    q, length = ranked.shape
    if length == 0:
        return ranked
    is_self = ranked == np.arange(first_query, first_query + q, dtype=np.int64)[:, None]
    drop = is_self.copy()
    drop[~is_self.any(axis=1), -1] = True
    drop &= np.cumsum(drop, axis=1) == 1  # at most one per row, should ranked repeat an index
    return ranked[~drop].reshape(q, length - 1)


def retrieval_metrics(
    scores: ArrayLike | None,
    relevance: ArrayLike,
    ks: Sequence[int] = (1, 5, 10),
    exclude_self: bool = False,
    *,
    ranked: ArrayLike | None = None,
    gain: Gain = "linear",
    skip_empty: bool = True,
) -> dict[str, float]:
    """All ranking metrics, averaged over queries, in one call.

    Keys: ``hits@k``, ``recall@k``, ``precision@k``, ``ndcg@k`` for each ``k`` in
    ``ks``, plus ``mrr`` and ``map`` over the whole ranked list, ``n_queries``
    (queries that entered the averages) and ``n_queries_skipped`` (queries without
    any relevant item, excluded unless ``skip_empty=False``).

    Pass either ``scores`` (q, n) or a precomputed ``ranked`` (q, L) index array
    (e.g. from a top-k index; then MRR/MAP are cut at ``L``). ``exclude_self``
    drops item ``i`` from query ``i``'s gallery (query set == gallery set), both
    from the ranking and from the relevant set.
    """
    rel_full = _as_relevance(relevance)
    q, n = rel_full.shape
    if exclude_self:
        if q != n:
            raise ValueError(f"exclude_self needs a square (q == n) matrix, got {rel_full.shape}")
        rel_full = rel_full.copy()
        np.fill_diagonal(rel_full, 0.0)
    if (scores is None) == (ranked is None):
        raise ValueError("pass exactly one of scores or ranked")
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {ks}")

    if ranked is not None:
        order = np.asarray(ranked, dtype=np.int64)
        if order.ndim != 2 or order.shape[0] != q:
            raise ValueError(f"ranked must be (q, L) with q={q}, got shape {order.shape}")
        if exclude_self:
            order = _drop_self(order)
        rel_ranked = gather_relevance(rel_full, order)
    else:
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != rel_full.shape:
            raise ValueError(f"scores shape {s.shape} != relevance shape {rel_full.shape}")
        rows = max(1, _CHUNK_ELEMENTS // max(n, 1))
        chunks = []
        for start in range(0, q, rows):
            stop = min(q, start + rows)
            order = rank_from_scores(s[start:stop])
            if exclude_self:
                order = _drop_self(order, start)
            chunks.append(gather_relevance(rel_full[start:stop], order))
        rel_ranked = np.concatenate(chunks, axis=0) if chunks else np.zeros((0, n))

    n_rel = (rel_full > 0).sum(axis=1).astype(np.float64)
    out: dict[str, float] = {}
    for k in ks:
        out[f"hits@{k}"] = mean_over_queries(hits_at_k(rel_ranked, k, n_rel), skip_empty)
        out[f"recall@{k}"] = mean_over_queries(recall_at_k(rel_ranked, k, n_rel), skip_empty)
        out[f"precision@{k}"] = mean_over_queries(precision_at_k(rel_ranked, k, n_rel), skip_empty)
        out[f"ndcg@{k}"] = mean_over_queries(ndcg_at_k(rel_ranked, k, rel_full, gain), skip_empty)
    out["mrr"] = mrr(rel_ranked, None, n_rel, skip_empty)
    out["map"] = mean_average_precision(rel_ranked, None, n_rel, skip_empty)
    skipped = int((n_rel == 0).sum()) if skip_empty else 0
    out["n_queries"] = float(q - skipped)
    out["n_queries_skipped"] = float(skipped)
    return out


# -------------------------------------------------------------------- classification


def _labels_1d(name: str, values: ArrayLike) -> NDArray[Any]:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[NDArray[Any], NDArray[Any]]:
    t, p = _labels_1d("y_true", y_true), _labels_1d("y_pred", y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    return t, p


def _label_index(values: NDArray[Any], labels: NDArray[Any]) -> IntArray:
    """Position of each value in ``labels`` (-1 when absent), by binary search."""
    if labels.size == 0 or values.size == 0:
        return np.full(values.shape, -1, dtype=np.int64)
    by_value = np.argsort(labels, kind="stable")
    sorted_labels = labels[by_value]
    pos = np.clip(np.searchsorted(sorted_labels, values), 0, labels.size - 1)
    return np.where(sorted_labels[pos] == values, by_value[pos], -1).astype(np.int64)


def _resolve_labels(t: NDArray[Any], p: NDArray[Any], labels: ArrayLike | None) -> NDArray[Any]:
    if labels is None:
        return np.unique(np.concatenate([t, p]))
    return _labels_1d("labels", labels)


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of exact matches (NaN for empty input, where it is undefined)."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p)) if t.size else float("nan")


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, labels: ArrayLike | None = None) -> IntArray:
    """Counts ``C[i, j]`` of samples with true ``labels[i]`` predicted as ``labels[j]``.

    ``labels`` defaults to the sorted union of both inputs; samples whose true or
    predicted label is not in ``labels`` are left out (as scikit-learn does).
    """
    t, p = _pair(y_true, y_pred)
    lab = _resolve_labels(t, p, labels)
    it, ip = _label_index(t, lab), _label_index(p, lab)
    keep = (it >= 0) & (ip >= 0)
    n_lab = lab.size
    flat = np.bincount(it[keep] * n_lab + ip[keep], minlength=n_lab * n_lab)
    return flat.reshape(n_lab, n_lab).astype(np.int64)


def f1_scores(y_true: ArrayLike, y_pred: ArrayLike, labels: ArrayLike | None = None) -> dict[str, Any]:
    """Macro, micro and support-weighted F1 plus per-class precision/recall/F1/support.

    Classes that appear in neither ``y_true`` nor ``y_pred`` carry no information
    and are left out of every average (even if named in ``labels``); otherwise
    0/0 counts as 0 (scikit-learn's ``zero_division=0``). Micro-F1 over all
    classes equals accuracy. ``per_class`` maps label -> {"precision", "recall",
    "f1", "support"}.
    """
    t, p = _pair(y_true, y_pred)
    lab = _resolve_labels(t, p, labels)
    it, ip = _label_index(t, lab), _label_index(p, lab)
    n_lab = lab.size
    tp = np.bincount(it[(it == ip) & (it >= 0)], minlength=n_lab).astype(np.float64)
    support = np.bincount(it[it >= 0], minlength=n_lab).astype(np.float64)
    n_pred = np.bincount(ip[ip >= 0], minlength=n_lab).astype(np.float64)
    seen = (support + n_pred) > 0
    tp, support, n_pred, lab = tp[seen], support[seen], n_pred[seen], lab[seen]

    precision = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = 2.0 * tp / (support + n_pred)  # > 0 denominators: unseen classes were dropped

    if lab.size == 0:
        macro = micro = weighted = float("nan")
    else:
        macro = float(f1.mean())
        micro = float(2.0 * tp.sum() / (support.sum() + n_pred.sum()))
        weighted = float(f1 @ support / support.sum()) if support.sum() > 0 else 0.0
    per_class = {
        label: {"precision": float(pr), "recall": float(rc), "f1": float(f), "support": int(sp)}
        for label, pr, rc, f, sp in zip(lab.tolist(), precision, recall, f1, support, strict=True)
    }
    return {"macro_f1": macro, "micro_f1": micro, "weighted_f1": weighted, "per_class": per_class}


# ------------------------------------------------------------------- binary scores


def _binary(y_true: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.bool_], FloatArray]:
    y = _labels_1d("y_true", y_true)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores must be 1-D and match y_true {y.shape}, got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y > 0, s


def _binary_curve(y: NDArray[np.bool_], s: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Distinct thresholds (descending) with true/false positive counts for ``score >= t``."""
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last_of_group = (
        np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1] if s.size else np.array([], int)
    )
    tps = np.cumsum(y_sorted, dtype=np.float64)[last_of_group]
    fps = (last_of_group + 1.0) - tps
    return s_sorted[last_of_group], tps, fps


def precision_recall_curve(y_true: ArrayLike, scores: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(precision, recall, thresholds)`` laid out as scikit-learn's: thresholds are
    the distinct scores ascending (predict positive when ``score >= t``) and a final
    ``(precision=1, recall=0)`` point is appended. Recall is 1 throughout when
    there are no positives, as in scikit-learn."""
    y, s = _binary(y_true, scores)
    thr, tps, fps = _binary_curve(y, s)
    precision = tps / (tps + fps)  # every threshold admits at least one sample
    recall = tps / tps[-1] if tps.size and tps[-1] > 0 else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1]


def average_precision_score(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Step-wise area under the PR curve, ``sum_t (R_t - R_{t-1}) P_t`` over distinct
    thresholds (no interpolation; tied scores enter together). NaN without positives."""
    y, s = _binary(y_true, scores)
    thr, tps, fps = _binary_curve(y, s)
    if not tps.size or tps[-1] == 0:
        return float("nan")
    recall = tps / tps[-1]
    return float(np.diff(recall, prepend=0.0) @ (tps / (tps + fps)))


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC as the Mann-Whitney statistic: P(score_pos > score_neg), ties counted
    0.5 (via average ranks). NaN when either class is absent."""
    y, s = _binary(y_true, scores)
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts, dtype=np.float64)
    mid_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    rank_sum_pos = mid_rank[inverse.reshape(-1)][y].sum()
    return float((rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


_TOL = 1e-12  # so targets like 1/3 are met by a recall computed as 1/3


def precision_at_recall(y_true: ArrayLike, scores: ArrayLike, recall: float) -> float:
    """Best precision over thresholds whose recall is >= ``recall`` (NaN without positives).

    Only real thresholds count, not the curve's synthetic ``(1, 0)`` end point.
    """
    y, s = _binary(y_true, scores)
    _, tps, fps = _binary_curve(y, s)
    if not tps.size or tps[-1] == 0:
        return float("nan")
    ok = tps / tps[-1] >= recall - _TOL
    return float((tps / (tps + fps))[ok].max()) if ok.any() else float("nan")


def recall_at_precision(y_true: ArrayLike, scores: ArrayLike, precision: float) -> float:
    """Best recall over thresholds whose precision is >= ``precision``; 0 if none
    reaches it (NaN without positives)."""
    y, s = _binary(y_true, scores)
    _, tps, fps = _binary_curve(y, s)
    if not tps.size or tps[-1] == 0:
        return float("nan")
    ok = tps / (tps + fps) >= precision - _TOL
    return float((tps / tps[-1])[ok].max()) if ok.any() else 0.0


def best_f1_threshold(y_true: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """``(threshold, f1)`` maximising F1 of ``score >= threshold``; among equal F1 the
    highest threshold wins. ``(nan, 0.0)`` without positives (every F1 is 0)."""
    y, s = _binary(y_true, scores)
    thr, tps, fps = _binary_curve(y, s)
    if not tps.size or tps[-1] == 0:
        return float("nan"), 0.0
    f1 = 2.0 * tps / (tps + fps + tps[-1])
    best = int(np.argmax(f1))
    return float(thr[best]), float(f1[best])


def binary_f1_at(y_true: ArrayLike, scores: ArrayLike, threshold: float) -> float:
    """F1 of predicting positive when ``score >= threshold`` (0 when it is 0/0)."""
    y, s = _binary(y_true, scores)
    pred = s >= threshold
    tp = float((pred & y).sum())
    denom = float(pred.sum() + y.sum())
    return 2.0 * tp / denom if denom > 0 else 0.0


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (95 % for the default z).

    Unlike a bootstrap it does not collapse to a point at 0 or n successes: 5 out of 5
    gives [0.57, 1], the honest width of five observations. ``(nan, nan)`` when n is 0.
    """
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_ci(
    y_true: ArrayLike,
    scores: ArrayLike,
    metrics: dict[str, Callable[[NDArray[np.bool_], FloatArray], float]],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each ``metric(y, s)``, sharing one set of resamples.

    Positives and negatives are resampled separately (each with replacement, at their own
    count), so every resample holds both classes and AUROC/AP stay defined; resamples
    where a metric is NaN are dropped for that metric. Items are treated as independent:
    with pairs that share products the interval is, if anything, too narrow. Seeded, so a
    report's intervals are reproducible. ``(nan, nan)`` without both classes.
    """
    y, s = _binary(y_true, scores)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if not pos.size or not neg.size or n_boot < 1:
        return {name: (float("nan"), float("nan")) for name in metrics}
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {name: [] for name in metrics}
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        yb, sb = y[idx], s[idx]
        for name, fn in metrics.items():
            values[name].append(fn(yb, sb))
    alpha = (1.0 - level) / 2.0
    out = {}
    for name, vals in values.items():
        v = np.asarray(vals, dtype=np.float64)
        v = v[np.isfinite(v)]
        out[name] = ((float(np.quantile(v, alpha)), float(np.quantile(v, 1.0 - alpha))) if v.size
                     else (float("nan"), float("nan")))
    return out


# ---------------------------------------------------------------------- clustering


def _contingency(
    labels_true: ArrayLike, labels_pred: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, int]:
    """Sparse contingency table, so memory follows the non-empty cells rather than
    ``n_classes * n_clusters``: ``(cells, cell_row_total, cell_col_total, row_totals,
    col_totals, n)`` where ``cells`` are the non-zero counts."""
    t, p = _pair(labels_true, labels_pred)
    _, it = np.unique(t, return_inverse=True)
    _, ip = np.unique(p, return_inverse=True)
    it, ip = it.reshape(-1).astype(np.int64), ip.reshape(-1).astype(np.int64)
    rows = np.bincount(it).astype(np.float64)
    cols = np.bincount(ip).astype(np.float64)
    n_cols = max(int(cols.size), 1)
    codes, cells = np.unique(it * n_cols + ip, return_counts=True)
    return cells.astype(np.float64), rows[codes // n_cols], cols[codes % n_cols], rows, cols, int(t.size)


def _entropy(counts: FloatArray, n: int) -> float:
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def _mutual_info(cells: FloatArray, cell_rows: FloatArray, cell_cols: FloatArray, n: int) -> float:
    # n_ij * n / (a_i * b_j) is exactly 1 for independent-looking cells (exact integer
    # products), so a trivial partition gives MI == 0.0 exactly, not 1e-17.
    mi = float((cells / n * np.log(cells * n / (cell_rows * cell_cols))).sum())
    return max(mi, 0.0)


def nmi(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Normalised mutual information, ``MI / mean(H(true), H(pred))`` (arithmetic mean,
    scikit-learn's default). Two single-cluster labelings are a perfect match (1.0)."""
    cells, cr, cc, rows, cols, n = _contingency(labels_true, labels_pred)
    if n == 0:
        return 1.0
    h_true, h_pred = _entropy(rows, n), _entropy(cols, n)
    if h_true == 0.0 and h_pred == 0.0:
        return 1.0
    mi = _mutual_info(cells, cr, cc, n)
    return 0.0 if mi == 0.0 else mi / ((h_true + h_pred) / 2.0)


def ari(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Adjusted Rand index (pair counting, chance-corrected; 1 = identical partitions).

    Evaluated in exact integer arithmetic: ``2 (T*S - A*B) / (T*(A+B) - 2*A*B)`` with
    ``S, A, B, T`` the same-cluster pair counts of cells, rows, columns and all samples.
    When the denominator is 0 both partitions are trivial and identical, so 1.0.
    """
    cells, _, _, rows, cols, n = _contingency(labels_true, labels_pred)

    def pairs(counts: FloatArray) -> int:
        c = counts.astype(np.int64)
        return int((c * (c - 1) // 2).sum())

    s, a, b, t = pairs(cells), pairs(rows), pairs(cols), n * (n - 1) // 2
    den = t * (a + b) - 2 * a * b
    return 1.0 if den == 0 else 2 * (t * s - a * b) / den


def homogeneity_completeness_v_measure(
    labels_true: ArrayLike, labels_pred: ArrayLike, beta: float = 1.0
) -> tuple[float, float, float]:
    """``(homogeneity, completeness, v_measure)``: each cluster holds one class / each
    class sits in one cluster / their weighted harmonic mean. A labeling with zero
    entropy is trivially homogeneous (or complete): 1.0."""
    cells, cr, cc, rows, cols, n = _contingency(labels_true, labels_pred)
    if n == 0:
        return 1.0, 1.0, 1.0
    h_true, h_pred = _entropy(rows, n), _entropy(cols, n)
    mi = _mutual_info(cells, cr, cc, n)
    homogeneity = mi / h_true if h_true > 0 else 1.0
    completeness = mi / h_pred if h_pred > 0 else 1.0
    denom = beta * homogeneity + completeness
    v = (1.0 + beta) * homogeneity * completeness / denom if denom > 0 else 0.0
    return homogeneity, completeness, v


def v_measure(labels_true: ArrayLike, labels_pred: ArrayLike, beta: float = 1.0) -> float:
    """V-measure (harmonic mean of homogeneity and completeness; equals NMI for beta=1)."""
    return homogeneity_completeness_v_measure(labels_true, labels_pred, beta)[2]
