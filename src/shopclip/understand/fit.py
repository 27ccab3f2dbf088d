"""`shopclip heads train`: fit every task head of a model on a labelled catalog.

Heads are fitted on the ``train`` split, calibrated (temperature / Platt / isotonic) and
given their thresholds on ``val``, and scored once on ``test``; all three sets of numbers
go into ``heads.json``. The matcher's positives are synthetic re-listings of real
products (``shopclip.eval.synthetic``, the evaluation suite's own) plus the catalog's
real ``group``s; its negatives are the pairs dedupe would actually compare: each
listing's nearest neighbours that are another product.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shopclip.catalog import Catalog, ensure_splits
from shopclip.heads.attributes import AttributeHead, select_attributes
from shopclip.heads.binary import BinaryHead, ZeroShotBinary, binary_label_names, parse_binary
from shopclip.heads.blocking import knn_pairs, same_hash_pairs
from shopclip.heads.bundle import TaskHeads
from shopclip.heads.category import CategoryHead
from shopclip.heads.features import ListingEncoder
from shopclip.heads.matching import PAIR_FEATURES, PairMatcher, default_features, pair_features
from shopclip.heads.neighbours import Neighbours
from shopclip.understand.data import Listings, encode_products, encode_relistings, labelled_pairs

log = logging.getLogger(__name__)
C_GRID = (0.01, 0.1, 1.0)


@dataclass
class HeadsConfig:
    """Every knob of a fit; stored in heads.json."""

    C: float | None = None  # None: chosen on val among C_GRID by the category head's leaf accuracy
    min_count: int = 5  # a class needs this many training products
    min_attribute_products: int = 100
    min_share: float = 0.2  # an attribute applies to categories where this share of products carry it
    target_accuracy: float = 0.9  # abstain thresholds: the answered part is right this often on val
    precision_target: float = 0.9  # binary decisions: precision on val
    zero_shot_label: str = "adult"  # the prompt-based fallback when no product carries this label
    # Synthetic re-listings (matcher positives) of about one product in five: how rare duplicates
    # are where the matcher learns decides how much "best candidate by far" counts (see heads.matching).
    relist_train: int = 1500
    relist_val: int = 160
    knn: int = 10  # candidate pairs: each listing's nearest neighbours (dedupe's blocking)
    review_precision: float = 0.5  # review file: pairs down to where val precision is still this
    neighbours: bool = True
    view: str = "fused"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.C is not None and self.C <= 0:
            raise ValueError(f"C must be positive, got {self.C}")
        for name in ("target_accuracy", "precision_target", "min_share", "review_precision"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")


def model_info(model: Any, ref: str) -> dict[str, Any]:
    from shopclip.models.features import model_fingerprint

    return {"ref": ref, "name": model.name, "fingerprint": model_fingerprint(model), "embed_dim": model.embed_dim}


def train_heads(catalog_path: str | Path, out: str | Path, *, model: str = "default",
                config: HeadsConfig | None = None, cache_dir: str | Path | None = None,
                progress: bool = True) -> TaskHeads:
    """Fit, calibrate, score and save the heads; returns them (metrics in ``.metrics``)."""
    from shopclip.models import load_model

    cfg = config or HeadsConfig()
    t0 = time.perf_counter()
    catalog = ensure_splits(Catalog.load(catalog_path))
    m = load_model(model)
    encoder = ListingEncoder(m, cache_dir=cache_dir)
    split = {s: [p for p in catalog if p.split == s] for s in ("train", "val", "test")}
    if not split["train"]:
        raise ValueError(f"{catalog_path} has no `train` products to fit heads on")
    data = {s: encode_products(ps, catalog, encoder, progress=progress) for s, ps in split.items() if ps}
    timing = {"encode_s": time.perf_counter() - t0}
    tr, va, te = data["train"], data.get("val"), data.get("test")
    v = cfg.view
    heads = TaskHeads(model=model_info(m, model), view=v, config=asdict(cfg))

    t = time.perf_counter()
    C, c_choice = _choose_C(cfg, tr, va, v)
    heads.config["C_chosen"] = C
    heads.metrics["C_choice"] = c_choice
    heads.category = CategoryHead.fit(tr.views[v], tr.categories, _x(va, v), _y(va, "categories"), C=C,
                                      min_count=cfg.min_count, target_accuracy=cfg.target_accuracy)
    timing["category_s"] = time.perf_counter() - t

    t = time.perf_counter()
    train_attrs = [r["attributes"] for r in tr.records]
    targets, heads.skipped["attributes"] = select_attributes(train_attrs, min_count=cfg.min_count,
                                                             min_products=cfg.min_attribute_products)
    for name, values in targets.items():
        h = AttributeHead.fit(name, tr.views[v], train_attrs, tr.categories, _x(va, v),
                              [r["attributes"] for r in va.records] if va else None, values=values, C=C,
                              min_count=cfg.min_count, min_share=cfg.min_share, target_accuracy=cfg.target_accuracy)
        if h is not None:
            heads.attributes[name] = h
    timing["attributes_s"] = time.perf_counter() - t

    t = time.perf_counter()
    for name in binary_label_names([r["labels"] for r in tr.records]):
        b = BinaryHead.fit(name, tr.views[v], _labels(tr, name), _x(va, v), _labels(va, name) if va else None,
                           C=C, precision_target=cfg.precision_target)
        if b is not None:
            heads.binary[name] = b
    if cfg.zero_shot_label and cfg.zero_shot_label not in heads.binary:
        heads.zero_shot[cfg.zero_shot_label] = ZeroShotBinary.from_model(cfg.zero_shot_label, m)
        heads.skipped["binary"] = {cfg.zero_shot_label: f"no train product carries labels.{cfg.zero_shot_label} "
                                   "with both values: the zero-shot score is used, uncalibrated"}
    timing["binary_s"] = time.perf_counter() - t

    t = time.perf_counter()
    features = default_features()
    pairs = {s: matcher_pairs(catalog, data[s], encoder, n, cfg, cache_dir, features)
             for s, n in (("train", cfg.relist_train), ("val", cfg.relist_val), ("test", cfg.relist_val)) if s in data}
    fit_x, fit_p, fit_y = pairs["train"]
    cal_x, cal_p, cal_y = pairs.get("val", pairs["train"])
    heads.matcher = PairMatcher.fit(fit_x, fit_p, fit_y, cal_x, cal_p, cal_y, features=features,
                                    review_precision=cfg.review_precision)
    if "val" not in pairs:
        heads.matcher.metrics["calibration"] = "on the train pairs: the catalog has no `val` split"
    timing["matcher_s"] = time.perf_counter() - t

    if cfg.neighbours:
        heads.neighbours = Neighbours.build(tr.ids, tr.views["image"], tr.views["text"], tr.records)
    heads.metrics["validation"] = _scores(heads, va) if va else {}
    heads.metrics["test"] = _scores(heads, te, pairs.get("test")) if te else {}
    heads.metrics["data"] = {s: len(d) for s, d in data.items()} | {"rejected_rows": len(catalog.errors),
                                                                   "catalog": str(catalog_path)}
    timing["total_s"] = time.perf_counter() - t0
    heads.metrics["timing"] = timing
    heads.save(out)
    return heads


def matcher_pairs(catalog: Catalog, items: Listings, encoder: ListingEncoder, n_relist: int, cfg: HeadsConfig,
                  cache_dir: str | Path | None, features: tuple[str, ...] = PAIR_FEATURES,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair features, the candidate pairs themselves and their labels, the way dedupe meets
    them: products plus synthetic re-listings of up to ``n_relist`` of them, each compared
    with its ``knn`` nearest neighbours and with every listing sharing its photo file."""
    from shopclip.eval.data import group_aware_sample
    from shopclip.eval.synthetic import make_relistings
    from shopclip.models.features import default_cache_dir

    products = [catalog[i] for i in items.ids]
    chosen = group_aware_sample(products, n_relist, cfg.seed + 1)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir().parent
    rel = make_relistings(chosen, catalog.image_path, root / "synthetic" / f"seed-{cfg.seed}", cfg.seed)
    both = Listings.concat([items, encode_relistings(rel, items, encoder)]) if rel else items
    pairs = candidate_pairs(both, cfg.knn)
    x = pair_features(both.views, both.views, pairs, features, photo=both.photo_checks())
    return x, pairs, labelled_pairs(both, pairs)


