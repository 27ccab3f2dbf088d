"""Helpers for tests and benchmarks of the understanding jobs: a small labelled catalog of
real products, and heads fitted on it once (cached by catalog content and model)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shopclip.core.hashing import json_sha1

# Leaves with plenty of real products and clearly different photos.
LEAVES = ("Apparel > Topwear > Tshirts", "Apparel > Topwear > Shirts", "Footwear > Shoes > Casual Shoes",
          "Footwear > Shoes > Sports Shoes", "Accessories > Watches > Watches", "Accessories > Bags > Handbags",
          "Footwear > Flip Flops > Flip Flops", "Apparel > Bottomwear > Jeans")


def labelled_rows(rows: Sequence[dict[str, Any]], per_leaf: int = 24, leaves: Sequence[str] = LEAVES,
                  adult_leaf: str | None = "Footwear > Flip Flops > Flip Flops") -> list[dict[str, Any]]:
    """``per_leaf`` real ungrouped products of each leaf (2/3 train, 1/6 val, 1/6 test, by id order).

    ``labels.adult`` is a MADE-UP test label (1 for ``adult_leaf``, 0 elsewhere): the sample
    has no adult labels, and the fixture only exercises the calibrated head's mechanics.
    """
    ordered = sorted(rows, key=lambda r: r["id"])
    out = []
    for leaf in leaves:
        match = [dict(r) for r in ordered if " > ".join(r["category"]) == leaf and not r.get("group")][:per_leaf]
        for i, r in enumerate(match):
            r["split"] = "train" if i < per_leaf * 2 // 3 else "val" if i < per_leaf * 5 // 6 else "test"
            if adult_leaf is not None:
                r["labels"] = {"adult": int(leaf == adult_leaf)}
            out.append(r)
    return out


def cached_heads(cache_root: Path, rows: Sequence[dict[str, Any]], write_catalog: Callable[..., Path], *,
                 model: str = "default", **config: Any) -> Path:
    """Heads fitted on ``rows`` with ``model`` under ``cache_root``, reused while rows, model and config match."""
    from shopclip.heads.bundle import FORMAT, HEADS_FILE
    from shopclip.models import load_model
    from shopclip.models.features import model_fingerprint
    from shopclip.understand.fit import HeadsConfig, train_heads

    cfg = HeadsConfig(min_attribute_products=20, relist_train=80, relist_val=24, **config)
    key = json_sha1({"rows": list(rows), "model": model_fingerprint(load_model(model)), "config": cfg.__dict__,
                     "format": FORMAT})[:16]
    folder = Path(cache_root) / f"heads-{key}"
    if not (folder / HEADS_FILE).exists():
        catalog = write_catalog(Path(cache_root) / "catalog", list(rows))
        train_heads(catalog, folder, model=model, config=cfg, cache_dir=Path(cache_root) / "features", progress=False)
    return folder


__all__ = ["LEAVES", "cached_heads", "labelled_rows"]
