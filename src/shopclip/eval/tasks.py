"""e-CLIP's downstream tasks on frozen embeddings: classification (category, attributes),
product matching, clustering and adult-product recognition.

Every task takes *views* — ``{"image": X, "text": X, "fused": X}`` arrays of
L2-normalised rows, whichever the embedder has — and reports each view separately.
``fused`` is the concatenation of the image and text vectors scaled by 1/sqrt(2), so its
cosine is the mean of the image and text cosines; unlike the mean *vector* it stays
meaningful for unaligned baselines.

Two variants where they make sense:

* **zero-shot** — scores against prompted text embeddings (``"a photo of {class}"``);
  for the text view this is text-text similarity (works with any text encoder), for the
  image and fused views it needs one shared text-image space;
* **probe** — a logistic regression on standardised frozen embeddings, fitted on the
  ``train`` product set and scored on the ``eval`` set (a fixed, group-aware split), with
  ``C`` chosen per view on the tune set (:func:`choose_probe_C`), or fixed by the caller.
  The probes are the task heads of :mod:`shopclip.heads` (a calibrated
  :class:`~shopclip.heads.classifier.ClassHead`, the hierarchical
  :class:`~shopclip.heads.category.CategoryHead`, :class:`~shopclip.heads.binary.BinaryHead`,
  :class:`~shopclip.heads.matching.PairMatcher`), fitted by the same code that
  ``shopclip heads train`` runs, so this report and the tagging jobs cannot disagree.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from shopclip.eval import metrics as M
from shopclip.eval.data import ProductSet
from shopclip.heads.attributes import select_attributes
from shopclip.heads.binary import ADULT_PROMPTS, DEFAULT_PRECISION, BinaryHead
from shopclip.heads.category import CategoryHead, as_path
from shopclip.heads.classifier import ClassHead
from shopclip.heads.features import VIEWS, Views, fuse, make_views
from shopclip.heads.matching import PHOTO_FEATURES, PairMatcher
from shopclip.heads.probe import LinearProbe, fit_probe
from shopclip.heads.thresholds import tune_threshold


def zero_shot_scores(views: Views, class_emb: np.ndarray, cross_modal: bool) -> dict[str, np.ndarray]:
    """(n, c) scores per view against class prompt embeddings (image/fused need a shared space)."""
    out: dict[str, np.ndarray] = {}
    if "text" in views and views["text"].shape[1] == class_emb.shape[1]:
        out["text"] = views["text"] @ class_emb.T
    if cross_modal and "image" in views and views["image"].shape[1] == class_emb.shape[1]:
        out["image"] = views["image"] @ class_emb.T
        if "text" in out:
            out["fused"] = (out["image"] + out["text"]) / 2.0
    return out


def hierarchical_scores(child_scores: np.ndarray, parent_of: Sequence[int], n_parents: int,
                        parent_scores: np.ndarray | None = None) -> np.ndarray:
    """(n, P) parent-class scores: the max over the parent's children's scores and its own.

    A top-level category is the union of its leaves, so an item belongs to it as much as
    it matches its best-matching leaf: "Footwear" is scored by "Casual Shoes", "Flip
    Flops", … and by the prompt "Footwear" itself. Scoring the bare top-level word alone
    fails because a prompt like "a photo of Apparel." is far from any product text
    (0.26-0.30 accuracy on the sample catalog, under the 0.43 majority rate). Max is
    parameter-free; log-sum-exp (the softmax marginal) was measured alongside it and was
    no better at any temperature in [0.01, 0.05]. Parents with neither children nor
    their own score get -inf.
    """
    child = np.asarray(child_scores, dtype=np.float64)
    parent_of = np.asarray(parent_of, dtype=np.int64)
    if child.ndim != 2 or child.shape[1] != len(parent_of):
        raise ValueError(f"child_scores {child.shape} do not match {len(parent_of)} children")
    out = np.full((child.shape[0], n_parents), -np.inf)
    for j in range(n_parents):
        cols = child[:, parent_of == j]
        if cols.shape[1]:
            out[:, j] = cols.max(axis=1)
    if parent_scores is not None:
        out = np.maximum(out, np.asarray(parent_scores, dtype=np.float64))
    return out


# --------------------------------------------------------------------------- probes


def _c(C: float | dict[str, float], view: str) -> float:
    return C.get(view, 1.0) if isinstance(C, dict) else C


PROBE_C_GRID = (0.01, 0.1, 1.0)


def choose_probe_C(train_x: Views, train_y: Sequence[str | None], tune_x: Views, tune_y: Sequence[str | None],
                   *, grid: Sequence[float] = PROBE_C_GRID, min_count: int = 5) -> dict[str, Any]:
    """Regularisation per view, chosen once on the tune set (leaf-category accuracy; the
    smaller C wins ties) and then used by every probe of that view. Without usable
    labels every view gets 1.0."""
    scores: dict[str, dict[float, float]] = {}
    for c in grid:
        res = classification_task(train_x, train_y, tune_x, tune_y, min_count=min_count, C=c)
        for v, m in res.get("probe", {}).items():
            scores.setdefault(v, {})[c] = m["accuracy"]
    chosen = {v: max(per, key=lambda c: (per[c], -c)) for v, per in scores.items()}
    return {"C": {v: chosen.get(v, 1.0) for v in train_x}, "tune_accuracy": scores,
            "rule": f"C in {list(grid)} maximising leaf-category accuracy on the tune set, per view"}


def _class_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    f1 = M.f1_scores(y_true, y_pred)
    return {"accuracy": M.accuracy(y_true, y_pred), "macro_f1": f1["macro_f1"], "micro_f1": f1["micro_f1"],
            "weighted_f1": f1["weighted_f1"]}


def classification_task(
    train_x: Views,
    train_y: Sequence[str | None],
    eval_x: Views,
    eval_y: Sequence[str | None],
    *,
    class_emb: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    cross_modal: bool = False,
    min_count: int = 5,
    C: float | dict[str, float] = 1.0,
    confusion_view: str | None = None,
    confusion_top: int | None = None,
    zero_shot: dict[str, np.ndarray] | None = None,
    tune_x: Views | None = None,
    tune_y: Sequence[str | None] | None = None,
    probe: bool = True,
) -> dict[str, Any]:
    """Single-label classification, probe and zero-shot, per view.

    Classes are the labels with at least ``min_count`` training examples; training and
    eval rows with other (or no) labels are left out and counted. ``class_emb`` holds
    one prompt embedding per class in ``classes`` order for the zero-shot variant;
    ``zero_shot`` instead gives the zero-shot scores themselves, per view an
    ``(len(eval_y), len(classes))`` array (e.g. :func:`hierarchical_scores`).
    ``confusion_view`` adds the probe's confusion matrix for that view (the
    ``confusion_top`` most frequent eval classes, the rest pooled as "(other)").
    The probe is a :class:`~shopclip.heads.classifier.ClassHead`; with ``tune_x`` /
    ``tune_y`` it is calibrated there (temperature, abstain threshold) and each view also
    reports its ECE and its coverage and accuracy at the abstain threshold.
    ``probe=False`` leaves the probe out (the caller scores it another way).
    """
    counts = Counter(y for y in train_y if y)
    kept = sorted(c for c, n in counts.items() if n >= min_count)
    if classes is not None:
        if class_emb is not None and len(classes) != len(class_emb):
            raise ValueError("classes and class_emb differ in length")
        order = {c: i for i, c in enumerate(classes)}
        kept = [c for c in kept if c in order]
    kept_set = set(kept)
    tr = np.asarray([i for i, y in enumerate(train_y) if y in kept_set], dtype=np.int64)
    ev = np.asarray([i for i, y in enumerate(eval_y) if y in kept_set], dtype=np.int64)
    y_tr = np.asarray([train_y[i] for i in tr], dtype=object)
    y_ev = np.asarray([eval_y[i] for i in ev], dtype=object)
    out: dict[str, Any] = {
        "n_classes": len(kept), "n_train": int(len(tr)), "n_eval": int(len(ev)),
        "n_eval_excluded": int(len(eval_y) - len(ev)), "min_count": min_count,
    }
    if len(kept) < 2 or len(ev) == 0:
        out["status"] = "skipped"
        out["reason"] = f"{len(kept)} classes with >= {min_count} training examples and {len(ev)} eval rows"
        return out
    majority = Counter(y_tr.tolist()).most_common(1)[0][0]
    out["chance"] = {"majority": float(np.mean(y_ev == majority)), "uniform": 1.0 / len(kept)}
    if probe:
        out["probe"] = {}
        for view in (v for v in VIEWS if v in train_x and v in eval_x):
            head = ClassHead.fit(train_x[view][tr], y_tr.astype(str).tolist(),
                                 tune_x[view] if tune_x is not None and view in tune_x else None,
                                 list(tune_y) if tune_y is not None else None, C=_c(C, view), classes=kept)
            if head is None:
                continue
            pred = np.asarray(head.predict(eval_x[view][ev])[0], dtype=object)
            out["probe"][view] = _class_scores(y_ev, pred)
            if tune_x is not None:
                sc = head.score(eval_x[view][ev], y_ev.tolist())
                out["probe"][view].update({k: sc[k] for k in ("ece", "threshold", "coverage",
                                                             "accuracy_at_threshold")})
            if view == confusion_view:
                out["confusion"] = _confusion(y_ev, pred, confusion_top)
    if (class_emb is not None or zero_shot is not None) and classes is not None:
        idx = np.asarray([list(classes).index(c) for c in kept], dtype=np.int64)
        if zero_shot is not None:
            zs = {v: np.asarray(sc)[ev][:, idx] for v, sc in zero_shot.items()}
        else:
            zs = zero_shot_scores({v: x[ev] for v, x in eval_x.items()}, class_emb[idx], cross_modal)
        kept_arr = np.asarray(kept, dtype=object)
        out["zero_shot"] = {v: _class_scores(y_ev, kept_arr[np.argmax(s, axis=1)]) for v, s in zs.items()}
    return out


def category_task(train_x: Views, train_paths: Sequence[str | None], eval_x: Views, eval_paths: Sequence[str | None],
                  tune_x: Views | None = None, tune_paths: Sequence[str | None] | None = None, *,
                  min_count: int = 5, C: float | dict[str, float] = 1.0,
                  confusion_view: str | None = None) -> dict[str, Any]:
    """The hierarchical category probe, per view: ``{"leaf": {...}, "top": {...}}``.

    One :class:`~shopclip.heads.category.CategoryHead` per view (the one ``shopclip heads
    train`` fits): a probe over category paths, rare paths folded into their parents,
    decoded top-down, so the top level is the decoded path's first level rather than a
    second probe. ``probe`` holds accuracy and F1 per view on the eval rows whose path maps
    to one of its classes (the rows a flat probe would be scored on); ``hierarchical``
    holds the head's own scores (strict leaf accuracy, ECE, coverage at its thresholds).
    """
    out: dict[str, Any] = {"leaf": {"probe": {}, "hierarchical": {}}, "top": {"probe": {}, "hierarchical": {}}}
    for view in (v for v in VIEWS if v in train_x and v in eval_x):
        head = CategoryHead.fit(train_x[view], list(train_paths), tune_x.get(view) if tune_x else None,
                                list(tune_paths) if tune_paths is not None else None, C=_c(C, view),
                                min_count=min_count)
        if head is None:
            continue
        rows = [i for i, p in enumerate(eval_paths) if p and head.tree.map_path(as_path(p)) == as_path(p)]
        pred = head.predict(eval_x[view][rows])
        leaf_true = np.asarray([eval_paths[i] for i in rows], dtype=object)
        leaf_pred = np.asarray([" > ".join(p.path) for p in pred], dtype=object)
        top_true = np.asarray([p.split(" > ", 1)[0] for p in leaf_true], dtype=object)
        top_pred = np.asarray([p.path[0] if p.path else "" for p in pred], dtype=object)
        out["leaf"]["probe"][view] = _class_scores(leaf_true, leaf_pred)
        out["top"]["probe"][view] = _class_scores(top_true, top_pred)
        sc = head.score(eval_x[view], list(eval_paths))
        out["leaf"]["hierarchical"][view] = {k: v for k, v in sc.items() if k != "levels"}
        out["top"]["hierarchical"][view] = {"accuracy": sc["top_accuracy"], "ece": sc["ece_top"]}
        if view == confusion_view:
            out["leaf"]["confusion"] = _confusion(leaf_true, leaf_pred, 15)
            out["top"]["confusion"] = _confusion(top_true, top_pred, None)
    return out


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, top: int | None) -> dict[str, Any]:
    labels = [c for c, _ in Counter(y_true.tolist()).most_common(top)]
    if top is not None and len(set(y_true.tolist()) | set(y_pred.tolist())) > len(labels):
        keep = set(labels)
        y_true = np.asarray([y if y in keep else "(other)" for y in y_true], dtype=object)
        y_pred = np.asarray([y if y in keep else "(other)" for y in y_pred], dtype=object)
        labels = [*labels, "(other)"]
    cm = M.confusion_matrix(y_true, y_pred, labels=np.asarray(labels, dtype=object))
    return {"labels": labels, "matrix": cm.tolist()}


# ------------------------------------------------------------------------ attributes


def attribute_selection(ps: ProductSet, *, min_count: int = 5, min_products: int = 100,
                        max_attributes: int | None = None) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Which attributes get a classifier, and why each other one does not: the task heads'
    rule (:func:`shopclip.heads.attributes.select_attributes`) on the set's attributes."""
    return select_attributes(ps.attributes, min_count=min_count, min_products=min_products,
                             max_attributes=max_attributes)


