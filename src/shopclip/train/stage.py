"""The optional ``train`` build stage: heads-only contrastive training inside a work folder.

Runs when ``BuildOptions.extra["train"]`` is set (``shopclip build --train``). The run
goes to ``<workdir>/train/``; later stages (embed, index) then use the trained model.
It trains on what the embed stage will embed: grounded crops and enriched text when the
``ground`` / ``enrich`` stages ran before it (VL-CLIP's recipe).
Locked-tower features are cached on disk, so a re-run with a changed catalog
computes features only for new products.
"""

from __future__ import annotations

from shopclip.core.hashing import json_sha1
from shopclip.core.stages import Stage

STAGE = "train"


def _enabled(ctx) -> bool:
    return bool(ctx.options.extra.get("train"))


def _config(ctx):
    from shopclip.train.config import TrainConfig

    extra = ctx.options.extra
    return TrainConfig(
        catalog=str(ctx.workdir.catalog), out=str(ctx.workdir.stage_dir(STAGE)),
        epochs=int(extra.get("train_epochs", TrainConfig.epochs)), image_views=int(extra.get("train_image_views", 0)),
        progress=ctx.options.progress, cache_dir=str(ctx.workdir.root / "cache" / "features"),
    )


def _fingerprint(ctx) -> str:
    from dataclasses import asdict

    cfg = asdict(_config(ctx))
    cfg.pop("progress")
    return json_sha1([ctx.upstream(STAGE), cfg, ctx.texts, {k: str(v) for k, v in ctx.images.items()}])


def _training_catalog(ctx):
    """The catalog as the embed stage will see it: grounded crops and enriched text swapped in."""
    from dataclasses import replace

    catalog = ctx.catalog()
    if not ctx.texts and not ctx.images:
        return catalog
    products = []
    for p in catalog:
        image = str(ctx.images[p.id]) if p.id in ctx.images else p.image  # absolute paths stay absolute
        extra = {**p.extra, "full_text": ctx.texts[p.id]} if p.id in ctx.texts else p.extra
        products.append(replace(p, image=image, extra=extra))
    return type(catalog)(products, root=catalog.root, source=catalog.source)


def _restore(ctx) -> None:
    ctx.model_ref = str(ctx.workdir.stage_dir(STAGE))


def _run(ctx) -> str:
    import shutil

    from shopclip.train.trainer import train

    # Inputs changed (that is why the stage runs): an old run there is stale, not resumable.
    shutil.rmtree(ctx.workdir.stage_dir(STAGE), ignore_errors=True)
    result = train(_config(ctx), catalog=_training_catalog(ctx))
    _restore(ctx)
    ctx._model = None
    val = result.val
    tail = f"; val text→image R@10 {val['t2i_r10']:.3f}, image→text R@10 {val['i2t_r10']:.3f}" if val else ""
    return f"trained {result.steps} steps in {result.seconds:.0f} s → {result.model_dir}{tail}"


def train_stage() -> Stage:
    """The ``train`` stage; ``shopclip.pipeline.build`` places it before ``embed``."""
    return Stage(STAGE, _fingerprint, _run, outputs=lambda ctx: [ctx.workdir.stage_dir(STAGE) / "model"],
                 enabled=_enabled, restore=_restore)
