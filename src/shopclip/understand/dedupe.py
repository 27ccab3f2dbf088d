"""`shopclip dedupe`: group the listings of one product, and list the pairs a person should check.

1. Every valid product is encoded (photo and seller text, through the tower cache).
2. Blocking (:mod:`shopclip.heads.blocking`): each listing meets its ``knn`` nearest
   neighbours in the fused view and every listing with a byte-identical photo, so the
   work grows near-linearly with the catalog (exact search up to 20k listings, HNSW above).
3. Each candidate pair is scored by the heads' matcher (:mod:`shopclip.heads.matching`:
   photo and text cosines, a keypoint check of the two photos, and how far the pair beats
   each listing's other candidates → a calibrated probability; an identical photo always
   matches). Pairs at or above the matcher's threshold (chosen on the validation split)
   are edges; connected components of the edges are the groups.
4. The review file holds the borderline pairs (between the review threshold, where the
   validation recall reaches 99 %, and the decision) and the identical-photo pairs the
   matcher alone would not have matched (a photo shared by several listings, so no pair
   stands out, or a photo re-used with other text).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shopclip.catalog.validation import ValidationReport
from shopclip.core.io import atomic_write_jsonl
from shopclip.heads.blocking import connected_groups, knn_pairs, same_hash_pairs, same_top_level
from shopclip.heads.features import ListingEncoder
from shopclip.heads.matching import PairMatcher, pair_features
from shopclip.understand.data import Listings, encode_or_report
from shopclip.understand.job import start_job


@dataclass
class DedupeOptions:
    knn: int = 10  # neighbours each listing is compared with
    same_category: bool = False  # compare only listings of the same top-level category
    threshold: float | None = None  # override the matcher's (validation-chosen) threshold
    check_images: bool = True
    cache_dir: str | Path | None = None
    num_workers: int = 2


@dataclass
class DedupeResult:
    groups: list[list[int]]
    edges: list[dict[str, Any]]
    review: list[dict[str, Any]]
    items: Listings
    candidate_pairs: int
    threshold: float
    review_threshold: float
    rejected_rows: int
    errors_path: Path | None
    timing: dict[str, float]

    def group_of(self) -> dict[str, int]:
        """id → group number, for listings that are in a group."""
        return {self.items.ids[i]: g for g, members in enumerate(self.groups) for i in members}

    def summary(self, out: Path, review_path: Path) -> str:
        listings = sum(len(g) for g in self.groups)
        lines = [f"{len(self.items)} listings, {self.candidate_pairs} candidate pairs compared: {len(self.groups)} "
                 f"groups of duplicates ({listings} listings), {len(self.review)} pairs to review; "
                 f"{self.timing['total_s']:.1f}s → {out}, {review_path}"]
        if self.rejected_rows:
            lines.append(f"  {self.rejected_rows} rows rejected, see {self.errors_path}")
        return "\n".join(lines)


def score_pairs(items: Listings, pairs: np.ndarray, matcher: PairMatcher, *, workers: int = 2,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probability, probability without the identical-photo rule, features) of each candidate pair."""
    x = pair_features(items.views, items.views, pairs, matcher.features, photo=items.photo_checks(workers))
    p_plain = matcher.score_graph(x, pairs, identical_rule=False)
    return np.where(matcher.identical(x), 1.0, p_plain), p_plain, x