def attribute_targets(ps: ProductSet, *, min_count: int = 5, min_products: int = 100,
                      max_attributes: int | None = None) -> dict[str, list[str]]:
    """The kept attributes of :func:`attribute_selection` (name -> values)."""
    return attribute_selection(ps, min_count=min_count, min_products=min_products,
                               max_attributes=max_attributes)[0]


ATTRIBUTE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": ("a {v} product", "{v} colour"),
    "colour": ("a {v} product", "{v} colour"),
    "gender": ("a product for {v}", "{v}"),
    "usage": ("for {v} use", "{v} wear"),
    "season": ("for {v}", "{v} collection"),
}


def attribute_prompts(name: str, values: Sequence[str]) -> list[list[str]]:
    """Prompt ensemble per value: the catalog's own "name: value" form plus a phrase."""
    label = name.replace("_", " ")
    templates = ATTRIBUTE_TEMPLATES.get(name.lower(), ("a product with {n} {v}",))
    return [[f"{label}: {v}", *(t.format(v=v, n=label) for t in templates)] for v in values]


# -------------------------------------------------------------------------- matching


def _same_leaf_pool(ps: ProductSet) -> dict[str, list[int]]:
    pool: dict[str, list[int]] = {}
    for i, p in enumerate(ps.paths):
        pool.setdefault(p, []).append(i)
    return pool


