"""Texts, splits, deterministic order, augmentations, false-negative keys and the feature cache."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SAMPLE_DIR, read_sample_rows, write_catalog
from shopclip.catalog import Catalog, Product
from shopclip.models.augment import AugmentConfig, augment_image, flip_allowed, view_rng
from shopclip.models.features import (
    CLEAN_VIEW,
    FeatureCache,
    ImageItem,
    compute_image_features,
    compute_text_features,
    image_fingerprint,
    text_fingerprint,
    text_key,
    view_key,
)
from shopclip.train.config import TextConfig, TrainConfig
from shopclip.train.data import (
    build_pairs,
    epoch_batches,
    pick_views,
    rank_slice,
    render_text,
    split_catalog,
    text_variants,
)
from shopclip.train.false_negatives import (
    dhash,
    duplicate_keys,
    false_negative_mask,
    hamming,
    image_signature,
    near_duplicate_clusters,
    normalise_title,
    phash,
)
from shopclip.train.testing import tiny_model


@pytest.fixture(scope="module")
def rows():
    return read_sample_rows()


# ----------------------------------------------------------------------------- text
def test_default_text_is_what_the_index_embeds(rows):
    cfg = TextConfig()
    for r in rows[:: len(rows) // 60]:
        p = Product.from_dict(r)
        assert render_text(p, cfg.fields, cfg) == p.text()


def test_text_template_per_field():
    p = Product(id="1", title="Puma Men White Casual Shoes", image="x.jpg", description="Soft sole. Lace-up.",
                category=["Footwear", "Shoes", "Casual Shoes"],
                attributes={"color": "White", "year": "2012", "style_code": "PX 1"})
    cfg = TextConfig(category_levels=1, attribute_exclude=["year"], description_chars=9)
    assert render_text(p, ["title"], cfg) == "Puma Men White Casual Shoes."
    assert render_text(p, ["category", "title"], cfg) == "Casual Shoes. Puma Men White Casual Shoes."
    assert render_text(p, ["title", "attributes", "description"], cfg) == \
        "Puma Men White Casual Shoes. color: White; style code: PX 1. Soft sole."
    assert text_variants(p, TextConfig())[1:] == [
        "Puma Men White Casual Shoes.", "Puma Men White Casual Shoes. Footwear > Shoes > Casual Shoes.",
        "Puma Men White Casual Shoes. color: White; year: 2012; style code: PX 1."]


# ----------------------------------------------------------------------------- splits and order
def test_split_is_group_aware_and_computed_when_missing(tmp_path, rows):
    grouped = [r for r in rows if r.get("group")][:12]
    plain = [r for r in rows if not r.get("group")][:60]
    picked = [{k: v for k, v in r.items() if k != "split"} for r in grouped + plain]
    cat = Catalog.load(write_catalog(tmp_path, picked))
    train, val = split_catalog(cat)
    assert train and val
    assert not {p.group for p in train if p.group} & {p.group for p in val if p.group}
    # the sample's own split is used as it is
    sample = Catalog.load(write_catalog(tmp_path / "s", grouped + plain))
    train_s, _ = split_catalog(sample)
    assert {p.id for p in train_s} == {r["id"] for r in grouped + plain if r["split"] == "train"}


def test_train_plus_val_trains_on_both_and_refuses_validating_on_them(tmp_path, rows):
    sample = Catalog.load(write_catalog(tmp_path, rows[:120]))
    want = {r["id"] for r in rows[:120] if r["split"] in ("train", "val")}
    train, val = split_catalog(sample, "train+val", "")
    assert {p.id for p in train} == want and val == []
    assert {r["split"] for r in rows[:120]} >= {"train", "val", "test"}  # test products stay out
    with pytest.raises(ValueError, match="val"):
        split_catalog(sample, "train+val", "val")


def test_epoch_order_is_deterministic_and_rank_slices_concatenate():
    a = epoch_batches(3, 5, 100, 32)
    assert [len(b) for b in a] == [32, 32, 32]
    assert all(np.array_equal(x, y) for x, y in zip(a, epoch_batches(3, 5, 100, 32), strict=True))
    assert not np.array_equal(a[0], epoch_batches(3, 6, 100, 32)[0])
    assert np.array_equal(np.concatenate([rank_slice(a[0], r, 4) for r in range(4)]), a[0])
    with pytest.raises(ValueError):
        rank_slice(a[0], 0, 3)
    views = pick_views(0, 1, np.arange(400), 2, 0.5)
    assert set(views) == {0, 1, 2} and 150 < views.count(0) < 250
    assert views == pick_views(0, 1, np.arange(400), 2, 0.5)


# ----------------------------------------------------------------------------- augmentations
def test_augmentation_is_reproducible_and_keeps_the_product(rows):
    img = Image.open(SAMPLE_DIR / rows[0]["image"]).convert("RGB")
    cfg = AugmentConfig()
    a = np.asarray(augment_image(img, view_rng(1, "x"), cfg))
    b = np.asarray(augment_image(img, view_rng(1, "x"), cfg))
    c = np.asarray(augment_image(img, view_rng(2, "x"), cfg))
    assert np.array_equal(a, b) and not (a.shape == c.shape and np.array_equal(a, c))
    w, h = img.size
    for s in range(20):
        out = augment_image(img, view_rng(s, "y"), cfg)
        assert out.size[0] * out.size[1] >= 0.69 * w * h  # the crop keeps most of the object
    assert augment_image(img, view_rng(0), AugmentConfig(enabled=False)) is img


def test_flips_are_skipped_for_products_with_printed_text():
    assert flip_allowed("Apparel > Topwear > Tshirts Puma Men Black T-shirt")
    assert not flip_allowed("Computers > Laptop Accessories Lapguard Battery")
    assert not flip_allowed("Accessories > Watches > Watches Titan Men Watch")
    img = Image.new("RGB", (64, 64), "white")
    img.paste((255, 0, 0), (0, 0, 16, 64))  # a red band on the left
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=1.0, rotate_deg=0, brightness=0,
                        contrast=0, saturation=0)
    flipped = np.asarray(augment_image(img, view_rng(0), cfg, can_flip=True))
    kept = np.asarray(augment_image(img, view_rng(0), cfg, can_flip=False))
    assert flipped[32, 60, 1] == 0 and kept[32, 4, 1] == 0


# ----------------------------------------------------------------------------- false negatives
def test_perceptual_hashes_match_a_re_encoded_photo_not_a_look_alike(tmp_path, rows):
    shoes = [r for r in rows if r["category"][-1] == "Casual Shoes"][:2]
    img = Image.open(SAMPLE_DIR / shoes[0]["image"]).convert("RGB")
    img.resize((img.width * 9 // 10, img.height * 9 // 10)).save(tmp_path / "re.jpg", "JPEG", quality=60)
    re_encoded = Image.open(tmp_path / "re.jpg").convert("RGB")
    assert hamming(dhash(img), dhash(re_encoded)) <= 4 and hamming(phash(img), phash(re_encoded)) <= 4
    paths = [SAMPLE_DIR / shoes[0]["image"], tmp_path / "re.jpg", SAMPLE_DIR / shoes[1]["image"]]
    clusters = near_duplicate_clusters([image_signature(str(p)) for p in paths])
    assert clusters[0] == clusters[1] != clusters[2]  # another white-background shoe is not a copy
    assert image_signature(str(tmp_path / "missing.jpg")) is None


def test_the_catalog_re_listing_groups_are_found_by_their_photos(rows):
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("group"):
            groups.setdefault(r["group"], []).append(r)
    picked = [r for g in sorted(groups)[:6] for r in groups[g]]
    sigs = [image_signature(str(SAMPLE_DIR / r["image"])) for r in picked]
    clusters = near_duplicate_clusters(sigs)
    same = [clusters[i] == clusters[j] for i in range(len(picked)) for j in range(len(picked))
            if i < j and picked[i]["group"] == picked[j]["group"]]
    assert sum(same) >= len(same) - 1  # one catalog group pair differs in pHash by 16 bits


def test_duplicate_keys_and_mask():
    assert normalise_title("  Puma MEN  white-Shoes!! ") == normalise_title("puma men white shoes")
    keys = duplicate_keys(groups=[None, None, "g", "g", None], image_sha1s=["a", "a", "b", "c", "d"],
                          titles=["x", "y", "z", "w", "Y!"], signals=["group", "image", "title"])
    m = false_negative_mask(torch.from_numpy(keys.keys))
    expected = {(0, 1), (2, 3), (1, 4)}
    got = {(i, j) for i in range(5) for j in range(5) if i < j and m[i, j]}
    assert got == expected and keys.pairs() == 3
    assert not m.diagonal().any()
    with pytest.raises(ValueError, match="signatures"):
        duplicate_keys(groups=[None], image_sha1s=["a"], titles=["t"], signals=["phash"])


def test_build_pairs_finds_copied_listings(tmp_path, rows):
    base = rows[:6]
    copy = dict(base[0], id="copy-of-0", group=None)  # same photo file contents, new id
    cat = Catalog.load(write_catalog(tmp_path, [*base, copy]))
    cfg = TrainConfig(cache_dir=str(tmp_path / "cache"))
    pairs = build_pairs(cat, cat.products, cfg, num_workers=1)
    m = false_negative_mask(torch.from_numpy(pairs.keys.keys))
    i, j = cat.ids.index(base[0]["id"]), cat.ids.index("copy-of-0")
    assert m[i, j] and pairs.keys.signals == ("group", "image", "phash", "title")


# ----------------------------------------------------------------------------- feature cache
def test_feature_cache_is_keyed_by_content_and_tower(tmp_path, rows):
    src = [SAMPLE_DIR / r["image"] for r in rows[:5]]
    for p in src:
        shutil.copyfile(p, tmp_path / p.name)
    model = tiny_model().eval()  # eval: BatchNorm uses its running statistics, as the cache does
    from shopclip.core.hashing import file_sha1

    items = [ImageItem(str(tmp_path / p.name), file_sha1(tmp_path / p.name)) for p in src]
    cache = FeatureCache(tmp_path / "c", "image", image_fingerprint(model), 24)
    assert compute_image_features(model, items, [CLEAN_VIEW], cache, aug=AugmentConfig(), seed=0,
                                  batch_size=2, num_workers=1) == 5
    with torch.no_grad():
        direct = model.image_tower(torch.stack([model.preprocess(it.path) for it in items])).numpy()
    np.testing.assert_allclose(cache.get([view_key(it.sha1, CLEAN_VIEW) for it in items]), direct, atol=1e-5)
    # a renamed file is a hit (content hash); a new process sees the shards
    (tmp_path / src[0].name).rename(tmp_path / "renamed.jpg")
    moved = [ImageItem(str(tmp_path / "renamed.jpg"), items[0].sha1), *items[1:]]
    again = FeatureCache(tmp_path / "c", "image", image_fingerprint(model), 24)
    assert compute_image_features(model, moved, [CLEAN_VIEW], again, aug=AugmentConfig(), seed=0) == 0
    # a damaged shard is ignored rather than fatal
    (again.folder / "shard-broken.npz").write_bytes(b"not a zip")
    assert len(FeatureCache(tmp_path / "c", "image", image_fingerprint(model), 24)) == 5
    # other weights → another namespace; text keys hash the text
    with torch.no_grad():
        model.image_tower.head[0].weight.add_(0.01)
    assert image_fingerprint(model)[:20] != again.folder.name.split("-", 1)[1]
    tcache = FeatureCache(tmp_path / "c", "text", text_fingerprint(model), 16)
    assert compute_text_features(model, ["red shoe", "blue bag", "red shoe"], tcache) == 2
    assert "red shoe" not in tcache and text_key("red shoe") in tcache
    again.compact()
    left = sorted(p.name for p in again.folder.glob("shard-*.npz"))
    assert len(left) == 2 and "shard-broken.npz" in left and len(again) == 5  # merged into one (+ the foreign file)


def test_leaf_batches_are_runs_of_one_leaf_and_cover_the_epoch():
    from shopclip.train.data import leaf_batches

    leaves = np.repeat(np.arange(5), [40, 40, 20, 10, 10])  # 120 products in 5 leaf categories
    batches = leaf_batches(7, 2, leaves, 32, 8)
    assert [len(b) for b in batches] == [32, 32, 32]  # the ragged tail (24) is dropped, as epoch_batches does
    assert all(np.array_equal(x, y) for x, y in zip(batches, leaf_batches(7, 2, leaves, 32, 8), strict=True))
    assert not np.array_equal(batches[0], leaf_batches(7, 3, leaves, 32, 8)[0])
    flat = np.concatenate(batches)
    assert len(set(flat.tolist())) == len(flat)  # no product twice in an epoch
    # runs of ≤ 8 from one leaf laid end to end: few leaf changes inside a batch, unlike a random order
    def switches(b: np.ndarray) -> int:
        return int((np.diff(leaves[b]) != 0).sum())

    assert max(switches(b) for b in batches) <= 6
    assert min(switches(b) for b in epoch_batches(7, 2, 120, 32)) > 12


def test_second_views_differ_from_the_first():
    from shopclip.train.data import pick_other_views

    first = pick_views(0, 1, np.arange(200), 2, 0.5)
    second = pick_other_views(0, 1, np.arange(200), 2, first)
    assert all(a != b for a, b in zip(first, second, strict=True)) and set(second) == {0, 1, 2}
    assert pick_other_views(0, 1, np.arange(3), 0, [0, 0, 0]) == [0, 0, 0]
