"""`--runner ray`: block jobs on a Ray Data actor pool, on this machine or a cluster.

The rows go to Ray as blocks, `map_batches` runs the job's worker in an
`ActorPoolStrategy` pool (the worker, and so the model, is built once per actor; one GPU
per actor when the cluster has GPUs), and the driver commits each finished block as it
streams back. What rests on Ray: an actor whose process dies is restarted and its
in-flight block re-run (Ray Data's defaults: `max_restarts=-1`, `max_task_retries=-1`);
Python exceptions are not retried (`actor_task_retry_on_errors` stays off: a
deterministic error would otherwise be retried forever), and `max_errored_blocks` is
never set (it drops rows). The embed worker catches per-row problems itself.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shopclip.catalog import Catalog
from shopclip.models import DualEncoder
from shopclip.pipeline.embed import EmbedResult
from shopclip.pipeline.runners.base import (
    Batch,
    BlockJob,
    RunnerError,
    RunnerUnavailableError,
    auto_block_size,
    block_count,
    commit_all,
)

log = logging.getLogger(__name__)
INSTALL_HINT = "the ray runner needs Ray: pip install 'shopclip[ray]'"
START_HINT = ("start one with `ray start --head` (then --address auto, or HEAD_IP:6379 from another machine), "
              "or leave out --address to start one in this process")


def import_ray() -> Any:
    """`ray`, with Ray's token auth off (it would write a token file into the home folder); one line if missing."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RunnerUnavailableError(INSTALL_HINT) from None
    return ray


def _die_once(marker: str) -> None:
    """Fault injection for tests: the first actor to get here creates `marker` and dies (a real process exit)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os._exit(1)


class _BlockActor:
    """What Ray runs in each actor: the job's worker, built once, called per block."""

    def __init__(self, worker: type, worker_kwargs: dict[str, Any], kill_marker: str | None = None) -> None:
        self.worker = worker(**worker_kwargs)
        self.kill_marker = kill_marker

    def __call__(self, batch: Batch) -> Batch:
        if self.kill_marker:
            _die_once(self.kill_marker)
        return self.worker(batch)


@dataclass
class RayRunner:
    """Run block jobs on Ray.

    `address`: None starts a Ray instance inside this process (`ray.init`, `local_cpus`
    CPUs) and stops it afterwards; "auto" joins the cluster `ray start --head` started on
    this machine; "HOST:6379" a cluster's head; "ray://HOST:10001" through Ray Client.
    An already initialised Ray (a notebook, a test) is used as it is.
    """

    address: str | None = None
    actors: int | None = None  # actor-pool size; default: one per GPU (GPU jobs), else CPUs / cpus_per_actor
    cpus_per_actor: float | None = None  # default: 1 on CPU clusters; a GPU actor gets its share of CPUs (≤ 8) to decode
    local_cpus: int | None = None
    name: str = "ray"

    # ------------------------------------------------------------------ cluster
    def connect(self) -> bool:
        """Join (or start) the cluster; True when this call started a local instance that it must stop."""
        ray = import_ray()
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        if self.address is None:
            kwargs.update(num_cpus=self.local_cpus, include_dashboard=False)
        else:
            check_reachable(self.address)
        try:
            ray.init(address=self.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RunnerError(f"cannot reach a Ray cluster at {self.address or 'a local instance'}: "
                              f"{_first_line(e)}; {START_HINT}") from None
        return self.address is None

    def disconnect(self, started: bool) -> None:
        if started:
            import_ray().shutdown()

    def pool(self, ray: Any, job: BlockJob) -> tuple[int, dict[str, Any]]:
        """(actors, per-actor resources) for this job on this cluster."""
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0)) if job.gpu else 0
        cpus = float(res.get("CPU", 1))
        if gpus:
            per = self.cpus_per_actor or float(min(8, max(1, int(cpus // gpus))))
            size, remote = self.actors or gpus, {"num_gpus": 1, "num_cpus": per}
        else:
            per = self.cpus_per_actor or 1.0
            size, remote = self.actors or max(1, int(cpus // per)), {"num_cpus": per}
        return max(1, size), remote

    # ------------------------------------------------------------------ jobs
    def run(self, job: BlockJob, *, progress: bool = True) -> int:
        """Stream every block through the actor pool; commit each on this driver as it arrives (any order)."""
        if not len(job):
            return 0
        started = self.connect()
        ray = import_ray()
        try:
            import pyarrow as pa

            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # ours counts committed products, which is what resumes
            ctx.actor_task_retry_on_errors = False  # process deaths are retried; deterministic errors are not
            size, remote = self.pool(ray, job)
            blocks = job.blocks(job.block_size or auto_block_size(len(job), size))
            size = min(size, len(blocks))  # an actor without a block would only load the model
            ds = ray.data.from_arrow([pa.table({k: list(v) for k, v in b.items()}) for b in blocks])
            out = ds.map_batches(
                _BlockActor,
                fn_constructor_kwargs={"worker": job.worker, "worker_kwargs": job.worker_kwargs,
                                       "kill_marker": os.environ.get("SHOPCLIP_RAY_KILL_ACTOR_ONCE") or None},
                batch_size=block_count(blocks[0]), batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=size),
                **remote,
            )
            log.info("%s: %d rows in %d blocks on %d actors (%s)", job.name, len(job), len(blocks), size, remote)
            return commit_all(job, out.iter_batches(batch_size=None, batch_format="numpy"), progress=progress,
                              desc=f"{job.name} (ray, {size} actors)")
        finally:
            self.disconnect(started)

    def embed(self, catalog: Catalog, out: str | Path, model: DualEncoder, model_ref: str, *,
              texts: dict[str, str] | None = None, images: dict[str, Path] | None = None, dtype: str = "float16",
              progress: bool = True, feature_cache: str | Path | None = None,
              block_size: int | None = None) -> EmbedResult:
        """Embed on the cluster. `feature_cache` is not used: actors on other machines compute the towers."""
        from shopclip.pipeline.embed_blocks import embed_with_runner

        started = self.connect()  # before the store is touched: an unreachable cluster costs nothing
        try:
            return embed_with_runner(self, catalog, out, model, model_ref, texts=texts, images=images, dtype=dtype,
                                     progress=progress, block_size=block_size)
        finally:
            self.disconnect(started)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on a HOST:PORT nobody listens on (ray.init would wait minutes for its GCS)."""
    target = address.removeprefix("ray://")
    if address == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as e:
        raise RunnerError(f"cannot reach a Ray cluster at {address}: {_first_line(e)}; {START_HINT}") from None
