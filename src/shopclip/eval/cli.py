"""`shopclip eval`: a typer-compatible command; the lead registers it in shopclip/cli.py with
``app.command("eval")(eval_command)``."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a machine shared with other jobs,
# spinning threads made image encoding ~4x slower here. Only effective before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402
from typing import Annotated

import typer  # noqa: E402


def eval_command(
    model: Annotated[str, typer.Argument(help="Model: `default`, a registered name, a model or run folder, a hub spec")],
    catalog: Annotated[Path, typer.Argument(help="Catalog file (.jsonl, .csv, .parquet)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (report.json, report.md, PNG plots)")],
    baseline: Annotated[list[str] | None, typer.Option(
        "--baseline", "-b",
        help="Extra baseline (model name or path); repeatable. Added to text-tower, image-tower and untrained")] = None,
    default_baselines: Annotated[bool, typer.Option(
        help="Also run the text-tower, image-tower and untrained dual-encoder baselines")] = True,
    split: Annotated[str, typer.Option(help="Split to evaluate on")] = "test",
    cache: Annotated[Path | None, typer.Option(
        help="Embedding cache folder (default: OUT/cache); share one between reports to reuse embeddings")] = None,
    pairs: Annotated[Path | None, typer.Option(
        help="Co-view/co-purchase pairs (JSONL/CSV with a/b id columns, optional weight) for recommendation")] = None,
    adult_label: Annotated[str, typer.Option(help="Binary label for adult-product recognition: the catalog's `labels.<name>` column")] = "adult",
    probe_train_max: Annotated[int, typer.Option(help="Train products the linear probes are fitted on (at most)")] = 2000,
    eval_max: Annotated[int | None, typer.Option(help="Evaluate on at most N products of the split")] = None,
    synthetic_max: Annotated[int, typer.Option(help="Synthetic re-listings for matching (eval split)")] = 400,
    seed: Annotated[int, typer.Option(help="Seed for subsets, synthetic re-listings and clustering")] = 0,
    plots: Annotated[bool, typer.Option(help="Write PNG plots")] = True,
    whole_catalog: Annotated[bool, typer.Option(
        help="Also rank every catalog product for each query (train and val as distractors): the headline")] = True,
) -> None:
    """Evaluate a model on a catalog: retrieval, recommendation, the five e-CLIP tasks, baselines.

    Writes OUT/report.json (every number, config, model id, catalog hash, split), OUT/report.md
    (tables: the model against each baseline with differences) and PNG plots. Embeddings are
    cached, so a rerun or another model on the same towers costs seconds, not minutes.

    Example: shopclip eval default ../shared/data/products/catalog.jsonl --out reports/default
    """
    from shopclip.eval.embedders import DEFAULT_BASELINES
    from shopclip.eval.runner import run_eval

    baselines = [*(DEFAULT_BASELINES if default_baselines else ()), *(baseline or [])]
    report = run_eval(
        model, catalog, out, baselines=baselines, split=split, cache_dir=cache,
        pairs=str(pairs) if pairs else None, adult_label=adult_label, probe_train_max=probe_train_max,
        eval_max=eval_max, synthetic_max=synthetic_max, seed=seed, plots=plots, whole_catalog=whole_catalog,
    )
    head = report["headline"]
    shown = [k for k in ("whole_catalog/t2i/mrr", "whole_catalog/i2i_same_leaf_precision@10",
                         "retrieval/t2i/exact/recall@10", "retrieval/similar/fused/category/ndcg@10",
                         "tasks/category/leaf/probe/fused/accuracy", "tasks/matching/synthetic/fused/auroc")
             if head.get(k) is not None]
    for k in shown:
        typer.echo(f"{k:48s} {head[k]:.3f}")
    typer.echo(f"report: {out / 'report.md'} ({report['timing']['total_s']:.0f} s)")


def _main() -> None:  # `python -m shopclip.eval.cli` until the command is registered
    typer.run(eval_command)


if __name__ == "__main__":
    _main()
