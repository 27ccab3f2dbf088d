"""What the server holds in memory, how reads see it and how writes change it.

Reads never lock. They take the current `Snapshot` (indexes + product metadata) with
one attribute read and use only that; a snapshot is never mutated after it is published.
Writes are serialised by one lock and are copy-on-write: clone the indexes, change the
clone, persist, then publish a new snapshot. A search that started before a write
finishes on the old snapshot; one that starts after sees the new one.

Uploaded images are content-addressed files in `uploads/`, shared by products with the
same photo. A file is written before the store commit that first points at it, and
removed only after the commit that leaves no product pointing at it (a delete, or a
replaced photo): a crash between the two leaves an unused file, which the next start
collects, never a product without its image.

Durability: the embedding store is the log. An upsert or delete is acknowledged only
after its store part is committed (an atomic rename of the part's `.jsonl`, then an
fsync of the folder); the three indexes are saved right after, each atomically, but they
are a derived cache. On start, `reconcile` compares every index with the store (ids,
vectors, categories) and repairs and re-saves whatever a crash left behind, so a
restart serves exactly the committed writes, whichever instant the process died at.
"""

from __future__ import annotations

import copy
import io
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shopclip.catalog.schema import CATEGORY_SEP, Catalog
from shopclip.catalog.validation import validate_row
from shopclip.core.hashing import sha1_bytes
from shopclip.core.images import ImageError, open_image, size_problem
from shopclip.core.io import atomic_write_bytes, fsync_dir
from shopclip.index import create_index, load_index
from shopclip.index.base import VectorIndex, read_manifest
from shopclip.index.store import EmbeddingStore, l2_normalize
from shopclip.pipeline.embed import fused_vectors, model_fingerprint, product_hash, product_meta
from shopclip.pipeline.indexing import VIEWS
from shopclip.pipeline.workdir import WorkDir
from shopclip.serve.batching import QueryEmbedder, embed_texts
from shopclip.serve.errors import ApiError
from shopclip.serve.recommend import cluster_interests, event_weights, interleave

log = logging.getLogger(__name__)

# Ids of products created through the API: no separators, no leading dot, so an id can
# never be read as a path even by code that forgets it is not one.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)
UPLOAD_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif"}
UPLOADS = "uploads"
# Fields a client may not set on a product: the server derives them.
_SERVER_FIELDS = ("image",)
# Longest text a client may send per field (characters). Catalog titles run to ~200 and
# descriptions to a few thousand; a cap keeps the store, the tokenizer and every page small.
TEXT_LIMITS = {"title": 500, "description": 10_000, "category": 512, "url": 2048, "group": 256}
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_CHARS = 1000  # per name or value


def public_product(meta: dict[str, Any]) -> dict[str, Any]:
    """The product as clients see it: no server paths, an image URL instead."""
    out = {k: meta.get(k) for k in ("id", "title", "category", "description", "attributes", "group",
                                     "labels", "url", "price", "split")}
    out["attributes"] = out["attributes"] or {}
    out["labels"] = out["labels"] or {}
    out["description"] = out["description"] or ""
    out["category"] = out["category"] or ""
    out["image_url"] = image_url(meta["id"])
    return out


def image_url(product_id: str) -> str:
    from urllib.parse import quote

    return f"/products/{quote(product_id, safe='')}/image"


@dataclass
class Snapshot:
    """An immutable view for readers; a write publishes a new one instead of editing this."""

    version: int
    indexes: dict[str, VectorIndex]
    products: dict[str, dict[str, Any]]
    thresholds: dict[str, float] = field(default_factory=dict)  # per view, filled lazily

    @cached_property
    def categories(self) -> list[dict[str, Any]]:
        """Every category path and each of its prefixes, with product counts (filters match prefixes)."""
        counts: dict[str, int] = {}
        for meta in self.products.values():
            levels = [p.strip() for p in str(meta.get("category") or "").split(">") if p.strip()]
            for depth in range(1, len(levels) + 1):
                path = CATEGORY_SEP.join(levels[:depth])
                counts[path] = counts.get(path, 0) + 1
        return [{"path": p, "depth": p.count(CATEGORY_SEP) + 1, "count": n} for p, n in sorted(counts.items())]


