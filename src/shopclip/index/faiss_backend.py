"""faiss backend: exact inner product for small catalogs, HNSW above `exact_threshold`.

Internal labels are positions in the faiss index (0..ntotal-1), mapped to string ids here.
Neither IndexFlat nor HNSW is edited in place on delete/upsert: the old label becomes a
tombstone that search filters out, and the index is rebuilt from the live vectors when
tombstones pass `max_tombstone_fraction` or on save. HNSW cannot delete nodes at all, and
one code path for both kinds keeps behaviour identical when a catalog crosses the threshold.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from shopclip.core.io import atomic_write_json, read_json
from shopclip.index.base import (
    CategoryLike,
    CategoryTable,
    Hit,
    VectorIndex,
    as_matrix,
    data_folder,
    dedupe_last,
    id_list,
    read_manifest,
    save_folder,
)


class FaissIndex(VectorIndex):
    backend = "faiss"

    def __init__(
        self,
        dim: int,
        *,
        exact_threshold: int = 20_000,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        filtered_exact_max: int | None = None,
        max_filtered_ef: int = 1024,
        max_tombstone_fraction: float = 0.2,
    ) -> None:
        """HNSW loses recall under tight filters (the walk starts near the query, far from the
        allowed rows), so a filter keeping at most `filtered_exact_max` rows (default:
        `exact_threshold`, the size brute force is fine for anyway) is answered by an exact scan;
        looser filters walk the graph with efSearch widened by 1/share, up to `max_filtered_ef`."""
        self.dim = int(dim)
        self.exact_threshold = int(exact_threshold)
        self.hnsw_m = int(hnsw_m)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.filtered_exact_max = (
            self.exact_threshold if filtered_exact_max is None else int(filtered_exact_max)
        )
        self.max_filtered_ef = int(max_filtered_ef)
        self.max_tombstone_fraction = float(max_tombstone_fraction)
        self._index: faiss.Index = faiss.IndexFlatIP(self.dim)
        self._ids: list[str | None] = []  # by label; None = tombstone
        self._label: dict[str, int] = {}
        self._live = np.zeros(0, dtype=bool)
        self._cats = CategoryTable()

    @property
    def kind(self) -> str:
        return "hnsw" if isinstance(self._index, faiss.IndexHNSW) else "flat"

    @property
    def options(self) -> dict[str, Any]:
        return {
            "exact_threshold": self.exact_threshold,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "filtered_exact_max": self.filtered_exact_max,
            "max_filtered_ef": self.max_filtered_ef,
            "max_tombstone_fraction": self.max_tombstone_fraction,
        }

    @property
    def tombstones(self) -> int:
        return len(self._ids) - len(self._label)

    # -- mutation
    def add(
        self, ids: Sequence[str], vectors: np.ndarray, categories: Sequence[CategoryLike] | None = None
    ) -> None:
        x = as_matrix(vectors, self.dim)
        ids, rows = dedupe_last(ids, len(x))
        if categories is not None and len(categories) != len(x):
            raise ValueError(f"got {len(categories)} categories for {len(x)} vectors")
        if not ids:
            return
        self._kill(ids)
        x = np.ascontiguousarray(x[rows])
        base = len(self._ids)
        self._ids.extend(ids)
        self._label.update((i, base + n) for n, i in enumerate(ids))
        self._live = np.concatenate([self._live, np.ones(len(ids), dtype=bool)])
        self._cats.append([categories[r] for r in rows] if categories is not None else [None] * len(ids))
        if self.kind == "flat" and len(self._label) > self.exact_threshold:
            self._rebuild(extra=x)  # crossing the threshold: one HNSW build over everything
        else:
            self._index.add(x)
            self._maybe_rebuild()

    def remove(self, ids: Sequence[str]) -> int:
        n = self._kill(id_list(ids))
        self._maybe_rebuild()
        return n

    def _kill(self, ids: Sequence[str]) -> int:
        n = 0
        for i in ids:
            label = self._label.pop(i, None)
            if label is not None:
                self._ids[label] = None
                self._live[label] = False
                n += 1
        return n

    def _maybe_rebuild(self) -> None:
        if self.tombstones > self.max_tombstone_fraction * max(len(self._ids), 1):
            self._rebuild()

    def _rebuild(self, extra: np.ndarray | None = None) -> None:
        """Re-index live vectors (plus `extra`, rows already registered after the indexed ones)."""
        ntotal = self._index.ntotal
        live = np.flatnonzero(self._live[:ntotal])
        stored = self._index.reconstruct_n(0, ntotal) if ntotal else np.zeros((0, self.dim), np.float32)
        x = stored[live]
        if extra is not None:
            x = np.concatenate([x, extra])
            live = np.concatenate([live, np.arange(ntotal, ntotal + len(extra))])
        index = self._new_index(len(live))
        if len(x):
            index.add(np.ascontiguousarray(x, dtype=np.float32))
        self._index = index
        self._ids = [self._ids[r] for r in live]
        self._label = {i: r for r, i in enumerate(self._ids) if i is not None}
        self._live = np.ones(len(self._ids), dtype=bool)
        self._cats.take(live)

    def _new_index(self, n: int) -> faiss.Index:
        if n <= self.exact_threshold:
            return faiss.IndexFlatIP(self.dim)
        index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index

    # -- queries
    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        category: CategoryLike = None,
        exclude: Collection[str] = (),
    ) -> list[list[Hit]]:
        q = as_matrix(queries, self.dim, "queries")
        allowed = self._allowed(category, exclude)
        n_allowed = len(self._label) if allowed is None else int(allowed.sum())
        k = min(int(k), n_allowed)
        if k <= 0 or len(q) == 0:
            return [[] for _ in range(len(q))]

        bitmap = None  # must outlive the searches: faiss keeps only a raw pointer to it
        sel = None
        if allowed is not None:
            bitmap = np.packbits(allowed, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))

        if self.kind == "flat":
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
            scores, labels = self._index.search(q, k, params=params)
        elif sel is not None and n_allowed <= self.filtered_exact_max:
            scores, labels = self._exact(q, k, sel)
        else:
            ef = max(self.ef_search, k)
            params = faiss.SearchParametersHNSW(efSearch=ef)
            if sel is not None:
                # only allowed nodes fill the result beam: widen it as the filter tightens
                share = n_allowed / max(self._index.ntotal, 1)
                params.efSearch = int(min(ef / share, max(ef, self.max_filtered_ef)))
                params.sel = sel
            scores, labels = self._index.search(q, k, params=params)
            short = np.flatnonzero((labels >= 0).sum(axis=1) < k)
            if len(short):  # the graph walk ran out of allowed nodes: answer those rows exactly
                scores[short], labels[short] = self._exact(q[short], k, sel)
        del bitmap
        return [
            [Hit(self._ids[lab], float(s)) for s, lab in zip(srow, lrow, strict=True) if lab >= 0]
            for srow, lrow in zip(scores, labels, strict=True)
        ]

    def _exact(self, q: np.ndarray, k: int, sel: faiss.IDSelector | None) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the HNSW's own flat storage: no copy, and the selector skips rows."""
        storage = faiss.downcast_index(self._index.storage)
        params = faiss.SearchParameters(sel=sel) if sel is not None else None
        return storage.search(q, k, params=params)

    def _allowed(self, category: CategoryLike, exclude: Collection[str]) -> np.ndarray | None:
        """Bool mask over labels, or None when every indexed row may be returned."""
        skip = [self._label[i] for i in id_list(exclude) if i in self._label]
        if not category and not skip and self.tombstones == 0:
            return None
        mask = self._live.copy()
        if category:
            mask &= self._cats.mask(category)
        mask[skip] = False
        return mask

    def get_vector(self, id: str) -> np.ndarray:
        return self._index.reconstruct(self._label[id])

    def get_category(self, id: str) -> str | None:
        return self._cats.text(self._label[id])

    def __len__(self) -> int:
        return len(self._label)

    def __contains__(self, id: object) -> bool:
        return id in self._label

    @property
    def ids(self) -> list[str]:
        return [i for i in self._ids if i is not None]

    # -- persistence
    def save(self, folder: str | Path) -> None:
        if self.tombstones:
            self._rebuild()

        def write(tmp: Path) -> None:
            faiss.write_index(self._index, str(tmp / "index.faiss"))
            cats = [self._cats.text(r) for r in range(len(self._ids))]
            atomic_write_json(tmp / "ids.json", {"ids": self._ids, "categories": cats}, indent=None)

        manifest = {
            "backend": self.backend,
            "dim": self.dim,
            "count": len(self),
            "kind": self.kind,
            "options": self.options,
        }
        save_folder(folder, manifest, write)

    @classmethod
    def load(cls, folder: str | Path) -> FaissIndex:
        manifest = read_manifest(folder)
        if manifest["backend"] != cls.backend:
            raise ValueError(f"{folder} holds a {manifest['backend']!r} index, not {cls.backend!r}")
        data = data_folder(folder, manifest)
        index = cls(dim=manifest["dim"], **manifest.get("options", {}))
        faiss_index = faiss.read_index(str(data / "index.faiss"))
        if faiss_index.d != index.dim:
            raise ValueError(f"{data}: faiss index has dim {faiss_index.d}, manifest says {index.dim}")
        meta = read_json(data / "ids.json")
        if len(meta["ids"]) != faiss_index.ntotal:
            raise ValueError(f"{data}: {len(meta['ids'])} ids for {faiss_index.ntotal} vectors")
        index._index = faiss_index
        index._ids = list(meta["ids"])
        index._label = {i: r for r, i in enumerate(index._ids)}
        index._live = np.ones(len(index._ids), dtype=bool)
        index._cats.append(meta["categories"])
        return index
