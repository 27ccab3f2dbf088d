"""The optional ``train`` build stage: heads-only contrastive training inside a work folder.

Runs when ``BuildOptions.extra["train"]`` is set (``shopclip build --train``). The run
goes to ``<workdir>/train/``; later stages (embed, index) then use the trained model.
Locked-tower features are cached on disk, so a re-run with a changed catalog
computes features only for new products.
"""

from __future__ import annotations

from shopclip.core.hashing import json_sha1

STAGE = "train"


def _enabled(ctx) -> bool:
    return bool(ctx.options.extra.get("train"))


def _config(ctx):
    from shopclip.train.config import TrainConfig

    extra = ctx.options.extra
    return TrainConfig(
        catalog=str(ctx.workdir.catalog), out=str(ctx.workdir.stage_dir(STAGE)),
        epochs=int(extra.get("train_epochs", 10)), image_views=int(extra.get("train_image_views", 0)),
        progress=ctx.options.progress, cache_dir=str(ctx.workdir.root / "cache" / "features"),
    )


def _fingerprint(ctx) -> str:
    from dataclasses import asdict

    cfg = asdict(_config(ctx))
    cfg.pop("progress")
    return json_sha1([ctx.upstream(STAGE), cfg])


def _restore(ctx) -> None:
    ctx.model_ref = str(ctx.workdir.stage_dir(STAGE))


def _run(ctx) -> str:
    from shopclip.train.trainer import train

    result = train(_config(ctx), catalog=ctx.catalog())
    _restore(ctx)
    ctx._model = None
    val = result.val
    tail = f"; val text→image R@10 {val['t2i_r10']:.3f}, image→text R@10 {val['i2t_r10']:.3f}" if val else ""
    return f"trained {result.steps} steps in {result.seconds:.0f} s → {result.model_dir}{tail}"


def register_train_stage(before: str = "embed") -> None:
    from shopclip.pipeline.build import Stage, register_stage

    register_stage(Stage(STAGE, _fingerprint, _run, outputs=lambda ctx: [ctx.workdir.stage_dir(STAGE) / "model"],
                         enabled=_enabled, restore=_restore), before=before)
