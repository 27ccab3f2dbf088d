"""Build the ANN indexes of a work folder from its embedding store (a batch job, never on the request path).

The index folder records what it was built from (`source.json`: the store's model
fingerprint, its state key and each product's content hash), so a reader can tell an
index that no longer matches the embeddings (`shopclip embed` ran again since) and say
so instead of answering from stale vectors or failing with a shape error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shopclip.core.hashing import sha1_bytes
from shopclip.core.io import atomic_write_json, read_json
from shopclip.index import create_index, load_index
from shopclip.index.base import VectorIndex, category_text, write_together
from shopclip.index.store import EmbeddingStore
from shopclip.pipeline.embed import fused_vectors

VIEWS = ("image", "text", "fused")
SOURCE = "source.json"
# Bumped when what an index row records changes, so `build` re-indexes old work folders.
INDEX_FORMAT_VERSION = 2  # 2: rows carry row_hash (store content hash + category)


def row_hash(content_hash: str, category: object) -> str:
    """What an index row was made from: the product's embedding-store hash and its category.

    A server start compares these with the store's (cheap) instead of comparing vectors, and
    the category is in it because a category change alone does not re-embed a product.
    """
    return sha1_bytes(f"{content_hash}\x1f{category_text(category) or ''}".encode())[:20]


LEXICAL = "lexical"  # the BM25 view (shopclip.index.lexical), beside the vector views


class IndexOutOfDateError(RuntimeError):
    """The indexes were built from other embeddings than the store now holds."""


def build_indexes(store_dir: str | Path, out: str | Path, *, backend: str = "faiss", **options) -> dict[str, int]:
    """One index per view: image, text and fused (image+text) product vectors.

    `options` go to the backend (faiss: `index="auto"|"hnsw"|"hnsw-sq8"|"ivfpq"`, …; a
    server store: `uri=`), and each view gets its own name in a server store (`view=`).
    """
    store = EmbeddingStore.open(store_dir)
    ids = store.ids
    cats = [m.get("category", "") for m in store.meta()]
    content = store.hashes()
    hashes = [row_hash(content[i], c) for i, c in zip(ids, cats, strict=True)]
    sizes = {}
    staged: list[tuple[str, VectorIndex]] = []  # server stores: the three views go live in one transaction
    try:
        for view in VIEWS:
            vecs = fused_vectors(store) if view == "fused" else store.vectors(view)
            index = create_index(backend, dim=store.manifest["dim"],
                                 **view_options(backend, view, options, Path(out).parent))
            try:
                if ids:
                    index.add(ids, vecs, cats, hashes=hashes)
                sizes[view] = len(index)
                if index.transaction_key:
                    staged.append((view, index))
                    continue
                index.save(Path(out) / view)
            except BaseException:
                index.close()
                raise
            index.close()
        with write_together(index for _, index in staged):
            for view, index in staged:
                index.save(Path(out) / view)
    finally:
        for _, index in staged:
            index.close()
    sizes[LEXICAL] = build_lexical(store, out)
    record_source(store, out)  # last: a crash before this leaves the old record, which no longer matches
    return sizes


def build_lexical(store: EmbeddingStore, out: str | Path) -> int:
    """The lexical view from the products' stored metadata (title, brand, attributes, description)."""
    try:
        from shopclip.index.lexical import LexicalIndex
    except ImportError as e:  # tantivy needs Python >= 3.11: search stays vector-only there
        import logging

        logging.getLogger(__name__).warning("no lexical index: %s", e)
        return 0
    index = LexicalIndex.build(Path(out) / LEXICAL, store.meta())
    return len(index)


def view_options(backend: str, view: str, options: dict[str, Any], workdir: str | Path) -> dict[str, Any]:
    """Backend options for one view.

    A server store (its class sets `per_view_name = True`) keeps each view in its own table
    or collection, named from `view`, and keeps an embedded server's data under `workdir`.
    """
    from shopclip.index import get_backend

    cls = get_backend(backend)
    if getattr(cls, "per_view_name", False):
        return {**options, "view": view, "workdir": str(Path(workdir).resolve())}
    return dict(options)


def load_indexes(folder: str | Path, **overrides: Any) -> dict[str, VectorIndex]:
    """The saved views; `overrides` (e.g. `uri=`) point a server store elsewhere than it was built."""
    return {view: load_index(Path(folder) / view, **overrides) for view in VIEWS if (Path(folder) / view).exists()}


def index_problem(store: EmbeddingStore, folder: str | Path, indexes: dict[str, VectorIndex]) -> str | None:
    """Why the indexes in `folder` do not answer for `store` (a short reason), or None when they do.

    Fast when nothing changed (one hash). When the store did change, only the changed
    products are compared, so indexes kept in step with the store (the server's upserts
    and start-up repair update both) still count as current.
    """
    missing = [v for v in VIEWS if v not in indexes]
    if missing:
        return f"no {', '.join(missing)} index"
    path = Path(folder) / SOURCE
    source: dict[str, Any] = read_json(path) if path.exists() else {}
    if source and source.get("model") == store.model and source.get("state") == store.state_key():
        return None
    problem = _compare(store, indexes, source)
    if problem and source and source.get("model") != store.model:
        return "the embeddings were made by another model since the index was built"
    return problem


def _compare(store: EmbeddingStore, indexes: dict[str, VectorIndex], source: dict[str, Any]) -> str | None:
    """Check the products that changed since `source` was recorded (all of them without a record)."""
    for view, index in indexes.items():
        if index.dim != store.dim:
            return f"the {view} index holds {index.dim}-d vectors, the embeddings are {store.dim}-d"
    now = store.hashes()
    old = source.get("hashes", {}) if source.get("model") == store.model else {}
    changed = [i for i, h in now.items() if old.get(i) != h]
    removed = {i for i in old if i not in now} if old else set(indexes["fused"].ids) - set(now)
    for view, index in indexes.items():
        stale = [i for i in removed if i in index]
        if stale:
            return f"{len(stale)} products removed from the embeddings are still in the {view} index"
        absent = [i for i in changed if i not in index]
        if absent:
            return f"{len(absent)} products in the embeddings are not in the {view} index (e.g. {absent[0]!r})"
    if not changed:
        return None
    pos = {i: r for r, i in enumerate(store.ids)}
    rows = np.array([pos[i] for i in changed])
    for view, index in indexes.items():
        want = (fused_vectors(store) if view == "fused" else store.vectors(view))[rows]
        have = np.stack([index.get_vector(i) for i in changed]).astype(np.float32)
        cos = np.sum(want * have, axis=1) / np.maximum(np.linalg.norm(have, axis=1), 1e-12)
        if (cos < 0.999).any():
            return f"{int((cos < 0.999).sum())} products were re-embedded since the {view} index was built"
    return None


def record_source(store: EmbeddingStore, folder: str | Path) -> None:
    """Record that the indexes in `folder` now hold exactly `store`'s vectors (after a rebuild or repair)."""
    atomic_write_json(Path(folder) / SOURCE, {"model": store.model, "dim": store.dim, "state": store.state_key(),
                                              "hashes": store.hashes()}, indent=None)


def check_indexes(store: EmbeddingStore, folder: str | Path, indexes: dict[str, VectorIndex], workdir: str | Path) -> None:
    """Raise IndexOutOfDateError with the command that fixes it."""
    problem = index_problem(store, folder, indexes)
    if problem:
        raise IndexOutOfDateError(f"index is out of date with the embeddings ({problem}): "
                                  f"run `shopclip index build {workdir}`")
