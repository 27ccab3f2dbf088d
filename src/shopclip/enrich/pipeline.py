"""The optional ``enrich`` build stage: enriched text becomes the text the embed stage embeds.

`shopclip build` includes :func:`enrich_stage` before embed; the stage runs only when
``BuildOptions.extra["enrich"]`` is set. Options (all in ``BuildOptions.extra``):

=========================  ==================================================================
``enrich``                 ``"local"`` (or ``True``), ``"openai"``, ``"rules"``; unset/False = off
``enrich_model``           local model name / .gguf path, or the server's model name
``enrich_base_url``        OpenAI-compatible base URL (``http://127.0.0.1:8000/v1``)
``enrich_api_key_env``     environment variable holding the key (default ``OPENAI_API_KEY``)
``enrich_concurrency``     parallel HTTP requests (default 4)
``enrich_timeout``         seconds per HTTP request (default 60)
``enrich_retries``         HTTP retries (default 3)
``enrich_rate_limit``      HTTP requests per second (default none)
``enrich_max_rounds``      LLM calls per product at most (default 2)
``enrich_max_tokens``      tokens per call (default 160)
``enrich_prompt_version``  prompt set (default ``v2``)
``enrich_threads``         llama.cpp threads (default: half the usable cores, at least 1)
=========================  ==================================================================

Outputs ``<workdir>/enrich/enriched.jsonl`` and a cache ``<workdir>/enrich/cache.sqlite`` (kept
across runs, so a changed catalog only enriches the changed products).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shopclip.core.hashing import json_sha1
from shopclip.core.stages import Stage

STAGE = "enrich"


def _opts(ctx: Any) -> dict[str, Any]:
    extra = ctx.options.extra or {}
    kind = extra.get("enrich")
    if kind is True:
        kind = "local"
    return {
        "kind": kind or None,
        "model": extra.get("enrich_model"),
        "base_url": extra.get("enrich_base_url"),
        "api_key_env": extra.get("enrich_api_key_env", "OPENAI_API_KEY"),
        "concurrency": int(extra.get("enrich_concurrency", 4)),
        "timeout": float(extra.get("enrich_timeout", 60.0)),
        "max_retries": int(extra.get("enrich_retries", 3)),
        "rate_limit": extra.get("enrich_rate_limit"),
        "max_rounds": int(extra.get("enrich_max_rounds", 2)),
        "max_tokens": int(extra.get("enrich_max_tokens", 160)),
        "prompt_version": extra.get("enrich_prompt_version", "v2"),
        "n_threads": extra.get("enrich_threads"),
    }


def _out(ctx: Any) -> Path:
    return ctx.workdir.stage_dir(STAGE) / "enriched.jsonl"


def _enabled(ctx: Any) -> bool:
    return _opts(ctx)["kind"] is not None


def _fingerprint(ctx: Any) -> str:
    from shopclip.enrich.agent import _RULES_VERSION, load_prompts

    o = _opts(ctx)
    prompt = load_prompts(o["prompt_version"]).id if o["kind"] != "rules" else "rules"
    settings = {k: v for k, v in o.items() if k not in {"concurrency", "timeout", "max_retries", "rate_limit",
                                                          "n_threads", "api_key_env"}}
    return json_sha1([ctx.upstream(STAGE), settings, prompt, _RULES_VERSION])


def _run(ctx: Any) -> str:
    from shopclip.enrich.agent import EnrichConfig, Enricher
    from shopclip.enrich.backends import make_backend
    from shopclip.enrich.cache import EnrichCache
    from shopclip.enrich.runner import load_enriched_texts, run_enrichment

    o = _opts(ctx)
    folder = ctx.workdir.stage_dir(STAGE)
    folder.mkdir(parents=True, exist_ok=True)
    backend = make_backend(o["kind"], model=o["model"], base_url=o["base_url"], api_key_env=o["api_key_env"],
                           concurrency=o["concurrency"], timeout=o["timeout"], max_retries=o["max_retries"],
                           rate_limit=o["rate_limit"], n_threads=o["n_threads"])
    cache = EnrichCache(folder / "cache.sqlite")
    try:
        enricher = Enricher(backend, EnrichConfig(max_rounds=o["max_rounds"], max_tokens=o["max_tokens"],
                                                  prompt_version=o["prompt_version"]), cache=cache)
        # inputs changed (that is why we run): start the file afresh; the cache keeps unchanged rows free
        summary = run_enrichment(list(ctx.catalog()), _out(ctx), enricher, batch_size=max(8, o["concurrency"]),
                                 resume=False, progress=ctx.options.progress)
    finally:
        if backend is not None:
            backend.close()
        cache.close()
    ctx.texts.update(load_enriched_texts(_out(ctx)))
    return (f"{summary.rows_processed} products ({summary.backend}/{summary.model}): enriched "
            f"{summary.rows_enriched}, fell back {summary.rows_fallback}, cached {summary.cache_hits}, "
            f"avg rounds {summary.avg_rounds:.2f}, {summary.tokens_per_s:.1f} tok/s")


def _restore(ctx: Any) -> None:
    from shopclip.enrich.runner import load_enriched_texts

    if _out(ctx).exists():
        ctx.texts.update(load_enriched_texts(_out(ctx)))


def enrich_stage() -> Stage:
    """The ``enrich`` stage; ``shopclip.pipeline.build`` places it before ``embed``."""
    return Stage(STAGE, _fingerprint, _run, outputs=lambda ctx: [_out(ctx)], enabled=_enabled, restore=_restore)
