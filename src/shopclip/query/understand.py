"""Filters understood from a query: "nike red running shoes under ₹2,000" → brand, colour, price.

Only values the catalog itself holds can be understood: the vocabulary is built from the
products' own facets (`shopclip.catalog.facets`: brand, colour, gender, type), nothing
comes from outside the catalog. Words are matched longest phrase first ("red tape" the
brand before "red" the colour), singular or plural ("kurta" finds "Kurtas"), with or
without inner spaces and dashes ("t-shirt" finds "Tshirts"). A word naming the last word
of several product types ("shoes") keeps all of them ("casual shoes", "sports shoes", ...).

Price phrases ("under 1500", "below ₹2,000", "between 500 and 1,000", "over Rs. 999")
become a price range; one whose number makes no sense ("under 0", "under 1,2,3", a number
past any price) is reported in `ignored` with the reason, never guessed at. Every filter
comes back as a chip with its label ("colour = red", "price < 1500") so the page and the
API can show it and let the user drop it (`Filters.without`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shopclip.catalog.facets import FACETS, Filters, product_facets
from shopclip.catalog.prices import CURRENCY, PriceError, parse_price

__all__ = ["Chip", "Understood", "Vocabulary", "understand"]

MAX_PHRASE_WORDS = 5
LABELS = {"brand": "brand", "color": "colour", "gender": "gender", "type": "type", "price": "price"}
# Words too common to stand for a brand on their own, whatever a catalog calls its brands.
_NOT_A_BRAND = frozenset(["a", "an", "and", "the", "of", "for", "with", "in", "on", "to", "by", "my", "our", "your", "new", "w", "x"])
_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*", re.UNICODE)
_NUM = r"(?:\d[\d,.\s]*\d|\d)"
_CUR = rf"(?:{CURRENCY}\s*)?"
_PRICE_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("between", re.compile(rf"\b(?:between|from)\s+{_CUR}({_NUM})\s*(?:/-)?\s*(?:and|to|-)\s+{_CUR}({_NUM})(?:\s*/-)?",
                           re.IGNORECASE)),
    ("range", re.compile(rf"(?<![\w.,])(?:{CURRENCY}\s*)({_NUM})\s*(?:-|to)\s*{_CUR}({_NUM})", re.IGNORECASE)),
    ("max", re.compile(rf"\b(?:under|below|less\s+than|cheaper\s+than|up\s*to|upto|within|max(?:imum)?|"
                       rf"at\s+most|not\s+more\s+than|<=?)\s*{_CUR}(-?\s*{_NUM}[\w.]*)(?:\s*/-)?", re.IGNORECASE)),
    ("min", re.compile(rf"\b(?:over|above|more\s+than|at\s+least|min(?:imum)?|starting\s+(?:at|from)|>=?)"
                       rf"\s*{_CUR}(-?\s*{_NUM}[\w.]*)(?:\s*/-)?", re.IGNORECASE)),
]
MAX_QUERY_PRICE = 1e9


def _stem(word: str) -> str:
    """A crude English singular, enough to meet catalog plurals: kurtas→kurta, watches→watch."""
    w = word.lower().replace("'s", "").strip("-'")
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("sses", "shes", "ches", "xes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def _keys(phrase: str) -> set[str]:
    words = [_stem(w) for w in _WORD.findall(phrase.lower().replace("-", " "))]
    if not words:
        return set()
    return {" ".join(words), "".join(words)}


@dataclass(frozen=True)
class Chip:
    """One understood filter: which words, which facet and values, and how to show it."""

    facet: str
    values: tuple[str, ...]
    words: str
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {"facet": self.facet, "values": list(self.values), "words": self.words, "label": self.label}


@dataclass
class Understood:
    query: str  # what the user typed
    text: str  # the query without its price phrases: what the rankers see
    filters: Filters = field(default_factory=Filters)
    chips: list[Chip] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)

    @property
    def shown(self) -> str:
        """"showing: colour = red, price < 1500" (empty without filters)."""
        return ("showing: " + ", ".join(c.label for c in self.chips)) if self.chips else ""

    def without(self, facets: Iterable[str]) -> Understood:
        drop = set(facets)
        filters = self.filters
        for name in drop:
            filters = filters.without(name)
        return Understood(self.query, self.text, filters, [c for c in self.chips if c.facet not in drop],
                          self.ignored)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "filters": [c.to_dict() for c in self.chips], "shown": self.shown,
                "ignored": self.ignored}


class Vocabulary:
    """Facet values of one catalog, keyed by their matchable forms; kept in step product by product.

    `add` / `remove` cost one product's facets (a server write stays independent of the
    catalog's size). Sets are replaced, never edited in place, so a reader in another thread
    never sees one change size under it.
    """

    def __init__(self, metas: Iterable[Mapping[str, Any]] = ()) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.version = 0  # bumped on every change: caches of derived tables check it, not the counts
        self.priced = 0
        self.phrases: dict[str, dict[str, frozenset[str]]] = {}  # key → facet → values
        self.heads: dict[str, frozenset[str]] = {}  # "shoe" → every "... shoes" type
        for m in metas:
            self.add(m)

    @property
    def has_prices(self) -> bool:
        return self.priced > 0

    def __len__(self) -> int:
        return len(self.phrases)

    def add(self, meta: Mapping[str, Any]) -> None:
        self._change(meta, +1)

    def remove(self, meta: Mapping[str, Any]) -> None:
        self._change(meta, -1)

    def facet_values(self, facets: Iterable[str], min_count: int = 1) -> frozenset[tuple[str, str]]:
        """(facet, value) pairs of these facets held by at least `min_count` products."""
        wanted = set(facets)
        return frozenset(k for k, c in self.counts.items() if k[0] in wanted and c >= min_count)

    def _change(self, meta: Mapping[str, Any], sign: int) -> None:
        self.version += 1
        if meta.get("price") is not None:
            self.priced += sign
        for name, values in product_facets(meta).items():
            for value in values:
                key = (name, value)
                before = self.counts[key]
                self.counts[key] = before + sign
                if self.counts[key] <= 0:
                    del self.counts[key]
                if before <= 0 < self.counts.get(key, 0):
                    self._index(name, value, add=True)
                elif before > 0 and key not in self.counts:
                    self._index(name, value, add=False)

    def _index(self, name: str, value: str, *, add: bool) -> None:
        if name not in FACETS or (name == "brand" and (len(value) < 2 or value in _NOT_A_BRAND)):
            return
        for key in _keys(value):
            entry = dict(self.phrases.get(key, {}))
            values = set(entry.get(name, frozenset()))
            (values.add if add else values.discard)(value)
            if values:
                entry[name] = frozenset(values)
            else:
                entry.pop(name, None)
            if entry:
                self.phrases[key] = entry
            else:
                self.phrases.pop(key, None)
        words = _WORD.findall(value)
        if name == "type" and len(words) > 1:
            head = _stem(words[-1])
            values = set(self.heads.get(head, frozenset()))
            (values.add if add else values.discard)(value)
            if values:
                self.heads[head] = frozenset(values)
            else:
                self.heads.pop(head, None)

    def lookup(self, words: list[str]) -> dict[str, frozenset[str]] | None:
        parts = [p for w in words for p in w.lower().split("-") if p]
        keys = (" ".join(_stem(w) for w in parts), "".join(_stem(w) for w in parts), " ".join(parts))
        for key in keys:
            hit = self.phrases.get(key)
            if hit:
                return hit
        for key in keys:  # "shoes" alone: every kind of shoes, unless a type is called just that
            if key in self.heads:
                return {"type": self.heads[key]}
        return None


def _price_value(raw: str) -> tuple[float | None, str | None]:
    text = raw.strip().rstrip(".,")
    if text.startswith("-"):
        return None, "a negative price"
    try:
        value = parse_price(text)
    except PriceError as e:
        return None, f"not a price ({e})"
    if value is None:
        return None, "no number"
    if value <= 0:
        return None, "a price must be above 0"
    if value > MAX_QUERY_PRICE:
        return None, "a number past any price"
    return value, None


def _fmt(x: float) -> str:
    return f"{x:g}" if x < 1e6 else f"{x:,.0f}"


def _prices(query: str, vocab: Vocabulary) -> tuple[str, float | None, float | None, list[Chip], list[dict[str, str]]]:
    lo = hi = None
    chips: list[Chip] = []
    ignored: list[dict[str, str]] = []
    phrases: list[str] = []
    text = query
    for kind, pattern in _PRICE_PATTERNS:
        for m in list(pattern.finditer(text)):
            words = m.group(0).strip()
            values = [_price_value(g) for g in m.groups()]
            problem = next((p for _, p in values if p), None)
            if problem is None and kind in ("between", "range") and values[0][0] > values[1][0]:  # type: ignore[operator]
                problem = "the range's low end is above its high end"
            if problem is None and not vocab.has_prices:
                problem = "this catalog has no prices"
            if problem:
                ignored.append({"words": words, "reason": problem})
            else:
                phrases.append(words)
                if kind in ("between", "range"):
                    lo, hi = values[0][0], values[1][0]
                elif kind == "max":
                    hi = values[0][0]
                else:
                    lo = values[0][0]
            text = text.replace(m.group(0), " ", 1)
    if lo is not None or hi is not None:
        if lo is not None and hi is not None and lo > hi:
            ignored.append({"words": "price", "reason": "the lower bound is above the upper bound"})
            lo = hi = None
        else:
            label = (f"{_fmt(lo)} ≤ price ≤ {_fmt(hi)}" if lo is not None and hi is not None
                     else f"price < {_fmt(hi)}" if hi is not None else f"price > {_fmt(lo)}")  # type: ignore[arg-type]
            chips.append(Chip("price", tuple(_fmt(v) for v in (lo, hi) if v is not None), " ".join(phrases), label))
    return " ".join(text.split()), lo, hi, chips, ignored


def understand(query: str, vocab: Vocabulary) -> Understood:
    """Filters named in `query` (catalog values and price phrases), with chips to show them."""
    text, lo, hi, price_chips, ignored = _prices(query, vocab)
    words = _WORD.findall(text)
    facets: dict[str, set[str]] = {}
    said: dict[str, list[str]] = {}
    chips: list[Chip] = []
    i = 0
    while i < len(words):
        for n in range(min(MAX_PHRASE_WORDS, len(words) - i), 0, -1):
            hit = vocab.lookup(words[i : i + n])
            if hit:
                for name, values in hit.items():
                    if name in facets:  # a second colour widens the filter ("red or blue")
                        facets[name] |= values
                    else:
                        facets[name] = set(values)
                    said.setdefault(name, []).append(" ".join(words[i : i + n]))
                i += n
                break
        else:
            i += 1
    for name in FACETS:
        if name in facets:
            values = tuple(sorted(facets[name]))
            shown = values[0] if len(values) == 1 else " or ".join(values[:3]) + (" …" if len(values) > 3 else "")
            chips.append(Chip(name, values, " ".join(said[name]), f"{LABELS[name]} = {shown}"))
    filters = Filters({c.facet: c.values for c in chips}, lo, hi)
    for c in price_chips:
        chips.append(Chip("price", c.values, c.words, c.label))
    return Understood(query, text or query, filters, chips, ignored)


def vocabulary_terms(metas: Iterable[Mapping[str, Any]]) -> set[str]:
    """Every word of the catalog's titles and facet values (lower case): what "English here" means."""
    out: set[str] = set()
    for m in metas:
        out.update(w.lower() for w in _WORD.findall(str(m.get("title") or "")))
        for values in product_facets(m).values():
            out.update(_WORD.findall(" ".join(values)))
    return out