def _hard_negatives(i: int, candidates: list[int], titles: Sequence[str], k: int, rng: random.Random) -> list[int]:
    """Up to k candidates, those with the very same title first (the hardest)."""
    t = titles[i].strip().lower()
    same = [j for j in candidates if titles[j].strip().lower() == t]
    rest = [j for j in candidates if titles[j].strip().lower() != t]
    rng.shuffle(same)
    rng.shuffle(rest)
    return (same + rest)[:k]


def group_pairs(ps: ProductSet, *, hard_negatives: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Real matching pairs inside one set: every within-group pair is positive; each
    grouped product also meets ``hard_negatives`` same-leaf products of other groups.

    Returns ``(pairs (m, 2) indices, labels (m,))``.
    """
    rng = random.Random(f"shopclip-eval-pairs:{seed}:{ps.name}")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(ps.groups):
        if g:
            members.setdefault(g, []).append(i)
    pool = _same_leaf_pool(ps)
    pairs, labels = [], []
    for g in sorted(members):
        idx = members[g]
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                pairs.append((idx[a], idx[b]))
                labels.append(1)
        for i in idx:
            cands = [j for j in pool.get(ps.paths[i], []) if ps.groups[j] != g]
            if not cands:
                cands = [j for j in range(len(ps)) if ps.groups[j] != g]
            for j in _hard_negatives(i, cands, ps.titles, hard_negatives, rng):
                pairs.append((i, j))
                labels.append(0)
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2), np.asarray(labels, dtype=np.int64)


def relisting_pairs(originals: ProductSet, relistings_of: Sequence[int], *, hard_negatives: int = 3,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (original index, re-listing index): each re-listing with its source (positive)
    and ``hard_negatives`` re-listings of other same-leaf products (negatives)."""
    rng = random.Random(f"shopclip-eval-relist-pairs:{seed}:{originals.name}")
    by_source = {src: r for r, src in enumerate(relistings_of)}
    leaf_pool: dict[str, list[int]] = {}
    for src in relistings_of:
        leaf_pool.setdefault(originals.paths[src], []).append(src)
    pairs, labels = [], []
    for r, src in enumerate(relistings_of):
        pairs.append((src, r))
        labels.append(1)
        g = originals.groups[src]
        cands = [s for s in leaf_pool[originals.paths[src]] if s != src and (g is None or originals.groups[s] != g)]
        if not cands:
            cands = [s for s in relistings_of if s != src]
        for s in _hard_negatives(src, cands, originals.titles, hard_negatives, rng):
            pairs.append((src, by_source[s]))
            labels.append(0)
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2), np.asarray(labels, dtype=np.int64)


