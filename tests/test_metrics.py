"""Metrics checked against values worked out by hand (arithmetic in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shopclip.eval import metrics as M

L3 = math.log2(3)  # discount denominator at rank 2
L5 = math.log2(5)  # ... at rank 4 (log2(4) = 2 is written out)

# --------------------------------------------------------------------------- ranking


def test_rank_from_scores_breaks_ties_by_lower_index():
    scores = [[0.5, 0.9, 0.5, 0.1]]
    # 0.9 (col 1) first; cols 0 and 2 tie at 0.5 -> lower index 0 before 2; then col 3
    assert M.rank_from_scores(scores).tolist() == [[1, 0, 2, 3]]
    assert M.rank_from_scores(scores, k=2).tolist() == [[1, 0]]
    # k larger than n returns the whole list
    assert M.rank_from_scores(scores, k=10).tolist() == [[1, 0, 2, 3]]


def test_rank_from_scores_nan_last_and_bad_input():
    assert M.rank_from_scores([[np.nan, 0.2, 0.3]]).tolist() == [[2, 1, 0]]
    with pytest.raises(ValueError):
        M.rank_from_scores([0.1, 0.2])
    with pytest.raises(ValueError):
        M.rank_from_scores([[0.1, 0.2]], k=0)


def test_gather_relevance():
    rel = [[0, 3, 1], [2, 0, 0]]
    ranked = [[1, 2, 0], [0, 2, 1]]
    # row 0: rel[0][1]=3, rel[0][2]=1, rel[0][0]=0 ; row 1: 2, 0, 0
    assert M.gather_relevance(rel, ranked).tolist() == [[3, 1, 0], [2, 0, 0]]


# Three queries, already in ranked order, n = 5:
#   q0: relevant at ranks 2 and 4 (n_rel = 2)
#   q1: relevant at rank 1       (n_rel = 1)
#   q2: nothing relevant         (n_rel = 0 -> NaN, skipped in means)
REL = np.array(
    [
        [0, 1, 0, 1, 0],
        [1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]
)


def _eq(a, b):
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=0, atol=1e-12)


def test_hits_recall_precision_by_hand():
    nan = np.nan
    _eq(M.hits_at_k(REL, 1), [0, 1, nan])  # q0's first hit is at rank 2
    _eq(M.hits_at_k(REL, 2), [1, 1, nan])
    _eq(M.recall_at_k(REL, 2), [1 / 2, 1 / 1, nan])  # q0: 1 of 2 found
    _eq(M.recall_at_k(REL, 4), [2 / 2, 1, nan])
    _eq(M.precision_at_k(REL, 2), [1 / 2, 1 / 2, nan])
    _eq(M.precision_at_k(REL, 4), [2 / 4, 1 / 4, nan])


def test_k_larger_than_list():
    nan = np.nan
    # k = 10 > n = 5: the whole list is used, precision still divides by k
    _eq(M.hits_at_k(REL, 10), [1, 1, nan])
    _eq(M.recall_at_k(REL, 10), [1, 1, nan])
    _eq(M.precision_at_k(REL, 10), [2 / 10, 1 / 10, nan])
    _eq(M.reciprocal_rank(REL, 10), [1 / 2, 1, nan])
    _eq(M.average_precision(REL, 10), M.average_precision(REL))


def test_mrr_by_hand():
    _eq(M.reciprocal_rank(REL), [1 / 2, 1 / 1, np.nan])
    # cut at k=1: q0's first relevant (rank 2) falls outside -> 0
    _eq(M.reciprocal_rank(REL, k=1), [0, 1, np.nan])
    assert M.mrr(REL) == pytest.approx((1 / 2 + 1) / 2)  # 0.75, q2 skipped
    assert M.mrr(REL, skip_empty=False) == pytest.approx((1 / 2 + 1 + 0) / 3)  # 0.5


def test_average_precision_by_hand():
    # q0: hits at rank 2 (P@2 = 1/2) and rank 4 (P@4 = 2/4) -> (0.5 + 0.5) / 2 = 0.5
    # q1: hit at rank 1 (P@1 = 1) -> 1 / 1 = 1
    _eq(M.average_precision(REL), [0.5, 1.0, np.nan])
    # cut at k=2: q0 keeps only rank 2 -> 0.5 / 2 relevant = 0.25
    _eq(M.average_precision(REL, k=2), [0.25, 1.0, np.nan])
    assert M.mean_average_precision(REL) == pytest.approx((0.5 + 1.0) / 2)


def test_truncated_list_uses_n_relevant():
    # Only the top 2 were retrieved, but 3 items are relevant in the gallery.
    rel = [[0, 1]]
    _eq(M.recall_at_k(rel, 2, n_relevant=[3]), [1 / 3])
    _eq(M.average_precision(rel, n_relevant=[3]), [(1 / 2) / 3])  # P@2 / 3
    # nothing relevant retrieved but relevant items exist: 0, not NaN
    _eq(M.hits_at_k([[0, 0]], 2, n_relevant=[1]), [0])
    _eq(M.reciprocal_rank([[0, 0]], n_relevant=[1]), [0])


def test_empty_relevant_sets():
    rel = np.zeros((2, 3))
    for fn in (M.hits_at_k, M.recall_at_k, M.precision_at_k):
        assert np.isnan(fn(rel, 2)).all()
    assert np.isnan(M.ndcg_at_k(rel, 2)).all()
    assert math.isnan(M.mrr(rel))  # every query skipped -> NaN mean
    assert M.mrr(rel, skip_empty=False) == 0.0


def test_graded_ndcg_by_hand():
    # ranked relevance [0, 2, 1, 0]; ideal order [2, 1, 0, 0]
    # DCG  = 0/log2(2) + 2/log2(3) + 1/log2(4) + 0 = 2/L3 + 1/2 = 1.76186
    # IDCG = 2/log2(2) + 1/log2(3)                  = 2 + 1/L3  = 2.63093
    rel = [[0, 2, 1, 0]]
    _eq(M.ndcg_at_k(rel), [(2 / L3 + 0.5) / (2 + 1 / L3)])  # 0.669672
    assert M.ndcg_at_k(rel)[0] == pytest.approx(0.6696718165)
    # @2: DCG = 2/L3 = 1.26186; IDCG@2 = 2 + 1/L3 -> 0.479625
    _eq(M.ndcg_at_k(rel, 2), [(2 / L3) / (2 + 1 / L3)])
    # exponential gain 2^rel - 1 -> gains [0, 3, 1, 0]:
    # DCG = 3/L3 + 1/2 = 2.39279; IDCG = 3 + 1/L3 = 3.63093 -> 0.659002
    _eq(M.ndcg_at_k(rel, gain="exponential"), [(3 / L3 + 0.5) / (3 + 1 / L3)])
    with pytest.raises(ValueError):
        M.ndcg_at_k(rel, gain="cubic")  # type: ignore[arg-type]


def test_ndcg_ideal_uses_all_relevance():
    # Top-2 retrieved: [0, 2]; the full row also holds a 1 the ranking never showed.
    # DCG@2 = 2/L3; IDCG@2 from full [2, 1, 0, 0] = 2 + 1/L3 -> 0.479625
    # (from the retrieved list alone it would wrongly be (2/L3)/2 = 0.6309)
    got = M.ndcg_at_k([[0, 2]], k=2, relevance=[[1, 2, 0, 0]])
    _eq(got, [(2 / L3) / (2 + 1 / L3)])


def test_ndcg_tie_rule_by_hand():
    # scores tie 0.5/0.5 between an irrelevant col 0 and relevant col 1:
    # lower index first -> ranked relevance [0, 1, 0] -> NDCG = (1/L3) / 1 = 0.6309.
    # (scikit-learn averages tied gains instead: 0.5*(1 + 1/L3) = 0.8155.)
    ranked = M.rank_from_scores([[0.5, 0.5, 0.1]])
    rel = M.gather_relevance([[0, 1, 0]], ranked)
    _eq(M.ndcg_at_k(rel), [1 / L3])


def test_relevance_validation():
    with pytest.raises(ValueError):
        M.hits_at_k([[0, -1]], 1)
    with pytest.raises(ValueError):
        M.recall_at_k([0, 1], 1)  # 1-D
    with pytest.raises(ValueError):
        M.precision_at_k([[0, 1]], 0)
    with pytest.raises(ValueError):
        M.recall_at_k([[0, 1]], 1, n_relevant=[1, 2])


SCORES = np.array(
    [
        [0.9, 0.1, 0.5, 0.5],
        [0.2, 0.8, 0.2, 0.0],
        [0.3, 0.2, 0.1, 0.0],
    ]
)
RELEVANCE = np.array(
    [
        [0, 1, 1, 0],
        [1, 0, 1, 0],
        [0, 0, 0, 0],
    ]
)


def test_retrieval_metrics_by_hand():
    # q0 ranking: col0 (0.9), cols 2,3 tie at 0.5 -> 2 then 3, col1 -> rel [0, 1, 0, 1]
    # q1 ranking: col1 (0.8), cols 0,2 tie at 0.2 -> 0 then 2, col3 -> rel [0, 1, 1, 0]
    # q2: no relevant item -> skipped
    m = M.retrieval_metrics(SCORES, RELEVANCE, ks=(1, 2, 10))
    expected = {
        "hits@1": 0.0,
        "hits@2": 1.0,  # both have a hit at rank 2
        "hits@10": 1.0,
        "recall@1": 0.0,
        "recall@2": 0.5,  # 1 of 2 each
        "recall@10": 1.0,
        "precision@1": 0.0,
        "precision@2": 0.5,
        "precision@10": 0.2,  # 2 / 10 each
        "mrr": 0.5,  # both first hit at rank 2
        # AP q0 = (1/2 + 2/4)/2 = 0.5 ; AP q1 = (1/2 + 2/3)/2 = 7/12 ; mean = 13/24
        "map": 13 / 24,
        "ndcg@1": 0.0,
        # both: DCG@2 = 1/L3, IDCG@2 = 1 + 1/L3 -> 0.386853
        "ndcg@2": (1 / L3) / (1 + 1 / L3),
        # q0: (1/L3 + 1/L5)/(1 + 1/L3) = 0.650921 ; q1: (1/L3 + 1/2)/(1 + 1/L3) = 0.693426
        "ndcg@10": ((1 / L3 + 1 / L5) + (1 / L3 + 1 / 2)) / 2 / (1 + 1 / L3),
        "n_queries": 2.0,
        "n_queries_skipped": 1.0,
    }
    assert set(m) == set(expected)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key


def test_retrieval_metrics_counting_empty_as_zero():
    m = M.retrieval_metrics(SCORES, RELEVANCE, ks=(2,), skip_empty=False)
    assert m["mrr"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert m["n_queries"] == 3.0 and m["n_queries_skipped"] == 0.0


def test_retrieval_metrics_from_ranked_matches_scores():
    ranked = M.rank_from_scores(SCORES)
    assert M.retrieval_metrics(None, RELEVANCE, ranked=ranked) == M.retrieval_metrics(SCORES, RELEVANCE)


SQ_SCORES = np.array(
    [
        [1.0, 0.6, 0.2],
        [0.3, 1.0, 0.7],
        [0.5, 0.4, 1.0],
    ]
)
SQ_REL = np.array(
    [
        [1, 0, 1],
        [0, 1, 1],
        [0, 0, 1],
    ]
)


def test_exclude_self_by_hand():
    # Diagonal removed from ranking and from the relevant set:
    # q0: gallery {1: 0.6 (rel 0), 2: 0.2 (rel 1)} -> [0, 1]: RR 1/2, AP 1/2
    # q1: gallery {0: 0.3 (rel 0), 2: 0.7 (rel 1)} -> [1, 0]: RR 1,   AP 1
    # q2: only itself was relevant -> skipped
    m = M.retrieval_metrics(SQ_SCORES, SQ_REL, ks=(1, 2), exclude_self=True)
    assert m["hits@1"] == pytest.approx((0 + 1) / 2)
    assert m["precision@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert m["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["map"] == pytest.approx((1 / 2 + 1) / 2)
    assert (m["n_queries"], m["n_queries_skipped"]) == (2.0, 1.0)
    # without exclusion every query finds itself first
    assert M.retrieval_metrics(SQ_SCORES, SQ_REL, ks=(1,))["hits@1"] == 1.0
    # the same from a full precomputed ranking
    ranked = M.rank_from_scores(SQ_SCORES)
    assert M.retrieval_metrics(None, SQ_REL, ks=(1, 2), exclude_self=True, ranked=ranked) == m


def test_exclude_self_truncated_ranked():
    # top-2 lists; self is first in each, so one other item remains per query:
    # q0 -> [1] rel 0 (its relevant item 2 was not retrieved): RR 0, AP 0
    # q1 -> [2] rel 1: RR 1, AP 1/1 ; q2 skipped
    ranked = M.rank_from_scores(SQ_SCORES, k=2)
    m = M.retrieval_metrics(None, SQ_REL, ks=(1,), exclude_self=True, ranked=ranked)
    assert m["mrr"] == pytest.approx(0.5)
    assert m["map"] == pytest.approx(0.5)
    # a list that does not contain the query itself loses its last entry instead:
    # q0 ranked [2, 1] -> [2] (rel 1): RR 1 ; q1 ranked [0, 2] -> [0] (rel 0): RR 0
    ranked = np.array([[2, 1], [0, 2], [0, 1]])
    m = M.retrieval_metrics(None, SQ_REL, ks=(1,), exclude_self=True, ranked=ranked)
    assert m["mrr"] == pytest.approx(0.5)


def test_retrieval_metrics_argument_errors():
    with pytest.raises(ValueError):
        M.retrieval_metrics(SCORES, RELEVANCE, exclude_self=True)  # not square
    with pytest.raises(ValueError):
        M.retrieval_metrics(None, RELEVANCE)
    with pytest.raises(ValueError):
        M.retrieval_metrics(SCORES, RELEVANCE, ranked=M.rank_from_scores(SCORES))
    with pytest.raises(ValueError):
        M.retrieval_metrics(SCORES[:, :2], RELEVANCE)
    with pytest.raises(ValueError):
        M.retrieval_metrics(SCORES, RELEVANCE, ks=(0,))


# -------------------------------------------------------------------- classification

Y_TRUE = ["a", "a", "b", "b", "c", "c"]
Y_PRED = ["a", "b", "b", "b", "a", "d"]
# per class         tp  #pred  #true   P     R    F1 = 2tp/(#pred+#true)
#   a               1     2      2    1/2   1/2   2/4 = 0.5
#   b               2     3      2    2/3   1     4/5 = 0.8
#   c               0     0      2    0     0     0
#   d               0     1      0    0     0     0


def test_accuracy_by_hand():
    assert M.accuracy(Y_TRUE, Y_PRED) == pytest.approx(3 / 6)  # indices 0, 2, 3 match
    assert math.isnan(M.accuracy([], []))
    with pytest.raises(ValueError):
        M.accuracy([1, 2], [1])


def test_f1_scores_by_hand():
    r = M.f1_scores(Y_TRUE, Y_PRED)
    assert r["macro_f1"] == pytest.approx((0.5 + 0.8 + 0 + 0) / 4)  # 0.325
    assert r["micro_f1"] == pytest.approx(2 * 3 / (6 + 6))  # = accuracy 0.5
    assert r["weighted_f1"] == pytest.approx((0.5 * 2 + 0.8 * 2 + 0 * 2 + 0 * 0) / 6)  # 0.4333
    assert r["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert r["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert list(r["per_class"]) == ["a", "b", "c", "d"]


def test_f1_ignores_absent_classes_and_honours_subset():
    # "z" is in neither input: left out (scikit-learn would average in a 0 -> 0.26)
    r = M.f1_scores(Y_TRUE, Y_PRED, labels=["a", "b", "c", "d", "z"])
    assert r["macro_f1"] == pytest.approx(0.325)
    assert "z" not in r["per_class"]
    # restricted to a, b: micro = 2*(1+2) / ((2+3) + (2+2)) = 6/9
    r = M.f1_scores(Y_TRUE, Y_PRED, labels=["a", "b"])
    assert r["micro_f1"] == pytest.approx(6 / 9)
    assert r["macro_f1"] == pytest.approx((0.5 + 0.8) / 2)
    assert r["weighted_f1"] == pytest.approx((0.5 * 2 + 0.8 * 2) / 4)


def test_f1_empty():
    r = M.f1_scores([], [])
    assert math.isnan(r["macro_f1"]) and r["per_class"] == {}


def test_confusion_matrix_by_hand():
    cm = M.confusion_matrix(Y_TRUE, Y_PRED)  # labels default to sorted a, b, c, d
    assert cm.tolist() == [
        [1, 1, 0, 0],  # true a: predicted a once, b once
        [0, 2, 0, 0],  # true b: b twice
        [1, 0, 0, 1],  # true c: a once, d once
        [0, 0, 0, 0],  # d never true
    ]
    # explicit order, samples outside the labels (true c) dropped
    assert M.confusion_matrix(Y_TRUE, Y_PRED, labels=["b", "a"]).tolist() == [[2, 0], [1, 1]]


# ------------------------------------------------------------------- binary scores

Y = [1, 0, 1, 1, 0, 0]
S = [0.9, 0.8, 0.7, 0.7, 0.7, 0.1]
# distinct thresholds (score >= t), P = 3 positives:
#   t=0.9: tp 1 fp 0 -> precision 1,   recall 1/3, F1 = 2*1/(1+3) = 0.5
#   t=0.8: tp 1 fp 1 -> precision 1/2, recall 1/3, F1 = 2/(2+3)   = 0.4
#   t=0.7: tp 3 fp 2 -> precision 3/5, recall 1,   F1 = 6/(5+3)   = 0.75
#   t=0.1: tp 3 fp 3 -> precision 1/2, recall 1,   F1 = 6/(6+3)   = 0.667


def test_roc_auc_by_hand_with_ties():
    # pos {0.9, 0.7, 0.7} vs neg {0.8, 0.7, 0.1}:
    #   0.9 beats all three -> 3 ; each 0.7: loses to 0.8, ties 0.7 (0.5), beats 0.1 -> 1.5
    #   (3 + 1.5 + 1.5) / (3 * 3) = 6/9
    assert M.roc_auc(Y, S) == pytest.approx(6 / 9)
    assert M.roc_auc([0, 1], [0.1, 0.9]) == 1.0
    assert M.roc_auc([1, 0], [0.5, 0.5]) == 0.5
    assert math.isnan(M.roc_auc([1, 1], [0.1, 0.2]))
    assert math.isnan(M.roc_auc([0, 0], [0.1, 0.2]))


def test_average_precision_score_by_hand():
    # (1/3 - 0)*1 + (1/3 - 1/3)*1/2 + (1 - 1/3)*3/5 + (1 - 1)*1/2 = 1/3 + 2/5 = 11/15
    assert M.average_precision_score(Y, S) == pytest.approx(11 / 15)
    assert M.average_precision_score([1, 1], [0.3, 0.1]) == 1.0
    assert math.isnan(M.average_precision_score([0, 0], [0.3, 0.1]))


def test_precision_recall_curve_by_hand():
    precision, recall, thresholds = M.precision_recall_curve(Y, S)
    _eq(thresholds, [0.1, 0.7, 0.8, 0.9])
    _eq(precision, [1 / 2, 3 / 5, 1 / 2, 1, 1])  # final (1, 0) point appended
    _eq(recall, [1, 1, 1 / 3, 1 / 3, 0])


def test_operating_points_by_hand():
    assert M.precision_at_recall(Y, S, 1.0) == pytest.approx(3 / 5)  # max(3/5, 1/2)
    assert M.precision_at_recall(Y, S, 0.5) == pytest.approx(3 / 5)
    assert M.precision_at_recall(Y, S, 0.3) == pytest.approx(1.0)  # t=0.9 reaches 1/3
    assert M.recall_at_precision(Y, S, 0.6) == pytest.approx(1.0)  # t=0.7: P 3/5, R 1
    assert M.recall_at_precision(Y, S, 0.9) == pytest.approx(1 / 3)  # only t=0.9
    # y=[0,1], s=[0.9,0.1]: precision 0/1 at 0.9, 1/2 at 0.1 -> 0.8 never reached
    assert M.recall_at_precision([0, 1], [0.9, 0.1], 0.8) == 0.0
    # recall 1/3 exactly reached despite float rounding of the target
    assert M.precision_at_recall(Y, S, 1 / 3) == pytest.approx(1.0)


def test_best_f1_threshold_by_hand():
    assert M.best_f1_threshold(Y, S) == pytest.approx((0.7, 0.75))
    # y=[1,0,0,1], s=[.9,.8,.7,.6], P=2: F1 at .9 = 2/(1+2) = 2/3, .8 = 2/4, .7 = 2/5,
    # .6 = 4/(4+2) = 2/3 -> tie between .9 and .6: the higher threshold wins
    assert M.best_f1_threshold([1, 0, 0, 1], [0.9, 0.8, 0.7, 0.6]) == pytest.approx((0.9, 2 / 3))
    t, f1 = M.best_f1_threshold([0, 0], [0.1, 0.2])
    assert math.isnan(t) and f1 == 0.0


def test_binary_f1_at_by_hand():
    # score >= 0.75 -> {0.9 (pos), 0.8 (neg)}: tp 1, predicted 2, positives 3 -> 2/(2+3)
    assert M.binary_f1_at(Y, S, 0.75) == pytest.approx(0.4)
    assert M.binary_f1_at(Y, S, 0.7) == pytest.approx(0.75)  # >= is inclusive
    assert M.binary_f1_at(Y, S, 0.95) == 0.0  # nothing predicted: 2*0/(0+3)
    assert M.binary_f1_at([0, 0], [0.1, 0.2], 0.5) == 0.0  # 0/0 -> 0


def test_bootstrap_ci_brackets_the_value_and_narrows_with_n():
    # perfectly separated: every resample keeps AUROC 1, so the interval is the point [1, 1]
    lo, hi = M.bootstrap_ci([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1], {"auroc": M.roc_auc}, n_boot=200)["auroc"]
    assert (lo, hi) == (1.0, 1.0)
    rng = np.random.default_rng(0)

    def width(n_pos: int) -> tuple[float, float, float]:
        y = np.r_[np.ones(n_pos), np.zeros(3 * n_pos)]
        s = y * 0.5 + rng.normal(0, 0.5, y.size)  # overlapping classes: AUROC ~0.76
        lo, hi = M.bootstrap_ci(y, s, {"auroc": M.roc_auc}, n_boot=300, seed=1)["auroc"]
        return lo, M.roc_auc(y, s), hi

    small, big = width(5), width(400)
    assert small[0] <= small[1] <= small[2] and big[0] <= big[1] <= big[2]
    assert small[2] - small[0] > 3 * (big[2] - big[0])  # 5 positives: a far wider interval
    # seeded: the same call gives the same interval; both classes are always present
    y, s = [1, 0, 1, 0, 0, 1], [0.3, 0.4, 0.9, 0.1, 0.5, 0.6]
    a = M.bootstrap_ci(y, s, {"auroc": M.roc_auc, "ap": M.average_precision_score}, n_boot=100, seed=3)
    assert a == M.bootstrap_ci(y, s, {"auroc": M.roc_auc, "ap": M.average_precision_score}, n_boot=100, seed=3)
    assert all(np.isfinite(v).all() for v in a.values())
    assert all(math.isnan(v) for v in M.bootstrap_ci([1, 1], [0.2, 0.3], {"auroc": M.roc_auc})["auroc"])


def test_wilson_interval_by_hand():
    # 50/100: centre 0.5, half-width z*sqrt(.25/100 + z^2/40000)/(1 + z^2/100) = 0.0962
    lo, hi = M.wilson_interval(50, 100)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    lo, hi = M.wilson_interval(5, 5)  # all found: the interval still says "n = 5"
    assert hi == 1.0 and lo == pytest.approx(0.5655, abs=1e-4)
    assert M.wilson_interval(0, 5)[0] == 0.0 and all(math.isnan(v) for v in M.wilson_interval(0, 0))


def test_binary_label_conventions_and_validation():
    assert M.roc_auc([True, False], [0.9, 0.1]) == 1.0
    assert M.roc_auc([1, -1], [0.9, 0.1]) == 1.0  # positives are y > 0
    with pytest.raises(ValueError):
        M.roc_auc([1, 0], [0.9, np.nan])
    with pytest.raises(ValueError):
        M.roc_auc([1, 0], [0.9])


# ---------------------------------------------------------------------- clustering

TRUE = [0, 0, 0, 1, 1, 1]
PRED = [0, 0, 1, 1, 2, 2]
# contingency: class 0 -> {c0: 2, c1: 1}; class 1 -> {c1: 1, c2: 2}
# rows (3, 3), cols (2, 2, 2), n = 6


def test_ari_by_hand():
    # same-cluster pairs: cells S = C(2,2)+0+0+C(2,2) = 2; rows A = 3+3 = 6;
    # cols B = 1+1+1 = 3; all T = C(6,2) = 15
    # expected = A*B/T = 1.2 ; max = (A+B)/2 = 4.5 ; ARI = (2 - 1.2)/(4.5 - 1.2) = 8/33
    assert M.ari(TRUE, PRED) == pytest.approx(8 / 33)
    # [0,0,1,1] vs [0,1,0,1]: S=0, A=2, B=2, T=6: (0 - 4/6)/(2 - 4/6) = -0.5
    assert M.ari([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    # one trivial labeling: S=2, A=2, B=6, T=6: (2 - 2)/(4 - 2) = 0
    assert M.ari([0, 0, 1, 1], [0, 0, 0, 0]) == 0.0
    assert M.ari([0, 0, 0], [5, 5, 5]) == 1.0  # both one cluster
    assert M.ari([0, 1, 2], [5, 6, 7]) == 1.0  # both all singletons


def test_nmi_and_v_measure_by_hand():
    # H(true) = ln 2, H(pred) = ln 3
    # MI = 2/6 ln(6*2/(3*2)) + 1/6 ln(6*1/(3*2)) * 2 + 2/6 ln(6*2/(3*2)) = 2/3 ln 2
    # NMI = (2/3 ln 2) / ((ln 2 + ln 3)/2) = 4/3 ln2/ln6 = 0.515804
    nmi = 4 / 3 * math.log(2) / math.log(6)
    assert M.nmi(TRUE, PRED) == pytest.approx(nmi)
    h, c, v = M.homogeneity_completeness_v_measure(TRUE, PRED)
    assert h == pytest.approx(2 / 3)  # MI / ln 2
    assert c == pytest.approx(2 / 3 * math.log(2) / math.log(3))  # MI / ln 3 = 0.420620
    assert v == pytest.approx(nmi)  # 2hc/(h+c) equals arithmetic NMI
    assert M.v_measure(TRUE, PRED) == pytest.approx(nmi)


def test_clustering_edge_cases():
    assert M.nmi([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)  # relabelled
    assert M.nmi(["x", "x", "y"], ["b", "b", "a"]) == pytest.approx(1.0)  # strings
    assert M.nmi([0, 0, 0], [1, 1, 1]) == 1.0  # both trivial
    assert M.nmi([0, 0, 1, 1], [0, 0, 0, 0]) == 0.0  # MI = 0
    # one cluster: homogeneity = 0/ln2 = 0, completeness = 1 (zero entropy), V = 0
    assert M.homogeneity_completeness_v_measure([0, 0, 1, 1], [0, 0, 0, 0]) == (0.0, 1.0, 0.0)
    assert M.homogeneity_completeness_v_measure([], []) == (1.0, 1.0, 1.0)
