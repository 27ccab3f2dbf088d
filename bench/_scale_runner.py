"""`runner` figure of bench/results/scale.json: embed products/s, local runner vs Ray runner, on this machine.

Both arms embed the same deterministic sample of real products from the sample catalog
(images + texts, the `default` model) into a fresh store, interleaved (local, ray, local,
ray, ...), in this process:

* local: what `shopclip embed` runs by default (`LocalRunner.embed`: threaded decode,
  torch's threads on every core, the tower-feature cache in a fresh folder, as the build
  stage passes it);
* local_1thread: the same with `torch.set_num_threads(1)` (one thing varied: intra-op
  threads), which says how much of the Ray/local ratio is one-thread-per-process;
* ray: `RayRunner.embed` on a Ray instance started for that arm (`ray.init(num_cpus=<all
  cores>)`, one 1-CPU actor per core (Ray gives each one torch thread), blocks chosen by
  `auto_block_size`), stopped after it, so the local arms run without Ray's processes
  around. Reported apart: the cluster start, the whole job (actor start-up and model
  loads included), and the steady rate: rows over the seconds the actors spent inside
  the worker, times the number of actors (what a long job, whose start-up is amortised,
  approaches when no actor idles).

Three rounds of the three arms (480 products; --quick: one round of 16). The machine is
shared and others' work only ever slows an arm down, so the headline figure of each arm is
its best round, with the median beside it and, per round, the share of the machine's CPU
that was busy meanwhile.

`measure_runner(quick)` returns the dict that `bench/scale.py` stores under "runner";
run this file alone for a standalone check:

    flock /work/heavy.lock .venv/bin/python bench/_scale_runner.py            # writes bench/results/scale_runner.json
    .venv/bin/python bench/_scale_runner.py --quick --out /tmp/runner.json    # ~1 min, 16 products
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SAMPLE, Provenance, _cpu_times, write_result  # noqa: E402
from shopclip.pipeline.embed_blocks import EmbedWorker  # noqa: E402


class _TimedWorker(EmbedWorker):
    """The embed worker, also saying how long it spent on each block (an extra column the store ignores)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        out = super().__call__(batch)
        out["busy_seconds"] = np.full(len(out["id"]), time.perf_counter() - t0)
        return out


class _TimedRunner:
    """Delegates to a runner with the timed worker; records each block's rows and busy seconds."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name = inner, inner.name
        self.blocks: list[tuple[int, float]] = []

    def run(self, job: Any, *, progress: bool = True) -> int:
        commit = job.commit

        def timed(batch: Any) -> None:
            commit(batch)
            self.blocks.append((len(batch["id"]), float(batch["busy_seconds"][0])))

        job.commit, job.worker = timed, _TimedWorker
        return self.inner.run(job, progress=progress)

    def busy_rate(self) -> float:
        """Products per second of worker time: one actor's steady throughput."""
        return sum(n for n, _ in self.blocks) / sum(b for _, b in self.blocks)


def _local_arm(catalog: Any, model: Any, folder: Path, threads: int | None = None) -> dict[str, float]:
    import torch

    from shopclip.pipeline.runners import get_runner

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        t0 = time.perf_counter()
        res = get_runner("local").embed(catalog, folder / "emb", model, "default", progress=False,
                                        feature_cache=folder / "features")
        dt = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    assert res.embedded == len(catalog), res.summary()
    return {"seconds": dt, "products_per_s": len(catalog) / dt}


def _ray_arm(catalog: Any, model: Any, folder: Path, cpus: int) -> dict[str, Any]:
    import ray

    from shopclip.pipeline.embed_blocks import embed_with_runner
    from shopclip.pipeline.runners.ray_data import RayRunner

    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    start = time.perf_counter() - t0
    try:
        runner = _TimedRunner(RayRunner())
        t1 = time.perf_counter()
        res = embed_with_runner(runner, catalog, folder / "emb", model, "default", progress=False)
        job = time.perf_counter() - t1
    finally:
        ray.shutdown()
    assert res.embedded == len(catalog) and res.returned == len(catalog), res.summary()
    per_actor = runner.busy_rate()
    return {"cluster_start_seconds": start, "job_seconds": job, "products_per_s": len(catalog) / job,
            "busy_products_per_s_per_actor": per_actor, "steady_products_per_s": per_actor * cpus,
            "blocks": len(runner.blocks), "block_rows": max(n for n, _ in runner.blocks)}


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(vals), 3) if vals else None