def pair_cosines(left: Views, right: Views, pairs: np.ndarray) -> dict[str, np.ndarray]:
    """Cosine of each pair, per view present on both sides."""
    return {v: np.einsum("ij,ij->i", left[v][pairs[:, 0]], right[v][pairs[:, 1]])
            for v in VIEWS if v in left and v in right}


SMALL_SAMPLE = 30  # fewer positives (or negatives) than this: the report flags the numbers as anecdotal
BOOTSTRAP = 1000  # resamples for the 95 % intervals


def binary_scores(y: np.ndarray, s: np.ndarray, threshold: float | None, *, n_boot: int = BOOTSTRAP,
                  seed: int = 0) -> dict[str, Any]:
    """AUROC, AP, recall at 99 % precision, precision at 90 % recall, and P/R/F1 at a given threshold.

    ``ci95`` holds percentile-bootstrap 95 % intervals (classes resampled separately,
    ``n_boot`` resamples, :func:`metrics.bootstrap_ci`) of AUROC, AP and the F1 at the
    threshold, and the Wilson interval of the recall at the threshold (which, unlike the
    bootstrap, stays wide when every positive is found); ``small_sample`` is set, with a
    warning, when either class has fewer than
    :data:`SMALL_SAMPLE` items, where one pair more or less moves a number by a lot.
    """
    n_pos, n_neg = int((y > 0).sum()), int((y <= 0).sum())
    out: dict[str, Any] = {"auroc": M.roc_auc(y, s), "average_precision": M.average_precision_score(y, s),
                           "recall@precision0.99": M.recall_at_precision(y, s, 0.99),
                           "precision@recall0.9": M.precision_at_recall(y, s, 0.9),
                           "n_pos": n_pos, "n_neg": n_neg}
    fns: dict[str, Any] = {"auroc": M.roc_auc, "average_precision": M.average_precision_score}
    if threshold is not None and np.isfinite(threshold):
        pred = s >= threshold
        tp = float((pred & (y > 0)).sum())
        out["threshold"] = float(threshold)
        out["precision"] = tp / float(pred.sum()) if pred.sum() else 0.0
        out["recall"] = tp / float((y > 0).sum()) if (y > 0).sum() else float("nan")
        out["f1"] = M.binary_f1_at(y, s, threshold)
        fns["f1"] = lambda yb, sb: M.binary_f1_at(yb, sb, threshold)
    out["oracle_f1"] = M.best_f1_threshold(y, s)[1]  # best threshold chosen on eval itself: a ceiling
    if n_boot > 0:
        out["ci95"] = {k: list(v) for k, v in M.bootstrap_ci(y, s, fns, n_boot=n_boot, seed=seed).items()}
    if "recall" in out and n_pos:
        # A bootstrap of a perfect separation is the point [1, 1]; Wilson says what n_pos items can support.
        out.setdefault("ci95", {})["recall_wilson"] = list(M.wilson_interval(round(out["recall"] * n_pos), n_pos))
    if min(n_pos, n_neg) < SMALL_SAMPLE:
        out["small_sample"] = True
        out["warning"] = (f"only {n_pos} positive / {n_neg} negative items: read the 95 % intervals, "
                          "not the point values")
    return out


