"""`shopclip tag`: the task heads over a whole catalog, one JSON line per product.

Bad rows are reported the way ``shopclip validate`` reports them (line, field, reason,
in ``<out>.errors.jsonl``) and the rest goes on. Progress is committed every ``batch``
products (appended, flushed and fsynced), so a killed run resumes where it stopped:
rows already written by the same heads are kept, a torn last line is dropped, and heads
that changed since start the file over.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shopclip.catalog import Product, RowError
from shopclip.catalog.validation import ValidationReport
from shopclip.core.hashing import file_sha1
from shopclip.heads.bundle import HEADS_FILE
from shopclip.heads.features import ListingEncoder
from shopclip.understand.data import encode_or_report
from shopclip.understand.job import start_job

log = logging.getLogger(__name__)


@dataclass
class TagOptions:
    neighbours: int = 3  # nearest labelled products shown as each tag's reason
    batch: int = 256  # products per commit
    restart: bool = False  # ignore an earlier partial run
    check_images: bool = True  # decode every photo while validating (bad photos become bad rows)
    cache_dir: str | Path | None = None  # tower-feature cache (default: the shared one)
    num_workers: int = 2


@dataclass
class TagResult:
    out: Path
    total: int
    tagged: int
    resumed: int
    rejected_rows: int
    errors_path: Path | None
    seconds: float
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def products_per_s(self) -> float:
        return self.tagged / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        c = self.counts
        lines = [f"{self.total} products: {self.tagged} tagged in {self.seconds:.1f}s "
                 f"({self.products_per_s:.1f}/s), {self.resumed} already done → {self.out}"]
        if self.tagged:
            lines.append(f"  category sure to the leaf: {c['category_leaf_sure']}, unsure somewhere: "
                         f"{c['category_unsure']}, disagrees with the seller: {c['category_disagrees']}")
            lines.append(f"  attributes filled: {c['attributes_filled']} (unsure, left empty: {c['attributes_unsure']}), "
                         f"disagreements with given values: {c['attribute_disagreements']}")
            flagged = {k[len('flagged:'):]: v for k, v in c.items() if k.startswith("flagged:")}
            for name, n in sorted(flagged.items()):
                lines.append(f"  labels.{name}: {n} flagged at the calibrated precision target")
            for name in sorted(k[len("uncalibrated:"):] for k in c if k.startswith("uncalibrated:")):
                lines.append(f"  labels.{name}: zero-shot score only (UNCALIBRATED: no labelled products; no decision)")
        if self.rejected_rows:
            lines.append(f"  {self.rejected_rows} rows rejected, see {self.errors_path}")
        return "\n".join(lines)


def heads_id(folder: str | Path) -> str:
    """Which heads wrote a row: the content hash of their heads.json."""
    return file_sha1(Path(folder) / HEADS_FILE)[:16]


def given_fields(p: Product) -> dict[str, Any]:
    return {"category": list(p.category), "attributes": dict(p.attributes), "labels": dict(p.labels)}


def tag_catalog(catalog_path: str | Path, heads_dir: str | Path, out: str | Path, *, model: str | None = None,
                options: TagOptions | None = None, progress: bool = True,
                on_validated: Callable[[ValidationReport], None] | None = None) -> TagResult:
    """Tag every valid product of a catalog into ``out`` (JSONL); see the module docstring."""
    opt = options or TagOptions()
    out = Path(out)
    job = start_job(catalog_path, heads_dir, out, model=model, check_images=opt.check_images, progress=progress,
                    on_validated=on_validated)
    catalog, heads, m = job.catalog, job.heads, job.model
    hid = heads_id(heads_dir)
    done = set() if opt.restart else _resume(out, hid, set(catalog.ids))
    if opt.restart or not done:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not done:
            out.write_text("", encoding="utf-8")
    todo = [p for p in catalog if p.id not in done]
    encoder = ListingEncoder(m, cache_dir=opt.cache_dir, num_workers=opt.num_workers)
    counts: Counter[str] = Counter()
    late_errors: list[RowError] = []
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="product", desc="tag")
    t0 = time.perf_counter()
    try:
        with open(out, "a", encoding="utf-8") as fp:
            for start in range(0, len(todo), opt.batch):
                chunk = todo[start : start + opt.batch]
                items, bad = encode_or_report(chunk, catalog, encoder)
                late_errors += bad
                part = [catalog[i] for i in items.ids]
                rows = heads.tag(items.views, [given_fields(p) for p in part], ids=items.ids,
                                 neighbours=opt.neighbours)
                for p, row in zip(part, rows, strict=True):
                    row["title"] = p.title
                    row["heads"] = hid
                    _count(row, counts)
                    fp.write(json.dumps(row, ensure_ascii=False) + "\n")
                fp.flush()
                os.fsync(fp.fileno())
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    job.report_late(late_errors, out)  # photos that passed validation (unchecked) but could not be read
    return TagResult(out, len(catalog) - len(late_errors), len(todo) - len(late_errors), len(done),
                     job.report.rejected_rows + len(late_errors), job.errors_path, seconds, counts)


def _resume(out: Path, hid: str, valid: set[str]) -> set[str]:
    """Ids already tagged by these heads; rewrites the file to its good rows (a torn last line,
    rows of products no longer in the catalog) or empties it when other heads wrote it."""
    if not out.exists():
        return set()
    keep: list[str] = []
    done: set[str] = set()
    other = False
    with open(out, encoding="utf-8") as fp:
        for line in fp:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the line a kill cut short
            if row.get("heads") != hid:
                other = True
                break
            if row.get("id") in valid and row["id"] not in done:
                done.add(row["id"])
                keep.append(line if line.endswith("\n") else line + "\n")
    if other:
        log.warning("%s was written by other heads; starting it over", out)
        return set()
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    tmp.replace(out)
    return done


def _count(row: dict[str, Any], counts: Counter[str]) -> None:
    cat = row.get("category")
    if cat:
        counts["category_unsure" if cat["unsure"] else "category_leaf_sure"] += 1
        counts["category_disagrees"] += int(cat.get("agrees") is False)
    for entry in row.get("attributes", {}).values():
        counts["attributes_filled"] += entry["status"] == "filled"
        counts["attributes_unsure"] += entry["status"] == "unsure"
    counts["attribute_disagreements"] += sum(d["field"].startswith("attributes.") for d in row.get("disagreements", []))
    for name, lab in row.get("labels", {}).items():
        if lab.get("calibrated"):
            counts[f"flagged:{name}"] += bool(lab.get("decision"))
        else:
            counts[f"uncalibrated:{name}"] += 1


__all__ = ["TagOptions", "TagResult", "given_fields", "heads_id", "tag_catalog"]
