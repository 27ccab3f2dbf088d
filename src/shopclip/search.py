"""Query a built work folder: text → products, image → products, product → similar products.

Loads the stored embeddings and indexes once; the model is loaded only when a text
or image query needs encoding, so `similar` answers without touching a tower. Indexes
built from other embeddings than the store holds (``shopclip embed`` ran since) raise
:class:`IndexOutOfDateError` on opening rather than answer from stale vectors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shopclip.index.base import read_manifest
from shopclip.index.store import EmbeddingStore
from shopclip.models import DualEncoder, load_model
from shopclip.pipeline.indexing import VIEWS, IndexOutOfDateError, check_indexes, load_indexes
from shopclip.pipeline.workdir import WorkDir


@dataclass
class Result:
    id: str
    score: float
    title: str
    category: str
    image: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["IndexOutOfDateError", "Result", "SearchEngine"]


class SearchEngine:
    def __init__(self, workdir: str | Path, model: DualEncoder | str | None = None, *,
                 store: str | None = None, uri: str | None = None) -> None:
        """`store`/`uri` say where the vector store is when it is not where the work folder
        recorded (the same pgvector tables seen from another host); a store other than the one
        the indexes were built with is an error naming the command that builds it."""
        self.workdir = WorkDir(Path(workdir))
        if not self.workdir.index.exists():
            raise FileNotFoundError(
                f"{self.workdir.root} has no index; run `shopclip build CATALOG --workdir {self.workdir.root}` "
                "or `shopclip index build` first"
            )
        self.store = EmbeddingStore.open(self.workdir.embeddings)
        if store is not None:
            built = {read_manifest(self.workdir.index / v)["backend"] for v in VIEWS
                     if (self.workdir.index / v / "manifest.json").exists()}
            if built and built != {store}:
                raise FileNotFoundError(
                    f"the indexes in {self.workdir.index} were built with --store {', '.join(sorted(built))}; "
                    f"run `shopclip index build {self.workdir.root} --store {store}"
                    + (f" --uri {uri}`" if uri else "`") + " first")
        self.indexes = load_indexes(self.workdir.index, **({"uri": uri} if uri and store != "faiss" else {}))
        check_indexes(self.store, self.workdir.index, self.indexes, self.workdir.root)
        self._model = model if isinstance(model, DualEncoder) else None
        self._model_ref = model if isinstance(model, str) else self.workdir.model_ref()
        self._meta = {m["id"]: m for m in self.store.meta()}

    @property
    def model(self) -> DualEncoder:
        if self._model is None:
            self._model = load_model(self._model_ref)
        return self._model

    @property
    def aligned(self) -> bool:
        """Trained heads put text and images in one space; before that, text matches product text."""
        return bool(self.store.manifest.get("model_info", {}).get("config", {}).get("trained", False))

    def __len__(self) -> int:
        return len(self._meta)

    def product(self, product_id: str) -> dict[str, Any]:
        if product_id not in self._meta:
            raise KeyError(product_id)
        return self._meta[product_id]

    def _results(self, hits: list, ) -> list[Result]:
        out = []
        for h in hits:
            m = self._meta.get(h.id, {})
            out.append(Result(h.id, float(h.score), m.get("title", ""), m.get("category", ""), m.get("image", "")))
        return out

    def search_vector(self, vec: np.ndarray, view: str, k: int = 10, category: str | None = None,
                      exclude: tuple[str, ...] = ()) -> list[Result]:
        return self._results(self.indexes[view].search(vec.astype(np.float32), k, category=category, exclude=exclude)[0])

    def search_text(self, query: str, k: int = 10, category: str | None = None, view: str | None = None) -> list[Result]:
        view = view or ("fused" if self.aligned else "text")
        return self.search_vector(self.model.encode_text([query])[0], view, k, category)

    def search_image(self, image: Any, k: int = 10, category: str | None = None, view: str = "image") -> list[Result]:
        return self.search_vector(self.model.encode_image([image])[0], view, k, category)

    def similar(self, product_id: str, k: int = 10, category: str | None = None, view: str = "fused") -> list[Result]:
        """Products closest to this one (itself excluded); the fused view matched categories best."""
        self.product(product_id)
        if product_id not in self.indexes[view]:  # only if the folder changed after opening
            raise IndexOutOfDateError(f"product {product_id!r} is not in the {view} index: "
                                      f"run `shopclip index build {self.workdir.root}`")
        vec = self.indexes[view].get_vector(product_id)
        return self.search_vector(vec, view, k, category, exclude=(product_id,))
