"""The in-memory shape of a product catalog.

Every other part of shopclip (embedding, indexing, training, serving) reads products
through these two dataclasses, so the rules that decide what a product *is* live
here and in :mod:`shopclip.catalog.validation`, nowhere else.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shopclip.core.io import atomic_write_jsonl

CATEGORY_SEP = " > "

# Columns with a meaning of their own; everything else a row carries lands in Product.extra.
KNOWN_FIELDS = (
    "id",
    "title",
    "image",
    "description",
    "category",
    "attributes",
    "group",
    "labels",
    "url",
    "price",
    "split",
)


def split_category(value: str) -> list[str]:
    """'A > B > C' -> ['A', 'B', 'C']; blank input is no category at all."""
    if not value.strip():
        return []
    return [part.strip() for part in value.split(CATEGORY_SEP)]


def image_relpath(image: str) -> str:
    """The image path as it is opened: lexically normalised, '/' separators.

    Validation judges this lexical form ("a/link/../x" is "a/x"); opening the same
    form means the OS cannot follow a symlink out through "..".
    """
    return posixpath.normpath(image.replace("\\", "/"))


def short_repr(value: Any, limit: int = 80) -> str:
    """A bounded repr for error reports: a 5 MB description must not land in errors.jsonl."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class RowError:
    """One problem with one field of one catalog row.

    Defined here (re-exported by :mod:`.validation`) because both the readers and the
    validator produce them and neither may import the other at module load.
    """

    line: int
    field: str
    reason: str
    id: str | None = None
    value: str | None = None
    # "error": the row is rejected; "warning": the row is kept (e.g. a CMYK photo converted to RGB).
    severity: str = "error"

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "field": self.field,
            "reason": self.reason,
            "id": self.id,
            "value": self.value,
            "severity": self.severity,
        }

    def __str__(self) -> str:
        who = f" (id {self.id})" if self.id else ""
        tag = "warning: " if self.severity == "warning" else ""
        return f"line {self.line}{who}: {tag}{self.field}: {self.reason}"


