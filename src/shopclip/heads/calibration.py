"""Calibrated probabilities: temperature scaling (multiclass), Platt or isotonic (binary), and
the expected calibration error that says how far a head's confidences are from its accuracy.

Calibrators are fitted on the validation split, never on the rows the head was fitted on:
a probe is over-confident on its own training rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of class indices ``y`` under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(lse - z[np.arange(len(y)), np.asarray(y, dtype=np.int64)]))


def fit_temperature(logits: np.ndarray, y: np.ndarray, *, lo: float = 0.02, hi: float = 50.0,
                    iters: int = 80) -> float:
    """The temperature minimising NLL on held-out rows (golden-section search on 1/T).

    NLL is convex in the inverse temperature (log-sum-exp of a linear function minus a
    linear term), so a one-dimensional bracket search finds the optimum. 1.0 without rows.
    """
    y = np.asarray(y, dtype=np.int64)
    if not len(y):
        return 1.0
    a, b = 1.0 / hi, 1.0 / lo  # inverse temperatures
    g = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, y, 1.0 / c), nll(logits, y, 1.0 / d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, y, 1.0 / c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, y, 1.0 / d)
    return float(2.0 / (a + b))


def expected_calibration_error(prob: np.ndarray, outcome: np.ndarray, n_bins: int = 15) -> float:
    """ECE: over equal-width bins of ``prob``, the share-weighted gap |mean(outcome) - mean(prob)|.

    For a classifier's top label, ``prob`` is its confidence and ``outcome`` whether it was
    right; for a binary head, the positive-class probability and the label. NaN when empty.
    """
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    o = np.asarray(outcome, dtype=np.float64).reshape(-1)
    if not p.size:
        return float("nan")
    bins = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        m = bins == b
        total += m.sum() * abs(o[m].mean() - p[m].mean())
    return float(total / p.size)


def reliability(prob: np.ndarray, outcome: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    """Per non-empty bin: its range, count, mean probability and observed rate (a reliability diagram)."""
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    o = np.asarray(outcome, dtype=np.float64).reshape(-1)
    bins = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    return [{"from": b / n_bins, "to": (b + 1) / n_bins, "n": int((bins == b).sum()),
             "mean_prob": float(p[bins == b].mean()), "observed": float(o[bins == b].mean())}
            for b in np.unique(bins)]


# ----------------------------------------------------------------------------- binary


def _pav(y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: non-decreasing block means of ``y`` (already sorted by score)."""
    vals: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for yi, wi in zip(y.tolist(), w.tolist(), strict=True):
        vals.append(yi)
        weights.append(wi)
        sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            v2, w2, n2 = vals.pop(), weights.pop(), sizes.pop()
            v1, w1, n1 = vals.pop(), weights.pop(), sizes.pop()
            vals.append((v1 * w1 + v2 * w2) / (w1 + w2))
            weights.append(w1 + w2)
            sizes.append(n1 + n2)
    return np.asarray(vals), np.asarray(sizes)


@dataclass
class BinaryCalibrator:
    """Maps a head's raw score (a logit) to a probability.

    ``platt``: ``sigmoid(a * score + b)``, a temperature plus a shift, which the balanced
    class weights of a rare-positive probe need; ``isotonic``: a non-decreasing step
    function (pool-adjacent-violators), used when the validation split holds enough of
    both classes (``min_isotonic`` each) to support one.
    """

    method: str = "platt"
    a: float = 1.0
    b: float = 0.0
    xs: list[float] | None = None
    ys: list[float] | None = None

    @classmethod
    def fit(cls, score: np.ndarray, y: np.ndarray, *, min_isotonic: int = 50) -> BinaryCalibrator:
        s = np.asarray(score, dtype=np.float64).reshape(-1)
        t = (np.asarray(y).reshape(-1) > 0).astype(np.float64)
        n_pos, n_neg = int(t.sum()), int(len(t) - t.sum())
        if min(n_pos, n_neg) >= min_isotonic:
            order = np.argsort(s, kind="stable")
            vals, sizes = _pav(t[order], np.ones(len(t)))
            ends = np.cumsum(sizes) - 1
            starts = ends - sizes + 1
            xs, ys = [], []
            for v, i0, i1 in zip(vals, starts, ends, strict=True):
                xs += [float(s[order][i0]), float(s[order][i1])]
                ys += [float(v), float(v)]
            return cls("isotonic", xs=xs, ys=ys)
        return cls("platt", *_platt(s, t))

    def __call__(self, score: np.ndarray) -> np.ndarray:
        s = np.asarray(score, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(s, np.asarray(self.xs), np.asarray(self.ys))
        return sigmoid(self.a * s + self.b)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        out.update({"a": self.a, "b": self.b} if self.method == "platt" else {"xs": self.xs, "ys": self.ys})
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BinaryCalibrator:
        return cls(d["method"], float(d.get("a", 1.0)), float(d.get("b", 0.0)), d.get("xs"), d.get("ys"))


def _platt(s: np.ndarray, t: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """Newton's method on the two-parameter logistic NLL, with Platt's smoothed targets
    (so perfectly separated validation scores still give finite parameters)."""
    n_pos, n_neg = t.sum(), len(t) - t.sum()
    target = np.where(t > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, b = 1.0, 0.0
    X = np.stack([s, np.ones_like(s)], axis=1)
    for _ in range(iters):
        p = sigmoid(a * s + b)
        grad = X.T @ (p - target)
        hess = X.T @ (X * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


__all__ = ["BinaryCalibrator", "expected_calibration_error", "fit_temperature", "nll", "reliability", "sigmoid",
           "softmax"]
