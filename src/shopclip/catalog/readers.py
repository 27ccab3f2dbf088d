"""Read catalog files (JSONL, CSV/TSV, Parquet) into raw row dicts with source line numbers.

Readers only parse; they never judge a row (that is :mod:`.validation`'s job). A row
that cannot even be parsed comes out as a :class:`RowError` so that one bad line
costs one product, not the whole catalog. Only a file that cannot be read at all
raises :class:`CatalogReadError`.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from shopclip.catalog.schema import RowError, split_category

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")
REQUIRED_COLUMNS = ("id", "title", "image")
ATTR_PREFIX = "attr_"
LABEL_PREFIX = "label_"
_SNIFF_BYTES = 1 << 16

Row = tuple[int, "dict[str, Any] | RowError"]


class CatalogReadError(Exception):
    """The catalog file itself cannot be read: missing, wrong format, corrupt."""


def read_rows(path: str | os.PathLike[str]) -> Iterator[Row]:
    """Yield (line, row dict | RowError) for every record of the catalog, in file order.

    Line numbers point where a person would look: JSONL = physical line (1-based,
    blank lines skipped but counted); CSV = physical line where the record starts
    (header = line 1); Parquet = row index + 1; a JSON array file = element index + 1.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (*JSONL_SUFFIXES, *CSV_SUFFIXES, *PARQUET_SUFFIXES):
        raise CatalogReadError(
            f"{path}: unsupported catalog format {suffix or '(no extension)'!r}; "
            "use .jsonl, .csv, .tsv or .parquet"
        )
    if not path.exists():
        raise CatalogReadError(f"{path}: catalog file not found")
    if not path.is_file():
        raise CatalogReadError(f"{path}: not a regular file")
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path)
    if suffix in CSV_SUFFIXES:
        return _read_csv(path, CSV_SUFFIXES[suffix])
    return _read_parquet(path)


# -- JSONL ----------------------------------------------------------------------


