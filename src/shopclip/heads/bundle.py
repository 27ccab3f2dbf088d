"""All task heads of one model, saved as one folder, and what they say about a listing.

Folder layout (``shopclip heads train … --out DIR``)::

    heads.json        model it was fitted for, vocabularies, calibration, thresholds, metrics
    weights.npz       probe weights (numpy arrays, no pickle)
    neighbours/       faiss index of the labelled training products (fused view)
    neighbours.jsonl  their category, attributes and labels

Heads read the model's vectors, so they belong to one model: loading checks the model's
fingerprint and refuses heads fitted for another (refit them after retraining).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shopclip.core.io import atomic_write_json, read_json
from shopclip.heads.attributes import AttributeHead, canonical
from shopclip.heads.binary import BinaryHead, ZeroShotBinary
from shopclip.heads.category import SEP, CategoryHead, as_path
from shopclip.heads.features import Views
from shopclip.heads.matching import PairMatcher
from shopclip.heads.neighbours import Neighbours

FORMAT = "shopclip.heads/1"
HEADS_FILE = "heads.json"
WEIGHTS_FILE = "weights.npz"


class HeadsMismatchError(ValueError):
    """The heads were fitted on another model's vectors."""


@dataclass
class TaskHeads:
    model: dict[str, Any]  # ref, name, fingerprint, embed_dim of the model the heads read
    view: str = "fused"
    category: CategoryHead | None = None
    attributes: dict[str, AttributeHead] = field(default_factory=dict)
    binary: dict[str, BinaryHead] = field(default_factory=dict)
    zero_shot: dict[str, ZeroShotBinary] = field(default_factory=dict)
    matcher: PairMatcher | None = None
    neighbours: Neighbours | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ persistence

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        doc: dict[str, Any] = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "model": self.model, "view": self.view, "config": self.config,
                               "skipped": self.skipped}
        if self.category is not None:
            doc["category"] = self.category.to_dict()
            arrays.update(self.category.arrays("category"))
        doc["attributes"] = {}
        for name, h in self.attributes.items():
            doc["attributes"][name] = h.to_dict()
            arrays.update(h.arrays(f"attribute.{name}"))
        doc["binary"] = {}
        for name, b in self.binary.items():
            doc["binary"][name] = b.to_dict()
            arrays.update(b.arrays(f"binary.{name}"))
        doc["zero_shot"] = {}
        for name, z in self.zero_shot.items():
            doc["zero_shot"][name] = z.to_dict()
            arrays.update(z.arrays(f"zero_shot.{name}"))
        if self.matcher is not None:
            doc["matcher"] = self.matcher.to_dict()
            arrays.update(self.matcher.arrays("matcher"))
        doc["metrics"] = self.metrics
        tmp = folder / f".{WEIGHTS_FILE}.tmp"
        with open(tmp, "wb") as fp:
            np.savez(fp, **arrays)
        tmp.replace(folder / WEIGHTS_FILE)
        if self.neighbours is not None:
            self.neighbours.save(folder)
        atomic_write_json(folder / HEADS_FILE, _json_safe(doc))  # last: its presence marks finished heads
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, fingerprint: str | None = None) -> TaskHeads:
        """Open saved heads; with ``fingerprint`` (the model's), refuse heads fitted for another model."""
        folder = Path(folder)
        if not (folder / HEADS_FILE).exists():
            raise FileNotFoundError(f"no task heads in {folder} ({HEADS_FILE} missing); fit them with "
                                    f"`shopclip heads train CATALOG --model MODEL --out {folder}`")
        doc = read_json(folder / HEADS_FILE)
        if doc.get("format") != FORMAT:
            raise ValueError(f"{folder / HEADS_FILE}: format {doc.get('format')!r}, expected {FORMAT!r}")
        if fingerprint is not None and doc["model"].get("fingerprint") != fingerprint:
            raise HeadsMismatchError(
                f"the heads in {folder} were fitted for model {doc['model'].get('name')!r} "
                f"({str(doc['model'].get('fingerprint'))[:10]}), not the one in use ({fingerprint[:10]}); "
                f"refit them: shopclip heads train CATALOG --model MODEL --out {folder}")
        with np.load(folder / WEIGHTS_FILE, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        out = cls(model=doc["model"], view=doc.get("view", "fused"), config=doc.get("config", {}),
                  metrics=doc.get("metrics", {}), skipped=doc.get("skipped", {}))
        if "category" in doc:
            out.category = CategoryHead.from_saved(doc["category"], arrays, "category")
        out.attributes = {n: AttributeHead.from_saved(n, d, arrays, f"attribute.{n}")
                          for n, d in doc.get("attributes", {}).items()}
        out.binary = {n: BinaryHead.from_saved(n, d, arrays, f"binary.{n}") for n, d in doc.get("binary", {}).items()}
        out.zero_shot = {n: ZeroShotBinary.from_saved(n, d, arrays, f"zero_shot.{n}")
                         for n, d in doc.get("zero_shot", {}).items()}
        if "matcher" in doc:
            out.matcher = PairMatcher.from_saved(doc["matcher"], arrays, "matcher")
        if (folder / "neighbours.jsonl").exists():
            out.neighbours = Neighbours.load(folder)
        return out

    # ------------------------------------------------------------------ tagging

    def tag(self, views: Views, given: Sequence[dict[str, Any]], *, ids: Sequence[str | None] | None = None,
            neighbours: int = 3) -> list[dict[str, Any]]:
        """What the heads say about each listing, next to what its seller gave.

        ``given`` holds each listing's own ``category``, ``attributes`` and ``labels`` (any
        may be missing). Given values are never replaced: a missing attribute is filled
        only when the head is sure, a confident prediction that contradicts a given value
        is reported as a disagreement, and an unsure head says "unsure".
        """
        x = views[self.view]
        n = len(x)
        ids = list(ids) if ids is not None else [None] * n
        rows: list[dict[str, Any]] = [{"id": i} if i is not None else {} for i in ids]
        cats = self.category.predict(x) if self.category is not None else [None] * n
        attr_pred = {name: h.head.predict(x) for name, h in self.attributes.items()}
        bin_p = {name: b.proba(x) for name, b in self.binary.items()}
        zero = {name: z.score(views["image"], views["text"]) for name, z in self.zero_shot.items()
                if name not in self.binary}
        near = (self.neighbours.nearest(views["image"], views["text"], neighbours, ids)
                if self.neighbours is not None and neighbours > 0 else [[] for _ in range(n)])
        for r in range(n):
            g = given[r] if r < len(given) else {}
            row = rows[r]
            unsure: list[str] = []
            disagreements: list[dict[str, Any]] = []
            given_path = as_path(g.get("category"))
            pred = cats[r]
            if pred is not None:
                c = pred.to_dict()
                c["given"] = SEP.join(given_path) or None
                if given_path:
                    c["agrees"] = _path_agrees(given_path, pred.path[: pred.sure])
                    if not c["agrees"]:
                        disagreements.append({"field": "category", "given": c["given"], "predicted": c["decided"],
                                              "confidence": c["confidence"][pred.sure - 1]})
                if pred.unsure:
                    unsure.append("category" if not pred.sure else f"category level {pred.sure + 1}")
                row["category"] = c
            context = given_path or (pred.path if pred is not None else ())
            attrs_out: dict[str, Any] = {}
            fill: dict[str, str] = {}
            for name, h in self.attributes.items():
                if not h.applies(context):
                    continue
                value, conf = attr_pred[name][0][r], float(attr_pred[name][1][r])
                sure = conf >= h.head.threshold
                have = h.value_of(g.get("attributes") or {})
                entry: dict[str, Any] = {"predicted": value, "confidence": round(conf, 4), "given": have}
                if have is None:
                    entry["status"] = "filled" if sure else "unsure"
                    if sure:
                        fill[name] = value
                    else:
                        unsure.append(f"attributes.{name}")
                elif canonical(have) == canonical(value):
                    entry["status"] = "agrees"
                elif sure:
                    entry["status"] = "disagrees"
                    disagreements.append({"field": f"attributes.{name}", "given": have, "predicted": value,
                                          "confidence": round(conf, 4)})
                else:
                    entry["status"] = "given"  # an unsure head does not contest what the seller wrote
                attrs_out[name] = entry
            row["attributes"] = attrs_out
            row["fill"] = fill
            labels_out: dict[str, Any] = {}
            for name, b in self.binary.items():
                p = float(bin_p[name][r])
                labels_out[name] = {"probability": round(p, 4), "decision": bool(p >= b.threshold),
                                    "threshold": round(b.threshold, 4), "precision_target": b.precision_target,
                                    "calibrated": True, "calibration": b.calibrator.method,
                                    "given": _given_label(g, name)}
            for name, s in zero.items():
                labels_out[name] = {"score": round(float(s[r]), 4), "decision": None, "calibrated": False,
                                    "method": "zero-shot prompts", "note": self.zero_shot[name].to_dict()["note"]}
            row["labels"] = labels_out
            row["disagreements"] = disagreements
            row["unsure"] = unsure
            row["neighbours"] = near[r]
        return rows

    def describe(self) -> dict[str, Any]:
        """A short summary for logs and /healthz-like answers."""
        return {"model": self.model.get("name"), "fingerprint": str(self.model.get("fingerprint", ""))[:12],
                "category_classes": len(self.category.tree.classes) if self.category else 0,
                "attributes": sorted(self.attributes), "binary": sorted(self.binary),
                "zero_shot": sorted(self.zero_shot), "matcher": self.matcher is not None}


def _path_agrees(given: tuple[str, ...], decided: tuple[str, ...]) -> bool:
    """A sure prefix agrees with the given path when one is a prefix of the other (casefolded)."""
    a, b = [canonical(x) for x in given], [canonical(x) for x in decided]
    m = min(len(a), len(b))
    return a[:m] == b[:m]


def _given_label(given: dict[str, Any], name: str) -> int | None:
    from shopclip.heads.binary import parse_binary

    return parse_binary((given.get("labels") or {}).get(name))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


__all__ = ["FORMAT", "HeadsMismatchError", "TaskHeads"]
