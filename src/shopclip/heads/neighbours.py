"""The labelled products a tag is explained by: the nearest ones, with their labels.

A reviewer checking "Apparel > Topwear > Tshirts, colour Navy Blue" wants to see the
labelled products the listing looks like. The heads keep an index of their training
products (in the space the work folder's fused view uses: the sum of the image and text
vectors, renormalised) and those products' category, attributes and labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shopclip.core.io import atomic_write_jsonl, read_jsonl
from shopclip.index import VectorIndex, create_index, load_index
from shopclip.index.store import l2_normalize

INDEX_DIR = "neighbours"
LABELS_FILE = "neighbours.jsonl"


def neighbour_space(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """The vectors neighbours are searched in: image + text, renormalised."""
    return l2_normalize(np.asarray(image, dtype=np.float32) + np.asarray(text, dtype=np.float32))


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
