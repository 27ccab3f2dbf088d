"""Where per-product batch jobs run: `local` (this process, the default) or `ray` (a Ray Data actor pool).

    runner = get_runner("ray", address="auto")
    runner.embed(catalog, "work/embeddings", model, "default")

See :mod:`shopclip.pipeline.runners.base` for the block-job seam that grounding and
enrichment would plug into.
"""

from __future__ import annotations

from typing import Any

from shopclip.pipeline.runners.base import Batch, BlockJob, Runner, RunnerError, RunnerUnavailableError
from shopclip.pipeline.runners.local import LocalRunner

RUNNERS = ("local", "ray")

__all__ = ["RUNNERS", "Batch", "BlockJob", "LocalRunner", "Runner", "RunnerError", "RunnerUnavailableError",
           "check_runner", "get_runner"]


def check_runner(name: str, address: str | None = None) -> None:
    """Refuse an unknown runner, an address without Ray, or a missing `ray` before any work starts."""
    if name not in RUNNERS:
        raise RunnerError(f"unknown runner {name!r}; runners: {', '.join(RUNNERS)}")
    if address and name != "ray":
        raise RunnerError(f"--address {address} needs --runner ray")
    if name == "ray":
        from shopclip.pipeline.runners.ray_data import check_reachable, import_ray

        import_ray()
        if address:
            check_reachable(address)


def get_runner(name: str = "local", *, address: str | None = None, **options: Any) -> Any:
    """A runner by its `--runner` name; options go to its constructor (e.g. `actors=4` for ray)."""
    check_runner(name, address)
    if name == "ray":
        from shopclip.pipeline.runners.ray_data import RayRunner

        return RayRunner(address=address, **options)
    return LocalRunner(**options)
