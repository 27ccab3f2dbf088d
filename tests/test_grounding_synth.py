"""The benchmark generator: real cut-outs, seeded scenes, true boxes that match the pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shopclip.catalog import Catalog
from shopclip.grounding.synth import (
    BACKGROUNDS,
    build_pool,
    cut_out,
    generate_scenes,
    make_background,
    make_scene,
    texture_sources,
)

TYPES = ("Sports Shoes", "Watches", "Handbags", "Sunglasses", "Belts", "Wallets")


@pytest.fixture(scope="module")
def catalog(sample_catalog) -> Catalog:
    return Catalog.load(sample_catalog)


@pytest.fixture(scope="module")
def pool(catalog):
    # Non-apparel types only: no MediaPipe person check is needed, so the pool builds in seconds.
    return build_pool(catalog, per_type=6, types=TYPES, exclude_people=False)


def test_cut_out_keeps_the_product_and_drops_the_backdrop(sample_catalog):
    img = Image.open(sample_catalog.parent / "images" / "myntra-10035.jpg").convert("RGB")
    rgba, why = cut_out(img)
    assert why == "" and rgba.mode == "RGBA"
    alpha = np.asarray(rgba.getchannel("A"))
    assert alpha.max() == 255 and alpha.min() == 0
    assert rgba.size[0] < img.size[0] or rgba.size[1] < img.size[1]  # cropped to the product
    # every edge of the crop touches the product (tight box)
    a = alpha > 127
    assert a[0].any() and a[-1].any() and a[:, 0].any() and a[:, -1].any()


def test_cut_out_refuses_non_studio_photos():
    rng = np.random.default_rng(1)
    rgba, why = cut_out(make_background("noise", (200, 200), rng))
    assert rgba is None and "backdrop" in why


def test_pool_covers_the_types(pool):
    assert {c.prompt for c in pool} == set(TYPES)
    assert all(c.rgba.mode == "RGBA" for c in pool)
    assert len({c.group for c in pool}) == len(TYPES)


def test_scenes_are_deterministic_and_independent_of_n(pool):
    a = list(generate_scenes(pool, 5, seed=3, min_per_type=1))
    b = list(generate_scenes(pool, 2, seed=3, start=3, min_per_type=1))
    assert np.array_equal(np.asarray(a[3].image), np.asarray(b[0].image))
    assert a[4].box == b[1].box and a[4].prompt == b[1].prompt
    c = make_scene(pool, 0, seed=4)
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(c.image)) or a[0].box != c.box


def test_scene_invariants(pool, catalog):
    by_id = {c.product_id: c for c in pool}
    for s in generate_scenes(pool, 24, seed=0, min_per_type=1):
        w, h = s.image.size
        assert 320 <= w <= 512 and 320 <= h <= 512
        assert 0 <= s.box.x0 < s.box.x1 <= w and 0 <= s.box.y0 < s.box.y1 <= h
        assert 1 <= len(s.others) <= 3
        target = by_id[s.target_id]
        assert s.prompt == target.prompt
        assert all(by_id[o].group != target.group for o in s.others)
        assert s.background in BACKGROUNDS
        # the long side of the true box is 28-60 % of the canvas's short side (shrunk at most 4 times by 0.85)
        assert 0.28 * 0.85**4 * min(w, h) - 2 <= max(s.box.width, s.box.height) <= 0.60 * min(w, h) + 2


def test_true_box_matches_the_pasted_pixels(pool):
    """On a white canvas, the pixels that differ from white inside the true box reach all four of its edges."""
    for s in generate_scenes(pool, 40, seed=0, min_per_type=1):
        if s.background != "white":
            continue
        arr = np.asarray(s.image.convert("L"), dtype=np.int16)
        x0, y0, x1, y1 = s.box.rounded()
        ink = arr[y0:y1, x0:x1] < 235
        assert ink[:3].any() and ink[-3:].any() and ink[:, :3].any() and ink[:, -3:].any()
        break
    else:
        pytest.skip("no white scene among the first 40")


def test_backgrounds(catalog):
    rng = np.random.default_rng(0)
    tex = texture_sources(catalog, limit=3)
    assert tex
    for kind in BACKGROUNDS:
        img = make_background(kind, (64, 48), rng, tex)
        assert img.size == (64, 48) and img.mode == "RGB"
    with pytest.raises(ValueError):
        make_background("plaid", (10, 10), rng)
