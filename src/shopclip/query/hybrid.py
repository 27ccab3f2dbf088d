"""One text search over the vector and lexical views: modes, language routing, filters, fusion.

    searcher = HybridSearcher(vector_index, lexical_index, products, encoders, vocabulary)
    out = searcher.search("nike red shoes under 2000", k=10, mode="hybrid")
    out.hits, out.understood.shown   # [(id, score)], "showing: brand = nike, colour = red, ..."

Modes: `vector` (today's path), `lexical` (BM25 only), `hybrid` (both, fused by RRF with
k = 60 or by a weighted mix of min-max normalised scores). Filters, the category one and
those understood from the query, restrict *both* sides before fusion: the lexical side
inside tantivy's query, the vector side by widening its candidate list until enough
allowed products are found (any `VectorIndex` backend, no contract change).

Language: English queries take the shopclip text tower (`encoders["en"]`); others (by
`detect_language` or `lang=`) the multilingual encoder (`encoders["multi"]`, called with the
text and its language, which picks the head), when one is loaded. Used by `SearchEngine` (search.py) and the server alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shopclip.catalog.facets import FacetPostings, Filters, product_facets
from shopclip.index.base import VectorIndex
from shopclip.index.lexical import LexicalIndex
from shopclip.query.crosslingual import CrossLingualTerms, Term, with_word_terms
from shopclip.query.fusion import RRF_K, boost, rrf, weighted
from shopclip.query.language import LANGUAGES, detect_language
from shopclip.query.understand import Understood, Vocabulary, understand

__all__ = ["FUSIONS", "MODES", "HybridConfig", "HybridResult", "HybridSearcher", "SearchInputError", "ValueVectors"]

MODES = ("vector", "lexical", "hybrid")
FUSIONS = ("rrf", "weighted")
Encoder = Callable[..., np.ndarray]  # "en": text → vector; "multi": (text, lang) → vector


class ValueVectors:
    """English text embeddings of the catalog's type, colour and gender values, for queries in other languages.

    The lexical index only knows the catalog's (English) words, so a Hindi or Spanish query
    matches nothing in it. Its multilingual vector lands in shopclip's space, though, next
    to the English values it means: the closest type, colour and gender value of the
    catalog are added to the lexical query ("लाल कुर्ता" → "... kurtas red women"). Only
    catalog values, one per facet; the vector side is untouched. Embeddings are computed
    once per set of values (a handful of hundred short texts) and cached.
    """

    FACETS = ("type", "color", "gender")

    def __init__(self, vocabulary: Vocabulary, encode_many: Callable[[list[str]], np.ndarray]) -> None:
        self.vocabulary = vocabulary
        self.encode_many = encode_many
        self._key: frozenset[tuple[str, str]] | None = None
        self._version = -1
        self._values: dict[str, tuple[list[str], np.ndarray]] = {}

    def _current(self) -> dict[str, tuple[list[str], np.ndarray]]:
        if self._version == self.vocabulary.version:
            return self._values
        version = self.vocabulary.version
        key = self.vocabulary.facet_values(self.FACETS)
        if key != self._key:
            values: dict[str, tuple[list[str], np.ndarray]] = {}
            for facet in self.FACETS:
                names = sorted(v for f, v in key if f == facet)
                if names:
                    values[facet] = (names, np.asarray(self.encode_many(names), dtype=np.float32))
            self._values, self._key = values, key
        self._version = version
        return self._values

    def terms(self, vec: np.ndarray) -> list[str]:
        out = []
        for names, mat in self._current().values():
            out.append(names[int(np.argmax(mat @ np.asarray(vec, dtype=np.float32)))])
        return out


class SearchInputError(ValueError):
    """A request the searcher cannot serve (unknown mode, no lexical index, ...): a 4xx, not a crash."""


@dataclass
class HybridConfig:
    """Defaults chosen on the dev queries of bench/search_quality.py (sets a-d, built from
    train/val products, and the English dev half of set e), weight and all-words boost
    together: the weighted mix at vector weight 0.7 with boost 1 scored dev NDCG@10 0.971
    against 0.969 for RRF, and 0.950 at the best weight without the boost (0.4;
    bench/results/search_quality.json, "selection"). `candidates` is how deep each side is
    read before fusing."""

    candidates: int = 100
    fusion: str = "weighted"
    rrf_k: int = RRF_K
    vector_weight: float = 0.7
    # The weighted mix for a query the multilingual encoder reads. Its lexical side is the catalog
    # terms the query names (its own words rarely match an English catalog), a different signal
    # from an English query's words, so it has its own weight and boost, chosen together on the
    # multilingual dev queries (bench/queries/multilingual_dev.jsonl): 0.7 with boost 0.25 scored
    # dev NDCG@10 0.610, against 0.601 at 0.7 and 0.605 at 0.6 without it (search_quality.json,
    # "selection"). None: the same as `vector_weight`.
    foreign_vector_weight: float | None = 0.7
    max_widen: int = 6  # vector side: at most 4^6 x the candidates before an exact scan
    # Added to the fused score of the products that hold every word of the lexical query (each in
    # some field). The vector side knows "sports shoes" well and the brand less so, and without it
    # another brand's shoes mix in among Puma's for "puma sports shoes". A share of the largest
    # fused score (1 lifts them above every other product); 0: off. Chosen with `vector_weight`
    # on the dev queries of sets a-d (search_quality.json, "selection").
    all_words_boost: float = 1.0
    # The same for a query the multilingual encoder reads, whose "every word" is every catalog term
    # read from it (guesses, not the shopper's words); chosen on the dev half of (e). None: as above.
    foreign_all_words_boost: float | None = 0.25

    def weight_for(self, encoder: str) -> float:
        """The weighted mix's vector weight for a query whose vector came from `encoder`."""
        if encoder == "multilingual" and self.foreign_vector_weight is not None:
            return self.foreign_vector_weight
        return self.vector_weight

    def boost_for(self, encoder: str) -> float:
        """The all-words boost for a query whose vector came from `encoder`."""
        if encoder == "multilingual" and self.foreign_all_words_boost is not None:
            return self.foreign_all_words_boost
        return self.all_words_boost


