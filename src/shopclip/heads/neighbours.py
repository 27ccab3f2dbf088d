"""The labelled products a tag is explained by: the nearest ones, with their labels.

A reviewer checking "Apparel > Topwear > Tshirts, colour Navy Blue" wants to see the
labelled products the listing looks like. The heads keep an index of their training
products in the heads' fused view (image and text vectors concatenated / sqrt(2), so a
score is the mean of the photo cosine and the text cosine) and those products'
category, attributes and labels. The renormalised *sum* of the two vectors (the work
folder's fused index) was tried first: its image-text cross terms let a brand name pull
a shoe next to a t-shirt of the same brand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shopclip.core.io import atomic_write_jsonl, read_jsonl
from shopclip.heads.features import fuse
from shopclip.index import VectorIndex, create_index, load_index

INDEX_DIR = "neighbours"
LABELS_FILE = "neighbours.jsonl"


def neighbour_space(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """The vectors neighbours are searched in: the fused view (cosine = mean of the two cosines)."""
    return fuse(np.asarray(image, dtype=np.float32), np.asarray(text, dtype=np.float32)).astype(np.float32)


@dataclass
class Neighbours:
    index: VectorIndex
    records: dict[str, dict[str, Any]]

    @classmethod
    def build(cls, ids: Sequence[str], image: np.ndarray, text: np.ndarray,
              records: Sequence[dict[str, Any]]) -> Neighbours:
        vecs = neighbour_space(image, text)
        index = create_index("faiss", dim=vecs.shape[1])
        index.add(list(ids), vecs, [r.get("category") or None for r in records])
        return cls(index, {i: dict(r) for i, r in zip(ids, records, strict=True)})

    def nearest(self, image: np.ndarray, text: np.ndarray, k: int,
                own_ids: Sequence[str | None] | None = None) -> list[list[dict[str, Any]]]:
        """Per row, the k nearest labelled products (id, score, their labels), never the
        row's own product (``own_ids``): a labelled product is not its own evidence."""
        if not len(self.index) or k <= 0:
            return [[] for _ in range(len(image))]
        hits = self.index.search(neighbour_space(image, text), k + 1)
        own = list(own_ids) if own_ids is not None else [None] * len(hits)
        return [[{"id": h.id, "score": round(h.score, 4), **self.records.get(h.id, {})}
                 for h in row if h.id != me][:k] for row, me in zip(hits, own, strict=True)]

    def save(self, folder: Path) -> None:
        self.index.save(folder / INDEX_DIR)
        atomic_write_jsonl(folder / LABELS_FILE, ({"id": i, **r} for i, r in self.records.items()))

    @classmethod
    def load(cls, folder: Path) -> Neighbours:
        records = {r.pop("id"): r for r in read_jsonl(folder / LABELS_FILE)}
        return cls(load_index(folder / INDEX_DIR), records)


__all__ = ["Neighbours", "neighbour_space"]
