"""Product understanding jobs on the sample catalog → bench/results/understand.json.

One run, one file: the task heads are fitted on `train`, calibrated and given every
threshold on `val` (abstain thresholds, the duplicate matcher's threshold, the binary
precision-target threshold) and scored on `test`:

* category: leaf and top-level accuracy at full coverage, ECE, coverage at the abstain thresholds;
* attributes: fill accuracy on values hidden from the heads (they read the photo and the
  seller's text, never the attributes) and coverage at the abstain threshold; also with the
  value's words removed from the title and description, the harder case of a seller who
  never wrote it anywhere;
* dedupe: pairwise precision / recall / F1 of the groups `shopclip dedupe` forms, on the
  catalog's known `group`s (test split; whole sample as a secondary figure), on the
  evaluation suite's synthetic re-listings of the test split (its generator, seed and
  selection), and on byte-identical photos (whole sample);
* speed: `shopclip tag` products/s on 2 cores (cold tower cache, and warm) and `shopclip
  dedupe` seconds for the whole sample (cold and warm).

    flock /work/heavy.lock .venv/bin/python bench/understand.py            # full run (~15 min on 2 cores)
    .venv/bin/python bench/understand.py --quick --out /tmp/understand.json  # seconds, a few products

The heads it fits are kept in --heads-out (default ~/.cache/shopclip/bench/understand-heads):
the same folder `shopclip serve` reads as WORKDIR/heads.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SAMPLE, Provenance, write_result  # noqa: E402

TARGETS = {"leaf_accuracy": 0.90, "fill_accuracy": 0.85, "fill_coverage": 0.80, "relisting_f1": 0.95,
           "identical_photo_f1": 1.0, "tag_products_per_s": 50.0}


# ----------------------------------------------------------------------------- pairs


def pair_counts(groups: list[list[int]], identity: list[str], keep: Any = None) -> dict[str, Any]:
    """Pairwise precision/recall/F1 of predicted groups against identities, over the pairs
    ``keep(a, b)`` accepts (all pairs when None)."""
    ok = keep or (lambda a, b: True)
    tp = pred = 0
    for g in groups:
        for i, a in enumerate(g):
            for b in g[i + 1 :]:
                if ok(a, b):
                    pred += 1
                    tp += identity[a] == identity[b]
    members: dict[str, list[int]] = defaultdict(list)
    for i, x in enumerate(identity):
        members[x].append(i)
    true = sum(ok(a, b) for m in members.values() for i, a in enumerate(m) for b in m[i + 1 :])
    p = tp / pred if pred else float("nan")
    r = tp / true if true else float("nan")
    f1 = 2 * p * r / (p + r) if pred and true and p + r > 0 else 0.0
    return {"precision": p, "recall": r, "f1": f1, "true_pairs": true, "predicted_pairs": pred, "correct_pairs": tp}


def wilson(k: int, n: int) -> list[float]:
    from shopclip.eval.metrics import wilson_interval

    return list(wilson_interval(k, n))


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", type=Path, default=SAMPLE / "catalog.jsonl")
    ap.add_argument("--model", default="default")
    ap.add_argument("--quick", action="store_true", help="a few products, seconds; for the test suite")
    ap.add_argument("--out", type=Path, default=None, help="results file (default bench/results/understand.json)")
    ap.add_argument("--heads-out", type=Path, default=None, help="where the fitted heads are kept")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the machine has 2 cores)")
    args = ap.parse_args()
    if args.quick and args.out is None:
        ap.error("--quick writes only where --out says (never into bench/results)")
    out = args.out or RESULTS / "understand.json"

    import torch

    torch.set_num_threads(args.threads)
    prov = Provenance.start()
    work = Path(tempfile.mkdtemp(prefix="shopclip-understand-"))
    try:
        result = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_result(out, result, prov)
    print(f"→ {path}")


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from shopclip.catalog import Catalog, ensure_splits
    from shopclip.understand.fit import HeadsConfig, train_heads

    catalog_path = args.catalog
    cfg = HeadsConfig()
    if args.quick:
        catalog_path = quick_catalog(work)
        cfg = HeadsConfig(min_attribute_products=20, relist_train=60, relist_val=20)
    heads_dir = args.heads_out or Path.home() / ".cache" / "shopclip" / "bench" / ("understand-heads-quick" if args.quick
                                                                                   else "understand-heads")
    if args.quick and args.heads_out is None:
        heads_dir = work / "heads"
    t = time.perf_counter()
    heads = train_heads(catalog_path, heads_dir, model=args.model, config=cfg, progress=not args.quick)
    fit_s = time.perf_counter() - t
    catalog = ensure_splits(Catalog.load(catalog_path))
    res: dict[str, Any] = {
        "what": "shopclip heads train / tag / dedupe on the sample catalog: heads fitted on train, calibrated and "
                "thresholded on val, scored on test",
        "quick": bool(args.quick),
        "model": heads.model,
        "heads_folder": str(heads_dir),
        "heads_fit_seconds": round(fit_s, 1),
        "config": heads.config,
        "targets": TARGETS,
    }
    res["category"] = category_section(heads)
    res["attributes"] = attribute_section(heads, catalog, args)
    res["binary"] = binary_section(heads)
    res["dedupe"] = dedupe_section(heads, catalog, args, work)
    res["speed"] = speed_section(heads_dir, catalog_path, catalog, args, work)
    res["targets_met"] = targets_met(res)
    return res


def quick_catalog(work: Path) -> Path:
    """The labelled 8-leaf fixture of the tests (192 real products), written beside the run."""
    import json

    from shopclip.understand.testing import labelled_rows

    with open(SAMPLE / "catalog.jsonl", encoding="utf-8") as fp:
        rows = [json.loads(line) for line in fp]
    picked = labelled_rows(rows, per_leaf=12)
    folder = work / "quick"
    (folder / "images").mkdir(parents=True)
    for r in picked:
        shutil.copyfile(SAMPLE / r["image"], folder / r["image"])
    path = folder / "catalog.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in picked), encoding="utf-8")
    return path


# ------------------------------------------------------------------------- category


def category_section(heads: Any) -> dict[str, Any]:
    test = heads.metrics["test"].get("category", {})
    val = heads.metrics["validation"].get("category", {})
    return {
        "test": test,
        "thresholds_chosen_on_val": heads.category.thresholds if heads.category else None,
        "val": {k: val.get(k) for k in ("leaf_accuracy", "top_accuracy", "ece_leaf", "ece_top")},
        "C": heads.config.get("C_chosen"), "C_choice": heads.metrics.get("C_choice"),
        "note": "leaf_accuracy is strict (decoded path == true path, every test product with a category, "
                "rare leaves folded into their parent count as wrong); a leaf implies its parents by construction",
    }


# ----------------------------------------------------------------------- attributes


def scrub(text: str, value: str) -> str:
    """``text`` without the words of ``value`` (case-insensitive, whole words)."""
    words = [re.escape(w) for w in value.split() if w]
    if not words:
        return text
    return " ".join(re.sub(r"\b" + r"\s+".join(words) + r"\b", " ", text, flags=re.IGNORECASE).split())


def attribute_section(heads: Any, catalog: Any, args: argparse.Namespace) -> dict[str, Any]:
    from shopclip.heads.features import ListingEncoder, listing_text, make_views
    from shopclip.models import load_model

    test = [p for p in catalog if p.split == "test"]
    out: dict[str, Any] = {"test": heads.metrics["test"].get("attributes", {}),
                           "note": "fill accuracy = accuracy on test products whose value the head can name, the "
                                   "value hidden (the heads never read attributes); coverage = share answered at the "
                                   "abstain threshold chosen on val (target accuracy "
                                   f"{heads.config['target_accuracy']}); accuracy_all also counts values outside "
                                   "the head's vocabulary as wrong"}
    model = load_model(heads.model["ref"])
    enc = ListingEncoder(model)
    image = enc.images([catalog.image_path(p) for p in test])
    scrubbed: dict[str, Any] = {}
    for name in ("color", "gender"):
        h = heads.attributes.get(name)
        if h is None:
            continue
        rows = [i for i, p in enumerate(test) if h.value_of(p.attributes) in h.head.classes]
        if not rows:
            continue
        texts = [listing_text(scrub(test[i].title, test[i].attributes[name]),
                              scrub(test[i].description, test[i].attributes[name])) for i in rows]
        views = make_views(image[rows], enc.texts(texts))
        scrubbed[name] = {**h.head.score(views[heads.view], [h.value_of(test[i].attributes) for i in rows]),
                          "texts_changed": int(sum(t != listing_text(test[i].title, test[i].description)
                                                   for t, i in zip(texts, rows, strict=True)))}
    out["value_words_removed_from_text"] = scrubbed
    return out


def binary_section(heads: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"calibrated_heads": heads.metrics["test"].get("binary", {})}
    for name, z in heads.zero_shot.items():
        out[name] = {"calibrated": False, "note": z.to_dict()["note"],
                     "why": heads.skipped.get("binary", {}).get(name)}
    return out


# ---------------------------------------------------------------------------- dedupe


def dedupe_section(heads: Any, catalog: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from shopclip.core.hashing import file_sha1
    from shopclip.eval.data import group_aware_sample
    from shopclip.eval.synthetic import make_relistings
    from shopclip.heads.features import ListingEncoder
    from shopclip.models import load_model
    from shopclip.understand.data import Listings, encode_products, encode_relistings
    from shopclip.understand.dedupe import find_duplicates

    enc = ListingEncoder(load_model(heads.model["ref"]))
    m = heads.matcher
    out: dict[str, Any] = {"matcher": {"threshold_chosen_on_val": m.threshold, "review_threshold": m.review,
                                       "identical_photo_cosine": m.identical_photo, "features": list(m.features),
                                       **{k: v for k, v in m.metrics.items() if k != "review_precision"}}}
    everything = encode_products(list(catalog), catalog, enc)
    test_idx = [i for i, p in enumerate(catalog) if p.split == "test"]
    test = everything.take(test_idx)

    # (a) synthetic re-listings, as the evaluation suite makes them: test split, 400 products, seed 0
    n_syn = 40 if args.quick else 400
    products = [catalog[i] for i in test.ids]
    chosen = group_aware_sample(products, n_syn, 0 + 1)
    rel = make_relistings(chosen, catalog.image_path, work / "synthetic", 0)
    both = Listings.concat([test, encode_relistings(rel, test, enc)])
    is_rel = [False] * len(test) + [True] * len(rel)
    found = find_duplicates(both, m)
    out["relistings"] = {
        "label": "SYNTHETIC re-listings of test products (shopclip.eval.synthetic, the evaluation suite's generator, "
                 "seed 0, its group-aware selection of 400): dedupe run over the test split plus them; pairs "
                 "involving a re-listing",
        "n_listings": len(both), "n_relistings": len(rel), "candidate_pairs": found.candidate_pairs,
        **pair_counts(found.groups, both.identity, lambda a, b: is_rel[a] or is_rel[b]),
        "largest_group": max((len(g) for g in found.groups), default=0),
    }

    # (b) known groups: the test split alone, then the whole sample
    found_test = find_duplicates(test, m)
    known = pair_counts(found_test.groups, test.identity)
    out["known_groups_test"] = {
        "label": "REAL catalog `group`s, dedupe over the 821 test products; a pair is right when both share a group",
        **known, "recall_wilson95": wilson(known["correct_pairs"], known["true_pairs"]),
        "false_positive_pairs": explain_false_pairs(found_test, test),
    }
    found_all = find_duplicates(everything, m)
    whole = pair_counts(found_all.groups, everything.identity)
    out["known_groups_whole_sample"] = {
        "label": "the same over all 8,225 products (the matcher was fitted on train pairs and thresholded on val "
                 "pairs, so this is partly in-sample)",
        **whole, "false_positive_pairs_by_kind": kinds(explain_false_pairs(found_all, everything)),
    }

    # (c) byte-identical photos, whole sample: are they grouped, and is every identical-photo edge one?
    hashes = everything.hashes
    photo_sets: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        photo_sets[h].append(i)
    same_photo = [hashes[i] for i in range(len(hashes))]
    found_pairs = pair_counts(found_all.groups, same_photo, lambda a, b: hashes[a] == hashes[b])
    ident_edges = [e for e in found_all.edges if e["reason"] == "identical photo"]
    at = {pid: i for i, pid in enumerate(everything.ids)}
    right = sum(hashes[at[e["a"]]] == hashes[at[e["b"]]] for e in ident_edges)
    recall = found_pairs["correct_pairs"] / found_pairs["true_pairs"] if found_pairs["true_pairs"] else float("nan")
    precision = right / len(ident_edges) if ident_edges else float("nan")
    splits = {h: {catalog[everything.ids[i]].split for i in members} for h, members in photo_sets.items()
              if len(members) > 1}
    out["identical_photos"] = {
        "label": "byte-identical photo files under different ids (whole sample; sha1 of the file): recall = such "
                 "pairs dedupe puts in one group; precision = identical-photo edges whose files really are identical",
        "photo_sets": len(splits), "listings": sum(len(v) for v in photo_sets.values() if len(v) > 1),
        "sets_across_splits": sum(len(s) > 1 for s in splits.values()),
        "true_pairs": found_pairs["true_pairs"], "recall": recall, "identical_photo_edges": len(ident_edges),
        "precision": precision, "f1": 2 * precision * recall / (precision + recall) if ident_edges and recall else 0.0,
        "in_known_groups": sum(all(catalog[everything.ids[i]].group for i in members)
                               for members in photo_sets.values() if len(members) > 1),
        "sha1_check": file_sha1(catalog.image_path(catalog.products[0])) == hashes[0],
    }
    out["review_pairs_whole_sample"] = len(found_all.review)
    out["groups_whole_sample"] = len(found_all.groups)
    return out


def explain_false_pairs(found: Any, items: Any) -> list[dict[str, Any]]:
    """Grouped pairs that are not one `group`: their titles, and whether the photos are the same file."""
    out = []
    for g in found.groups:
        for i, a in enumerate(g):
            for b in g[i + 1 :]:
                if items.identity[a] != items.identity[b]:
                    out.append({"a": items.ids[a], "b": items.ids[b], "titles": [items.records[a]["title"],
                                                                                 items.records[b]["title"]],
                                "same_photo_file": items.hashes[a] == items.hashes[b]})
    return out[:50]


def kinds(pairs: list[dict[str, Any]]) -> dict[str, int]:
    same = sum(p["same_photo_file"] for p in pairs)
    return {"same_photo_file_no_group_label": same, "other": len(pairs) - same, "shown_at_most": 50}


# ----------------------------------------------------------------------------- speed


def speed_section(heads_dir: Path, catalog_path: Path, catalog: Any, args: argparse.Namespace,
                  work: Path) -> dict[str, Any]:
    import json

    from shopclip.understand.dedupe import DedupeOptions, dedupe_catalog
    from shopclip.understand.tag import TagOptions, tag_catalog

    test_rows = [p.to_dict() for p in catalog if p.split == "test"]
    if args.quick:
        test_rows = test_rows[:16]
    tag_cat = catalog_path.parent / f"understand-bench-test-{os.getpid()}.jsonl"
    tag_cat.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in test_rows), encoding="utf-8")
    out: dict[str, Any] = {"torch_threads": args.threads, "cpu_count": os.cpu_count()}
    try:
        cold = work / "cold-cache"
        runs = {}
        for name, cache in (("cold", cold), ("warm", cold)):
            t = time.perf_counter()
            r = tag_catalog(tag_cat, heads_dir, work / "tagged.jsonl", progress=False,
                            options=TagOptions(restart=True, cache_dir=cache))
            wall = time.perf_counter() - t
            runs[name] = {"products": r.tagged, "tag_loop_s": round(r.seconds, 2),
                          "products_per_s": round(r.products_per_s, 1),
                          "job_wall_s": round(wall, 2), "job_products_per_s": round(r.tagged / wall, 1)}
        out["tag"] = {"label": "shopclip tag over the test split: `products_per_s` is the tagging loop (decode, both "
                               "towers, heads, nearest labelled neighbours, JSON lines written and fsynced); "
                               "`job_*` adds validation (every photo decoded) and model loading. cold = empty tower "
                               "cache, warm = the same run again", **runs}
    finally:
        tag_cat.unlink(missing_ok=True)
    for name, cache in (("cold", work / "cold-dedupe"), ("warm", work / "cold-dedupe")):
        t = time.perf_counter()
        r = dedupe_catalog(catalog_path, work / "groups.jsonl", heads_dir, progress=False,
                           options=DedupeOptions(cache_dir=cache))
        out.setdefault("dedupe", {})[name] = {"seconds": round(time.perf_counter() - t, 1), "listings": len(r.items),
                                              "timing": {k: round(v, 2) for k, v in r.timing.items()}}
    out["dedupe"]["label"] = ("shopclip dedupe over the whole catalog (validation with photo decoding, encoding, "
                              "blocking, scoring, writing); cold = empty tower cache")
    return out


def targets_met(res: dict[str, Any]) -> dict[str, Any]:
    cat = res["category"]["test"]
    attrs = res["attributes"]["test"]
    d = res["dedupe"]
    tag = res["speed"]["tag"]["cold"]
    out = {"leaf_accuracy": [cat.get("leaf_accuracy"), cat.get("leaf_accuracy", 0) >= TARGETS["leaf_accuracy"]]}
    for name in ("color", "gender"):
        a = attrs.get(name, {})
        ok = (a.get("accuracy_at_threshold", 0) >= TARGETS["fill_accuracy"]
              and a.get("coverage", 0) >= TARGETS["fill_coverage"])
        out[f"{name}_fill"] = [{"accuracy_at_threshold": a.get("accuracy_at_threshold"), "coverage": a.get("coverage")},
                               ok]
    out["relisting_f1"] = [d["relistings"]["f1"], d["relistings"]["f1"] >= TARGETS["relisting_f1"]]
    out["identical_photo_f1"] = [d["identical_photos"]["f1"], d["identical_photos"]["f1"] >= 1.0]
    out["tag_products_per_s_cold"] = [tag["products_per_s"], tag["products_per_s"] >= TARGETS["tag_products_per_s"]]
    return out


if __name__ == "__main__":
    main()
