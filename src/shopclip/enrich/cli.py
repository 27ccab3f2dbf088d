"""`shopclip enrich`: rewrite catalog text into faithful, attribute-rich descriptions.

Register on the main app with ``app.command("enrich")(enrich_command)``.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)


class BackendKind(str, Enum):
    local = "local"
    openai = "openai"
    rules = "rules"


class JsonMode(str, Enum):
    schema = "schema"
    object_schema = "object-schema"
    object = "object"
    none = "none"


def enrich_command(
    catalog: Annotated[Path, typer.Argument(help="Catalog file (.jsonl, .csv, .parquet); invalid rows are skipped")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSONL: id, text, description, attributes, "
                                      "product_type, checks, rounds, fallback, method")] = Path("enriched.jsonl"),
    backend: Annotated[BackendKind, typer.Option(help="local: offline llama.cpp model (needs llama-cpp-python); "
                                                 "openai: any OpenAI-compatible server; rules: normaliser only, "
                                                 "no LLM")] = BackendKind.local,
    model: Annotated[str | None, typer.Option(help="local: a bundled model name (smollm2-135m) or a .gguf path; "
                                              "openai: the server's model name")] = None,
    base_url: Annotated[str | None, typer.Option(help="openai: server URL up to /v1, e.g. "
                                                 "http://127.0.0.1:8000/v1")] = None,
    api_key_env: Annotated[str, typer.Option(help="openai: environment variable holding the API key "
                                             "(unset = no Authorization header)")] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option(min=1, help="openai: requests in flight at once")] = 4,
    timeout: Annotated[float, typer.Option(help="openai: seconds before one request is abandoned")] = 60.0,
    retries: Annotated[int, typer.Option(min=0, help="openai: retries on timeouts, connection errors, 429 and 5xx "
                                         "(exponential backoff, Retry-After honoured)")] = 3,
    rate_limit: Annotated[float | None, typer.Option(help="openai: at most this many requests per second")] = None,
    json_mode: Annotated[JsonMode, typer.Option(help="openai: how to ask for JSON. schema = response_format "
                                                "json_schema (OpenAI, vLLM); object-schema = json_object + schema "
                                                "(llama-cpp-python server); object = json_object (Ollama); none = "
                                                "prompt only")] = JsonMode.schema,
    threads: Annotated[int | None, typer.Option(help="local: CPU threads for llama.cpp (default: half the usable "
                                                "cores, at least 1: its threads busy-wait on a shared CPU)")] = None,
    n_ctx: Annotated[int, typer.Option(help="local: context window in tokens")] = 2048,
    max_rounds: Annotated[int, typer.Option(min=1, help="LLM calls per product at most: 1 = generate only, "
                                            "each more = one refine with the failed checks")] = 2,
    max_tokens: Annotated[int, typer.Option(min=16, help="tokens generated per LLM call at most")] = 160,
    temperature: Annotated[float, typer.Option(help="sampling temperature (0 = greedy, reproducible)")] = 0.0,
    prompt_version: Annotated[str, typer.Option(help="prompt set under shopclip/enrich/prompts/")] = "v2",
    repair: Annotated[bool, typer.Option(help="after the last round, drop flagged content and keep the rest if it "
                                         "then passes (else fall back to the cleaned source text)")] = True,
    cache: Annotated[Path | None, typer.Option(help="SQLite cache (default: <out>.cache.sqlite)")] = None,
    use_cache: Annotated[bool, typer.Option("--cache-results/--no-cache", help="read and write the cache")] = True,
    resume: Annotated[bool, typer.Option(help="skip ids already in --out; --no-resume starts it afresh")] = True,
    limit: Annotated[int | None, typer.Option(help="enrich only the first N products (after --split)")] = None,
    split: Annotated[str | None, typer.Option(help="only products of this split (train/val/test)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="products per backend round trip (>= --concurrency)")] = 8,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Rewrite each product's noisy title/description into a faithful description + attributes.

    Every model answer is checked against the product's own title, description, category and
    attributes (unsupported values, prices, claims, brands, length, required fields); failing
    answers are refined, repaired, or replaced by the rule-cleaned source text. Resumable and
    cached: a re-run only does what is missing. Ends with a summary (rows enriched, fallen back,
    average rounds, tokens/s).

    Examples:

        shopclip enrich ../shared/data/products/catalog.jsonl --out enriched.jsonl --limit 50

        shopclip enrich catalog.jsonl --out enriched.jsonl --backend openai
        --base-url http://127.0.0.1:8000/v1 --model smollm2 --json-mode object-schema --concurrency 4 --rate-limit 5

        shopclip enrich catalog.jsonl --out rules.jsonl --backend rules
    """
    from shopclip.catalog import Catalog, CatalogReadError
    from shopclip.enrich.agent import EnrichConfig, Enricher
    from shopclip.enrich.backends import BackendError, make_backend
    from shopclip.enrich.cache import EnrichCache
    from shopclip.enrich.runner import run_enrichment

    try:
        cat = Catalog.load(catalog)
    except (CatalogReadError, FileNotFoundError) as e:
        err.print(f"[red]cannot read {catalog}:[/red] {e}")
        raise typer.Exit(2) from None
    products = list(cat)
    if split:
        products = [p for p in products if p.split == split]
    if limit is not None:
        products = products[:limit]
    if cat.errors:
        err.print(f"{len(cat.errors)} invalid rows skipped (run `shopclip validate {catalog}` for details)")
    try:
        be = make_backend(backend.value, model=model, n_ctx=n_ctx, n_threads=threads, base_url=base_url,
                          api_key_env=api_key_env, concurrency=concurrency, timeout=timeout, max_retries=retries,
                          rate_limit=rate_limit, json_mode=json_mode.value)
    except BackendError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    cfg = EnrichConfig(max_rounds=max_rounds, max_tokens=max_tokens, temperature=temperature,
                       prompt_version=prompt_version, repair=repair)
    store = EnrichCache(cache or out.with_name(out.name + ".cache.sqlite")) if use_cache else None
    try:
        enricher = Enricher(be, cfg, cache=store)
    except FileNotFoundError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    try:
        summary = run_enrichment(products, out, enricher, batch_size=max(batch_size, concurrency if be else 1),
                                 resume=resume, progress=progress and os.environ.get("SHOPCLIP_NO_PROGRESS") != "1")
    except BackendError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    finally:
        if be is not None:
            be.close()
        if store is not None:
            store.close()
    for line in summary.lines():
        console.print(line)
