"""`shopclip train` / `python -m shopclip.train`: one typer-compatible function, every option explained.

Options left unset keep the value from `--config` (a saved RUN/config.yaml) or, without
one, the TrainConfig default shown in brackets. The lead CLI registers it with
``app.command("train")(train_command)``; `python -m shopclip.train` (the torchrun
entry point) runs the same function.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from shopclip.train.config import TextConfig, TrainConfig

_D = TrainConfig()
_T = TextConfig()


def _h(text: str, default: Any) -> str:
    return f"{text} [default: {default}]"


def _list(value: str | None) -> list[str] | None:
    return None if value is None else [x.strip() for x in value.split(",") if x.strip()]


def build_config(base: TrainConfig, catalog: Path | None, out: Path | None, options: dict[str, Any],
                 text_options: dict[str, Any]) -> TrainConfig:
    """Apply the options a user actually gave (not None) over `base`."""
    d = base.to_dict()
    if catalog is not None:
        d["catalog"] = str(catalog)
    if out is not None:
        d["out"] = str(out)
    d.update({k: v for k, v in options.items() if v is not None})
    text = dict(d["text"])
    text.update({k: v for k, v in text_options.items() if v is not None})
    d["text"] = text
    cfg = TrainConfig.from_dict(d)
    if not cfg.catalog:
        raise typer.BadParameter("give a CATALOG (or a --config that names one)")
    return cfg.validate()


def train_command(
    catalog: Annotated[Path | None, typer.Argument(help="Catalog file (.jsonl, .csv, .parquet) with product images")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help=_h("Run folder: config.yaml, metrics.jsonl, "
                                                                     "checkpoints/, model/", _D.out))] = None,
    config: Annotated[Path | None, typer.Option(help="Start from this TrainConfig (YAML/JSON, e.g. an old "
                                                     "RUN/config.yaml); other options override it")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint "
                                                         "(after a crash or kill -9)")] = False,
    # model
    model: Annotated[str | None, typer.Option(help=_h("Architecture to start from (minilm-efflite0-ml, or minilm-efflite0 for the plain towers), or a model/run "
                                                      "folder to continue training", _D.model))] = None,
    head: Annotated[str | None, typer.Option(help=_h("Projection heads: linear or mlp (new models only)", _D.head))] = None,
    embed_dim: Annotated[int | None, typer.Option(help=_h("Size of the shared embedding space", _D.embed_dim))] = None,
    lock: Annotated[str | None, typer.Option(help=_h("LiT locking: both = train heads only (towers' outputs cached on "
                                                     "disk); image = image tower locked, text tower trained; text; "
                                                     "none = both towers trained", _D.lock))] = None,
    unlock_blocks: Annotated[int | None, typer.Option(help=_h("For towers that are not locked: train only their last "
                                                              "N blocks (-1 = the whole tower)", _D.unlock_blocks))] = None,
    standardize: Annotated[bool | None, typer.Option("--standardize/--no-standardize", help=_h(
        "Z-score cached tower features (folded into the saved heads)", _D.standardize))] = None,
    tower_cache: Annotated[bool | None, typer.Option("--tower-cache/--no-tower-cache", help=_h(
        "With --unlock-blocks N on the image tower: feed the unlocked top blocks cached outputs of the frozen "
        "lower blocks (partial fine-tuning on CPU, minutes an epoch)", _D.tower_cache))] = None,
    # loss
    loss: Annotated[str | None, typer.Option(help=_h("clip = symmetric InfoNCE; siglip = pairwise sigmoid", _D.loss))] = None,
    fn_mode: Annotated[str | None, typer.Option(help=_h("In-batch duplicates of a product (false negatives): mask = "
                                                        "leave them out of the loss; positive = count them as extra "
                                                        "positives; none = treat as negatives", _D.fn_mode))] = None,
    fn_signals: Annotated[str | None, typer.Option(help=_h("What makes two products duplicates, comma-separated: "
                                                           "group, image (identical bytes), phash (near-identical "
                                                           "photo), title (normalised-identical)",
                                                           ",".join(_D.fn_signals)))] = None,
    label_smoothing: Annotated[float | None, typer.Option(help=_h("InfoNCE label smoothing", _D.label_smoothing))] = None,
    hard_beta: Annotated[float | None, typer.Option(help=_h("Hard-negative weighting of InfoNCE: negatives weighted "
                                                            "by exp(beta·cosine), 0 = plain InfoNCE", _D.hard_beta))] = None,
    i2i_weight: Annotated[float | None, typer.Option(help=_h("Weight of the image-image term (two views of each "
                                                             "photo; 0 = off)", _D.i2i_weight))] = None,
    i2i_positives: Annotated[str | None, typer.Option(help=_h("Image-image positives: view (the photo's other view) "
                                                              "or leaf (also same-leaf products)", _D.i2i_positives))] = None,
    i2i_temperature: Annotated[float | None, typer.Option(help=_h("Temperature of the image-image term",
                                                                  _D.i2i_temperature))] = None,
    sim_dim: Annotated[int | None, typer.Option(help=_h("Dims of the image embedding kept for similar items, trained by "
                                                        "the image-image term alone (search uses the rest; needs "
                                                        "--i2i-weight > 0)", _D.sim_dim))] = None,
    sim_weight: Annotated[float | None, typer.Option(help=_h("Share of that subspace in image-image scores",
                                                             _D.sim_weight))] = None,
    init_temperature: Annotated[float | None, typer.Option(help=_h("Initial softmax temperature (learned, clamped "
                                                                   "≥ 0.01)", _D.init_temperature))] = None,
    # optimisation
    epochs: Annotated[int | None, typer.Option(help=_h("Passes over the training split", _D.epochs))] = None,
    batch_size: Annotated[int | None, typer.Option(help=_h("Pairs per step across all processes (the negatives "
                                                           "each pair sees)", _D.batch_size))] = None,
    batch_sampler: Annotated[str | None, typer.Option(help=_h("random, or leaf: batches of same-leaf-category runs "
                                                              "(the real confusers as negatives)", _D.batch_sampler))] = None,
    leaf_chunk: Annotated[int | None, typer.Option(help=_h("Leaf sampler: products of one leaf that enter a batch "
                                                           "together", _D.leaf_chunk))] = None,
    batch_schedule: Annotated[str | None, typer.Option(help="Grow the batch during training: EPOCH:BATCH,… e.g. "
                                                            "0:256,10:1024 [default: fixed --batch-size]")] = None,
    lr: Annotated[float | None, typer.Option(help=_h("Peak learning rate of heads and temperature", _D.lr))] = None,
    tower_lr: Annotated[float | None, typer.Option(help=_h("Peak learning rate of unlocked tower weights",
                                                           _D.tower_lr))] = None,
    weight_decay: Annotated[float | None, typer.Option(help=_h("AdamW weight decay (never on biases, norms, "
                                                               "temperature)", _D.weight_decay))] = None,
    warmup_steps: Annotated[int | None, typer.Option(help=_h("Linear LR warmup steps, then cosine decay",
                                                             _D.warmup_steps))] = None,
    min_lr_ratio: Annotated[float | None, typer.Option(help=_h("Final LR as a fraction of the peak",
                                                               _D.min_lr_ratio))] = None,
    grad_clip: Annotated[float | None, typer.Option(help=_h("Clip the global gradient norm (0 = off)", _D.grad_clip))] = None,
    grad_cache_chunk: Annotated[int | None, typer.Option(help=_h("GradCache: pairs per chunk, so big batches fit in "
                                                                 "memory (0 = off)", _D.grad_cache_chunk))] = None,
    precision: Annotated[str | None, typer.Option(help=_h("auto (bf16 autocast on bf16 GPUs, and on bf16 CPUs "
                                                          "when a tower trains; else fp32), fp32, bf16, fp16", _D.precision))] = None,
    # augmentation
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", help=_h(
        "Product-photo augmentations (crop keeping ≥ 70 % of the area, flips except for products with printed "
        "text, mild light/contrast; never hue)", _D.augment))] = None,
    image_views: Annotated[int | None, typer.Option(help=_h("Augmented views cached per training image when the "
                                                            "image tower is locked (each costs one pass over the "
                                                            "photos the first time)", _D.image_views))] = None,
    clean_view_p: Annotated[float | None, typer.Option(help=_h("Probability that a pair uses the un-augmented photo",
                                                               _D.clean_view_p))] = None,
    # text
    text_fields: Annotated[str | None, typer.Option(help=_h("Fields of the product text, in order: title, category, "
                                                            "attributes, description", ",".join(_T.fields)))] = None,
    text_variants: Annotated[str | None, typer.Option(help=_h("Shorter texts sampled in training so query-like text "
                                                              "aligns too: field lists separated by ';'",
                                                              ";".join(",".join(v) for v in _T.variants)))] = None,
    text_full_p: Annotated[float | None, typer.Option(help=_h("Probability of the full text in a training pair",
                                                              _T.full_p))] = None,
    category_levels: Annotated[int | None, typer.Option(help=_h("Keep the last N category levels (0 = whole path)",
                                                                _T.category_levels))] = None,
    attribute_exclude: Annotated[str | None, typer.Option(help="Attributes to leave out of the text, comma-separated "
                                                               "[default: none]")] = None,
    description_chars: Annotated[int | None, typer.Option(help=_h("Cut descriptions to N characters (0 = keep all; "
                                                                  "the tokenizer truncates anyway)",
                                                                  _T.description_chars))] = None,
    # data / validation
    train_split: Annotated[str | None, typer.Option(help=_h("Split trained on (the catalog's `split`, else a "
                                                            "group-aware hash split); several joined by '+', e.g. "
                                                            "train+val for the final fit once everything was chosen "
                                                            "on val (with --val-split '')", _D.train_split))] = None,
    val_split: Annotated[str | None, typer.Option(help=_h("Split for per-epoch recall@1/5/10 ('' = none)",
                                                          _D.val_split))] = None,
    val_max: Annotated[int | None, typer.Option(help=_h("Validate on at most N products (0 = all)", _D.val_max))] = None,
    val_every: Annotated[int | None, typer.Option(help=_h("Validate every N epochs (0 = only at the end)",
                                                          _D.val_every))] = None,
    # runtime
    seed: Annotated[int | None, typer.Option(help=_h("Seed of data order, augmentations and init", _D.seed))] = None,
    device: Annotated[str | None, typer.Option(help=_h("auto, cpu or cuda", _D.device))] = None,
    parallel: Annotated[str | None, typer.Option(help=_h("Several processes: ddp = every rank holds all trained "
                                                         "weights; fsdp = sharded over ranks (FSDP2); auto = fsdp "
                                                         "when the replicated weights+grads+AdamW state passes "
                                                         "4 GiB", _D.parallel))] = None,
    num_workers: Annotated[int | None, typer.Option(help=_h("Threads decoding photos", _D.num_workers))] = None,
    feature_batch_size: Annotated[int | None, typer.Option(help=_h("Images per tower forward while caching features "
                                                                   "(small is faster on CPU)",
                                                                   _D.feature_batch_size))] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache folder [default: $SHOPCLIP_CACHE_DIR/features "
                                                        "or ~/.cache/shopclip/features]")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help=_h("Checkpoint every N steps (and at the end)",
                                                                 _D.checkpoint_every))] = None,
    log_every: Annotated[int | None, typer.Option(help=_h("Write a metrics.jsonl row every N steps", _D.log_every))] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help=_h("Progress bars",
                                                                                     _D.progress))] = None,
    register: Annotated[list[str] | None, typer.Option(help="MODULE:FUNCTION to call before building the model, "
                                                            "e.g. to register your own towers (repeatable)")] = None,
) -> None:
    """Align the image and text towers on a catalog (contrastive, e-CLIP/LiT style); the model goes to OUT/model.

    The default trains projection heads only, on tower features cached on disk, so it
    takes minutes on a laptop CPU; `--lock none` also fine-tunes the towers. Several
    processes: `torchrun --nproc_per_node=2 -m shopclip.train CATALOG --out runs/x`.

    Example: shopclip train ../shared/data/products/catalog.jsonl --out runs/demo
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for spec in register or []:
        mod, _, fn = spec.partition(":")
        getattr(importlib.import_module(mod), fn or "register")()
    base = TrainConfig.load(config) if config else TrainConfig()
    options = dict(
        resume=resume or None, model=model, head=head, embed_dim=embed_dim, lock=lock, unlock_blocks=unlock_blocks,
        standardize=standardize, tower_cache=tower_cache, loss=loss, fn_mode=fn_mode, fn_signals=_list(fn_signals),
        hard_beta=hard_beta, i2i_weight=i2i_weight, i2i_positives=i2i_positives, i2i_temperature=i2i_temperature,
        sim_dim=sim_dim, sim_weight=sim_weight,
        batch_sampler=batch_sampler, leaf_chunk=leaf_chunk,
        label_smoothing=label_smoothing, init_temperature=init_temperature, epochs=epochs, batch_size=batch_size,
        batch_schedule=batch_schedule, lr=lr, tower_lr=tower_lr, weight_decay=weight_decay,
        warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio, grad_clip=grad_clip,
        grad_cache_chunk=grad_cache_chunk, precision=precision, augment=augment, image_views=image_views,
        clean_view_p=clean_view_p, train_split=train_split, val_split=val_split, val_max=val_max,
        val_every=val_every, seed=seed, device=device, parallel=parallel, num_workers=num_workers,
        feature_batch_size=feature_batch_size, cache_dir=str(cache_dir) if cache_dir else None,
        checkpoint_every=checkpoint_every, log_every=log_every, progress=progress,
    )
    text_options = dict(
        fields=_list(text_fields),
        variants=None if text_variants is None else [_list(v) for v in text_variants.split(";") if v.strip()],
        full_p=text_full_p, category_levels=category_levels, attribute_exclude=_list(attribute_exclude),
        description_chars=description_chars,
    )
    try:
        cfg = build_config(base, catalog, out, options, text_options)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    from shopclip.train.trainer import train

    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        val = result.val
        tail = (f"; val text→image R@10 {val['t2i_r10']:.3f}, image→text R@10 {val['i2t_r10']:.3f}"
                if val else "")
        typer.echo(f"trained {result.steps} steps in {result.seconds:.0f} s → {result.model_dir}{tail}")


def main(argv: list[str] | None = None) -> None:
    """`python -m shopclip.train …` (what torchrun launches)."""
    app = typer.Typer(add_completion=False, rich_markup_mode="markdown")
    app.command()(train_command)
    app(args=argv, prog_name="python -m shopclip.train")
