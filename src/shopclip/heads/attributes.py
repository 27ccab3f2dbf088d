"""Attribute heads: which attributes get one, their value vocabulary, where they apply.

Selection is shared with the evaluation suite (``shopclip.eval.tasks.attribute_selection``
calls :func:`select_attributes`): an attribute gets a head when it has at least two values
with ``min_count`` products each and ``min_products`` labelled products among those.

Values are compared case-insensitively ("WHITE" is "White"); the vocabulary keeps each
value's most common spelling. An attribute *applies* to a category when at least
``min_share`` of that category's training products carry it: gender is predicted for
shirts, not for laptop batteries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shopclip.heads.category import SEP, as_path
from shopclip.heads.classifier import DEFAULT_TARGET_ACCURACY, ClassHead


def canonical(value: Any) -> str:
    """The comparison key of an attribute value: trimmed, spaces squashed, case folded."""
    return " ".join(str(value).split()).casefold()


def select_attributes(attributes: Sequence[dict[str, Any]], *, min_count: int = 5, min_products: int = 100,
                      max_attributes: int | None = None) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Which attributes get a classifier, and why each other one does not.

    Kept: >= 2 values with ``min_count`` examples each and ``min_products`` labelled
    products among those values, most labelled first (at most ``max_attributes``; None:
    all of them). Returns ``(targets, skipped)``: ``targets`` maps name -> kept values;
    ``skipped`` maps each attribute with at least ``min_count`` labelled products to its
    reason (most labelled first), and counts the rarer ones (a long tail of one-off spec fields) under
    ``"(rarer attributes)"``.
    """
    per: dict[str, Counter[str]] = {}
    for attrs in attributes:
        for name, value in attrs.items():
            v = str(value).strip()
            if v:
                per.setdefault(name, Counter())[v] += 1
    chosen, reasons, rare = [], [], 0
    for name, counter in per.items():
        values = sorted(v for v, n in counter.items() if n >= min_count)
        labelled, total = sum(counter[v] for v in values), sum(counter.values())
        if len(values) >= 2 and labelled >= min_products:
            chosen.append((labelled, name, values))
        elif total < min_count:
            rare += 1
        elif len(values) < 2:
            reasons.append((total, name, f"{len(values)} value(s) with >= {min_count} products ({total} labelled in all)"))
        else:
            reasons.append((total, name, f"{labelled} labelled products among its {len(values)} usable values "
                                         f"< {min_products}"))
    chosen.sort(key=lambda t: (-t[0], t[1]))
    if max_attributes is not None:
        reasons += [(labelled, name, f"over max_attributes={max_attributes} ({labelled} labelled products)")
                    for labelled, name, _values in chosen[max_attributes:]]
        chosen = chosen[:max_attributes]
    # Most labelled first: the near misses a reader wants to see lead the list.
    skipped: dict[str, Any] = {name: why for _, name, why in sorted(reasons, key=lambda t: (-t[0], t[1]))}
    if rare:
        skipped["(rarer attributes)"] = f"{rare} attributes with fewer than {min_count} labelled products each"
    return {name: values for _, name, values in chosen}, skipped


def spelling_map(values: Sequence[Any]) -> dict[str, str]:
    """canonical key -> the most common spelling among ``values``."""
    by_key: dict[str, Counter[str]] = {}
    for v in values:
        s = " ".join(str(v).split())
        if s:
            by_key.setdefault(canonical(s), Counter())[s] += 1
    return {k: c.most_common(1)[0][0] for k, c in by_key.items()}


def applicable_categories(paths: Sequence[Any], has_value: Sequence[bool], min_share: float) -> list[str]:
    """Category prefixes (every level) where at least ``min_share`` of the products carry the attribute."""
    seen: Counter[str] = Counter()
    labelled: Counter[str] = Counter()
    for p, has in zip(paths, has_value, strict=True):
        path = as_path(p)
        for d in range(1, len(path) + 1):
            key = SEP.join(path[:d])
            seen[key] += 1
            labelled[key] += int(has)
    return sorted(k for k, n in seen.items() if labelled[k] >= min_share * n)


@dataclass
class AttributeHead:
    """One attribute: a calibrated head over its canonical values, and where it applies."""

    name: str
    head: ClassHead
    applies_to: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, name: str, x_train: np.ndarray, attrs_train: Sequence[dict[str, Any]], paths_train: Sequence[Any],
            x_val: np.ndarray | None = None, attrs_val: Sequence[dict[str, Any]] | None = None, *,
            values: Sequence[str] | None = None, C: float = 0.1, min_count: int = 5, min_share: float = 0.2,
            target_accuracy: float = DEFAULT_TARGET_ACCURACY) -> AttributeHead | None:
        """``values``: the kept values (default: those with ``min_count`` training products,
        compared case-insensitively)."""
        spell = spelling_map([a[name] for a in attrs_train if name in a])
        y_tr = [spell.get(canonical(a[name])) if name in a else None for a in attrs_train]
        y_va = [spell.get(canonical(a[name])) if name in a else None for a in (attrs_val or [])]
        kept = sorted({spell[canonical(v)] for v in values if canonical(v) in spell}) if values is not None else None
        head = ClassHead.fit(x_train, y_tr, x_val, y_va if x_val is not None else None, C=C, min_count=min_count,
                             classes=kept, target_accuracy=target_accuracy)
        if head is None:
            return None
        applies = applicable_categories(paths_train, [y is not None for y in y_tr], min_share)
        return cls(name, head, applies, {"min_share": min_share, **head.metrics})

    def applies(self, category: Any) -> bool:
        """Does this attribute apply to a product of this category (its deepest known prefix)?"""
        path = as_path(category)
        known = set(self.applies_to)
        for d in range(len(path), 0, -1):
            if SEP.join(path[:d]) in known:
                return True
        return not path  # no category at all: let the head answer (its confidence says how sure)

    def value_of(self, attrs: dict[str, Any]) -> str | None:
        """The product's given value in the head's spelling (None when absent)."""
        if self.name not in attrs or not str(attrs[self.name]).strip():
            return None
        key = canonical(attrs[self.name])
        return next((c for c in self.head.classes if canonical(c) == key), " ".join(str(attrs[self.name]).split()))

    def score(self, x: np.ndarray, attrs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Fill accuracy on products whose value is hidden from the head (it reads photo and
        text only, never the attributes), coverage at the abstain threshold."""
        return self.head.score(x, [self.value_of(a) for a in attrs])

    def to_dict(self) -> dict[str, Any]:
        return {**self.head.to_dict(), "applies_to": self.applies_to, "metrics": self.metrics}

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return self.head.arrays(prefix)

    @classmethod
    def from_saved(cls, name: str, d: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str) -> AttributeHead:
        return cls(name, ClassHead.from_saved(d, arrays, prefix), list(d.get("applies_to", [])),
                   dict(d.get("metrics", {})))


__all__ = ["AttributeHead", "applicable_categories", "canonical", "select_attributes", "spelling_map"]
