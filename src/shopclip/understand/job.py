"""What every understanding job does first: validate the catalog (bad rows reported the way
``shopclip validate`` reports them, in ``<out>.errors.jsonl``), then load the model and the
heads fitted for it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shopclip.catalog import Catalog, RowError, write_errors
from shopclip.catalog.validation import ValidationReport, validate_catalog
from shopclip.heads.bundle import TaskHeads


@dataclass
class Job:
    report: ValidationReport
    catalog: Catalog
    model: Any
    heads: TaskHeads
    errors_path: Path | None

    def report_late(self, bad: Sequence[RowError], out: Path) -> None:
        """Rows found bad after validation (a photo that could not be read) join the errors file."""
        if bad:
            self.errors_path = errors_path_for(out)
            write_errors(sorted([*self.report.findings, *bad], key=lambda e: e.line), self.errors_path)


def errors_path_for(out: Path) -> Path:
    return Path(f"{out}.errors.jsonl")


def start_job(catalog_path: str | Path, heads_dir: str | Path, out: Path, *, model: str | None, check_images: bool,
              progress: bool, on_validated: Callable[[ValidationReport], None] | None) -> Job:
    """Validate, report bad rows, load the model (default: the heads') and heads that fit it."""
    from shopclip.models import load_model
    from shopclip.models.features import model_fingerprint

    report = validate_catalog(catalog_path, check_images=check_images, progress=progress)
    errors_path = None
    if report.findings:
        errors_path = errors_path_for(out)
        write_errors(report.findings, errors_path)
    if on_validated is not None:
        on_validated(report)
    saved = TaskHeads.load(heads_dir)
    m = load_model(model or saved.model.get("ref") or "default")
    heads = TaskHeads.load(heads_dir, fingerprint=model_fingerprint(m))
    return Job(report, report.to_catalog(), m, heads, errors_path)


__all__ = ["Job", "errors_path_for", "start_job"]
