"""Constrained answers (shopclip.enrich.constrain): the listing's words and values only, on real products.

The schema is compiled by llama.cpp in test_enrich_llm.py; here its pattern is exercised with Python's `re`
(the same regular expression) and the constraint's own check, and the agent is driven by a scripted backend
that ignores the schema, as a plain OpenAI-compatible server in `--json-mode object` would.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from conftest import pick_rows
from shopclip.enrich.agent import EnrichConfig, Enricher, load_prompts
from shopclip.enrich.constrain import CONNECTORS, MAX_WORDS, MIN_WORDS, Constraint, tidy, title_values
from shopclip.enrich.normalize import normalize_product

BENETTON = {"id": "b1", "title": "United Colors of Benetton Women Solid Beige Handbags",
            "category": ["Accessories", "Bags", "Handbags"],
            "attributes": {"color": "Beige", "usage": "Casual", "gender": "Women"}}
KOHL = {"id": "k1", "title": "KOHL Wine Bag Yellow", "category": ["Baby Care", "Feeding & Nursing", "Bottles"],
        "description": "Easy to carry, 2 in 1 bag.",
        "attributes": {"brand": "KOHL", "model_id": "3", "number_of_contents_in_sales_package": "1", "size": "Large"}}


class Scripted:
    """A backend that ignores the schema and answers from a script."""

    name = "scripted"
    model = "script-1"

    def __init__(self, answers: list[dict]) -> None:
        from shopclip.enrich.backends import ChatResult

        self.answers = [ChatResult(text=json.dumps(a), completion_tokens=10) for a in answers]
        self.requests: list = []

    def chat_many(self, requests):
        self.requests += requests
        return [self.answers.pop(0) for _ in requests]

    def close(self) -> None:
        pass


def constraint_of(product: dict) -> Constraint:
    enr = Enricher(Scripted([]))
    return enr.prepare(product).constraint


def accepts(c: Constraint, text: str) -> bool:
    """The schema's pattern (what a grammar-constrained model can write) and the check agree."""
    by_pattern = re.fullmatch(c.schema()["properties"]["description"]["pattern"].strip("^$"), text) is not None
    assert by_pattern == (not c.outside(text)) or by_pattern is False, (text, c.outside(text))
    return by_pattern


def test_title_values_are_read_off_the_title_by_rule():
    assert title_values("Puma Men White Casual Shoes") == {"color": ["White"], "gender": ["Men"], "brand": ["Puma"]}
    assert title_values("United Colors of Benetton Women Solid Navy Blue Handbags") == {
        "color": ["Navy Blue"], "gender": ["Women"], "pattern": ["Solid"], "brand": ["United Colors of Benetton"]}
    assert "brand" not in title_values("Nike Air Max 90 men's size 10 shoe")  # a number is no brand
    assert "brand" not in title_values("Black Women Kurta")  # neither is a colour


def test_the_description_is_made_of_the_listing_words_only():
    c = constraint_of(BENETTON)
    assert set(CONNECTORS) <= c.vocabulary and {"Beige", "beige", "Handbags", "handbags", "casual"} <= c.vocabulary
    assert accepts(c, "United Colors of Benetton handbag for women, beige. Casual.")
    assert accepts(c, "A solid beige handbag for women.")
    for invented in ("A solid black handbag for women.",          # a colour the listing lacks
                     "A solid beige leather handbag for women.",  # a material
                     "A solid beige handbag for men.",           # who it is for
                     "A beige handbag for women by Benetton.",    # a maker word ("by" is no connector)
                     "United of Benetton beige handbag for women."):  # a broken brand
        assert not accepts(c, invented), invented
        assert c.outside(invented)
    assert c.product_types == ("Handbags",)
    assert c.attribute_values == {"color": ("Beige",), "usage": ("Casual",), "gender": ("Women",),
                                  "brand": ("United Colors of Benetton",), "pattern": ("Solid",)}


def test_numbers_only_with_a_neighbour_from_the_listing():
    c = constraint_of(KOHL)
    assert accepts(c, "KOHL wine bag, easy to carry, 2 in 1 bag.")
    # the model id "3" and the count "1" stand alone in the listing: "3 in 1" cannot be written
    assert not accepts(c, "KOHL wine bag, easy to carry, 3 in 1 bag.")
    assert not accepts(c, "KOHL wine bag for 1 baby, large size.")


def test_the_pattern_and_the_check_agree_on_real_products(sample_catalog):
    """Any sequence of units the pattern accepts passes the check, on 60 real Myntra and Flipkart listings."""
    rng = random.Random(0)
    rows = pick_rows(60)
    assert {r["id"].split("-")[0] for r in rows} == {"myntra", "flipkart"}
    for row in rows:
        c = constraint_of(row)
        pattern = re.compile(c.schema()["properties"]["description"]["pattern"])
        units = sorted(c.units)
        for _ in range(30):
            seq = [rng.choice(units) for _ in range(rng.randint(MIN_WORDS, MAX_WORDS))]
            text = seq[0] + "".join(rng.choice([" ", ", ", ". "]) + u for u in seq[1:]) + "."
            assert pattern.match(text) and not c.outside(text), (row["id"], text)
        title = normalize_product(row).title
        assert c.outside(title + " and zanzibar.") == ["zanzibar"]


