"""Ground a whole catalog: one box and one crop per product, resumable, cached, never stopped by one bad row.

Output folder::

    OUT/boxes.jsonl        one row per product, catalog order: id, box [x0, y0, x1, y1] in
                           image pixels, score, method, prompt, fallback (+ reason), label,
                           size, crop (relative path; null for fallbacks: the photo itself
                           is the crop), error (null, or why this row has no box)
    OUT/crops/*.jpg        the crops (JPEG)
    OUT/contact_sheet.png  the first N images with their boxes (green: found, orange: fallback)
    OUT/cache.jsonl        results keyed by image SHA-1 + prompt + method and all its options; appended
                           row by row, so a killed run resumes where it stopped

Example::

    from shopclip.catalog import Catalog
    from shopclip.grounding import ground_catalog
    res = ground_catalog(Catalog.load("catalog.jsonl"), "ground-out", method="combined")
    print(res.summary())
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from shopclip.catalog import Catalog, Product
from shopclip.core.hashing import file_sha1, json_sha1, sha1_bytes
from shopclip.core.images import ImageError, open_image
from shopclip.core.io import atomic_write_jsonl
from shopclip.grounding.base import Box, Localiser, choose_box, create_localiser
from shopclip.grounding.crops import SheetItem, contact_sheet, crop_image, save_jpeg
from shopclip.grounding.taxonomy import product_type

log = logging.getLogger(__name__)

# Bump when a localiser's behaviour changes: old cache entries then stop matching.
GROUNDING_VERSION = 1
DEFAULT_METHOD = "combined"  # chosen on the benchmark: bench/results/grounding.json
BOXES = "boxes.jsonl"
CACHE = "cache.jsonl"
SHEET = "contact_sheet.png"
CROPS = "crops"

PROMPTS: dict[str, Callable[[Product], str]] = {
    "type": product_type,  # the category leaf: what the product *is* ("Casual Shoes")
    "title": lambda p: p.title,
}


@dataclass
class GroundResult:
    """Counts of one run and where its outputs are."""

    total: int = 0
    localised: int = 0
    fallback: int = 0
    errors: int = 0
    cached: int = 0
    seconds: float = 0.0
    out: Path = Path(".")
    error_rows: list[dict[str, Any]] = field(default_factory=list)
    # Catalog rows the loader rejected (never reached a localiser): one dict per RowError
    # (line, field, reason, id, value); `rejected` counts rows, since one row can carry several.
    rejected_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def boxes_path(self) -> Path:
        return self.out / BOXES

    @property
    def rejected(self) -> int:
        return len({r["line"] for r in self.rejected_rows})

    @property
    def ok(self) -> bool:
        """Every catalog row was grounded (fallbacks included): no image errors, no rejected rows."""
        return not self.errors and not self.rejected_rows

    def summary(self) -> str:
        if self.total == 0 and self.rejected:
            return f"no product to ground: all {self.rejected} catalog rows were rejected (see the errors above)"
        rejected = f", {self.rejected} catalog rows rejected" if self.rejected else ""
        return (f"{self.total} products: {self.localised} localised, {self.fallback} full-image fallbacks, "
                f"{self.errors} errors{rejected}; {self.cached} from cache; {self.seconds:.1f}s → {self.out / BOXES}")


def safe_name(product_id: str) -> str:
    """A file name for any id ('a/b', 'ü', '..'): readable part + hash of the real id, so no two collide."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", product_id).strip("._")[:60] or "id"
    return f"{stem}-{sha1_bytes(product_id.encode())[:8]}"


