"""Build the search query sets from the sample catalog's own fields (relevance never comes from shopclip).

    .venv/bin/python bench/search_queries.py            # writes bench/queries/search_queries.jsonl
    .venv/bin/python bench/search_queries.py --quick --out /tmp/q.jsonl

Sets (one JSON object per query: set, query, relevant ids, split, and how it was made):

(a) brand + product type: "puma casual shoes"; relevant = every product of that brand and type.
(b) colour + type (+ gender): "women black handbags"; relevant = products with that colour
    attribute, that type and (when named) that gender.
(c) model numbers and other alphanumeric codes from titles: "PLO 166", "BS119"; relevant =
    the one product whose title holds the code (codes in two titles are left out); every
    code of a test product, and as many of train/val products.
(d) exact titles; relevant = the products with that exact title (re-listings share one);
    200 test-split and 200 train/val products.
(e) hand-written: bench/queries/multilingual.jsonl, 54 type/colour/gender queries, each in
    English, Hindi, Spanish, French and German, with the attribute filter that defines relevance
    (split "test": reported, never used to choose anything). Its dev half,
    bench/queries/multilingual_dev.jsonl (split "dev"), 45 more such queries written by hand
    later, the same way, for choosing the multilingual path's encoder, head and fusion: each
    (type, colour[, gender]) filter was picked among combinations that at least 11 TRAIN/VAL
    products hold and whose (type, colour) pair no test query of (e) uses; phrased as shoppers
    type (telegraphic "black socks men", "for ladies", "for college", local words: "playera",
    "blouson", "Geldbeutel", "बनियान"), no query string shared with the test half.

Catalog fields read here, by this script's own rules: brand = the `brand` attribute, else the
title's words before its first gender word ("Puma Men ..."); gender = the `gender`
attribute, else `ideal_for`, else the title's gender word; colour = the `color` attribute;
type = the category's last level. (shopclip's query understanding reads the same fields;
that is why bench/search_quality.py compares the ranking modes with understanding off.)

Split: (c) and (d) follow their product's split (dev = train+val products, test = test
products); (a), (b) are split by a hash of the query text (50/50). Fusion weights are chosen
on dev and reported on test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SAMPLE  # noqa: E402

OUT = HERE / "queries" / "search_queries.jsonl"
MULTILINGUAL = HERE / "queries" / "multilingual.jsonl"
MULTILINGUAL_DEV = HERE / "queries" / "multilingual_dev.jsonl"
GENDERS = {"men", "women", "boys", "girls", "unisex", "kids"}
UNITS = re.compile(r"^\d+(?:\.\d+)?(?:cm|mm|m|ml|l|g|kg|gb|tb|mb|w|v|mah|inch|in|x|pcs|pc|s|yrs?|months?|cm2)?$", re.I)
WORD = re.compile(r"[\w\-./]+")


def low(x: str) -> str:
    return " ".join(str(x).lower().split())


def fields(row: dict) -> dict[str, str | set[str]]:
    attrs = {k.lower(): str(v) for k, v in (row.get("attributes") or {}).items()}
    words = row["title"].split()
    pos = next((i for i, w in enumerate(words) if w.lower().strip(",.-") in GENDERS), None)
    brand = attrs.get("brand") or (" ".join(words[:pos]) if pos is not None and 1 <= pos <= 4 else "")
    gender: set[str] = set()
    for key in ("gender", "ideal_for"):
        if key in attrs and not gender:
            gender = {g for g in re.split(r"\s*[,/&]\s*|\s+and\s+", attrs[key].lower()) if g in GENDERS}
    if not gender and pos is not None:
        gender = {words[pos].lower().strip(",.-")}
    return {"brand": low(brand), "brand_text": brand, "color": low(attrs.get("color", "")),
            "type": low(row["category"][-1]) if row.get("category") else "", "gender": gender}


def dev_or_test(text: str) -> str:
    return "dev" if int(hashlib.sha1(f"search-queries:{text}".encode()).hexdigest()[:8], 16) % 2 == 0 else "test"


def product_split(row: dict) -> str:
    return "test" if row.get("split") == "test" else "dev"


def build(rows: list[dict], *, per_set: int = 200) -> list[dict]:
    info = {r["id"]: fields(r) for r in rows}
    out: list[dict] = []
    # (a) brand + type
    by_bt: dict[tuple[str, str], list[str]] = defaultdict(list)
    brand_text: dict[str, str] = {}
    for r in rows:
        f = info[r["id"]]
        if f["brand"] and f["type"] and len(f["brand"]) > 1:
            by_bt[(f["brand"], f["type"])].append(r["id"])
            brand_text.setdefault(f["brand"], str(f["brand_text"]))
    pairs = sorted((k for k, v in by_bt.items() if len(v) >= 3), key=lambda k: hashlib.sha1("|".join(k).encode()).hexdigest())
    for b, t in pairs[:per_set]:
        q = f"{brand_text[b]} {t}"
        out.append({"set": "a", "query": q, "relevant": sorted(by_bt[(b, t)]), "split": dev_or_test(q),
                    "fields": {"brand": b, "type": t}})
    # (b) colour + type (+ gender)
    by_ct: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for r in rows:
        f = info[r["id"]]
        if f["color"] and f["type"]:
            by_ct[(f["color"], f["type"], "")].append(r["id"])
            for g in f["gender"]:  # type: ignore[union-attr]
                by_ct[(f["color"], f["type"], g)].append(r["id"])
    combos = sorted((k for k, v in by_ct.items() if len(v) >= 3), key=lambda k: hashlib.sha1("|".join(k).encode()).hexdigest())
    for c, t, g in combos[:per_set]:
        q = f"{g} {c} {t}".strip()
        out.append({"set": "b", "query": q, "relevant": sorted(by_ct[(c, t, g)]), "split": dev_or_test(q),
                    "fields": {"color": c, "type": t, **({"gender": g} if g else {})}})
    # (c) codes: title tokens with a digit and a letter, or 3+ digits, not a measure; in one title only
    where: dict[str, set[str]] = defaultdict(set)
    shown: dict[str, str] = {}
    for r in rows:
        for tok in WORD.findall(r["title"]):
            tok = tok.strip("-./")
            has_digit = any(ch.isdigit() for ch in tok)
            has_alpha = any(ch.isalpha() for ch in tok)
            if len(tok) >= 3 and has_digit and (has_alpha or len(re.sub(r"\D", "", tok)) >= 3) and not UNITS.match(tok):
                key = re.sub(r"[\W_]", "", tok.lower())
                where[key].add(r["id"])
                shown.setdefault(key, tok)
    by_id = {r["id"]: r for r in rows}
    codes = sorted((k for k, ids in where.items() if len(ids) == 1), key=lambda k: hashlib.sha1(k.encode()).hexdigest())
    test_codes = [k for k in codes if product_split(by_id[next(iter(where[k]))]) == "test"]
    dev_codes = [k for k in codes if k not in set(test_codes)]
    for key in test_codes[:per_set] + dev_codes[:per_set]:
        (pid,) = where[key]
        out.append({"set": "c", "query": shown[key], "relevant": [pid], "split": product_split(by_id[pid]),
                    "fields": {"code": shown[key]}})
    # (d) exact titles
    titles: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        titles[low(r["title"])].append(r["id"])
    picked = sorted(rows, key=lambda r: hashlib.sha1(f"title:{r['id']}".encode()).hexdigest())
    seen: set[str] = set()
    taken = {"dev": 0, "test": 0}
    for r in picked:
        key = low(r["title"])
        split = product_split(r)
        if key in seen or taken[split] >= per_set:
            continue
        seen.add(key)
        taken[split] += 1
        out.append({"set": "d", "query": r["title"], "relevant": sorted(titles[key]), "split": split,
                    "fields": {"title": r["title"]}})
    # (e) hand-written, every language; relevance from the filter
    for split, path in (("test", MULTILINGUAL), ("dev", MULTILINGUAL_DEV)):
        for m in load_multilingual(path):
            rel = sorted(r["id"] for r in rows if matches(info[r["id"]], m["filter"]))
            for lang in ("en", "hi", "es", "fr", "de"):
                out.append({"set": "e", "query": m[lang], "lang": lang, "source": m["id"], "english": m["en"],
                            "relevant": rel, "split": split, "fields": m["filter"]})
    return out


def matches(f: dict, want: dict) -> bool:
    if want.get("type") and f["type"] != low(want["type"]):
        return False
    if want.get("color") and f["color"] != low(want["color"]):
        return False
    return not (want.get("gender") and low(want["gender"]) not in f["gender"])


def load_multilingual(path: Path = MULTILINGUAL) -> list[dict]:
    with open(path, encoding="utf-8") as fp:
        return [json.loads(line) for line in fp if line.strip()]


def read_catalog() -> list[dict]:
    with open(SAMPLE / "catalog.jsonl", encoding="utf-8") as fp:
        return [json.loads(line) for line in fp]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 queries per set and split (for the test suite)")
    ap.add_argument("--out", type=Path, default=None, help=f"where to write (default {OUT})")
    args = ap.parse_args()
    queries = build(read_catalog(), per_set=20 if args.quick else 200)
    out = args.out or (None if args.quick else OUT)
    counts: dict[str, int] = defaultdict(int)
    for q in queries:
        counts[q["set"]] += 1
    empty = [q["query"] for q in queries if not q["relevant"]]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as fp:
            for q in queries:
                fp.write(json.dumps(q, ensure_ascii=False) + "\n")
    print(json.dumps({"queries": dict(counts), "without_relevant": empty, "out": str(out)}, ensure_ascii=False))


if __name__ == "__main__":
    main()
