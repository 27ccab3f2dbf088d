"""The `shopclip` command line: one verb per job, each with an example in its --help."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Spinning OpenMP threads steal the cores from decode threads and other processes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

class _Group(typer.core.TyperGroup):
    """Every command: an unknown `--model` (or one whose package is missing) is one line and exit code 2."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        from shopclip.index.base import StoreUnavailableError
        from shopclip.models import ModelUnavailableError, UnknownModelError

        try:
            return super().invoke(ctx)
        except (UnknownModelError, ModelUnavailableError) as e:
            err.print(f"[red]{e}[/red]", soft_wrap=True)
            raise typer.Exit(2) from None
        except StoreUnavailableError as e:  # a store that is down, misnamed or misconfigured: one line, no trace
            err.print(f"[red]{e}[/red]", soft_wrap=True, markup=False)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_Group,
    help="shopclip: aligned image-text embeddings for product catalogs: validate, embed, index, search.\n\n"
    "Example: shopclip build ../shared/data/products/catalog.jsonl --workdir demo-work && "
    "shopclip search demo-work \"red running shoes\"",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)
index_app = typer.Typer(help="Build ANN indexes over stored embeddings (after `shopclip embed`, or to refresh "
                        "an index that search says is out of date).\n\nExample: shopclip index build work",
                        no_args_is_help=True)
app.add_typer(index_app, name="index")
console = Console()
err = Console(stderr=True)
ENGINE_HELP = ("Inference engine: torch, onnx (fp32), onnx-int8 or torch-bf16 (CPUs with native bf16) (default: $SHOPCLIP_ENGINE, else the measured "
               "default; see `shopclip models`)")

# The vector store options shared by `index build`, `build`, `search`, `similar` and `serve`:
# a shop that outgrows one machine changes a flag and a URI, not code.
StoreOpt = Annotated[str | None, typer.Option(
    "--store", help="Vector store: faiss (in-process, files in the work folder), pgvector (PostgreSQL) or milvus; "
                    "default: what the work folder was built with, faiss for a new one")]
UriOpt = Annotated[str | None, typer.Option(
    "--uri", help="Where the store lives: postgresql://user@host:5432/db, 'embedded' (a PostgreSQL server under "
                  "the work folder), http://host:19530 or a Milvus Lite file; ignored by faiss")]
IndexKindOpt = Annotated[str, typer.Option(
    "--index", help="faiss index kind: auto (exact up to 20k products, HNSW up to 2M, HNSW-SQ8 above), flat, hnsw, "
                    "hnsw-sq8 (8-bit, a quarter of the memory) or ivfpq (product quantisation, smallest)")]


def _quiet_libraries() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import warnings

    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:
        pass


def _results_table(title: str, results: list) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("id")
    table.add_column("title", overflow="fold", max_width=60)
    table.add_column("category", overflow="fold")
    table.add_column("score", justify="right")
    for i, r in enumerate(results, 1):
        table.add_row(str(i), r.id, r.title, r.category, f"{r.score:.3f}")
    return table


