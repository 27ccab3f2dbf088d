"""What the server holds in memory, how reads see it and how writes change it.

Writes are in place and cost what they change, not what the catalog holds. A write
commits to the embedding store (the durable log), then changes each view's index in
place (a faiss `add`; the replaced row becomes a tombstone filtered at query time) and
the product table, all under the write side of a readers-writer lock: a reader holds
the read side for its whole request, so it sees the catalog before the write or after
it, never half of it. Writers queue on one lock; the model runs before it is taken.

Uploaded images are content-addressed files in `uploads/`, shared by products with the
same photo. A file is written before the store commit that first points at it, and
removed only after the commit that leaves no product pointing at it (a delete, or a
replaced photo): a crash between the two leaves an unused file, which the next start
collects, never a product without its image.

Durability: an upsert or delete is acknowledged only after its store part is committed
(an atomic rename of the part's `.jsonl`, then an fsync of the folder). In-process
indexes (faiss) are a derived cache saved in the background: every `snapshot_every`
writes or `snapshot_seconds` after the first unsaved one, and on shutdown, by a forked
child that writes a consistent copy while the server goes on (the fork is the
snapshot; the parent blocks writers only for the fork itself). Server stores (pgvector,
Milvus) apply each write as one transaction and need no snapshot. On start, `reconcile`
compares every index's row hashes with the store's and repairs whatever a crash left
behind, so a restart serves exactly the committed writes, whichever instant the process
died at. The store's own compaction (merging its parts) also runs in a forked child.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shopclip.catalog.schema import CATEGORY_SEP, Catalog
from shopclip.catalog.validation import validate_row
from shopclip.core.concurrency import RWLock, can_fork, fork_job, wait_job
from shopclip.core.hashing import sha1_bytes
from shopclip.core.images import ImageError, open_image, size_problem
from shopclip.core.io import atomic_write_bytes, fsync_dir
from shopclip.index import create_index, load_index
from shopclip.index.base import StoreUnavailableError, VectorIndex, read_manifest, write_together
from shopclip.index.store import EmbeddingStore, StoreWriter, l2_normalize
from shopclip.pipeline.embed import model_fingerprint, product_hash, product_meta
from shopclip.pipeline.indexing import LEXICAL, VIEWS, row_hash, view_options
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
    """What a reader sees: the indexes, the products and the version, at one instant.

    `ServeState.snapshot` hands out the live objects, valid while no write runs (tests,
    start-up, single-threaded tools); concurrent readers go through `ServeState` methods,
    which hold the read lock for the whole request.
    """

    version: int
    indexes: dict[str, VectorIndex]
    products: dict[str, dict[str, Any]]
    category_counts: dict[str, int] = field(default_factory=dict)

    @cached_property
    def categories(self) -> list[dict[str, Any]]:
        """Every category path and each of its prefixes, with product counts (filters match prefixes)."""
        return [{"path": p, "depth": p.count(CATEGORY_SEP) + 1, "count": n}
                for p, n in sorted(self.category_counts.items()) if n > 0]


def _prefixes(category: Any) -> list[str]:
    levels = [p.strip() for p in str(category or "").split(">") if p.strip()]
    return [CATEGORY_SEP.join(levels[:d]) for d in range(1, len(levels) + 1)]


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
        snapshot_every: int = 1000,
        snapshot_seconds: float = 60.0,
        compact_parts: int = 256,
        store: str | None = None,
        uri: str | None = None,
        background: bool = True,
        batch_queries: bool = True,
        failpoint: Callable[[str], None] | None = None,
    ) -> None:
        """`model` may be a loaded DualEncoder (tests share one) or a reference; default: the
        work folder's. `store`/`uri` open the vector store somewhere else than the work folder
        recorded (e.g. the same pgvector tables on another host). `background=False` turns the
        snapshot/compaction thread off (tests call `maintain()` themselves). `failpoint(name)`
        is called at each step of a write, for crash tests."""
        self.workdir = WorkDir(Path(workdir).resolve())
        if not self.workdir.exists() or not self.workdir.embeddings.exists():
            raise FileNotFoundError(
                f"{self.workdir.root} is not a built work folder; run "
                f"`shopclip build CATALOG --workdir {self.workdir.root}` first"
            )
        self.max_image_pixels = int(max_image_pixels)
        self.min_image_size = int(min_image_size)
        self.snapshot_every = int(snapshot_every)
        self.snapshot_seconds = float(snapshot_seconds)
        self.compact_parts = int(compact_parts)
        self._store_override = {"backend": store, "uri": uri}
        self._failpoint = failpoint or (lambda name: None)
        self._model = None if isinstance(model, str | None) else model
        self._model_ref = model if isinstance(model, str) else self.workdir.model_ref()
        if self._model is not None:
            self._model.eval()
        self._model_lock = threading.Lock()
        self._fingerprint: str | None = None
        self._write_lock = threading.Lock()  # one writer at a time (held across commit + apply)
        self._rw = RWLock()  # readers vs the in-place apply of a write
        self.batch_listeners: list[Callable[[int], None]] = []  # called with each text batch's size (metrics)
        # Text query -> vector (read path, serve/batching.py): an LRU of recent queries, then one
        # tower call per batch of concurrent ones; its worker thread starts with the first query.
        self.queries = QueryEmbedder(lambda texts: embed_texts(self.model, texts), cache_size=text_cache_size,
                                     batching=batch_queries, on_batch=lambda n: [f(n) for f in self.batch_listeners],
                                     batch_invariant=lambda: self.model.engine.batch_invariant("text"))
        self._thresholds: dict[str, tuple[int, float]] = {}  # view -> (catalog size when computed, value)
        self.uploads = self.workdir.root / UPLOADS
        t0 = time.perf_counter()
        full = EmbeddingStore.open(self.workdir.embeddings)
        self._indexes, repaired = self.reconcile(full)
        self._products: dict[str, dict[str, Any]] = {m["id"]: m for m in full.meta()}
        self._category_counts: Counter[str] = Counter(
            p for m in self._products.values() for p in _prefixes(m.get("category")))
        self._image_refs: Counter[str] = Counter(str(m.get("image") or "") for m in self._products.values())
        repaired.update(self._open_lexical(self._products))
        self.store: StoreWriter | EmbeddingStore = full.writer()  # from here on the store is only appended to
        del full
        self._version = 1
        self._unsaved = 0  # writes applied since the last completed snapshot
        self._first_unsaved = 0.0
        self._snapshots = {"taken": 0, "failed": 0, "last_seconds": None, "compactions": 0}
        self._degraded: str | None = None  # a write committed to the log but not applied to a store
        self._collect_uploads()
        self.load_seconds = time.perf_counter() - t0
        self.repaired = repaired
        self._stop = threading.Event()
        self._maint_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._maintenance_loop, name="shopclip-snapshots", daemon=True)
            self._thread.start()
        log.info("loaded %d products from %s in %.2fs (repaired: %s)", len(self._products), self.workdir.root,
                 self.load_seconds, repaired or "nothing")

    # ------------------------------------------------------------------ loading

    @property
    def snapshot(self) -> Snapshot:
        """The live state as a `Snapshot` (see its docstring for when that is safe to read)."""
        with self._rw.read():
            return Snapshot(self._version, self._indexes, self._products, dict(self._category_counts))

    @property
    def version(self) -> int:
        return self._version

    @property
    def in_process(self) -> bool:
        """Indexes that live in this process (faiss, numpy) are snapshotted to disk; server stores are not."""
        return all(not i.transaction_key for i in self._indexes.values())

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

    def warm(self) -> None:
        """Load what every first request would otherwise wait for: the model and one text through
        its engine (sessions allocate on their first run). Bypasses the query cache and the
        batcher, so no metric counts it. The multilingual encoder stays lazy (only foreign
        queries need it, and its base encoders load on first use anyway)."""
        embed_texts(self.model, ["warm up"])

    @property
    def fingerprint(self) -> str:
        """The loaded model's identity; writes must match the store's, or vectors would mix spaces."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    def _open_index(self, view: str, dim: int) -> VectorIndex:
        """The view's index as saved, at the overriding store/URI when one was given; a new empty
        one when none was saved (or it is unreadable) — `reconcile` then fills it from the store."""
        folder = self.workdir.index / view
        override = {k: v for k, v in self._store_override.items() if v}
        backend = override.pop("backend", None)
        try:
            manifest = read_manifest(folder)
            if backend is None or backend == manifest.get("backend"):
                return load_index(folder, **override)
        except (FileNotFoundError, ValueError, KeyError, OSError) as e:
            log.warning("index %s unusable (%s); rebuilding it from the store", folder, e)
        backend = backend or self._backend()
        return create_index(backend, dim=dim, **view_options(backend, view, override, self.workdir.root))

    def reconcile(self, store: EmbeddingStore) -> tuple[dict[str, VectorIndex], dict[str, int]]:
        """Make every index hold exactly the store's rows; save those it fixed.

        The store is committed before the indexes change, and in-process indexes are saved
        only now and then, so after a crash an index lags the store by the writes since its
        last snapshot (or holds one that was never acknowledged). Each row carries the store
        hash + category it was made from (`row_hash`), so finding the lag is a comparison of
        hashes, and only the rows that differ are read from the store and re-added.
        """
        ids = store.ids
        metas = store.meta()
        content = store.hashes()
        want = {i: row_hash(content[i], m.get("category") or None) for i, m in zip(ids, metas, strict=True)}
        cats = {i: m.get("category") or None for i, m in zip(ids, metas, strict=True)}
        out: dict[str, VectorIndex] = {}
        repaired: dict[str, int] = {}
        for view in VIEWS:
            folder = self.workdir.index / view
            index = self._open_index(view, store.dim)
            have = index.hashes()
            stale = [i for i in have if i not in want]
            fix = [i for i in ids if have.get(i, "") != want[i]]
            if stale:
                index.remove(stale)
            for start in range(0, len(fix), 8192):
                chunk = fix[start : start + 8192]
                index.add(chunk, _view_rows(store, view, chunk), [cats[i] for i in chunk],
                          hashes=[want[i] for i in chunk])
            if stale or fix or not (folder / "manifest.json").exists():
                if hasattr(index, "compact"):
                    index.compact()
                index.save(folder)
                repaired[view] = len(stale) + len(fix)
            if getattr(index, "auto_compact", None) is not None:
                index.auto_compact = False  # no O(catalog) rebuild inside a request: snapshots compact
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
        used = {Path(m.get("image", "")).name for m in self._products.values()}
        for p in self.uploads.iterdir():
            if p.is_file() and p.name not in used:
                p.unlink(missing_ok=True)

    # ------------------------------------------------------------------ health

    def health(self) -> dict[str, str]:
        """Each dependency and "ok" or the reason it is down (the vector store, the log)."""
        out: dict[str, str] = {}
        for view, index in self._indexes.items():
            problem = index.health()
            out[f"index:{view}"] = problem or "ok"
        out["embedding_log"] = "ok" if self.store.root.is_dir() else f"missing: {self.store.root}"
        if self._degraded:
            out["consistency"] = self._degraded
        return out

    # ------------------------------------------------------------------ reads

    def default_view(self, kind: str) -> str:
        """text queries: fused once aligned (else text-to-text); images: image; products: fused."""
        if kind == "text":
            return "fused" if self.aligned else "text"
        if kind == "image":
            return "image"
        return "fused"

    def product(self, product_id: str) -> dict[str, Any]:
        meta = self._products.get(product_id)
        if meta is None:
            raise ApiError(404, "not_found", f"no product with id {product_id!r}")
        return meta

    def categories(self) -> list[dict[str, Any]]:
        return self.snapshot.categories

    def encode_text(self, query: str) -> np.ndarray:
        return self.queries(query)

    def search_vector(
        self, vec: np.ndarray, view: str, k: int, category: str | None = None,
        exclude: Sequence[str] = (), snap: Snapshot | None = None,
    ) -> list[dict[str, Any]]:
        """Top-k products for a query vector; `snap` is accepted for older callers and ignored."""
        with self._rw.read():
            return self._search(np.asarray(vec, dtype=np.float32), view, k, category, exclude)

    def _search(self, vec: np.ndarray, view: str, k: int, category: str | None,
                exclude: Sequence[str]) -> list[dict[str, Any]]:
        """Call with the read lock held."""
        hits = self._indexes[view].search(vec, k, category=category, exclude=exclude)[0]
        return [self._hit(h.id, h.score) for h in hits if h.id in self._products]

    def _hit(self, product_id: str, score: float) -> dict[str, Any]:
        m = self._products[product_id]
        return {"id": product_id, "score": round(float(score), 6), "title": m.get("title", ""),
                "category": m.get("category") or "", "image_url": image_url(product_id)}

    def search_text(self, query: str, k: int, category: str | None = None, view: str | None = None,
                    **options: Any) -> list[dict]:
        return self.search_query(query, k, category, view, **options)[0]

    def search_query(self, query: str, k: int, category: str | None = None, view: str | None = None,
                     **options: Any) -> tuple[list[dict], Any]:
        """Text search through `shopclip.query.hybrid` (mode, fusion, lang, understand, drop): hits + how."""
        from shopclip.query.hybrid import HybridSearcher, SearchInputError

        view = view or self.default_view("text")
        options.setdefault("understand_query", options.pop("understand", True))
        encoders = self._encoders()
        with self._rw.read():  # the vector view, the lexical view and the products of one instant
            searcher = HybridSearcher(self._indexes[view], self.lexical, self._products, encoders,
                                      self.vocabulary, self.hybrid_config, unavailable=self._multi_problem,
                                      facet_cache=self._facet_cache, value_vectors=self._value_vectors,
                                      postings=self._postings, word_terms=self._word_terms)
            try:
                out = searcher.search(query, k, category=category, **options)
            except SearchInputError as e:
                raise ApiError(422, "invalid_search", str(e)) from None
            return [self._hit(i, s) for i, s in out.hits if i in self._products], out

    def _encoders(self) -> dict[str, Callable[[str], np.ndarray]]:
        encoders: dict[str, Callable[[str], np.ndarray]] = {"en": self.encode_text}
        multi = self.multilingual
        if multi is not None:
            encoders["multi"] = lambda q, lang=None: multi.encode([q], lang=lang)[0]
        return encoders

    @property
    def multilingual(self) -> Any:
        """The shipped multilingual query encoder, when it was distilled for this folder's model."""
        if self._multi is None and not self._multi_problem:
            from shopclip.models.multilingual import MultilingualMismatchError, MultilingualQueryEncoder

            try:
                enc = MultilingualQueryEncoder.load()
                enc.check_model(self.model)
                self._multi = enc
            except (FileNotFoundError, ImportError, MultilingualMismatchError) as e:
                self._multi_problem = {"multi": str(e)}
        return self._multi

    # ------------------------------------------------------------------ the lexical view

    def _open_lexical(self, products: dict[str, dict[str, Any]]) -> dict[str, int]:
        """Open the lexical index and make it hold exactly the store's products (the store is the log).

        A work folder built before the lexical view existed gets one built here; without
        tantivy the server runs vector-only. Returns {"lexical": n} when it repaired n docs.
        """
        from shopclip.query.hybrid import HybridConfig
        from shopclip.query.understand import Vocabulary

        self.hybrid_config = HybridConfig()
        from shopclip.query.crosslingual import CrossLingualTerms
        from shopclip.query.hybrid import ValueVectors

        self.vocabulary = Vocabulary(products.values())
        from shopclip.catalog.facets import FacetPostings

        self._postings = FacetPostings(products.values())
        self._value_vectors = ValueVectors(self.vocabulary, lambda xs: self.model.encode_text(xs))
        self._word_terms = CrossLingualTerms(self.vocabulary, lambda: None if self.multilingual is None
                                             else self.multilingual.embed_words)
        self._facet_cache: dict[str, Any] = {}
        self._multi: Any = None
        self._multi_problem: dict[str, str] = {}
        self.lexical: Any = None
        try:
            from shopclip.index.lexical import LexicalIndex
        except ImportError as e:  # pragma: no cover - tantivy is a dependency on Python >= 3.11
            log.warning("lexical search off: %s", e)
            return {}
        folder = self.workdir.index / LEXICAL
        if not LexicalIndex.exists(folder):
            log.warning("no lexical index in %s; building it from the store", folder)
            self.lexical = LexicalIndex.build(folder, products.values())
            return {"lexical": len(products)}
        self.lexical = LexicalIndex.open(folder)
        try:
            fixed = self.lexical.sync(list(products.values()))
        except Exception as e:  # another server holds this folder's writer: serve what it has
            log.warning("could not bring the lexical index in step (%s); serving it as it is", e)
            return {}
        return {"lexical": fixed} if fixed else {}

    def _keep_lexical_in_step(self, upserted: Sequence[dict[str, Any]] = (), deleted: Sequence[str] = (),
                              replaced: Sequence[dict[str, Any]] = ()) -> None:
        """THE hook for writes: after a committed upsert/delete, update the lexical view and the
        query vocabulary by these products only (cost independent of the catalog's size).

        `replaced` are the metas the write superseded or removed (the vocabulary's counts).
        A crash before this line is repaired at start by `_open_lexical` (sync from the store).
        """
        for meta in replaced:
            self.vocabulary.remove(meta)
            self._postings.remove(meta)
        for meta in upserted:
            self.vocabulary.add(meta)
            self._postings.add(meta)
        if self.lexical is None:
            return
        if deleted:
            self.lexical.remove(list(deleted), commit=False)  # committed by the next lexical read or `maintain`
        if upserted:
            self.lexical.upsert(list(upserted), commit=False)

    def search_image(self, image: Image.Image, k: int, category: str | None = None,
                     view: str | None = None) -> list[dict]:
        vec = self.model.encode_image([image], num_workers=1)[0]
        return self.search_vector(vec, view or self.default_view("image"), k, category)

    def similar(self, product_id: str, k: int, category: str | None = None, view: str | None = None) -> list[dict]:
        view = view or self.default_view("product")
        with self._rw.read():
            if product_id not in self._products:
                raise ApiError(404, "not_found", f"no product with id {product_id!r}")
            index = self._indexes[view]
            if product_id not in index:
                raise ApiError(404, "not_found", f"product {product_id!r} is not in the {view} index")
            return self._search(index.get_vector(product_id), view, k, category, (product_id,))

    def interest_threshold(self, view: str, snap: Snapshot | None = None) -> float:
        """Halfway between a random pair's and a near neighbour's cosine in this catalog.

        Untrained and trained models put these at very different values (≈0.25/0.7 vs
        ≈0.05/0.5), so a constant would suit only one of them. Recomputed when the catalog
        has grown or shrunk by a tenth since, not on every write.
        """
        with self._rw.read():
            index = self._indexes[view]
            n = len(index)
            cached = self._thresholds.get(view)
            if cached is not None and abs(n - cached[0]) <= 0.1 * max(cached[0], 1):
                return cached[1]
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
        self._thresholds[view] = (n, value)
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
        view = view or self.default_view("product")
        thr = self.interest_threshold(view) if threshold is None else float(threshold)
        with self._rw.read():
            return self._recommend(events, k, category, view, thr, max_interests, half_life_s)

    def _recommend(self, events: Sequence[tuple[str, float | None, float | None]], k: int, category: str | None,
                   view: str, thr: float, max_interests: int, half_life_s: float) -> dict[str, Any]:
        """Call with the read lock held."""
        index = self._indexes[view]
        products = self._products
        stamps = [t for _, _, t in events]
        if any(t is None for t in stamps) and any(t is not None for t in stamps):
            raise ApiError(422, "invalid_history", "give a timestamp for every history event or for none")
        weights = event_weights(
            len(events), [1.0 if w is None else float(w) for _, w, _ in events],
            None if stamps and stamps[0] is None else [float(t) for t in stamps],  # type: ignore[arg-type]
            half_life_s=half_life_s,
        )
        unknown = list(dict.fromkeys(i for i, _, _ in events if i not in products or i not in index))
        agg: dict[str, float] = {}
        for (pid, _, _), w in zip(events, weights, strict=True):
            if pid not in unknown:
                agg[pid] = agg.get(pid, 0.0) + float(w)
        if not agg:
            raise ApiError(404, "not_found", "none of the history's products exist",
                           details=[{"id": i} for i in unknown[:20]])
        ids = list(agg)
        vecs = np.stack([index.get_vector(i) for i in ids])
        interests = cluster_interests(vecs, np.array([agg[i] for i in ids]), thr, max_interests)
        history = set(ids) | set(unknown)
        ranked = []
        for it in interests:
            hits = index.search(it.vector, k, category=category, exclude=list(history))[0]
            ranked.append([h for h in hits if h.id in products])
        picks = interleave(ranked, [it.weight for it in interests], k, key=lambda h: h.id)
        total = sum(it.weight for it in interests) or 1.0
        return {
            "view": view,
            "threshold": round(thr, 4),
            "results": [self._hit(h.id, h.score) | {"interest": n} for h, n in picks],
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
        """Validate like a catalog row, embed, commit to the store, apply to the indexes in place."""
        return self.commit_upsert(self.prepare_upsert(product_id, fields, image))

    def prepare_upsert(self, product_id: str, fields: dict[str, Any], image: bytes | None) -> PreparedUpsert:
        """Everything before the write lock: validation, decoding and the model (the slow part)."""
        if not _ID_RE.match(product_id):
            raise ApiError(422, "invalid_id", f"product ids must match {ID_PATTERN} (no '/', no leading '.')")
        if "id" in fields and str(fields["id"]) != product_id:
            raise ApiError(422, "invalid_product", f"body id {fields['id']!r} differs from the URL's {product_id!r}")
        if bad := [f for f in _SERVER_FIELDS if f in fields]:
            raise ApiError(422, "invalid_product", f"{', '.join(bad)} cannot be set; upload the image file instead")
        existing = self._products.get(product_id)
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
        return PreparedUpsert(product_id, product, text, image, rel, digest, img_vec, txt_vec)

    def commit_upsert(self, prep: PreparedUpsert) -> tuple[dict[str, Any], bool]:
        """The write itself: commit to the log, apply in place. Its cost does not grow with the catalog."""
        product_id, product, text, img_vec, txt_vec = prep.product_id, prep.product, prep.text, prep.image_vec, \
            prep.text_vec
        with self._write_lock:
            path = self.workdir.root / prep.rel
            if not path.exists():
                atomic_write_bytes(path, prep.image)
            meta = product_meta(product, Catalog([product], root=self.workdir.root)) | {
                "text": text, "image": str(path)}
            previous = self._products.get(product_id)  # under the lock: the one this write replaces
            created = previous is None
            content = product_hash(product, text, prep.digest, self.store.model)  # == the model's, checked in prepare
            self._failpoint("upsert:before_commit")
            self.store.append([product_id], [content], {"image": img_vec, "text": txt_vec}, [meta])
            fsync_dir(self.store.root / "parts")
            self._failpoint("upsert:after_commit")
            vec = {m: _as_stored(v, self.store.dtype) for m, v in (("image", img_vec), ("text", txt_vec))}
            vec["fused"] = l2_normalize(vec["image"] + vec["text"])
            category = meta["category"] or None
            hashed = row_hash(content, category)

            def change(view: str, index: VectorIndex) -> None:
                index.add([product_id], vec[view], [category], hashes=[hashed])

            self._apply(change, product_id, meta)
            if previous is not None:
                self._drop_upload(previous)  # a replaced photo nobody else uses
        return meta, created

    def delete(self, product_id: str) -> None:
        with self._write_lock:
            gone = self._products.get(product_id)
            if gone is None:
                raise ApiError(404, "not_found", f"no product with id {product_id!r}")
            self._failpoint("delete:before_commit")
            self.store.delete([product_id])
            fsync_dir(self.store.root / "parts")
            self._failpoint("delete:after_commit")
            self._apply(lambda view, index: index.remove([product_id]), product_id, None)
            self._drop_upload(gone)

    def _drop_upload(self, meta: dict[str, Any]) -> None:
        """Remove `meta`'s uploaded image once a committed write left no product using it.

        Called under the write lock after the commit and the in-place apply, so no new
        reader can reach the file and a crash before this line only leaves garbage for
        `_collect_uploads`. Catalog images (outside uploads/) are the owner's; never touched.
        """
        path = Path(str(meta.get("image") or ""))
        if path.parent != self.uploads or self._image_refs[str(meta.get("image") or "")] > 0:
            return
        self._failpoint("drop_upload")
        try:
            path.unlink(missing_ok=True)
        except OSError as e:  # the write is done and durable; a stray file is collected at start
            log.warning("could not remove unused upload %s: %s", path, e)

    def _apply(self, change: Callable[[str, VectorIndex], None], product_id: str,
               meta: dict[str, Any] | None) -> None:
        """Apply a committed write to every view and the product table as one step for readers.

        Server stores take it as one transaction; if that fails (the database went away) the
        write stays in the log, the state is marked degraded, and the next `maintain()` or a
        restart replays it — a write is never half visible.
        """
        with self._rw.write():
            try:
                with write_together(self._indexes.values()):
                    for view, index in self._indexes.items():
                        change(view, index)
                        self._failpoint(f"applied:{view}")
            except StoreUnavailableError as e:
                self._degraded = f"a committed write is not yet in the vector store ({e}); it is replayed when the store is back"
                raise ApiError(503, "store_unavailable", str(e)) from None
            old = self._products.pop(product_id, None)
            if old is not None:
                self._category_counts.subtract(_prefixes(old.get("category")))
                self._image_refs[str(old.get("image") or "")] -= 1
            if meta is not None:
                self._products[product_id] = meta
                self._category_counts.update(_prefixes(meta.get("category")))
                self._image_refs[str(meta.get("image") or "")] += 1
            self._keep_lexical_in_step(upserted=[meta] if meta is not None else [],
                                       deleted=[product_id] if meta is None else [],
                                       replaced=[old] if old is not None else [])
            self._version += 1
            if not self._unsaved:
                self._first_unsaved = time.monotonic()
            self._unsaved += 1
        self._failpoint("applied")
        if self.snapshot_every and self._unsaved >= self.snapshot_every and self._thread is not None:
            self._wake.set()

    # ------------------------------------------------------------------ background upkeep

    @cached_property
    def _wake(self) -> threading.Event:
        return threading.Event()

    def _maintenance_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.maintain()
            except Exception:  # upkeep must never take the server down; it retries next tick
                log.exception("background snapshot/compaction failed; will retry")

    def maintain(self, *, force: bool = False) -> dict[str, Any]:
        """Snapshot the in-process indexes when due (or `force`), compact the store's parts when
        there are many, replay the log into a server store that was down. Returns what it did."""
        did: dict[str, Any] = {}
        if self.lexical is not None and self.lexical.flush():  # writes since the last lexical read
            did["lexical_flushed"] = True
        with self._maint_lock:
            if self._degraded:
                did["replayed"] = self._replay()
            due = self._unsaved and (
                force
                or (self.snapshot_every and self._unsaved >= self.snapshot_every)
                or (self.snapshot_seconds and time.monotonic() - self._first_unsaved >= self.snapshot_seconds)
            )
            if due and self.in_process:
                did["snapshot"] = self._snapshot()
            elif due:
                self._unsaved = 0  # a server store is its own snapshot
            if self.compact_parts and self.store.part_count() >= self.compact_parts:
                did["compacted"] = self._compact_store()
        return did

    def _snapshot(self) -> bool:
        """Save every view's index as of now, without holding writers for the save itself."""
        t0 = time.perf_counter()
        folders = {view: self.workdir.index / view for view in self._indexes}

        def save_all() -> None:
            self._failpoint("snapshot:child")
            for view, index in self._indexes.items():
                if getattr(index, "compact_due", lambda: False)():
                    index.compact()  # the child's private copy: drop tombstones, pick the kind for the size
                index.save(folders[view])
                self._failpoint(f"snapshot:saved:{view}")

        if can_fork():
            with self._rw.read():  # no write mid-apply: the fork copies a consistent state
                covered = self._unsaved
                pid = fork_job(save_all)
            self._failpoint("snapshot:forked")
            ok = wait_job(pid)
        else:  # no fork: save in-process, holding writers off for the duration
            with self._rw.read():
                covered = self._unsaved
                try:
                    save_all()
                    ok = True
                except Exception:
                    log.exception("snapshot failed")
                    ok = False
        if ok:
            with self._rw.write():
                self._unsaved -= covered
                if self._unsaved:
                    self._first_unsaved = time.monotonic()
            self._snapshots["taken"] += 1
            self._snapshots["last_seconds"] = round(time.perf_counter() - t0, 3)
        else:
            self._snapshots["failed"] += 1
        return ok

    def _compact_store(self) -> bool:
        """Merge the store's parts into a new main generation in a child process: O(catalog)
        work and memory that requests never wait for (appends go on meanwhile)."""
        root = self.store.root

        def compact() -> None:
            EmbeddingStore.open(root).compact()

        ok = wait_job(fork_job(compact)) if can_fork() else _run_ok(compact)
        if ok:
            self._snapshots["compactions"] += 1
        return ok

    def _replay(self) -> bool:
        """Bring the vector stores back in step with the log after a failed apply."""
        full = EmbeddingStore.open(self.workdir.embeddings)
        try:
            with self._write_lock:
                indexes, repaired = self.reconcile(full)
                with self._rw.write():
                    self._indexes = indexes
                    self._products = {m["id"]: m for m in full.meta()}
                    self._category_counts = Counter(
                        p for m in self._products.values() for p in _prefixes(m.get("category")))
                    self._image_refs = Counter(str(m.get("image") or "") for m in self._products.values())
                    self._open_lexical(self._products)
                    self._version += 1
                self._degraded = None
            log.info("vector store back: replayed %s", repaired or "nothing")
            return True
        except StoreUnavailableError as e:
            log.warning("vector store still unavailable: %s", e)
            return False

    def close(self) -> None:
        """Stop the background thread and save what is unsaved (on a clean shutdown)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        with self._maint_lock:
            if self._unsaved and self.in_process:
                self._snapshot()
        if self.lexical is not None:
            self.lexical.flush()
        for index in self._indexes.values():
            index.close()


@dataclass(frozen=True)
class PreparedUpsert:
    """A validated, embedded product waiting for the write lock (see `ServeState.prepare_upsert`)."""

    product_id: str
    product: Any  # catalog.schema.Product
    text: str
    image: bytes
    rel: str  # uploads/<sha1>.<ext>
    digest: str
    image_vec: np.ndarray
    text_vec: np.ndarray


def _run_ok(fn: Callable[[], None]) -> bool:
    try:
        fn()
        return True
    except Exception:
        log.exception("background job failed")
        return False


def _view_rows(store: EmbeddingStore, view: str, ids: Sequence[str]) -> np.ndarray:
    """The store's vectors of `ids` for one view (fused = normalised image + text)."""
    if view == "fused":
        return l2_normalize(store.rows("image", ids) + store.rows("text", ids))
    return store.rows(view, ids)


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


