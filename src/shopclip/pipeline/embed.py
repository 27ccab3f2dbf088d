"""Embed a catalog into an EmbeddingStore: batched, threaded decode, resumable by content hash."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shopclip.catalog import Catalog, Product
from shopclip.core.hashing import file_sha1, sha1_bytes
from shopclip.index.store import DTYPES, EmbeddingStore
from shopclip.models import DualEncoder
from shopclip.models.augment import AugmentConfig
from shopclip.models.features import (
    CLEAN_VIEW,
    FeatureCache,
    ImageItem,
    compute_image_features,
    compute_text_features,
    image_fingerprint,
    model_fingerprint,
    text_fingerprint,
    text_key,
    view_key,
)

__all__ = ["EmbedResult", "EmbedTask", "StoreConflictError", "commit_embeddings", "embed_catalog", "fused_vectors",
           "model_fingerprint", "open_store", "plan_embedding", "product_hash", "product_meta"]

log = logging.getLogger(__name__)


@dataclass
class EmbedResult:
    total: int
    embedded: int
    skipped: int
    store: Path
    replaced: str | None = None  # the other model whose embeddings were deleted first
    failed: dict[str, str] = field(default_factory=dict)  # product id → why it was not embedded (retried next run)
    returned: int | None = None  # rows the workers sent back (a block runner): embedded + failed when none doubled

    def summary(self) -> str:
        s = f"{self.total} products: {self.embedded} embedded, {self.skipped} already up to date → {self.store}"
        if self.failed:
            first = next(iter(self.failed.items()))
            s += f"; {len(self.failed)} failed (e.g. {first[0]}: {first[1]}), tried again next run"
        if self.replaced:
            s += f"; deleted the old embeddings of another model, {self.replaced}"
        return s


def product_meta(p: Product, catalog: Catalog) -> dict:
    """What search results and the server show, so they never re-read the catalog."""
    return {
        "id": p.id, "title": p.title, "category": p.category_path, "image": str(catalog.image_path(p)),
        "description": p.description[:500], "attributes": p.attributes, "group": p.group, "split": p.split,
        "labels": p.labels, "url": p.url, "price": p.price,
    }


def product_hash(p: Product, text: str, image_hash: str, fingerprint: str) -> str:
    return sha1_bytes("\x1f".join([fingerprint, text, image_hash]).encode())


def embed_catalog(
    catalog: Catalog,
    out: str | Path,
    model: DualEncoder,
    *,
    texts: dict[str, str] | None = None,
    images: dict[str, Path] | None = None,
    dtype: str = "float16",
    chunk: int = 128,
    flush_seconds: float = 30.0,
    image_batch_size: int = 16,
    text_batch_size: int = 64,
    num_workers: int = 4,
    progress: bool = True,
    feature_cache: str | Path | None = None,
) -> EmbedResult:
    """Embed every product's image and text; products whose content hash is stored are skipped.

    `texts` / `images` override a product's text or image (enriched text, grounded crops);
    they are part of the content hash, so changing them re-embeds only those products.
    With `feature_cache` (a folder), tower outputs are read from / added to the trainer's
    feature cache (keyed by tower weights + content), so re-embedding after training new
    heads, or after the train stage featurised the same photos, costs only the heads.
    Progress is committed every `chunk` products or about every `flush_seconds`, whichever
    comes first, so an interrupted run resumes close to where it stopped.
    """
    store, replaced = open_store(out, model, dtype)
    todo = plan_embedding(catalog, store, texts=texts, images=images)
    cached = _CachedTowers(model, feature_cache) if feature_cache is not None and todo else None
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="product", desc="embed")
    try:
        start, size = 0, chunk
        while start < len(todo):
            part = todo[start : start + size]
            t0 = time.monotonic()
            if cached is not None:
                img_vecs = cached.images([(str(x.image), x.image_sha1) for x in part], image_batch_size, num_workers)
                txt_vecs = cached.texts([x.text for x in part], text_batch_size)
            else:
                img_vecs = model.encode_image([x.image for x in part], batch_size=image_batch_size,
                                              num_workers=num_workers)
                txt_vecs = model.encode_text([x.text for x in part], batch_size=text_batch_size)
            commit_embeddings(store, catalog, part, img_vecs, txt_vecs)
            start += len(part)
            # Each part is a commit: a kill loses at most one part's work. Keep parts under
            # ~flush_seconds on slow machines or big models, never above `chunk` products.
            took = time.monotonic() - t0
            if took > 0:
                size = max(min(8, chunk), min(chunk, int(len(part) * flush_seconds / took)))
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    store.compact(keep_ids=catalog.ids)
    return EmbedResult(total=len(catalog), embedded=len(todo), skipped=len(catalog) - len(todo), store=Path(out),
                       replaced=replaced)


@dataclass(frozen=True)
class EmbedTask:
    """One product still to embed: its text and image as the towers will see them, and its content hash."""

    product: Product
    text: str
    image: Path
    hash: str
    image_sha1: str


def open_store(out: str | Path, model: DualEncoder, dtype: str) -> tuple[EmbeddingStore, str | None]:
    """The store at `out` for this model (created, or reopened to resume); another model's is replaced.

    Returns the store and the replaced model's name (None when nothing was deleted).
    """
    out = Path(out)
    if dtype not in DTYPES:  # before anything on disk is touched
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    fp = model_fingerprint(model)
    info = {"name": model.name, "config": model.config.to_dict(), "engine": model.engine.name}
    replaced = _replace_other_model(out, fp, model.embed_dim, dtype)
    return EmbeddingStore.create(out, model=fp, dim=model.embed_dim, dtype=dtype, model_info=info), replaced


def plan_embedding(catalog: Catalog, store: EmbeddingStore, *, texts: dict[str, str] | None = None,
                   images: dict[str, Path] | None = None) -> list[EmbedTask]:
    """The products whose content hash the store does not hold yet, in catalog order (what a resumed run redoes)."""
    texts = texts or {}
    images = images or {}
    have = store.hashes()
    todo: list[EmbedTask] = []
    for p in catalog:
        text = texts.get(p.id) or p.text()
        img = Path(images.get(p.id) or catalog.image_path(p))
        img_sha1 = file_sha1(img)
        h = product_hash(p, text, img_sha1, store.model)
        if have.get(p.id) != h:
            todo.append(EmbedTask(p, text, img, h, img_sha1))
    return todo


def commit_embeddings(store: EmbeddingStore, catalog: Catalog, tasks: list[EmbedTask], image_vecs: np.ndarray,
                      text_vecs: np.ndarray) -> None:
    """Append one finished block as a store part (its commit point), with the meta search results show."""
    store.append(
        [t.product.id for t in tasks], [t.hash for t in tasks], {"image": image_vecs, "text": text_vecs},
        [product_meta(t.product, catalog) | {"text": t.text, "image": str(t.image)} for t in tasks],
    )


class StoreConflictError(ValueError):
    """The folder holds embeddings that must not be replaced silently (same model, another dtype)."""


def _replace_other_model(out: Path, fingerprint: str, dim: int, dtype: str) -> str | None:
    """Delete a store at `out` made by another model (its vectors are useless now); say which.

    Returns the old model's name when it deleted one. A store of the same model at another
    dtype is not deleted: that is a ValueError naming both, so a typo costs nothing.
    """
    if not (out / "manifest.json").exists():
        return None
    old = EmbeddingStore.open(out)  # a foreign or damaged folder raises here, untouched
    if old.model == fingerprint and old.dim == dim:
        if old.dtype != dtype:
            raise StoreConflictError(f"{out} holds {old.dtype} embeddings of this model; asked for {dtype}: "
                             f"pass --dtype {old.dtype}, or delete {out} to re-embed at {dtype}")
        return None
    name = old.manifest.get("model_info", {}).get("name") or "?"
    what = f"{name} ({old.dim}-d, fingerprint {old.model[:10]})"
    log.warning("%s holds %d embeddings of another model, %s; deleting them to re-embed with %s",
                out, len(old), what, fingerprint[:10])
    del old  # drop its memory maps before the files go
    shutil.rmtree(out)
    return what


class _CachedTowers:
    """Tower features through the on-disk feature cache, then the model's heads."""

    def __init__(self, model: DualEncoder, root: str | Path) -> None:
        self.model = model.eval()  # inference only: dropout in MLP heads off
        self.engine = model.engine  # tower features from the model's inference engine (torch, onnx, onnx-int8)
        self.image_cache = FeatureCache(root, "image", image_fingerprint(model, self.engine), model.image_tower.output_dim)
        self.text_cache = FeatureCache(root, "text", text_fingerprint(model, self.engine), model.text_tower.output_dim)

    def images(self, items: list[tuple[str, str]], batch_size: int, num_workers: int) -> np.ndarray:
        import torch

        its = [ImageItem(path, sha1) for path, sha1 in items]
        compute_image_features(self.model, its, [CLEAN_VIEW], self.image_cache, aug=AugmentConfig(), seed=0,
                               batch_size=batch_size, num_workers=num_workers, engine=self.engine)
        feats = torch.from_numpy(self.image_cache.get([view_key(it.sha1, CLEAN_VIEW) for it in its]))
        with torch.inference_mode():
            return self.model.project_image(feats).numpy()

    def texts(self, texts: list[str], batch_size: int) -> np.ndarray:
        import torch

        compute_text_features(self.model, texts, self.text_cache, batch_size=batch_size, engine=self.engine)
        feats = torch.from_numpy(self.text_cache.get([text_key(t) for t in texts]))
        with torch.inference_mode():
            return self.model.project_text(feats).numpy()


def fused_vectors(store: EmbeddingStore) -> np.ndarray:
    """Mean of the image and text embeddings, re-normalised: a product seen both ways."""
    v = store.vectors("image") + store.vectors("text")
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

