"""faiss backend: exact inner product for small catalogs, HNSW above, compact HNSW-SQ8 / IVF-PQ for huge ones.

Internal labels are positions in the faiss index (0..ntotal-1), mapped to string ids here.
Writes are in place and cost what they change: an upsert appends a row (faiss `add`), a
delete or the old row of an upsert becomes a tombstone that search filters out with an
id selector. Neither flat nor HNSW storage is edited in place (HNSW cannot delete nodes),
and one code path for every kind keeps behaviour identical when a catalog crosses a size
threshold. `compact()` rebuilds from the live rows and picks the kind for the size; it runs
by itself when tombstones pass `max_tombstone_fraction` unless `auto_compact` is off (the
server turns it off and compacts in its background snapshots instead, so no request waits
for an O(catalog) rebuild).

Kinds (`index=`): "auto" picks "flat" up to `exact_threshold` rows, "hnsw" up to
`compact_threshold`, "hnsw-sq8" above (8-bit scalar-quantised storage: a quarter of the
memory at a small recall cost); "ivfpq" (product quantisation, `pq_bytes` bytes a vector,
exact re-ranking of the shortlist is not kept in memory) is for catalogs that must fit a
small machine. Trained kinds start flat until `train_min` rows exist to train on.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from shopclip.core.io import atomic_write_json, read_json
from shopclip.index.base import (
    CategoryLike,
    CategoryTable,
    GrowArray,
    Hit,
    VectorIndex,
    add_inputs,
    as_matrix,
    data_folder,
    id_list,
    read_manifest,
    save_folder,
)

KINDS = ("auto", "flat", "hnsw", "hnsw-sq8", "ivfpq")


class FaissIndex(VectorIndex):
    backend = "faiss"

    def __init__(
        self,
        dim: int,
        *,
        index: str = "auto",
        exact_threshold: int = 20_000,
        compact_threshold: int = 2_000_000,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        filtered_exact_max: int | None = None,
        max_filtered_ef: int = 1024,
        max_tombstone_fraction: float = 0.2,
        auto_compact: bool = True,
        pq_bytes: int | None = None,
        nprobe: int = 32,
        train_min: int = 20_000,
    ) -> None:
        """HNSW loses recall under tight filters (the walk starts near the query, far from the
        allowed rows), so a filter keeping at most `filtered_exact_max` rows (default:
        `exact_threshold`, the size brute force is fine for anyway) is answered by an exact scan;
        looser filters walk the graph with efSearch widened by 1/share, up to `max_filtered_ef`."""
        if index not in KINDS:
            raise ValueError(f"unknown faiss index kind {index!r}; one of {', '.join(KINDS)}")
        self.dim = int(dim)
        self.index_kind = index
        self.exact_threshold = int(exact_threshold)
        self.compact_threshold = int(compact_threshold)
        self.hnsw_m = int(hnsw_m)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.filtered_exact_max = (
            self.exact_threshold if filtered_exact_max is None else int(filtered_exact_max)
        )
        self.max_filtered_ef = int(max_filtered_ef)
        self.max_tombstone_fraction = float(max_tombstone_fraction)
        self.auto_compact = bool(auto_compact)
        self.pq_bytes = int(pq_bytes) if pq_bytes else _default_pq_bytes(self.dim)
        if self.dim % self.pq_bytes:
            raise ValueError(f"pq_bytes must divide the dimension ({self.dim}), got {self.pq_bytes}")
        self.nprobe = int(nprobe)
        self.train_min = int(train_min)
        self._index: faiss.Index = faiss.IndexFlatIP(self.dim)
        self._ids: list[str | None] = []  # by label; None = tombstone
        self._label: dict[str, int] = {}
        self._live = GrowArray(bool)
        self._hash: list[str | None] = []  # by label
        self._cats = CategoryTable()

    @property
    def kind(self) -> str:
        """What the faiss structure is now (a trained kind stays "flat" until it has rows to train on)."""
        return _kind_of(self._index)

    @property
    def options(self) -> dict[str, Any]:
        return {
            "index": self.index_kind,
            "exact_threshold": self.exact_threshold,
            "compact_threshold": self.compact_threshold,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "filtered_exact_max": self.filtered_exact_max,
            "max_filtered_ef": self.max_filtered_ef,
            "max_tombstone_fraction": self.max_tombstone_fraction,
            "auto_compact": self.auto_compact,
            "pq_bytes": self.pq_bytes,
            "nprobe": self.nprobe,
            "train_min": self.train_min,
        }

    @property
    def tombstones(self) -> int:
        return len(self._ids) - len(self._label)

    def memory_bytes(self) -> int:
        """Bytes the faiss structure holds (vectors or codes, plus the graph or lists)."""
        writer = faiss.VectorIOWriter()
        faiss.write_index(self._index, writer)
        return int(writer.data.size())

    # -- mutation
    def add(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        categories: Sequence[CategoryLike] | None = None,
        *,
        hashes: Sequence[str | None] | None = None,
    ) -> None:
        x, ids, rows, given = add_inputs(ids, vectors, categories, hashes, self.dim)
        if not ids:
            return
        self._kill(ids)
        x = np.ascontiguousarray(x[rows])
        base = len(self._ids)
        self._ids.extend(ids)
        self._hash.extend(given[r] for r in rows)
        self._label.update((i, base + n) for n, i in enumerate(ids))
        self._live.extend(np.ones(len(ids), dtype=bool))
        self._cats.append([categories[r] for r in rows] if categories is not None else [None] * len(ids))
        if self.auto_compact and self._wanted_kind(len(self._label)) != self.kind:
            self._rebuild(extra=x)  # crossing a size threshold: one build over everything
        else:
            self._index.add(x)
            self._maybe_rebuild()

    def remove(self, ids: Sequence[str]) -> int:
        n = self._kill(id_list(ids))
        self._maybe_rebuild()
        return n

    def compact_due(self) -> bool:
        """Whether `compact` is worth its O(catalog) rebuild: tombstones past `max_tombstone_fraction`,
        or a live size that wants another kind. A few tombstones cost a search nothing worth a rebuild
        (at 1M rows an HNSW rebuild is minutes), and `save` keeps them."""
        return (self.tombstones > self.max_tombstone_fraction * max(len(self._ids), 1)
                or self._wanted_kind(len(self._label)) != self.kind)

    def compact(self) -> None:
        """Drop tombstones and pick the kind for the live size: O(catalog), never on a request."""
        if self.tombstones or self._wanted_kind(len(self._label)) != self.kind:
            self._rebuild()

    def _kill(self, ids: Sequence[str]) -> int:
        n = 0
        live = self._live.array
        for i in ids:
            label = self._label.pop(i, None)
            if label is not None:
                self._ids[label] = None
                self._hash[label] = None
                live[label] = False
                n += 1
        return n

    def _maybe_rebuild(self) -> None:
        if self.auto_compact and self.tombstones > self.max_tombstone_fraction * max(len(self._ids), 1):
            self._rebuild()

    def _rebuild(self, extra: np.ndarray | None = None) -> None:
        """Re-index live vectors (plus `extra`, rows already registered after the indexed ones)."""
        ntotal = self._index.ntotal
        live = np.flatnonzero(self._live.array[:ntotal])
        x = _reconstruct_rows(self._index, live, self.dim)
        if extra is not None:
            x = np.concatenate([x, extra])
            live = np.concatenate([live, np.arange(ntotal, ntotal + len(extra))])
        index = self._new_index(x)
        if len(x):
            index.add(np.ascontiguousarray(x, dtype=np.float32))
        self._index = index
        self._ids = [self._ids[r] for r in live]
        self._hash = [self._hash[r] for r in live]
        self._label = {i: r for r, i in enumerate(self._ids) if i is not None}
        self._live = GrowArray(bool, np.ones(len(self._ids), dtype=bool))
        self._cats.take(live)

    def _wanted_kind(self, n: int) -> str:
        kind = self.index_kind
        if kind == "auto":
            kind = "flat" if n <= self.exact_threshold else "hnsw" if n <= self.compact_threshold else "hnsw-sq8"
        if kind in ("hnsw-sq8", "ivfpq") and n < self.train_min:
            return "flat"  # nothing to train the quantiser on yet
        return kind

    def _new_index(self, x: np.ndarray) -> faiss.Index:
        """An empty faiss index of the kind wanted for `x` (the rows it is about to hold), trained if needed."""
        kind = self._wanted_kind(len(x))
        if kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if kind == "ivfpq":
            nlist = int(min(65536, max(16, 4 * math.sqrt(len(x)))))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFPQ(quantizer, self.dim, nlist, self.pq_bytes, 8, faiss.METRIC_INNER_PRODUCT)
            index.nprobe = self.nprobe
        else:
            if kind == "hnsw":
                index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexHNSWSQ(self.dim, faiss.ScalarQuantizer.QT_8bit, self.hnsw_m,
                                          faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
        if not index.is_trained:
            rng = np.random.default_rng(0)
            sample = x if len(x) <= 200_000 else x[np.sort(rng.choice(len(x), 200_000, replace=False))]
            index.train(np.ascontiguousarray(sample, dtype=np.float32))
        if isinstance(index, faiss.IndexIVF):
            index.make_direct_map()  # get_vector needs id -> (list, offset)
        return index

    # -- queries
    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        category: CategoryLike = None,
        exclude: Collection[str] = (),
        allow: Collection[str] | None = None,
    ) -> list[list[Hit]]:
        q = as_matrix(queries, self.dim, "queries")
        allowed = self._allowed(category, exclude, allow)
        n_allowed = len(self._label) if allowed is None else int(allowed.sum())
        k = min(int(k), n_allowed)
        if k <= 0 or len(q) == 0:
            return [[] for _ in range(len(q))]

        bitmap = None  # must outlive the searches: faiss keeps only a raw pointer to it
        sel = None
        if allowed is not None:
            bitmap = np.packbits(allowed, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))

        kind = self.kind
        if kind == "flat":
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
            scores, labels = self._index.search(q, k, params=params)
        elif kind == "ivfpq":
            probe = self.nprobe
            if sel is not None:  # a tight filter leaves few allowed rows in the probed lists
                share = n_allowed / max(self._index.ntotal, 1)
                probe = int(min(self._index.nlist, max(probe, probe / max(share, 1e-9))))
            params = faiss.SearchParametersIVF(nprobe=probe, sel=sel) if sel is not None else \
                faiss.SearchParametersIVF(nprobe=probe)
            scores, labels = self._index.search(q, k, params=params)
            short = np.flatnonzero((labels >= 0).sum(axis=1) < k)
            if len(short):  # not enough allowed rows in the probed lists: probe them all
                every = faiss.SearchParametersIVF(nprobe=self._index.nlist, sel=sel) if sel is not None else \
                    faiss.SearchParametersIVF(nprobe=self._index.nlist)
                scores[short], labels[short] = self._index.search(q[short], k, params=every)
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
        """Brute force over the HNSW's own storage (flat or 8-bit): no copy, and the selector skips rows."""
        storage = faiss.downcast_index(self._index.storage)
        params = faiss.SearchParameters(sel=sel) if sel is not None else None
        return storage.search(q, k, params=params)

    def _allowed(self, category: CategoryLike, exclude: Collection[str],
                 allow: Collection[str] | None = None) -> np.ndarray | None:
        """Bool mask over labels, or None when every indexed row may be returned."""
        skip = [self._label[i] for i in id_list(exclude) if i in self._label]
        if not category and not skip and self.tombstones == 0 and allow is None:
            return None
        mask = self._live.array.copy()
        if category:
            mask &= self._cats.mask(category)
        if allow is not None:
            only = np.zeros(len(mask), dtype=bool)
            only[[r for r in (self._label.get(i) for i in id_list(allow)) if r is not None]] = True
            mask &= only
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
    def hashes(self) -> dict[str, str | None]:
        return {i: self._hash[r] for i, r in self._label.items()}

    def save(self, folder: str | Path) -> None:
        """Write as is (tombstones are kept as null ids, so saving never rebuilds); O(catalog) bytes."""

        def write(tmp: Path) -> None:
            faiss.write_index(self._index, str(tmp / "index.faiss"))
            n = self._index.ntotal
            cats = [self._cats.text(r) for r in range(n)]
            atomic_write_json(tmp / "ids.json", {"ids": self._ids[:n], "categories": cats, "hashes": self._hash[:n]},
                              indent=None)

        manifest = {
            "backend": self.backend,
            "dim": self.dim,
            "count": len(self),
            "kind": self.kind,
            "options": self.options,
        }
        save_folder(folder, manifest, write)

    @classmethod
    def load(cls, folder: str | Path, **overrides: Any) -> FaissIndex:
        manifest = read_manifest(folder)
        if manifest["backend"] != cls.backend:
            raise ValueError(f"{folder} holds a {manifest['backend']!r} index, not {cls.backend!r}")
        data = data_folder(folder, manifest)
        index = cls(dim=manifest["dim"], **{**manifest.get("options", {}), **overrides})
        faiss_index = faiss.read_index(str(data / "index.faiss"))
        if faiss_index.d != index.dim:
            raise ValueError(f"{data}: faiss index has dim {faiss_index.d}, manifest says {index.dim}")
        meta = read_json(data / "ids.json")
        if len(meta["ids"]) != faiss_index.ntotal:
            raise ValueError(f"{data}: {len(meta['ids'])} ids for {faiss_index.ntotal} vectors")
        if isinstance(faiss_index, faiss.IndexHNSW):
            faiss_index.hnsw.efSearch = index.ef_search
        if isinstance(faiss_index, faiss.IndexIVF):
            faiss_index.nprobe = index.nprobe
            faiss_index.make_direct_map()
        index._index = faiss_index
        index._ids = list(meta["ids"])
        index._hash = list(meta.get("hashes") or [None] * len(index._ids))
        index._label = {i: r for r, i in enumerate(index._ids) if i is not None}
        index._live = GrowArray(bool, [i is not None for i in index._ids])
        index._cats.append(meta["categories"])
        return index


def _kind_of(index: faiss.Index) -> str:
    if isinstance(index, faiss.IndexIVFPQ):
        return "ivfpq"
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw-sq8" if isinstance(faiss.downcast_index(index.storage), faiss.IndexScalarQuantizer) else "hnsw"
    return "flat"


def _default_pq_bytes(dim: int) -> int:
    """About dim/8 one-byte sub-quantisers (96 bytes for 768-d), a divisor of dim."""
    want = max(1, dim // 8)
    return max(b for b in range(1, want + 1) if dim % b == 0)


def _reconstruct_rows(index: faiss.Index, rows: np.ndarray, dim: int) -> np.ndarray:
    """The stored vectors of `rows` (decoded, for quantised kinds)."""
    if not len(rows):
        return np.zeros((0, dim), dtype=np.float32)
    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()
    out = np.empty((len(rows), dim), dtype=np.float32)
    step = 65_536
    for s in range(0, len(rows), step):
        out[s : s + step] = index.reconstruct_batch(rows[s : s + step].astype(np.int64))
    return out
