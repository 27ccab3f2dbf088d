"""The task heads' pure parts against hand-computed values: thresholds, calibration, the
category tree, attribute vocabularies, blocking, and what a tag says about given values."""

from __future__ import annotations

import numpy as np
import pytest

from shopclip.heads import calibration as K
from shopclip.heads import thresholds as Th
from shopclip.heads.attributes import applicable_categories, canonical, select_attributes, spelling_map
from shopclip.heads.blocking import connected_groups, knn_pairs, same_hash_pairs, same_top_level
from shopclip.heads.category import CategoryHead, CategoryTree, as_path, collapse
from shopclip.heads.classifier import NEVER, ClassHead

# ------------------------------------------------------------------------ thresholds


def test_operating_curve_counts_by_hand():
    y = np.array([1, 0, 1, 1, 0])
    s = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    thr, tp, fp = Th.operating_curve(y, s)
    assert thr.tolist() == [0.9, 0.8, 0.3, 0.1]
    assert tp.tolist() == [1, 2, 3, 3] and fp.tolist() == [0, 1, 1, 2]  # the tie at 0.8 enters together


def test_threshold_choices_by_hand():
    y = np.array([1, 1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    # precision at 0.9: 1, at 0.8: 1, at 0.7: 2/3, at 0.6: 3/4, at 0.2: 3/5, at 0.1: 1/2
    assert Th.threshold_at_precision(y, s, 0.75) == 0.6  # the lowest threshold still at 3/4
    assert Th.threshold_at_precision(y, s, 0.99) == 0.8
    assert Th.threshold_at_precision(np.zeros(3), np.arange(3.0), 0.5) == float("inf")
    assert Th.threshold_at_recall(y, s, 2 / 3) == 0.8 and Th.threshold_at_recall(y, s, 1.0) == 0.6
    assert Th.best_f1_threshold(y, s) == (0.6, pytest.approx(2 * 3 / (4 + 3)))
    assert Th.tune_threshold(y, s) == pytest.approx(0.4)  # halfway to the next lower score, 0.2
    conf = np.array([0.99, 0.95, 0.9, 0.6, 0.55])
    ok = np.array([1, 1, 0, 1, 0], dtype=bool)
    assert Th.abstain_threshold(conf, ok, 0.75) == 0.6  # answers 4, 3 right
    at = Th.coverage_at(conf, ok, 0.6)
    assert at == {"coverage": 0.8, "accuracy": 0.75, "answered": 4, "n": 5}


# ----------------------------------------------------------------------- calibration


def test_ece_by_hand():
    # bins of width 0.5: {0.2, 0.4} (mean 0.3, outcome 0.5), {0.9, 0.7} (mean 0.8, outcome 1)
    assert K.expected_calibration_error([0.2, 0.4, 0.9, 0.7], [1, 0, 1, 1], n_bins=2) == pytest.approx(
        0.5 * 0.2 + 0.5 * 0.2)
    assert K.expected_calibration_error([0.75, 0.75, 0.75, 0.75], [1, 1, 1, 0]) == pytest.approx(0.0)


def test_temperature_recovers_the_one_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 5)) * 3.0
    true_t = 2.5
    p = K.softmax(logits, true_t)
    y = np.array([rng.choice(5, p=row) for row in p])
    t = K.fit_temperature(logits, y)
    assert t == pytest.approx(true_t, rel=0.1)
    assert K.nll(logits, y, t) <= K.nll(logits, y, 1.0)


def test_binary_calibrators_platt_and_isotonic():
    rng = np.random.default_rng(1)
    s = rng.normal(size=3000)
    y = (rng.random(3000) < K.sigmoid(2.0 * s - 1.0)).astype(int)
    platt = K.BinaryCalibrator.fit(s, y, min_isotonic=10**9)
    assert platt.method == "platt" and platt.a == pytest.approx(2.0, rel=0.15) and platt.b == pytest.approx(-1.0, abs=0.15)
    iso = K.BinaryCalibrator.fit(s, y)
    assert iso.method == "isotonic"
    grid = np.linspace(-3, 3, 50)
    assert np.all(np.diff(iso(grid)) >= -1e-12)  # monotone
    assert K.expected_calibration_error(iso(s), y) < 0.03
    again = K.BinaryCalibrator.from_dict(iso.to_dict())
    np.testing.assert_allclose(again(grid), iso(grid))


# ------------------------------------------------------------------------- category


def test_collapse_folds_rare_paths_into_parents():
    paths = [("A", "a1")] * 6 + [("A", "a2")] * 2 + [("A", "a3")] * 3 + [("B", "b1")] * 2 + [("C",)] * 5
    assert collapse(paths, 5) == [("A",), ("A", "a1"), ("C",)]  # a2 + a3 make "A" a class; B is too rare


