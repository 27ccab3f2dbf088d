"""The linear probe every task head is made of: standardised features + logistic regression.

It lives here, below the evaluation suite, because the jobs that tag listings and the
report that scores them must fit the very same model (``shopclip.eval.tasks`` imports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class LinearProbe:
    """Standardised features + multinomial logistic regression, fitted full-batch with L-BFGS.

    The objective is scikit-learn's (``C * sum_i w_i CE_i + ||W||^2 / 2``, bias not
    penalised) divided by ``C * n``; written in float32 torch because an eval fits dozens
    of probes on up to 1280-d features and scikit-learn's float64 solver was ~2x slower
    per iteration here. ``class_weight="balanced"`` weighs rows by ``n / (k * count)``.
    """

    def __init__(self, C: float = 1.0, *, max_iter: int = 100, class_weight: str | None = None) -> None:
        self.C = C
        self.max_iter = max_iter
        self.class_weight = class_weight

    def fit(self, x: np.ndarray, y: Sequence[Any]) -> LinearProbe:
        import torch

        self.classes_, yi = np.unique(np.asarray(y), return_inverse=True)
        x = np.asarray(x, dtype=np.float32)
        self.mean_ = x.mean(axis=0)
        self.scale_ = x.std(axis=0)
        self.scale_[self.scale_ < 1e-8] = 1.0
        X = torch.from_numpy((x - self.mean_) / self.scale_)
        target = torch.from_numpy(yi.reshape(-1).astype(np.int64))
        n, d = X.shape
        k = len(self.classes_)
        if self.class_weight == "balanced":
            counts = np.bincount(yi.reshape(-1), minlength=k).astype(np.float32)
            w = torch.from_numpy(n / (k * counts))[target]
        else:
            w = torch.ones(n)
        W = torch.zeros(d, k, requires_grad=True)
        b = torch.zeros(k, requires_grad=True)
        lam = 1.0 / (self.C * n)
        opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=self.max_iter, history_size=10,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            ce = torch.nn.functional.cross_entropy(X @ W + b, target, reduction="none")
            loss = (w * ce).sum() / n + 0.5 * lam * (W * W).sum()
            loss.backward()
            return loss

        if k > 1:
            # Small matmuls: one thread is as fast, and immune to the OpenMP oversubscription
            # that made 2-thread fits 50x slower on a busy machine.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                opt.step(closure)
            finally:
                torch.set_num_threads(threads)
        self.coef_, self.intercept_ = W.detach().numpy(), b.detach().numpy()
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float32) - self.mean_) / self.scale_
        return z @ self.coef_ + self.intercept_

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = self.decision_function(x)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(x), axis=1)]

    # ------------------------------------------------------------------ persistence

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The fitted weights as named arrays (class names travel separately, as JSON)."""
        return {f"{prefix}.mean": self.mean_, f"{prefix}.scale": self.scale_, f"{prefix}.coef": self.coef_,
                f"{prefix}.intercept": self.intercept_}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str, classes: Sequence[Any]) -> LinearProbe:
        probe = cls()
        probe.classes_ = np.asarray(list(classes), dtype=object)
        probe.mean_ = np.asarray(arrays[f"{prefix}.mean"], dtype=np.float32)
        probe.scale_ = np.asarray(arrays[f"{prefix}.scale"], dtype=np.float32)
        probe.coef_ = np.asarray(arrays[f"{prefix}.coef"], dtype=np.float32)
        probe.intercept_ = np.asarray(arrays[f"{prefix}.intercept"], dtype=np.float32)
        return probe


def fit_probe(x: np.ndarray, y: Sequence[Any], *, C: float = 1.0, class_weight: str | None = None,
              max_iter: int = 100) -> LinearProbe:
    """A fitted :class:`LinearProbe`."""
    return LinearProbe(C, max_iter=max_iter, class_weight=class_weight).fit(x, y)


__all__ = ["LinearProbe", "fit_probe"]
