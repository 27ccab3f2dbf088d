"""The enrichment agent: normalise → generate → evaluate → refine (≤ N rounds) → repair or fall back.

Each step is a plain method, testable on its own:

* :meth:`Enricher.prepare` — rule-normalise the product (:mod:`.normalize`), index its source
  tokens for the checker and build its :class:`.constrain.Constraint` (what the answer may contain);
* :meth:`Enricher.generate_request` / :meth:`Enricher.refine_request` — the chat messages, from the
  versioned prompt files in ``prompts/<version>/`` (few-shot). By default (``constrained``) the answer
  is held to the product's :meth:`.constrain.Constraint.schema` — listing values only, a description
  made of the listing's words and a few joining words — where the backend supports grammars /
  ``response_format``, so the model cannot write an invented word; otherwise to :data:`ANSWER_SCHEMA`;
* :func:`parse_output` — strict JSON parsing (one object, optionally inside a code fence; nothing else);
* :meth:`Enricher.evaluate` — the deterministic checks of :mod:`.checks` and the constraint itself (for
  backends that ignore schemas) first, then any ``extra_checks`` (e.g. an LLM critic) only when those pass;
* refine — the failed checks' reasons go back to the model. Whether its previous answer goes too is
  the prompt set's choice: ``refine.txt`` may use ``{previous}`` (v1 does); v2 and the default v3 do
  not, because SmolLM2 copied a shown answer back verbatim;
* finalise — a passing answer is kept (``method="llm"``); after the last round a failing one is
  repaired (unsupported attributes and sentences removed, :func:`.checks.repair`, then whatever breaks
  the constraint, :meth:`.constrain.Constraint.enforce`) and kept if it then passes (``"llm+repair"``);
  otherwise the cleaned source text is used (``"fallback"``, ``fallback=True``). With no backend the rules alone produce the result (``"rules"``).

:meth:`Enricher.enrich_many` runs the rounds batch-synchronously so an HTTP backend can send a whole
batch concurrently; results are cached in SQLite (:mod:`.cache`) under :attr:`Enricher.cache_backend`
(the backend's name, plus the server URL for an OpenAI-compatible one), the model and the prompt id. A
cache hit costs one hash of the source fields: the rule normalisation and the checker's index are only
built for the products the backend has to see.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from shopclip.core.hashing import json_sha1
from shopclip.enrich.backends import Backend, ChatRequest, ChatResult
from shopclip.enrich.cache import EnrichCache
from shopclip.enrich.checks import (
    CheckConfig,
    CheckReport,
    Issue,
    SourceIndex,
    check_output,
    example_tokens,
    repair,
)
from shopclip.enrich.constrain import Constraint, close_truncated, tidy
from shopclip.enrich.normalize import BOOKKEEPING_KEYS, EMPTY_VALUES, NormalizedProduct, normalize_product

DEFAULT_PROMPT_VERSION = "v4"

#: The answer's shape; keys in the order the model writes them (type, then attributes, then prose).
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "product_type": {"type": "string"},
        "attributes": {"type": "object", "additionalProperties": {"type": "string"}},
        "description": {"type": "string"},
    },
    "required": ["product_type", "attributes", "description"],
    "additionalProperties": False,
}


#: Attribute names the model may add beyond the listing's own (read off the title).
EXTRA_ATTRIBUTE_KEYS = ("brand", "model", "color", "gender", "pattern")


def answer_schema(listing_keys: Sequence[str] | None = None) -> dict[str, Any]:
    """The answer schema for one product: attribute names limited to the listing's own keys plus
    :data:`EXTRA_ATTRIBUTE_KEYS` (a grammar then cannot even spell "material" for a listing without one).
    ``None`` gives the generic :data:`ANSWER_SCHEMA`."""
    if listing_keys is None:
        return ANSWER_SCHEMA
    keys = list(dict.fromkeys([*listing_keys, *EXTRA_ATTRIBUTE_KEYS]))
    attrs = {"type": "object", "properties": {k: {"type": "string"} for k in keys}, "additionalProperties": False}
    return {**ANSWER_SCHEMA, "properties": {**ANSWER_SCHEMA["properties"], "attributes": attrs}}


class ParseError(ValueError):
    """The model's answer is not one JSON object of the expected shape."""


# ---------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PromptSet:
    version: str
    system: str
    generate: str
    refine: str
    examples: tuple[dict[str, Any], ...]
    digest: str

    @property
    def id(self) -> str:
        """Version plus a hash of the files: an edited prompt never reuses old cache entries."""
        return f"{self.version}-{self.digest[:10]}"


