"""`run_eval`: every task, for the model and each baseline, into one report folder.

The run is shaped by what costs time on a CPU: encoding images. Each image is encoded
once per tower and cached (see :mod:`shopclip.eval.embedders`); the probe training set is
a bounded, group-aware subset of ``train``; everything else (heads, probes, clustering,
metrics) is seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shopclip.catalog import Catalog, ensure_splits, group_key
from shopclip.catalog.photos import merge_identical_photos
from shopclip.core.hashing import file_sha1, json_sha1
from shopclip.core.io import atomic_write_json, atomic_write_jsonl
from shopclip.eval import retrieval as R
from shopclip.eval import tasks as T
from shopclip.eval.data import ProductSet, binary_labels, group_aware_sample
from shopclip.eval.embedders import DEFAULT_BASELINES, Embedder, build_embedders
from shopclip.eval.synthetic import make_relistings
from shopclip.eval.whole_catalog import WHOLE_CATALOG_DOC, evaluate_whole_catalog

log = logging.getLogger(__name__)
REPORT_FORMAT = "shopclip.eval/1"


@dataclass
class EvalConfig:
    """Every knob of a run; stored in report.json so a number can be traced to its settings."""

    split: str = "test"
    tune_split: str = "val"
    eval_max: int | None = None  # None: the whole split
    probe_train_max: int = 2000
    tune_max: int = 400
    synthetic_max: int = 400
    synthetic_tune_max: int = 200
    hard_negatives: int = 3
    ks: tuple[int, ...] = (1, 5, 10)
    curve_max_k: int = 50
    min_class_count: int = 5
    min_attribute_products: int = 100
    max_attributes: int | None = None  # None: every attribute with enough labelled values
    probe_C: float | None = None  # None: chosen per view on the tune set (tasks.choose_probe_C)
    text_fields: tuple[str, ...] = ("title", "description")
    adult_label: str = "adult"
    pairs: str | None = None
    clustering: tuple[str, ...] = ("kmeans", "agglomerative")
    seed: int = 0
    plots: bool = True
    examples: int = 4
    image_batch_size: int = 16
    num_workers: int = 2
    whole_catalog: bool = True  # also rank every catalog product (eval/whole_catalog.py): the headline protocol

    def __post_init__(self) -> None:
        self.ks = tuple(int(k) for k in self.ks)
        self.text_fields = tuple(self.text_fields)
        self.clustering = tuple(self.clustering)

    @property
    def k(self) -> int:
        """The cut-off headline metrics use: 10 when asked for, else the largest k."""
        return 10 if 10 in self.ks else max(self.ks)


@dataclass
class EvalSets:
    """The product sets of one run (see :mod:`shopclip.eval.data`)."""

    eval: ProductSet
    train: ProductSet
    tune: ProductSet
    syn_eval: ProductSet
    syn_tune: ProductSet
    syn_eval_src: list[int] = field(default_factory=list)  # index into eval per re-listing
    syn_tune_src: list[int] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("eval", "train", "tune", "syn_eval", "syn_tune")}


# ------------------------------------------------------------------------------ data


def build_sets(catalog: Catalog, cfg: EvalConfig, cache: Path, progress: bool = False) -> EvalSets:
    """Eval split, probe-train subset, tune subset and their synthetic re-listings."""
    evals = group_aware_sample(catalog.split(cfg.split).products, cfg.eval_max, cfg.seed)
    if not evals:
        have = sorted({p.split for p in catalog if p.split})
        raise ValueError(f"split {cfg.split!r} holds no products (splits present: {', '.join(have)})")
    taken = {group_key(p) for p in evals}
    train_pool = [p for p in catalog.products if p.split == "train" and group_key(p) not in taken]
    train = group_aware_sample(train_pool, cfg.probe_train_max, cfg.seed)
    taken |= {group_key(p) for p in train}
    tune_split = cfg.tune_split if cfg.tune_split != cfg.split else "train"
    tune_pool = [p for p in catalog.products if p.split == tune_split and group_key(p) not in taken]
    tune = group_aware_sample(tune_pool, cfg.tune_max, cfg.seed)

    tf = cfg.text_fields
    sets_eval = ProductSet.from_products("eval", catalog, evals, tf)
    sets_train = ProductSet.from_products("train", catalog, train, tf)
    sets_tune = ProductSet.from_products("tune", catalog, tune, tf)
    syn_dir = cache / "synthetic" / f"seed-{cfg.seed}"
    syn_e = group_aware_sample(evals, cfg.synthetic_max, cfg.seed + 1)
    syn_t = group_aware_sample(tune, cfg.synthetic_tune_max, cfg.seed + 1)
    rel_e = make_relistings(syn_e, catalog.image_path, syn_dir, cfg.seed, progress)
    rel_t = make_relistings(syn_t, catalog.image_path, syn_dir, cfg.seed, progress)
    at_e = {pid: i for i, pid in enumerate(sets_eval.ids)}
    at_t = {pid: i for i, pid in enumerate(sets_tune.ids)}
    return EvalSets(
        eval=sets_eval, train=sets_train, tune=sets_tune,
        syn_eval=ProductSet.from_relistings("syn_eval", rel_e, sets_eval),
        syn_tune=ProductSet.from_relistings("syn_tune", rel_t, sets_tune),
        syn_eval_src=[at_e[r.source_id] for r in rel_e], syn_tune_src=[at_t[r.source_id] for r in rel_t],
    )


def class_names(paths: Sequence[str]) -> dict[str, str]:
    """Prompt name per category path: the leaf, or parent + leaf when two paths share a leaf."""
    leaves: dict[str, list[str]] = {}
    for p in paths:
        leaves.setdefault(p.rsplit(" > ", 1)[-1], []).append(p)
    out = {}
    for leaf, ps in leaves.items():
        for p in ps:
            parts = p.split(" > ")
            out[p] = leaf if len(ps) == 1 or len(parts) < 2 else f"{parts[-2]} {leaf}"
    return out


CLASS_TEMPLATES = ("a photo of {}.", "{}")


def prompt_embeddings(emb: Embedder, prompts: Sequence[Sequence[str]]) -> np.ndarray:
    """One unit vector per class: the mean of its prompt ensemble's text embeddings."""
    flat = [t for group in prompts for t in group]
    vecs = emb.texts(flat)
    out, i = [], 0
    for group in prompts:
        v = vecs[i : i + len(group)].mean(axis=0)
        out.append(v / max(float(np.linalg.norm(v)), 1e-12))
        i += len(group)
    return np.asarray(out, dtype=np.float32).reshape(len(prompts), -1)


