"""The whole-catalog protocol on hand-made embeddings: every number worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shopclip.eval.whole_catalog import Protocol, fuse, relevance, same_leaf_precision, whole_catalog_metrics

# Five catalog products; the queries are rows 0 and 3 (say, the test split). Rows 3 and 4 are
# identical-photo twins (one merged group). Leaves: A A B B B.
IDS = ["p0", "p1", "p2", "p3", "p4"]
GROUPS = ["p0", "p1", "p2", "p3", "p3"]
LEAVES = ["A", "A", "B", "B", "B"]


def unit(rows: list[list[float]]) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


IMAGE = unit([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.2, 1], [0, 0.1, 1]])
# text 0 is closest to image 1 (a confuser), then its own image 0; text 3 is closest to image 4 (its twin)
TEXT = unit([[0.8, 0.2, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.05, 1], [0, 0.1, 1]])


def test_protocol_relevance_counts_identical_twins():
    proto = Protocol.build(IDS, GROUPS, LEAVES, ["p0", "p3"])
    assert proto.query_rows.tolist() == [0, 3] and proto.n_candidates == 5
    assert relevance(proto).tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 1, 1]]
    with pytest.raises(ValueError, match="not in the catalog"):
        Protocol.build(IDS, GROUPS, LEAVES, ["nope"])


def test_whole_catalog_metrics_by_hand():
    proto = Protocol.build(IDS, GROUPS, LEAVES, ["p0", "p3"])
    out = whole_catalog_metrics(IMAGE, TEXT, proto, ks=(1, 5, 10))
    # t2i: text 0 ranks image 1 first, its own image second → rank 2; text 3's first is a twin → rank 1
    s0 = TEXT[0] @ IMAGE.T
    assert int(np.argmax(s0)) == 1
    assert out["t2i"]["hits@1"] == pytest.approx(0.5)
    assert out["t2i"]["hits@5"] == pytest.approx(1.0)
    assert out["t2i"]["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    # NDCG@10 (binary): query 0 has one relevant item at rank 2: 1/log2(3); query 3 has two at ranks 1, 2: ideal
    assert out["t2i"]["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1.0) / 2)
    assert out["n_queries"] == 2 and out["n_candidates"] == 5


def test_same_leaf_precision_leaves_the_query_out():
    proto = Protocol.build(IDS, GROUPS, LEAVES, ["p0", "p3"])
    # k = 2: p0's two nearest other photos are p1 (A) and p2 or p3/p4 (B) → 1/2; p3's are p4, p2 (B, B) → 1
    got = same_leaf_precision(IMAGE, proto, k=2)
    s = IMAGE[0] @ IMAGE.T
    second = np.argsort(-s)[2]
    assert LEAVES[second] == "B"
    assert got == pytest.approx((0.5 + 1.0) / 2)


def test_fuse_averages_cosines_and_tower_baselines_skip_cross_modal():
    f = fuse(IMAGE, TEXT)
    assert f[0] @ f[1] == pytest.approx(0.5 * (IMAGE[0] @ IMAGE[1] + TEXT[0] @ TEXT[1]))
    proto = Protocol.build(IDS, GROUPS, LEAVES, ["p0", "p3"])
    img_only = whole_catalog_metrics(IMAGE, None, proto)
    assert "t2i" not in img_only and "i2i_same_leaf_precision@10" in img_only
    unaligned = whole_catalog_metrics(IMAGE, TEXT, proto, aligned=False)
    assert "t2i" not in unaligned and "fused_same_leaf_precision@10" in unaligned
    with pytest.raises(ValueError, match="rows"):
        whole_catalog_metrics(IMAGE[:4], TEXT, proto)
