"""HTTP serving under a bounded load, and what HTTP costs over calling the engine directly.

1. Load: `shopclip serve` in its own process on 127.0.0.1; 2,000 requests (half text
   search, half similar items), 8 in flight at a time, over keep-alive connections.
   Every text query is distinct, so the server's query-embedding cache never helps.
2. Overhead: the same kinds of request one at a time over HTTP, and the same work
   in-process (`ServeState.search_text` / `.similar`, no HTTP); the ratio of the two
   medians is what the HTTP layer (uvicorn, FastAPI, JSON, loopback TCP) adds.

Client and server share this machine's cores, so throughput here is a floor.

    .venv/bin/python bench/serve.py                      # builds a 400-product sample once
    .venv/bin/python bench/serve.py --workdir demo-work  # or any built work folder
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT.parent / "shared" / "data" / "products" / "catalog.jsonl"

COLORS = ["black", "white", "red", "blue", "navy", "green", "grey", "brown", "pink", "yellow", "beige", "maroon",
          "olive", "purple", "orange", "silver", "gold", "teal", "cream", "charcoal"]
THINGS = ["running shoes", "casual shoes", "sandals", "flip flops", "t-shirt", "polo shirt", "kurta", "jeans",
          "track pants", "handbag", "backpack", "wallet", "belt", "analog watch", "sunglasses", "socks", "cap",
          "coffee mug", "table lamp", "bed sheet", "cushion cover", "perfume", "laptop sleeve", "dress", "scarf"]
WHO = ["", "men", "women", "kids", "unisex"]


def queries(n: int, seed: int) -> list[str]:
    """n distinct shopper-like queries ("women navy running shoes")."""
    combos = [" ".join(w for w in (who, c, t) if w) for who, c, t in itertools.product(WHO, COLORS, THINGS)]
    random.Random(seed).shuffle(combos)
    if n > len(combos):
        raise ValueError(f"only {len(combos)} distinct queries available")
    return combos[:n]


def pct(values: list[float]) -> dict[str, float]:
    s = sorted(values)

    def at(p: float) -> float:
        return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]  # nearest rank

    return {"p50": round(at(50), 3), "p95": round(at(95), 3), "p99": round(at(99), 3),
            "mean": round(statistics.fmean(s), 3), "max": round(s[-1], 3)}


def ensure_workdir(args: argparse.Namespace) -> Path:
    if args.workdir:
        return args.workdir
    work = ROOT / ".cache" / f"bench-serve-{args.sample}"
    from shopclip.pipeline.build import BuildOptions, build

    t0 = time.perf_counter()
    build(CATALOG, work, BuildOptions(sample=args.sample, progress=True))
    print(f"work folder {work} ready in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return work


def start_server(work: Path, port: int, threads: int | None) -> subprocess.Popen:
    code = ("import sys; from pathlib import Path; from shopclip.serve.cli import serve_command; "
            "serve_command(Path(sys.argv[1]), port=int(sys.argv[2]), "
            "threads=int(sys.argv[3]) or None, log_level='warning')")
    env = {**os.environ}
    env.pop("SHOPCLIP_API_KEY", None)
    return subprocess.Popen([sys.executable, "-c", code, str(work), str(port), str(threads or 0)], env=env)


async def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if (await c.get(f"{base}/healthz")).json().get("model_loaded"):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("server not ready")


async def load(base: str, jobs: list[tuple[str, str, dict]], concurrency: int) -> dict[str, Any]:
    """Run jobs (kind, path, params) with `concurrency` workers; latency per request in ms."""
    import httpx

    todo = iter(jobs)
    lat: dict[str, list[float]] = {}
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        async def worker() -> None:
            for kind, path, params in todo:
                t0 = time.perf_counter()
                try:
                    r = await client.get(path, params=params)
                    ok = r.status_code == 200 and len(r.json()["results"]) == params["k"]
                    if not ok:
                        errors.append(f"{kind} {r.status_code} {r.text[:120]}")
                except httpx.HTTPError as e:
                    errors.append(f"{kind} {type(e).__name__}")
                lat.setdefault(kind, []).append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    every = [x for v in lat.values() for x in v]
    return {"requests": len(every), "errors": len(errors), "error_examples": errors[:5],
            "wall_s": round(wall, 3), "requests_per_s": round(len(every) / wall, 1),
            "latency_ms": pct(every), "endpoints": {k: {"requests": len(v), "latency_ms": pct(v)} for k, v in lat.items()}}


def in_process(work: Path, search_q: list[str], similar_ids: list[str], k: int, threads: int) -> dict[str, Any]:
    """The same work without HTTP: the engine the routes call, one request at a time."""
    from shopclip.serve.state import ServeState

    if threads:
        import torch

        torch.set_num_threads(threads)  # as in the server, so only HTTP differs

    st = ServeState(work)
    _ = st.model
    for q in ("warm up", "warm up twice"):
        st.search_text(q, k)
    out: dict[str, list[float]] = {"search": [], "similar": []}
    for q in search_q:
        t0 = time.perf_counter()
        st.search_text(q, k)
        out["search"].append((time.perf_counter() - t0) * 1000)
    for pid in similar_ids:
        t0 = time.perf_counter()
        st.similar(pid, k)
        out["similar"].append((time.perf_counter() - t0) * 1000)
    return {kind: pct(v) for kind, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, help="a built work folder (default: build a sample)")
    ap.add_argument("--sample", type=int, default=400, help="products in the default work folder")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--sequential", type=int, default=200, help="requests per kind for the overhead ratio")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    args = ap.parse_args()

    from shopclip.index.store import EmbeddingStore
    from shopclip.serve.testing import free_port

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other work on this machine
    work = ensure_workdir(args)
    ids = EmbeddingStore.open(work / "embeddings").ids
    rng = random.Random(args.seed)
    n_search = args.requests // 2
    qs = queries(n_search + 2 * args.sequential + 20, args.seed)
    load_q, seq_q, inproc_q, warm_q = (qs[:n_search], qs[n_search:n_search + args.sequential],
                                       qs[n_search + args.sequential:n_search + 2 * args.sequential], qs[-20:])
    jobs = [("search", "/search", {"q": q, "k": args.k}) for q in load_q]
    jobs += [("similar", f"/products/{rng.choice(ids)}/similar", {"k": args.k})
             for _ in range(args.requests - n_search)]
    rng.shuffle(jobs)
    seq_ids = [rng.choice(ids) for _ in range(args.sequential)]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(work, port, args.threads)
    try:
        asyncio.run(wait_ready(base, proc))
        warm = [("search", "/search", {"q": q, "k": args.k}) for q in warm_q]
        asyncio.run(load(base, warm + [("similar", f"/products/{i}/similar", {"k": args.k}) for i in ids[:20]], 4))
        result = asyncio.run(load(base, jobs, args.concurrency))
        sequential = asyncio.run(load(base, [("search", "/search", {"q": q, "k": args.k}) for q in seq_q]
                                      + [("similar", f"/products/{i}/similar", {"k": args.k}) for i in seq_ids], 1))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    direct = in_process(work, inproc_q, seq_ids, args.k, args.threads)
    http_seq = {k: v["latency_ms"] for k, v in sequential["endpoints"].items()}
    report = {
        "benchmark": "shopclip serve: text search + similar items over HTTP on loopback",
        "requests": result["requests"],
        "errors": result["errors"] + sequential["errors"],
        "concurrency": args.concurrency,
        "requests_per_s": result["requests_per_s"],
        "latency_ms": result["latency_ms"],
        "endpoints": result["endpoints"],
        "wall_s": result["wall_s"],
        "error_examples": result["error_examples"] + sequential["error_examples"],
        "overhead": {
            "note": "one request at a time; ratio = HTTP p50 / in-process p50 for the same kind of request",
            "http_sequential_ms": http_seq,
            "in_process_ms": direct,
            "http_over_in_process_p50": {k: round(http_seq[k]["p50"] / max(direct[k]["p50"], 1e-6), 2)
                                         for k in direct},
            "http_added_p50_ms": {k: round(http_seq[k]["p50"] - direct[k]["p50"], 3) for k in direct},
        },
        "setup": {
            "products": len(ids), "k": args.k, "server_torch_threads": args.threads or "default",
            "query_cache_hits": "none (every text query distinct)", "client": "httpx.AsyncClient, keep-alive",
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "load_average_1m_before": load_before,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("requests", "errors", "requests_per_s", "latency_ms")}, indent=2))
    print(json.dumps(report["overhead"]["http_over_in_process_p50"]))


if __name__ == "__main__":
    main()
