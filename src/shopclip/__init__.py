"""shopclip: aligned image-text embeddings for product catalogs.

The notebook API mirrors the CLI verbs::

    from shopclip import load_model, Catalog, embed_catalog, build_indexes, SearchEngine
"""

from __future__ import annotations

from typing import Any

from shopclip.core.threads import apply_default_policy

# Before anything imports torch: idle OpenMP threads sleep instead of spinning (see
# shopclip.core.threads.py; a user's own OMP_WAIT_POLICY wins).
apply_default_policy()

__version__ = "0.1.0"

_LAZY = {
    "load_model": "shopclip.models",
    "create_model": "shopclip.models",
    "list_models": "shopclip.models",
    "DualEncoder": "shopclip.models",
    "Catalog": "shopclip.catalog",
    "Product": "shopclip.catalog",
    "validate_catalog": "shopclip.catalog",
    "embed_catalog": "shopclip.pipeline.embed",
    "build_indexes": "shopclip.pipeline.indexing",
    "build": "shopclip.pipeline.build",
    "BuildOptions": "shopclip.pipeline.build",
    "SearchEngine": "shopclip.search",
    "EmbeddingStore": "shopclip.index.store",
    "create_index": "shopclip.index",
    "load_index": "shopclip.index",
}


def __getattr__(name: str) -> Any:
    """Import heavy modules (torch, transformers) only when their names are used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'shopclip' has no attribute {name!r}")


__all__ = list(_LAZY)
