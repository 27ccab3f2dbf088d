"""Boxes, the box-choice rule, the localiser registry and the product-type table (no models loaded)."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from shopclip.catalog import Product
from shopclip.grounding import Box, FullImage, Localiser, choose_box, create_localiser, list_localisers
from shopclip.grounding.taxonomy import (
    IMAGENET_NAMES,
    PRODUCT_TYPES,
    match_type,
    product_type,
    type_of_product,
)


def test_box_geometry():
    a = Box(0, 0, 10, 10)
    b = Box(5, 5, 15, 15)
    assert a.area == 100
    assert a.iou(b) == pytest.approx(25 / 175)
    assert a.iou(a) == 1.0
    assert a.iou(Box(20, 20, 30, 30)) == 0.0
    assert a.union(b).xyxy == (0, 0, 15, 15)
    assert Box(-5, -5, 50, 8).clip(20, 10).xyxy == (0, 0, 20, 8)
    e = Box(10, 10, 20, 30).expand(0.1)
    assert e.xyxy == pytest.approx((9, 8, 21, 32))
    assert Box(0.2, 0.7, 9.1, 9.9).rounded() == (0, 0, 10, 10)
    assert Box(3, 3, 1, 1).area == 0  # inverted boxes have no area


def test_box_coerces_numpy_scalars_to_floats():
    import numpy as np

    b = Box(np.float32(1), np.int64(2), np.float64(3), 4, np.float32(0.5))
    assert all(type(v) is float for v in (*b.xyxy, b.score))
    json.dumps(b.to_dict())  # numpy scalars would fail here


def test_choose_box_margin_and_clipping():
    g = choose_box([Box(10, 10, 30, 50, 0.9, "x")], (40, 60), margin=0.5)
    assert not g.fallback and g.reason is None
    assert g.box.xyxy == (0, 0, 40, 60)  # grown by half its size on each side, clipped
    g = choose_box([Box(10, 10, 30, 50, 0.9)], (40, 60), margin=0.0)
    assert g.box.xyxy == (10, 10, 30, 50)


def test_choose_box_picks_best_score_not_first():
    g = choose_box([Box(0, 0, 10, 10, 0.2), Box(20, 20, 40, 40, 0.8)], (50, 50), margin=0)
    assert g.box.xyxy == (20, 20, 40, 40)


@pytest.mark.parametrize(
    "boxes, reason",
    [
        ([], "no box found"),
        ([Box(0, 0, 30, 30, 0.01)], "low confidence 0.010 < "),
        ([Box(10, 10, 12, 40, 0.9)], "degenerate box"),
        ([Box(math.nan, 0, 30, 30, 0.9)], "NaN box"),
        ([Box(70, 70, 90, 90, 0.9)], "degenerate box"),  # entirely outside the image: clips to nothing
    ],
)
def test_choose_box_falls_back_and_says_why(boxes, reason):
    g = choose_box(boxes, (60, 50), min_score=0.1)
    assert g.fallback
    assert g.box.xyxy == (0, 0, 60, 50)
    assert reason in g.reason


def test_choose_box_skips_degenerate_for_the_next_best():
    g = choose_box([Box(0, 0, 2, 2, 0.9), Box(5, 5, 40, 40, 0.5)], (50, 50), margin=0)
    assert not g.fallback and g.box.xyxy == (5, 5, 40, 40)


def test_full_image_localiser():
    boxes = FullImage().localise(Image.new("RGB", (30, 20)), "anything")
    assert [b.xyxy for b in boxes] == [(0, 0, 30, 20)]


def test_registry_lists_and_rejects():
    names = list_localisers()
    for n in ("full_image", "foreground", "saliency", "cam", "pose", "textmap", "combined",
              "grounding-dino:<model id>", "owlv2:<model id>"):
        assert n in names
    with pytest.raises(KeyError, match="unknown localiser"):
        create_localiser("yolo")
    assert create_localiser("saliency") is create_localiser("saliency")  # built once
    assert isinstance(create_localiser("foreground", cached=False), Localiser)


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("Casual Shoes", "shoes"), ("Sports Shoes", "shoes"), ("Flip Flops", "flip flops"), ("Heels", "heels"),
        ("Tshirts", "topwear"), ("Puma Men White T-Shirt", "topwear"), ("Kurtas", "kurtas"), ("Jeans", "bottomwear"),
        ("Track Pants", "bottomwear"), ("Capri", "bottomwear"), ("Wrist Watches", "watches"),
        ("Sunglasses", "sunglasses"), ("Bar Glasses", "glasses"), ("Handbags", "handbags"),
        ("Laptop Bags", "backpacks"), ("Innerwear Vests", "vests"), ("Briefs", "innerwear"),
        ("Coffee Mugs", "mugs"), ("Caps", "caps"), ("USB Gadgets", None), ("Showpieces", None),
    ],
)
def test_match_type(prompt, expected):
    t = match_type(prompt)
    assert (t.name if t else None) == expected


def test_type_table_is_consistent():
    for t in PRODUCT_TYPES:
        assert all(c in IMAGENET_NAMES for c in t.classes)
        assert t.group
    assert len({t.name for t in PRODUCT_TYPES}) == len(PRODUCT_TYPES)


def test_product_type_prompt_uses_leaf_and_qualifiers():
    p = Product(id="1", title="Puma Men White Casual Shoes", image="x.jpg",
                category=["Footwear", "Shoes", "Casual Shoes"])
    assert product_type(p) == "Casual Shoes"
    q = Product(id="2", title="Brass idol", image="x.jpg", category=["Home Decor", "Showpieces", "Ethnic"])
    assert product_type(q) == "Ethnic Showpieces"
    r = Product(id="3", title="Nike Tee", image="x.jpg")
    assert product_type(r) == "Nike Tee"
    assert type_of_product(r).name == "topwear"  # falls back to the title
