"""`shopclip heads train`, `shopclip tag`, `shopclip dedupe`: typer commands the lead CLI
registers in a few lines (``app.add_typer(heads_app, name="heads")`` and two ``app.command``)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see shopclip/eval/cli.py

from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402

heads_app = typer.Typer(help="Task heads (category, attributes, binary labels, duplicate matcher) fitted on a "
                        "labelled catalog.\n\nExample: shopclip heads train ../shared/data/products/catalog.jsonl "
                        "--model default --out work/heads", no_args_is_help=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(message, err=True, fg="red")
    return typer.Exit(code)


def _validated(report) -> None:  # type: ignore[no-untyped-def]
    """Bad rows, as `shopclip validate` shows them: the first 20 and the counts."""
    findings = report.findings
    for e in findings[:20]:
        typer.echo(str(e), err=True)
    if len(findings) > 20:
        typer.echo(f"… and {len(findings) - 20} more", err=True)
    if findings:
        typer.echo(report.summary(), err=True)


@heads_app.command("train")
def heads_train_command(
    catalog: Annotated[Path, typer.Argument(help="Labelled catalog (.jsonl, .csv, .parquet) with train/val/test splits "
                                                 "(missing splits are assigned by group)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Heads folder; WORKDIR/heads is where `shopclip serve WORKDIR` "
                                                          "looks for them")],
    model: Annotated[str, typer.Option(help="Model the heads read (name, model/run folder); the same one must embed "
                                            "the listings later")] = "default",
    C: Annotated[float | None, typer.Option("--C", help="Probe regularisation (default: chosen on val among 0.01, 0.1, 1)")] = None,
    target_accuracy: Annotated[float, typer.Option(help="Abstain thresholds: answered predictions are right this "
                                                        "often on val")] = 0.9,
    precision_target: Annotated[float, typer.Option(help="Binary labels (adult, restricted): flag at this precision "
                                                         "on val")] = 0.9,
    min_attribute_products: Annotated[int, typer.Option(help="An attribute needs this many labelled train products")] = 100,
    relist_train: Annotated[int, typer.Option(help="Synthetic re-listings of train products for the matcher")] = 1500,
    cache: Annotated[Path | None, typer.Option(help="Tower-feature cache (default: the shared one)")] = None,
) -> None:
    """Fit the task heads of a model: category (hierarchical), attributes, binary labels, duplicate matcher.

    Fitted on `train`, calibrated and thresholded on `val`, scored on `test`; everything
    (vocabularies, thresholds, metrics) is saved in OUT/heads.json beside the weights.
    Without any product carrying labels.adult, adult recognition is a zero-shot score
    that every output marks as uncalibrated.

    Example: shopclip heads train ../shared/data/products/catalog.jsonl --model default --out work/heads
    """
    from shopclip.catalog import CatalogReadError
    from shopclip.understand.fit import HeadsConfig, train_heads

    try:
        cfg = HeadsConfig(C=C, target_accuracy=target_accuracy, precision_target=precision_target,
                          min_attribute_products=min_attribute_products, relist_train=relist_train)
        heads = train_heads(catalog, out, model=model, config=cfg, cache_dir=cache)
    except (CatalogReadError, ValueError) as e:
        raise _fail(f"error: {e}") from None
    test = heads.metrics.get("test", {})
    cat = test.get("category", {})
    if cat:
        typer.echo(f"category (test): leaf accuracy {cat['leaf_accuracy']:.3f}, top {cat['top_accuracy']:.3f}, "
                   f"ECE leaf {cat['ece_leaf']:.3f}")
    for name, a in test.get("attributes", {}).items():
        if a.get("n"):
            typer.echo(f"attribute {name} (test): fill accuracy {a['accuracy']:.3f}, at threshold "
                       f"{a['accuracy_at_threshold']:.3f} on {a['coverage']:.0%}")
    for name in heads.zero_shot:
        typer.echo(f"labels.{name}: no labelled products, zero-shot score only (uncalibrated)")
    typer.echo(f"heads saved to {out} ({heads.metrics['timing']['total_s']:.0f} s)")


def tag_command(
    catalog: Annotated[Path, typer.Argument(help="Catalog to tag (.jsonl, .csv, .parquet)")],
    heads: Annotated[Path, typer.Option(help="Heads folder from `shopclip heads train`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSONL, one product per line")],
    model: Annotated[str | None, typer.Option(help="Model (default: the one the heads were fitted for)")] = None,
    neighbours: Annotated[int, typer.Option(min=0, max=50, help="Nearest labelled products shown as the reason")] = 3,
    batch: Annotated[int, typer.Option(min=1, help="Products per commit (a killed run resumes from the last)")] = 256,
    restart: Annotated[bool, typer.Option(help="Start over instead of resuming an earlier run into OUT")] = False,
    check_images: Annotated[bool, typer.Option(help="Decode every photo while validating")] = True,
    cache: Annotated[Path | None, typer.Option(help="Tower-feature cache (default: the shared one; WORKDIR/cache/features "
                                                    "reuses what `shopclip build` computed)")] = None,
) -> None:
    """Predict each product's category path, missing attributes and labels, with confidences.

    Never overwrites what the seller gave: missing attributes are filled only where the head
    is sure (else "unsure"), and confident contradictions are listed as disagreements. Bad
    rows go to OUT.errors.jsonl like `shopclip validate`; a killed run resumes.

    Example: shopclip tag ../shared/data/products/catalog.jsonl --heads work/heads --out tagged.jsonl
    """
    from shopclip.catalog import CatalogReadError
    from shopclip.heads.bundle import HeadsMismatchError
    from shopclip.understand.tag import TagOptions, tag_catalog

    try:
        result = tag_catalog(catalog, heads, out, model=model, on_validated=_validated,
                             options=TagOptions(neighbours=neighbours, batch=batch, restart=restart,
                                                check_images=check_images, cache_dir=cache))
    except CatalogReadError as e:
        raise _fail(f"cannot read {catalog}: {e}") from None
    except (FileNotFoundError, HeadsMismatchError) as e:
        raise _fail(f"error: {e}") from None
    typer.echo(result.summary())
    if result.rejected_rows:
        raise typer.Exit(1)


def dedupe_command(
    catalog: Annotated[Path, typer.Argument(help="Catalog (.jsonl, .csv, .parquet)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Groups JSONL; borderline pairs go to OUT's .review.jsonl")],
    heads: Annotated[Path, typer.Option(help="Heads folder from `shopclip heads train` (its duplicate matcher)")],
    model: Annotated[str | None, typer.Option(help="Model (default: the one the heads were fitted for)")] = None,
    knn: Annotated[int, typer.Option(min=1, max=200, help="Neighbours each listing is compared with")] = 10,
    same_category: Annotated[bool, typer.Option(help="Compare only listings of the same top-level category")] = False,
    threshold: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Match probability (default: the "
                                                                           "matcher's, chosen on val)")] = None,
    check_images: Annotated[bool, typer.Option(help="Decode every photo while validating")] = True,
    cache: Annotated[Path | None, typer.Option(help="Tower-feature cache (default: the shared one; WORKDIR/cache/features "
                                                    "reuses what `shopclip build` computed)")] = None,
) -> None:
    """Group listings of the same product (photo + text similarity), and list borderline pairs to review.

    Each listing is compared with its nearest neighbours and with every listing that has a
    byte-identical photo; matched pairs are joined into groups (connected components).

    Example: shopclip dedupe ../shared/data/products/catalog.jsonl --heads work/heads --out groups.jsonl
    """
    from shopclip.catalog import CatalogReadError
    from shopclip.heads.bundle import HeadsMismatchError
    from shopclip.understand.dedupe import DedupeOptions, dedupe_catalog, review_path_for

    try:
        result = dedupe_catalog(catalog, out, heads, model=model, on_validated=_validated,
                                options=DedupeOptions(knn=knn, same_category=same_category, threshold=threshold,
                                                      check_images=check_images, cache_dir=cache))
    except CatalogReadError as e:
        raise _fail(f"cannot read {catalog}: {e}") from None
    except (FileNotFoundError, HeadsMismatchError, ValueError) as e:
        raise _fail(f"error: {e}") from None
    typer.echo(result.summary(out, review_path_for(out)))
    if result.rejected_rows:
        raise typer.Exit(1)


__all__ = ["dedupe_command", "heads_app", "heads_train_command", "tag_command"]
