"""The OpenAI-compatible HTTP backend's plumbing against a real HTTP server on 127.0.0.1.

The server here is a small stdlib HTTP server that follows a script of failures (503, 429 with
Retry-After, slow answers, 401) so retries, backoff, timeouts, concurrency and rate limits can be
tested exactly; the same backend talking to a real LLM server (llama_cpp.server) is in
test_enrich_llm.py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shopclip.enrich.backends import BackendError, ChatRequest, OpenAIBackend, RateLimiter

ANSWER = {"product_type": "Kurta", "attributes": {"color": "Grey"}, "description": "A grey kurta for women."}


class Script:
    def __init__(self) -> None:
        self.steps: list[tuple[int, float, dict]] = []  # (status, delay, headers)
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()


@pytest.fixture()
def server():
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):  # quiet
            pass

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.bodies.append(body)
                script.headers.append(dict(self.headers))
                status, delay, extra = script.steps.pop(0) if script.steps else (200, 0.0, {})
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
            try:
                time.sleep(delay)
                if self.path != "/v1/chat/completions":
                    status = 404
                payload = {"error": {"message": "scripted failure"}} if status != 200 else {
                    "choices": [{"message": {"role": "assistant", "content": json.dumps(ANSWER)},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 20}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                with script.lock:
                    script.in_flight -= 1

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    httpd.shutdown()
    httpd.server_close()


def _req() -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=8, json_schema={"type": "object"})


def test_success_sends_openai_body_and_key_from_env(server, monkeypatch):
    url, script = server
    monkeypatch.setenv("MY_LLM_KEY", "sk-test-123")
    be = OpenAIBackend(base_url=url + "/chat/completions", model="m1", api_key_env="MY_LLM_KEY")
    res = be.chat(_req())
    assert res.ok and json.loads(res.text) == ANSWER and (res.prompt_tokens, res.completion_tokens) == (50, 20)
    body = script.bodies[0]
    assert body["model"] == "m1" and body["max_tokens"] == 8 and body["messages"][0]["content"] == "hi"
    assert body["response_format"]["type"] == "json_schema"
    assert script.headers[0]["Authorization"] == "Bearer sk-test-123"
    assert be.describe()["api_key_set"] and "sk-test" not in json.dumps(be.describe())
    OpenAIBackend(base_url=url, model="m1", json_mode="object").chat(_req())
    assert script.bodies[1]["response_format"] == {"type": "json_object"}
    OpenAIBackend(base_url=url, model="m1", json_mode="object-schema").chat(_req())
    assert script.bodies[2]["response_format"] == {"type": "json_object", "schema": {"type": "object"}}
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    OpenAIBackend(base_url=url, model="m1", json_mode="none").chat(_req())
    assert "response_format" not in script.bodies[3] and "Authorization" not in script.headers[3]
    with pytest.raises(ValueError):
        OpenAIBackend(base_url=url, model="m1", json_mode="xml")


def test_retries_with_backoff_and_retry_after(server):
    url, script = server
    script.steps = [(503, 0, {}), (429, 0, {"Retry-After": "0.3"}), (200, 0, {})]
    be = OpenAIBackend(base_url=url, model="m", max_retries=3, backoff=0.05)
    t0 = time.perf_counter()
    res = be.chat(_req())
    assert res.ok and res.attempts == 3 and be.stats["retries"] == 2
    assert time.perf_counter() - t0 >= 0.3  # Retry-After honoured


def test_gives_up_after_max_retries_without_raising(server):
    url, script = server
    script.steps = [(500, 0, {})] * 3
    be = OpenAIBackend(base_url=url, model="m", max_retries=2, backoff=0.01)
    res = be.chat(_req())
    assert not res.ok and res.error.startswith("HTTP 500") and res.attempts == 3 and len(script.bodies) == 3


def test_timeout_is_retried_then_reported(server):
    url, script = server
    script.steps = [(200, 1.0, {}), (200, 0, {})]
    be = OpenAIBackend(base_url=url, model="m", timeout=0.3, max_retries=1, backoff=0.01)
    assert be.chat(_req()).ok and be.stats["retries"] == 1
    script.steps = [(200, 1.0, {})] * 2
    res = be.chat(_req())
    assert not res.ok and "timed out" in res.error.lower()


def test_auth_and_not_found_are_configuration_errors(server):
    url, script = server
    script.steps = [(401, 0, {})]
    with pytest.raises(BackendError, match="401"):
        OpenAIBackend(base_url=url, model="m", max_retries=3).chat(_req())
    with pytest.raises(BackendError, match="404"):
        OpenAIBackend(base_url=url.replace("/v1", "/nope"), model="m").chat(_req())
    script.steps = [(400, 0, {})]  # one bad request: that row falls back, no retry
    res = OpenAIBackend(base_url=url, model="m", max_retries=3).chat(_req())
    assert not res.ok and res.attempts == 1 and res.error.startswith("HTTP 400")


def test_concurrency_is_bounded_and_order_kept(server):
    url, script = server
    script.steps = [(200, 0.25, {})] * 8
    be = OpenAIBackend(base_url=url, model="m", concurrency=4)
    t0 = time.perf_counter()
    reqs = [ChatRequest(messages=[{"role": "user", "content": str(i)}], max_tokens=4) for i in range(8)]
    out = be.chat_many(reqs)
    wall = time.perf_counter() - t0
    be.close()
    assert all(r.ok for r in out) and script.max_in_flight == 4
    assert wall < 8 * 0.25 * 0.75  # overlapped, not sequential
    assert sorted(b["messages"][0]["content"] for b in script.bodies) == [str(i) for i in range(8)]


def test_rate_limit(server):
    url, script = server
    be = OpenAIBackend(base_url=url, model="m", concurrency=4, rate_limit=10.0)
    t0 = time.perf_counter()
    be.chat_many([_req() for _ in range(9)])
    be.close()
    # a burst of 4 goes at once, the other 5 at 10/s
    assert time.perf_counter() - t0 >= 0.45
    lim = RateLimiter(100.0)
    t0 = time.perf_counter()
    for _ in range(11):
        lim.acquire()
    assert time.perf_counter() - t0 >= 0.09
    with pytest.raises(ValueError):
        RateLimiter(0)


# ---------------------------------------------------------------------------- strict structured outputs


def test_strict_schema_rules_are_checked():
    """OpenAI strict mode: root object (not anyOf), additionalProperties false and every property required
    on every object (a schema-valued additionalProperties is a free map: forbidden), no allOf/not/if."""
    from shopclip.enrich.backends import strict_schema_problems

    ok = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": ["string", "null"]}},
          "required": ["a", "b"], "additionalProperties": False}
    assert strict_schema_problems(ok) == []
    free_map = {**ok, "properties": {"m": {"type": "object", "additionalProperties": {"type": "string"}}},
                "required": ["m"]}
    assert any("$.m: additionalProperties must be false" in p for p in strict_schema_problems(free_map))
    optional = {**ok, "required": ["a"]}
    assert strict_schema_problems(optional) == ["$: every property must be required (missing b)"]
    nested_open = {**ok, "properties": {"n": {"type": "object", "properties": {"x": {"type": "string"}},
                                              "required": ["x"]}}, "required": ["n"]}
    assert any("$.n: additionalProperties" in p for p in strict_schema_problems(nested_open))
    assert any("anyOf" in p for p in strict_schema_problems({"anyOf": [ok]}))
    assert any("'allOf'" in p for p in strict_schema_problems({**ok, "allOf": [ok]}))
    deep: dict = {"type": "string"}
    for _ in range(11):
        deep = {"type": "object", "properties": {"d": deep}, "required": ["d"], "additionalProperties": False}
    assert any("levels" in p for p in strict_schema_problems(deep))


def test_answer_schema_strict_form_is_valid_and_llama_schema_unchanged():
    from shopclip.enrich.agent import ANSWER_SCHEMA, answer_schema
    from shopclip.enrich.backends import strict_schema_problems, to_strict_schema

    per_product = answer_schema(["color", "usage", "gender"])
    assert strict_schema_problems(per_product)  # what the llama.cpp grammar gets: optional attributes
    strict = to_strict_schema(per_product)
    assert strict is not None and strict_schema_problems(strict) == []
    attrs = strict["properties"]["attributes"]
    assert attrs["required"] == list(attrs["properties"]) == ["color", "usage", "gender", "brand", "model", "pattern"]
    assert all(v["type"] == ["string", "null"] for v in attrs["properties"].values())
    assert strict["properties"]["description"] == {"type": "string"}  # required fields stay non-null
    assert "required" not in per_product["properties"]["attributes"]  # the input is not modified
    assert to_strict_schema(ANSWER_SCHEMA) is None  # a free-form attribute map has no strict form


def test_schema_mode_sends_strict_only_when_valid(server):
    from shopclip.enrich.agent import ANSWER_SCHEMA, answer_schema
    from shopclip.enrich.backends import strict_schema_problems

    url, script = server
    be = OpenAIBackend(base_url=url, model="m1")
    for schema in (answer_schema(["color"]), ANSWER_SCHEMA):
        assert be.chat(ChatRequest(messages=[{"role": "user", "content": "x"}], json_schema=schema)).ok
    sent_strict, sent_generic = (b["response_format"]["json_schema"] for b in script.bodies)
    assert sent_strict["strict"] is True and strict_schema_problems(sent_strict["schema"]) == []
    assert sent_generic["strict"] is False and sent_generic["schema"] == ANSWER_SCHEMA


def test_cache_key_includes_the_server_url(server, tmp_path):
    """Two servers serving different models under one alias must not share cache entries."""
    from shopclip.enrich.agent import EnrichConfig, Enricher
    from shopclip.enrich.cache import EnrichCache

    url, script = server
    other = url.replace("127.0.0.1", "localhost")  # the same test server under another URL
    cache = EnrichCache(tmp_path / "c.sqlite")
    kurta = {"id": "k1", "title": "W Women Solid Grey Kurtas", "category": ["Apparel", "Topwear", "Kurtas"],
             "attributes": {"color": "Grey", "gender": "Women"}}
    a = Enricher(OpenAIBackend(base_url=url, model="smollm2"), EnrichConfig(max_rounds=1), cache=cache)
    b = Enricher(OpenAIBackend(base_url=other, model="smollm2"), EnrichConfig(max_rounds=1), cache=cache)
    assert a.cache_backend == f"openai@{url}" and a.cache_backend != b.cache_backend
    assert not a.enrich(kurta).cached and a.enrich(kurta).cached and len(script.bodies) == 1
    assert not b.enrich(kurta).cached and len(script.bodies) == 2 and len(cache) == 2
    assert a.provenance() == {"backend": f"openai@{url}", "model": "smollm2", "prompt": a.prompt_id}
    cache.close()
