"""`shopclip serve`: run the API and web page over a built work folder with uvicorn.

The lead registers it on the main Typer app: `app.command("serve")(serve_command)`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer


def serve_command(
    workdir: Annotated[Path, typer.Argument(help="Work folder made by `shopclip build`")],
    host: Annotated[str, typer.Option(help="Interface to bind; keep 127.0.0.1 unless a proxy fronts it")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted image upload, in MB")] = 10.0,
    allow_url_fetch: Annotated[bool, typer.Option(help="Let POST /search/image fetch an image from `url=` "
                                                  "(public addresses only, unless --url-fetch-host is given)")] = False,
    url_fetch_host: Annotated[list[str] | None, typer.Option(help="With --allow-url-fetch: fetch only from this host "
                                                             "(repeatable); these may be private addresses")] = None,
    max_image_pixels: Annotated[int, typer.Option(min=1, help="Largest image accepted (width x height), "
                                                  "uploaded or fetched")] = 40_000_000,
    protect_reads: Annotated[bool, typer.Option(help="Require X-API-Key on reads too (writes always need it)")] = False,
    preload: Annotated[bool, typer.Option(help="Load the model before taking traffic")] = True,
    threads: Annotated[int | None, typer.Option(help="torch threads per query; 1 suits concurrent traffic, 0 = torch default")] = 1,
    worker_threads: Annotated[int | None, typer.Option(min=1, help="Requests computed at once (default: cores + 1); "
                                                       "more only time-share the cores and stretch the slow ones")] = None,
    batch_queries: Annotated[bool, typer.Option(help="Embed concurrent text queries together in one tower call "
                                                "(off: one call per query)")] = True,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    store: Annotated[str | None, typer.Option("--store", help="Vector store (faiss, pgvector, milvus); default: "
                                              "what the work folder was built with")] = None,
    uri: Annotated[str | None, typer.Option("--uri", help="Where the store lives, when not where the work folder "
                                            "recorded (e.g. postgresql://user@host/db)")] = None,
    snapshot_every: Annotated[int, typer.Option(min=1, help="Save in-process indexes after this many writes")] = 1000,
    snapshot_seconds: Annotated[float, typer.Option(min=1, help="...or this long after the first unsaved write")] = 60.0,
    engine: Annotated[str | None, typer.Option(help="Inference engine: torch, onnx, onnx-int8 or torch-bf16 (default: the one "
                                               "the work folder was embedded with)")] = None,
    heads: Annotated[Path | None, typer.Option(help="Task heads for POST /tag and /dedupe/check (default: "
                                               "WORKDIR/heads, from `shopclip heads train … --out WORKDIR/heads`)")] = None,
) -> None:
    """Serve search, similar items, recommendations and a web page for a work folder.

    Writes (PUT/DELETE /products/{id}) need the key in env SHOPCLIP_API_KEY, sent as the
    X-API-Key header; without it the server is read-only. One process only: writes are
    serialised in memory, so do not run several workers over one work folder. A write costs
    what it changes: it is committed to the embedding log, applied in place, and in-process
    indexes are saved in the background (every --snapshot-every writes, --snapshot-seconds
    after the first unsaved one, and at shutdown).

    Example: shopclip serve demo-work --port 8000   (then open http://127.0.0.1:8000/)

    Image search by URL from one trusted host: --allow-url-fetch --url-fetch-host images.example.com
    """
    import uvicorn

    from shopclip.core.threads import usable_cores
    from shopclip.index.base import StoreUnavailableError
    from shopclip.serve.app import create_app

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("shopclip").setLevel(logging.INFO)  # our load/repair lines, not every library's
    from shopclip.models.engines import ENGINE_ENV, check_engine
    from shopclip.pipeline.workdir import WorkDir

    recorded = WorkDir(workdir).read()
    # The engine the store was embedded with; folders built before engines existed were torch.
    engine = engine or recorded.get("engine") or ("torch" if "embed" in recorded.get("stages", {}) else None)
    if engine:  # every load_model in this process (the server loads lazily) runs on it
        try:
            os.environ[ENGINE_ENV] = check_engine(engine)
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        app = create_app(workdir, max_upload_bytes=int(max_upload_mb * 1024 * 1024), allow_url_fetch=allow_url_fetch,
                         url_fetch_hosts=tuple(url_fetch_host) if url_fetch_host else None,
                         max_image_pixels=max_image_pixels, protect_reads=protect_reads, preload_model=preload,
                         store=store, uri=uri, snapshot_every=snapshot_every, snapshot_seconds=snapshot_seconds,
                         batch_queries=batch_queries, heads_dir=heads, freeze_gc=True,
                         worker_threads=worker_threads or usable_cores() + 1)
    except (FileNotFoundError, StoreUnavailableError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
