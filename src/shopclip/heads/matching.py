"""Is this listing the same product as that one? The matching head behind dedupe.

Two stages, both logistic regressions fitted on training pairs, calibrated (Platt /
isotonic) and thresholded on validation pairs:

1. **pair score** from what the two listings share (:data:`PAIR_FEATURES`): the cosine
   of their photo embeddings and of their text embeddings, and, where OpenCV is installed,
   the photo check of :mod:`shopclip.heads.photomatch` (keypoint inliers under one
   geometry, colour distance at those inliers);
2. **margin**: how much that score beats each listing's best *other* candidate. A
   re-listing is its original's best match by a clear margin, while two similar products
   in a crowded neighbourhood (ten navy t-shirts of one brand) score alike with their
   neighbours.

Batch dedupe sees both listings' candidates and uses both margins
(:meth:`PairMatcher.score_graph`); a new listing checked against the live index knows only
its own candidates, so :meth:`PairMatcher.score_query` uses a second-stage model fitted on
the query side's margin alone. The decision threshold is the best-F1 point on validation
pairs moved halfway to the next lower score (the matching task's rule,
:func:`~shopclip.heads.thresholds.tune_threshold`); pairs between the ``review``
threshold (where validation precision is still ``review_precision``, 50 %: at least
every other pair a reviewer opens is a duplicate) and the decision are borderline.

The margin is only as telling as duplicates are rare where it was learnt: fitted on a set
where half the products have a re-listing, "my best candidate by far" almost always meant
"my duplicate", and on a catalog without duplicates every product's best neighbour got
grouped with it (precision 0.01 on the test split's own products). So the fit and
calibration pairs come from sets where about one product in five has a re-listing
(``shopclip.understand.fit``), which costs some recall on re-listings and keeps false
groups rare.

Byte-identical photos embed identically, so a photo cosine of at least
:data:`IDENTICAL_PHOTO` marks the same photo whatever the texts say: a re-used photo is a
duplicate listing (and goes to review when the texts alone would not have matched).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shopclip.heads.calibration import BinaryCalibrator
from shopclip.heads.features import Views
from shopclip.heads.photomatch import NO_COLOUR
from shopclip.heads.probe import LinearProbe, fit_probe
from shopclip.heads.thresholds import best_f1_threshold, threshold_at_precision, tune_threshold

EMBEDDING_FEATURES = ("image", "text")
# inliers_colour = log1p(inliers) x colour distance: a colour difference only says "another
# product" when the geometry says "the same shot"; alone, logistic regression weighed the
# colour too little (test-split false pairs 20 -> 12 and re-listing F1 0.926 -> 0.959 with it,
# matcher fitted on val pairs while designing; bench/understand.py has the final numbers).
PHOTO_FEATURES = ("inliers", "colour", "overlap", "inliers_colour")
PAIR_FEATURES = EMBEDDING_FEATURES + PHOTO_FEATURES
# Identical bytes give identical vectors: cosine 1 up to float16 storage (~1e-4).
IDENTICAL_PHOTO = 0.995
MARGIN_CAP = 10.0  # a listing with no other candidate: its margin counts as this (logit units)


def default_features() -> tuple[str, ...]:
    """Photo checks when OpenCV is importable, else embedding similarities only."""
    from shopclip.heads.photomatch import available

    return PAIR_FEATURES if available() else EMBEDDING_FEATURES


def pair_features(left: Views, right: Views, pairs: np.ndarray, names: Sequence[str] = EMBEDDING_FEATURES, *,
                  photo: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """(m, len(names)) features of index pairs ``(i in left, j in right)``.

    View names are cosines; ``inliers`` (log1p of the count), ``colour``, ``overlap`` and
    ``inliers_colour`` (their product) come from ``photo(pairs)``, an (m, 3) ``[inliers,
    colour distance, overlap]`` array (see :func:`shopclip.heads.photomatch.compare_pairs`).
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    checks = None
    if any(n in PHOTO_FEATURES for n in names):
        if photo is None:
            raise ValueError(f"features {list(names)} need the photo check (OpenCV) and the photos")
        checks = np.asarray(photo(pairs), dtype=np.float32).reshape(-1, 3)
    cosines = {n: np.einsum("ij,ij->i", left[n][pairs[:, 0]], right[n][pairs[:, 1]])
               for n in names if n not in PHOTO_FEATURES}
    return feature_matrix(names, cosines, checks, len(pairs))


