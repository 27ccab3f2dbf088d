"""Deterministic, group-aware train/val/test splits.

A product's split depends only on a hash of its group (or id), so it never changes
when the catalog grows, and re-listed copies of one product (same group) never
straddle train and test — that would leak test products into training.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter, defaultdict

from shopclip.catalog.schema import Catalog, Product

DEFAULT_SALT = "shopclip-products-v1"
SPLIT_NAMES = ("train", "val", "test")


def group_key(p: Product) -> str:
    """What the split hash is keyed on: the product's group, else its own id."""
    return p.group if p.group else p.id


def assign_split(key: str, salt: str = DEFAULT_SALT, ratios: tuple[int, int, int] = (8, 1, 1)) -> str:
    """sha1(f"{salt}:split:{key}") first 12 hex digits mod sum(ratios) -> train/val/test buckets.

    With the default (8, 1, 1) this is exactly the rule the sample catalog was made with.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative integers with a positive sum, got {ratios}")
    digest = hashlib.sha1(f"{salt}:split:{key}".encode()).hexdigest()
    bucket = int(digest[:12], 16) % sum(ratios)
    if bucket < ratios[0]:
        return "train"
    if bucket < ratios[0] + ratios[1]:
        return "val"
    return "test"


def ensure_splits(
    catalog: Catalog, salt: str = DEFAULT_SALT, ratios: tuple[int, int, int] = (8, 1, 1), photos: bool = True
) -> Catalog:
    """A copy of the catalog where every product has a split; existing values are kept.

    A product without a split joins the split its group already uses (the most common
    one, if the catalog itself is inconsistent), else the hashed one for its group key.
    With ``photos`` (default), products whose photos are byte-identical count as one
    group (:mod:`shopclip.catalog.photos`), so identical listings never straddle splits.
    """
    keys = {p.id: group_key(p) for p in catalog.products}
    if photos and any(p.split is None for p in catalog.products):
        from shopclip.catalog.photos import photo_groups

        keys = photo_groups(catalog).key
    by_group: dict[str, Counter[str]] = defaultdict(Counter)
    for p in catalog.products:
        if p.split is not None:
            by_group[keys[p.id]][p.split] += 1
    chosen: dict[str, str] = {}
    products = []
    for p in catalog.products:
        if p.split is None:
            key = keys[p.id]
            if key not in chosen:
                counts = by_group.get(key)
                chosen[key] = counts.most_common(1)[0][0] if counts else assign_split(key, salt, ratios)
            p = dataclasses.replace(p, split=chosen[key])
        products.append(p)
    return Catalog(products=products, root=catalog.root, source=catalog.source, errors=list(catalog.errors))


def split_leaks(catalog: Catalog) -> dict[str, set[str]]:
    """Groups whose members sit in more than one split (should be empty)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for p in catalog.products:
        if p.group and p.split:
            seen[p.group].add(p.split)
    return {g: s for g, s in seen.items() if len(s) > 1}