@app.command()
def validate(
    catalog: Annotated[Path, typer.Argument(help="Catalog file: .jsonl, .csv or .parquet")],
    errors: Annotated[Path | None, typer.Option(help="Where to write bad rows (default: <catalog>.errors.jsonl)")] = None,
    check_images: Annotated[bool, typer.Option(help="Open every image (unreadable, truncated, tiny, non-RGB; "
                                                    "CMYK/greyscale/palette are warnings)")] = True,
    min_image_size: Annotated[int, typer.Option(help="Smallest accepted image: at least N x N pixels in area, short side at least N/4")] = 32,
) -> None:
    """Check a catalog row by row; report each bad row with its line, field and reason.

    Good rows are kept; bad ones go to the errors file (one JSON object per problem, with
    "severity": "error"). Images that are usable only after a conversion (CMYK, greyscale,
    palette, transparency flattened onto white) are reported too, as "severity": "warning":
    those rows are kept and converted to RGB.

    Exit code: 0 no row rejected (warnings alone still exit 0), 1 some rows rejected,
    2 the file itself cannot be read.

    Example: shopclip validate ../shared/data/products/catalog.jsonl
    """
    from shopclip.catalog import CatalogReadError, default_errors_path, validate_catalog, write_errors

    try:
        report = validate_catalog(catalog, check_images=check_images, min_image_size=min_image_size, progress=True)
    except CatalogReadError as e:
        err.print(f"[red]cannot read {catalog}:[/red] {e}")
        raise typer.Exit(2) from None
    out = errors or default_errors_path(catalog)
    findings = report.findings
    for e in findings[:20]:
        tag = "warning: " if e.severity == "warning" else ""
        err.print(f"line {e.line}: {tag}{e.field}: {e.reason}" + (f" (id {e.id})" if e.id else ""),
                  markup=False, highlight=False)
    if len(findings) > 20:
        err.print(f"… and {len(findings) - 20} more")
    console.print(report.summary(), markup=False, highlight=False)
    if findings:
        write_errors(findings, out)
        console.print(f"{'errors' if report.errors else 'warnings'} written to {out}", markup=False)
    elif out.exists() and errors is None:
        out.unlink()  # a stale errors file from an earlier run would mislead
    if report.errors:
        raise typer.Exit(1)


RUNNER_HELP = "Where the embed step runs: local (this process) or ray (a Ray Data actor pool; pip install 'shopclip[ray]')"
ADDRESS_HELP = "Ray cluster for --runner ray: auto (started with `ray start --head`), HOST:6379 or ray://HOST:10001; default: start one in this process"
ACTORS_HELP = "Ray actors (model copies) for --runner ray; default: one per GPU, else one per CPU of the cluster"


@app.command()
def embed(
    catalog: Annotated[Path, typer.Argument(help="Catalog file (.jsonl, .csv, .parquet)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Work folder to write embeddings into")],
    model: Annotated[str, typer.Option(help="Model name, model/run folder, or hub spec (see `shopclip models`)")] = "default",
    dtype: Annotated[str, typer.Option(help="float16 or float32")] = "float16",
    sample: Annotated[int | None, typer.Option(help="Embed only a deterministic sample of N products")] = None,
    engine: Annotated[str | None, typer.Option(help=ENGINE_HELP)] = None,
    runner: Annotated[str, typer.Option(help=RUNNER_HELP)] = "local",
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
    actors: Annotated[int | None, typer.Option(help=ACTORS_HELP)] = None,
) -> None:
    """Embed every valid product's image and text (resumable: unchanged products are skipped).

    Example: shopclip embed ../shared/data/products/catalog.jsonl --out work --model default --engine onnx-int8
    (on a Ray cluster: ... --runner ray --address auto)
    """
    from shopclip.pipeline.build import BuildOptions

    options = BuildOptions(model=model, dtype=dtype, sample=sample, engine=engine, runner=runner, address=address,
                           extra={"ray_actors": actors} if actors else {})
    _run_build(catalog, out, options, only=("validate", "embed"))


def _store_options(store: str | None, uri: str | None, index: str = "auto") -> tuple[str, dict]:
    """(backend, options) for a new index, checked before any work: a typo costs nothing."""
    from shopclip.index import available_backends

    backend = store or "faiss"
    if backend not in available_backends():
        err.print(f"[red]unknown store {backend!r}; one of {', '.join(available_backends())}[/red]")
        raise typer.Exit(2)
    options: dict = {}
    if backend == "faiss":
        from shopclip.index.faiss_backend import KINDS

        if index not in KINDS:
            err.print(f"[red]unknown --index {index!r}; one of {', '.join(KINDS)}[/red]")
            raise typer.Exit(2)
        options["index"] = index
    elif uri is None:
        err.print(f"[red]--store {backend} needs --uri (e.g. 'embedded' for a local server under the work folder)[/red]")
        raise typer.Exit(2)
    if uri is not None and backend != "faiss":
        options["uri"] = uri
    return backend, options


