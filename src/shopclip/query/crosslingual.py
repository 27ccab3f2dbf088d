"""Catalog values named word by word in a query in another language: "camiseta negra hombre" → tshirts, black, men.

The lexical index knows only the catalog's English words, so a Spanish or Hindi query finds
nothing there unless it is given English terms. `ValueVectors` (query.hybrid) picks them from
where the whole query's vector lands in shopclip's space; that vector comes from a head fitted
on whole English titles and often lands near the right *kind* of product in the wrong colour.
Here each word and word pair of the query is compared, in the multilingual *base* encoder that
its language routes to (USE for es/fr/de, e5 otherwise), with the catalog's own type, colour and
gender values: a base encoder trained on translation pairs puts "negra" next to "black" and
"महिलाओं" next to "women".

Only values the catalog holds (on at least `min_products` products) can come out, one per
facet, and only above a per-encoder, per-facet cosine chosen on the development queries
(`bench/queries/multilingual_dev.jsonl`, never the test set) by `bench/crosslingual_terms.py`,
whose results file records the choice. The terms feed the lexical side only; the vector side
is untouched. With query understanding on, the surest of those terms also become filters,
shown back as chips ("colour = black", from "negra") and removable like the English ones
(`with_word_terms`): a wrong filter hides every right product, so a term must pass a second,
higher cosine per encoder and facet, chosen on the same dev queries as the least at which no
dev term was wrong (`DEFAULT_FILTER_THRESHOLDS`; 1.0 = never a filter). A facet the English
reading already found is left as it was.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from shopclip.catalog.facets import Filters
from shopclip.query.understand import LABELS, Chip, Understood, Vocabulary

__all__ = ["DEFAULT_FILTER_THRESHOLDS", "DEFAULT_THRESHOLDS", "CrossLingualTerms", "Term", "WordTermsConfig", "query_grams", "with_word_terms"]

FACETS = ("type", "color", "gender")
# base encoder → facet → least cosine, chosen on the dev queries (bench/results/crosslingual_terms.json)
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "e5": {"color": 0.89, "gender": 0.92, "type": 0.88},
    "use": {"color": 0.62, "gender": 0.51, "type": 0.63},
}
# base encoder → facet → least cosine for a term to become a filter (no wrong filter on dev; same file)
DEFAULT_FILTER_THRESHOLDS: dict[str, dict[str, float]] = {
    "e5": {"color": 0.93, "gender": 0.92, "type": 0.93},
    "use": {"color": 0.96, "gender": 0.51, "type": 0.93},
}
# Whitespace and punctuation split words; not `\w`, which splits Devanagari at its vowel signs.
_TOKEN = re.compile(r"[^\s,.;:!?()\[\]{}\"/|]+")
WordEmbedder = Callable[[list[str], str], tuple[str, str, np.ndarray]]  # (texts, lang) → (key, base, rows)


@dataclass
class WordTermsConfig:
    thresholds: dict[str, dict[str, float]] = field(default_factory=lambda: {
        b: dict(t) for b, t in DEFAULT_THRESHOLDS.items()})
    filter_thresholds: dict[str, dict[str, float]] = field(default_factory=lambda: {
        b: dict(t) for b, t in DEFAULT_FILTER_THRESHOLDS.items()})
    min_products: int = 5  # a value on fewer products is too rare to be what a shopper means
    max_words: int = 16  # only the first words of a long query are read (each costs an encoder row)


@dataclass(frozen=True)
class Term:
    facet: str
    value: str
    words: str  # the query words it was read from
    score: float
    base: str = ""  # the base encoder that read it ("e5", "use")


def query_grams(text: str, max_words: int = 16) -> list[str]:
    """Words and adjacent word pairs of a query (numbers alone skipped): what is compared."""
    words = [w for w in _TOKEN.findall(text)[:max_words] if not w.replace("-", "").isdigit()]
    return words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]


def with_word_terms(understood: Understood, terms: Sequence[Term],
                    limits: Mapping[str, Mapping[str, float]] | None = None) -> Understood:
    """`understood` plus a filter and chip for each facet the foreign words name, at or above its
    filter cosine (`limits`: base → facet → cosine; default the shipped ones), that the English
    reading did not find (its chips come first; price bounds and ignored phrases kept)."""
    limits = DEFAULT_FILTER_THRESHOLDS if limits is None else limits
    have = {c.facet for c in understood.chips}
    new = [Chip(t.facet, (t.value,), t.words, f"{LABELS[t.facet]} = {t.value}") for t in terms
           if t.facet not in have and t.score >= limits.get(t.base, {}).get(t.facet, 1.0)]
    if not new:
        return understood
    f = understood.filters
    facets = {**f.facets, **{c.facet: c.values for c in new}}
    return Understood(understood.query, understood.text, Filters(facets, f.price_min, f.price_max),
                      understood.chips + new, understood.ignored)


class CrossLingualTerms:
    """Per-facet best catalog value for a non-English query's words; values embedded once per
    encoder and set of values (rebuilt when the catalog's values change)."""

    def __init__(self, vocabulary: Vocabulary, embed: Callable[[], WordEmbedder | None],
                 config: WordTermsConfig | None = None) -> None:
        self.vocabulary = vocabulary
        self.embed = embed  # resolved on first use: the multilingual encoder may be missing
        self.config = config or WordTermsConfig()
        self._lock = threading.Lock()
        # encoder key → (vocabulary version, values, facet → (names, rows))
        self._values: dict[str, tuple[int, frozenset[tuple[str, str]], dict[str, tuple[list[str], np.ndarray]]]] = {}

    def value_table(self, embed: WordEmbedder, lang: str, key: str) -> dict[str, tuple[list[str], np.ndarray]]:
        """facet → (values, their rows) under the encoder `key`; re-embedded only when the
        catalog's values (on at least `min_products` products) changed."""
        version = self.vocabulary.version
        cached = self._values.get(key)
        if cached is not None and cached[0] == version:
            return cached[2]
        wanted = self.vocabulary.facet_values(FACETS, self.config.min_products)
        with self._lock:
            if cached is not None and cached[1] == wanted:
                table = cached[2]
            else:
                table = {}
                for facet in FACETS:
                    names = sorted(v for f, v in wanted if f == facet)
                    if names:
                        table[facet] = (names, embed(names, lang)[2])
            self._values[key] = (version, wanted, table)
        return table

    def terms(self, text: str, lang: str) -> list[Term]:
        """The catalog values the query's words name, at most one per facet, best first."""
        embed = self.embed()
        grams = query_grams(text, self.config.max_words)
        if embed is None or not grams or lang == "en":
            return []
        key, base, rows = embed(grams, lang)
        limits = self.config.thresholds.get(base)
        if not limits:
            return []
        out = []
        for facet, (names, mat) in self.value_table(embed, lang, key).items():
            if facet not in limits:
                continue
            sims = rows @ mat.T
            g, v = np.unravel_index(int(np.argmax(sims)), sims.shape)
            if sims[g, v] >= limits[facet]:
                out.append(Term(facet, names[v], grams[g], float(sims[g, v]), base))
        return sorted(out, key=lambda t: -t.score)