class ServeState:
    """Loads a work folder once and answers queries and catalog updates over it."""

    def __init__(
        self,
        workdir: str | Path,
        *,
        model: Any = None,
        max_image_pixels: int = 40_000_000,
        min_image_size: int = 32,
        text_cache_size: int = 1024,
        batch_queries: bool = True,
        compact_every: int = 64,
        failpoint: Callable[[str], None] | None = None,
    ) -> None:
        """`model` may be a loaded DualEncoder (tests share one) or a reference; default: the
        work folder's. `failpoint(name)` is called at each step of a write, for crash tests."""
        self.workdir = WorkDir(Path(workdir).resolve())
        if not self.workdir.exists() or not self.workdir.embeddings.exists():
            raise FileNotFoundError(
                f"{self.workdir.root} is not a built work folder; run "
                f"`shopclip build CATALOG --workdir {self.workdir.root}` first"
            )
        self.max_image_pixels = int(max_image_pixels)
        self.min_image_size = int(min_image_size)
        self.compact_every = int(compact_every)
        self._failpoint = failpoint or (lambda name: None)
        self._model = None if isinstance(model, str | None) else model
        self._model_ref = model if isinstance(model, str) else self.workdir.model_ref()
        if self._model is not None:
            self._model.eval()
        self._model_lock = threading.Lock()
        self._fingerprint: str | None = None
        self._write_lock = threading.Lock()
        self.batch_listeners: list[Callable[[int], None]] = []  # called with each text batch's size (metrics)
        # Text query -> vector (read path, serve/batching.py): an LRU of recent queries, then one
        # tower call per batch of concurrent ones; its worker thread starts with the first query.
        self.queries = QueryEmbedder(lambda texts: embed_texts(self.model, texts), cache_size=text_cache_size,
                                     batching=batch_queries, on_batch=lambda n: [f(n) for f in self.batch_listeners])
        self._writes_since_compact = 0
        self.uploads = self.workdir.root / UPLOADS
        t0 = time.perf_counter()
        self.store = EmbeddingStore.open(self.workdir.embeddings)
        indexes, repaired = self.reconcile()
        products = {m["id"]: m for m in self.store.meta()}
        self._snap = Snapshot(1, indexes, products)
        self._collect_uploads()
        self.load_seconds = time.perf_counter() - t0
        self.repaired = repaired
        log.info("loaded %d products from %s in %.2fs (repaired: %s)", len(products), self.workdir.root,
                 self.load_seconds, repaired or "nothing")

    # ------------------------------------------------------------------ loading

    @property
    def snapshot(self) -> Snapshot:
        return self._snap

    @cached_property
    def aligned(self) -> bool:
        """Trained heads put text and images in one space; before that, text only matches text."""
        return bool(self.store.manifest.get("model_info", {}).get("config", {}).get("trained", False))

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    from shopclip.models import load_model

                    model = load_model(self._model_ref)
                    model.eval()  # encode_* toggles train/eval; starting in eval keeps that race-free
                    self._model = model
        return self._model

    @property
    def fingerprint(self) -> str:
        """The loaded model's identity; writes must match the store's, or vectors would mix spaces."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    def _view_vectors(self) -> dict[str, np.ndarray]:
        return {v: fused_vectors(self.store) if v == "fused" else self.store.vectors(v) for v in VIEWS}

    def reconcile(self) -> tuple[dict[str, VectorIndex], dict[str, int]]:
        """Make every index hold exactly the store's vectors and categories; save those it fixed.

        The store is committed before the indexes are saved, so after a crash an index can
        lag the store by the writes in flight; this is where that lag is made up.
        """
        ids = self.store.ids
        metas = self.store.meta()
        cats = [m.get("category") or None for m in metas]
        vectors = self._view_vectors()
        out: dict[str, VectorIndex] = {}
        repaired: dict[str, int] = {}
        for view in VIEWS:
            folder = self.workdir.index / view
            try:
                index = load_index(folder)
            except (FileNotFoundError, ValueError, KeyError, OSError) as e:
                log.warning("index %s unusable (%s); rebuilding it from the store", folder, e)
                backend = self._backend()
                index = create_index(backend, dim=self.store.dim)
            want = vectors[view]
            pos = {i: r for r, i in enumerate(ids)}
            stale = [i for i in index.ids if i not in pos]
            present = [r for r, i in enumerate(ids) if i in index]
            fix = sorted(set(range(len(ids))) - set(present))
            if present:
                have = np.stack([index.get_vector(ids[r]) for r in present])
                differs = np.abs(have - want[present]).max(axis=1) > 1e-4
                fix += [r for r, bad in zip(present, differs, strict=True)
                        if bad or (index.get_category(ids[r]) or None) != _cat_text(cats[r])]
            if stale:
                index.remove(stale)
            if fix:
                index.add([ids[r] for r in fix], want[fix], [cats[r] for r in fix])
            if stale or fix or not (folder / "manifest.json").exists():
                index.save(folder)
                repaired[view] = len(stale) + len(fix)
            out[view] = index
        return out, repaired

    def _backend(self) -> str:
        for view in VIEWS:
            try:
                return str(read_manifest(self.workdir.index / view)["backend"])
            except (FileNotFoundError, ValueError, KeyError):
                continue
        return str(self.workdir.read().get("options", {}).get("backend", "faiss"))

    def _collect_uploads(self) -> None:
        """Delete uploaded images no product points at (replaced, deleted, or a write that crashed)."""
        if not self.uploads.is_dir():
            return
        used = {Path(m.get("image", "")).name for m in self._snap.products.values()}
        for p in self.uploads.iterdir():
            if p.is_file() and p.name not in used:
                p.unlink(missing_ok=True)

    # ------------------------------------------------------------------ reads

    def default_view(self, kind: str) -> str:
        """text queries: fused once aligned (else text-to-text); images: image; products: fused."""
        if kind == "text":
            return "fused" if self.aligned else "text"
        if kind == "image":
            return "image"
        return "fused"

    def product(self, product_id: str) -> dict[str, Any]:
        meta = self._snap.products.get(product_id)
        if meta is None:
            raise ApiError(404, "not_found", f"no product with id {product_id!r}")
        return meta

    def encode_text(self, query: str) -> np.ndarray:
        return self.queries(query)

    def search_vector(
        self, vec: np.ndarray, view: str, k: int, category: str | None = None,
        exclude: Sequence[str] = (), snap: Snapshot | None = None,
    ) -> list[dict[str, Any]]:
        snap = snap or self._snap
        hits = snap.indexes[view].search(np.asarray(vec, dtype=np.float32), k, category=category,
                                         exclude=exclude)[0]
        return [self._hit(snap, h.id, h.score) for h in hits if h.id in snap.products]

    @staticmethod
    def _hit(snap: Snapshot, product_id: str, score: float) -> dict[str, Any]:
        m = snap.products[product_id]
        return {"id": product_id, "score": round(float(score), 6), "title": m.get("title", ""),
                "category": m.get("category") or "", "image_url": image_url(product_id)}

    def search_text(self, query: str, k: int, category: str | None = None, view: str | None = None) -> list[dict]:
        return self.search_vector(self.encode_text(query), view or self.default_view("text"), k, category)

    def search_image(self, image: Image.Image, k: int, category: str | None = None,
                     view: str | None = None) -> list[dict]:
        vec = self.model.encode_image([image], num_workers=1)[0]
        return self.search_vector(vec, view or self.default_view("image"), k, category)

    def similar(self, product_id: str, k: int, category: str | None = None, view: str | None = None) -> list[dict]:
        snap = self._snap
        if product_id not in snap.products:
            raise ApiError(404, "not_found", f"no product with id {product_id!r}")
        view = view or self.default_view("product")
        if product_id not in snap.indexes[view]:
            raise ApiError(404, "not_found", f"product {product_id!r} is not in the {view} index")
        vec = snap.indexes[view].get_vector(product_id)
        return self.search_vector(vec, view, k, category, exclude=(product_id,), snap=snap)

    def interest_threshold(self, view: str, snap: Snapshot) -> float:
        """Halfway between a random pair's and a near neighbour's cosine in this catalog.

        Untrained and trained models put these at very different values (≈0.25/0.7 vs
        ≈0.05/0.5), so a constant would suit only one of them.
        """
        cached = snap.thresholds.get(view)
        if cached is not None:
            return cached
        index = snap.indexes[view]
        ids = index.ids
        if len(ids) < 3:
            return 0.5
        rng = np.random.default_rng(0)
        pick = rng.choice(len(ids), size=min(len(ids), 400), replace=False)
        x = np.stack([index.get_vector(ids[i]) for i in pick])
        sims = x @ x.T
        np.fill_diagonal(sims, np.nan)
        random_pair = float(np.nanmean(sims))
        kk = min(5, len(pick) - 1)
        near = float(np.mean(-np.sort(-np.nan_to_num(sims, nan=-2.0), axis=1)[:, :kk]))
        value = random_pair + 0.5 * (near - random_pair)
        snap.thresholds[view] = value
        return value

    def recommend(
        self,
        events: Sequence[tuple[str, float | None, float | None]],
        k: int,
        *,
        category: str | None = None,
        view: str | None = None,
        threshold: float | None = None,
        max_interests: int = 4,
        half_life_s: float = 1800.0,
    ) -> dict[str, Any]:
        """Events are (id, weight, timestamp) oldest first; unknown ids are reported, not fatal."""
        snap = self._snap
        view = view or self.default_view("product")
        index = snap.indexes[view]
        stamps = [t for _, _, t in events]
        if any(t is None for t in stamps) and any(t is not None for t in stamps):
            raise ApiError(422, "invalid_history", "give a timestamp for every history event or for none")
        weights = event_weights(
            len(events), [1.0 if w is None else float(w) for _, w, _ in events],
            None if stamps and stamps[0] is None else [float(t) for t in stamps],  # type: ignore[arg-type]
            half_life_s=half_life_s,
        )
        unknown = list(dict.fromkeys(i for i, _, _ in events if i not in snap.products or i not in index))
        agg: dict[str, float] = {}
        for (pid, _, _), w in zip(events, weights, strict=True):
            if pid not in unknown:
                agg[pid] = agg.get(pid, 0.0) + float(w)
        if not agg:
            raise ApiError(404, "not_found", "none of the history's products exist",
                           details=[{"id": i} for i in unknown[:20]])
        ids = list(agg)
        vecs = np.stack([index.get_vector(i) for i in ids])
        thr = self.interest_threshold(view, snap) if threshold is None else float(threshold)
        interests = cluster_interests(vecs, np.array([agg[i] for i in ids]), thr, max_interests)
        history = set(ids) | set(unknown)
        ranked = []
        for it in interests:
            hits = index.search(it.vector, k, category=category, exclude=list(history))[0]
            ranked.append([h for h in hits if h.id in snap.products])
        picks = interleave(ranked, [it.weight for it in interests], k, key=lambda h: h.id)
        total = sum(it.weight for it in interests) or 1.0
        return {
            "view": view,
            "threshold": round(thr, 4),
            "results": [self._hit(snap, h.id, h.score) | {"interest": n} for h, n in picks],
            "interests": [{"members": [ids[m] for m in it.members], "share": round(it.weight / total, 4)}
                          for it in interests],
            "unknown": unknown,
        }

    # ------------------------------------------------------------------ uploads

    def read_image(self, data: bytes) -> tuple[Image.Image, str]:
        """Decode an uploaded image or say precisely why not; the header is checked before decoding."""
        if not data:
            raise ApiError(422, "empty_upload", "the uploaded file is empty")
        try:
            with Image.open(io.BytesIO(data)) as probe:
                fmt = str(probe.format or "")
                width, height = probe.size
        except Image.DecompressionBombError:
            raise ApiError(413, "image_too_large", "image has too many pixels (decompression bomb)") from None
        except Exception:  # PIL raises many types for garbage input; all mean "not an image"
            raise ApiError(415, "invalid_image", "the upload is not an image PIL can read "
                           "(send JPEG, PNG, WebP or GIF)") from None
        if width * height > self.max_image_pixels:
            raise ApiError(413, "image_too_large", f"image is {width}x{height} pixels; the limit is "
                           f"{self.max_image_pixels} pixels (a decompression bomb or an oversized photo)")
        try:
            img = open_image(data)
        except ImageError as e:
            raise ApiError(415, "invalid_image", str(e)) from None
        except Exception as e:  # a hostile file can break a decoder in ways open_image does not name
            raise ApiError(415, "invalid_image", f"unreadable image ({type(e).__name__})") from None
        if problem := size_problem(img.size, self.min_image_size):
            raise ApiError(422, "image_too_small", problem)
        return img, fmt

    # ------------------------------------------------------------------ writes

    def upsert(self, product_id: str, fields: dict[str, Any], image: bytes | None) -> tuple[dict[str, Any], bool]:
        """Validate like a catalog row, embed, commit to the store, update and save the indexes."""
        if not _ID_RE.match(product_id):
            raise ApiError(422, "invalid_id", f"product ids must match {ID_PATTERN} (no '/', no leading '.')")
        if "id" in fields and str(fields["id"]) != product_id:
            raise ApiError(422, "invalid_product", f"body id {fields['id']!r} differs from the URL's {product_id!r}")
        if bad := [f for f in _SERVER_FIELDS if f in fields]:
            raise ApiError(422, "invalid_product", f"{', '.join(bad)} cannot be set; upload the image file instead")
        existing = self._snap.products.get(product_id)
        if image is None:
            if existing is None:
                raise ApiError(422, "missing_image", "a new product needs an image file (form field 'image')")
            try:
                image = Path(existing["image"]).read_bytes()
            except OSError:
                raise ApiError(422, "missing_image", "the stored image is gone; upload one") from None
        img, fmt = self.read_image(image)
        digest = sha1_bytes(image)
        ext = UPLOAD_FORMATS.get(fmt)
        if ext is None:  # store what we decoded in a format every browser shows
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            image, ext = buf.getvalue(), ".png"
        rel = f"{UPLOADS}/{digest}{ext}"
        product, errors = validate_row({**fields, "id": product_id, "image": rel}, 1)
        problems = [(e.field, e.reason) for e in errors] + _length_problems(fields)
        if product is None or problems:
            raise ApiError(422, "invalid_product", "; ".join(f"{f}: {r}" for f, r in problems),
                           details=[{"field": f, "reason": r} for f, r in problems])
        model = self.model
        if self.fingerprint != self.store.model:
            raise ApiError(409, "model_mismatch", "the served model is not the one this work folder was "
                           "embedded with; rebuild the work folder before updating products")
        text = product.text()
        img_vec = model.encode_image([img], num_workers=1)
        txt_vec = model.encode_text([text])
        with self._write_lock:
            path = self.workdir.root / rel
            if not path.exists():
                atomic_write_bytes(path, image)
            meta = product_meta(product, Catalog([product], root=self.workdir.root)) | {
                "text": text, "image": str(path)}
            previous = self._snap.products.get(product_id)  # under the lock: the one this write replaces
            created = previous is None
            self._failpoint("upsert:before_commit")
            self.store.append([product_id], [product_hash(product, text, digest, self.fingerprint)],
                              {"image": img_vec, "text": txt_vec}, [meta])
            fsync_dir(self.store.root / "parts")
            self._failpoint("upsert:after_commit")
            vec = {m: _as_stored(v, self.store.dtype) for m, v in (("image", img_vec), ("text", txt_vec))}
            vec["fused"] = l2_normalize(vec["image"] + vec["text"])
            products = dict(self._snap.products)
            products[product_id] = meta

            def change(view: str, index: VectorIndex) -> None:
                index.add([product_id], vec[view], [meta["category"] or None])

            self._publish(change, products)
            if previous is not None:
                self._drop_upload(previous, products)  # a replaced photo nobody else uses
        return meta, created

    def delete(self, product_id: str) -> None:
        with self._write_lock:
            if product_id not in self._snap.products:
                raise ApiError(404, "not_found", f"no product with id {product_id!r}")
            self._failpoint("delete:before_commit")
            self.store.delete([product_id])
            fsync_dir(self.store.root / "parts")
            self._failpoint("delete:after_commit")
            products = dict(self._snap.products)
            gone = products.pop(product_id)
            self._publish(lambda view, index: index.remove([product_id]), products)
            self._drop_upload(gone, products)

    def _drop_upload(self, meta: dict[str, Any], products: dict[str, dict[str, Any]]) -> None:
        """Remove `meta`'s uploaded image once a committed write left no product using it.

        Called under the write lock after the commit and the snapshot swap, so no new
        reader can reach the file and a crash before this line only leaves garbage for
        `_collect_uploads`. Catalog images (outside uploads/) are the owner's; never touched.
        """
        path = Path(str(meta.get("image") or ""))
        if path.parent != self.uploads or any(m.get("image") == meta.get("image") for m in products.values()):
            return
        self._failpoint("drop_upload")
        try:
            path.unlink(missing_ok=True)
        except OSError as e:  # the write is done and durable; a stray file is collected at start
            log.warning("could not remove unused upload %s: %s", path, e)

    def _publish(self, change: Callable[[str, VectorIndex], None], products: dict[str, dict[str, Any]]) -> None:
        """Apply `change` to copies of the indexes, save each, then swap the snapshot in one assignment."""
        old = self._snap
        indexes = {}
        for view, index in old.indexes.items():
            clone = copy.deepcopy(index)
            change(view, clone)
            clone.save(self.workdir.index / view)
            self._failpoint(f"saved:{view}")
            indexes[view] = clone
        self._snap = Snapshot(old.version + 1, indexes, products)
        self._writes_since_compact += 1
        if self.compact_every and self._writes_since_compact >= self.compact_every:
            self.store.compact()  # bounds open time: one main generation instead of many parts
            self._writes_since_compact = 0


def _length_problems(fields: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, reason) for each client text over its limit; types are validate_row's business."""
    out: list[tuple[str, str]] = []
    for name, limit in TEXT_LIMITS.items():
        value = fields.get(name)
        if isinstance(value, list):  # a category given as levels
            value = CATEGORY_SEP.join(str(v) for v in value)
        if isinstance(value, str) and len(value) > limit:
            out.append((name, f"too long ({len(value)} > {limit} chars)"))
    attrs = fields.get("attributes")
    if isinstance(attrs, dict):
        if len(attrs) > MAX_ATTRIBUTES:
            out.append(("attributes", f"too many attributes ({len(attrs)} > {MAX_ATTRIBUTES})"))
        for key, value in list(attrs.items())[:MAX_ATTRIBUTES]:
            if len(str(key)) > MAX_ATTRIBUTE_CHARS or (isinstance(value, str) and len(value) > MAX_ATTRIBUTE_CHARS):
                out.append((f"attributes.{str(key)[:40]}", f"too long (over {MAX_ATTRIBUTE_CHARS} chars)"))
    return out


def _cat_text(category: Any) -> str | None:
    from shopclip.index.base import category_text

    return category_text(category) if category else None


def _as_stored(vec: np.ndarray, dtype: str) -> np.ndarray:
    """The vector as the store will hand it back (cast to its dtype, renormalised), so the index
    and the store agree exactly and a restart's reconcile finds nothing to repair."""
    return l2_normalize(l2_normalize(vec).astype(dtype).astype(np.float32))