@dataclass
class Product:
    """One validated catalog row; `line` points back at the source for error messages."""

    id: str
    title: str
    image: str
    description: str = ""
    category: list[str] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)
    group: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    url: str | None = None
    price: float | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Not part of identity: the same product read from JSONL and CSV sits on different lines.
    line: int = field(default=0, compare=False)

    @property
    def category_path(self) -> str:
        return CATEGORY_SEP.join(self.category)

    @property
    def leaf(self) -> str:
        return self.category[-1] if self.category else ""

    def text(self) -> str:
        """Plain text for a text tower: title, category path, attributes, then description.

        The long, noisy description goes last so that tokenizer truncation (128-256
        tokens) cuts it, not the structured parts that name what the product is.
        """
        parts = [_squash(self.title)]
        if self.category:
            parts.append(self.category_path)
        attrs = "; ".join(
            f"{k.replace('_', ' ')}: {_squash(v)}" for k, v in self.attributes.items() if str(v).strip()
        )
        if attrs:
            parts.append(attrs)
        desc = _squash(self.description)
        if desc and desc != parts[0]:
            parts.append(desc)
        return ". ".join(p.rstrip(". ") for p in parts if p) + "."

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able row in catalog order; empty optional fields are left out, extras flattened back."""
        row: dict[str, Any] = {"id": self.id, "title": self.title}
        if self.description:
            row["description"] = self.description
        row["category"] = list(self.category)
        row["attributes"] = dict(self.attributes)
        if self.labels:
            row["labels"] = dict(self.labels)
        for name in ("group", "url", "price", "split"):
            value = getattr(self, name)
            if value is not None:
                row[name] = value
        for key, value in self.extra.items():
            row.setdefault(key, value)
        row["image"] = self.image
        return row

    @classmethod
    def from_dict(cls, d: dict[str, Any], line: int = 0) -> Product:
        """Build from a trusted row (already validated, or our own to_dict); no checks here."""
        category = d.get("category") or []
        if isinstance(category, str):
            category = split_category(category)
        price = d.get("price")
        return cls(
            id=str(d["id"]),
            title=d["title"],
            image=d["image"],
            description=d.get("description") or "",
            category=list(category),
            attributes={str(k): str(v) for k, v in (d.get("attributes") or {}).items()},
            group=None if d.get("group") is None else str(d["group"]),
            labels=dict(d.get("labels") or {}),
            url=d.get("url"),
            price=None if price is None else float(price),
            split=d.get("split"),
            extra={k: v for k, v in d.items() if k not in KNOWN_FIELDS},
            line=line,
        )


def _squash(text: str) -> str:
    return " ".join(str(text).split())


@dataclass
class Catalog:
    """Validated products plus the folder their image paths are relative to.

    Treat `products` as read-only: the id index is rebuilt only when its length changes.
    """

    products: list[Product]
    root: Path
    source: Path | None = None
    errors: list[RowError] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.source is not None:
            self.source = Path(self.source)

    # -- container protocol -------------------------------------------------
    def _by_id(self) -> dict[str, int]:
        if len(self._index) != len(self.products):
            self._index = {p.id: i for i, p in enumerate(self.products)}
        return self._index

    def __len__(self) -> int:
        return len(self.products)

    def __iter__(self) -> Iterator[Product]:
        return iter(self.products)

    def __contains__(self, item: object) -> bool:
        key = item.id if isinstance(item, Product) else item
        return isinstance(key, str) and key in self._by_id()

    def __getitem__(self, product_id: str) -> Product:
        try:
            return self.products[self._by_id()[product_id]]
        except KeyError:
            raise KeyError(f"no product with id {product_id!r} in catalog") from None

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.products]

    def image_path(self, p: Product | str) -> Path:
        """Where a product's image is read from; `p` is a Product or a product id."""
        product = p if isinstance(p, Product) else self[p]
        return self.root / image_relpath(product.image)

    # -- views ----------------------------------------------------------------
    def _derive(self, products: list[Product]) -> Catalog:
        return Catalog(products=products, root=self.root, source=self.source)

    def split(self, name: str) -> Catalog:
        return self._derive([p for p in self.products if p.split == name])

    def subset(self, ids: Iterable[str]) -> Catalog:
        """Products with these ids, in the order given (duplicates dropped); KeyError if unknown."""
        seen: set[str] = set()
        out = []
        for pid in ids:
            if pid not in seen:
                seen.add(pid)
                out.append(self[pid])
        return self._derive(out)

    def categories(self, level: int | None = None) -> list[str]:
        """Sorted unique category paths, or their first `level` levels (level 1 = top)."""
        if level is not None and level < 1:
            raise ValueError(f"level must be >= 1, got {level}")
        paths = {
            CATEGORY_SEP.join(p.category[:level] if level else p.category)
            for p in self.products
            if p.category
        }
        return sorted(paths)

    # -- IO -------------------------------------------------------------------
    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, check_images: bool = False, progress: bool = False
    ) -> Catalog:
        """Validate and load; bad rows are in `.errors`, CatalogReadError if the file itself is unreadable."""
        from shopclip.catalog.validation import validate_catalog  # validation imports this module

        report = validate_catalog(path, check_images=check_images, progress=progress)
        return report.to_catalog()

    def write_jsonl(self, path: str | os.PathLike[str]) -> None:
        """Write atomically. Image paths are kept as they are: relative to `root`, not to `path`."""
        atomic_write_jsonl(path, (p.to_dict() for p in self.products))

    def __repr__(self) -> str:
        src = f", source={str(self.source)!r}" if self.source else ""
        return (
            f"Catalog({len(self.products)} products, root={str(self.root)!r}{src}, errors={len(self.errors)})"
        )
