"""`shopclip ground`: the typer command, kept here so the grounding stage owns its options.

The main CLI adds it with ``app.command("ground")(ground_command)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Idle OpenMP threads sleep instead of spinning: with 2 torch threads on a busy 2-core machine the
# combined localiser ran 0.25 scenes/s spinning vs 7.1 passive (1 thread: 7.0). Only effective
# before torch loads, as in shopclip/eval/cli.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def ground_command(
    catalog: Annotated[Path, typer.Argument(help="Catalog file (.jsonl, .csv, .parquet)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: boxes.jsonl, crops/, contact_sheet.png")],
    method: Annotated[str, typer.Option(help="Localiser: combined (default, measured best), cam, foreground, "
                                             "saliency, pose, textmap, full_image, or `grounding-dino:<model id>` / "
                                             "`owlv2:<model id>` (a hub id or a local folder). --list-methods shows all.")] = "combined",
    prompt: Annotated[str, typer.Option(help="What to look for: 'type' (the category leaf, e.g. 'Casual Shoes') or "
                                             "'title' (the product title)")] = "type",
    margin: Annotated[float, typer.Option(help="Grow the chosen box by this fraction of its size on every side")] = 0.05,
    min_score: Annotated[float | None, typer.Option(help="Below this box score, use the full image (fallback). "
                                                         "Default: the method's own threshold")] = None,
    sheet: Annotated[int, typer.Option(help="Draw the first N images with their boxes into contact_sheet.png "
                                            "(0: none)")] = 48,
    crops: Annotated[bool, typer.Option(help="Write JPEG crops (off: boxes only)")] = True,
    force: Annotated[bool, typer.Option(help="Ignore the cache and localise every image again")] = False,
    list_methods: Annotated[bool, typer.Option("--list-methods", help="List localisers and exit")] = False,
) -> None:
    """Find the product in each listing photo (the kurta, not the model), crop to it, report per row.

    Resumable: results are cached by image SHA-1 + method + prompt + options, so a
    re-run (or a run after a crash) only does what is new. Unreadable images and
    failed localisations are reported per row in boxes.jsonl ("error") and on stderr;
    rows the catalog loader rejects (missing id, bad category, …) are reported on stderr
    with their line, field and reason and counted in the summary; the run never stops
    for one bad row. Exit code 0: all rows grounded (fallbacks included), 1: some rows
    had errors or were rejected, 2: the catalog (no usable row) or the method is unusable.

    Example: shopclip ground ../shared/data/products/catalog.jsonl --out ground-out --method combined --sheet 48
    """
    from rich.console import Console

    from shopclip.catalog import CatalogReadError
    from shopclip.grounding.base import create_localiser, list_localisers
    from shopclip.grounding.runner import ground_catalog

    console, err = Console(), Console(stderr=True)
    if list_methods:
        for name, desc in list_localisers().items():
            console.print(f"{name:28s} {desc}")
        return
    try:
        create_localiser(method)  # fail fast on a bad name or a missing model; the instance is cached
    except (KeyError, ValueError, OSError, RuntimeError) as e:
        err.print(f"[red]cannot use method {method!r}:[/red] {e}")
        raise typer.Exit(2) from None
    if prompt not in ("type", "title"):
        err.print("[red]--prompt must be 'type' or 'title'[/red]")
        raise typer.Exit(2)
    try:
        res = ground_catalog(catalog, out, method=method, prompt=prompt,
                             margin=margin, min_score=min_score, crops=crops, sheet=sheet, force=force)
    except CatalogReadError as e:
        err.print(f"[red]cannot read {catalog}:[/red] {e}")
        raise typer.Exit(2) from None
    _report_rejected(err, res.rejected_rows, catalog)
    for row in res.error_rows[:20]:
        err.print(f"{row['id']}: {row['error']}", markup=False, highlight=False)
    if len(res.error_rows) > 20:
        err.print(f"… and {len(res.error_rows) - 20} more (see {res.boxes_path})", markup=False)
    if res.total == 0:
        # Nothing was grounded: an empty or wholly rejected catalog is unusable, not a success.
        err.print(res.summary() if res.rejected else f"no product to ground: {catalog} holds no rows",
                  markup=False, highlight=False)
        raise typer.Exit(2)
    console.print(res.summary(), markup=False, highlight=False)
    if not res.ok:
        raise typer.Exit(1)


MAX_SHOWN = 50


def _report_rejected(err: Any, rejected: list[dict[str, Any]], catalog: Path) -> None:
    """Rows the catalog loader rejected, one line each (line, field, reason), as `shopclip validate` shows them."""
    for e in rejected[:MAX_SHOWN]:
        who = f" (id {e['id']})" if e.get("id") else ""
        err.print(f"rejected: line {e['line']}{who}: {e['field']}: {e['reason']}", markup=False, highlight=False)
    if len(rejected) > MAX_SHOWN:
        err.print(f"… and {len(rejected) - MAX_SHOWN} more rejected rows (`shopclip validate {catalog}` "
                  "writes them all)", markup=False)