def test_decode_is_top_down_and_a_leaf_implies_its_parents():
    tree = CategoryTree([("A", "a1"), ("A", "a2"), ("B", "b1")])
    # the single most likely leaf is b1, but A as a whole (0.6) outweighs B (0.4)
    (path, conf), = tree.decode(np.array([[0.3, 0.3, 0.4]]))
    assert path == ("A", "a1") and conf == pytest.approx([0.6, 0.3])
    assert tree.map_path(("A", "a9")) is None and tree.map_path(("B", "b1", "x")) == ("B", "b1")
    # a class that is also a parent: "stop here" competes with its children
    tree2 = CategoryTree([("A",), ("A", "a1"), ("B",)])
    assert tree2.decode(np.array([[0.5, 0.3, 0.2]]))[0] == (("A",), [pytest.approx(0.8)])
    assert tree2.decode(np.array([[0.2, 0.5, 0.3]]))[0][0] == ("A", "a1")


def test_category_head_sureness_cuts_the_path_where_confidence_drops():
    rng = np.random.default_rng(0)
    centres = {("A", "a1"): [4, 0, 0], ("A", "a2"): [4, 0.3, 0], ("B", "b1"): [-4, 0, 3]}
    paths, xs = [], []
    for p, c in centres.items():
        for _ in range(40):
            paths.append(" > ".join(p))
            xs.append(np.asarray(c) + rng.normal(scale=0.5, size=3))
    x = np.asarray(xs, dtype=np.float32)
    head = CategoryHead.fit(x[::2], paths[::2], x[1::2], paths[1::2], C=1.0, target_accuracy=0.95)
    preds = head.predict(x[1::2])
    for p in preds:
        assert all(a >= b for a, b in zip(p.confidence, p.confidence[1:], strict=False))  # never rises going down
        assert all(c >= t for c, t in zip(p.confidence[: p.sure], head.thresholds, strict=False))
    a_rows = [p for p, t in zip(preds, paths[1::2], strict=True) if t.startswith("A")]
    assert all(p.path[0] == "A" and p.sure >= 1 for p in a_rows)  # the top level is easy
    assert any(p.unsure for p in a_rows)  # a1 and a2 overlap: some leaves stay unsure
    sc = head.score(x[1::2], paths[1::2])
    assert sc["top_accuracy"] == 1.0 and 0.5 < sc["leaf_accuracy"] <= 1.0
    assert sc["leaf_accuracy_at_threshold"] >= sc["leaf_accuracy"]


def test_class_head_without_validation_never_abstains_and_saves():
    x = np.array([[0.0], [0.1], [1.0], [1.1]], dtype=np.float32)
    head = ClassHead.fit(x, ["a", "a", "b", "b"], min_count=1)
    assert head.threshold == 0.0 and "none" in head.metrics["calibration"]
    assert head.predict(np.array([[1.05]], dtype=np.float32))[0] == ["b"]
    again = ClassHead.from_saved(head.to_dict(), head.arrays("p"), "p")
    np.testing.assert_allclose(again.proba(x), head.proba(x))
    assert ClassHead.fit(x, ["a", "a", "a", "a"], min_count=1) is None  # one class: nothing to fit
    assert NEVER > 1.0


def test_as_path_spellings():
    assert as_path("A > B >C") == ("A", "B", "C") == as_path(["A", " B", "C "])
    assert as_path(None) == () == as_path("")


# ------------------------------------------------------------------------ attributes


def test_attribute_vocabulary_is_case_insensitive_and_applies_where_labelled():
    assert spelling_map(["White", "WHITE", "white ", "White", "Navy  Blue"]) == {"white": "White", "navy blue": "Navy Blue"}
    assert canonical(" Navy  BLUE") == "navy blue"
    paths = ["A > x"] * 4 + ["B > y"] * 4
    has = [True, True, False, False, True, False, False, False]
    assert applicable_categories(paths, has, 0.5) == ["A", "A > x"]  # B: 1 of 4 < half
    kept, skipped = select_attributes([{"c": "r"}] * 6 + [{"c": "g"}] * 6 + [{"d": "z"}] * 7, min_count=5,
                                      min_products=10)
    assert kept == {"c": ["g", "r"]} and "d" in skipped


# -------------------------------------------------------------------------- blocking


def test_blocking_pairs_and_groups_by_hand():
    x = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99], [-1, 0]], dtype=np.float32)
    # row 4 ([-1, 0]) is nearest to row 2 (cosine 0 beats -0.1, -0.99, -1)
    assert knn_pairs(x, 1).tolist() == [[0, 1], [2, 3], [2, 4]]
    assert len(knn_pairs(x, 4)) == 10  # every pair once
    assert same_hash_pairs(["h", None, "h", "g", "h"]).tolist() == [[0, 2], [0, 4], [2, 4]]
    assert same_hash_pairs(["h"] * 3, max_group=2).tolist() == []  # a placeholder photo, not a duplicate
    pairs = np.array([[0, 1], [1, 2], [3, 4]])
    assert same_top_level(pairs, ["A > x", "B", "B > y", None, "C"]).tolist() == [[1, 2], [3, 4]]
    assert connected_groups(6, np.array([[0, 1], [1, 2], [4, 5]])) == [[0, 1, 2], [4, 5]]


