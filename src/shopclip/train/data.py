"""Training pairs from a catalog: texts per template, group-aware split, deterministic order.

Everything random here is a pure function of (seed, epoch, product index): the epoch
order, which augmented view and which text variant a pair uses. A resumed run and an
uninterrupted one therefore see exactly the same batches, whatever the number of
workers, and the rank slices of a global batch concatenate to the single-process batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shopclip.catalog import Catalog, Product
from shopclip.catalog.photos import photo_groups
from shopclip.catalog.splits import ensure_splits, group_key
from shopclip.core.hashing import file_sha1, sha1_bytes
from shopclip.models.augment import AugmentConfig, flip_allowed, view_rng
from shopclip.models.features import CLEAN_VIEW, FeatureCache, ImageItem, default_cache_dir
from shopclip.train.config import TextConfig, TrainConfig
from shopclip.train.false_negatives import (
    SIGNATURE_BYTES,
    DuplicateKeys,
    ImageSignature,
    duplicate_keys,
    image_signature,
    row_to_signature,
    signature_to_row,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- text
def _squash(text: str) -> str:
    return " ".join(str(text).split())


def render_text(p: Product, fields: Sequence[str], cfg: TextConfig) -> str:
    """The product's text from the chosen fields, in the same shape as `Product.text()`.

    With the default config and all four fields this equals `Product.text()`, the text
    `shopclip embed` indexes, so training and indexing see the same strings. A product
    carrying ``extra["full_text"]`` (enriched text from the build's enrich stage) uses it
    as its full text, again matching what the embed stage indexes.
    """
    if p.extra.get("full_text") and list(fields) == list(cfg.fields):
        return str(p.extra["full_text"])
    parts: list[str] = []
    title = _squash(p.title)
    for f in fields:
        if f == "title":
            parts.append(title)
        elif f == "category" and p.category:
            cats = p.category[-cfg.category_levels :] if cfg.category_levels > 0 else p.category
            parts.append(" > ".join(cats))
        elif f == "attributes":
            items = p.attributes.items() if cfg.attribute_keys is None else (
                (k, p.attributes[k]) for k in cfg.attribute_keys if k in p.attributes)
            attrs = "; ".join(f"{k.replace('_', ' ')}: {_squash(v)}" for k, v in items
                              if str(v).strip() and k not in cfg.attribute_exclude)
            if attrs:
                parts.append(attrs)
        elif f == "description":
            desc = _squash(p.description)
            if cfg.description_chars > 0:
                desc = desc[: cfg.description_chars]
            if desc and desc != title:
                parts.append(desc)
    text = ". ".join(x.rstrip(". ") for x in parts if x)
    return text + "." if text else title


def text_variants(p: Product, cfg: TextConfig) -> list[str]:
    """[full text, variant 1, …]; index 0 is what validation and indexing use."""
    return [render_text(p, cfg.fields, cfg), *(render_text(p, v, cfg) for v in cfg.variants)]


# ----------------------------------------------------------------------------- splits
def split_names(spec: str) -> set[str]:
    """"train" → {"train"}; "train+val" → {"train", "val"} (a final fit on every non-test product); "" → none."""
    return {s.strip() for s in spec.split("+") if s.strip()}


def split_catalog(catalog: Catalog, train: str = "train", val: str = "val") -> tuple[list[Product], list[Product]]:
    """(train, val) products: the catalog's own `split` where present, else a group-aware hash split.

    ``train`` may join splits with ``+`` (``train+val``: the final fit once every hyper-parameter
    was chosen on val; pass ``val=""`` then, as no product can be on both sides). Raises if a
    declared product group straddles the two sides (that would leak duplicates). A train
    product whose photo is byte-identical to a product of another split
    (:mod:`shopclip.catalog.photos`; the sample has a few such Flipkart twins) is left out of
    training, so no held-out product's exact photo is trained on.
    """
    cat = ensure_splits(catalog)
    train_set, val_set = split_names(train), split_names(val)
    both = train_set & val_set
    if both:
        raise ValueError(f"split(s) {sorted(both)} cannot be trained on and validated on at once")
    tr = [p for p in cat.products if p.split in train_set]
    va = [p for p in cat.products if p.split in val_set]
    leak = {group_key(p) for p in tr} & {group_key(p) for p in va}
    if leak:
        raise ValueError(f"{len(leak)} product groups are in both {train!r} and {val!r} (e.g. {sorted(leak)[:3]})")
    groups = photo_groups(cat)
    held = {groups.key[p.id] for p in cat.products if p.split not in train_set}
    kept = [p for p in tr if groups.key[p.id] not in held]
    if len(kept) < len(tr):
        log.info("left %d train products out of training: their photos are byte-identical to held-out products'",
                 len(tr) - len(kept))
    return kept, va


# ----------------------------------------------------------------------------- pairs
@dataclass
class PairSet:
    """Products prepared for training or validation: images, text variants, duplicate keys."""

    products: list[Product]
    items: list[ImageItem]
    texts: list[list[str]]  # per product: [full, variant1, …]
    keys: DuplicateKeys
    leaves: np.ndarray | None = None  # (N,) int leaf-category id per product (-1: none)

    def __len__(self) -> int:
        return len(self.products)


def cached_signatures(paths: Sequence[str], shas: Sequence[str], cache_dir: str | Path | None,
                      num_workers: int = 2) -> list[ImageSignature | None]:
    """Perceptual hashes + thumbnails, cached by content hash (decoding 8k photos takes seconds)."""
    cache = FeatureCache(cache_dir or default_cache_dir(), "signature", sha1_bytes(b"dhash-phash-thumb16-v1"),
                         SIGNATURE_BYTES, dtype="uint8")
    todo = [i for i, sha in enumerate(shas) if sha not in cache]
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            fresh = list(pool.map(image_signature, [paths[i] for i in todo]))
        good = [(shas[i], sig) for i, sig in zip(todo, fresh, strict=True) if sig is not None]
        if good:
            cache.add([sha for sha, _ in good], np.stack([signature_to_row(sig) for _, sig in good]))
    return [row_to_signature(cache.get([sha])[0]) if sha in cache else None for sha in shas]


def build_pairs(catalog: Catalog, products: list[Product], cfg: TrainConfig, *, num_workers: int = 2) -> PairSet:
    """Hash images, render texts and compute false-negative keys for a list of products."""
    paths = [str(catalog.image_path(p)) for p in products]
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        shas = list(pool.map(file_sha1, paths))
    need_sig = "phash" in cfg.fn_signals and cfg.fn_mode != "none"
    sigs = cached_signatures(paths, shas, cfg.cache_dir, num_workers) if need_sig else None
    no_flip = AugmentConfig().no_flip
    items = [ImageItem(path, sha, flip_allowed(f"{p.category_path} {p.title}", no_flip))
             for p, path, sha in zip(products, paths, shas, strict=True)]
    signals = [s for s in cfg.fn_signals if s != "phash" or sigs is not None] if cfg.fn_mode != "none" else []
    keys = duplicate_keys(groups=[p.group for p in products], image_sha1s=shas, titles=[p.title for p in products],
                          signatures=sigs, signals=signals)
    table: dict[str, int] = {}
    leaves = np.array([table.setdefault(p.category_path, len(table)) if p.category else -1 for p in products],
                      dtype=np.int64)
    return PairSet(products, items, [text_variants(p, cfg.text) for p in products], keys, leaves)


# ----------------------------------------------------------------------------- order
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The epoch's permutation of product indices (same on every rank and after a resume)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, 0x5EED, epoch]).permutation(n)


def epoch_batches(seed: int, epoch: int, n: int, batch_size: int) -> list[np.ndarray]:
    """Full global batches of the epoch (the ragged tail is dropped: InfoNCE wants equal batches).

    Callers clamp `batch_size` to the data size first (see `effective_batch_size`).
    """
    order = epoch_order(seed, epoch, n)
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def leaf_batches(seed: int, epoch: int, leaves: np.ndarray, batch_size: int, chunk: int) -> list[np.ndarray]:
    """Batches made of runs of ``chunk`` products from one leaf category (harder in-batch negatives).

    Each leaf's products are shuffled and cut into runs; the runs are shuffled and laid
    end to end, then cut into full batches. So a batch of 512 with runs of 32 holds ~16
    leaves, and every text meets ~31 look-alikes of its own kind among the negatives.
    A pure function of (seed, epoch, leaves), like :func:`epoch_batches`.
    """
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x1EAF, epoch])
    runs: list[np.ndarray] = []
    for leaf in np.unique(leaves):
        idx = rng.permutation(np.flatnonzero(leaves == leaf))
        runs += [idx[i : i + chunk] for i in range(0, len(idx), chunk)]
    order = np.concatenate([runs[i] for i in rng.permutation(len(runs))]) if runs else np.zeros(0, np.int64)
    n = len(order)
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def effective_batch_size(batch_size: int, n: int, world: int) -> int:
    """The batch actually used: at most the data size, and a multiple of the world size."""
    b = min(batch_size, n)
    b -= b % world
    if b < 2:
        raise ValueError(f"{n} training pairs cannot make a batch of ≥ 2 across {world} processes")
    return b


def rank_slice(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's contiguous share of a global batch, so gathering in rank order restores it."""
    if len(batch) % world:
        raise ValueError(f"global batch {len(batch)} is not divisible by world size {world}")
    per = len(batch) // world
    return batch[rank * per : (rank + 1) * per]


def pick_views(seed: int, epoch: int, idx: np.ndarray, n_views: int, clean_p: float) -> list[int]:
    """Per pair: 0 = the clean image, k ≥ 1 = augmented view k."""
    out = []
    for i in idx.tolist():
        rng = view_rng(seed, "view", epoch, i)
        out.append(0 if n_views == 0 or rng.random() < clean_p else int(rng.integers(1, n_views + 1)))
    return out


def pick_other_views(seed: int, epoch: int, idx: np.ndarray, n_views: int, first: Sequence[int]) -> list[int]:
    """Per pair: a second view (0 = clean, k = augmented k) different from ``first`` when there are two."""
    out = []
    for i, v in zip(idx.tolist(), first, strict=True):
        if n_views == 0:
            out.append(0)
            continue
        rng = view_rng(seed, "view2", epoch, i)
        out.append(int((v + 1 + rng.integers(0, n_views)) % (n_views + 1)))
    return out


def pick_texts(seed: int, epoch: int, idx: np.ndarray, n_variants: int, full_p: float) -> list[int]:
    """Per pair: 0 = the full text, k ≥ 1 = text variant k."""
    out = []
    for i in idx.tolist():
        rng = view_rng(seed, "text", epoch, i)
        out.append(0 if n_variants <= 1 or rng.random() < full_p else int(rng.integers(1, n_variants)))
    return out


def view_names(n_views: int, aug: AugmentConfig, seed: int) -> list[str]:
    """Cache names of [clean, aug1, …, augN]."""
    from shopclip.models.features import aug_view_name

    return [CLEAN_VIEW, *(aug_view_name(aug, seed, k) for k in range(1, n_views + 1))]


def keys_tensor(pairs: PairSet, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pairs.keys.keys[idx]).long()
