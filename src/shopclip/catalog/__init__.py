"""Product catalogs: schema, readers (JSONL/CSV/Parquet), validation with per-row errors, splits."""

from shopclip.catalog.readers import CatalogReadError, read_rows
from shopclip.catalog.schema import Catalog, Product, RowError
from shopclip.catalog.splits import assign_split, ensure_splits, group_key
from shopclip.catalog.validation import ValidationReport, default_errors_path, validate_catalog, write_errors

__all__ = [
    "Catalog",
    "CatalogReadError",
    "Product",
    "RowError",
    "ValidationReport",
    "assign_split",
    "default_errors_path",
    "ensure_splits",
    "group_key",
    "read_rows",
    "validate_catalog",
    "write_errors",
]