def matching_scores(tune_s: dict[str, np.ndarray], tune_y: np.ndarray, eval_s: dict[str, np.ndarray],
                    eval_y: np.ndarray, *, tune_pairs: np.ndarray | None = None, eval_pairs: np.ndarray | None = None,
                    tune_photo: np.ndarray | None = None, eval_photo: np.ndarray | None = None) -> dict[str, Any]:
    """Per view: threshold = best F1 on the tune pairs, then metrics on the eval pairs.

    ``probe`` (when both image and text cosines exist) is the dedupe job's
    :class:`~shopclip.heads.matching.PairMatcher`, fitted, calibrated and thresholded on the
    tune pairs: a pair score from the cosines (and, given ``*_photo`` — ``[inliers, colour
    distance, overlap]`` per pair from :mod:`shopclip.heads.photomatch` — the keypoint check of the
    two photos), then its margin over each listing's other candidates in ``*_pairs`` (the
    pairs as node ids; without them every pair stands alone). An identical photo (image
    cosine >= its ``identical_photo``) always matches.
    """
    out: dict[str, Any] = {}
    tune_ok = len(tune_y) and 0 < int(tune_y.sum()) < len(tune_y)
    for v, s in eval_s.items():
        thr = tune_threshold(tune_y, tune_s[v]) if tune_ok else None
        out[v] = binary_scores(eval_y, s, thr)
    if tune_ok and "image" in eval_s and "text" in eval_s:
        photo = tune_photo is not None and eval_photo is not None
        names = ("image", "text", *(PHOTO_FEATURES if photo else ()))

        def x(s: dict[str, np.ndarray], checks: np.ndarray | None) -> np.ndarray:
            cols = [s["image"], s["text"]]
            if photo and checks is not None:
                inl = np.log1p(checks[:, 0])
                cols += [inl, checks[:, 1], checks[:, 2], inl * checks[:, 1]]
            return np.stack(cols, axis=1)

        def graph(pairs: np.ndarray | None, n: int) -> np.ndarray:
            return np.arange(2 * n).reshape(n, 2) if pairs is None else np.asarray(pairs)

        xt, gt = x(tune_s, tune_photo), graph(tune_pairs, len(tune_y))
        matcher = PairMatcher.fit(xt, gt, tune_y, xt, gt, tune_y, features=names)
        out["probe"] = binary_scores(eval_y, matcher.score_graph(x(eval_s, eval_photo), graph(eval_pairs, len(eval_y))),
                                     matcher.threshold)
        out["probe"]["features"] = (", ".join(names) + " -> margin over each listing's other candidates "
                                    "(the dedupe job's matcher)")
    return out