def load_prompts(version: str = DEFAULT_PROMPT_VERSION, folder: str | Path | None = None) -> PromptSet:
    """Load ``prompts/<version>/`` (system.txt, generate.txt, refine.txt, examples.json)."""
    root = Path(folder) if folder else Path(str(resources.files("shopclip.enrich") / "prompts" / version))
    names = ("system.txt", "generate.txt", "refine.txt", "examples.json")
    missing = [n for n in names if not (root / n).exists()]
    if missing:
        raise FileNotFoundError(f"prompt set {version!r} at {root} lacks {', '.join(missing)}")
    texts = {n: (root / n).read_text(encoding="utf-8") for n in names}
    digest = hashlib.sha1("\0".join(texts[n] for n in names).encode()).hexdigest()
    return PromptSet(version=version, system=texts["system.txt"].strip(), generate=texts["generate.txt"].strip(),
                     refine=texts["refine.txt"].strip(), examples=tuple(json.loads(texts["examples.json"])),
                     digest=digest)


# ---------------------------------------------------------------------------- parsing


_FENCE_RE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def parse_output(text: str) -> dict[str, Any]:
    """Strict: the whole answer is one JSON object (a ```json fence around it is tolerated).

    Attribute values that are numbers become strings; ``null`` and empty values are dropped (a strict
    schema makes a server answer ``null`` for every attribute the listing does not state); nested values,
    a non-object answer, trailing prose or a truncated object raise :class:`ParseError`. Unknown
    top-level keys are dropped.
    """
    s = (text or "").strip()
    if m := _FENCE_RE.match(s):
        s = m.group(1).strip()
    if not s:
        raise ParseError("empty answer")
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        raise ParseError(f"not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(obj, dict):
        raise ParseError(f"the answer is a JSON {type(obj).__name__}, not an object")
    out: dict[str, Any] = {}
    for key in ("description", "attributes", "product_type"):
        if key in obj:
            out[key] = obj[key]
    attrs = out.get("attributes")
    if isinstance(attrs, dict):
        clean: dict[str, str] = {}
        for k, v in attrs.items():
            if v is None:
                continue
            if isinstance(v, bool | dict | list):
                raise ParseError(f"attribute {k!r} is not a string")
            if str(v).strip():  # an empty value says nothing: dropped, not an error
                clean[str(k).strip()] = str(v).strip()
        out["attributes"] = clean
    for key in ("description", "product_type"):
        if isinstance(out.get(key), str):
            out[key] = " ".join(out[key].split())
    return out


# ---------------------------------------------------------------------------- results


@dataclass
class EnrichConfig:
    max_rounds: int = 2  # 1 = generate only; each further round is one refinement
    max_tokens: int = 160
    temperature: float = 0.0
    repeat_penalty: float = 1.1
    seed: int = 0
    prompt_version: str = DEFAULT_PROMPT_VERSION
    repair: bool = True
    max_listing_attributes: int = 12
    max_details_chars: int = 300
    max_text_chars: int = 700
    keep_source_attributes: bool = True  # the output's attributes = the source's (cleaned) + checked model extras
    per_product_schema: bool = True  # constrain attribute names to the listing's (see answer_schema)
    constrained: bool = True  # hold the answer to the listing's words and values (see constrain.Constraint)
    keep_answers: bool = False  # store each round's raw answer in checks.rounds (audits, hand checks)
    checks: CheckConfig = field(default_factory=CheckConfig)

    def fingerprint(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("prompt_version")
        return d


@dataclass
class EnrichResult:
    id: str
    text: str  # what the text tower embeds
    description: str
    attributes: dict[str, str]
    product_type: str
    checks: dict[str, Any]
    rounds: int
    fallback: bool
    method: str  # llm | llm+repair | fallback | rules
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_seconds: float = 0.0
    cached: bool = False
    input_hash: str = ""  # of the source fields + settings it was made from (see Enricher.input_hash)

    def to_row(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "description": self.description, "attributes": self.attributes,
                "product_type": self.product_type, "checks": self.checks, "rounds": self.rounds,
                "fallback": self.fallback, "method": self.method}

    def to_cache(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("cached")
        d.pop("input_hash")  # it is the cache key
        return d

    @classmethod
    def from_cache(cls, d: dict[str, Any], product_id: str, input_hash: str = "") -> EnrichResult:
        return cls(**{**d, "id": product_id, "cached": True, "input_hash": input_hash})


@dataclass
class _State:
    norm: NormalizedProduct
    src: SourceIndex
    product: Any
    input_hash: str
    constraint: Constraint | None = None
    rounds: int = 0
    output: dict[str, Any] | None = None  # the best parsed answer so far (fewest issues; earliest on ties)
    report: CheckReport | None = None  # its checks
    best_round: int = 0
    last_text: str = ""
    last_problems: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


def compose_text(norm: NormalizedProduct, description: str, attributes: dict[str, str], product_type: str,
                 max_chars: int = 700) -> str:
    """The text the text tower embeds: clean title, product type, description, category, attributes."""
    parts = [norm.title]
    if product_type and product_type.lower() not in norm.title.lower():
        parts.append(product_type)
    if description and description.rstrip(". ").lower() != norm.title.lower():
        parts.append(description)
    if norm.category:
        parts.append(" > ".join(norm.category))
    attrs = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in attributes.items()
                      if v and v.lower() not in EMPTY_VALUES and k not in BOOKKEEPING_KEYS)
    if attrs:
        parts.append(attrs)
    s = ". ".join(p.strip().rstrip(".") for p in parts if p.strip()) + "."
    if len(s) > max_chars:
        s = s[:max_chars].rsplit(" ", 1)[0].rstrip(",;:") + "."
    return s


# ---------------------------------------------------------------------------- the agent


class Enricher:
    """Enrich products with a chat backend (or with the rules alone when ``backend is None``)."""

    def __init__(self, backend: Backend | None = None, config: EnrichConfig | None = None,
                 cache: EnrichCache | None = None,
                 extra_checks: Sequence[Callable[[dict[str, Any], Any], list[Issue]]] = ()) -> None:
        self.backend = backend
        self.config = config or EnrichConfig()
        self.cache = cache
        self.extra_checks = list(extra_checks)
        self.prompts = load_prompts(self.config.prompt_version)
        self.llm_wall_seconds = 0.0  # wall-clock time spent waiting for the backend (tokens/s)
        # words of the few-shot answers: copied into an unrelated product, they are flagged
        self.leak = example_tokens([ex["answer"] for ex in self.prompts.examples]) if backend is not None \
            else frozenset()

    # -- identity -----------------------------------------------------------------------
    @property
    def backend_name(self) -> str:
        return self.backend.name if self.backend is not None else "rules"

    @property
    def model_name(self) -> str:
        return self.backend.model if self.backend is not None else "rules"

    @property
    def prompt_id(self) -> str:
        return self.prompts.id if self.backend is not None else "rules"

    @property
    def cache_backend(self) -> str:
        """The backend part of the cache key: two OpenAI-compatible servers may serve different models
        under one alias, so their base URL is part of it ("openai@http://127.0.0.1:8000/v1")."""
        url = getattr(self.backend, "base_url", None)
        return f"{self.backend_name}@{url}" if url else self.backend_name

    def provenance(self) -> dict[str, str]:
        """What produced a result (written into every output row; resume redoes rows that differ)."""
        return {"backend": self.cache_backend, "model": self.model_name, "prompt": self.prompt_id}

    def input_hash(self, product: Any) -> str:
        get = (lambda k: product.get(k)) if isinstance(product, dict) else (lambda k: getattr(product, k, None))
        src = {"title": get("title") or "", "description": get("description") or "",
               "category": list(get("category") or []), "attributes": dict(get("attributes") or {})}
        return json_sha1({"src": src, "cfg": self.config.fingerprint(), "rules": _RULES_VERSION})

    # -- steps --------------------------------------------------------------------------
    def prepare(self, product: Any, input_hash: str | None = None) -> _State:
        norm = normalize_product(product)
        constraint = None
        if self.config.constrained and self.backend is not None:
            constraint = Constraint.build(norm, self.listing_attributes(norm), self.listing(norm)["details"])
        return _State(norm=norm, src=SourceIndex.from_product(product), product=product,
                      input_hash=input_hash or self.input_hash(product), constraint=constraint)

    def listing_attributes(self, norm: NormalizedProduct) -> list[tuple[str, str]]:
        return [(k, v) for k, v in norm.attributes.items() if v.lower() not in EMPTY_VALUES
                and k not in BOOKKEEPING_KEYS][: self.config.max_listing_attributes]

    def listing(self, norm: NormalizedProduct) -> dict[str, str]:
        attrs = self.listing_attributes(norm)
        attr_text = "; ".join(k.replace("_", " ") if v.lower() == "yes" else f"{k.replace('_', ' ')}: {v}"
                              for k, v in attrs)
        details = norm.description
        if len(details) > self.config.max_details_chars:
            details = details[: self.config.max_details_chars].rsplit(" ", 1)[0] + " …"
        return {"title": norm.title, "category": " > ".join(norm.category) or "none",
                "attributes": attr_text or "none", "details": details or "none"}

    def _messages(self, user: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.prompts.system}]
        for ex in self.prompts.examples:
            msgs.append({"role": "user", "content": self.prompts.generate.format_map(ex["listing"])})
            msgs.append({"role": "assistant", "content": json.dumps(ex["answer"], ensure_ascii=False)})
        msgs.append({"role": "user", "content": user})
        return msgs

    def schema_for(self, state: _State) -> dict[str, Any]:
        if state.constraint is not None:
            return state.constraint.schema()
        if not self.config.per_product_schema:
            return ANSWER_SCHEMA
        return answer_schema([k for k, _ in self.listing_attributes(state.norm)])

    def _request(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> ChatRequest:
        c = self.config
        return ChatRequest(messages=messages, max_tokens=c.max_tokens, temperature=c.temperature,
                           json_schema=schema, seed=c.seed, repeat_penalty=c.repeat_penalty)

    def generate_request(self, state: _State) -> ChatRequest:
        return self._request(self._messages(self.prompts.generate.format_map(self.listing(state.norm))),
                             self.schema_for(state))

    def refine_request(self, state: _State) -> ChatRequest:
        previous = state.last_text.strip() or "(empty)"
        if len(previous) > 700:
            previous = previous[:700] + " …"
        problems = "\n".join(f"- {p}" for p in state.last_problems) or "- the answer was not valid JSON"
        user = self.prompts.refine.format_map({**self.listing(state.norm), "previous": previous,
                                               "problems": problems})
        return self._request(self._messages(user), self.schema_for(state))

    def evaluate(self, output: dict[str, Any], state: _State) -> CheckReport:
        report = check_output(output, state.product, self.config.checks, state.src, self.leak)
        if state.constraint is not None:  # a backend that ignored the schema: the same rule as a check
            flagged = {i.field for i in report.issues}
            for issue in state.constraint.violations(output):
                if issue.field not in flagged or issue.code == "outside_vocabulary":
                    report.issues.append(issue)
                    report.n_attr_unsupported += issue.field.startswith("attributes.")
        if report.passed:
            for extra in self.extra_checks:
                report.issues.extend(extra(output, state.product))
        return report

    def _observe(self, state: _State, res: ChatResult) -> None:
        state.rounds += 1
        state.prompt_tokens += res.prompt_tokens
        state.completion_tokens += res.completion_tokens
        state.seconds += res.seconds
        entry: dict[str, Any] = {"round": state.rounds, "parsed": False}
        if not res.ok:
            entry["error"] = res.error
            state.last_problems = []
            state.done = True  # the backend already retried; another round would fail the same way
        else:
            state.last_text = res.text
            if self.config.keep_answers:
                entry["answer"] = res.text[:2000]
            try:
                text = res.text
                if state.constraint is not None and res.finish_reason == "length":
                    text = close_truncated(text)  # a looping answer cut by max_tokens: keep what is whole
                    entry["truncated"] = True
                out = parse_output(text)
                if state.constraint is not None and isinstance(out.get("description"), str):
                    out["description"] = tidy(out["description"])  # a looping answer's repeats out
            except ParseError as e:
                entry["error"] = f"parse: {e}"
                state.last_problems = [f"the answer was not one valid JSON object ({e})"]
            else:
                report = self.evaluate(out, state)
                # a small model's refinement can be worse than its draft: keep the best answer, not the last
                if state.report is None or len(report.issues) < len(state.report.issues):
                    state.output, state.report, state.best_round = out, report, state.rounds
                entry.update(parsed=True, issues=[i.code for i in report.issues], n_attr_values=report.n_attr_values,
                             n_attr_unsupported=report.n_attr_unsupported)
                state.last_problems = report.reasons()
                if report.passed:
                    state.done = True
        state.history.append(entry)
        if state.rounds >= self.config.max_rounds:
            state.done = True

    def _fallback_fields(self, state: _State) -> tuple[str, dict[str, str], str]:
        norm = state.norm
        desc = norm.description or (norm.title.rstrip(".") + ".")
        attrs = dict([(k, v) for k, v in norm.attributes.items() if v.lower() not in EMPTY_VALUES
                      and k not in BOOKKEEPING_KEYS][: self.config.checks.max_attributes])
        ptype = norm.category[-1] if norm.category else ""
        return desc, attrs, ptype

    def finalize(self, state: _State) -> EnrichResult:
        c = self.config
        removed: list[dict[str, str]] = []
        method = "fallback"
        fields: tuple[str, dict[str, str], str] | None = None
        if self.backend is None:
            method = "rules"
        elif state.output is not None and state.report is not None:
            if state.report.passed:
                method = "llm"
                fields = (state.output["description"], state.output["attributes"], state.output["product_type"])
            elif c.repair:
                fixed = repair(state.output, state.report, state.product, state.src, c.checks, self.leak)
                if state.constraint is not None:
                    fixed = state.constraint.enforce(fixed)
                rep2 = self.evaluate(fixed, state)
                if rep2.passed:
                    method = "llm+repair"
                    removed = [i.to_dict() for i in state.report.issues]
                    fields = (fixed["description"], fixed["attributes"], fixed["product_type"])
        if fields is None:
            desc, attrs, ptype = self._fallback_fields(state)
            text = state.norm.text(c.max_text_chars)
        else:
            desc, attrs, ptype = fields
            model_attrs = dict(attrs)
            if c.keep_source_attributes:  # never lose what the listing said; the model's checked extras follow
                _, src_attrs, _ = self._fallback_fields(state)
                attrs = {**src_attrs, **{k: v for k, v in attrs.items() if k not in src_attrs}}
            text = compose_text(state.norm, desc, attrs, ptype, c.max_text_chars)
        # the source's own text is not held to the model's length rules (a 3-word title is what it is)
        cfg = c.checks if fields is not None else replace(c.checks, min_chars=0, min_words=0)
        final = check_output({"description": desc, "attributes": attrs, "product_type": ptype}, state.product,
                             cfg, state.src, self.leak if fields is not None else frozenset())
        checks = {"passed": final.passed, "verdicts": final.verdicts, "removed": removed, "rounds": state.history,
                  "chosen_round": state.best_round if fields is not None else None}
        if fields is not None:
            checks["model_attributes"] = model_attrs
        if not final.passed:
            checks["issues"] = [i.to_dict() for i in final.issues]
        return EnrichResult(id=state.norm.id, text=text, description=desc, attributes=attrs, product_type=ptype,
                            checks=checks, rounds=state.rounds, fallback=method == "fallback", method=method,
                            prompt_tokens=state.prompt_tokens, completion_tokens=state.completion_tokens,
                            llm_seconds=state.seconds, input_hash=state.input_hash)

    # -- drivers ------------------------------------------------------------------------
    def enrich(self, product: Any) -> EnrichResult:
        return self.enrich_many([product])[0]

    def enrich_many(self, products: Sequence[Any]) -> list[EnrichResult]:
        """Enrich a batch; each round's requests go to the backend together (concurrently over HTTP)."""
        hashes = [self.input_hash(p) for p in products]
        results: dict[int, EnrichResult] = {}
        if self.cache is not None:
            hits = self.cache.get_many(self.cache_backend, self.model_name, self.prompt_id, hashes)
            for i, h in enumerate(hashes):
                if h in hits:
                    results[i] = EnrichResult.from_cache(hits[h], _product_id(products[i]), h)
        todo = [i for i in range(len(products)) if i not in results]
        states = {i: self.prepare(products[i], hashes[i]) for i in todo}  # hits need no normalising
        if self.backend is not None:
            for _ in range(self.config.max_rounds):
                active = [i for i in todo if not states[i].done]
                if not active:
                    break
                reqs = [self.generate_request(states[i]) if states[i].rounds == 0 else self.refine_request(states[i])
                        for i in active]
                t0 = time.perf_counter()
                answers = self.backend.chat_many(reqs)
                self.llm_wall_seconds += time.perf_counter() - t0  # concurrent requests overlap: wall, not sum
                for i, res in zip(active, answers, strict=True):
                    self._observe(states[i], res)
        fresh = {i: self.finalize(states[i]) for i in todo}
        if self.cache is not None and fresh:
            self.cache.put_many(self.cache_backend, self.model_name, self.prompt_id,
                                [(states[i].input_hash, r.to_cache()) for i, r in fresh.items()])
        results.update(fresh)
        return [results[i] for i in range(len(products))]


def _product_id(product: Any) -> str:
    return str(product.get("id", "") if isinstance(product, dict) else getattr(product, "id", ""))


#: Bump when normalize/checks change behaviour, so cached results are recomputed.
_RULES_VERSION = "rules-7"
