"""Choose the word-level cross-lingual thresholds (shopclip.query.crosslingual) on the DEV queries.

    .venv/bin/python bench/crosslingual_terms.py                 # → bench/results/crosslingual_terms.json
    .venv/bin/python bench/crosslingual_terms.py --quick --out /tmp/xl.json

Each hand-written query of set (e) names a type, a colour and often a gender, and says which
catalog values it means (its "filter"). Every word and word pair of the query in hi/es/fr/de
is compared, in the base encoder its language routes to, with the catalog's values of each
facet (on at least 5 products); the best value per facet is the candidate. For each base
encoder and facet the least cosine is chosen on the dev queries
(bench/queries/multilingual_dev.jsonl) to maximise right − 2 × wrong (a wrong term costs more
than a missing one: it pulls other products up), over 0.40…0.99. The test queries
(bench/queries/multilingual.jsonl) are then scored with the chosen values and never used to
choose. `DEFAULT_THRESHOLDS` in the module must equal the chosen values (a test checks).

Filters: with understanding on, a term also becomes a filter, where a wrong one hides every
right product. So a second cosine per encoder and facet is chosen on the same dev queries:
the least on the grid (and not below the term's own) at which no dev term is wrong; 1.0 when
no such value takes any right term. `DEFAULT_FILTER_THRESHOLDS` must equal it (tested).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SAMPLE, Provenance, write_result  # noqa: E402

RESULT = HERE / "results" / "crosslingual_terms.json"
DEV = HERE / "queries" / "multilingual_dev.jsonl"
TEST = HERE / "queries" / "multilingual.jsonl"
LANGS = ("hi", "es", "fr", "de")
GRID = [round(x, 2) for x in np.arange(0.40, 1.00, 0.01)]
WRONG_COST = 2


def candidates(terms: Any, rows: list[dict], encoder: Any) -> list[dict[str, Any]]:
    """Every (query, language, facet): the best catalog value, its cosine and the gold value."""
    from shopclip.query.crosslingual import FACETS, query_grams

    out = []
    for lang in LANGS:
        for r in rows:
            grams = query_grams(r[lang], terms.config.max_words)
            key, base, q = encoder.embed_words(grams, lang)
            for facet, (names, mat) in terms.value_table(encoder.embed_words, lang, key).items():
                if facet not in FACETS:
                    continue
                sims = q @ mat.T
                g, v = np.unravel_index(int(np.argmax(sims)), sims.shape)
                out.append({"id": r["id"], "lang": lang, "base": base, "facet": facet, "gold": r["filter"].get(facet),
                            "value": names[v], "words": grams[g], "score": float(sims[g, v])})
    return out


def tally(cands: list[dict[str, Any]], limit: float) -> dict[str, Any]:
    taken = [c for c in cands if c["score"] >= limit]
    right = sum(c["value"] == c["gold"] for c in taken)
    named = sum(c["gold"] is not None for c in cands)
    return {"right": right, "wrong": len(taken) - right, "named_in_queries": named,
            "precision": round(right / len(taken), 4) if taken else None,
            "recall": round(right / named, 4) if named else None}


def choose(cands: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    chosen: dict[str, dict[str, float]] = defaultdict(dict)
    for base in sorted({c["base"] for c in cands}):
        for facet in sorted({c["facet"] for c in cands}):
            sub = [c for c in cands if c["base"] == base and c["facet"] == facet]
            best = max(GRID, key=lambda t: (tally(sub, t)["right"] - WRONG_COST * tally(sub, t)["wrong"], t))
            chosen[base][facet] = best
    return dict(chosen)


def choose_filters(cands: list[dict[str, Any]], terms: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per base encoder and facet: the least cosine (not below the term's) with no wrong dev term."""
    chosen: dict[str, dict[str, float]] = defaultdict(dict)
    for base in sorted({c["base"] for c in cands}):
        for facet in sorted({c["facet"] for c in cands}):
            sub = [c for c in cands if c["base"] == base and c["facet"] == facet]
            ok = [t for t in GRID if t >= terms[base][facet] and tally(sub, t)["wrong"] == 0 and tally(sub, t)["right"]]
            chosen[base][facet] = min(ok) if ok else 1.0
    return dict(chosen)


def report(cands: list[dict[str, Any]], chosen: dict[str, dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for lang in LANGS:
        for facet in sorted({c["facet"] for c in cands}):
            sub = [c for c in cands if c["lang"] == lang and c["facet"] == facet]
            if sub:
                out.setdefault(lang, {})[facet] = tally(sub, chosen[sub[0]["base"]][facet])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", type=Path, default=SAMPLE / "catalog.jsonl")
    ap.add_argument("--quick", action="store_true", help="6 queries of each file (test suite)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick and args.out is None:
        ap.error("--quick writes only where --out says (never into bench/results)")
    prov = Provenance.start()
    from shopclip.catalog import Catalog
    from shopclip.models.multilingual import MultilingualQueryEncoder
    from shopclip.query.crosslingual import DEFAULT_FILTER_THRESHOLDS, DEFAULT_THRESHOLDS, CrossLingualTerms
    from shopclip.query.understand import Vocabulary

    vocab = Vocabulary(p.to_dict() for p in Catalog.load(args.catalog, check_images=False, progress=False))
    encoder = MultilingualQueryEncoder.load(threads=2)
    terms = CrossLingualTerms(vocab, lambda: encoder.embed_words)
    read = lambda path: [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]  # noqa: E731
    dev, test = read(DEV), read(TEST)
    if args.quick:
        dev, test = dev[:6], test[:6]
    dev_c, test_c = candidates(terms, dev, encoder), candidates(terms, test, encoder)
    chosen = choose(dev_c)
    filters = choose_filters(dev_c, chosen)
    result = {
        "what": "word-level catalog terms for non-English queries: thresholds chosen on dev, scored on test",
        "rule": f"per base encoder and facet, the least cosine over {GRID[0]}..{GRID[-1]} maximising "
                f"right - {WRONG_COST} x wrong on the dev queries",
        "queries": {"dev": len(dev), "test": len(test), "languages": list(LANGS)},
        "min_products": terms.config.min_products,
        "chosen_on_dev": chosen,
        "shipped_defaults": DEFAULT_THRESHOLDS,
        "shipped_equals_chosen": chosen == DEFAULT_THRESHOLDS,
        "dev": report(dev_c, chosen),
        "test": report(test_c, chosen),
        "test_mistakes": [c for c in test_c if c["score"] >= chosen[c["base"]][c["facet"]]
                          and c["value"] != c["gold"]][:40],
        "filters_rule": "per base encoder and facet, the least cosine on the grid, not below the term's, "
                        "at which no dev term is wrong (1.0: never a filter)",
        "filters_chosen_on_dev": filters,
        "filters_shipped_defaults": DEFAULT_FILTER_THRESHOLDS,
        "filters_shipped_equals_chosen": filters == DEFAULT_FILTER_THRESHOLDS,
        "filters_dev": report(dev_c, filters),
        "filters_test": report(test_c, filters),
    }
    out = args.out or RESULT
    write_result(out, result, prov)
    print(json.dumps({"chosen_on_dev": chosen, "test": result["test"], "filters_chosen_on_dev": filters,
                      "filters_test": result["filters_test"]}, indent=1))


if __name__ == "__main__":
    main()
