"""A calibrated single-label head: a linear probe, a temperature fitted on the validation
split, and an abstain threshold that keeps the answered part accurate enough.

One class serves every multiclass task: the category (whose classes are category paths,
see :mod:`shopclip.heads.category`) and each attribute.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shopclip.heads.calibration import expected_calibration_error, fit_temperature, softmax
from shopclip.heads.probe import LinearProbe, fit_probe
from shopclip.heads.thresholds import abstain_threshold, coverage_at

DEFAULT_TARGET_ACCURACY = 0.9
NEVER = 1.0 + 1e-6  # a threshold above every probability: the head always abstains (JSON-safe, unlike inf)


def kept_classes(labels: Sequence[str | None], min_count: int) -> list[str]:
    """Labels seen at least ``min_count`` times, sorted."""
    counts = Counter(y for y in labels if y)
    return sorted(c for c, n in counts.items() if n >= min_count)


@dataclass
class ClassHead:
    """Probe + temperature + abstain threshold over a fixed list of classes."""

    classes: list[str]
    probe: LinearProbe
    temperature: float = 1.0
    threshold: float = 0.0  # confidence below which the head answers "unsure"
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, x_train: np.ndarray, y_train: Sequence[str | None], x_val: np.ndarray | None = None,
            y_val: Sequence[str | None] | None = None, *, C: float = 0.1, min_count: int = 5,
            target_accuracy: float = DEFAULT_TARGET_ACCURACY, classes: Sequence[str] | None = None,
            class_weight: str | None = None) -> ClassHead | None:
        """Fit on the rows whose label is a kept class; calibrate on the validation rows.

        Kept classes: ``classes`` when given, else labels with ``min_count`` training rows.
        None when fewer than two classes are left. Without validation rows the head keeps
        temperature 1 and threshold 0 (it never abstains) and says so in ``metrics``.
        """
        kept = list(classes) if classes is not None else kept_classes(y_train, min_count)
        at = {c: i for i, c in enumerate(kept)}
        tr = [i for i, y in enumerate(y_train) if y in at]
        if len(kept) < 2 or len({y_train[i] for i in tr}) < 2:
            return None
        probe = fit_probe(np.asarray(x_train)[tr], [y_train[i] for i in tr], C=C, class_weight=class_weight)
        head = cls(classes=[str(c) for c in probe.classes_], probe=probe)
        head.metrics = {"n_train": len(tr), "n_classes": len(head.classes), "C": C}
        va = [i for i, y in enumerate(y_val or []) if y in set(head.classes)]
        if x_val is None or not va:
            head.metrics["calibration"] = "none: no validation rows with a known class (temperature 1, never abstains)"
            return head
        xv = np.asarray(x_val)[va]
        yv = np.asarray([head.classes.index(y_val[i]) for i in va])  # type: ignore[index]
        logits = probe.decision_function(xv)
        head.temperature = fit_temperature(logits, yv)
        raw_conf, conf = softmax(logits).max(1), softmax(logits, head.temperature).max(1)
        correct = logits.argmax(1) == yv
        head.threshold = min(abstain_threshold(conf, correct, target_accuracy), NEVER)
        head.metrics["validation"] = {
            "n": len(va), "accuracy": float(correct.mean()), "temperature": head.temperature,
            "ece_uncalibrated": expected_calibration_error(raw_conf, correct),
            "ece": expected_calibration_error(conf, correct), "target_accuracy": target_accuracy,
            "threshold": head.threshold, **{f"at_threshold_{k}": v for k, v in
                                           coverage_at(conf, correct, head.threshold).items()}}
        return head

    # ------------------------------------------------------------------ prediction

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.probe.decision_function(np.asarray(x, dtype=np.float32))

    def proba(self, x: np.ndarray) -> np.ndarray:
        """(n, len(classes)) calibrated probabilities."""
        return softmax(self.logits(x), self.temperature)

    def predict(self, x: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Top class and its calibrated probability per row."""
        p = self.proba(x)
        top = p.argmax(1)
        return [self.classes[i] for i in top], p[np.arange(len(top)), top]

    def score(self, x: np.ndarray, y: Sequence[str | None]) -> dict[str, Any]:
        """Accuracy, ECE and coverage at the threshold on labelled rows; labels outside the
        vocabulary count as wrong in ``accuracy_all`` (the head cannot name them)."""
        rows = [i for i, v in enumerate(y) if v]
        if not rows:
            return {"n": 0}
        pred, conf = self.predict(np.asarray(x)[rows])
        truth = [y[i] for i in rows]
        known = np.asarray([t in set(self.classes) for t in truth])
        correct = np.asarray([p == t for p, t in zip(pred, truth, strict=True)])
        out: dict[str, Any] = {"n": len(rows), "n_in_vocabulary": int(known.sum()),
                               "accuracy": float(correct[known].mean()) if known.any() else float("nan"),
                               "accuracy_all": float(correct.mean()),
                               "ece": expected_calibration_error(conf[known], correct[known]),
                               "threshold": self.threshold}
        at = coverage_at(conf[known], correct[known], self.threshold)
        out.update({"coverage": at["coverage"], "accuracy_at_threshold": at["accuracy"]})
        return out

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        return {"classes": self.classes, "temperature": self.temperature, "threshold": self.threshold,
                "metrics": self.metrics}

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return self.probe.arrays(prefix)

    @classmethod
    def from_saved(cls, d: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str) -> ClassHead:
        return cls(classes=list(d["classes"]), probe=LinearProbe.from_arrays(arrays, prefix, d["classes"]),
                   temperature=float(d["temperature"]), threshold=float(d["threshold"]),
                   metrics=dict(d.get("metrics", {})))


__all__ = ["DEFAULT_TARGET_ACCURACY", "ClassHead", "kept_classes"]
