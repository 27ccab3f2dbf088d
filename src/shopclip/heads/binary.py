"""Binary heads (``labels.adult``, ``labels.restricted``, …): a calibrated probability and a
decision at a precision target; and the zero-shot fallback for catalogs without labels.

The labelled head is a class-balanced probe (positives are rare) whose score is mapped to
a probability by a :class:`~shopclip.heads.calibration.BinaryCalibrator` fitted on the
validation split; the decision threshold is the lowest probability at which validation
precision reaches the target (the most recall at that precision).

Without labels nothing can be calibrated or checked. :class:`ZeroShotBinary` scores a
listing by how much closer it is to prompts describing the positive class than to
prompts describing ordinary products, and every output it makes says it is
uncalibrated: the score ranks listings, it is not a probability, and no decision is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shopclip.heads.calibration import BinaryCalibrator, expected_calibration_error
from shopclip.heads.probe import LinearProbe, fit_probe
from shopclip.heads.thresholds import threshold_at_precision

DEFAULT_PRECISION = 0.9
_TRUE = {"1", "true", "yes", "y", "t", "adult", "nsfw", "positive"}
_FALSE = {"0", "false", "no", "n", "f", "safe", "sfw", "negative"}

ADULT_PROMPTS = (
    ("an adult product", "a sexually explicit adult product", "erotic adult toys and lingerie"),
    ("a product", "an everyday product for the whole family", "a safe product for all ages"),
)


def parse_binary(value: Any) -> int | None:
    """1 / 0 for the usual spellings of a binary label, None when unlabelled or unreadable."""
    if value is None or isinstance(value, float) and value != value:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return 1 if value > 0 else 0
    s = str(value).strip().lower()
    if s in _TRUE:
        return 1
    if s in _FALSE:
        return 0
    return None


def binary_label_names(labels: Sequence[dict[str, Any]], min_positive: int = 5) -> list[str]:
    """Labels with at least ``min_positive`` products on each side."""
    counts: dict[str, list[int]] = {}
    for lab in labels:
        for name, value in (lab or {}).items():
            v = parse_binary(value)
            if v is not None:
                counts.setdefault(name, [0, 0])[v] += 1
    return sorted(n for n, (neg, pos) in counts.items() if min(neg, pos) >= min_positive)


@dataclass
class BinaryHead:
    """Balanced probe → calibrated probability → decision at a precision target."""

    name: str
    probe: LinearProbe
    calibrator: BinaryCalibrator
    threshold: float
    precision_target: float
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, name: str, x_train: np.ndarray, y_train: Sequence[int | None], x_val: np.ndarray | None,
            y_val: Sequence[int | None] | None, *, C: float = 0.1,
            precision_target: float = DEFAULT_PRECISION) -> BinaryHead | None:
        """None unless the training rows hold both classes. Without both classes on the
        validation split the calibrator is the identity on the probe's own probability and
        the threshold 0.5, and ``metrics`` says the decision is uncalibrated."""
        tr = [i for i, v in enumerate(y_train) if v is not None]
        ytr = np.asarray([y_train[i] for i in tr])
        if len(set(ytr.tolist())) < 2:
            return None
        probe = fit_probe(np.asarray(x_train)[tr], ytr, C=C, class_weight="balanced")
        va = [i for i, v in enumerate(y_val or []) if v is not None]
        yva = np.asarray([y_val[i] for i in va]) if va else np.zeros(0)  # type: ignore[index]
        metrics: dict[str, Any] = {"n_train": len(tr), "positives_train": int(ytr.sum()), "C": C}
        if x_val is None or len(set(yva.tolist())) < 2:
            head = cls(name, probe, BinaryCalibrator("platt", 1.0, 0.0), 0.5, precision_target, metrics)
            metrics["calibration"] = "none: the validation split does not hold both classes"
            return head
        raw = _logit(probe, np.asarray(x_val)[va])
        cal = BinaryCalibrator.fit(raw, yva)
        p = cal(raw)
        thr = threshold_at_precision(yva, p, precision_target)
        head = cls(name, probe, cal, min(thr, 1.0 + 1e-6), precision_target, metrics)
        metrics["validation"] = head.score(np.asarray(x_val)[va], yva.tolist())
        return head

    def proba(self, x: np.ndarray) -> np.ndarray:
        return self.calibrator(_logit(self.probe, x))

    def score(self, x: np.ndarray, y: Sequence[int | None]) -> dict[str, Any]:
        rows = [i for i, v in enumerate(y) if v is not None]
        if not rows:
            return {"n": 0}
        t = np.asarray([y[i] for i in rows]) > 0
        p = self.proba(np.asarray(x)[rows])
        flag = p >= self.threshold
        tp = int((flag & t).sum())
        return {"n": len(rows), "positives": int(t.sum()), "threshold": self.threshold,
                "precision_target": self.precision_target,
                "precision": tp / int(flag.sum()) if flag.any() else float("nan"),
                "recall": tp / int(t.sum()) if t.any() else float("nan"),
                "ece": expected_calibration_error(p, t), "calibration": self.calibrator.method}

    def to_dict(self) -> dict[str, Any]:
        return {"calibrator": self.calibrator.to_dict(), "threshold": self.threshold,
                "precision_target": self.precision_target, "metrics": self.metrics}

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return self.probe.arrays(prefix)

    @classmethod
    def from_saved(cls, name: str, d: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str) -> BinaryHead:
        return cls(name, LinearProbe.from_arrays(arrays, prefix, [0, 1]), BinaryCalibrator.from_dict(d["calibrator"]),
                   float(d["threshold"]), float(d["precision_target"]), dict(d.get("metrics", {})))


def _logit(probe: LinearProbe, x: np.ndarray) -> np.ndarray:
    z = probe.decision_function(np.asarray(x, dtype=np.float32))
    return z[:, 1] - z[:, 0]


UNCALIBRATED_NOTE = ("uncalibrated zero-shot score: no labelled products exist to fit or check it against, so it "
                     "ranks listings by how much closer they are to the positive prompts than to everyday-product "
                     "prompts; it is not a probability and no decision is made")


@dataclass
class ZeroShotBinary:
    """Prompt-margin score for a label nobody has annotated: cos(x, positive) - cos(x, negative)
    per modality, averaged over image and text. Always reported as uncalibrated."""

    name: str
    positive: np.ndarray
    negative: np.ndarray
    prompts: tuple[tuple[str, ...], tuple[str, ...]] = ADULT_PROMPTS

    @classmethod
    def from_model(cls, name: str, model: Any, prompts: tuple[tuple[str, ...], tuple[str, ...]] = ADULT_PROMPTS,
                   ) -> ZeroShotBinary:
        def mean_unit(texts: Sequence[str]) -> np.ndarray:
            v = np.asarray(model.encode_text(list(texts)), dtype=np.float32).mean(axis=0)
            return v / max(float(np.linalg.norm(v)), 1e-12)

        return cls(name, mean_unit(prompts[0]), mean_unit(prompts[1]), prompts)

    def score(self, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        margin = lambda x: x @ self.positive - x @ self.negative  # noqa: E731
        return (margin(np.asarray(image)) + margin(np.asarray(text))) / 2.0

    def to_dict(self) -> dict[str, Any]:
        return {"prompts": [list(p) for p in self.prompts], "calibrated": False, "note": UNCALIBRATED_NOTE}

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.positive": self.positive, f"{prefix}.negative": self.negative}

    @classmethod
    def from_saved(cls, name: str, d: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str) -> ZeroShotBinary:
        prompts = tuple(tuple(p) for p in d["prompts"])
        return cls(name, np.asarray(arrays[f"{prefix}.positive"]), np.asarray(arrays[f"{prefix}.negative"]),
                   prompts)  # type: ignore[arg-type]


__all__ = ["ADULT_PROMPTS", "DEFAULT_PRECISION", "UNCALIBRATED_NOTE", "BinaryHead", "ZeroShotBinary",
           "binary_label_names", "parse_binary"]