def test_an_answer_that_ignores_the_schema_never_ships_an_outside_word():
    """A backend without grammars: the constraint flags the answer, repair cuts it, the rest ships or it falls back."""
    answers = [{"product_type": "Leather Handbag", "attributes": {"color": "Black", "usage": "Casual", "material": "Silk"},
                "description": "United Colors of Benetton handbag for women, beige. A premium black silk bag."}] * 2
    be = Scripted(answers)
    r = Enricher(be, EnrichConfig(max_rounds=2)).enrich(BENETTON)
    assert r.method == "llm+repair" and r.checks["passed"]
    assert r.description == "United Colors of Benetton handbag for women, beige."
    assert r.product_type == "Handbags" and r.checks["model_attributes"] == {"usage": "Casual"}
    issues = set(r.checks["rounds"][0]["issues"])
    assert {"outside_vocabulary", "unsupported_attribute", "unsupported_product_type"} <= issues
    assert not constraint_of(BENETTON).outside(r.description)
    # the refine request names the outside words
    assert "'premium' is not a word of the listing" in be.requests[1].messages[-1]["content"]


def test_v4_examples_obey_their_own_constraint():
    """The few-shot answers show the model what the grammar allows: every word from its listing."""
    for ex in load_prompts("v4").examples:
        listing = ex["listing"]
        attrs = dict(a.split(": ", 1) for a in listing["attributes"].split("; ") if a != "none")
        product = {"id": "ex", "title": listing["title"], "category": listing["category"].split(" > "),
                   "description": "" if listing["details"] == "none" else listing["details"],
                   "attributes": {k.replace(" ", "_"): v for k, v in attrs.items()}}
        c = constraint_of(product)
        assert c.violations(ex["answer"]) == [], ex
        assert accepts(c, ex["answer"]["description"])


def test_the_constrained_schema_has_a_strict_form_for_openai():
    """OpenAI strict structured outputs: every attribute required and nullable, a null allowed by each enum."""
    from shopclip.enrich.backends import strict_schema_problems, to_strict_schema

    schema = constraint_of(BENETTON).schema()
    strict = to_strict_schema(schema)
    assert strict is not None and strict_schema_problems(strict) == []
    color = strict["properties"]["attributes"]["properties"]["color"]
    assert color["enum"] == ["Beige", None] and color["type"] == ["string", "null"]
    assert strict["properties"]["description"]["pattern"] == schema["properties"]["description"]["pattern"]


def test_an_answer_cut_by_max_tokens_is_closed_after_its_last_whole_clause():
    from shopclip.enrich.agent import parse_output
    from shopclip.enrich.constrain import close_truncated

    cut = '{"product_type": "Showpieces", "attributes": {"weight": "7300 G"}, "description": "Buddha, 36.83 cm, 16.51 cm de'
    assert parse_output(close_truncated(cut))["description"] == "Buddha, 36.83 cm."
    whole = '{"product_type": "X", "attributes": {}, "description": "A, B."}'
    assert close_truncated(whole) == whole
    assert close_truncated('{"product_type": "Sho') == '{"product_type": "Sho'  # cut elsewhere: left to fail
    # the agent closes a truncated answer (finish_reason "length") instead of falling back
    from shopclip.enrich.backends import ChatResult

    class Cut(Scripted):
        def chat_many(self, requests):
            self.requests += requests
            text = ('{"product_type": "Handbags", "attributes": {"color": "Beige"}, "description": '
                    '"United Colors of Benetton handbag for women, beige, Casual, beige, Casual, beige, Cas')
            return [ChatResult(text=text, completion_tokens=160, finish_reason="length") for _ in requests]

    r = Enricher(Cut([]), EnrichConfig(max_rounds=1)).enrich(BENETTON)
    assert r.method == "llm" and r.description == "United Colors of Benetton handbag for women, beige, Casual."
    assert r.checks["rounds"][0]["truncated"] is True


def test_tidy_removes_repeats_only():
    assert tidy("KOHL bag, 2 in 1, 2 in 1, 2 in 1. KOHL bag, 2 in 1.") == "KOHL bag, 2 in 1."
    assert tidy("A grey kurta. a Grey kurta.") == "A grey kurta."
    assert tidy("A grey kurta for women, for ethnic usage.") == "A grey kurta for women, for ethnic usage."


@pytest.mark.parametrize("constrained", [True, False])
def test_the_rules_backend_is_unchanged(constrained):
    r = Enricher(None, EnrichConfig(constrained=constrained)).enrich(BENETTON)
    assert r.method == "rules" and r.text.startswith("United Colors of Benetton Women Solid Beige Handbag")
