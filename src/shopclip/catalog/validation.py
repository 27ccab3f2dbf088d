"""Decide which catalog rows become products, and say exactly why the others do not.

Catalogs come from scrapers, spreadsheets and vendor feeds: some rows will be broken.
The rule here is that a broken row costs only itself. Each problem is reported with
the row's line number, the field and a reason; the good rows go on; no row is ever
dropped silently. One row can carry several errors but counts as rejected once.

Reasons start with a fixed phrase ("missing field", "wrong type", "image too small",
...) and put the particulars after ':' or in parentheses, so reports can count them.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

from shopclip.catalog.prices import PriceError, parse_price
from shopclip.catalog.readers import read_rows
from shopclip.catalog.schema import (
    KNOWN_FIELDS,
    Catalog,
    Product,
    RowError,
    image_relpath,
    short_repr,
    split_category,
)
from shopclip.core.images import inspect_image
from shopclip.core.images import size_problem as image_size_problem  # re-exported
from shopclip.core.io import atomic_write_jsonl

__all__ = [
    "RowError",
    "ValidationReport",
    "validate_catalog",
    "validate_row",
    "image_path_problem",
    "image_size_problem",
    "default_errors_path",
    "write_errors",
]

SPLITS = ("train", "val", "test")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass
class ValidationReport:
    """What validate_catalog found: the good products, one RowError per problem, one per warning.

    Errors reject their row; warnings (severity "warning") keep it and say what was done
    to it (a CMYK or greyscale photo converted to RGB), so nothing changes silently either.
    """

    products: list[Product]
    errors: list[RowError]
    total_rows: int
    source: Path
    warnings: list[RowError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No row rejected (warnings do not count)."""
        return not self.errors

    @property
    def rejected_rows(self) -> int:
        return len({e.line for e in self.errors})

    @property
    def findings(self) -> list[RowError]:
        """Errors and warnings together, by line: what the errors file holds."""
        return sorted([*self.errors, *self.warnings], key=lambda e: e.line)

    def reason_counts(self) -> Counter[str]:
        """Errors per (field, reason kind), e.g. 'image: truncated image'."""
        return Counter(f"{e.field}: {reason_kind(e.reason)}" for e in self.errors)

    def warning_counts(self) -> Counter[str]:
        """Warnings per (field, reason kind), e.g. 'image: CMYK image'."""
        return Counter(f"{e.field}: {reason_kind(e.reason)}" for e in self.warnings)

    def summary(self, examples: int = 0) -> str:
        """A few lines for a terminal: totals, counts per reason (and the first `examples` findings)."""
        counts = [f"{len(self.errors)} errors"] if self.errors else []
        if self.warnings:
            counts.append(f"{len(self.warnings)} warnings, rows kept")
        lines = [
            f"{self.source}: {self.total_rows} rows, {len(self.products)} valid, {self.rejected_rows} rejected"
            + (f" ({', '.join(counts)})" if counts else "")
        ]
        for kind, n in sorted(self.reason_counts().items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {n:>6}  {kind}")
        for kind, n in sorted(self.warning_counts().items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {n:>6}  {kind} (warning)")
        for e in self.findings[:examples]:
            lines.append(f"  e.g. {e}")
        return "\n".join(lines)

    def to_catalog(self) -> Catalog:
        return Catalog(
            products=self.products, root=self.source.parent, source=self.source, errors=self.errors
        )


def reason_kind(reason: str) -> str:
    """'wrong type: expected string, got int' -> 'wrong type'; 'non-RGB image (mode I;16)' -> 'non-RGB image'."""
    return re.split(r": | \(", reason, maxsplit=1)[0]


def default_errors_path(catalog_path: str | os.PathLike[str]) -> Path:
    """catalog.jsonl -> catalog.jsonl.errors.jsonl: beside the catalog, never mistaken for one by globbing *.jsonl of the same stem."""
    return Path(f"{os.fspath(catalog_path)}.errors.jsonl")


def write_errors(errors: Iterable[RowError], path: str | os.PathLike[str]) -> None:
    """One JSON object per finding (line, field, reason, id, value, severity), written atomically."""
    atomic_write_jsonl(path, (e.to_dict() for e in errors))


# -- field checks -----------------------------------------------------------------


class _FieldError(Exception):
    def __init__(self, reason: str, value: Any = None, where: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.value = value
        self.where = where  # a more precise field name than the column, e.g. "attributes.size"


_MISSING = object()


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "string", bool: "bool", int: "int", float: "float"}.get(
        type(value), type(value).__name__
    )


def _wrong_type(expected: str, value: Any) -> _FieldError:
    return _FieldError(f"wrong type: expected {expected}, got {_type_name(value)}", value)


def _required_text(value: Any, *, allow_int: bool = False) -> str:
    if value is _MISSING or value is None:
        raise _FieldError("missing field")
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _wrong_type("string or int" if allow_int else "string", value)
    if not value.strip():
        raise _FieldError("empty string", value)
    return value


def _optional_text(value: Any, *, allow_int: bool = False) -> str | None:
    if value is _MISSING or value is None:
        return None
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _wrong_type("string or int" if allow_int else "string", value)
    return value if value.strip() else None


def _category(value: Any) -> list[str]:
    if value is _MISSING or value is None:
        return []
    if isinstance(value, str):
        parts = split_category(value)
    elif isinstance(value, list):
        bad = next((x for x in value if not isinstance(x, str)), _MISSING)
        if bad is not _MISSING:
            raise _FieldError(
                f"wrong type: expected list of strings, got list containing {_type_name(bad)}", value
            )
        parts = [x.strip() for x in value]
    else:
        raise _wrong_type("list of strings or 'A > B' string", value)
    if any(not p for p in parts):
        raise _FieldError("empty category level", value)
    return parts


def _attributes(value: Any) -> dict[str, str]:
    if value is _MISSING or value is None:
        return {}
    if not isinstance(value, dict):
        raise _wrong_type("object", value)
    out: dict[str, str] = {}
    for key, v in value.items():
        if v is None:
            continue  # a null attribute is an absent one
        if isinstance(v, bool):
            out[str(key)] = "true" if v else "false"
        elif isinstance(v, str | int | float):
            out[str(key)] = str(v)
        else:
            raise _FieldError(
                f"wrong type: expected a scalar value, got {_type_name(v)}", v, f"attributes.{key}"
            )
    return out


# Labels are flags for evaluation and filtering ({"adult": false}), not a document store:
# a flat object, at most one level of lists, small, and always JSON-serialisable, so a
# stored product can never fail to be written back out (nesting, NaN, huge numbers).
MAX_LABELS = 64
MAX_LABEL_KEY_CHARS = 64
MAX_LABEL_TEXT_CHARS = 256
MAX_LABEL_LIST_ITEMS = 32
_MAX_LABEL_INT = 2**53  # exactly representable in every JSON reader (JavaScript numbers)


def _label_scalar(value: Any, where: str) -> Any:
    """A JSON scalar a label may hold, or a _FieldError naming the label."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_LABEL_INT:
            raise _FieldError("number out of range (|x| > 2**53)", value, where)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _FieldError("not a finite number", value, where)
        return value
    if isinstance(value, str):
        if len(value) > MAX_LABEL_TEXT_CHARS:
            raise _FieldError(f"label too long ({len(value)} > {MAX_LABEL_TEXT_CHARS} chars)", value, where)
        return value
    raise _FieldError(f"wrong type: expected a scalar label value, got {_type_name(value)}", value, where)


def _labels(value: Any) -> dict[str, Any]:
    if value is _MISSING or value is None:
        return {}
    if not isinstance(value, dict):
        raise _wrong_type("object", value)
    if len(value) > MAX_LABELS:
        raise _FieldError(f"too many labels ({len(value)} > {MAX_LABELS})", value)
    out: dict[str, Any] = {}
    for key, v in value.items():
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_LABEL_KEY_CHARS:
            raise _FieldError(f"bad label name (1 to {MAX_LABEL_KEY_CHARS} chars)", key, "labels")
        where = f"labels.{key}"
        if isinstance(v, list):
            if len(v) > MAX_LABEL_LIST_ITEMS:
                raise _FieldError(f"label list too long ({len(v)} > {MAX_LABEL_LIST_ITEMS} items)", v, where)
            if any(isinstance(x, list | dict) for x in v):
                raise _FieldError("wrong type: expected a list of scalars, got nested list or object", v, where)
            out[key] = [_label_scalar(x, where) for x in v]
        elif isinstance(v, dict):
            raise _FieldError("wrong type: expected a scalar or a list of scalars, got object", v, where)
        else:
            out[key] = _label_scalar(v, where)
    return out


def _price(value: Any) -> float | None:
    """Prices as shops write them (`1,299`, `₹1,299.00`, `Rs. 499`): see catalog.prices."""
    if value is _MISSING:
        return None
    try:
        return parse_price(value)
    except PriceError as e:
        raise _FieldError(str(e), value) from None


def _split(value: Any) -> str | None:
    name = _optional_text(value)
    if name is None:
        return None
    if name not in SPLITS:
        raise _FieldError(f"unknown split (expected {', '.join(SPLITS)})", value)
    return name


# Optional fields whose unreadable value is dropped with a warning instead of rejecting the
# row: a price a shop wrote oddly should not cost the product its place in search.
WARN_ONLY = frozenset({"price"})

_CHECKS: dict[str, Callable[[Any], Any]] = {
    "description": lambda v: _optional_text(v) or "",
    "category": _category,
    "attributes": _attributes,
    "group": lambda v: _optional_text(v, allow_int=True),
    "labels": _labels,
    "url": _optional_text,
    "price": _price,
    "split": _split,
}


def image_path_problem(image: str) -> str | None:
    """Why an image path may not be used, or None. Lexical only: symlinks are the owner's choice.

    A catalog may only point inside its own folder, so a shared or uploaded catalog
    cannot make us read /etc/passwd or ../../secrets.
    """
    if _URL_RE.match(image):
        return "image path is a URL (download images and give relative paths)"
    posix = image.replace("\\", "/")
    if posix.startswith("/") or PureWindowsPath(image).drive:
        return "image path escapes the catalog folder (absolute path)"
    norm = image_relpath(image)
    if norm == ".." or norm.startswith("../"):
        return "image path escapes the catalog folder (..)"
    if norm == "." or posix.endswith("/"):
        return "image path is not a file path"
    return None


def validate_row(row: dict[str, Any], line: int) -> tuple[Product | None, list[RowError]]:
    """Check one parsed row; the Product is None when any error was found.

    The list holds errors and warnings (`severity == "warning"`: an unreadable optional
    value was dropped and the row kept); only errors make the Product None.
    """
    errors: list[RowError] = []
    values: dict[str, Any] = {}
    pid: str | None = None

    def add(field_name: str, err: _FieldError) -> None:
        value = None if err.value is None else short_repr(err.value)
        errors.append(RowError(line, err.where or field_name, err.reason, pid, value))

    try:
        pid = _required_text(row.get("id", _MISSING), allow_int=True)
        values["id"] = pid
    except _FieldError as e:
        add("id", e)
    for name in ("title", "image"):
        try:
            values[name] = _required_text(row.get(name, _MISSING))
        except _FieldError as e:
            add(name, e)
    if "image" in values and (problem := image_path_problem(values["image"])):
        add("image", _FieldError(problem, values["image"]))
    warnings: list[RowError] = []
    for name, check in _CHECKS.items():
        try:
            values[name] = check(row.get(name, _MISSING))
        except _FieldError as e:
            if name in WARN_ONLY:
                values[name] = None
                warnings.append(RowError(line, e.where or name, e.reason, pid,
                                         None if e.value is None else short_repr(e.value), severity="warning"))
            else:
                add(name, e)
    if errors:
        return None, errors + warnings
    extra = {k: v for k, v in row.items() if k not in KNOWN_FIELDS}
    return Product(**values, extra=extra, line=line), warnings


# -- the whole catalog ------------------------------------------------------------------


def validate_catalog(
    path: str | os.PathLike[str],
    *,
    check_images: bool = True,
    min_image_size: int = 32,
    workers: int = 8,
    progress: bool = False,
) -> ValidationReport:
    """Read and check every row (and, with check_images, decode every image).

    Raises CatalogReadError only when the file itself cannot be read; everything
    else ends up in the report's errors, sorted by line.
    """
    source = Path(os.path.abspath(os.fspath(path)))
    root = source.parent
    errors: list[RowError] = []
    candidates: list[Product] = []  # rows that passed the row checks, in file order
    # A rejected row still claims its id: which of two copies is right is the owner's call.
    first_line: dict[str, int] = {}
    to_check: list[tuple[int, str | None, str]] = []  # (line, id, image) of every usable image path
    row_warnings: list[RowError] = []
    total = 0

    for line, row in read_rows(source):
        total += 1
        if isinstance(row, RowError):
            errors.append(row)
            continue
        product, row_errors = validate_row(row, line)
        pid = product.id if product else next((e.id for e in row_errors if e.id), None)
        if pid is not None:
            if pid in first_line:
                row_errors.append(
                    RowError(
                        line,
                        "id",
                        f"duplicate id (first seen on line {first_line[pid]})",
                        pid,
                        short_repr(pid),
                    )
                )
                product = None
            else:
                first_line[pid] = line
        image = product.image if product else _usable_image(row)
        if check_images and image is not None:
            to_check.append((line, pid, image))
        errors.extend(e for e in row_errors if e.severity != "warning")
        row_warnings.extend(e for e in row_errors if e.severity == "warning")
        if product is not None:
            candidates.append(product)

    warnings: list[RowError] = row_warnings
    if check_images and to_check:
        bad, image_warnings = _check_images(root, to_check, min_image_size, workers, progress)
        warnings = sorted(row_warnings + image_warnings, key=lambda e: e.line)
        errors.extend(bad)
        bad_lines = {e.line for e in bad}
        candidates = [p for p in candidates if p.line not in bad_lines]

    errors.sort(key=lambda e: e.line)  # stable: a row's own field order is kept
    return ValidationReport(products=candidates, errors=errors, total_rows=total, source=source,
                            warnings=warnings)


def _usable_image(row: dict[str, Any]) -> str | None:
    """The image of an otherwise rejected row, still worth checking so one report lists every problem."""
    image = row.get("image")
    if isinstance(image, str) and image.strip() and image_path_problem(image) is None:
        return image
    return None


def _check_images(
    root: Path, items: list[tuple[int, str | None, str]], min_size: int, workers: int, progress: bool
) -> tuple[list[RowError], list[RowError]]:
    """Decode every image in threads (PIL releases the GIL while decoding).

    Returns (errors, warnings): one error per row whose image is refused, one warning per
    row whose image is usable only after a conversion (CMYK, greyscale, palette, alpha).
    """
    from tqdm.auto import tqdm

    def check(image: str):  # -> ImageCheck
        return inspect_image(root / image_relpath(image), min_size=min_size)

    unique = list(dict.fromkeys(image for _, _, image in items))
    results = {}
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(unique), desc="checking images", unit="img", disable=not progress) as bar,
    ):
        for image, result in zip(unique, pool.map(check, unique), strict=True):
            results[image] = result
            bar.update()
    errors = [
        RowError(line, "image", results[image].reason, pid, short_repr(image))
        for line, pid, image in items
        if results[image].reason is not None
    ]
    warnings = [
        RowError(line, "image", results[image].warning, pid, short_repr(image), severity="warning")
        for line, pid, image in items
        if results[image].reason is None and results[image].warning is not None
    ]
    return errors, warnings
