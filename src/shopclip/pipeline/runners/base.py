"""The seam between a per-product batch job and where it runs.

A per-product job (embedding today; grounding and enrichment fit the same shape) is a
:class:`BlockJob`: the rows still to do, a *worker* class that loads its heavy state once
(a model, a localiser, an LLM client) and turns one block of rows into one block of
results, and a *commit* function that makes one finished block durable on the driver.
The job decides what is already done (resume) before it is handed over, so a runner only
moves blocks: :class:`~shopclip.pipeline.runners.local.LocalRunner` in this process,
:class:`~shopclip.pipeline.runners.ray_data.RayRunner` in a Ray Data actor pool on any
number of machines. Blocks are committed one by one as they finish, in any order; the
job's `finish` runs once after the last one.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

#: A block of rows or results: column name → array with one entry (or row) per product.
Batch = dict[str, np.ndarray]


class RunnerError(RuntimeError):
    """A runner cannot run here (missing package, unreachable cluster): one line saying the fix."""


class RunnerUnavailableError(RunnerError):
    """The runner's optional dependency is not installed."""


@dataclass
class BlockJob:
    """A per-product job cut into blocks; see the module docstring.

    `worker(**worker_kwargs)` is constructed once per process (per Ray actor) and called
    once per block with a :data:`Batch` of `rows` columns; it returns a Batch of results,
    one row per input row (a row that failed says so in its own columns, it is never
    dropped). `commit(result)` runs on the driver for each finished block and must be
    idempotent per product id (a retried block may be committed after a crash).
    """

    name: str
    rows: Batch
    worker: type
    worker_kwargs: dict[str, Any] = field(default_factory=dict)
    commit: Callable[[Batch], None] = lambda batch: None
    block_size: int | None = None  # rows per block; None = the runner's choice (see auto_block_size)
    gpu: bool = False  # the worker can use a GPU when the cluster has one

    def __len__(self) -> int:
        return block_count(self.rows)

    def blocks(self, size: int) -> list[Batch]:
        size = max(1, size)
        return [{k: v[i : i + size] for k, v in self.rows.items()} for i in range(0, len(self), size)]


def auto_block_size(rows: int, workers: int, *, per_worker: int = 4, lo: int = 8, hi: int = 1024) -> int:
    """Rows per block: about `per_worker` blocks for each worker (so a slow or restarted one
    does not leave the others idle at the end), but at least `lo` rows (per-block overhead)
    and at most `hi` (a block is one store part and one retry unit)."""
    return max(lo, min(hi, -(-rows // max(1, workers * per_worker))))


class Runner(Protocol):
    """Where block jobs run; `name` is what `--runner` says."""

    name: str

    def run(self, job: BlockJob, *, progress: bool = True) -> int:
        """Run every block of `job`, committing each as it finishes; returns the rows committed."""
        ...


def block_count(batch: Batch) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def commit_all(job: BlockJob, results: Iterable[Batch], *, progress: bool, desc: str) -> int:
    """Commit each finished block as it arrives (a progress bar counts committed rows); returns the rows."""
    bar = progress_bar(progress, len(job), desc)
    done = 0
    try:
        for n, result in enumerate(results, 1):
            job.commit(result)
            done += block_count(result)
            if bar is not None:
                bar.update(block_count(result))
            maybe_kill_driver(n)
    finally:
        if bar is not None:
            bar.close()
    return done


def kill_after_blocks() -> int:
    """SHOPCLIP_RUNNER_KILL_AFTER_BLOCKS=k makes the driver SIGKILL itself after committing k blocks (resume tests)."""
    return int(os.environ.get("SHOPCLIP_RUNNER_KILL_AFTER_BLOCKS", "0") or 0)


def maybe_kill_driver(committed_blocks: int) -> None:
    if committed_blocks == kill_after_blocks():
        os.kill(os.getpid(), signal.SIGKILL)  # fault injection: a real kill -9 between two commits


def progress_bar(progress: bool, total: int, desc: str) -> Any:
    if not progress or not total:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="product", dynamic_ncols=True)