def node_pairs(pairs: np.ndarray, n_left: int | None) -> np.ndarray:
    """Pairs ``(i in left, j in right)`` as node ids of one candidate graph: right ids are
    shifted by ``n_left`` (None: both sides are the same set)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return pairs if n_left is None else np.stack([pairs[:, 0], pairs[:, 1] + n_left], axis=1)


def photo_checks(left_images: Sequence[Any], right_images: Sequence[Any], pairs: np.ndarray) -> np.ndarray | None:
    """``[inliers, colour distance, overlap]`` of each pair's two photos, or None without OpenCV."""
    from shopclip.heads.photomatch import KeypointCache, available, compare_pairs

    if not available():
        return None
    cache = KeypointCache(lambda key: key, size=4 * len(pairs) + 16)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    n = len(left_images)
    images = [str(p) for p in left_images] + [str(p) for p in right_images]
    return compare_pairs(lambda i: cache.get(images[i]), node_pairs(pairs, n))


# ------------------------------------------------------------------------ clustering


def clustering_task(views: Views, ps: ProductSet, *, seed: int = 0,
                    methods: Sequence[str] = ("kmeans", "agglomerative")) -> dict[str, Any]:
    """Cluster each view into as many clusters as there are categories; NMI/ARI/V-measure
    against the leaf category (full path) and the top-level category. Where the set holds
    re-listing groups (catalog ``group``, >= 2 products each), ``group`` clusters just
    those products into as many clusters as groups and scores against the groups: do
    re-listings of one product end up together?

    ``agglomerative`` is Ward linkage on the unit vectors (Euclidean on unit vectors
    orders pairs as cosine does); products without a category are left out.
    """
    from sklearn.cluster import AgglomerativeClustering, KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # tiny problems; OpenMP threads on a busy machine made KMeans 50x slower
        out = _clustering(views, ps, KMeans, AgglomerativeClustering, seed, methods)
        out["group"] = _group_clustering(views, ps, KMeans, AgglomerativeClustering, seed, methods)
        return out