def _load_cache(path: Path) -> dict[str, dict[str, Any]]:
    cache: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return cache
    with open(path, encoding="utf-8") as fp:
        for line in fp:
            try:
                row = json.loads(line)
                cache[row["key"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by a crash
    return cache


def localise_one(localiser: Localiser, image: Image.Image, prompt: str, *, margin: float, min_score: float
                 ) -> dict[str, Any]:
    """Box choice for one image as a JSON-able dict (box, score, label, fallback, reason)."""
    boxes = localiser.localise(image, prompt)
    g = choose_box(boxes, image.size, margin=margin, min_score=min_score)
    b = g.box
    return {"box": [round(b.x0, 1), round(b.y0, 1), round(b.x1, 1), round(b.y1, 1)], "score": round(float(b.score), 4),
            "label": b.label, "fallback": g.fallback, "reason": g.reason}


def ground_catalog(
    catalog: Catalog | str | Path,
    out_dir: str | Path,
    *,
    method: str = DEFAULT_METHOD,
    localiser: Localiser | None = None,
    prompt: str | Callable[[Product], str] = "type",
    margin: float = 0.05,
    min_score: float | None = None,
    crops: bool = True,
    sheet: int = 48,
    jpeg_quality: int = 90,
    progress: bool = True,
    force: bool = False,
) -> GroundResult:
    """Localise every product's image, write boxes.jsonl (+ crops, contact sheet); returns the counts.

    `method` names a registered localiser (see ``list_localisers()``); pass `localiser`
    to use an instance instead (its `.name` is then the method). `prompt` is "type"
    (category leaf), "title", or a function of the product. Rows whose image cannot
    be read, or whose localiser fails, get an `error` and no crop; the run goes on.
    Rows the catalog loader rejected are not in boxes.jsonl (they have no product to
    ground) but are returned in `rejected_rows`, so callers can report them.
    """
    t0 = time.perf_counter()
    if not isinstance(catalog, Catalog):
        catalog = Catalog.load(catalog)
    out = Path(out_dir)
    (out / CROPS).mkdir(parents=True, exist_ok=True)
    loc = localiser or create_localiser(method)
    method_name = localiser.name if localiser is not None else method
    threshold = loc.min_score if min_score is None else float(min_score)
    prompt_fn = PROMPTS[prompt] if isinstance(prompt, str) else prompt
    if isinstance(prompt, str) and prompt not in PROMPTS:
        raise KeyError(f"unknown prompt mode {prompt!r}; use one of {sorted(PROMPTS)} or a function")
    options = {"v": GROUNDING_VERSION, "method": method_name, "margin": margin, "min_score": threshold,
               "localiser": loc.options()}
    cache = {} if force else _load_cache(out / CACHE)
    res = GroundResult(out=out, rejected_rows=[e.to_dict() for e in catalog.errors])
    rows: list[dict[str, Any]] = []
    sheet_items: list[SheetItem] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(catalog), unit="image", desc=f"ground ({method_name})")
    with open(out / CACHE, "a", encoding="utf-8") as cache_fp:
        for p in catalog:
            row = _ground_product(catalog, p, loc, prompt_fn, options, cache, cache_fp, out, res, crops=crops,
                                  margin=margin, threshold=threshold, jpeg_quality=jpeg_quality,
                                  keep_image=len(sheet_items) < sheet, sheet_items=sheet_items)
            rows.append(row)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    atomic_write_jsonl(out / BOXES, rows)
    _compact(out, rows, cache)
    if sheet > 0 and sheet_items:
        contact_sheet(sheet_items, out / SHEET)
    res.total = len(rows)
    res.seconds = time.perf_counter() - t0
    return res


def _ground_product(catalog: Catalog, p: Product, loc: Localiser, prompt_fn: Callable[[Product], str],
                    options: dict[str, Any], cache: dict[str, dict[str, Any]], cache_fp: Any, out: Path,
                    res: GroundResult, *, crops: bool, margin: float, threshold: float, jpeg_quality: int,
                    keep_image: bool, sheet_items: list[SheetItem]) -> dict[str, Any]:
    text = prompt_fn(p)
    base = {"id": p.id, "method": options["method"], "prompt": text}
    path = catalog.image_path(p)
    try:
        sha = file_sha1(path)
    except OSError as e:
        return _error(base, f"cannot read image: {e.strerror or e}", res, sheet_items, keep_image)
    key = json_sha1([sha, text, options])
    hit = cache.get(key)
    # A hit is usable when it needs no crop (fallback, or crops off) or its crop is still on disk.
    crop_ok = hit is not None and (not crops or hit["fallback"] or (bool(hit.get("crop"))
                                                                    and (out / hit["crop"]).exists()))
    if hit is not None and crop_ok:
        res.cached += 1
        row = {**base, **{k: hit[k] for k in ("box", "score", "label", "fallback", "reason", "size", "crop")},
               "image_sha1": sha, "error": None}
        _count(row, res)
        if keep_image:
            _sheet_item(path, row, sheet_items)
        return row
    try:
        image = open_image(path)
    except ImageError as e:
        return _error(base, str(e), res, sheet_items, keep_image)
    try:
        found = localise_one(loc, image, text, margin=margin, min_score=threshold)
    except Exception as e:  # one broken image or localiser hiccup must not stop a catalog
        log.warning("localiser %s failed on %s: %s", options["method"], p.id, e)
        return _error(base, f"localiser failed: {type(e).__name__}: {e}", res, sheet_items, keep_image)
    crop_rel = None
    if crops and not found["fallback"]:
        crop_rel = f"{CROPS}/{safe_name(p.id)}-{key[:8]}.jpg"
        save_jpeg(crop_image(image, Box(*found["box"])), out / crop_rel, quality=jpeg_quality)
    row = {**base, **found, "size": list(image.size), "crop": crop_rel, "image_sha1": sha, "error": None}
    cache_fp.write(json.dumps({"key": key, **{k: row[k] for k in ("box", "score", "label", "fallback", "reason",
                                                                  "size", "crop")}}) + "\n")
    cache_fp.flush()
    cache[key] = {"key": key, **row}
    _count(row, res)
    if keep_image:
        sheet_items.append(_item(image, row))
    return row


def _count(row: dict[str, Any], res: GroundResult) -> None:
    if row["fallback"]:
        res.fallback += 1
    else:
        res.localised += 1


def _error(base: dict[str, Any], msg: str, res: GroundResult, sheet_items: list[SheetItem], keep: bool
           ) -> dict[str, Any]:
    row = {**base, "box": None, "score": None, "label": None, "fallback": True, "reason": None, "size": None,
           "crop": None, "image_sha1": None, "error": msg}
    res.errors += 1
    res.error_rows.append(row)
    if keep:
        sheet_items.append(SheetItem(None, None, f"{base['id']}: {msg}"))
    return row


def _item(image: Image.Image, row: dict[str, Any]) -> SheetItem:
    cap = f"{row['id']} {row['prompt']} {row['score']:.2f}" + (" (full)" if row["fallback"] else "")
    return SheetItem(image, Box(*row["box"]), cap, row["fallback"])


def _sheet_item(path: Path, row: dict[str, Any], sheet_items: list[SheetItem]) -> None:
    try:
        sheet_items.append(_item(open_image(path), row))
    except ImageError:
        sheet_items.append(SheetItem(None, None, f"{row['id']}: unreadable"))


def _compact(out: Path, rows: list[dict[str, Any]], cache: dict[str, dict[str, Any]]) -> None:
    """Drop crops no current row uses (an earlier method's) and rewrite the cache without duplicates."""
    used = {r["crop"] for r in rows if r.get("crop")}
    for f in (out / CROPS).glob("*.jpg"):
        if f"{CROPS}/{f.name}" not in used:
            f.unlink(missing_ok=True)
    keep = [{k: v for k, v in c.items() if k in ("key", "box", "score", "label", "fallback", "reason", "size", "crop")}
            for c in cache.values() if c.get("crop") is None or c["crop"] in used]
    atomic_write_jsonl(out / CACHE, keep)


def read_boxes(out_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of an earlier run's boxes.jsonl."""
    from shopclip.core.io import read_jsonl

    return read_jsonl(Path(out_dir) / BOXES)


def crop_overrides(out_dir: str | Path) -> dict[str, Path]:
    """Product id → crop path for rows that were really localised (what the embed stage should read)."""
    out = Path(out_dir)
    return {r["id"]: out / r["crop"] for r in read_boxes(out) if r.get("crop") and not r.get("error")
            and (out / r["crop"]).exists()}
