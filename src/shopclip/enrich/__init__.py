"""Text enrichment: rule-based normalisation, an LLM agent (generate → evaluate → refine) whose every
answer is checked against the product's own listing, a SQLite cache and a resumable batch runner.

    from shopclip.enrich import Enricher, LlamaCppBackend, run_enrichment
    enricher = Enricher(LlamaCppBackend())           # or OpenAIBackend(base_url=..., model=...), or None (rules)
    result = enricher.enrich(product)                 # .text, .description, .attributes, .checks, .fallback

Heavy pieces (llama.cpp, HTTP) load lazily; importing this package needs nothing beyond the core install.
"""

from shopclip.enrich.agent import (
    ANSWER_SCHEMA,
    EnrichConfig,
    Enricher,
    EnrichResult,
    ParseError,
    answer_schema,
    compose_text,
    load_prompts,
    parse_output,
)
from shopclip.enrich.backends import (
    Backend,
    BackendError,
    ChatRequest,
    ChatResult,
    LlamaCppBackend,
    OpenAIBackend,
    RateLimiter,
    llama_cpp_available,
    make_backend,
)
from shopclip.enrich.cache import EnrichCache
from shopclip.enrich.checks import CheckConfig, CheckReport, Issue, SourceIndex, check_output, repair
from shopclip.enrich.normalize import NormalizedProduct, normalize_product, normalize_text, normalize_title
from shopclip.enrich.runner import RunSummary, load_enriched_texts, run_enrichment

__all__ = [
    "ANSWER_SCHEMA", "Backend", "BackendError", "ChatRequest", "ChatResult", "CheckConfig", "CheckReport",
    "EnrichCache", "EnrichConfig", "EnrichResult", "Enricher", "Issue", "LlamaCppBackend", "NormalizedProduct",
    "OpenAIBackend", "ParseError", "RateLimiter", "RunSummary", "SourceIndex", "answer_schema", "check_output",
    "compose_text", "llama_cpp_available", "load_enriched_texts", "load_prompts", "make_backend",
    "normalize_product", "normalize_text", "normalize_title", "parse_output", "repair", "run_enrichment",
]