def feature_matrix(names: Sequence[str], cosines: Mapping[str, np.ndarray], checks: np.ndarray | None,
                   n: int) -> np.ndarray:
    """(n, len(names)) matcher features from per-view cosines and the photo check's rows
    ``[inliers, colour distance, overlap]``: the one definition that batch dedupe and the
    server's check of a new listing share, so the two cannot drift apart."""
    cols = []
    for name in names:
        if name in PHOTO_FEATURES and checks is None:
            raise ValueError(f"feature {name!r} needs the photo check")
        if name == "inliers":
            cols.append(np.log1p(checks[:, 0]))  # type: ignore[index]
        elif name == "colour":
            cols.append(checks[:, 1])  # type: ignore[index]
        elif name == "overlap":
            cols.append(checks[:, 2])  # type: ignore[index]
        elif name == "inliers_colour":
            # Only a measured colour is evidence. Where the geometry failed (fewer than
            # MIN_INLIERS) or nothing was foreground in both photos, the colour reads
            # NO_COLOUR, and its product with a few stray inliers said "the same shot in
            # another colour": a re-listing with a swapped background scored ~0.
            measured = checks[:, 1] < NO_COLOUR  # type: ignore[index]
            cols.append(np.where(measured, np.log1p(checks[:, 0]) * checks[:, 1], 0.0))  # type: ignore[index]
        else:
            cols.append(np.asarray(cosines[name]))
    return np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((n, 0), np.float32)


