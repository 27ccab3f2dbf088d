"""Task heads: the e-CLIP downstream tasks as fitted, calibrated, saved models.

Category (hierarchical), attributes, binary labels (adult/restricted) and product
matching, each a linear probe on the model's listing vectors with probabilities
calibrated on the validation split and thresholds chosen there. The evaluation suite
(``shopclip.eval``) fits the very same heads for its report; the jobs that tag listings
and find duplicates (``shopclip.understand``, ``shopclip heads train``, ``tag``,
``dedupe``) load them from a folder. Imports only ``models``, ``index``, ``catalog`` and ``core``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AttributeHead", "BinaryHead", "CategoryHead", "ClassHead", "LinearProbe", "PairMatcher", "TaskHeads",
           "ZeroShotBinary"]

_LAZY = {
    "AttributeHead": "shopclip.heads.attributes", "BinaryHead": "shopclip.heads.binary",
    "CategoryHead": "shopclip.heads.category", "ClassHead": "shopclip.heads.classifier",
    "LinearProbe": "shopclip.heads.probe", "PairMatcher": "shopclip.heads.matching",
    "TaskHeads": "shopclip.heads.bundle", "ZeroShotBinary": "shopclip.heads.binary",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'shopclip.heads' has no attribute {name!r}")
