"""Identical photos are one product: merged groups, splits that keep them together, the sample's twins."""

from __future__ import annotations

import shutil

from shopclip.catalog import Catalog, Product, assign_split, ensure_splits
from shopclip.catalog.photos import merge_identical_photos, photo_groups
from shopclip.catalog.splits import split_leaks


def _photo(folder, name: str, source) -> str:
    (folder / "images").mkdir(exist_ok=True)
    shutil.copyfile(source, folder / "images" / name)
    return f"images/{name}"


def test_identical_bytes_join_products_and_their_declared_groups(tmp_path, sample_catalog):
    imgs = sample_catalog.parent / "images"
    a = Product(id="a", title="A", image=_photo(tmp_path, "a.jpg", imgs / "myntra-10104.jpg"))
    b = Product(id="b", title="B", image=_photo(tmp_path, "b.jpg", imgs / "myntra-10104.jpg"), group="g")
    c = Product(id="c", title="C", image=_photo(tmp_path, "c.jpg", imgs / "myntra-15970.jpg"), group="g")
    d = Product(id="d", title="D", image=_photo(tmp_path, "d.jpg", imgs / "myntra-10200.jpg"))
    e = Product(id="e", title="E", image="images/missing.jpg")  # unreadable: joins nothing
    cat = Catalog([a, b, c, d, e], root=tmp_path)
    groups = photo_groups(cat)
    # a shares b's bytes, b shares c's declared group: one product; the smallest key names it
    assert groups.key == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "e"}
    assert groups.merged == [["a", "b", "c"]] and groups.n_merged_products == 3
    merged, _ = merge_identical_photos(cat, groups)
    assert [p.group for p in merged] == ["a", "a", "a", None, None]
    # unsplit twins get one split, the hashed split of the merged key
    split = ensure_splits(cat)
    assert {p.split for p in split.products[:3]} == {assign_split("a")}
    assert split.products[3].split == assign_split("d")


def test_ensure_splits_puts_an_unsplit_twin_beside_its_split_twin(tmp_path, sample_catalog):
    img = sample_catalog.parent / "images" / "myntra-10104.jpg"
    a = Product(id="a", title="A", image=_photo(tmp_path, "a.jpg", img), split="test")
    b = Product(id="b", title="A", image=_photo(tmp_path, "b.jpg", img))
    assert [p.split for p in ensure_splits(Catalog([a, b], root=tmp_path))] == ["test", "test"]
    # without the photo rule b would follow its own id's hash
    assert ensure_splits(Catalog([a, b], root=tmp_path), photos=False).products[1].split == assign_split("b")


def test_sample_catalog_twins_across_splits_are_found(sample_catalog):
    cat = Catalog.load(sample_catalog)
    groups = photo_groups(cat)
    merged, _ = merge_identical_photos(cat, groups)
    summary = groups.summary(cat)
    twins = {comp_id for s in summary["across_splits"] for comp_id in s["ids"]}
    # the example: two test listings of one charger, with four identical train listings
    assert {"flipkart-4735953b9c8504eb", "flipkart-ea199e645da893f2", "flipkart-281dfd9b94b34362"} <= twins
    key = groups.key
    assert key["flipkart-4735953b9c8504eb"] == key["flipkart-ea199e645da893f2"] == key["flipkart-281dfd9b94b34362"]
    test_with_train_twin = {p.id for p in cat.products if p.split == "test"
                            and any(q.split == "train" and key[q.id] == key[p.id] for q in cat.products
                                    if q.id in twins)}
    assert len(test_with_train_twin) == 5  # the 5 of 821 the outside check found
    assert summary["groups_across_splits"] == 7 and split_leaks(cat) == {}
    assert len(split_leaks(merged)) == 7  # the catalog's given splits are kept; the report says where they straddle
