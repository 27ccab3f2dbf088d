"""What a task head reads: the model's image and text vectors of a listing, and their views.

A listing is what a seller uploads: a photo and text (title, then description). The
category path and attributes are never part of the text, since the heads predict them.
Views follow the evaluation suite: ``image``, ``text`` and ``fused`` (the two unit vectors
concatenated and scaled by 1/sqrt(2), so a fused cosine is the mean of the two cosines).

:class:`ListingEncoder` encodes catalogs through the shared tower-feature cache
(:mod:`shopclip.models.features`): photos already featurised by ``shopclip train`` or
``build`` cost only the projection heads, and a re-run of a job reads everything back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Views = dict[str, np.ndarray]
VIEWS = ("image", "text", "fused")


def fuse(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Concatenated unit vectors / sqrt(2): unit length, cosine = mean of the two cosines."""
    return np.concatenate([image, text], axis=1) / np.sqrt(2.0)


def make_views(image: np.ndarray | None, text: np.ndarray | None) -> Views:
    out: Views = {}
    if image is not None:
        out["image"] = image
    if text is not None:
        out["text"] = text
    if image is not None and text is not None:
        out["fused"] = fuse(image, text)
    return out


def listing_text(title: str, description: str | None = "") -> str:
    """What a seller wrote: the title, then the description when it adds anything."""
    t = " ".join(str(title or "").split())
    d = " ".join(str(description or "").split())
    return f"{t}. {d}" if d and d != t else t


@dataclass
class ListingEncoder:
    """A model's image and text vectors for many listings, tower outputs cached by content.

    ``cache_dir`` is the tower-feature cache (default: the one ``shopclip train`` fills,
    ``$SHOPCLIP_CACHE_DIR`` or ``~/.cache/shopclip``); ``None`` there means the default.
    """

    model: Any
    cache_dir: str | Path | None = None
    image_batch_size: int = 16
    text_batch_size: int = 64
    num_workers: int = 2

    def __post_init__(self) -> None:
        from shopclip.models.features import (
            FeatureCache,
            default_cache_dir,
            image_fingerprint,
            text_fingerprint,
        )

        self.model.eval()
        root = Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()
        m = self.model
        # the towers run on the model's inference engine (int8 by default), as `embed` and the server do;
        # an engine that changes the numbers has its own cache keys
        self._engine = getattr(m, "engine", None)
        self._image_cache = FeatureCache(root, "image", image_fingerprint(m, self._engine), m.image_tower.output_dim)
        self._text_cache = FeatureCache(root, "text", text_fingerprint(m, self._engine), m.text_tower.output_dim)

    def images(self, paths: Sequence[str | Path], sha1s: Sequence[str] | None = None,
               progress: bool = False) -> np.ndarray:
        """(n, d) unit vectors of image files (``sha1s``: their content hashes, if known)."""
        import torch

        from shopclip.core.hashing import file_sha1
        from shopclip.models.augment import AugmentConfig
        from shopclip.models.features import CLEAN_VIEW, ImageItem, compute_image_features, view_key

        if not len(paths):
            return np.zeros((0, self.model.embed_dim), np.float32)
        hashes = list(sha1s) if sha1s is not None else [file_sha1(p) for p in paths]
        items = [ImageItem(str(p), h) for p, h in zip(paths, hashes, strict=True)]
        compute_image_features(self.model, items, [CLEAN_VIEW], self._image_cache, aug=AugmentConfig(), seed=0,
                               batch_size=self.image_batch_size, num_workers=self.num_workers, progress=progress,
                               engine=self._engine)
        feats = self._image_cache.get([view_key(h, CLEAN_VIEW) for h in hashes])
        with torch.inference_mode():
            return self.model.project_image(torch.from_numpy(feats)).float().numpy()

    def texts(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """(n, d) unit vectors of listing texts."""
        import torch

        from shopclip.models.features import compute_text_features, text_key

        if not len(texts):
            return np.zeros((0, self.model.embed_dim), np.float32)
        compute_text_features(self.model, list(texts), self._text_cache, batch_size=self.text_batch_size,
                              progress=progress, engine=self._engine)
        feats = self._text_cache.get([text_key(t) for t in texts])
        with torch.inference_mode():
            return self.model.project_text(torch.from_numpy(feats)).float().numpy()

    def views(self, paths: Sequence[str | Path], texts: Sequence[str], progress: bool = False) -> Views:
        return make_views(self.images(paths, progress=progress), self.texts(texts, progress=progress))


def encode_listing(model: Any, image: Any, text: str) -> Views:
    """Views of one new listing (a decoded photo and its text), straight through the model."""
    return make_views(model.encode_image([image], num_workers=1), model.encode_text([text]))


__all__ = ["VIEWS", "ListingEncoder", "Views", "encode_listing", "fuse", "listing_text", "make_views"]
