"""The rule-based normaliser and the deterministic faithfulness checker (no LLM needed)."""

from __future__ import annotations

import json

import pytest

from conftest import pick_rows
from shopclip.enrich.checks import CheckConfig, SourceIndex, canon_tokens, check_output, repair
from shopclip.enrich.normalize import clean_description, normalize_product, normalize_title, normalize_units

KURTA = {"id": "k1", "title": "W Women Solid Grey Kurtas", "category": ["Apparel", "Topwear", "Kurtas"],
         "attributes": {"color": "Grey", "usage": "Ethnic", "gender": "Women", "season": "Fall", "year": "2011"}}
NIKE = {"id": "n1", "title": "NIKE AIR MAX 90 mens sz 10 wht/blk runing shoe NEW",
        "category": ["Footwear", "Shoes", "Sports Shoes"], "attributes": {}}


@pytest.mark.parametrize(("raw", "clean"), [
    # a shouting title: its English words are re-cased, a known brand keeps its spelling
    ("NIKE AIR MAX 90 mens sz 10 wht/blk runing shoe NEW", "NIKE Air Max 90 men's size 10 white/black running shoe"),
    ("W Women Solid Grey Kurtas", "W Women Solid Grey Kurta"),
    ("ADIDAS Originals Men Red Tshirts", "ADIDAS Originals Men Red T-shirt"),  # a brand, not shouting
    ("Puma Men WHITE Casual Shoes", "Puma Men White Casual Shoes"),  # one shouted English word
    ("oxford Tawa 15 cm cm diameter", "Oxford Tawa 15 cm diameter"),
    ("Bottle 500ml w/ lid 12\" tall!!!", "Bottle 500 ml with lid 12 inch tall"),
    ("Tenda TE-W368R", "Tenda TE-W368R"),  # codes are left alone
    ("Lenco Bdblue Tango Analog Watch - For Men, Boys", "Lenco Bdblue Tango Analog Watch - For Men, Boys"),
    ("HP 15 inch Laptop 4GB RAM", "HP 15 inch Laptop 4 GB RAM"),
])
def test_normalize_title(raw, clean):
    assert normalize_title(raw) == clean


def test_brands_model_codes_and_identifiers_keep_their_source_spelling():
    """`--backend rules` once turned the brand eCraftIndia into ECraftIndia and the code CRSTL into Crstl."""
    row = {"id": "x", "title": "eCraftIndia Lord Ganesha on Elephant Showpiece - 13.97 cm",
           "category": ["Home Decor & Festive Needs", "Showpieces"],
           "attributes": {"brand": "eCraftIndia", "model_number": "TCGG118", "model_name": "Lord Ganesha on Elephant"}}
    p = normalize_product(row)
    assert p.title.startswith("eCraftIndia Lord Ganesha") and p.attributes["brand"] == "eCraftIndia"
    assert p.text().startswith("eCraftIndia Lord Ganesha") and "ECraftIndia" not in p.text()
    # an all-caps code, in a title, in a title that shouts, and as an attribute value (identifier key or not)
    assert normalize_title("CRSTL Women Black Analog Watch") == "CRSTL Women Black Analog Watch"
    assert normalize_title("CRSTL WOMEN BLACK ANALOG WATCH") == "CRSTL Women Black Analog Watch"
    watch = normalize_product({"id": "w", "title": "CRSTL Women Black Analog Watch", "description": "By CRSTL.",
                               "attributes": {"brand": "CRSTL", "model_id": "crstl-w9", "color": "BLACK",
                                              "strap": "CRSTL"}})
    assert watch.attributes == {"brand": "CRSTL", "model_id": "crstl-w9", "color": "Black", "strap": "CRSTL"}
    assert "CRSTL" in watch.description and "Crstl" not in watch.text()
    # a lower-case brand named by the listing stays lower case even in an all-lowercase title
    tawa = normalize_product({"id": "t", "title": "oxford tawa", "attributes": {"brand": "oxford"}})
    assert tawa.title == "oxford Tawa" and tawa.attributes["brand"] == "oxford"
    # identifiers are not abbreviations either: a brand "SML" is not "small", "iPhone" is not re-cased
    assert normalize_product({"id": "s", "title": "SML Men Blue Jeans", "attributes": {"brand": "SML"}}
                             ).title == "SML Men Blue Jeans"
    assert normalize_title("iPhone 7 back cover") == "iPhone 7 back cover"
    # standards and units keep their spelling in attribute values too (found by the blind hand check)
    router = normalize_product({"id": "r", "title": "t", "attributes": {
        "standard_ieee": "IEEE 802.11ac", "weight": "200 g", "mug_capacity": "5.5 l", "lan_wan": "10/100 BaseT"}})
    assert router.attributes == {"standard_ieee": "IEEE 802.11ac", "weight": "200 g", "mug_capacity": "5.5 L",
                                 "lan_wan": "10/100 BaseT"}


