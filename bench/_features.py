"""Tower features of a whole catalog, through the trainer's on-disk cache (featurise once, reuse).

`catalog_features(catalog, model, cache_dir)` returns, for every product in catalog order,
the clean-photo image features and the text features of the full product text and of the
bare title; `fill_training_views` adds the augmented views the trainer reads for the
train split. Both only compute what the cache lacks, so every arm of a benchmark that
shares a tower pays for it once.

    python bench/_features.py --model minilm-efflite0-ml   # fill the cache for one architecture
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass
class CatalogFeatures:
    image: np.ndarray  # (n, d_image) clean photo
    full: np.ndarray  # (n, d_text) Product.text(): title, category, attributes, description
    title: np.ndarray | None  # (n, d_text) the bare title (None when only full texts were featurised)


def _items(catalog, products):
    from shopclip.core.hashing import file_sha1
    from shopclip.models.augment import AugmentConfig, flip_allowed
    from shopclip.models.features import ImageItem

    no_flip = AugmentConfig().no_flip
    return [ImageItem(str(catalog.image_path(p)), file_sha1(catalog.image_path(p)),
                      flip_allowed(f"{p.category_path} {p.title}", no_flip)) for p in products]


def catalog_features(catalog, model, cache_dir: str | None, products=None, progress: bool = True,
                     variants: bool = True) -> CatalogFeatures:
    """``variants=False`` featurises only the full text (an expensive text tower's arm trains on it alone);
    the title features are then None."""
    from shopclip.models.augment import AugmentConfig
    from shopclip.models.features import (
        CLEAN_VIEW,
        FeatureCache,
        compute_image_features,
        compute_text_features,
        default_cache_dir,
        image_fingerprint,
        text_fingerprint,
        text_key,
        view_key,
    )
    from shopclip.train.config import TextConfig
    from shopclip.train.data import render_text, text_variants

    products = catalog.products if products is None else products
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    items = _items(catalog, products)
    ic = FeatureCache(root, "image", image_fingerprint(model), model.image_tower.output_dim)
    compute_image_features(model, items, [CLEAN_VIEW], ic, aug=AugmentConfig(), seed=0, progress=progress)
    tcfg = TextConfig()
    texts = [text_variants(p, tcfg) for p in products]
    titles = [render_text(p, ["title"], tcfg) for p in products]
    tc = FeatureCache(root, "text", text_fingerprint(model), model.text_tower.output_dim)
    wanted = [t for v in texts for t in v] + titles if variants else [v[0] for v in texts]
    compute_text_features(model, wanted, tc, progress=progress)
    return CatalogFeatures(ic.get([view_key(it.sha1, CLEAN_VIEW) for it in items]),
                           tc.get([text_key(v[0]) for v in texts]),
                           tc.get([text_key(t) for t in titles]) if variants else None)


def fill_training_views(catalog, model, cache_dir: str | None, products, views: int = 2, seed: int = 0,
                        progress: bool = True) -> int:
    """The augmented views `shopclip train` caches for its train split (same names, same seeds)."""
    from shopclip.models.augment import AugmentConfig
    from shopclip.models.features import (
        FeatureCache,
        compute_image_features,
        default_cache_dir,
        image_fingerprint,
    )
    from shopclip.train.data import view_names

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    aug = AugmentConfig()
    ic = FeatureCache(root, "image", image_fingerprint(model), model.image_tower.output_dim)
    names = view_names(views, aug, seed)[1:]
    items = _items(catalog, products)
    return sum(compute_image_features(model, items, [v], ic, aug=aug, seed=seed, progress=progress) for v in names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-efflite0-ml")
    ap.add_argument("--catalog", default=str(Path(__file__).resolve().parents[2] / "shared/data/products/catalog.jsonl"))
    ap.add_argument("--cache-dir", default=None, help="feature cache root (as `shopclip train --cache-dir`)")
    ap.add_argument("--views", type=int, default=2, help="augmented views of each train photo (0: none)")
    ap.add_argument("--full-text-only", action="store_true", help="texts: the full product text only (no variants, "
                    "no titles)")
    a = ap.parse_args()
    from shopclip.catalog import Catalog
    from shopclip.models import create_model

    catalog = Catalog.load(a.catalog)
    model = create_model(a.model).eval()
    catalog_features(catalog, model, a.cache_dir, variants=not a.full_text_only)
    if a.views:
        fill_training_views(catalog, model, a.cache_dir, [p for p in catalog.products if p.split == "train"], a.views)


if __name__ == "__main__":
    main()