def margins(z: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each pair (a, b): ``z - best other score of a`` and ``z - best other score of b``
    over the candidate graph ``pairs`` (capped at :data:`MARGIN_CAP` when there is no other)."""
    z = np.asarray(z, dtype=np.float64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    n = int(pairs.max()) + 1 if len(pairs) else 0
    best1 = np.full(n, -np.inf)
    best2 = np.full(n, -np.inf)
    arg1 = np.full(n, -1)
    for k, (a, b) in enumerate(pairs.tolist()):
        for u in (a, b):
            if z[k] > best1[u]:
                best2[u], best1[u], arg1[u] = best1[u], z[k], k
            elif z[k] > best2[u]:
                best2[u] = z[k]
    idx = np.arange(len(z))
    other_a = np.where(arg1[pairs[:, 0]] == idx, best2[pairs[:, 0]], best1[pairs[:, 0]])
    other_b = np.where(arg1[pairs[:, 1]] == idx, best2[pairs[:, 1]], best1[pairs[:, 1]])
    cap = lambda m: np.clip(np.nan_to_num(m, posinf=MARGIN_CAP), -MARGIN_CAP, MARGIN_CAP)  # noqa: E731
    return cap(z - other_a), cap(z - other_b)


@dataclass
class Decision:
    """A second-stage model with its calibration and thresholds."""

    probe: LinearProbe
    calibrator: BinaryCalibrator
    threshold: float
    review: float
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, x_fit: np.ndarray, y_fit: np.ndarray, x_cal: np.ndarray, y_cal: np.ndarray,
            review_precision: float) -> Decision:
        """Platt calibration, not isotonic: a smooth map keeps the ranking, where isotonic's
        plateaus put hundreds of pairs on one value right at the threshold."""
        probe = fit_probe(np.asarray(x_fit, dtype=np.float32), np.asarray(y_fit).astype(int), C=1.0)
        raw = _logit(probe, x_cal)
        cal = BinaryCalibrator.fit(raw, y_cal, min_isotonic=len(raw) + 1)
        p = cal(raw)
        thr = tune_threshold(y_cal, p)
        review = min(threshold_at_precision(y_cal, p, review_precision), thr)
        return cls(probe, cal, float(thr), float(review), {"calibration_best_f1": best_f1_threshold(y_cal, p)[1]})

    def proba(self, x: np.ndarray) -> np.ndarray:
        return self.calibrator(_logit(self.probe, x))

    def to_dict(self) -> dict[str, Any]:
        return {"calibrator": self.calibrator.to_dict(), "threshold": self.threshold, "review": self.review,
                "metrics": self.metrics}

    @classmethod
    def from_saved(cls, d: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str) -> Decision:
        return cls(LinearProbe.from_arrays(arrays, prefix, [0, 1]), BinaryCalibrator.from_dict(d["calibrator"]),
                   float(d["threshold"]), float(d["review"]), dict(d.get("metrics", {})))


@dataclass
class PairMatcher:
    """Pair score → margins over the candidates → calibrated probability → match / review / no."""

    features: tuple[str, ...]
    pair: LinearProbe  # stage 1
    graph: Decision  # stage 2 over both listings' candidates (batch dedupe)
    query: Decision  # stage 2 over the query's candidates only (a new listing against the index)
    identical_photo: float = IDENTICAL_PHOTO
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, x_fit: np.ndarray, pairs_fit: np.ndarray, y_fit: np.ndarray, x_cal: np.ndarray,
            pairs_cal: np.ndarray, y_cal: np.ndarray, *, features: Sequence[str] = EMBEDDING_FEATURES,
            review_precision: float = 0.5) -> PairMatcher:
        """Stage 1 and both second stages from the ``fit`` pairs (the candidate pairs of a
        training set); calibration and thresholds from the ``cal`` pairs (validation). The same
        pairs may be passed twice when there are no others."""
        y_fit, y_cal = np.asarray(y_fit).astype(int), np.asarray(y_cal).astype(int)
        if len(set(y_fit.tolist())) < 2 or len(set(y_cal.tolist())) < 2:
            raise ValueError("matching needs positive and negative pairs on both the fit and the calibration side")
        pair = fit_probe(np.asarray(x_fit, dtype=np.float32), y_fit, C=1.0)
        g_fit, g_cal = _graph_x(pair, x_fit, pairs_fit), _graph_x(pair, x_cal, pairs_cal)
        graph = Decision.fit(g_fit, y_fit, g_cal, y_cal, review_precision)
        q_fit, qy_fit = _query_x(pair, x_fit, pairs_fit, y_fit)
        q_cal, qy_cal = _query_x(pair, x_cal, pairs_cal, y_cal)
        query = Decision.fit(q_fit, qy_fit, q_cal, qy_cal, review_precision)
        return cls(tuple(features), pair, graph, query, metrics={
            "n_fit_pairs": int(len(y_fit)), "n_fit_positive": int(y_fit.sum()),
            "n_calibration_pairs": int(len(y_cal)), "n_calibration_positive": int(y_cal.sum()),
            "review_precision": review_precision,
            "pair_weights": dict(zip(features, (pair.coef_[:, 1] - pair.coef_[:, 0]).tolist(), strict=True))})

    # ------------------------------------------------------------------ scoring

    @property
    def threshold(self) -> float:
        return self.graph.threshold

    @property
    def review(self) -> float:
        return self.graph.review

    def score_graph(self, x: np.ndarray, pairs: np.ndarray, *, identical_rule: bool = True) -> np.ndarray:
        """Probability per candidate pair, knowing every listing's candidates (batch dedupe)."""
        x = np.asarray(x, dtype=np.float32).reshape(-1, len(self.features))
        p = self.graph.proba(_graph_x(self.pair, x, pairs)) if len(x) else np.zeros(0)
        return np.where(self.identical(x), 1.0, p) if identical_rule else p

    def score_query(self, x: np.ndarray, *, identical_rule: bool = True) -> np.ndarray:
        """Probability that a new listing is each of its candidates (rows of ``x``: the
        listing against each candidate), knowing only the listing's own candidates."""
        x = np.asarray(x, dtype=np.float32).reshape(-1, len(self.features))
        if not len(x):
            return np.zeros(0)
        z = _logit(self.pair, x)
        other = np.array([np.max(np.delete(z, k)) if len(z) > 1 else -np.inf for k in range(len(z))])
        m = np.clip(np.nan_to_num(z - other, posinf=MARGIN_CAP), -MARGIN_CAP, MARGIN_CAP)
        p = self.query.proba(np.stack([z, m], axis=1))
        return np.where(self.identical(x), 1.0, p) if identical_rule else p

    def identical(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1, len(self.features))
        if "image" not in self.features:
            return np.zeros(len(x), dtype=bool)
        return x[:, self.features.index("image")] >= self.identical_photo

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "graph": self.graph.to_dict(), "query": self.query.to_dict(),
                "identical_photo": self.identical_photo, "metrics": self.metrics}

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {**self.pair.arrays(f"{prefix}.pair"), **self.graph.probe.arrays(f"{prefix}.graph"),
                **self.query.probe.arrays(f"{prefix}.query")}

    @classmethod
    def from_saved(cls, d: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str) -> PairMatcher:
        return cls(tuple(d["features"]), LinearProbe.from_arrays(arrays, f"{prefix}.pair", [0, 1]),
                   Decision.from_saved(d["graph"], arrays, f"{prefix}.graph"),
                   Decision.from_saved(d["query"], arrays, f"{prefix}.query"),
                   float(d.get("identical_photo", IDENTICAL_PHOTO)), dict(d.get("metrics", {})))


def _logit(probe: LinearProbe, x: np.ndarray) -> np.ndarray:
    z = probe.decision_function(np.asarray(x, dtype=np.float32))
    return (z[:, 1] - z[:, 0]).astype(np.float64)


def _graph_x(pair: LinearProbe, x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    z = _logit(pair, x)
    ma, mb = margins(z, pairs)
    return np.stack([z, np.minimum(ma, mb), np.maximum(ma, mb)], axis=1)


def _query_x(pair: LinearProbe, x: np.ndarray, pairs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pair seen from either side as a query: its score and that side's margin only."""
    z = _logit(pair, x)
    ma, mb = margins(z, pairs)
    return np.concatenate([np.stack([z, ma], 1), np.stack([z, mb], 1)]), np.concatenate([y, y])


__all__ = ["EMBEDDING_FEATURES", "IDENTICAL_PHOTO", "PAIR_FEATURES", "PHOTO_FEATURES", "Decision", "PairMatcher",
           "default_features", "feature_matrix", "margins", "pair_features"]
