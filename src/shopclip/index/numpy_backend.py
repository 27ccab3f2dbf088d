"""Exact brute-force index in plain numpy: the reference other backends are tested against."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shopclip.core.io import atomic_write_json, read_json
from shopclip.index.base import (
    CategoryLike,
    CategoryTable,
    Hit,
    VectorIndex,
    add_inputs,
    as_matrix,
    data_folder,
    id_list,
    read_manifest,
    save_folder,
)


class NumpyIndex(VectorIndex):
    """Rows in insertion order; an upserted id moves to the end (same as `FaissIndex`)."""

    backend = "numpy"

    def __init__(self, dim: int, **options: Any) -> None:
        if options:
            raise TypeError(f"NumpyIndex takes no options, got {sorted(options)}")
        self.dim = int(dim)
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._hash: dict[str, str | None] = {}
        self._cats = CategoryTable()

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
        self.remove(ids)
        self._hash.update((i, given[r]) for i, r in zip(ids, rows, strict=True))
        self._vectors = np.concatenate([self._vectors, x[rows]])
        self._cats.append([categories[r] for r in rows] if categories is not None else [None] * len(ids))
        for i in ids:
            self._row[i] = len(self._ids)
            self._ids.append(i)

    def remove(self, ids: Sequence[str]) -> int:
        drop = sorted({self._row[i] for i in id_list(ids) if i in self._row})
        if not drop:
            return 0
        for r in drop:
            self._hash.pop(self._ids[r], None)
        keep = np.setdiff1d(np.arange(len(self._ids)), drop)
        self._vectors = self._vectors[keep]
        self._cats.take(keep)
        self._ids = [self._ids[r] for r in keep]
        self._row = {i: r for r, i in enumerate(self._ids)}
        return len(drop)

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
        allowed = np.ones(len(self._ids), dtype=bool)
        if category:
            allowed &= self._cats.mask(category)
        if allow is not None:
            only = np.zeros(len(self._ids), dtype=bool)
            only[[r for r in (self._row.get(i) for i in id_list(allow)) if r is not None]] = True
            allowed &= only
        for i in id_list(exclude):
            r = self._row.get(i)
            if r is not None:
                allowed[r] = False
        cand = np.flatnonzero(allowed)
        k = min(int(k), len(cand))
        if k <= 0:
            return [[] for _ in range(len(q))]
        scores = q @ self._vectors[cand].T
        out = []
        for row in scores:
            top = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
            top = top[np.lexsort((cand[top], -row[top]))]  # best first, ties by insertion order
            out.append([Hit(self._ids[cand[j]], float(row[j])) for j in top])
        return out

    def get_vector(self, id: str) -> np.ndarray:
        return self._vectors[self._row[id]].copy()

    def get_category(self, id: str) -> str | None:
        return self._cats.text(self._row[id])

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, id: object) -> bool:
        return id in self._row

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    # -- persistence
    def hashes(self) -> dict[str, str | None]:
        return {i: self._hash.get(i) for i in self._ids}

    def save(self, folder: str | Path) -> None:
        def write(tmp: Path) -> None:
            np.save(tmp / "vectors.npy", self._vectors)
            atomic_write_json(
                tmp / "ids.json",
                {"ids": self._ids, "categories": self._category_texts(), "hashes": [self._hash.get(i) for i in self._ids]},
                indent=None,
            )

        save_folder(folder, {"backend": self.backend, "dim": self.dim, "count": len(self)}, write)

    @classmethod
    def load(cls, folder: str | Path, **overrides: Any) -> NumpyIndex:
        manifest = read_manifest(folder)
        if manifest["backend"] != cls.backend:
            raise ValueError(f"{folder} holds a {manifest['backend']!r} index, not {cls.backend!r}")
        data = data_folder(folder, manifest)
        index = cls(dim=manifest["dim"])
        meta = read_json(data / "ids.json")
        if meta["ids"]:
            index.add(meta["ids"], np.load(data / "vectors.npy"), meta["categories"], hashes=meta.get("hashes"))
        return index

    def _category_texts(self) -> list[str | None]:
        return [self._cats.text(r) for r in range(len(self._ids))]