def find_duplicates(items: Listings, matcher: PairMatcher, options: DedupeOptions | None = None) -> DedupeResult:
    """Blocking, scoring and grouping over already-encoded listings (what the job and the
    benchmark share)."""
    opt = options or DedupeOptions()
    timing: dict[str, float] = {}
    t = time.perf_counter()
    pairs = np.concatenate([knn_pairs(items.views["fused"], opt.knn), same_hash_pairs(items.hashes)])
    pairs = np.unique(pairs, axis=0) if len(pairs) else np.zeros((0, 2), dtype=np.int64)
    if opt.same_category:
        pairs = same_top_level(pairs, items.categories)
    timing["blocking_s"] = time.perf_counter() - t
    t = time.perf_counter()
    thr = matcher.threshold if opt.threshold is None else float(opt.threshold)
    review_thr = min(matcher.review, thr)
    p, plain, x = score_pairs(items, pairs, matcher, workers=opt.num_workers)
    same_photo = matcher.identical(x)
    fi = {n: i for i, n in enumerate(matcher.features)}

    def pair_record(k: int) -> dict[str, Any]:
        a, b = (int(v) for v in pairs[k])
        rec: dict[str, Any] = {"a": items.ids[a], "b": items.ids[b], "probability": round(float(p[k]), 4)}
        for n, i in fi.items():
            if n == "inliers_colour":
                continue  # derived from the two below
            value = float(np.expm1(x[k, i])) if n == "inliers" else float(x[k, i])
            rec[f"{n}_similarity" if n in ("image", "text") else f"photo_{n}"] = round(value, 4)
        rec["reason"] = "identical photo" if same_photo[k] else "similar photo and text"
        rec["titles"] = [items.records[a].get("title"), items.records[b].get("title")]
        return rec

    match = p >= thr
    edges = [pair_record(k) for k in np.flatnonzero(match)]
    borderline = np.flatnonzero((p >= review_thr) & ~match)
    reused = np.flatnonzero(same_photo & (plain < thr))
    review = [pair_record(k) | {"why_review": "borderline score"} for k in borderline]
    review += [pair_record(k) | {"why_review": "same photo, but the matcher alone scores "
                                               f"{float(plain[k]):.3f} (< {thr:.3f}): a photo shared by several "
                                               "listings, or re-used with other text?"}
               for k in reused]
    review.sort(key=lambda r: -r["probability"])
    groups = connected_groups(len(items), pairs[match])
    timing["scoring_s"] = time.perf_counter() - t
    return DedupeResult(groups, edges, review, items, int(len(pairs)), thr, review_thr, 0, None, timing)


def review_path_for(out: Path) -> Path:
    """groups.jsonl → groups.review.jsonl"""
    return out.with_name(f"{out.stem}.review{out.suffix or '.jsonl'}")


def dedupe_catalog(catalog_path: str | Path, out: str | Path, heads_dir: str | Path, *, model: str | None = None,
                   options: DedupeOptions | None = None, progress: bool = True,
                   on_validated: Callable[[ValidationReport], None] | None = None) -> DedupeResult:
    """Run the whole job and write ``out`` (one group per line) and its review file."""
    opt = options or DedupeOptions()
    t0 = time.perf_counter()
    out = Path(out)
    job = start_job(catalog_path, heads_dir, out, model=model, check_images=opt.check_images, progress=progress,
                    on_validated=on_validated)
    if job.heads.matcher is None:
        raise ValueError(f"the heads in {heads_dir} have no matcher (fitted without pairs); refit them")
    t = time.perf_counter()
    encoder = ListingEncoder(job.model, cache_dir=opt.cache_dir, num_workers=opt.num_workers)
    items, bad = encode_or_report(list(job.catalog), job.catalog, encoder, progress=progress)
    job.report_late(bad, out)  # photos that passed validation (unchecked) but could not be read
    encode_s = time.perf_counter() - t
    result = find_duplicates(items, job.heads.matcher, opt)
    result.rejected_rows, result.errors_path = job.report.rejected_rows + len(bad), job.errors_path
    result.timing = {"encode_s": encode_s, **result.timing}
    write_groups(result, out)
    result.timing["total_s"] = time.perf_counter() - t0
    return result


def write_groups(result: DedupeResult, out: Path) -> None:
    items = result.items
    by_pair: dict[int, list[dict[str, Any]]] = {}
    where = result.group_of()
    for e in result.edges:
        by_pair.setdefault(where[e["a"]], []).append(e)
    rows = []
    for g, members in enumerate(result.groups):
        rows.append({"group": f"dup-{g + 1:06d}", "size": len(members),
                     "members": [{"id": items.ids[i], "title": items.records[i].get("title"),
                                  "category": items.records[i].get("category")} for i in members],
                     "edges": by_pair.get(g, []), "threshold": round(result.threshold, 4)})
    atomic_write_jsonl(out, rows)
    atomic_write_jsonl(review_path_for(out), result.review)


def read_groups(path: str | Path) -> list[list[str]]:
    """The member ids of each group in a groups file."""
    with open(path, encoding="utf-8") as fp:
        return [[m["id"] for m in json.loads(line)["members"]] for line in fp if line.strip()]


__all__ = ["DedupeOptions", "DedupeResult", "dedupe_catalog", "find_duplicates", "read_groups", "review_path_for",
           "score_pairs", "write_groups"]