# ----------------------------------------------------------------------- matching


def test_margins_by_hand():
    from shopclip.heads.matching import MARGIN_CAP, margins

    pairs = np.array([[0, 1], [0, 2], [1, 2], [3, 4]])
    z = np.array([5.0, 1.0, 2.0, -1.0])
    ma, mb = margins(z, pairs)
    # pair (0,1): node 0's other best is 1.0 (pair 0-2), node 1's other best is 2.0 (pair 1-2)
    assert ma.tolist()[:3] == [4.0, -4.0, -3.0] and mb.tolist()[:3] == [3.0, -1.0, 1.0]
    assert ma[3] == mb[3] == MARGIN_CAP  # an isolated pair: nobody else to beat


def test_photo_check_tells_an_edited_copy_from_a_colour_variant_and_another_product():
    pytest.importorskip("cv2")
    from PIL import Image, ImageOps

    from conftest import SAMPLE_DIR
    from shopclip.heads.photomatch import compare, describe

    photo = Image.open(SAMPLE_DIR / "images" / "myntra-10271.jpg").convert("RGB")  # red heels on white
    w, h = photo.size
    edited = ImageOps.expand(photo.crop((8, 10, w - 6, h - 12)), border=20, fill=(40, 160, 90))  # re-cropped, padded
    r, g, b = photo.split()
    recoloured = Image.merge("RGB", (b, r, g))  # the same shot, another colour
    other = Image.open(SAMPLE_DIR / "images" / "myntra-10104.jpg").convert("RGB")
    a = describe(photo)
    same_inl, same_col, same_overlap = compare(a, describe(edited))
    var_inl, var_col, _ = compare(a, describe(recoloured))
    other_inl, other_col, _ = compare(a, describe(other))
    assert same_inl >= 40 and same_col < 0.05 and same_overlap > 0.1
    assert var_col > 3 * max(same_col, 0.01)  # the geometry may agree; the colour does not
    assert other_inl < same_inl / 3


def test_feature_matrix_by_hand_and_an_unmeasured_colour_is_no_evidence():
    from shopclip.heads.matching import PAIR_FEATURES, feature_matrix, pair_features
    from shopclip.heads.photomatch import NO_COLOUR

    # rows: the same shot in another colour (9 inliers, colour 0.4); a swapped background
    # that broke the geometry (3 stray inliers, no colour measured); no match at all
    checks = np.array([[9, 0.4, 0.5], [3, NO_COLOUR, 0.0], [0, NO_COLOUR, 0.0]], dtype=np.float32)
    x = feature_matrix(PAIR_FEATURES, {"image": np.array([0.9, 0.5, 0.1]), "text": np.array([0.8, 0.99, 0.2])},
                       checks, 3)
    col = {n: x[:, i] for i, n in enumerate(PAIR_FEATURES)}
    np.testing.assert_allclose(col["inliers"], np.log1p([9, 3, 0]), rtol=1e-6)
    np.testing.assert_allclose(col["inliers_colour"], [np.log(10) * 0.4, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(col["text"], [0.8, 0.99, 0.2], rtol=1e-6)
    # pair_features computes the cosines and goes through the same columns
    v = np.eye(3, dtype=np.float32)
    views = {"image": v, "text": v}
    got = pair_features(views, views, np.array([[0, 0], [0, 1]]), PAIR_FEATURES, photo=lambda p: checks[:2])
    np.testing.assert_allclose(got[:, 0], [1.0, 0.0])
    np.testing.assert_allclose(got[:, 5], [np.log(10) * 0.4, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match="photo check"):
        feature_matrix(PAIR_FEATURES, {"image": np.zeros(1), "text": np.zeros(1)}, None, 1)


def test_pair_matcher_round_trips_and_an_identical_photo_always_matches():
    from shopclip.heads.matching import PairMatcher

    rng = np.random.default_rng(0)
    n = 400
    y = (rng.random(n) < 0.2).astype(int)
    x = np.stack([rng.normal(0.5 + 0.3 * y, 0.1), rng.normal(0.5 + 0.3 * y, 0.1)], 1).astype(np.float32)
    pairs = np.stack([np.arange(n), np.arange(n) + n], 1)
    m = PairMatcher.fit(x, pairs, y, x, pairs, y)
    p = m.score_graph(x, pairs)
    assert np.mean((p >= m.threshold) == (y > 0)) > 0.9 and m.review <= m.threshold
    again = PairMatcher.from_saved(m.to_dict(), m.arrays("m"), "m")
    np.testing.assert_allclose(again.score_graph(x, pairs), p)
    q = m.score_query(np.array([[1.0, 0.0], [0.3, 0.3]], dtype=np.float32))
    assert q[0] == 1.0  # identical photo: whatever the text says
