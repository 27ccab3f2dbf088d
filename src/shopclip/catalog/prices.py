"""Prices as shops write them: `1,299`, `₹1,299.00`, `Rs. 499`, `INR 2 000`, `1.299,00 €`.

One reader for catalogs (validation) and for queries ("under ₹2,000"), so a price a shop
wrote and a price a shopper typed mean the same number. A value that cannot be read is a
`PriceError` whose message says why; callers decide whether that rejects anything (a
catalog keeps the row and warns: price is optional).
"""

from __future__ import annotations

import math
import re

__all__ = ["CURRENCY", "PriceError", "parse_price"]

# Currency marks in front of or after the number; matched case-insensitively.
CURRENCY = r"(?:₹|rs\.?|inr|rupees?|\$|usd|€|eur|£|gbp)"
_CURRENCY_RE = re.compile(rf"^\s*{CURRENCY}\s*|\s*{CURRENCY}\s*$", re.IGNORECASE)
_NUMBER_RE = re.compile(r"^\d[\d,.\s'\u00a0\u202f]*$")
_TRAILING = re.compile(r"(?:/-|-)\s*$")  # "499/-", the Indian "no paise" mark
MAX_PRICE = 1e12


class PriceError(ValueError):
    """A price that cannot be read; `str(e)` is the reason."""


def parse_price(value: object) -> float | None:
    """The price as a float, None for blank; PriceError for anything else unreadable.

    Grouping marks (`,` `.` space `'`) and a decimal mark are told apart by position: a
    separator followed by exactly 1-2 digits at the end is the decimal mark ("1.299,00",
    "1,299.50"), a separator followed by groups of 3 digits is grouping ("1,299", "1.299",
    "12,34,567" as written in India).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise PriceError("wrong type: expected number, got bool")
    if isinstance(value, int | float):
        return _check(float(value), value)
    if not isinstance(value, str):
        raise PriceError(f"wrong type: expected number, got {type(value).__name__}")
    text = value.strip()
    if not text:
        return None
    for _ in range(2):  # "Rs. 499 INR" style doubles
        text = _CURRENCY_RE.sub("", text).strip()
    text = _TRAILING.sub("", text).strip()
    if re.match(r"^-\s*\d", text):
        raise PriceError("negative price")
    if not text or not _NUMBER_RE.match(text):
        raise PriceError(f"not a number ({value!r})")
    return _check(_number(text, value), value)


def _number(text: str, original: str) -> float:
    compact = re.sub(r"[\s'\u00a0\u202f]", "", text)
    seps = [i for i, c in enumerate(compact) if c in ",."]
    if not seps:
        return float(compact)
    last = seps[-1]
    tail = compact[last + 1 :]
    decimal = None
    if 1 <= len(tail) <= 2 or (len(tail) != 3 and tail):
        decimal = last  # "1,299.5", "1.299,00", "12.3456" (not a group of 3)
    elif len(seps) > 1 and compact[seps[-2]] != compact[last]:
        decimal = last  # "1.299,000"? two kinds of mark: the last one is decimal
    whole = compact if decimal is None else compact[:decimal]
    frac = "" if decimal is None else compact[decimal + 1 :]
    groups = re.split(r"[,.]", whole)
    if any(not g for g in groups) or (len(groups) > 1 and not all(g.isdigit() for g in groups)):
        raise PriceError(f"not a number ({original!r})")
    if len(groups) > 1 and not _grouped(groups):
        raise PriceError(f"ambiguous digit grouping ({original!r})")
    return float("".join(groups) + ("." + frac if frac else ""))


def _grouped(groups: list[str]) -> bool:
    """Western (1,234,567) or Indian (12,34,567) grouping: later groups have 3 (last) or 2 digits."""
    if not 1 <= len(groups[0]) <= 3 or len(groups[-1]) != 3:
        return False
    middle = groups[1:-1]
    return all(len(g) == 3 for g in middle) or all(len(g) == 2 for g in middle)


def _check(number: float, original: object) -> float:
    if not math.isfinite(number):
        raise PriceError("not a finite number")
    if number < 0:
        raise PriceError("negative price")
    if number > MAX_PRICE:
        raise PriceError(f"implausibly large price ({original!r})")
    return number
