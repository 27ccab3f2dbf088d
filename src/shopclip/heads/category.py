"""The category head: one calibrated probe over category paths, decoded top-down so that a
predicted leaf always comes with its parents.

Classes are full paths ("Apparel > Topwear > Tshirts"). A path with fewer than
``min_count`` training products is folded into its parent, repeatedly, so a long tail of
rare leaves still teaches the level above it ("Home Furnishing > Kitchen & Dining Linen")
instead of being dropped. The probability of any node of the tree is the sum of its
classes' probabilities, so every level's confidence is a calibrated probability too.

Decoding walks down from the root: at each node it takes the child with the most
probability mass, or stops when the node is itself a class and outweighs every child.
Confidence can only fall on the way down, so a level is "sure" when its mass reaches
that depth's threshold (chosen on the validation split for a target accuracy), and the
path is cut at the first unsure level.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shopclip.heads.calibration import expected_calibration_error
from shopclip.heads.classifier import DEFAULT_TARGET_ACCURACY, NEVER, ClassHead
from shopclip.heads.thresholds import abstain_threshold, coverage_at

SEP = " > "
Path = tuple[str, ...]


def as_path(category: str | Sequence[str] | None) -> Path:
    """("A", "B") from "A > B", ["A", "B"] or None (the empty path)."""
    if not category:
        return ()
    parts = category.split(">") if isinstance(category, str) else list(category)
    return tuple(p.strip() for p in parts if str(p).strip())


def collapse(paths: Sequence[Path], min_count: int) -> list[Path]:
    """The class paths: each path with ``min_count`` products, after rarer paths were folded
    into their parents (deepest level first). Paths whose whole top level is rarer are dropped."""
    counts: Counter[Path] = Counter(p for p in paths if p)
    depth = max((len(p) for p in counts), default=0)
    for d in range(depth, 1, -1):
        for p in [p for p in counts if len(p) == d and counts[p] < min_count]:
            counts[p[:-1]] += counts.pop(p)
    return sorted(p for p, n in counts.items() if n >= min_count)


@dataclass
class CategoryTree:
    """The classes and every prefix of them (the nodes), with which classes sit under which node."""

    classes: list[Path]

    def __post_init__(self) -> None:
        nodes = sorted({c[:d] for c in self.classes for d in range(1, len(c) + 1)})
        self.nodes: list[Path] = nodes
        self.node_index = {n: i for i, n in enumerate(nodes)}
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.under = np.zeros((len(self.classes), len(nodes)), dtype=np.float64)  # class -> its node and ancestors
        for ci, c in enumerate(self.classes):
            for d in range(1, len(c) + 1):
                self.under[ci, self.node_index[c[:d]]] = 1.0
        self.children: dict[Path, list[int]] = {}
        for i, n in enumerate(nodes):
            self.children.setdefault(n[:-1], []).append(i)
        self.depth = max((len(c) for c in self.classes), default=0)

    def map_path(self, path: Path) -> Path | None:
        """The class a true path belongs to: itself, or the deepest class above it (None if none)."""
        for d in range(len(path), 0, -1):
            if path[:d] in self.class_index:
                return path[:d]
        return None

    def masses(self, proba: np.ndarray) -> np.ndarray:
        """(n, n_nodes): each node's probability, the sum over the classes under it."""
        return np.asarray(proba, dtype=np.float64) @ self.under

    def decode(self, proba: np.ndarray) -> list[tuple[Path, list[float]]]:
        """Per row, the top-down path and each level's probability (non-increasing)."""
        mass = self.masses(proba)
        out = []
        for r in range(mass.shape[0]):
            node: Path = ()
            conf: list[float] = []
            while True:
                kids = self.children.get(node, [])
                if not kids:
                    break
                best = max(kids, key=lambda i: mass[r, i])
                stay = proba[r, self.class_index[node]] if node in self.class_index else -1.0
                if stay >= mass[r, best]:
                    break
                node = self.nodes[best]
                conf.append(float(mass[r, best]))
            out.append((node, conf))
        return out


