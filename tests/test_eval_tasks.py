"""Eval tasks on real products and the real pretrained towers, plus hand-checked small cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE_DIR, read_sample_rows
from shopclip.catalog import Catalog, Product
from shopclip.eval import metrics as M
from shopclip.eval import retrieval as R
from shopclip.eval import tasks as T
from shopclip.eval.data import ProductSet, binary_labels, group_aware_sample, parse_binary, product_text
from shopclip.eval.embedders import CachedEncoder, tower_embedders
from shopclip.eval.synthetic import make_relistings
from shopclip.models import load_model


def rows_by_leaf(leaves: list[str], n_each: int, offset: int = 0) -> list[dict]:
    """``n_each`` real products (ungrouped, sorted by id) from each full category path."""
    rows = sorted(read_sample_rows(), key=lambda r: r["id"])
    out = []
    for leaf in leaves:
        match = [r for r in rows if " > ".join(r["category"]) == leaf and not r.get("group")]
        assert len(match) >= offset + n_each, leaf
        out += match[offset : offset + n_each]
    return out


def product_set(name: str, rows: list[dict]) -> ProductSet:
    catalog = Catalog(products=[Product.from_dict(r) for r in rows], root=SAMPLE_DIR)
    return ProductSet.from_products(name, catalog, catalog.products)


LEAVES = ["Accessories > Watches > Watches", "Footwear > Shoes > Casual Shoes", "Apparel > Topwear > Tshirts"]


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """The real pretrained towers (raw features), cached in a temp folder."""
    model = load_model("minilm-efflite0")
    return tower_embedders(model, tmp_path_factory.mktemp("eval-cache"))


@pytest.fixture(scope="module")
def three_leaves(towers):
    ps = product_set("three", rows_by_leaf(LEAVES, 10))
    return ps, towers["image-tower"].images(ps.images), towers["text-tower"].texts(ps.texts)


# ------------------------------------------------------------------------ probes


def test_linear_probe_agrees_with_scikit_learn():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    xtr, ytr, xte = x[:600], y[:600], x[1200:]
    for cw in (None, "balanced"):
        ours = T.LinearProbe(C=0.5, max_iter=300, class_weight=cw).fit(xtr, ytr)
        scaler = StandardScaler().fit(xtr)
        ref = LogisticRegression(C=0.5, max_iter=2000, tol=1e-6, class_weight=cw).fit(scaler.transform(xtr), ytr)
        p_ours, p_ref = ours.predict_proba(xte), ref.predict_proba(scaler.transform(xte))
        assert np.mean(ours.predict(xte) == ref.predict(scaler.transform(xte))) > 0.98
        assert np.abs(p_ours - p_ref).mean() < 1e-3


def test_probe_on_real_photos_of_distinct_categories_beats_chance(three_leaves):
    ps, img, _ = three_leaves
    tr = [i for i in range(len(ps)) if i % 10 < 6]
    ev = [i for i in range(len(ps)) if i % 10 >= 6]
    y = ps.paths
    res = T.classification_task({"image": img[tr]}, [y[i] for i in tr], {"image": img[ev]}, [y[i] for i in ev],
                                min_count=3, confusion_view="image")
    assert res["n_classes"] == 3 and res["n_eval"] == 12
    assert res["probe"]["image"]["accuracy"] >= 0.8 > res["chance"]["uniform"] + 0.4
    assert "zero_shot" not in res  # no text encoder given
    assert np.asarray(res["confusion"]["matrix"]).sum() == 12


def test_zero_shot_text_view_names_the_category(three_leaves, towers):
    ps, _, txt = three_leaves
    classes = sorted(set(ps.paths))
    cls = towers["text-tower"].texts([c.rsplit(" > ", 1)[-1] for c in classes])
    res = T.classification_task({"text": txt}, ps.paths, {"text": txt}, ps.paths, class_emb=cls, classes=classes,
                                min_count=3)
    assert res["zero_shot"]["text"]["accuracy"] >= 0.8
    assert set(res["zero_shot"]) == {"text"}  # image/fused zero-shot need a shared space


def test_classification_skips_with_a_reason_when_labels_are_too_few(three_leaves):
    ps, img, _ = three_leaves
    res = T.classification_task({"image": img}, ps.paths, {"image": img}, ps.paths, min_count=50)
    assert res["status"] == "skipped" and "50" in res["reason"]


# ------------------------------------------------------------------------ matching


def test_matching_synthetic_relistings_with_real_towers(towers, tmp_path):
    leaves = [*LEAVES, "Apparel > Topwear > Shirts"]
    ps = product_set("orig", rows_by_leaf(leaves, 6, offset=20))
    products = [Product.from_dict(r) for r in rows_by_leaf(leaves, 6, offset=20)]
    rel = make_relistings(products, lambda p: SAMPLE_DIR / p.image, tmp_path, seed=3)
    syn = ProductSet.from_relistings("syn", rel, ps)
    pairs, y = T.relisting_pairs(ps, list(range(len(ps))), hard_negatives=3)
    assert y.sum() == len(ps) and (y == 0).sum() == 3 * len(ps)
    assert all(ps.paths[a] == syn.paths[b] for a, b in pairs[y == 0])  # hard negatives: same leaf
    left = T.make_views(towers["image-tower"].images(ps.images), towers["text-tower"].texts(ps.texts))
    right = T.make_views(towers["image-tower"].images(syn.images), towers["text-tower"].texts(syn.texts))
    scores = T.pair_cosines(left, right, pairs)
    aurocs = {v: M.roc_auc(y, s) for v, s in scores.items()}
    assert aurocs["image"] > 0.9 and aurocs["fused"] > 0.9, aurocs
    half = np.arange(len(y)) < len(y) // 2
    res = T.matching_scores({v: s[half] for v, s in scores.items()}, y[half],
                            {v: s[~half] for v, s in scores.items()}, y[~half])
    assert set(res) == {"image", "text", "fused", "probe"}
    assert res["fused"]["f1"] > 0.6 and 0 < res["fused"]["threshold"] < 1


def test_group_pairs_are_within_groups_and_negatives_share_the_leaf():
    rows = rows_by_leaf(["Apparel > Topwear > Shirts"], 8)
    for r, g in zip(rows[:4], ["g1", "g1", "g2", "g2"], strict=True):
        r["group"] = g
    ps = product_set("groups", rows)
    pairs, y = T.group_pairs(ps, hard_negatives=2)
    pos = {tuple(sorted(p)) for p in pairs[y == 1].tolist()}
    assert pos == {(0, 1), (2, 3)}
    for a, b in pairs[y == 0]:
        assert a != b and ps.groups[a] != ps.groups[b] and ps.paths[a] == ps.paths[b]
    assert (y == 0).sum() == 4 * 2


def test_tune_threshold_leaves_a_margin():
    y = np.array([1, 1, 0, 0])
    s = np.array([0.95, 0.9, 0.5, 0.3])
    assert T.tune_threshold(y, s) == pytest.approx(0.7)


# ---------------------------------------------------------------------- clustering


def test_clustering_real_photos_recovers_categories(three_leaves):
    ps, img, txt = three_leaves
    res = T.clustering_task(T.make_views(img, txt), ps)
    assert res["k"] == {"leaf": 3, "top": 3}
    for method in ("kmeans", "agglomerative"):
        assert res[method]["image"]["leaf"]["nmi"] > 0.5, res[method]
    shuffled = np.random.default_rng(0).permutation(ps.paths)
    assert M.nmi(ps.paths, shuffled) < 0.3


# ----------------------------------------------------------------- binary (adult)


def test_binary_task_on_a_labelled_fixture_of_real_products(towers):
    """A MADE-UP label on real products: labels.adult = 1 for footwear. Not adult content:
    the fixture only checks the task's mechanics (no catalog with real adult labels exists here)."""
    rows = rows_by_leaf([LEAVES[0], LEAVES[1], "Apparel > Topwear > Shirts"], 9, offset=40)
    for r in rows:
        r["labels"] = {"adult": "yes" if r["category"][0] == "Footwear" else "no"}
    ps = product_set("adult", rows)
    y = binary_labels(ps, "labels.adult")
    assert sum(y) == 9 and None not in y
    views = T.make_views(towers["image-tower"].images(ps.images), None)
    tr, tu, ev = (list(range(i, len(ps), 3)) for i in range(3))
    sub = lambda idx: {v: x[idx] for v, x in views.items()}  # noqa: E731
    res = T.binary_task(sub(tr), [y[i] for i in tr], sub(ev), [y[i] for i in ev], sub(tu), [y[i] for i in tu])
    r = res["probe"]["image"]
    assert r["auroc"] > 0.9 and r["n_pos"] == 3 and r["n_neg"] == 6
    assert {"precision", "recall", "f1", "recall@precision0.99", "average_precision"} <= set(r)
    none = T.binary_task(views, [0] * len(ps), views, [0] * len(ps), views, [0] * len(ps))
    assert none["status"] == "skipped"