@index_app.command("build")
def index_build(
    workdir: Annotated[Path, typer.Argument(help="Work folder holding embeddings (from `shopclip embed`)")],
    store: StoreOpt = None,
    uri: UriOpt = None,
    index: IndexKindOpt = "auto",
    backend: Annotated[str | None, typer.Option(hidden=True, help="Old name of --store")] = None,
) -> None:
    """Build image, text and fused product indexes from stored embeddings.

    Examples: shopclip index build work;
    shopclip index build work --store pgvector --uri postgresql://shop@db.internal:5432/shop;
    shopclip index build work --index hnsw-sq8   (a quarter of the memory, for millions of products)
    """
    from shopclip.pipeline.indexing import build_indexes
    from shopclip.pipeline.workdir import WorkDir

    wd = WorkDir(workdir)
    if not wd.embeddings.exists():
        err.print(f"[red]{workdir} has no embeddings;[/red] run `shopclip embed CATALOG --out {workdir}` first")
        raise typer.Exit(2)
    kind, options = _store_options(store or backend, uri, index)
    sizes = build_indexes(wd.embeddings, wd.index, backend=kind, **options)
    console.print("indexes built: " + ", ".join(f"{k} ({v} products)" for k, v in sizes.items()))


def _engine(workdir: Path, store: str | None = None, uri: str | None = None):
    """Open a work folder; a missing index exits 2, one built from other embeddings exits 1."""
    from shopclip.search import IndexOutOfDateError, SearchEngine

    try:
        return SearchEngine(workdir, store=store, uri=uri)
    except FileNotFoundError as e:
        err.print(f"[red]{e}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None
    except IndexOutOfDateError as e:
        err.print(f"[red]{e}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None


@app.command()
def search(
    workdir: Annotated[Path, typer.Argument(help="Built work folder")],
    query: Annotated[str | None, typer.Argument(help="Text query")] = None,
    image: Annotated[Path | None, typer.Option(help="Search by this image instead of text")] = None,
    k: Annotated[int, typer.Option("-k", help="Number of results")] = 10,
    category: Annotated[str | None, typer.Option(help="Only products under this category path, e.g. 'Footwear'")] = None,
    mode: Annotated[str | None, typer.Option(help="vector, lexical (BM25) or hybrid (both, fused); default: hybrid "
                                                  "when the work folder has a lexical index, else vector")] = None,
    fusion: Annotated[str | None, typer.Option(help="hybrid only: rrf (reciprocal rank fusion, k=60) or weighted")] = None,
    lang: Annotated[str | None, typer.Option(help="Query language: auto (detected), en, hi, es, fr, de")] = None,
    understand: Annotated[bool, typer.Option(help="Turn brand/colour/gender/type/price words into filters "
                                                  "(shown above the results)")] = True,
    drop: Annotated[list[str] | None, typer.Option(help="Ignore this understood filter (brand, color, gender, "
                                                        "type, price); repeatable")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of a table")] = False,
    store: StoreOpt = None,
    uri: UriOpt = None,
) -> None:
    """Find products by text or by image.

    Examples: shopclip search demo-work "red running shoes" -k 10;
    shopclip search demo-work "puma shoes under 2000" --mode hybrid --drop price;
    shopclip search demo-work "लाल कुर्ता";
    shopclip search demo-work --image ../shared/data/products/images/myntra-10104.jpg --category Footwear
    """
    _quiet_libraries()
    if (query is None) == (image is None):
        err.print("[red]give either a text QUERY or --image PATH[/red]")
        raise typer.Exit(2)
    if not 1 <= k <= 1000:
        err.print("[red]-k must be between 1 and 1000[/red]")
        raise typer.Exit(2)
    eng = _engine(workdir, store, uri)
    if image is not None:
        from shopclip.core.images import ImageError

        try:
            results = eng.search_image(image, k, category)
        except ImageError as e:
            err.print(f"[red]{image}: {e}[/red]")
            raise typer.Exit(2) from None
        title = f"image: {image}"
    else:
        from shopclip.search import SearchInputError

        text = " ".join(query.split())
        if not any(c.isalnum() for c in text):
            err.print("[red]the query has no letters or digits to search for[/red]")
            raise typer.Exit(2)
        try:
            out = eng.search(text, k, category, mode=mode, fusion=fusion, lang=lang, understand=understand,
                             drop=tuple(drop or ()))
        except SearchInputError as e:
            err.print(f"[red]{e}[/red]", soft_wrap=True)
            raise typer.Exit(2) from None
        results, info = out.results, out.info
        title = f"text: {query!r} ({info.mode}{'/' + info.fusion if info.fusion else ''}, {info.lang})" + (
            "" if eng.aligned else " (matched against product text: model not trained)")
        if not as_json:
            if info.understood and info.understood.shown:
                console.print(f"{info.understood.shown}  (drop one with --drop FACET, or --no-understand)",
                              markup=False, highlight=False)
            for item in (info.understood.ignored if info.understood else []):
                console.print(f"ignored {item['words']!r}: {item['reason']}", markup=False, highlight=False)
            for note in info.notes:
                console.print(f"note: {note}", markup=False, highlight=False)
    _print_results(title, results, as_json)


@app.command()
def similar(
    workdir: Annotated[Path, typer.Argument(help="Built work folder")],
    product_id: Annotated[str, typer.Argument(help="A product id in the catalog")],
    k: Annotated[int, typer.Option("-k", help="Number of results")] = 10,
    category: Annotated[str | None, typer.Option(help="Only products under this category path")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of a table")] = False,
    store: StoreOpt = None,
    uri: UriOpt = None,
) -> None:
    """Products most similar to one product (itself excluded).

    Example: shopclip similar demo-work myntra-10104
    """
    eng = _engine(workdir, store, uri)
    try:
        p = eng.product(product_id)
    except KeyError:
        err.print(f"[red]unknown product id {product_id!r}[/red]")
        raise typer.Exit(2) from None
    _print_results(f"similar to {product_id}: {p['title']}", eng.similar(product_id, k, category), as_json)


def _print_results(title: str, results: list, as_json: bool) -> None:
    if as_json:
        import json

        for r in results:
            print(json.dumps(r.to_dict(), ensure_ascii=False))
    else:
        console.print(_results_table(title, results))


def _print_stage(r) -> None:
    """A stage that ran says what it did; one that was skipped says only that it is up to date."""
    if r.ran:
        console.print(f"[bold]{r.name:>9}[/bold] ran in {r.seconds:.1f}s: {r.summary}")
    else:
        console.print(f"[bold]{r.name:>9}[/bold] up to date")


def _run_build(catalog: Path, workdir: Path, options, only: tuple[str, ...] | None = None,
               announce: bool = False) -> None:
    """Run `build` (or the stages in `only`) and turn the errors a user can fix into one line + exit 2."""
    from shopclip.catalog import CatalogReadError
    from shopclip.pipeline.build import BuildOptionsError, build, planned_stages
    from shopclip.pipeline.embed import StoreConflictError
    from shopclip.pipeline.runners import RunnerError

    _quiet_libraries()
    try:
        options.check()
        if announce:  # only the stages this build will consider: optional ones not asked for are left out
            console.print(f"stages: {' → '.join(planned_stages(catalog, workdir, options, only))}")
        build(catalog, workdir, options, only=only, on_stage=_print_stage)
    except CatalogReadError as e:
        err.print(f"[red]cannot read {catalog}:[/red] {e}")
        raise typer.Exit(2) from None
    except (BuildOptionsError, StoreConflictError, RunnerError) as e:
        from rich.markup import escape

        err.print(f"[red]{escape(str(e))}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None


@app.command("build")
def build_cmd(
    catalog: Annotated[Path, typer.Argument(help="Catalog file (.jsonl, .csv, .parquet)")],
    workdir: Annotated[Path, typer.Option(help="Work folder for every stage's output")] = Path("work"),
    model: Annotated[str, typer.Option(help="Model name, model/run folder, or hub spec")] = "default",
    dtype: Annotated[str, typer.Option(help="Stored embedding precision: float16 or float32")] = "float16",
    sample: Annotated[int | None, typer.Option(help="Use only a deterministic sample of N valid products")] = None,
    check_images: Annotated[bool, typer.Option(help="Open every image during validation")] = True,
    force: Annotated[bool, typer.Option(help="Re-run every stage even when up to date")] = False,
    ground: Annotated[str | None, typer.Option(help="Crop every photo to its product first (grounding method, "
                                                    "e.g. combined; see `shopclip ground --list-methods`)")] = None,
    enrich: Annotated[str | None, typer.Option(help="Rewrite product text first: local (offline LLM), openai "
                                                    "(any OpenAI-compatible server) or rules (no LLM)")] = None,
    train: Annotated[bool, typer.Option(help="Train the heads on this catalog (cached tower features) before "
                                             "embedding; the build then uses the trained model")] = False,
    train_epochs: Annotated[int, typer.Option(help="Epochs of the --train stage")] = 40,
    store: StoreOpt = None,
    uri: UriOpt = None,
    index: IndexKindOpt = "auto",
    engine: Annotated[str | None, typer.Option(help=ENGINE_HELP)] = None,
    runner: Annotated[str, typer.Option(help=RUNNER_HELP)] = "local",
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
    actors: Annotated[int | None, typer.Option(help=ACTORS_HELP)] = None,
) -> None:
    """Run the whole pipeline (validate → [ground] → [enrich] → [train] → embed → index); a re-run does only what changed.

    Example: shopclip build ../shared/data/products/catalog.jsonl --workdir demo-work --train
    """
    from shopclip.pipeline.build import BuildOptions

    extra: dict = {}
    if ground:
        extra["ground"] = ground
    if enrich:
        extra["enrich"] = enrich
    if train:
        extra.update(train=True, train_epochs=train_epochs)
    backend, index_options = _store_options(store, uri, index)
    if actors:
        extra["ray_actors"] = actors
    options = BuildOptions(model=model, dtype=dtype, sample=sample, check_images=check_images, force=force,
                           engine=engine, extra=extra, backend=backend, index_options=index_options,
                           runner=runner, address=address)
    _run_build(catalog, workdir, options, announce=True)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Argument(help="A built work folder")] = Path("demo-work"),
    k: Annotated[int, typer.Option("-k", help="Results per example")] = 5,
) -> None:
    """Print example searches over a built work folder: text, image and similar items.

    Example: shopclip demo demo-work
    """
    _quiet_libraries()
    eng = _engine(workdir)
    metas = eng.store.meta()
    note = "" if eng.aligned else " (matched against product text: model not trained)"
    for q in ("red running shoes", "women's handbag", "analog watch for men"):
        console.print(_results_table(f"text query {q!r}{note}", eng.search_text(q, k)))
    probe = next((m for m in metas if m.get("split") == "test"), metas[0])
    console.print(_results_table(f"image query: photo of {probe['id']} ({probe['title']})", eng.search_image(probe["image"], k)))
    other = next((m for m in metas if m.get("split") == "test" and m["category"] != probe["category"]), metas[-1])
    console.print(_results_table(f"similar to {other['id']}: {other['title']}", eng.similar(other["id"], k)))


@app.command()
def models() -> None:
    """List model names that `--model` and `load_model` accept.

    Example: shopclip models
    """
    from shopclip.models import list_models, list_towers

    console.print("models: " + ", ".join(list_models()))
    console.print("towers: " + ", ".join(list_towers()))
    from shopclip.models.engines import ENGINES, default_engine

    console.print(f"engines (--engine): {', '.join(ENGINES)}; default {default_engine()}")
    console.print("also: a model or run folder, hf-clip:<id>, hf-siglip:<id>, open_clip:<arch>/<tag> (need a model hub)")


def _register_capabilities() -> None:
    """Commands whose modules import their heavy dependencies only when run."""
    from shopclip.enrich.cli import enrich_command
    from shopclip.eval.cli import eval_command
    from shopclip.grounding.cli import ground_command
    from shopclip.serve.cli import serve_command
    from shopclip.train.cli import train_command
    from shopclip.train.multilingual import train_multilingual_command
    from shopclip.understand.cli import dedupe_command, heads_app, tag_command

    app.command("ground")(ground_command)
    app.command("enrich")(enrich_command)
    app.command("train")(train_command)
    app.command("train-multilingual")(train_multilingual_command)
    app.command("eval")(eval_command)
    app.command("serve")(serve_command)
    app.add_typer(heads_app, name="heads")
    app.command("tag")(tag_command)
    app.command("dedupe")(dedupe_command)


_register_capabilities()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
