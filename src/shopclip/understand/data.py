"""A labelled catalog as the understanding jobs read it: products, their listing vectors,
identities for matching, and synthetic re-listings for the matcher's positives."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shopclip.catalog import Catalog, Product, RowError, group_key
from shopclip.core.hashing import file_sha1
from shopclip.heads.features import ListingEncoder, Views, listing_text, make_views


@dataclass
class Listings:
    """Parallel arrays over a set of listings (catalog products or synthetic re-listings)."""

    ids: list[str]
    views: Views
    identity: list[str]  # the same string = the same product (catalog `group`, else the id)
    hashes: list[str]  # content hash of each photo file
    categories: list[str]
    records: list[dict[str, Any]]  # what a job shows of each: title, category, attributes, labels
    images: list[str]  # photo files, for the keypoint check

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: Sequence[int]) -> Listings:
        idx = list(idx)
        return Listings([self.ids[i] for i in idx], {v: x[idx] for v, x in self.views.items()},
                        [self.identity[i] for i in idx], [self.hashes[i] for i in idx],
                        [self.categories[i] for i in idx], [self.records[i] for i in idx],
                        [self.images[i] for i in idx])

    @staticmethod
    def concat(parts: Sequence[Listings]) -> Listings:
        return Listings([i for p in parts for i in p.ids],
                        {v: np.concatenate([p.views[v] for p in parts]) for v in parts[0].views},
                        [i for p in parts for i in p.identity], [h for p in parts for h in p.hashes],
                        [c for p in parts for c in p.categories], [r for p in parts for r in p.records],
                        [f for p in parts for f in p.images])

    def photo_checks(self, workers: int = 2) -> Callable[[np.ndarray], np.ndarray]:
        """``pairs -> [inliers, colour distance]`` over these listings' photos (keypoints computed
        once per photo, on first use; see :mod:`shopclip.heads.photomatch`)."""
        from shopclip.heads.photomatch import KeypointCache, compare_pairs

        cache = KeypointCache(lambda key: key, size=max(4096, 2 * len(self)))
        return lambda pairs: compare_pairs(lambda i: cache.get(self.images[i]), pairs, workers=workers)


def record(p: Product) -> dict[str, Any]:
    return {"title": p.title, "category": p.category_path or None, "attributes": dict(p.attributes),
            "labels": dict(p.labels)}


def encode_products(products: Sequence[Product], catalog: Catalog, encoder: ListingEncoder,
                    progress: bool = False) -> Listings:
    paths = [catalog.image_path(p) for p in products]
    hashes = [file_sha1(p) for p in paths]
    image = encoder.images(paths, hashes, progress=progress)
    text = encoder.texts([listing_text(p.title, p.description) for p in products], progress=progress)
    return Listings([p.id for p in products], make_views(image, text), [group_key(p) for p in products], hashes,
                    [p.category_path for p in products], [record(p) for p in products], [str(x) for x in paths])


def encode_or_report(products: Sequence[Product], catalog: Catalog, encoder: ListingEncoder,
                     progress: bool = False) -> tuple[Listings, list[RowError]]:
    """:func:`encode_products`, but a photo that cannot be read costs only its own row: it is
    reported as a bad row (line, field, reason, like ``shopclip validate``) and the rest is encoded."""
    bad: list[RowError] = []
    ok: list[Product] = []
    for p in products:
        try:
            file_sha1(catalog.image_path(p))
            ok.append(p)
        except OSError as e:
            bad.append(RowError(p.line, "image", f"unreadable image: {e.strerror or e}", p.id, p.image))
    try:
        return encode_products(ok, catalog, encoder, progress=progress), bad
    except Exception:  # one undecodable photo fails its batch: find it, keep the others
        good: list[Listings] = []
        for p in ok:
            try:
                good.append(encode_products([p], catalog, encoder))
            except Exception as e:  # PIL raises many types for broken files
                bad.append(RowError(p.line, "image", f"unreadable image: {type(e).__name__}: {e}", p.id, p.image))
        empty = encode_products([], catalog, encoder)
        return (Listings.concat(good) if good else empty), sorted(bad, key=lambda e: e.line)


def encode_relistings(relistings: Sequence[Any], sources: Listings, encoder: ListingEncoder,
                      progress: bool = False) -> Listings:
    """Vectors of synthetic re-listings (``shopclip.eval.synthetic.Relisting``), which carry their source's identity."""
    at = {pid: i for i, pid in enumerate(sources.ids)}
    src = [at[r.source_id] for r in relistings]
    paths = [Path(r.image) for r in relistings]
    hashes = [file_sha1(p) for p in paths]
    image = encoder.images(paths, hashes, progress=progress)
    text = encoder.texts([listing_text(r.title, r.description) for r in relistings], progress=progress)
    records = [{**sources.records[i], "title": r.title, "synthetic_of": r.source_id} for r, i in zip(relistings, src, strict=True)]
    return Listings([r.id for r in relistings], make_views(image, text), [sources.identity[i] for i in src], hashes,
                    [sources.categories[i] for i in src], records, [str(x) for x in paths])


def labelled_pairs(items: Listings, pairs: np.ndarray) -> np.ndarray:
    """1 where both listings of a pair are the same product, else 0."""
    return np.asarray([items.identity[a] == items.identity[b] for a, b in np.asarray(pairs).tolist()], dtype=np.int64)


__all__ = ["Listings", "encode_products", "encode_relistings", "labelled_pairs", "record"]
