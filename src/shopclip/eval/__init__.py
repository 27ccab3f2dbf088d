"""Evaluation: retrieval and recommendation metrics, e-CLIP's downstream tasks, baselines, reports.

Entry point: :func:`run_eval` (the ``shopclip eval`` command). Metrics live in
:mod:`shopclip.eval.metrics` and import nothing beyond numpy; the tasks need the
``eval`` extra (scikit-learn, matplotlib) and are imported lazily here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_BASELINES", "EvalConfig", "run_eval"]


def __getattr__(name: str) -> Any:
    if name in ("EvalConfig", "run_eval"):
        from shopclip.eval import runner

        return getattr(runner, name)
    if name == "DEFAULT_BASELINES":
        from shopclip.eval.embedders import DEFAULT_BASELINES

        return DEFAULT_BASELINES
    raise AttributeError(f"module 'shopclip.eval' has no attribute {name!r}")
