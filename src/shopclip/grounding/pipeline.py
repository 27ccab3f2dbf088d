"""The optional `ground` build stage: crop every product to its box before the embed stage reads it.

Enabled per build through ``BuildOptions.extra``::

    BuildOptions(extra={"ground": "combined"})          # or True for the default method
    BuildOptions(extra={"ground": "cam", "ground_prompt": "title", "ground_margin": 0.1})

The stage writes ``WORKDIR/ground/`` (boxes.jsonl, crops, contact sheet) and hands the
crops of really-localised products to the embed stage through ``ctx.images``; products
that fell back to the full image keep their photo. Its fingerprint covers the
validated catalog, the method and its options, so changing any of them re-grounds
(and, through the image overrides, re-embeds only the products whose crop changed).
"""

from __future__ import annotations

from typing import Any

from shopclip.core.hashing import json_sha1
from shopclip.core.stages import Stage

STAGE = "ground"


def _options(ctx: Any) -> dict[str, Any]:
    from shopclip.grounding.runner import DEFAULT_METHOD, GROUNDING_VERSION

    extra = ctx.options.extra
    method = extra.get("ground")
    if method is True:
        method = DEFAULT_METHOD
    return {"method": method, "prompt": extra.get("ground_prompt", "type"),
            "margin": float(extra.get("ground_margin", 0.05)), "min_score": extra.get("ground_min_score"),
            "sheet": int(extra.get("ground_sheet", 48)), "v": GROUNDING_VERSION}


def _enabled(ctx: Any) -> bool:
    return bool(ctx.options.extra.get("ground"))


def _fingerprint(ctx: Any) -> str:
    return json_sha1([ctx.upstream(STAGE), _options(ctx)])


def _restore(ctx: Any) -> None:
    from shopclip.grounding.runner import crop_overrides

    folder = ctx.workdir.stage_dir(STAGE)
    if (folder / "boxes.jsonl").exists():
        ctx.images.update(crop_overrides(folder))


def _run(ctx: Any) -> str:
    from shopclip.grounding.runner import ground_catalog

    o = _options(ctx)
    res = ground_catalog(ctx.catalog(), ctx.workdir.stage_dir(STAGE), method=o["method"], prompt=o["prompt"],
                         margin=o["margin"], min_score=o["min_score"], sheet=o["sheet"],
                         progress=ctx.options.progress)
    _restore(ctx)
    return res.summary()


def ground_stage() -> Stage:
    """The `ground` stage; `shopclip.pipeline.build` places it before `embed`. It runs only when extra["ground"] is set."""
    return Stage(STAGE, _fingerprint, _run, outputs=lambda ctx: [ctx.workdir.stage_dir(STAGE) / "boxes.jsonl"],
                 enabled=_enabled, restore=_restore)