@dataclass
class CategoryPrediction:
    """A decoded path, each level's probability, and how many leading levels are sure."""

    path: Path
    confidence: list[float]
    sure: int

    @property
    def unsure(self) -> bool:
        return self.sure < len(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {"path": SEP.join(self.path), "levels": list(self.path),
                "confidence": [round(c, 4) for c in self.confidence],
                "decided": SEP.join(self.path[: self.sure]) or None, "unsure": self.unsure}


@dataclass
class CategoryHead:
    """A :class:`ClassHead` over category paths, a tree to decode them, a threshold per depth."""

    tree: CategoryTree
    head: ClassHead
    thresholds: list[float] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, x_train: np.ndarray, paths_train: Sequence[Any], x_val: np.ndarray | None = None,
            paths_val: Sequence[Any] | None = None, *, C: float = 0.1, min_count: int = 5,
            target_accuracy: float = DEFAULT_TARGET_ACCURACY) -> CategoryHead | None:
        """Fit on the training rows (rare paths folded upwards), calibrate and choose each
        depth's threshold on the validation rows. None with fewer than two classes."""
        tr_paths = [as_path(p) for p in paths_train]
        tree = CategoryTree(collapse(tr_paths, min_count))
        labels = [_key(tree.map_path(p)) for p in tr_paths]
        val_labels = [_key(tree.map_path(as_path(p))) for p in (paths_val or [])]
        head = ClassHead.fit(x_train, labels, x_val, val_labels if x_val is not None else None,
                             C=C, classes=[SEP.join(c) for c in tree.classes], target_accuracy=target_accuracy)
        if head is None:
            return None
        tree = CategoryTree([as_path(c) for c in head.classes])  # the probe's class order
        out = cls(tree=tree, head=head, thresholds=[0.0] * tree.depth)
        out.metrics = {"n_train": head.metrics.get("n_train"), "n_classes": len(tree.classes),
                       "n_paths_in_train": len(set(tr_paths) - {()}), "min_count": min_count, "C": C}
        if x_val is not None and paths_val is not None and any(as_path(p) for p in paths_val):
            val = [i for i, p in enumerate(paths_val) if as_path(p)]
            decoded = tree.decode(head.proba(np.asarray(x_val)[val]))
            truth = [as_path(paths_val[i]) for i in val]
            for d in range(tree.depth):
                conf, correct = _level(decoded, truth, d)
                if conf.size:
                    out.thresholds[d] = min(abstain_threshold(conf, correct, target_accuracy), NEVER)
            out.metrics["validation"] = out.score(np.asarray(x_val)[val], truth)
            out.metrics["target_accuracy"] = target_accuracy
        return out

    # ------------------------------------------------------------------ prediction

    def predict(self, x: np.ndarray) -> list[CategoryPrediction]:
        out = []
        for path, conf in self.tree.decode(self.head.proba(x)):
            sure = 0
            while sure < len(path) and conf[sure] >= self._threshold(sure):
                sure += 1
            out.append(CategoryPrediction(path, conf, sure))
        return out

    def _threshold(self, depth: int) -> float:
        return self.thresholds[depth] if depth < len(self.thresholds) else self.thresholds[-1]

    def score(self, x: np.ndarray, paths: Sequence[Any]) -> dict[str, Any]:
        """Leaf and top-level accuracy at full coverage, ECE, and coverage at each depth's threshold.

        ``leaf_accuracy`` is strict: the decoded path must equal the true path, so products
        whose leaf was too rare to be a class count as wrong; ``leaf_accuracy_vocabulary``
        compares with the class the true path maps to (what the head can name).
        """
        rows = [i for i, p in enumerate(paths) if as_path(p)]
        if not rows:
            return {"n": 0}
        truth = [as_path(paths[i]) for i in rows]
        proba = self.head.proba(np.asarray(x)[rows])
        decoded = self.tree.decode(proba)
        leaf_conf = np.asarray([c[-1] if c else 0.0 for _, c in decoded])
        leaf_ok = np.asarray([p == t for (p, _), t in zip(decoded, truth, strict=True)])
        vocab = [self.tree.map_path(t) for t in truth]
        vocab_ok = np.asarray([p == v for (p, _), v in zip(decoded, vocab, strict=True)])
        flat = [self.tree.classes[i] for i in proba.argmax(1)]
        top_conf, top_ok = _level(decoded, truth, 0)
        out: dict[str, Any] = {
            "n": len(rows),
            "leaf_accuracy": float(leaf_ok.mean()),
            "leaf_accuracy_vocabulary": float(vocab_ok.mean()),
            "leaf_accuracy_flat_argmax": float(np.mean([f == t for f, t in zip(flat, truth, strict=True)])),
            "top_accuracy": float(top_ok.mean()),
            "ece_leaf": expected_calibration_error(leaf_conf, vocab_ok),
            "ece_top": expected_calibration_error(top_conf, top_ok),
            "n_leaf_not_a_class": int(sum(v != t for v, t in zip(vocab, truth, strict=True))),
            "levels": [],
        }
        for d in range(self.tree.depth):
            conf, correct = _level(decoded, truth, d)
            if conf.size:
                at = coverage_at(conf, correct, self._threshold(d))
                out["levels"].append({"depth": d + 1, "n": int(conf.size), "accuracy": float(correct.mean()),
                                      "threshold": self._threshold(d), "coverage": at["coverage"],
                                      "accuracy_at_threshold": at["accuracy"]})
        sure = [p.sure == len(p.path) for p in self.predict(np.asarray(x)[rows])]
        out["leaf_coverage"] = float(np.mean(sure))
        out["leaf_accuracy_at_threshold"] = float(leaf_ok[np.asarray(sure)].mean()) if any(sure) else float("nan")
        return out

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        return {**self.head.to_dict(), "thresholds": self.thresholds, "metrics": self.metrics,
                "probe_metrics": self.head.metrics}

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return self.head.arrays(prefix)

    @classmethod
    def from_saved(cls, d: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str) -> CategoryHead:
        head = ClassHead.from_saved({**d, "metrics": d.get("probe_metrics", {})}, arrays, prefix)
        return cls(CategoryTree([as_path(c) for c in head.classes]), head, [float(t) for t in d["thresholds"]],
                   dict(d.get("metrics", {})))


def _key(path: Path | None) -> str | None:
    return SEP.join(path) if path else None


def _level(decoded: list[tuple[Path, list[float]]], truth: list[Path], d: int) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and correctness at depth ``d`` over rows whose true path reaches it; a decode
    that stopped above it answers nothing there (confidence 0, wrong)."""
    conf, ok = [], []
    for (path, c), t in zip(decoded, truth, strict=True):
        if len(t) <= d:
            continue
        conf.append(c[d] if len(c) > d else 0.0)
        ok.append(len(path) > d and path[: d + 1] == t[: d + 1])
    return np.asarray(conf, dtype=np.float64), np.asarray(ok, dtype=bool)


__all__ = ["SEP", "CategoryHead", "CategoryPrediction", "CategoryTree", "as_path", "collapse"]
