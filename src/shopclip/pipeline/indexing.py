"""Build the ANN indexes of a work folder from its embedding store (a batch job, never on the request path)."""

from __future__ import annotations

from pathlib import Path

from shopclip.index import create_index, load_index
from shopclip.index.base import VectorIndex
from shopclip.index.store import EmbeddingStore
from shopclip.pipeline.embed import fused_vectors

VIEWS = ("image", "text", "fused")


def build_indexes(store_dir: str | Path, out: str | Path, *, backend: str = "faiss", **options) -> dict[str, int]:
    """One index per view: image, text and fused (image+text) product vectors."""
    store = EmbeddingStore.open(store_dir)
    ids = store.ids
    cats = [m.get("category", "") for m in store.meta()]
    sizes = {}
    for view in VIEWS:
        vecs = fused_vectors(store) if view == "fused" else store.vectors(view)
        index = create_index(backend, dim=store.manifest["dim"], **options)
        if ids:
            index.add(ids, vecs, cats)
        index.save(Path(out) / view)
        sizes[view] = len(index)
    return sizes


def load_indexes(folder: str | Path) -> dict[str, VectorIndex]:
    return {view: load_index(Path(folder) / view) for view in VIEWS if (Path(folder) / view).exists()}
