"""Vector indexes (faiss, numpy, and whatever `register_backend` adds) and the embedding store.

Backends are imported on first use, so `import shopclip.index` stays cheap and a
server backend's client library stays optional.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shopclip.index.base import (
    Hit,
    VectorIndex,
    available_backends,
    category_matches,
    create_index,
    get_backend,
    load_index,
    register_backend,
)

if TYPE_CHECKING:
    from shopclip.index.faiss_backend import FaissIndex
    from shopclip.index.numpy_backend import NumpyIndex
    from shopclip.index.store import EmbeddingStore

__all__ = [
    "EmbeddingStore",
    "FaissIndex",
    "Hit",
    "NumpyIndex",
    "VectorIndex",
    "available_backends",
    "category_matches",
    "create_index",
    "get_backend",
    "load_index",
    "register_backend",
]

_LAZY = {
    "FaissIndex": "shopclip.index.faiss_backend",
    "NumpyIndex": "shopclip.index.numpy_backend",
    "EmbeddingStore": "shopclip.index.store",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