def test_units_and_codes_inside_words_untouched():
    assert normalize_units("2 Ltr and 5 cms, 1 L L") == "2 L and 5 cm, 1 L"
    assert normalize_title("Towel WH1726 model 4DK14") == "Towel WH1726 model 4DK14"


def test_clean_description_strips_shop_boilerplate():
    raw = ("Buy Jaipur Raga Lord Krishna Showpiece - 14 cm for Rs.799 online. Jaipur Raga Lord Krishna Showpiece - "
           "14 cm at best prices with FREE shipping & cash on delivery. Only Genuine Products. 30 Day Replacement "
           "Guarantee.")
    assert clean_description(raw, "Jaipur Raga Lord Krishna Showpiece - 14 cm") == ""
    raw2 = ("Key Features of Sam Cutter Durable Good Quality Pizza Cutter Price: Rs. 45 Durable Good Quality Pizza "
            "Cutter,Specifications of Sam Cutter General Brand Sam")
    out = clean_description(raw2, "Sam Cutter")
    assert "Rs" not in out and "45" not in out and "Specifications" not in out and "Pizza Cutter" in out


def test_normalized_text_of_real_products_has_no_prices(sample_catalog):
    for row in pick_rows(120):
        text = normalize_product(row).text()
        assert "Rs." not in text and "Flipkart.com" not in text, text
        assert text.endswith(".")


def test_canonical_tokens_fold_synonyms_and_plurals():
    assert canon_tokens("Gray mens T-Shirts, 10ml") == ["grey", "men", "tshirt", "10", "ml"]
    assert canon_tokens("wht/blk Watches") == ["white", "black", "watch"]
    assert canon_tokens("Rs. 1,112") == ["rs", "1112"]


def test_faithful_output_passes_with_synonyms():
    out = {"description": "A solid grey kurta for women from W, made for ethnic wear.",
           "attributes": {"color": "gray", "gender": "womens", "usage": "Ethnic"}, "product_type": "Kurtas"}
    rep = check_output(out, KURTA)
    assert rep.passed, rep.issues
    assert all(rep.verdicts.values())
    noisy = {"description": "Nike Air Max 90 running shoe for men in white and black, size 10.",
             "attributes": {"brand": "Nike", "size": "10", "color": "White/Black", "gender": "Men"},
             "product_type": "Running Shoe"}
    assert check_output(noisy, NIKE).passed


def test_hallucinations_are_flagged_with_reasons():
    out = {"description": "W Women Solid Grey Kurtas is a 2019 British film about a female protagonist.",
           "attributes": {"color": "Grey", "material": "Cotton", "fit": "Slim"}, "product_type": "Film"}
    rep = check_output(out, KURTA)
    codes = {i.code for i in rep.issues}
    assert {"unsupported_number", "unsupported_name", "unsupported_attribute", "unsupported_product_type"} <= codes
    assert rep.n_attr_values == 3 and rep.n_attr_unsupported == 2
    v = rep.verdicts
    assert not v["attributes_supported"] and not v["description_supported"] and v["no_price"]
    assert any("Cotton" in r for r in rep.reasons())


def test_prices_claims_brands_and_length():
    out = {"description": "Premium waterproof kurta from Nike, now only Rs. 499 with 20% off.",
           "attributes": {}, "product_type": "Kurta"}
    v = check_output(out, KURTA).verdicts
    assert not v["no_price"] and not v["no_new_claims"] and not v["no_new_brands"]
    short = check_output({"description": "Grey kurta.", "attributes": {}, "product_type": "Kurta"}, KURTA)
    assert not short.verdicts["length_ok"]
    missing = check_output({"description": "A grey kurta for women, for ethnic wear."}, KURTA)
    assert not missing.verdicts["required_fields"]
    assert not check_output(["not", "an", "object"], KURTA).passed


