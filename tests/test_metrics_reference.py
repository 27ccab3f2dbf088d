"""Metrics against independent references on seeded random inputs.

References: scikit-learn where it has the metric, and deliberately slow
pure-Python loops (written here from the textbook definitions) for the
ranking metrics it lacks. scikit-learn's ``ndcg_score`` averages tied scores,
so it is compared on tie-free scores only; tie handling is checked by hand in
test_metrics.py and against the loops (which use the same documented rule).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from shopclip.eval import metrics as M

sk = pytest.importorskip("sklearn.metrics")

SEEDS = [0, 1, 2, 3, 4]


def _random_retrieval(seed: int, ties: bool, q: int = 24, n: int = 30):
    rng = np.random.default_rng(seed)
    scores = rng.random((q, n))
    if ties:
        scores = np.round(scores, 1)  # ~10 distinct values per row: many ties
    relevance = rng.integers(0, 4, size=(q, n)) * (rng.random((q, n)) < 0.2)
    relevance[:3] = 0  # some queries without any relevant item
    relevance[3, :] = 0
    relevance[3, n - 1] = 2  # a single relevant item, last column
    return scores, relevance


# --------------------------------------------------------------- slow loop reference


def _slow_rank(row: list[float]) -> list[int]:
    return sorted(range(len(row)), key=lambda j: (-row[j], j))


def _slow_query(ranked_rel: list[float], k: int | None) -> dict[str, float]:
    """Textbook per-query metrics; NaN for a query with nothing relevant."""
    total = sum(1 for r in ranked_rel if r > 0)
    if total == 0:
        return dict.fromkeys(("hits", "recall", "precision", "rr", "ap"), math.nan)
    cut = ranked_rel if k is None else ranked_rel[:k]
    found = 0
    first = None
    ap = 0.0
    for i, r in enumerate(cut, start=1):
        if r > 0:
            found += 1
            ap += found / i
            if first is None:
                first = i
    return {
        "hits": 1.0 if found else 0.0,
        "recall": found / total,
        "precision": found / (k if k is not None else len(ranked_rel)),
        "rr": 1.0 / first if first else 0.0,
        "ap": ap / total,
    }


def _slow_all(scores: np.ndarray, relevance: np.ndarray, k: int | None) -> dict[str, np.ndarray]:
    rows = []
    for s_row, r_row in zip(scores.tolist(), relevance.tolist(), strict=True):
        order = _slow_rank(s_row)
        rows.append(_slow_query([r_row[j] for j in order], k))
    return {key: np.array([r[key] for r in rows]) for key in rows[0]}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 3, 10, 30, 45])
def test_ranking_against_slow_loops(seed, ties, k):
    scores, relevance = _random_retrieval(seed, ties)
    rel = M.gather_relevance(relevance, M.rank_from_scores(scores))
    ref = _slow_all(scores, relevance, k)
    np.testing.assert_allclose(M.hits_at_k(rel, k), ref["hits"])
    np.testing.assert_allclose(M.recall_at_k(rel, k), ref["recall"])
    np.testing.assert_allclose(M.precision_at_k(rel, k), ref["precision"])
    np.testing.assert_allclose(M.reciprocal_rank(rel, k), ref["rr"])
    np.testing.assert_allclose(M.average_precision(rel, k), ref["ap"])
    assert M.mean_average_precision(rel, k) == pytest.approx(np.nanmean(ref["ap"]))
    assert M.mrr(rel, k) == pytest.approx(np.nanmean(ref["rr"]))


@pytest.mark.parametrize("seed", SEEDS)
def test_truncated_ranking_against_slow_loops(seed):
    # a top-k index returns only k columns; n_relevant restores the denominators
    scores, relevance = _random_retrieval(seed, ties=True)
    k = 7
    rel_top = M.gather_relevance(relevance, M.rank_from_scores(scores, k=k))
    n_rel = (relevance > 0).sum(axis=1)
    ref = _slow_all(scores, relevance, k)
    np.testing.assert_allclose(M.recall_at_k(rel_top, k, n_rel), ref["recall"])
    np.testing.assert_allclose(M.hits_at_k(rel_top, k, n_rel), ref["hits"])
    np.testing.assert_allclose(M.average_precision(rel_top, None, n_rel), ref["ap"])
    np.testing.assert_allclose(M.reciprocal_rank(rel_top, None, n_rel), ref["rr"])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_retrieval_metrics_against_slow_loops(seed, ties, monkeypatch):
    scores, relevance = _random_retrieval(seed, ties, q=30, n=30)
    ks = (1, 5, 10)
    got = M.retrieval_metrics(scores, relevance, ks=ks)
    for k in ks:
        ref = _slow_all(scores, relevance, k)
        for ours, theirs in [("hits", "hits"), ("recall", "recall"), ("precision", "precision")]:
            assert got[f"{ours}@{k}"] == pytest.approx(np.nanmean(ref[theirs])), (ours, k)
    full = _slow_all(scores, relevance, None)
    assert got["mrr"] == pytest.approx(np.nanmean(full["rr"]))
    assert got["map"] == pytest.approx(np.nanmean(full["ap"]))
    skipped = int(((relevance > 0).sum(axis=1) == 0).sum())
    assert (got["n_queries"], got["n_queries_skipped"]) == (30 - skipped, skipped)

    # exclude_self == dropping the diagonal by hand
    off = ~np.eye(30, dtype=bool)
    got_ex = M.retrieval_metrics(scores, relevance, ks=ks, exclude_self=True)
    ref_ex = M.retrieval_metrics(scores[off].reshape(30, 29), relevance[off].reshape(30, 29), ks=ks)
    assert got_ex == pytest.approx(ref_ex, nan_ok=True)

    # chunked ranking (tiny chunks) changes nothing
    monkeypatch.setattr(M, "_CHUNK_ELEMENTS", 70)  # 2 rows per chunk
    assert M.retrieval_metrics(scores, relevance, ks=ks) == pytest.approx(got, nan_ok=True)
    assert M.retrieval_metrics(scores, relevance, ks=ks, exclude_self=True) == pytest.approx(
        got_ex, nan_ok=True
    )


# ------------------------------------------------------------------- NDCG vs sklearn


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 5, 10, None])
def test_ndcg_against_sklearn(seed, k):
    scores, relevance = _random_retrieval(seed, ties=False)
    assert all(len(set(row)) == len(row) for row in scores.tolist())  # tie-free
    has_rel = (relevance > 0).any(axis=1)
    rel = M.gather_relevance(relevance, M.rank_from_scores(scores))
    ours = M.ndcg_at_k(rel, k)
    assert np.isnan(ours[~has_rel]).all()
    theirs = [sk.ndcg_score(relevance[i : i + 1], scores[i : i + 1], k=k) for i in np.flatnonzero(has_rel)]
    np.testing.assert_allclose(ours[has_rel], theirs, rtol=1e-12)
    mean = sk.ndcg_score(relevance[has_rel], scores[has_rel], k=k)
    assert M.mean_over_queries(ours) == pytest.approx(mean)
    # exponential gain == linear NDCG on gains 2^rel - 1 (same ideal order)
    ours_exp = M.ndcg_at_k(rel, k, gain="exponential")[has_rel]
    mean_exp = sk.ndcg_score(2.0 ** relevance[has_rel] - 1, scores[has_rel], k=k)
    assert ours_exp.mean() == pytest.approx(mean_exp)
    # a truncated list with the full relevance as ideal gives the same numbers
    if k is not None:
        rel_top = M.gather_relevance(relevance, M.rank_from_scores(scores, k=k))
        np.testing.assert_allclose(M.ndcg_at_k(rel_top, k, relevance=relevance), ours, rtol=1e-12)


def test_sklearn_ndcg_averages_ties_unlike_ours():
    # documents the one intended difference (hand values in test_metrics.py)
    assert sk.ndcg_score([[0, 1, 0]], [[0.5, 0.5, 0.1]]) == pytest.approx(0.5 * (1 + 1 / math.log2(3)))
    rel = M.gather_relevance([[0, 1, 0]], M.rank_from_scores([[0.5, 0.5, 0.1]]))
    assert M.ndcg_at_k(rel)[0] == pytest.approx(1 / math.log2(3))


@pytest.mark.parametrize("seed", SEEDS)
def test_query_average_precision_against_sklearn(seed):
    scores, relevance = _random_retrieval(seed, ties=False)
    rel = M.gather_relevance(relevance, M.rank_from_scores(scores))
    ours = M.average_precision(rel)
    for i in np.flatnonzero((relevance > 0).any(axis=1)):
        assert ours[i] == pytest.approx(sk.average_precision_score(relevance[i] > 0, scores[i]))


# ------------------------------------------------------------ binary scores vs sklearn


def _random_binary(seed: int, ties: bool, n: int = 200):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    s = rng.normal(size=n) + y  # informative but imperfect
    if ties:
        s = np.round(s, 1)
    return y, s


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_binary_scores_against_sklearn(seed, ties):
    y, s = _random_binary(seed, ties)
    assert M.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), rel=1e-12)
    assert M.average_precision_score(y, s) == pytest.approx(sk.average_precision_score(y, s), rel=1e-12)
    p, r, t = M.precision_recall_curve(y, s)
    sp, sr, st = sk.precision_recall_curve(y, s)
    np.testing.assert_allclose(p, sp)
    np.testing.assert_allclose(r, sr)
    np.testing.assert_allclose(t, st)

    # operating points by brute force over sklearn's curve (its last point is synthetic)
    sp, sr, st = sp[:-1], sr[:-1], st
    for target in (0.1, 0.5, 0.9, 1.0):
        assert M.precision_at_recall(y, s, target) == pytest.approx(sp[sr >= target].max())
        ok = sp >= target
        assert M.recall_at_precision(y, s, target) == pytest.approx(sr[ok].max() if ok.any() else 0.0)

    f1_each = np.array([sk.f1_score(y, s >= th, zero_division=0) for th in st])
    best_t, best_f1 = M.best_f1_threshold(y, s)
    assert best_f1 == pytest.approx(f1_each.max())
    assert best_t == st[np.flatnonzero(np.isclose(f1_each, f1_each.max()))].max()  # highest on ties
    for th in (st[0], np.median(s), st[-1], st[-1] + 1):
        assert M.binary_f1_at(y, s, th) == pytest.approx(sk.f1_score(y, s >= th, zero_division=0))


# ----------------------------------------------------------- classification vs sklearn


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_against_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 6, size=300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 7, size=300))  # 6 only predicted
    assert M.accuracy(y_true, y_pred) == pytest.approx(sk.accuracy_score(y_true, y_pred))
    r = M.f1_scores(y_true, y_pred)
    for avg in ("macro", "micro", "weighted"):
        assert r[f"{avg}_f1"] == pytest.approx(sk.f1_score(y_true, y_pred, average=avg, zero_division=0))
    labels = np.unique(np.concatenate([y_true, y_pred]))
    per = sk.f1_score(y_true, y_pred, average=None, labels=labels, zero_division=0)
    prec = sk.precision_score(y_true, y_pred, average=None, labels=labels, zero_division=0)
    rec = sk.recall_score(y_true, y_pred, average=None, labels=labels, zero_division=0)
    for lab, f, p_, r_ in zip(labels.tolist(), per, prec, rec, strict=True):
        assert r["per_class"][lab]["f1"] == pytest.approx(f)
        assert r["per_class"][lab]["precision"] == pytest.approx(p_)
        assert r["per_class"][lab]["recall"] == pytest.approx(r_)
    # a subset of present labels: same as sklearn's labels= restriction
    subset = [1, 3, 6]
    r = M.f1_scores(y_true, y_pred, labels=subset)
    for avg in ("macro", "micro", "weighted"):
        want = sk.f1_score(y_true, y_pred, labels=subset, average=avg, zero_division=0)
        assert r[f"{avg}_f1"] == pytest.approx(want)
    for labs in (None, [5, 0, 6, 2]):
        np.testing.assert_array_equal(
            M.confusion_matrix(y_true, y_pred, labs), sk.confusion_matrix(y_true, y_pred, labels=labs)
        )


def test_string_labels_against_sklearn():
    rng = np.random.default_rng(7)
    names = np.array(["shoe", "bag", "hat", "dress"])
    y_true, y_pred = names[rng.integers(0, 4, 100)], names[rng.integers(0, 4, 100)]
    assert M.f1_scores(y_true, y_pred)["macro_f1"] == pytest.approx(
        sk.f1_score(y_true, y_pred, average="macro")
    )
    np.testing.assert_array_equal(M.confusion_matrix(y_true, y_pred), sk.confusion_matrix(y_true, y_pred))


# --------------------------------------------------------------- clustering vs sklearn


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("n_true", "n_pred"), [(2, 2), (5, 8), (10, 3), (1, 4), (40, 40)])
def test_clustering_against_sklearn(seed, n_true, n_pred):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n_true, size=150)
    b = np.where(rng.random(150) < 0.5, a % n_pred, rng.integers(0, n_pred, size=150))
    assert M.nmi(a, b) == pytest.approx(sk.normalized_mutual_info_score(a, b), abs=1e-12)
    assert M.ari(a, b) == pytest.approx(sk.adjusted_rand_score(a, b), abs=1e-12)
    assert M.v_measure(a, b) == pytest.approx(sk.v_measure_score(a, b), abs=1e-12)
    h, c, v = M.homogeneity_completeness_v_measure(a, b)
    sh, sc, sv = sk.homogeneity_completeness_v_measure(a, b)
    assert (h, c, v) == pytest.approx((sh, sc, sv), abs=1e-12)


@pytest.mark.parametrize(
    ("a", "b"),
    [([0, 0, 0], [1, 1, 1]), ([0, 1, 2], [3, 4, 5]), ([0, 0, 1, 1], [0, 0, 0, 0]), ([0], [0])],
)
def test_clustering_edge_cases_against_sklearn(a, b):
    assert M.nmi(a, b) == pytest.approx(sk.normalized_mutual_info_score(a, b))
    assert M.ari(a, b) == pytest.approx(sk.adjusted_rand_score(a, b))
    assert M.v_measure(a, b) == pytest.approx(sk.v_measure_score(a, b))