def candidate_pairs(items: Listings, knn: int) -> np.ndarray:
    """Dedupe's blocking: nearest neighbours in the fused view plus identical photo files."""
    both = np.concatenate([knn_pairs(items.views["fused"], knn), same_hash_pairs(items.hashes)])
    return np.unique(both, axis=0) if len(both) else both


def _scores(heads: TaskHeads, data: Listings, pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
            ) -> dict[str, Any]:
    x = data.views[heads.view]
    out: dict[str, Any] = {"n": len(data)}
    if heads.category is not None:
        out["category"] = heads.category.score(x, data.categories)
    out["attributes"] = {name: h.score(x, [r["attributes"] for r in data.records]) for name, h in heads.attributes.items()}
    out["binary"] = {name: b.score(x, _labels(data, name)) for name, b in heads.binary.items()}
    if pairs is not None and heads.matcher is not None:
        px, pp, py = pairs
        p = heads.matcher.score_graph(px, pp)
        pred = p >= heads.matcher.threshold
        tp = int((pred & (py > 0)).sum())
        out["matcher_pairs"] = {"n_pairs": int(len(py)), "positives": int(py.sum()), "threshold": heads.matcher.threshold,
                                "precision": tp / max(int(pred.sum()), 1), "recall": tp / max(int(py.sum()), 1)}
    return out


def _choose_C(cfg: HeadsConfig, tr: Listings, va: Listings | None, v: str) -> tuple[float, dict[str, Any]]:
    if cfg.C is not None:
        return cfg.C, {"rule": "fixed by the caller"}
    if va is None:
        return 0.1, {"rule": "no val split: 0.1"}
    acc = {}
    for c in C_GRID:
        head = CategoryHead.fit(tr.views[v], tr.categories, C=c, min_count=cfg.min_count)
        acc[c] = head.score(va.views[v], va.categories)["leaf_accuracy"] if head is not None else 0.0
    best = max(acc, key=lambda c: (acc[c], -c))
    return best, {"rule": f"C in {list(C_GRID)} maximising the category head's leaf accuracy on val",
                  "val_leaf_accuracy": {str(c): a for c, a in acc.items()}}


def _x(data: Listings | None, view: str) -> np.ndarray | None:
    return data.views[view] if data is not None else None


def _y(data: Listings | None, field: str) -> list[Any] | None:
    return getattr(data, field) if data is not None else None


def _labels(data: Listings | None, name: str) -> list[int | None]:
    return [parse_binary((r.get("labels") or {}).get(name)) for r in data.records] if data is not None else []


def config_from(**overrides: Any) -> HeadsConfig:
    """A config with ``overrides`` applied (unknown names are a TypeError naming them)."""
    return dataclasses.replace(HeadsConfig(), **overrides)


__all__ = ["C_GRID", "HeadsConfig", "candidate_pairs", "config_from", "matcher_pairs", "model_info",
           "train_heads"]