@dataclass
class HybridResult:
    hits: list[tuple[str, float]]
    mode: str
    lang: str
    encoder: str  # "shopclip" (English text tower), "multilingual", or "" (lexical only)
    fusion: str | None = None
    understood: Understood | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "lang": self.lang, "encoder": self.encoder, "fusion": self.fusion,
                "understood": self.understood.to_dict() if self.understood else None, "notes": self.notes}


class HybridSearcher:
    def __init__(
        self,
        vector: VectorIndex,
        lexical: LexicalIndex | None,
        products: Mapping[str, Mapping[str, Any]],
        encoders: Mapping[str, Encoder],
        vocabulary: Vocabulary | None = None,
        config: HybridConfig | None = None,
        *,
        unavailable: Mapping[str, str] | None = None,
        facet_cache: dict[str, tuple[int, dict[str, tuple[str, ...]]]] | None = None,
        value_vectors: ValueVectors | None = None,
        postings: FacetPostings | None = None,
        word_terms: CrossLingualTerms | None = None,
    ) -> None:
        """`encoders`: "en" (required) and optionally "multi" (text, lang); `unavailable` says why one is missing."""
        self.vector = vector
        self.lexical = lexical
        self.products = products
        self.encoders = encoders
        self.vocabulary = vocabulary
        self.config = config or HybridConfig()
        self.unavailable = dict(unavailable or {})
        # id → (id(meta), facets): a replaced product (new meta dict) is recomputed; shareable across calls
        self._facets = facet_cache if facet_cache is not None else {}
        self.value_vectors = value_vectors
        self.postings = postings  # facet value → ids: the vector side searches only the ids a filter keeps
        self.word_terms = word_terms  # catalog values a foreign query names word by word (query.crosslingual)

    @property
    def default_mode(self) -> str:
        return "hybrid" if self.lexical is not None else "vector"

    # ------------------------------------------------------------------ the one entry point

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        mode: str | None = None,
        fusion: str | None = None,
        category: Any = None,
        lang: str | None = None,
        understand_query: bool = True,
        drop: Iterable[str] = (),
        filters: Filters | None = None,
        exclude: Iterable[str] = (),
    ) -> HybridResult:
        mode = mode or self.default_mode
        fusion = fusion or self.config.fusion
        if mode not in MODES:
            raise SearchInputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if fusion not in FUSIONS:
            raise SearchInputError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        if lang not in (None, "auto", *LANGUAGES):
            raise SearchInputError(f"lang must be auto or one of {', '.join(LANGUAGES)}, got {lang!r}")
        if mode != "vector" and self.lexical is None:
            raise SearchInputError(f"mode={mode} needs the lexical index, which this work folder lacks: "
                                   "run `shopclip index build WORKDIR`")
        notes: list[str] = []
        detected = detect_language(query) if lang in (None, "auto") else lang
        understood = None
        text = query
        strict = filters
        if understand_query and self.vocabulary is not None:
            understood = understand(query, self.vocabulary)
            text = understood.text
        # Catalog values a foreign query names word by word: lexical terms, and filters when understanding
        words = self._word_terms(text, detected, mode, understand_query)
        if understood is not None:
            limits = self.word_terms.config.filter_thresholds if self.word_terms is not None else None
            understood = with_word_terms(understood, words, limits).without(drop)
            u = understood.filters
            strict = _merge(filters, Filters({}, u.price_min, u.price_max))  # a price bound is always strict
            filters = _merge(filters, u)
        hits, encoder = self._ranked(text, int(k), mode, fusion, category, detected, filters or None,
                                     set(exclude), notes, words)
        if understood is not None and understood.filters.facets and len(hits) < int(k):
            # Understood words filter first; when fewer than k products pass, the rest of the
            # ranking (without those facet filters) follows, so a search never comes back short.
            seen = {i for i, _ in hits}
            more, _ = self._ranked(text, int(k), mode, fusion, category, detected, strict or None,
                                   set(exclude) | seen, [], words)
            if more:
                notes.append(f"{len(hits)} products match the understood filters; "
                             f"{min(len(more), int(k) - len(hits))} more follow without them")
            hits = hits + more[: int(k) - len(hits)]
        return HybridResult(hits[: int(k)], mode, detected, encoder, fusion if mode == "hybrid" else None,
                            understood, notes)

    def _word_terms(self, text: str, lang: str, mode: str, understand_query: bool) -> list[Term]:
        """Read only where they are used: a foreign query, with understanding or a lexical side."""
        if lang == "en" or self.word_terms is None or not (understand_query or mode != "vector"):
            return []
        if "multi" not in self.encoders:
            return []  # no multilingual encoder: the query is read as English (see _encode)
        return self.word_terms.terms(text, lang)

    def _ranked(self, text: str, k: int, mode: str, fusion: str, category: Any, detected: str,
                filters: Filters | None, exclude: set[str], notes: list[str],
                words: Sequence[Term] = ()) -> tuple[list[tuple[str, float]], str]:
        n = max(int(k), self.config.candidates) if mode == "hybrid" else int(k)

        vec_hits: list[tuple[str, float]] = []
        encoder = ""
        vec = None
        if mode in ("vector", "hybrid") or (detected != "en" and self.value_vectors is not None):
            vec, encoder, note = self._encode(text, detected)
            if note:
                notes.append(note)
        if mode in ("vector", "hybrid"):
            vec_hits = self._vector(vec, n, category, filters, exclude)
        lex_hits: list[tuple[str, float]] = []
        if mode in ("lexical", "hybrid"):
            assert self.lexical is not None
            lex_text = every_text = text
            if encoder == "multilingual" and vec is not None:
                terms = self.value_vectors.terms(vec) if self.value_vectors is not None else []
                terms += [t.value for t in words]
                terms = list(dict.fromkeys(terms))
                # its own words rarely hold in an English catalog: "every word" means every catalog term
                every_text = " ".join(terms)
                if terms:
                    lex_text = f"{text} {' '.join(terms)}"
                    notes.append("lexical terms from the catalog: " + ", ".join(terms))
            lex_hits = [(h.id, h.score) for h in self.lexical.search(lex_text, n + len(exclude), category=category,
                                                                     filters=filters)
                        if h.id not in exclude and h.id in self.products]
        if mode == "vector":
            hits = vec_hits
        elif mode == "lexical":
            hits = lex_hits
        elif not lex_hits:
            hits = vec_hits  # nothing lexical matched (e.g. a query in Hindi): the vector ranking as is
        else:
            if fusion == "rrf":
                hits = rrf([vec_hits, lex_hits], k=self.config.rrf_k)
            else:
                w = self.config.weight_for(encoder)
                hits = weighted([vec_hits, lex_hits], [w, 1.0 - w])
            lift = self.config.boost_for(encoder)
            if lift and every_text:
                assert self.lexical is not None
                # in units of the largest fused score: 1 for the weighted mix, 2 / (k + 1) for RRF
                top = 1.0 if fusion == "weighted" else 2.0 / (self.config.rrf_k + 1)
                every = [h.id for h in self.lexical.search(every_text, n + len(exclude), category=category,
                                                           filters=filters, all_words=True)
                         if h.id not in exclude and h.id in self.products]
                hits = boost(hits, every, lift * top)
        return hits[:k], encoder

    # ------------------------------------------------------------------ the sides

    def _encode(self, text: str, lang: str) -> tuple[np.ndarray, str, str | None]:
        if lang != "en":
            if "multi" in self.encoders:
                return self.encoders["multi"](text, lang), "multilingual", None
            why = self.unavailable.get("multi", "no multilingual head is installed")
            return self.encoders["en"](text), "shopclip", f"query read as English: {why}"
        return self.encoders["en"](text), "shopclip", None

    def facets(self, product_id: str) -> dict[str, tuple[str, ...]]:
        meta = self.products[product_id]
        cached = self._facets.get(product_id)
        if cached is not None and cached[0] == id(meta):
            return cached[1]
        facets = product_facets(meta)
        self._facets[product_id] = (id(meta), facets)
        return facets

    def allowed(self, product_id: str, filters: Filters | None) -> bool:
        if product_id not in self.products:
            return False
        if not filters:
            return True
        price = self.products[product_id].get("price")
        return filters.matches(self.facets(product_id) if filters.facets else {}, price)

    def _vector(self, vec: np.ndarray, n: int, category: Any, filters: Filters | None,
                exclude: set[str]) -> list[tuple[str, float]]:
        """Top-n allowed products. With facet postings the index searches only the products the
        facets keep (`allow=`); otherwise, and for a price bound, it is asked for 4x more each
        round until n pass the filters."""
        total = len(self.vector)
        want = n + len(exclude)
        allow = self.postings.ids(filters) if self.postings is not None else None
        if allow is not None:
            if not allow:
                return []
            total = min(total, len(allow))
        priced = bool(filters) and (filters.price_min is not None or filters.price_max is not None)
        ask = max(want * 4, 200) if (priced or (filters and allow is None)) else want
        for _ in range(self.config.max_widen + 1):
            ask = min(ask, total)
            hits = self.vector.search(np.asarray(vec, dtype=np.float32), ask, category=category,
                                      exclude=list(exclude), allow=allow)[0]
            keep = [(h.id, h.score) for h in hits if h.id not in exclude and self.allowed(h.id, filters)]
            if len(keep) >= n or ask >= total or len(hits) < ask:
                return keep[:n]
            ask *= 4
        return keep[:n]


def _merge(a: Filters | None, b: Filters) -> Filters:
    if not a:
        return b
    facets = {**b.facets, **a.facets}
    lo = a.price_min if a.price_min is not None else b.price_min
    hi = a.price_max if a.price_max is not None else b.price_max
    return Filters(facets, lo, hi)
