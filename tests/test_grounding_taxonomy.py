"""The product-type table: prompts map to the right type, and its ImageNet classes really fire on real photos.

The class lists were chosen by looking at EfficientNet-Lite0's softmax on the sample
catalog (see the taxonomy module docstring); this re-checks a few leaves on real train
photos so a wrong index or a swapped head shows up here, not as a silent drop in the
grounding benchmark.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from conftest import SAMPLE_CATALOG, SAMPLE_DIR
from shopclip.catalog import Product
from shopclip.grounding.taxonomy import IMAGENET_NAMES, PRODUCT_TYPES, match_type, product_type

# leaf category -> ImageNet class the docstring quotes as its strongest
CHECKED = {"Sports Shoes": 770, "Sunglasses": 836, "Coffee Mugs": 504, "Belts": 464}
PER_LEAF = 6


def test_prompts_match_their_type():
    assert match_type("Casual Shoes").name == match_type("Puma Men White Sports Shoes").name
    assert 770 in match_type("Sports Shoes").classes
    assert match_type("Watches") is match_type("watch")  # plurals
    assert match_type("Tshirts") is match_type("T-Shirts") is match_type("t shirt")
    assert match_type("USB Gadgets") is None or not match_type("USB Gadgets").classes


def test_every_listed_class_is_named_and_every_type_is_unique():
    assert len({t.name for t in PRODUCT_TYPES}) == len(PRODUCT_TYPES)
    assert all(c in IMAGENET_NAMES for t in PRODUCT_TYPES for c in t.classes)


def test_product_type_is_the_leaf_or_a_qualified_leaf():
    def product(category: list[str]) -> Product:
        return Product(id="x", title="Some Title", image="x.jpg", category=category)

    assert product_type(product(["Footwear", "Shoes", "Casual Shoes"])) == "Casual Shoes"
    assert product_type(product(["Home Decor", "Showpieces", "Ethnic"])) == "Ethnic Showpieces"
    assert product_type(product([])) == "Some Title"


@pytest.fixture(scope="module")
def leaf_photos() -> dict[str, list[Image.Image]]:
    out: dict[str, list[Image.Image]] = {leaf: [] for leaf in CHECKED}
    with open(SAMPLE_CATALOG, encoding="utf-8") as fp:
        for line in fp:
            r = json.loads(line)
            leaf = r["category"][-1] if r.get("category") else None
            if r.get("split") == "train" and leaf in out and len(out[leaf]) < PER_LEAF:
                out[leaf].append(Image.open(SAMPLE_DIR / r["image"]).convert("RGB"))
    return out


@torch.inference_mode()
def test_listed_imagenet_classes_fire_on_real_photos(leaf_photos):
    from shopclip.grounding.cam import CamLocaliser
    from shopclip.grounding.spatial import spatial_features

    cam = CamLocaliser()
    fc = cam._classifier()
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for leaf, cls in CHECKED.items():
            assert len(leaf_photos[leaf]) == PER_LEAF
            # The classifier reads the head's channels (a multi-level tower appends others after them).
            probs = torch.stack([fc(spatial_features(cam.model, img).fmap[: fc.in_features].mean(dim=(1, 2))).softmax(-1)
                                 for img in leaf_photos[leaf]]).mean(0)
            classes = match_type(leaf).classes
            top6 = set(probs.topk(6).indices.tolist())
            assert cls in classes and cls in top6, (leaf, IMAGENET_NAMES[cls], probs.topk(6))
            assert float(probs[list(classes)].sum()) > 0.3, leaf  # the type's classes hold real mass
    finally:
        torch.set_num_threads(old)