def test_places_and_limited_editions_are_claims():
    out = {"description": "A solid grey kurta for women. This is a limited edition only available in the UK.",
           "attributes": {}, "product_type": "Kurta"}
    rep = check_output(out, KURTA)
    assert {("claim", "limited"), ("unsupported_name", "UK")} <= {(i.code, i.value) for i in rep.issues}
    assert repair(out, rep, KURTA)["description"] == "A solid grey kurta for women."


def test_yes_no_attributes_need_the_same_source_attribute():
    p = {"title": "Sam Rolling Pizza Cutter", "category": ["Kitchen & Dining"],
         "attributes": {"thumb_guard": "Yes", "brand": "TRUE"}}
    ok = {"description": "Rolling pizza cutter by Sam with a thumb guard.",
          "attributes": {"thumb_guard": "Yes"}, "product_type": "Pizza Cutter"}
    assert check_output(ok, p).passed
    bad = dict(ok, attributes={"dishwasher_safe": "Yes", "thumb_guard": "No"})
    assert check_output(bad, p).n_attr_unsupported == 2


def test_repair_drops_only_the_unsupported_parts():
    out = {"description": "A solid grey kurta for women. It is made of cotton from Jaipur.",
           "attributes": {"color": "Grey", "material": "Cotton"}, "product_type": "Film"}
    rep = check_output(out, KURTA)
    fixed = repair(out, rep, KURTA)
    assert fixed["attributes"] == {"color": "Grey"}
    assert fixed["description"] == "A solid grey kurta for women."
    assert fixed["product_type"] == "Kurtas"  # the category leaf
    assert check_output(fixed, KURTA).passed


def test_source_text_never_fails_its_own_checks(sample_catalog):
    """Checker false positives on text that *is* the source: a floor on its precision."""
    from shopclip.enrich.agent import Enricher

    rows = pick_rows(300)
    results = Enricher(None).enrich_many(rows)
    failing = [(r.id, r.checks.get("issues")) for r in results if not r.checks["passed"]]
    assert len(failing) <= 3, failing
    assert all(r.method == "rules" and r.rounds == 0 and not r.fallback for r in results)


def test_source_index_handles_joined_words():
    src = SourceIndex.from_product({"title": "Prestige Non-stick Tawa", "attributes": {"occasion": "Party-Wedding"}})
    assert src.missing("nonstick tawa") == []
    assert src.missing("party wedding") == []
    assert src.missing("wedding dress") == ["dress"]
    assert json.dumps(check_output({"description": "x"}, {"title": "t"}).to_dict())


def test_repair_trims_unsupported_clauses_and_repeats():
    p = {"title": "ADIDAS Men Athlos Sports Shoes", "category": ["Footwear", "Shoes", "Sports Shoes"],
         "attributes": {"color": "White", "usage": "Sports", "gender": "Men"}}
    out = {"description": "Adidas Men Athlos Sports Shoes for women, size 10. Adidas Men Athlos Sports Shoes "
                          "for women, size 10.", "attributes": {"color": "White"}, "product_type": "Sports Shoes"}
    fixed = repair(out, check_output(out, p), p)
    assert fixed["description"] == "Adidas Men Athlos Sports Shoes."
    assert check_output(fixed, p).verdicts["description_supported"]


# ---------------------------------------------------------------------------- the audit's probes

PROBE_KURTA = {"id": "k1", "title": "W Women Solid Grey Kurtas", "category": ["Apparel", "Topwear", "Kurtas"],
               "attributes": {"color": "Grey", "usage": "Ethnic", "gender": "Women"}}
PROBE_BASE = "A solid grey kurta for women, for ethnic wear."