def _group_clustering(views: Views, ps: ProductSet, kmeans: Any, agglomerative: Any, seed: int,
                      methods: Sequence[str]) -> dict[str, Any]:
    sizes = Counter(g for g in ps.groups if g)
    keep = np.asarray([i for i, g in enumerate(ps.groups) if g and sizes[g] >= 2], dtype=np.int64)
    y = np.asarray([ps.groups[i] for i in keep], dtype=object)
    k = len(set(y.tolist()))
    out: dict[str, Any] = {"n": int(len(keep)), "k": k}
    if k < 2:
        return {**out, "status": "skipped", "reason": f"{k} re-listing group(s) with >= 2 products in this set"}
    if len(keep) < SMALL_SAMPLE:
        out["small_sample"] = True
    for method in methods:
        res: dict[str, Any] = {}
        for v in (v for v in VIEWS if v in views):
            x = views[v][keep]
            if method == "kmeans":
                pred = kmeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)
            else:
                pred = agglomerative(n_clusters=k, linkage="ward").fit_predict(x)
            res[v] = {"nmi": M.nmi(y, pred), "ari": M.ari(y, pred), "v_measure": M.v_measure(y, pred)}
        out[method] = res
    return out


def _clustering(views: Views, ps: ProductSet, kmeans: Any, agglomerative: Any, seed: int,
                methods: Sequence[str]) -> dict[str, Any]:
    keep = np.asarray([i for i, p in enumerate(ps.paths) if p], dtype=np.int64)
    targets = {"leaf": np.asarray(ps.paths, dtype=object)[keep], "top": np.asarray(ps.tops, dtype=object)[keep]}
    out: dict[str, Any] = {"n": int(len(keep)), "k": {t: int(len(set(y.tolist()))) for t, y in targets.items()}}
    if len(keep) < 3:
        return {**out, "status": "skipped", "reason": "fewer than 3 products with a category"}
    for method in methods:
        res: dict[str, Any] = {}
        for v in (v for v in VIEWS if v in views):
            x = views[v][keep]
            res[v] = {}
            for t, y in targets.items():
                k = min(out["k"][t], len(keep))
                if method == "kmeans":
                    pred = kmeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)
                elif method == "agglomerative":
                    pred = agglomerative(n_clusters=k, linkage="ward").fit_predict(x)
                else:
                    raise ValueError(f"unknown clustering method {method!r}")
                res[v][t] = {"nmi": M.nmi(y, pred), "ari": M.ari(y, pred), "v_measure": M.v_measure(y, pred)}
        out[method] = res
    return out