def _best(rows: list[dict[str, Any]], key: str) -> float | None:
    """The least-disturbed run: the machine is shared, and others' work only ever slows an arm down."""
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(max(vals), 3) if vals else None


def _busy_share(arm: Any) -> dict[str, Any]:
    """Run an arm and add how busy the whole machine was meanwhile (all processes, this one included)."""
    before = _cpu_times()
    row = arm()
    after = _cpu_times()
    if before and after and after[1] > before[1]:
        row["machine_busy_share"] = round((after[0] - before[0]) / (after[1] - before[1]), 3)
    return row


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def measure_runner(quick: bool) -> dict[str, Any]:
    """Local vs Ray embed throughput on this machine; arms interleaved, each on a fresh store."""
    import ray.cloudpickle
    import torch

    from shopclip.catalog import Catalog
    from shopclip.models import load_model
    from shopclip.pipeline.build import sample_products

    if __name__ != "__main__":  # imported (bench/scale.py): ship the timed worker to the actors by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    n, repeats = (16, 1) if quick else (480, 3)
    cpus = os.cpu_count() or 1
    full = Catalog.load(SAMPLE / "catalog.jsonl")
    catalog = full.subset(p.id for p in sample_products(list(full), n))
    model = load_model("default")
    model.encode_image([catalog.image_path(p) for p in list(catalog)[:4]])  # first-call allocations, both arms
    local: list[dict[str, Any]] = []
    local1: list[dict[str, Any]] = []
    ray_rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="scale-runner-"))
    try:
        for r in range(repeats):
            local.append(_busy_share(lambda r=r: _local_arm(catalog, model, tmp / f"local{r}")))
            ray_rows.append(_busy_share(lambda r=r: _ray_arm(catalog, model, tmp / f"ray{r}", cpus)))
            local1.append(_busy_share(lambda r=r: _local_arm(catalog, model, tmp / f"local1-{r}", threads=1)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best = {"local": _best(local, "products_per_s"), "local_1thread": _best(local1, "products_per_s"),
            "ray": _best(ray_rows, "products_per_s"), "ray_steady": _best(ray_rows, "steady_products_per_s"),
            "ray_actor": _best(ray_rows, "busy_products_per_s_per_actor")}
    med = {"local": _median(local, "products_per_s"), "local_1thread": _median(local1, "products_per_s"),
           "ray": _median(ray_rows, "products_per_s"), "ray_steady": _median(ray_rows, "steady_products_per_s")}
    return {
        "workload": {"products": len(catalog), "repeats": repeats, "model": "default", "views": "image + text",
                     "catalog": "deterministic id-hash sample of ../shared/data/products (real photos and titles)",
                     "cpus": cpus, "ray_actors": cpus, "torch_threads_local": torch.get_num_threads(),
                     "order": "local, ray, local_1thread, repeated",
                     "headline": "best run of each arm (others' work on this shared machine only slows an arm); "
                                 "medians beside; machine_busy_share per run says how disturbed it was"},
        "local": {"products_per_s": best["local"], "median_products_per_s": med["local"], "runs": local},
        "local_1thread": {"products_per_s": best["local_1thread"], "median_products_per_s": med["local_1thread"],
                          "runs": local1},
        "ray": {"products_per_s": best["ray"], "median_products_per_s": med["ray"],
                "steady_products_per_s": best["ray_steady"], "median_steady_products_per_s": med["ray_steady"],
                "busy_products_per_s_per_actor": best["ray_actor"],
                "cluster_start_seconds": _median(ray_rows, "cluster_start_seconds"), "runs": ray_rows},
        "ratio_ray_over_local": _ratio(best["ray"], best["local"]),
        "ratio_ray_steady_over_local": _ratio(best["ray_steady"], best["local"]),
        "ratio_local_1thread_over_local": _ratio(best["local_1thread"], best["local"]),
        "median_ratio_ray_over_local": _ratio(med["ray"], med["local"]),
        "per_core_products_per_s": {"local": _ratio(best["local"], cpus), "local_1thread": best["local_1thread"],
                                    "ray_actor": best["ray_actor"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 products, one repeat (seconds; used by checks)")
    ap.add_argument("--out", type=Path, default=None,
                    help="results file (default: bench/results/scale_runner.json; a --quick run writes only here)")
    args = ap.parse_args()
    out = args.out or (None if args.quick else RESULTS / "scale_runner.json")
    prov = Provenance.start()
    result = {"runner": measure_runner(args.quick)}
    if out is not None:
        write_result(out, result, prov)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
