"""The product sets an evaluation reads, and the labels tasks take from them.

Three roles, all group-aware (re-listings of one product never straddle two roles):

* ``eval`` — the split under test (``test`` by default): retrieval, zero-shot, probe
  scores, matching, clustering;
* ``train`` — a bounded, hashed, group-aware subset of the ``train`` split that linear
  probes are fitted on (bounded because embedding images dominates the run time);
* ``tune`` — a bounded subset of ``val``: matching and adult thresholds are chosen here.

Product text is the *listing* text (title, then description) by default. The category
path and attributes are left out on purpose: several tasks predict exactly those, and
:meth:`Product.text` spells them out, so a text probe on it would read the answer.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shopclip.catalog import Catalog, Product, group_key
from shopclip.eval.synthetic import Relisting
from shopclip.heads.binary import parse_binary

SEP = " > "
TEXT_FIELDS = ("title", "description", "category", "attributes")


def product_text(p: Product, fields: Sequence[str] = ("title", "description")) -> str:
    """Text for one product from the chosen fields (see the module docstring for why)."""
    unknown = set(fields) - set(TEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown text fields {sorted(unknown)}; choose from {TEXT_FIELDS}")
    title = " ".join(p.title.split()) if "title" in fields else ""
    desc = " ".join(p.description.split()) if "description" in fields else ""
    parts = [title] + ([desc] if desc and desc != title else [])
    if "category" in fields and p.category:
        parts.append(p.category_path)
    if "attributes" in fields and p.attributes:
        parts.append("; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in p.attributes.items()))
    return ". ".join(x for x in parts if x)


def group_aware_sample(products: Sequence[Product], n: int | None, seed: int = 0) -> list[Product]:
    """At most ``n`` products, whole groups at a time, in a hashed (seeded) order.

    Groups are taken in ``sha1(seed:group_key)`` order and kept in catalog order, so the
    subset is stable when the catalog grows and never splits a group.
    """
    if n is None or n >= len(products):
        return list(products)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(products):
        groups[group_key(p)].append(i)
    order = sorted(groups, key=lambda k: hashlib.sha1(f"shopclip-eval:{seed}:{k}".encode()).hexdigest())
    keep: list[int] = []
    for k in order:
        if len(keep) + len(groups[k]) > n:
            continue
        keep += groups[k]
        if len(keep) == n:
            break
    return [products[i] for i in sorted(keep)]


@dataclass
class ProductSet:
    """Parallel lists describing one set of products (real or synthetic)."""

    name: str
    ids: list[str]
    texts: list[str]
    images: list[Path]
    categories: list[list[str]]
    groups: list[str | None]
    attributes: list[dict[str, str]]
    labels: list[dict[str, Any]]
    titles: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def paths(self) -> list[str]:
        """Full category path per product ('' when it has none)."""
        return [SEP.join(c) for c in self.categories]

    @property
    def tops(self) -> list[str]:
        return [c[0] if c else "" for c in self.categories]

    @property
    def parents(self) -> list[str]:
        """The path without its leaf; for one-level categories the category itself."""
        return [SEP.join(c[:-1]) if len(c) > 1 else (c[0] if c else "") for c in self.categories]

    @classmethod
    def from_products(cls, name: str, catalog: Catalog, products: Sequence[Product],
                      text_fields: Sequence[str] = ("title", "description")) -> ProductSet:
        return cls(
            name=name,
            ids=[p.id for p in products],
            texts=[product_text(p, text_fields) for p in products],
            images=[catalog.image_path(p) for p in products],
            categories=[list(p.category) for p in products],
            groups=[p.group for p in products],
            attributes=[dict(p.attributes) for p in products],
            labels=[dict(p.labels) for p in products],
            titles=[p.title for p in products],
        )

    @classmethod
    def from_relistings(cls, name: str, relistings: Sequence[Relisting], sources: ProductSet) -> ProductSet:
        """Synthetic re-listings carry their source product's labels (same product)."""
        at = {pid: i for i, pid in enumerate(sources.ids)}
        src = [at[r.source_id] for r in relistings]
        return cls(
            name=name,
            ids=[r.id for r in relistings],
            texts=[r.text() for r in relistings],
            images=[Path(r.image) for r in relistings],
            categories=[sources.categories[i] for i in src],
            groups=[sources.groups[i] for i in src],
            attributes=[sources.attributes[i] for i in src],
            labels=[sources.labels[i] for i in src],
            titles=[r.title for r in relistings],
        )

    def subset(self, idx: Sequence[int], name: str | None = None) -> ProductSet:
        return ProductSet(
            name=name or self.name,
            ids=[self.ids[i] for i in idx],
            texts=[self.texts[i] for i in idx],
            images=[self.images[i] for i in idx],
            categories=[self.categories[i] for i in idx],
            groups=[self.groups[i] for i in idx],
            attributes=[self.attributes[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            titles=[self.titles[i] for i in idx],
        )


def binary_labels(ps: ProductSet, label: str) -> list[int | None]:
    """Values of ``labels.<name>`` (``label`` may be ``adult`` or ``labels.adult``)."""
    name = label[len("labels."):] if label.startswith("labels.") else label
    return [parse_binary(lab.get(name)) for lab in ps.labels]


__all__ = ["ProductSet", "binary_labels", "group_aware_sample", "parse_binary", "product_text"]
