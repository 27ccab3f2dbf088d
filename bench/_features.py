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


def derive_colour_features(catalog, base_model, colour_model, cache_dir: str | None, *, lower_blocks: int = 0,
                           progress: bool = True, check: int = 4) -> int:
    """Fill ``colour_model``'s cache from ``base_model``'s, appending the colour level (models/colour.py).

    A tower with a colour level outputs exactly its base tower's vector followed by the colour
    level, which depends on the pixels alone (tested), so every cached base vector (clean photos
    and augmented views alike, whatever their view names) becomes the colour tower's by decoding
    the same view once more — no CNN pass. With ``lower_blocks`` N it does the same for partial
    fine-tuning's cached lower-block outputs (``image-lowerN``). The first ``check`` results are
    compared with the colour tower's own forward pass and refused unless equal to 1e-3.
    """
    import torch

    from shopclip.models.augment import AugmentConfig
    from shopclip.models.features import FeatureCache, default_cache_dir, image_fingerprint, load_view
    from shopclip.models.partial import ImageTopSplit
    from shopclip.models.towers import LEVEL_NORM

    tower = colour_model.image_tower
    if tower.colour is None or colour_model.transform != base_model.transform:
        raise ValueError("the colour model must be the base model's tower plus a colour level, same preprocessing")
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    if lower_blocks:
        base_split, split = ImageTopSplit(base_model.image_tower, lower_blocks), ImageTopSplit(tower, lower_blocks)
        kind, dims, dtype = f"image-lower{lower_blocks}", (base_split.dim, split.dim), "float16"
    else:
        split = None
        kind, dims, dtype = "image", (base_model.image_tower.output_dim, tower.output_dim), "float32"
    src = FeatureCache(root, kind, image_fingerprint(base_model), dims[0], dtype=dtype)
    dst = FeatureCache(root, kind, image_fingerprint(colour_model), dims[1], dtype=dtype)
    items = {it.sha1: it for it in _items(catalog, catalog.products)}
    todo = [k for k in src._index if k not in dst and k.split(":", 1)[0] in items]
    if not todo:
        return 0
    aug = AugmentConfig()
    grid = split.grid if split is not None else tuple(
        tower.net.extract_features(torch.zeros(1, 3, tower.transform.size, tower.transform.size)).shape[-2:])

    def colour_of(pixels: torch.Tensor) -> torch.Tensor:
        hist = tower.colour(pixels, grid).mean(dim=(2, 3))
        return hist if split is not None else hellinger(hist) * LEVEL_NORM

    def pixels_of(key: str) -> torch.Tensor:
        sha, view = key.split(":", 1)
        return load_view(items[sha], view, colour_model, aug, 0)

    from concurrent.futures import ThreadPoolExecutor

    from shopclip.models.colour import hellinger

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"derive {kind} + colour", unit="item")
    tower.eval()
    with ThreadPoolExecutor(max_workers=2) as pool, torch.inference_mode():
        for s in range(0, len(todo), 512):
            keys = todo[s : s + 512]
            px = torch.stack(list(pool.map(pixels_of, keys)))
            vec = np.concatenate([src.get(keys).astype(np.float32), colour_of(px).numpy()], axis=1)
            if s == 0 and check:  # the layout and the colour level against the colour tower's own forward pass
                real = (split.lower(px[:check]) if split is not None else tower(px[:check])).numpy()
                base_err = np.abs(real[:, : dims[0]] - vec[:check, : dims[0]]) / (np.abs(real[:, : dims[0]]) + 1e-2)
                colour_err = float(np.abs(real[:, dims[0] :] - vec[:check, dims[0] :]).max())
                if float(base_err.max()) > (2e-2 if dtype == "float16" else 1e-3) or colour_err > 1e-4:
                    raise RuntimeError(f"derived {kind} features differ from the colour tower's: base rel. "
                                       f"{float(base_err.max()):.2g}, colour {colour_err:.2g}")
            dst.add(keys, vec)
            if bar is not None:
                bar.update(len(keys))
    if bar is not None:
        bar.close()
    return len(todo)


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