# ---------------------------------------------------------------------------- binary


def binary_task(train_x: Views, train_y: Sequence[int | None], eval_x: Views, eval_y: Sequence[int | None],
                tune_x: Views, tune_y: Sequence[int | None], *, prompt_emb: tuple[np.ndarray, np.ndarray] | None = None,
                cross_modal: bool = False, C: float | dict[str, float] = 1.0,
                precision_target: float = DEFAULT_PRECISION) -> dict[str, Any]:
    """Binary recognition (e.g. adult products): probe and zero-shot per view.

    Unlabelled rows are ignored. The probe is the tag job's
    :class:`~shopclip.heads.binary.BinaryHead` (balanced class weights, since positives are
    rare; probability calibrated on the tune set; its decision threshold is the lowest
    with tune precision >= ``precision_target``), scored at that threshold. The zero-shot
    score is cos(x, positive prompts) - cos(x, negative prompts), thresholded at the tune
    set's best F1 when it holds both classes.
    """

    def labelled(y: Sequence[int | None]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray([i for i, v in enumerate(y) if v is not None], dtype=np.int64)
        return idx, np.asarray([y[i] for i in idx], dtype=np.int64)

    tr, ytr = labelled(train_y)
    ev, yev = labelled(eval_y)
    tu, ytu = labelled(tune_y)
    out: dict[str, Any] = {"n_train": int(len(tr)), "n_eval": int(len(ev)), "n_tune": int(len(tu)),
                           "positives": {"train": int(ytr.sum()), "eval": int(yev.sum()), "tune": int(ytu.sum())}}
    if len(ev) == 0 or yev.min() == yev.max():
        return {**out, "status": "skipped", "reason": "the eval split does not hold both classes"}
    tune_ok = len(tu) > 0 and ytu.min() != ytu.max()
    if len(tr) and ytr.min() != ytr.max():
        probe = {}
        for v in (v for v in VIEWS if v in train_x):
            head = BinaryHead.fit("label", train_x[v][tr], ytr.tolist(), tune_x[v][tu] if len(tu) else None,
                                  ytu.tolist(), C=_c(C, v), precision_target=precision_target)
            if head is None:
                continue
            probe[v] = binary_scores(yev, head.proba(eval_x[v][ev]), head.threshold)
            probe[v]["calibration"] = head.calibrator.method if tune_ok else "none (tune split lacks a class)"
            probe[v]["precision_target"] = precision_target
        out["probe"] = probe
    else:
        out["probe"] = {"status": "skipped", "reason": "the train subset does not hold both classes"}
    if prompt_emb is not None:
        pos, neg = prompt_emb
        zero: dict[str, Any] = {}
        for v, s_ev in _prompt_margin(eval_x, ev, pos, neg, cross_modal).items():
            s_tu = _prompt_margin(tune_x, tu, pos, neg, cross_modal).get(v) if tune_ok else None
            thr = tune_threshold(ytu, s_tu) if s_tu is not None else None
            zero[v] = binary_scores(yev, s_ev, thr)
        out["zero_shot"] = zero
    return out


def _prompt_margin(views: Views, idx: np.ndarray, pos: np.ndarray, neg: np.ndarray, cross_modal: bool) -> dict[str, np.ndarray]:
    sub = {v: x[idx] for v, x in views.items()}
    p = zero_shot_scores(sub, pos[None, :], cross_modal)
    n = zero_shot_scores(sub, neg[None, :], cross_modal)
    return {v: p[v][:, 0] - n[v][:, 0] for v in p}


__all__ = ["ADULT_PROMPTS", "VIEWS", "attribute_prompts", "attribute_selection", "attribute_targets", "binary_scores", "binary_task",
           "category_task", "choose_probe_C", "classification_task", "clustering_task", "fit_probe", "LinearProbe", "fuse", "group_pairs", "make_views",
           "matching_scores", "pair_cosines", "relisting_pairs", "tune_threshold", "zero_shot_scores"]