TOP_ZERO_SHOT_DOC = (
    "hierarchical: a top-level class scores the max of the cosines of its leaves' prompts and its own prompt "
    "('a photo of {top}.'); the top-level word alone is far from product text and scored under the majority rate")


def _top_zero_shot(views: T.Views, leaf_classes: Sequence[str], leaf_emb: np.ndarray, top_classes: Sequence[str],
                   top_emb: np.ndarray, cross_modal: bool) -> dict[str, np.ndarray]:
    """Per view, (n, len(top_classes)) zero-shot scores aggregated over each top class's leaves."""
    at = {c: i for i, c in enumerate(top_classes)}
    keep = [i for i, c in enumerate(leaf_classes) if c.split(" > ", 1)[0] in at]
    parent_of = [at[leaf_classes[i].split(" > ", 1)[0]] for i in keep]
    leaf = T.zero_shot_scores(views, leaf_emb[keep], cross_modal)
    top = T.zero_shot_scores(views, top_emb, cross_modal)
    return {v: T.hierarchical_scores(leaf[v], parent_of, len(top_classes), top[v]) for v in leaf if v in top}


# ------------------------------------------------------------------------ evaluation


def _views(emb: Embedder, ps: ProductSet) -> T.Views:
    return T.make_views(emb.images(ps.images) if emb.has_image else None,
                        emb.texts(ps.texts) if emb.has_text else None)