def test_parse_binary_spellings():
    assert [parse_binary(v) for v in (True, 1, "yes", "TRUE", "0", "no", 0.0, None, "maybe")] == [
        1, 1, 1, 1, 0, 0, 0, None, None]


# ------------------------------------------------------------------------ retrieval


def _tiny_set() -> ProductSet:
    rows = [
        {"id": "a", "title": "a", "image": "x.jpg", "category": ["A", "B", "C"], "group": "g"},
        {"id": "b", "title": "b", "image": "x.jpg", "category": ["A", "B", "C"], "group": "g"},
        {"id": "c", "title": "c", "image": "x.jpg", "category": ["A", "B", "D"]},
        {"id": "d", "title": "d", "image": "x.jpg", "category": ["E", "F"]},
        {"id": "e", "title": "e", "image": "x.jpg", "category": []},
    ]
    return product_set("tiny", rows)


def test_relevance_definitions_by_hand():
    ps = _tiny_set()
    np.testing.assert_array_equal(R.exact_relevance(ps, ps), [
        [1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(R.category_relevance(ps, ps), [
        [2, 2, 1, 0, 0], [2, 2, 1, 0, 0], [1, 1, 2, 0, 0], [0, 0, 0, 2, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(R.category_query_relevance(["A > B > D", "E > F"], ps),
                                  [[1, 1, 2, 0, 0], [0, 0, 0, 2, 0]])


def test_similar_items_and_recommendation_with_a_pairs_file(tmp_path):
    ps = _tiny_set()
    x = np.eye(5)[[0, 0, 1, 2, 3]] + 0.01 * np.arange(5)[:, None]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = R.similar_items(x, ps, ks=(1,))
    assert sim["exact"]["hits@1"] == 1.0 and sim["exact"]["n_queries"] == 2  # only a, b have a twin
    (tmp_path / "p.jsonl").write_text(json.dumps({"a": "c", "b": "d", "weight": 2}) + "\n" + json.dumps({"a": "a", "b": "zz"}) + "\n")
    (tmp_path / "p.csv").write_text("source,target\nc,a\nd,b\n")
    pj, pc = R.read_pairs(tmp_path / "p.jsonl"), R.read_pairs(tmp_path / "p.csv")
    assert pj[0] == ("c", "d", 2.0) and pc == [("c", "a", 1.0), ("d", "b", 1.0)]
    rel = R.pair_relevance(ps, pc)
    np.testing.assert_array_equal(rel, rel.T)
    assert rel.sum() == 4
    rec = R.recommendation(x, ps, k=2, pairs=pc, ks=(1, 2))
    assert rec["pairs_in_split"] == 2 and rec["pairs"]["n_queries"] == 4
    assert 0 < rec["coverage@2"] <= 1 and rec["category"]["n_queries"] == 3
    assert R.recommendation(x, ps, k=2)["pairs"]["status"] == "skipped"


def test_recall_curve_is_monotone_and_reaches_one():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(20, 30))
    rel = np.zeros((20, 30))
    rel[np.arange(20), rng.integers(0, 30, 20)] = 1
    curve = R.recall_curve(s, rel, max_k=30)
    assert len(curve) == 30 and curve[-1] == 1.0 and bool(np.all(np.diff(curve) >= 0))


# ------------------------------------------------------------------- data and cache


def test_group_aware_sample_keeps_groups_whole():
    rows = read_sample_rows()
    products = [Product.from_dict(r) for r in rows if r["split"] == "train"]
    sub = group_aware_sample(products, 300, seed=0)
    assert len(sub) <= 300 and len(sub) >= 295
    groups = {p.group for p in sub if p.group}
    for g in groups:
        assert sum(p.group == g for p in products) == sum(p.group == g for p in sub)
    assert [p.id for p in sub] == [p.id for p in group_aware_sample(products, 300, seed=0)]
    assert [p.id for p in sub] != [p.id for p in group_aware_sample(products, 300, seed=1)]


def test_product_text_leaves_labels_out_unless_asked():
    p = Product.from_dict({"id": "1", "title": "Puma Men Black Shoes", "image": "x.jpg",
                           "category": ["Footwear", "Shoes"], "attributes": {"color": "Black"}})
    assert product_text(p) == "Puma Men Black Shoes"
    assert "Footwear > Shoes" in product_text(p, ("title", "category")) and "color: Black" in product_text(
        p, ("title", "attributes"))
    with pytest.raises(ValueError):
        product_text(p, ("title", "price"))


def test_cached_encoder_encodes_each_content_once_and_keeps_norms(tmp_path):
    calls: list[int] = []

    def encode(texts):
        calls.append(len(texts))
        return np.asarray([[len(t), 1.0, 2.0] for t in texts], dtype=np.float32)

    enc = CachedEncoder(tmp_path, "toy", 3, "text", encode, keep_norm=True)
    a = enc(["ab", "abcd", "ab"])
    np.testing.assert_allclose(a, [[2, 1, 2], [4, 1, 2], [2, 1, 2]], rtol=1e-6)
    assert calls == [2]  # duplicate content encoded once
    b = CachedEncoder(tmp_path, "toy", 3, "text", encode, keep_norm=True)(["abcd", "xyz"])
    assert calls == [2, 1]  # a new instance reads the store; only "xyz" is new
    np.testing.assert_allclose(b[0], a[1], rtol=1e-6)


def test_attribute_targets_selection():
    ps = product_set("attrs", [
        {"id": str(i), "title": "t", "image": "x.jpg", "category": ["A"],
         "attributes": {"color": ["Red", "Blue", "Green"][i % 3] if i < 29 else "Pink", "rare": str(i)}}
        for i in range(30)])
    targets = T.attribute_targets(ps, min_count=5, min_products=20)
    assert targets == {"color": ["Blue", "Green", "Red"]}  # Pink (1) and every `rare` value are too rare
    kept, skipped = T.attribute_selection(ps, min_count=5, min_products=20)
    assert kept == targets and set(skipped) == {"rare"} and "0 value(s) with >= 5 products" in skipped["rare"]
    kept, skipped = T.attribute_selection(ps, min_count=5, min_products=40)
    assert kept == {} and "29 labelled products among its 3 usable values < 40" in skipped["color"]
    kept, skipped = T.attribute_selection(ps, min_count=5, min_products=20, max_attributes=0)
    assert kept == {} and skipped["color"].startswith("over max_attributes=0")
    assert T.attribute_prompts("color", ["Red"])[0][0] == "color: Red"


def test_sample_catalog_has_no_adult_labels(sample_catalog):
    """The report says the task was skipped for this reason; keep that claim true."""
    rows = read_sample_rows()
    assert not any("adult" in (r.get("labels") or {}) for r in rows)
    assert Path(sample_catalog).exists()


def test_class_prompt_names_disambiguate_shared_leaves():
    from shopclip.eval.runner import class_names

    names = class_names(["Footwear > Sandal > Sandals", "Footwear > Shoes > Sandals", "Apparel > Topwear > Shirts",
                         "Watches"])
    assert names == {"Footwear > Sandal > Sandals": "Sandal Sandals", "Footwear > Shoes > Sandals": "Shoes Sandals",
                     "Apparel > Topwear > Shirts": "Shirts", "Watches": "Watches"}


def test_hierarchical_zero_shot_scores_a_top_class_by_its_best_leaf():
    """Hand-made, leaves A > a1, A > a2, B > b1: item 1 sits on a2, yet the bare word "B" is closer to it than "A"."""
    leaf_s = np.array([[0.1, 0.9, 0.3],    # clearly a2
                       [0.2, 0.1, 0.6]])   # clearly b1
    top_s = np.array([[0.2, 0.5],          # the bare top-level words point the wrong way
                      [0.7, 0.1]])
    got = T.hierarchical_scores(leaf_s, [0, 0, 1], 2, top_s)
    np.testing.assert_allclose(got, [[0.9, 0.5], [0.7, 0.6]])
    assert got.argmax(1).tolist() == [0, 0]  # row 2: the prompt "A" itself (0.7) beats leaf b1 (0.6)
    np.testing.assert_allclose(T.hierarchical_scores(leaf_s, [0, 0, 1], 3), [[0.9, 0.3, -np.inf], [0.2, 0.6, -np.inf]])
    with pytest.raises(ValueError):
        T.hierarchical_scores(leaf_s, [0, 1], 2)


def test_top_level_zero_shot_uses_the_leaf_prompts():
    """Unit vectors in 3-d: leaf prompts point at the items, the top-level prompts do not."""
    from shopclip.eval.runner import _top_zero_shot

    e = np.eye(3, dtype=np.float32)
    leaf_classes = ["A > a1", "A > a2", "B > b1"]
    items = np.stack([e[0], e[1], e[2], e[1]])  # A, A, B, A
    top_emb = np.array([[0.6, 0.0, 0.8], [0.7071, 0.7071, 0.0]], dtype=np.float32)  # "A" leans to b1, "B" to A's leaves
    zs = _top_zero_shot({"text": items}, leaf_classes, e, ["A", "B"], top_emb, cross_modal=False)
    flat = T.zero_shot_scores({"text": items}, top_emb, cross_modal=False)["text"]
    y = ["A", "A", "B", "A"]
    res = T.classification_task({"text": np.tile(items, (3, 1))}, y * 3, {"text": items}, y, classes=["A", "B"],
                                min_count=2, zero_shot=zs, class_emb=top_emb)
    assert res["zero_shot"]["text"]["accuracy"] == 1.0
    assert np.mean(np.asarray(["A", "B"])[flat.argmax(1)] == np.asarray(y)) == 0.0  # the bare words alone


def test_binary_scores_report_intervals_operating_points_and_small_samples():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.05, 0.0])
    r = T.binary_scores(y, s, threshold=0.5, n_boot=200)
    # recall 0.9 needs all 3 positives: threshold 0.3 admits 0.9, 0.8, 0.7, 0.3 -> precision 3/4
    assert r["precision@recall0.9"] == pytest.approx(0.75)
    assert r["f1"] == pytest.approx(2 * 2 / (3 + 3))  # predicted {0.9, 0.8, 0.7}: tp 2
    assert r["ci95"]["auroc"][0] <= r["auroc"] <= r["ci95"]["auroc"][1]
    assert r["small_sample"] and "only 3 positive / 5 negative" in r["warning"]
    assert r["ci95"]["recall_wilson"] == pytest.approx(list(M.wilson_interval(2, 3)))
    big = np.r_[np.ones(40), np.zeros(40)]
    assert "small_sample" not in T.binary_scores(big, big + 0.1, None, n_boot=10)
    assert "ci95" not in T.binary_scores(y, s, None, n_boot=0)
