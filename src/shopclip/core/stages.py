"""What a build stage is, in the lowest layer so step packages can describe theirs without importing the pipeline.

`grounding`, `enrich` and `train` each expose a factory returning a :class:`Stage`;
`shopclip.pipeline.build` imports those factories and decides the order. The callables
receive the pipeline's build context (typed loosely here: core knows nothing above it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _no_outputs(ctx: Any) -> list[Path]:
    return []


def _always(ctx: Any) -> bool:
    return True


@dataclass
class Stage:
    """One cached step of `shopclip build`: skipped when `fingerprint(ctx)` matches the recorded one."""

    name: str
    fingerprint: Callable[[Any], str]
    run: Callable[[Any], str]  # returns a one-line summary
    outputs: Callable[[Any], list[Path]] = _no_outputs
    enabled: Callable[[Any], bool] = _always
    # Runs even when skipped, to restore what later stages read from ctx (e.g. text overrides).
    restore: Callable[[Any], None] | None = None