def _na(reason: str) -> dict[str, str]:
    return {"status": "n/a", "reason": reason}


def evaluate_embedder(emb: Embedder, sets: EvalSets, cfg: EvalConfig, *,
                      pairs: list[tuple[str, str, float]] | None = None,
                      bar: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """All tasks for one embedder: ``(results for report.json, extras for plots)``."""

    def stage(name: str) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{emb.name}: {name}")

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    stage("embeddings")
    V = {name: _views(emb, getattr(sets, name)) for name in ("eval", "train", "tune", "syn_eval", "syn_tune")}
    timings["embeddings_s"] = time.perf_counter() - t0
    ev, ks = sets.eval, cfg.ks
    extras: dict[str, Any] = {"curves": {}, "views": V["eval"]}

    # ---- retrieval
    t1 = time.perf_counter()
    stage("retrieval")
    retrieval: dict[str, Any] = {}
    if emb.cross_modal:
        retrieval.update(R.cross_modal(V["eval"]["text"], V["eval"]["image"], ev, ks))
        s = V["eval"]["text"] @ V["eval"]["image"].T
        exact = R.exact_relevance(ev, ev)
        extras["curves"]["text → image (same product)"] = ("", R.recall_curve(s, exact, cfg.curve_max_k))
        extras["curves"]["image → text (same product)"] = ("", R.recall_curve(s.T, exact.T, cfg.curve_max_k))
        extras["t2i_scores"] = s
        if not emb.aligned:
            retrieval["note"] = "text and image heads are not trained together: cross-modal scores are near chance"
    else:
        retrieval["t2i"] = retrieval["i2t"] = _na(f"{emb.name} has no shared text-image space")
    retrieval["similar"] = {v: R.similar_items(x, ev, ks) for v, x in V["eval"].items()}
    main_view = "fused" if "fused" in V["eval"] else next(iter(V["eval"]))
    extras["main_view"] = main_view
    sim = V["eval"][main_view] @ V["eval"][main_view].T
    extras["similar_scores"] = sim
    extras["curves"]["similar items (same leaf category)"] = (main_view, R.recall_curve(
        sim, R.category_relevance(ev, ev) >= 2, cfg.curve_max_k, exclude_self=True))
    cq_classes = R.category_classes(ev)
    cq: dict[str, Any] = {}
    if emb.has_text and cq_classes:
        names = class_names(cq_classes)
        cls_emb = prompt_embeddings(emb, [[t.format(names[c]) for t in CLASS_TEMPLATES] for c in cq_classes])
        for v, sc in T.zero_shot_scores(V["eval"], cls_emb, emb.cross_modal).items():
            cq[v] = R.category_query(sc.T, cq_classes, ev, ks)
            if v == ("image" if emb.cross_modal else "text"):
                extras["curves"]["category name → products (same leaf)"] = (v, R.recall_curve(
                    sc.T, R.category_query_relevance(cq_classes, ev) >= 2, cfg.curve_max_k))
    retrieval["category_query"] = cq or _na(f"{emb.name} has no text encoder for category-name queries")
    recommendation = R.recommendation(V["eval"][main_view], ev, k=cfg.k, pairs=pairs, ks=ks)
    recommendation["view"] = main_view
    timings["retrieval_s"] = time.perf_counter() - t1

    # ---- probe regularisation
    t1 = time.perf_counter()
    stage("probe C")
    if cfg.probe_C is None:
        probe_c = T.choose_probe_C(V["train"], [y or None for y in sets.train.paths], V["tune"],
                                   [y or None for y in sets.tune.paths], min_count=cfg.min_class_count)
    else:
        probe_c = {"C": {v: cfg.probe_C for v in V["train"]}, "rule": "fixed by the caller"}
    C = probe_c["C"]
    timings["probe_C_s"] = time.perf_counter() - t1

    # ---- category
    t1 = time.perf_counter()
    stage("category")
    tasks: dict[str, Any] = {"category": {}, "probe_regularisation": probe_c}
    leaf_classes: list[str] = []
    leaf_emb = None
    for level, get in (("leaf", lambda ps: ps.paths), ("top", lambda ps: ps.tops)):
        tr_y = [y or None for y in get(sets.train)]
        ev_y = [y or None for y in get(ev)]
        classes = sorted({y for y in tr_y + ev_y if y})
        cls_emb, zero_shot = None, None
        if emb.has_text and classes:
            names = class_names(classes) if level == "leaf" else {c: c for c in classes}
            cls_emb = prompt_embeddings(emb, [[t.format(names[c]) for t in CLASS_TEMPLATES] for c in classes])
            if level == "leaf":
                leaf_classes, leaf_emb = classes, cls_emb
            elif leaf_emb is not None:
                zero_shot = _top_zero_shot(V["eval"], leaf_classes, leaf_emb, classes, cls_emb, emb.cross_modal)
        tasks["category"][level] = T.classification_task(
            V["train"], tr_y, V["eval"], ev_y, class_emb=cls_emb, classes=classes, cross_modal=emb.cross_modal,
            min_count=cfg.min_class_count, C=C, confusion_view=main_view,
            confusion_top=None if level == "top" else 15, zero_shot=zero_shot)
        if zero_shot is not None and "zero_shot" in tasks["category"][level]:
            tasks["category"][level]["zero_shot_method"] = TOP_ZERO_SHOT_DOC
    timings["category_s"] = time.perf_counter() - t1

    # ---- attributes
    t1 = time.perf_counter()
    stage("attributes")
    targets, skipped_attrs = T.attribute_selection(sets.train, min_count=cfg.min_class_count,
                                                   min_products=cfg.min_attribute_products,
                                                   max_attributes=cfg.max_attributes)
    attrs: dict[str, Any] = {}
    for name, values in targets.items():
        allowed = set(values)
        tr_y = [a.get(name) if a.get(name) in allowed else None for a in sets.train.attributes]
        ev_y = [a.get(name) if a.get(name) in allowed else None for a in ev.attributes]
        val_emb = prompt_embeddings(emb, T.attribute_prompts(name, values)) if emb.has_text else None
        attrs[name] = T.classification_task(
            V["train"], tr_y, V["eval"], ev_y, class_emb=val_emb, classes=values, cross_modal=emb.cross_modal,
            min_count=cfg.min_class_count, C=C)
    tasks["attributes"] = {"attributes": attrs, "summary": _attribute_summary(attrs),
                           "selection": {"min_values_per_class": cfg.min_class_count,
                                         "min_labelled_products": cfg.min_attribute_products,
                                         "max_attributes": cfg.max_attributes,
                                         "counted_in": "the probe-train subset",
                                         "skipped": skipped_attrs}}
    if not attrs:
        tasks["attributes"]["status"] = "skipped"
        tasks["attributes"]["reason"] = "no attribute has enough labelled values in the train subset"
    timings["attributes_s"] = time.perf_counter() - t1

    # ---- matching
    t1 = time.perf_counter()
    stage("matching")
    tasks["matching"] = _matching(V, sets, cfg)
    timings["matching_s"] = time.perf_counter() - t1

    # ---- clustering
    t1 = time.perf_counter()
    stage("clustering")
    tasks["clustering"] = T.clustering_task(V["eval"], ev, seed=cfg.seed, methods=cfg.clustering)
    timings["clustering_s"] = time.perf_counter() - t1

    # ---- adult
    t1 = time.perf_counter()
    stage("adult")
    tasks["adult"] = _adult(emb, V, sets, cfg, C)
    timings["adult_s"] = time.perf_counter() - t1
    timings["total_s"] = time.perf_counter() - t0
    result = {"retrieval": retrieval, "recommendation": recommendation, "tasks": tasks, "timing": timings}
    return result, extras


def _attribute_summary(attrs: dict[str, Any]) -> dict[str, Any]:
    """Mean macro-F1 / accuracy over the attributes each view and variant was scored on."""
    out: dict[str, Any] = {}
    for variant in ("probe", "zero_shot"):
        per_view: dict[str, dict[str, float]] = {}
        for v in T.VIEWS:
            rows = [a[variant][v] for a in attrs.values() if v in a.get(variant, {})]
            if rows:
                per_view[v] = {m: float(np.mean([r[m] for r in rows])) for m in ("accuracy", "macro_f1")}
                per_view[v]["n_attributes"] = len(rows)
        if per_view:
            out[variant] = per_view
    return out


def _matching(V: dict[str, T.Views], sets: EvalSets, cfg: EvalConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    hn, seed = cfg.hard_negatives, cfg.seed
    syn_pairs_t, syn_y_t = T.relisting_pairs(sets.tune, sets.syn_tune_src, hard_negatives=hn, seed=seed)
    syn_pairs_e, syn_y_e = T.relisting_pairs(sets.eval, sets.syn_eval_src, hard_negatives=hn, seed=seed)
    syn_tune_s = T.pair_cosines(V["tune"], V["syn_tune"], syn_pairs_t)
    if len(syn_y_e) and syn_y_e.sum():
        out["synthetic"] = {
            "label": "SYNTHETIC re-listings (see data.synthetic in this report)",
            **T.matching_scores(syn_tune_s, syn_y_t, T.pair_cosines(V["eval"], V["syn_eval"], syn_pairs_e),
                                syn_y_e)}
    else:
        out["synthetic"] = _na("no synthetic re-listings were made (synthetic_max = 0?)")
    real_e, real_y_e = T.group_pairs(sets.eval, hard_negatives=hn, seed=seed)
    real_t, real_y_t = T.group_pairs(sets.tune, hard_negatives=hn, seed=seed)
    if not len(real_y_e) or not real_y_e.sum():
        out["real"] = _na("no group of re-listed products in the eval split")
        return out
    eval_s = T.pair_cosines(V["eval"], V["eval"], real_e)
    if int(real_y_t.sum()) >= 2:
        res = T.matching_scores(T.pair_cosines(V["tune"], V["tune"], real_t), real_y_t, eval_s, real_y_e)
        src = f"real groups in the tune set ({int(real_y_t.sum())} positive pairs)"
    else:
        res = T.matching_scores(syn_tune_s, syn_y_t, eval_s, real_y_e)
        src = (f"synthetic tune pairs (the tune set has {int(real_y_t.sum())} real positive pairs, fewer than 2)")
    n_eval, n_tune = int(real_y_e.sum()), int(real_y_t.sum())
    out["real"] = {"label": "REAL groups of re-listed products (catalog `group`)", "threshold_from": src,
                   "positive_pairs": {"eval": n_eval, "tune": n_tune},
                   "negative_pairs": {"eval": int(len(real_y_e) - n_eval), "tune": int(len(real_y_t) - n_tune)},
                   **res}
    if n_eval < T.SMALL_SAMPLE:
        out["real"]["small_sample"] = True
        out["real"]["warning"] = (f"only {n_eval} real positive pairs in eval ({n_tune} in tune): a point value "
                                  "can move by a lot with one pair; read the bootstrap 95 % intervals")
    return out


def _adult(emb: Embedder, V: dict[str, T.Views], sets: EvalSets, cfg: EvalConfig,
           C: dict[str, float]) -> dict[str, Any]:
    label = cfg.adult_label
    col = label if label.startswith("labels.") else f"labels.{label}"
    ys = {k: binary_labels(getattr(sets, k), label) for k in ("train", "eval", "tune")}
    n_labelled = sum(y is not None for v in ys.values() for y in v)
    if n_labelled == 0:
        return {"status": "skipped", "label": col,
                "reason": f"no product in the evaluated sets carries `{col}`; this task needs a catalog "
                          "with that binary label (nothing was invented)"}
    prompts = None
    if emb.has_text:
        pos, neg = (prompt_embeddings(emb, [list(group)])[0] for group in T.ADULT_PROMPTS)
        prompts = (pos, neg)
    res = T.binary_task(V["train"], ys["train"], V["eval"], ys["eval"], V["tune"], ys["tune"],
                        prompt_emb=prompts, cross_modal=emb.cross_modal, C=C)
    return {"label": col, **res}


# --------------------------------------------------------------------------- report


def _get(d: Any, dotted: str) -> Any:
    for part in dotted.split("/"):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def headline_keys(cfg: EvalConfig) -> list[str]:
    """The metrics compared across model and baselines (paths into a result, '/'-separated)."""
    k = cfg.k
    keys = [f"whole_catalog/{d}/{m}" for d in ("t2i", "i2t")
            for m in dict.fromkeys(("hits@1", "hits@5", f"hits@{k}", "mrr"))]
    keys += [f"whole_catalog/{v}_same_leaf_precision@{k}" for v in ("i2i", "fused")]
    keys += ["retrieval/t2i/exact/recall@1", f"retrieval/t2i/exact/recall@{k}", "retrieval/t2i/exact/mrr",
            "retrieval/i2t/exact/recall@1", f"retrieval/i2t/exact/recall@{k}",
            f"retrieval/t2i/category/ndcg@{k}"]
    keys += [f"retrieval/category_query/{v}/ndcg@{k}" for v in T.VIEWS]
    keys += [f"retrieval/similar/{v}/category/ndcg@{k}" for v in T.VIEWS]
    keys += [f"retrieval/similar/{v}/exact/hits@1" for v in T.VIEWS]
    keys += [f"recommendation/coverage@{k}", f"recommendation/leaf_diversity@{k}"]
    for level in ("leaf", "top"):
        keys += [f"tasks/category/{level}/probe/{v}/accuracy" for v in T.VIEWS]
        keys += [f"tasks/category/{level}/zero_shot/{v}/accuracy" for v in T.VIEWS]
    keys += [f"tasks/attributes/summary/probe/{v}/macro_f1" for v in T.VIEWS]
    keys += [f"tasks/attributes/summary/zero_shot/{v}/macro_f1" for v in T.VIEWS]
    for kind in ("synthetic", "real"):
        for v in (*T.VIEWS, "probe"):
            keys += [f"tasks/matching/{kind}/{v}/auroc", f"tasks/matching/{kind}/{v}/f1",
                     f"tasks/matching/{kind}/{v}/precision@recall0.9"]
    keys += [f"tasks/clustering/kmeans/{v}/leaf/nmi" for v in T.VIEWS]
    keys += [f"tasks/clustering/kmeans/{v}/leaf/ari" for v in T.VIEWS]
    keys += [f"tasks/adult/probe/{v}/auroc" for v in T.VIEWS]
    keys += [f"tasks/adult/zero_shot/{v}/auroc" for v in T.VIEWS]
    return keys


def headline(result: dict[str, Any], keys: Sequence[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in keys:
        v = _get(result, key)
        out[key] = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
    return out


def _deltas(model: dict[str, float | None], base: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (model[k] - base[k]) if model.get(k) is not None and base.get(k) is not None else None
            for k in model}


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become None, numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _same_cosines(a: np.ndarray, b: np.ndarray, n: int = 256) -> bool:
    """Do two embeddings of the same items give the same cosines (first `n` items)?"""
    a, b = np.asarray(a[:n], np.float64), np.asarray(b[:n], np.float64)
    return a.shape[0] == b.shape[0] and bool(np.allclose(a @ a.T, b @ b.T, atol=1e-4))


def _geometry_notes(extras: dict[str, dict[str, Any]]) -> list[str]:
    """Say so when a baseline's side is the raw tower in disguise (measured, not assumed).

    An untrained head that maps a narrower tower orthogonally into a wider space (e.g.
    384-d MiniLM → 768-d) preserves every cosine, so that side's numbers equal the
    tower baseline's; a reader comparing the two should know it is not a coincidence.
    """
    notes = []
    for name in ("untrained", "model"):
        views = extras.get(name, {}).get("views", {})
        for side, tower in (("text", "text-tower"), ("image", "image-tower")):
            other = extras.get(tower, {}).get("views", {}).get(side)
            if side in views and other is not None and _same_cosines(views[side], other):
                notes.append(f"{name}: its {side} side gives the same cosines as `{tower}` (checked on the first "
                             f"eval items): its {side} head preserves cosines (an untrained orthogonal map), so its "
                             f"{side}-view numbers equal `{tower}`'s; only the other side and cross-modal "
                             "numbers differ")
    return notes


def _write_recommendations(path: Path, ps: ProductSet, scores: np.ndarray, k: int) -> str:
    """The recommendation task's output itself: top-k similar products per eval product."""
    s = np.asarray(scores, dtype=np.float64).copy()
    np.fill_diagonal(s, -np.inf)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    atomic_write_jsonl(path, ({"id": ps.ids[i], "similar": [{"id": ps.ids[j], "score": round(float(s[i, j]), 5)}
                                                            for j in top[i]]} for i in range(len(ps))))
    return path.name


def _environment() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "platform": platform.platform()}


SYNTHETIC_DOC = (
    "SYNTHETIC re-listings, made by shopclip.eval.synthetic from real eval/tune products (seeded per product): "
    "photo re-cropped (75-92%), padded (8-25% border), put on another background (near-white studio "
    "background swapped for a random noisy colour; pad when there is none) and/or re-compressed (50-80% "
    "downscale, JPEG q15-35), always re-saved as JPEG; title rewritten by 1-3 of: an attribute value dropped, "
    "seller abbreviations, words reordered, casing changed; description cut to its first 50-100% of words. "
    "Positives: (original, its re-listing); negatives: (original, re-listings of same-leaf products, "
    "identical titles first)."
)


def run_eval(
    model: str,
    catalog_path: str | Path,
    out_dir: str | Path,
    *,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    split: str = "test",
    cache_dir: str | Path | None = None,
    config: EvalConfig | None = None,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` (and ``baselines``) on ``catalog_path``; write report.json,
    report.md and plots to ``out_dir``; return the report.

    ``baselines``: ``text-tower``, ``image-tower``, ``untrained`` (the model's
    architecture with fresh heads) and/or any model name or path ``load_model`` accepts.
    ``cache_dir`` (default ``out_dir/cache``) holds embeddings and synthetic photos;
    point several reports at one cache to share them. ``overrides`` set
    :class:`EvalConfig` fields (``probe_train_max=500``, ``pairs="coview.csv"``, …).
    """
    t_start, cpu_start = time.perf_counter(), time.process_time()
    cfg = dataclasses.replace(config or EvalConfig(), split=split, **overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    catalog_path = Path(catalog_path)
    timing: dict[str, Any] = {}

    t = time.perf_counter()
    catalog = ensure_splits(Catalog.load(catalog_path))
    catalog, photos = merge_identical_photos(catalog)  # byte-identical twins are one product (relevance, sampling)
    sets = build_sets(catalog, cfg, cache, progress)
    pairs = R.read_pairs(cfg.pairs) if cfg.pairs else None
    timing["data_s"] = time.perf_counter() - t

    t = time.perf_counter()
    main, base_embs, notes = build_embedders(model, baselines, cache, progress=progress,
                                             image_batch_size=cfg.image_batch_size, num_workers=cfg.num_workers)
    timing["load_models_s"] = time.perf_counter() - t

    embedders = [main, *base_embs.values()]
    results: dict[str, dict[str, Any]] = {}
    extras: dict[str, dict[str, Any]] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(embedders), desc="eval", unit="model", file=sys.stderr)
    try:
        done: dict[str, str] = {}  # fingerprint -> name: an identical model is evaluated once
        for emb in embedders:
            fp = emb.info.get("fingerprint") if emb.kind == "dual" else None
            if fp and fp in done:
                results[emb.name], extras[emb.name] = results[done[fp]], extras[done[fp]]
            else:
                results[emb.name], extras[emb.name] = evaluate_embedder(emb, sets, cfg, pairs=pairs, bar=bar)
                if fp:
                    done[fp] = emb.name
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    if cfg.whole_catalog:
        t = time.perf_counter()
        for emb in embedders:
            if "whole_catalog" in results[emb.name]:  # an identical model shares its result dict
                continue
            results[emb.name]["whole_catalog"] = evaluate_whole_catalog(
                emb, catalog, sets.eval.ids, split=cfg.split, text_fields=cfg.text_fields, ks=cfg.ks)
        timing["whole_catalog_s"] = time.perf_counter() - t
    keys = headline_keys(cfg)
    model_head = headline(results["model"], keys)
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "model": main.info,
        "catalog": {"path": str(catalog_path), "sha1": file_sha1(catalog_path), "n_products": len(catalog),
                    "n_rejected_rows": len(catalog.errors)},
        "split": cfg.split,
        "split_ids_sha1": json_sha1(sets.eval.ids),
        "config": asdict(cfg),
        "data": {
            "sizes": sets.sizes(),
            "eval": f"the {cfg.split!r} split" + (f" (group-aware sample of {cfg.eval_max})" if cfg.eval_max else ""),
            "train": f"group-aware hashed subset of 'train' (at most {cfg.probe_train_max}): probes are fitted here",
            "tune": f"group-aware hashed subset of {cfg.tune_split!r} (at most {cfg.tune_max}): "
                    "matching and adult thresholds are chosen here",
            "text": f"product text = {' + '.join(cfg.text_fields)} (category path and attributes left out: "
                    "tasks predict them)",
            "fused": "concatenation of image and text unit vectors / sqrt(2): cosine = mean of the two cosines",
            "synthetic": SYNTHETIC_DOC,
            "pairs": ({"path": str(cfg.pairs), "sha1": file_sha1(cfg.pairs), "n_pairs": len(pairs or [])}
                      if cfg.pairs else None),
            "identical_photos": photos.summary(catalog),
            "whole_catalog": WHOLE_CATALOG_DOC,
            "real_groups_in_eval": len({g for g in sets.eval.groups if g}),
            "real_groups_in_tune": len({g for g in sets.tune.groups if g}),
            "cache": str(cache),
        },
        "whole_catalog": results["model"].get("whole_catalog"),
        "retrieval": results["model"]["retrieval"],
        "recommendation": results["model"]["recommendation"],
        "tasks": results["model"]["tasks"],
        "headline": model_head,
        "baselines": {},
        "notes": notes,
    }
    report["notes"] += _geometry_notes(extras)
    for name, emb in base_embs.items():
        head = headline(results[name], keys)
        report["baselines"][name] = {
            "model": emb.info, "kind": emb.kind, "aligned": emb.aligned,
            "headline": head, "delta": _deltas(model_head, head),
            "whole_catalog": results[name].get("whole_catalog"), "retrieval": results[name]["retrieval"], "recommendation": results[name]["recommendation"],
            "tasks": results[name]["tasks"],
        }
    timing["per_model_s"] = {name: r["timing"] for name, r in results.items()}
    if cfg.plots:
        t = time.perf_counter()
        from shopclip.eval.plots import write_plots

        report["plots"] = write_plots(out, report, sets, extras, cfg)
        timing["plots_s"] = time.perf_counter() - t
    report["files"] = {"recommendations": _write_recommendations(out / "recommendations.jsonl", sets.eval,
                                                                 extras["model"]["similar_scores"], cfg.k)}
    timing["total_s"] = time.perf_counter() - t_start
    timing["cpu_s"] = time.process_time() - cpu_start  # all threads; wall on a busy machine says less
    report["timing"] = timing
    report["environment"] = _environment()
    report = _clean(report)
    atomic_write_json(out / "report.json", report)
    from shopclip.eval.report import render_markdown

    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return report


__all__ = ["EvalConfig", "EvalSets", "build_sets", "evaluate_embedder", "headline", "headline_keys", "run_eval"]
