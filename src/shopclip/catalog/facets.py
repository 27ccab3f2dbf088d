"""The few product fields shoppers filter on: brand, colour, gender and product type.

Read from a product's own catalog fields only, the same way everywhere (the lexical
index, the vector-side filter, the query vocabulary), so a filter understood from a
query ("red", "puma", "women") matches exactly the products whose fields say so:

* colour: the `color` / `colour` attribute;
* gender: the `gender` attribute, else `ideal_for` ("Girls, Women"), else a gender word in
  the title ("Puma Men White Casual Shoes");
* brand: the `brand` attribute, else the title's words before its gender word (fashion
  titles read "<Brand> <Gender> ...": "United Colors of Benetton Men ...");
* type: the category's last level ("Casual Shoes").

Values are lower-cased and whitespace-squashed. `Filters` is a filter over them plus a
price range, with one `matches` used by every side of a hybrid search.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FACETS", "GENDER_WORDS", "FacetPostings", "Filters", "facet_key", "product_facets"]

FACETS = ("brand", "color", "gender", "type")
GENDER_WORDS = ("men", "women", "boys", "girls", "unisex", "kids")
_GENDER_RE = re.compile(r"^(men|women|boys|girls|unisex|kids)(?:'s)?$", re.IGNORECASE)
_SPLIT_LIST = re.compile(r"\s*(?:,|/|&|\band\b)\s*", re.IGNORECASE)
MAX_BRAND_WORDS = 4


def facet_key(value: Any) -> str:
    """The form facet values are compared in: lower case, single spaces."""
    return " ".join(str(value).lower().split())


def _gender(value: str) -> list[str]:
    out = []
    for part in _SPLIT_LIST.split(value):
        m = _GENDER_RE.match(part.strip())
        if m:
            out.append(m.group(1).lower())
    return out


def product_facets(meta: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """facet name → values, from a product's meta (`title`, `category`, `attributes`)."""
    attrs = {str(k).lower(): str(v) for k, v in (meta.get("attributes") or {}).items() if v is not None}
    title = str(meta.get("title") or "")
    words = title.split()
    out: dict[str, tuple[str, ...]] = {}
    color = attrs.get("color") or attrs.get("colour")
    if color and color.strip():
        out["color"] = (facet_key(color),)
    genders = _gender(attrs["gender"]) if "gender" in attrs else []
    if not genders and "ideal_for" in attrs:
        genders = _gender(attrs["ideal_for"])
    pos = next((i for i, w in enumerate(words) if _GENDER_RE.match(w.strip(",.-"))), None)
    if not genders and pos is not None:
        genders = [_GENDER_RE.match(words[pos].strip(",.-")).group(1).lower()]  # type: ignore[union-attr]
    if genders:
        out["gender"] = tuple(dict.fromkeys(genders))
    brand = attrs.get("brand")
    if not (brand and brand.strip()) and pos is not None and 1 <= pos <= MAX_BRAND_WORDS:
        brand = " ".join(words[:pos])
    if brand and brand.strip():
        out["brand"] = (facet_key(brand),)
    category = meta.get("category")
    levels = category if isinstance(category, list) else [p for p in str(category or "").split(">")]
    levels = [str(x).strip() for x in levels if str(x).strip()]
    if levels:
        out["type"] = (facet_key(levels[-1]),)
    return out


@dataclass(frozen=True)
class Filters:
    """Facet values to keep (any of the values, for every facet named) and a price range.

    A product without a price never passes a price bound: nothing says it is under 1,500.
    """

    facets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    price_min: float | None = None
    price_max: float | None = None

    def __bool__(self) -> bool:
        return bool(self.facets) or self.price_min is not None or self.price_max is not None

    def matches(self, facets: Mapping[str, tuple[str, ...]], price: float | None) -> bool:
        for name, wanted in self.facets.items():
            have = facets.get(name, ())
            if not any(v in have for v in wanted):
                return False
        if self.price_min is not None or self.price_max is not None:
            if price is None:
                return False
            if self.price_min is not None and price < self.price_min:
                return False
            if self.price_max is not None and price > self.price_max:
                return False
        return True

    def matches_meta(self, meta: Mapping[str, Any]) -> bool:
        return self.matches(product_facets(meta) if self.facets else {}, _price(meta.get("price")))

    def without(self, name: str) -> Filters:
        """These filters minus one facet ("price" drops both bounds): what "remove" on the page does."""
        if name == "price":
            return Filters(dict(self.facets))
        return Filters({k: v for k, v in self.facets.items() if k != name}, self.price_min, self.price_max)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: list(v) for k, v in self.facets.items()}
        if self.price_min is not None:
            out["price_min"] = self.price_min
        if self.price_max is not None:
            out["price_max"] = self.price_max
        return out


def _price(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


class FacetPostings:
    """facet value → the ids of the products that have it, kept in step with the catalog's writes.

    A filter's facet part becomes set intersections (`ids`), so the vector side of a filtered
    search asks the index for exactly the products that pass (`VectorIndex.search(allow=)`)
    instead of widening an unfiltered search until enough do: that widening walked the whole
    catalog for a narrow filter (a title query understood as brand + colour + gender + type).
    Prices are not posted; a price bound is still checked on the hits.
    """

    def __init__(self, products: Iterable[Mapping[str, Any]] = ()) -> None:
        self._ids: dict[tuple[str, str], set[str]] = {}
        for meta in products:
            self.add(meta)

    def _keys(self, meta: Mapping[str, Any]) -> list[tuple[str, str]]:
        return [(name, v) for name, values in product_facets(meta).items() for v in values]

    def add(self, meta: Mapping[str, Any]) -> None:
        pid = str(meta["id"])
        for key in self._keys(meta):
            self._ids.setdefault(key, set()).add(pid)

    def remove(self, meta: Mapping[str, Any]) -> None:
        pid = str(meta["id"])
        for key in self._keys(meta):
            ids = self._ids.get(key)
            if ids is not None:
                ids.discard(pid)
                if not ids:
                    del self._ids[key]

    def ids(self, filters: Filters | None) -> set[str] | None:
        """Ids passing the filters' facets (any value of each facet, every facet); None: no facet to apply."""
        if not filters or not filters.facets:
            return None
        out: set[str] | None = None
        for name, wanted in sorted(filters.facets.items(), key=lambda kv: sum(len(self._ids.get((kv[0], v), ()))
                                                                          for v in kv[1])):
            have: set[str] = set()
            for v in wanted:
                have |= self._ids.get((name, v), set())
            out = have if out is None else out & have
            if not out:
                return set()
        return out if out is not None else set()
