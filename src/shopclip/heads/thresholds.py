"""Operating points chosen on a validation split: best F1, a precision target, a recall target,
an abstain threshold that keeps the answered part accurate enough.

All of them read one curve: scores sorted from high to low, and the true/false positives
admitted by predicting "positive" at each distinct score (``score >= threshold``).
"""

from __future__ import annotations

import numpy as np


def operating_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(thresholds descending, tp, fp)``: counts admitted by ``s >= threshold`` at each distinct score."""
    y = np.asarray(y).reshape(-1) > 0
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ")
    if not s.size:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]  # last index of each run of equal scores
    tp = np.cumsum(y[order], dtype=np.float64)[last]
    return s_sorted[last], tp, (last + 1.0) - tp


def best_f1_threshold(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """``(threshold, f1)`` with the highest F1; the highest such threshold. ``(nan, 0)`` without positives."""
    thr, tp, fp = operating_curve(y, s)
    if not tp.size or tp[-1] == 0:
        return float("nan"), 0.0
    f1 = 2.0 * tp / (tp + fp + tp[-1])
    best = int(np.argmax(f1))
    return float(thr[best]), float(f1[best])


def tune_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """Best-F1 threshold on tune pairs, moved halfway down to the next lower score.

    The best-F1 threshold is the lowest positive score that keeps F1 maximal; with a
    handful of positives that sits right on a tune score, and an eval positive a hair
    below it is lost. The midpoint to the next lower score keeps the tune decisions and
    leaves a margin on both sides.
    """
    s = np.asarray(s, dtype=np.float64)
    thr = best_f1_threshold(y, s)[0]
    below = s[s < thr]
    return float((thr + below.max()) / 2.0) if np.isfinite(thr) and below.size else thr


def threshold_at_precision(y: np.ndarray, s: np.ndarray, target: float) -> float:
    """The lowest threshold whose precision is >= ``target`` (so the most recall at that
    precision); ``inf`` when no threshold reaches it (predict nothing positive)."""
    thr, tp, fp = operating_curve(y, s)
    if not tp.size:
        return float("inf")
    ok = tp / (tp + fp) >= target - 1e-12
    return float(thr[np.flatnonzero(ok)[-1]]) if ok.any() else float("inf")


def threshold_at_recall(y: np.ndarray, s: np.ndarray, target: float) -> float:
    """The highest threshold whose recall is >= ``target``; ``-inf`` without positives."""
    thr, tp, _ = operating_curve(y, s)
    if not tp.size or tp[-1] == 0:
        return float("-inf")
    return float(thr[np.flatnonzero(tp / tp[-1] >= target - 1e-12)[0]])


def abstain_threshold(confidence: np.ndarray, correct: np.ndarray, target_accuracy: float) -> float:
    """The lowest confidence at which the answers given (confidence >= it) are still right
    ``target_accuracy`` of the time: the most coverage at that accuracy; ``inf`` if none."""
    return threshold_at_precision(np.asarray(correct, dtype=bool), confidence, target_accuracy)


def coverage_at(confidence: np.ndarray, correct: np.ndarray, threshold: float) -> dict[str, float]:
    """Share answered at ``threshold`` and the accuracy of those answers (NaN when none is answered)."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    answered = conf >= threshold
    n = int(answered.sum())
    return {"coverage": float(answered.mean()) if conf.size else float("nan"),
            "accuracy": float(ok[answered].mean()) if n else float("nan"), "answered": n, "n": int(conf.size)}


__all__ = ["abstain_threshold", "best_f1_threshold", "coverage_at", "operating_curve", "threshold_at_precision",
           "threshold_at_recall", "tune_threshold"]