def _open_bytes(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller's with-block
    except OSError as e:
        raise CatalogReadError(f"{path}: cannot open: {e.strerror or e}") from e


def _sniff_text(path: Path, head: bytes, what: str) -> None:
    """Refuse binary files early (a Parquet or gzip file renamed .jsonl) instead of 10k row errors."""
    if head.startswith(b"PAR1"):
        raise CatalogReadError(f"{path}: this is a Parquet file, not {what}; rename it to .parquet")
    if head.startswith(b"\x1f\x8b"):
        raise CatalogReadError(f"{path}: gzip-compressed; decompress it first")
    if b"\x00" in head:
        raise CatalogReadError(f"{path}: binary data, not {what}")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as e:
        raise CatalogReadError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def _read_jsonl(path: Path) -> Iterator[Row]:
    with _open_bytes(path) as fp:
        try:
            head = fp.read(_SNIFF_BYTES)
        except OSError as e:
            raise CatalogReadError(f"{path}: cannot read: {e.strerror or e}") from e
        _sniff_text(path, head, "JSONL")
        if path.suffix.lower() == ".json" and head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            yield from _read_json_array(path)
            return
        fp.seek(0)
        parsed = seen = 0
        for lineno, raw in enumerate(fp, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            seen += 1
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield lineno, RowError(lineno, "<row>", f"invalid JSON: not UTF-8 text ({e.reason})")
                continue
            except json.JSONDecodeError as e:
                yield (
                    lineno,
                    RowError(
                        lineno, "<row>", f"invalid JSON: {e.msg} at column {e.colno}", value=_short(raw)
                    ),
                )
                continue
            if not isinstance(obj, dict):
                yield (
                    lineno,
                    RowError(
                        lineno,
                        "<row>",
                        f"invalid JSON: expected an object, got {_json_type(obj)}",
                        value=_short(raw),
                    ),
                )
                continue
            parsed += 1
            yield lineno, obj
    if seen and not parsed:
        raise CatalogReadError(f"{path}: none of its {seen} lines is a JSON object; is it JSONL?")


def _read_json_array(path: Path) -> Iterator[Row]:
    """A .json file holding one array of objects: convenient for hand-made catalogs."""
    try:
        with open(path, encoding="utf-8-sig") as fp:
            data = json.load(fp)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CatalogReadError(f"{path}: not a readable JSON array: {e}") from e
    if not isinstance(data, list) or (data and not any(isinstance(obj, dict) for obj in data)):
        raise CatalogReadError(f"{path}: expected a JSON array of objects")
    for i, obj in enumerate(data, start=1):
        if isinstance(obj, dict):
            yield i, obj
        else:
            yield (
                i,
                RowError(
                    i, "<row>", f"invalid JSON: expected an object, got {_json_type(obj)}", value=_short(obj)
                ),
            )


# -- CSV ------------------------------------------------------------------------


def _read_csv(path: Path, delimiter: str) -> Iterator[Row]:
    with _open_bytes(path) as bfp:
        _sniff_text(path, bfp.read(_SNIFF_BYTES), "CSV")
    # Long product descriptions exceed csv's 128 KiB default field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))
    try:
        fp = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed below
    except OSError as e:
        raise CatalogReadError(f"{path}: cannot open: {e.strerror or e}") from e
    with fp:
        reader = csv.reader(fp, delimiter=delimiter)
        header: list[str] | None = None
        last = 0  # physical lines consumed before the current record
        try:
            for record in reader:
                start, last = last + 1, reader.line_num
                if not record or not any(cell.strip() for cell in record):
                    continue
                if header is None:
                    header = [h.strip() for h in record]
                    if not any(col in header for col in REQUIRED_COLUMNS):
                        raise CatalogReadError(
                            f"{path}: header has none of the columns {', '.join(REQUIRED_COLUMNS)}: "
                            f"{_short(header)}"
                        )
                    continue
                if len(record) != len(header):
                    yield (
                        start,
                        RowError(
                            start,
                            "<row>",
                            f"CSV row has {len(record)} fields, header has {len(header)}",
                            value=_short(record),
                        ),
                    )
                    continue
                yield start, _flat_row(dict(zip(header, record, strict=True)), from_text=True)
        except csv.Error as e:
            raise CatalogReadError(f"{path}: malformed CSV near line {reader.line_num}: {e}") from e
        except UnicodeDecodeError as e:
            raise CatalogReadError(f"{path}: not UTF-8 text after line {reader.line_num}: {e.reason}") from e


# -- Parquet --------------------------------------------------------------------


def _read_parquet(path: Path) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
    except ImportError as e:  # pragma: no cover - pyarrow is a dependency
        raise CatalogReadError(f"{path}: reading Parquet needs pyarrow") from e
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for corrupt files
        raise CatalogReadError(f"{path}: not a readable Parquet file: {e}") from e
    names = pf.schema_arrow.names
    if not any(col in names for col in REQUIRED_COLUMNS):
        raise CatalogReadError(f"{path}: no column among {', '.join(REQUIRED_COLUMNS)}: {_short(names)}")
    line = 0
    try:
        for batch in pf.iter_batches(batch_size=4096):
            for raw in batch.to_pylist():
                line += 1
                yield line, _flat_row(raw, from_text=False)
    except Exception as e:
        raise CatalogReadError(f"{path}: corrupt Parquet data after row {line}: {e}") from e


# -- shared column conventions -------------------------------------------------------


def _flat_row(raw: dict[str, Any], *, from_text: bool) -> dict[str, Any]:
    """Undo the flattening tabular formats need: attr_*/label_* columns, JSON-in-a-cell, ' > ' paths.

    Empty cells / nulls mean "absent" (CSV cannot tell them apart), except for the
    required columns, where an empty value must reach validation as "empty".
    """
    row: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    labels: dict[str, Any] = {}
    for key, value in raw.items():
        value = _normalise_cell(value)
        if _is_absent(value) or (key in ("attributes", "labels") and value == []):
            if key in REQUIRED_COLUMNS:  # let validation say "missing" (null) or "empty" ("")
                row[key] = "" if value == "" else None
            continue
        if key.startswith(ATTR_PREFIX) and len(key) > len(ATTR_PREFIX):
            attrs[key[len(ATTR_PREFIX) :]] = value
        elif key.startswith(LABEL_PREFIX) and len(key) > len(LABEL_PREFIX):
            labels[key[len(LABEL_PREFIX) :]] = _parse_scalar(value) if from_text else value
        elif key in ("attributes", "labels") and isinstance(value, str):
            row[key] = _maybe_json(value, "{")
        elif key == "category" and isinstance(value, str):
            parsed = _maybe_json(value, "[")
            row[key] = parsed if isinstance(parsed, list) else split_category(value)
        else:
            row[key] = value
    if attrs:
        base = row.get("attributes")
        row["attributes"] = {**base, **attrs} if isinstance(base, dict) else attrs
    if labels:
        base = row.get("labels")
        row["labels"] = {**base, **labels} if isinstance(base, dict) else labels
    return row


def _normalise_cell(value: Any) -> Any:
    """Parquet map columns come back as [(k, v), ...]; struct columns carry nulls for keys a row lacks."""
    if isinstance(value, list) and value and all(isinstance(x, tuple) and len(x) == 2 for x in value):
        return {str(k): v for k, v in value}
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    return value


def _is_absent(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _maybe_json(text: str, opener: str) -> Any:
    """Parse a JSON object/list stored in a text cell; leave it as text (for validation to reject) if it is not."""
    stripped = text.strip()
    if not stripped.startswith(opener):
        return text
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        return text


def _parse_scalar(text: Any) -> Any:
    """label_adult=true in a CSV means the boolean, not the word."""
    if not isinstance(text, str):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, bool | int | float) or value is None else text


def _json_type(obj: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(obj), "null"
    )


def _short(value: Any, limit: int = 80) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace").rstrip("\r\n")
        return value if len(value) <= limit else value[: limit - 3] + "..."
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