@pytest.mark.parametrize(("desc", "attrs", "code", "verdict"), [
    ("A solid grey kurta for women by biba, for ethnic wear.", {}, "brand", "no_new_brands"),
    ("Biba makes this solid grey kurta for women, for ethnic wear.", {}, "brand", "no_new_brands"),
    ("A solid grey kurta for women, machine washable, for ethnic wear.", {}, "claim", "no_new_claims"),
    ("A soft, breezy solid grey kurta for women, for ethnic wear.", {}, "claim", "no_new_claims"),
    ("A solid grey kurta for women with long sleeves, for ethnic wear.", {}, "unsupported_detail",
     "description_supported"),
    (PROBE_BASE, {"usage": "Women"}, "unsupported_attribute", "attributes_supported"),
    (PROBE_BASE, {"fit": "Solid"}, "unsupported_attribute", "attributes_supported"),
    (PROBE_BASE, {"brand": "biba"}, "unsupported_attribute", "attributes_supported"),
    ("A solid grey kurta for women for ethnic wear, rupees 499.", {}, "price", "no_price"),
    ("A solid grey kurta for women for ethnic wear, Rs. 499.", {}, "price", "no_price"),
    ("A solid grey kurta for women for ethnic wear, ₹499.", {}, "price", "no_price"),
    ("A solid grey kurta for women for ethnic wear, 499/- only.", {}, "price", "no_price"),
])
def test_audit_probes_are_flagged(desc, attrs, code, verdict):
    rep = check_output({"description": desc, "attributes": attrs, "product_type": "Kurta"}, PROBE_KURTA)
    assert code in {i.code for i in rep.issues}, rep.issues
    assert not rep.verdicts[verdict]


@pytest.mark.parametrize(("desc", "attrs", "src_extra"), [
    (PROBE_BASE, {"usage": "Ethnic", "gender": "Women", "pattern": "Solid"}, {}),
    ("A solid grey kurta for women by W, for ethnic wear.", {"brand": "W"}, {}),
    ("W makes this solid grey kurta for women, for ethnic wear.", {}, {}),
    ("A solid grey kurta for women, designed to be worn by anyone, for ethnic wear.", {}, {}),
    ("A soft, machine washable solid grey kurta for women with long sleeves, for ethnic wear.", {},
     {"description": "Soft fabric with long sleeves. Machine washable."}),
    (PROBE_BASE, {"machine_washable": "Yes"}, {"attributes": {**PROBE_KURTA["attributes"], "machine_washable": "Yes"}}),
])
def test_faithful_counterparts_of_the_probes_pass(desc, attrs, src_extra):
    src = {**PROBE_KURTA, **src_extra}
    rep = check_output({"description": desc, "attributes": attrs, "product_type": "Kurta"}, src)
    assert rep.passed, rep.issues


def test_attribute_values_are_checked_against_the_same_source_key():
    towel = {"title": "IWS Cotton Bath Towel", "category": ["Home Furnishing", "Bath Linen", "Towels"],
             "attributes": {"machine_washable": "Yes", "material": "Cotton", "type": "Bath Towel"}}
    bad = {"description": "IWS cotton bath towel.", "attributes": {"machine_washable": "IWS Cotton Bath Towel",
                                                                   "type": "Cotton"}, "product_type": "Bath Towel"}
    rep = check_output(bad, towel, CheckConfig(min_chars=0, min_words=0))
    assert {i.field for i in rep.issues} == {"attributes.machine_washable", "attributes.type"}
    ok = dict(bad, attributes={"machine_washable": "Yes", "type": "Towel", "material": "cotton"})
    assert check_output(ok, towel, CheckConfig(min_chars=0, min_words=0)).passed


def test_counts_and_attribute_casing_are_normalised():
    assert normalize_title("Steel Bowl Set 2pcs") == "Steel Bowl Set 2 pieces"
    assert normalize_title("HP Desktop PC 1pc") == "HP Desktop PC 1 piece"  # a bare PC stays a computer
    p = normalize_product({"id": "x", "title": "t", "attributes": {
        "color": "WHITE", "strap_color": "black", "ideal_for": "men, women", "capacity": "330 ml",
        "model_name": "iPhone Case", "brand": "YGS", "sales_package": "5 Pcs", "model_id": "4DK14",
        "type": "SIX PORT USB HUB"}})
    assert p.attributes == {"color": "White", "strap_color": "Black", "ideal_for": "Men, Women", "capacity": "330 ml",
                            "model_name": "iPhone Case", "brand": "YGS", "sales_package": "5 pieces",
                            "model_id": "4DK14", "type": "Six Port USB Hub"}
