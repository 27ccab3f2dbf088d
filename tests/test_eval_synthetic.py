"""Synthetic re-listings: seeded, documented ops, and really different from the source."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from conftest import SAMPLE_DIR, pick_rows
from shopclip.catalog import Product
from shopclip.eval.synthetic import IMAGE_OPS, make_relisting, make_relistings, rewrite_title


def _products(n: int) -> list[Product]:
    return [Product.from_dict(r) for r in pick_rows(n)]


def _image(p: Product):
    return SAMPLE_DIR / p.image


def _bytes(path: str) -> bytes:
    with open(path, "rb") as fp:
        return fp.read()


def test_same_seed_same_relistings_different_seed_different(tmp_path):
    products = _products(12)
    a = make_relistings(products, _image, tmp_path / "a", seed=7)
    b = make_relistings(products, _image, tmp_path / "b", seed=7)
    c = make_relistings(products, _image, tmp_path / "c", seed=8)
    for x, y in zip(a, b, strict=True):
        assert (x.title, x.description, x.image_ops, x.title_ops) == (y.title, y.description, y.image_ops, y.title_ops)
        assert _bytes(x.image) == _bytes(y.image)
    assert [x.title for x in a] != [x.title for x in c]
    assert any(_bytes(x.image) != _bytes(z.image) for x, z in zip(a, c, strict=True))


def test_a_products_relisting_does_not_depend_on_the_others_in_the_run(tmp_path):
    products = _products(6)
    alone = make_relisting(products[3].id, products[3].title, products[3].description, products[3].attributes,
                           _image(products[3]), tmp_path / "alone", seed=1)
    batch = make_relistings(products, _image, tmp_path / "batch", seed=1)[3]
    assert alone.title == batch.title
    assert _bytes(alone.image) == _bytes(batch.image)


def test_relistings_differ_from_source_and_record_their_ops(tmp_path):
    products = _products(30)
    rel = make_relistings(products, _image, tmp_path, seed=0)
    seen_ops = set()
    for p, r in zip(products, rel, strict=True):
        assert r.source_id == p.id and r.id != p.id
        assert r.title != p.title, "a re-listing's title must differ from the original"
        assert r.title_ops and r.image_ops[-1].startswith("jpeg:q")
        seen_ops |= {op.split(":")[0].split("(")[0] for op in r.image_ops}
        with Image.open(r.image) as img:
            img.load()
            assert img.mode == "RGB" and img.format == "JPEG"
        src = np.asarray(Image.open(_image(p)).convert("RGB").resize((64, 64)), dtype=np.float32)
        new = np.asarray(Image.open(r.image).convert("RGB").resize((64, 64)), dtype=np.float32)
        assert np.abs(src - new).mean() > 0.5, f"re-listing of {p.id} is pixel-identical to its source"
    assert seen_ops >= set(IMAGE_OPS), f"30 products should exercise every photo op, saw {seen_ops}"


def test_dropped_attribute_is_really_gone():
    title, attrs = "Puma Men Black Casual Shoes", {"color": "Black", "gender": "Men", "usage": "Casual"}
    dropped = 0
    for s in range(200):
        new, ops = rewrite_title(title, attrs, random.Random(s))
        for op in ops:
            if op.startswith("drop_attribute:"):
                dropped += 1
                value = attrs[op.split(":", 1)[1]]
                assert value.lower() not in new.lower().split(), (new, ops)
        assert new != title
    assert dropped > 20
