"""HTTP serving under a bounded load over the whole sample catalog, and what HTTP adds.

The server is `python -m shopclip.cli serve WORKDIR` (what a user runs: one process, the
CLI's thread settings) in its own process on 127.0.0.1, over a copy of the full 8,225-product
work folder built with the current default model (`_synthetic.real_embeddings("default")`).

Request mix (the `load` arm): `--requests` GETs (default 4,000), shuffled with a fixed seed:
half `GET /search?q=<query>&k=10` (view: the server's default, fused), every query a distinct
shopper-like string ("women navy slim fit jeans", from `queries()`), so the query cache
never hits; half `GET /products/<random product id>/similar?k=10` (fused view). 8 requests
in flight, each of 8 workers on its own keep-alive connection, a request counted only if it
answers 200 with k results. The load generator is a lean asyncio HTTP/1.1 client (no
per-request object churn), because client and server share the 2 cores: `load_httpx` runs
the same mix with fresh queries through `httpx.AsyncClient`, the client the earlier figure
used, so both are on file side by side.

`overhead`: the same kinds of request one at a time over HTTP and the same work in-process
(`ServeState.search_text` / `.similar`, no HTTP); the ratio of the medians is what HTTP
(uvicorn, FastAPI, JSON, loopback TCP) adds. In-process runs in this process with the same
torch threads as the server.

`ablation_no_batching`: the same load with `--no-batch-queries` (each text query its own
tower call, as before micro-batching), run after the main arm on the same machine.

What the profile found (py-spy, 200 Hz, 15 s of the server under this load on the full
sample, before the change: one `encode_text` call per query, h11, asyncio; 71.5 req/s):
56% of the server's samples were in the text tower's forward (36% in its Linear layers: at a
few tokens a query, torch's fp32 matmul runs ~15 GFLOP/s on this CPU, so a lone query costs
nearly what a batch of 4 does), 8% in faiss's flat search (similar items and search over
8,225 x 768), 4% in `DualEncoder.encode_text`'s eval()/train() walk over every module of both
towers, 2% tokenising, ~9% the event loop (uvicorn's pure-Python h11 parser, Starlette,
FastAPI, pydantic, JSON) and ~15% anyio's worker threads handing results back to the loop.
Hence: micro-batching (serve/batching.py: concurrent queries share one tower call), the
tower called directly (no eval()/train() walk), and uvicorn's httptools parser + uvloop
(A/B on one warm machine, same mix: 163/168 -> 212/228 req/s). Two torch threads were
slower than one (152/135 req/s): the second core is needed by HTTP and the client. More
worker processes would not help: the cores are saturated by tower arithmetic, and each
process would run its own small batches; one process with batching uses them better.

The p99 tail (second profile, this session: 363 req/s, p99 58 ms, max 294 ms on a quiet
machine): (1) a full collection of Python's cyclic GC walks the ~430k objects the loaded
catalog holds, ~180 ms with the GIL held, stalling every request in flight: the CLI now
`gc.freeze()`s what is loaded before taking traffic (max 294 -> 89 ms); (2) anyio ran every
request at once in its 40-thread pool, so 8 CPU-bound requests time-shared 2 cores and the
GIL and each text search (~3x a similar-item lookup) was stretched by all the others; the
CLI now lets `cores + 1` requests compute at once and queues the rest (`--worker-threads`):
p99 52 -> 31-36 ms at the same throughput (A/B on one machine, two rounds). A lower GIL
switch interval gained ~2 ms and was left out. `ablation_worker_threads` keeps that A/B in
the file: default vs 40 threads, alternating.

    .venv/bin/python bench/serve.py                         # full sample, writes bench/results/serve.json
    .venv/bin/python bench/serve.py --quick --out /tmp/s.json
    .venv/bin/python bench/serve.py --workdir demo-work     # any built work folder
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the shopclip CLI sets it, for the in-process arm
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, SAMPLE, Provenance, write_result  # noqa: E402

COLORS = ["black", "white", "red", "blue", "navy", "green", "grey", "brown", "pink", "yellow", "beige", "maroon",
          "olive", "purple", "orange", "silver", "gold", "teal", "cream", "charcoal"]
THINGS = ["running shoes", "casual shoes", "sandals", "flip flops", "t-shirt", "polo shirt", "kurta", "jeans",
          "track pants", "handbag", "backpack", "wallet", "belt", "analog watch", "sunglasses", "socks", "cap",
          "coffee mug", "table lamp", "bed sheet", "cushion cover", "perfume", "laptop sleeve", "dress", "scarf"]
WHO = ["", "men", "women", "kids", "unisex"]
STYLE = ["", "cotton", "leather", "printed", "striped", "solid", "slim fit", "casual", "formal", "sports"]


def queries(n: int, seed: int) -> list[str]:
    """n distinct shopper-like queries ("women navy slim fit jeans"), at most 25,000."""
    combos = [" ".join(w for w in (who, c, s, t) if w)
              for who, c, s, t in itertools.product(WHO, COLORS, STYLE, THINGS)]
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


# ---------------------------------------------------------------------- work folder


def full_workdir(tmp: Path) -> Path:
    """A private copy of the cached full-sample work folder (the server may write; the cache must not change)."""
    from _synthetic import cache_root, real_embeddings
    from shopclip.models.factory import resolve_model_ref

    real_embeddings("default")  # builds it once, else a no-op
    catalog = SAMPLE / "catalog.jsonl"
    key = hashlib.sha1(f"{resolve_model_ref('default')}|{catalog.resolve()}|{catalog.stat().st_size}"
                       .encode()).hexdigest()[:12]
    src = cache_root() / f"work-{key}"
    dst = tmp / "work"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache"))  # the feature cache is for builds only
    return dst


def quick_workdir(tmp: Path, n: int) -> Path:
    from shopclip.pipeline.build import BuildOptions, build

    work = tmp / "work"
    build(SAMPLE / "catalog.jsonl", work, BuildOptions(sample=n, progress=False, check_images=False))
    return work


# ---------------------------------------------------------------------- server


def start_server(work: Path, port: int, threads: int, batching: bool,
                 worker_threads: int | None = None) -> subprocess.Popen:
    env = {**os.environ}
    env.pop("SHOPCLIP_API_KEY", None)
    cmd = [sys.executable, "-m", "shopclip.cli", "serve", str(work), "--port", str(port), "--threads", str(threads),
           "--log-level", "warning", "--batch-queries" if batching else "--no-batch-queries"]
    if worker_threads:
        cmd += ["--worker-threads", str(worker_threads)]
    return subprocess.Popen(cmd, env=env)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def wait_ready(host: str, port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            conn = await Conn.open(host, port)
            status, body = await conn.get("/healthz")
            conn.close()
            if status == 200 and json.loads(body).get("model_loaded"):
                return
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("server not ready")


# ---------------------------------------------------------------------- clients


class Conn:
    """One keep-alive HTTP/1.1 connection that sends GETs and reads Content-Length bodies."""

    def __init__(self, host: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.host, self.reader, self.writer = host, reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(f"{host}:{port}", reader, writer)

    async def get(self, target: str) -> tuple[int, bytes]:
        self.writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise ValueError("response without Content-Length")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


Job = tuple[str, str, dict[str, Any]]  # kind, path, query parameters


async def run_lean(host: str, port: int, jobs: list[Job], concurrency: int) -> dict[str, Any]:
    """`jobs` through `concurrency` workers, each on its own connection; latency per request in ms."""
    todo = iter(jobs)
    lat: dict[str, list[float]] = {}
    errors: list[str] = []
    conns = [await Conn.open(host, port) for _ in range(concurrency)]

    async def worker(conn: Conn) -> None:
        for kind, path, params in todo:
            t0 = time.perf_counter()
            try:
                status, body = await conn.get(f"{path}?{urlencode(params)}")
                if status != 200 or len(json.loads(body)["results"]) != params["k"]:
                    errors.append(f"{kind} {status} {body[:120]!r}")
            except (OSError, ValueError, KeyError, asyncio.IncompleteReadError) as e:
                errors.append(f"{kind} {type(e).__name__}")
            lat.setdefault(kind, []).append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    return summarise(lat, errors, wall)


async def run_httpx(base: str, jobs: list[Job], concurrency: int) -> dict[str, Any]:
    """The same as `run_lean` through httpx.AsyncClient (keep-alive pool of `concurrency`)."""
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
                    if r.status_code != 200 or len(r.json()["results"]) != params["k"]:
                        errors.append(f"{kind} {r.status_code} {r.text[:120]}")
                except httpx.HTTPError as e:
                    errors.append(f"{kind} {type(e).__name__}")
                lat.setdefault(kind, []).append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return summarise(lat, errors, wall)


def summarise(lat: dict[str, list[float]], errors: list[str], wall: float) -> dict[str, Any]:
    every = [x for v in lat.values() for x in v]
    return {"requests": len(every), "errors": len(errors), "error_examples": errors[:5],
            "wall_s": round(wall, 3), "requests_per_s": round(len(every) / wall, 1),
            "latency_ms": pct(every), "endpoints": {k: {"requests": len(v), "latency_ms": pct(v)} for k, v in lat.items()}}


def in_process(work: Path, search_q: list[str], similar_ids: list[str], k: int, threads: int) -> dict[str, Any]:
    """The same work without HTTP: the engine the routes call, one request at a time."""
    import torch

    from shopclip.serve.state import ServeState

    if threads:
        torch.set_num_threads(threads)  # as in the server, so only HTTP differs
    st = ServeState(work)
    _ = st.model
    for q in ("warm up", "warm up twice", "warm up three times"):
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
    st.queries.close()
    return {kind: pct(v) for kind, v in out.items()}


# ---------------------------------------------------------------------- the run


def mix(qs: list[str], ids: list[str], n: int, k: int, rng: random.Random) -> list[Job]:
    """n/2 text searches over `qs` (each used once) and n/2 similar-item requests, shuffled."""
    n_search = n // 2
    jobs: list[Job] = [("search", "/search", {"q": q, "k": k}) for q in qs[:n_search]]
    jobs += [("similar", f"/products/{rng.choice(ids)}/similar", {"k": k}) for _ in range(n - n_search)]
    rng.shuffle(jobs)
    return jobs


async def batch_counts(host: str, port: int) -> tuple[float, float]:
    """(tower calls, queries embedded) so far, from the server's /metrics batch-size histogram."""
    conn = await Conn.open(host, port)
    _, body = await conn.get("/metrics")
    conn.close()
    values = {"count": 0.0, "sum": 0.0}
    for line in body.decode().splitlines():
        for key in values:
            if line.startswith(f"shopclip_text_query_batch_size_{key} "):
                values[key] = float(line.split()[-1])
    return values["count"], values["sum"]


def serve_arm(work: Path, batching: bool, args: argparse.Namespace, plan: dict[str, Any],
              worker_threads: int | None = None) -> dict[str, Any]:
    """Start a server, warm it, run the planned loads against it, stop it."""
    from shopclip.serve.testing import free_port

    port = free_port()
    host = "127.0.0.1"
    proc = start_server(work, port, args.threads, batching, worker_threads)
    out: dict[str, Any] = {}
    try:
        asyncio.run(wait_ready(host, port, proc))
        asyncio.run(run_lean(host, port, plan["warm"], args.concurrency))
        for name, (client, jobs, conc) in plan["arms"].items():
            before = asyncio.run(batch_counts(host, port))
            if client == "lean":
                out[name] = asyncio.run(run_lean(host, port, jobs, conc))
            else:
                out[name] = asyncio.run(run_httpx(f"http://{host}:{port}", jobs, conc))
            after = asyncio.run(batch_counts(host, port))
            batches, texts = after[0] - before[0], after[1] - before[1]
            out[name]["text_batches"] = {"tower_calls": batches, "queries": texts,
                                         "mean_batch": round(texts / batches, 2) if batches else None}
            print(f"{name}: {out[name]['requests_per_s']} req/s, p99 {out[name]['latency_ms']['p99']} ms, "
                  f"errors {out[name]['errors']}", file=sys.stderr)
    finally:
        stop_server(proc)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, help="a built work folder (default: the full sample, copied)")
    ap.add_argument("--quick", action="store_true", help="60 products, 200 requests: seconds, for the test suite")
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--sequential", type=int, default=200, help="requests per kind for the overhead ratio")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server (the CLI's default: 1)")
    ap.add_argument("--no-ablation", action="store_true", help="skip the ablation servers")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the worker-threads ablation (default vs 40)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="results file (default bench/results/serve.json; --quick needs --out)")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.sequential = min(args.requests, 200), min(args.sequential, 20)
        args.rounds = min(args.rounds, 1)  # one A/B round exercises it; each round starts two servers
    out_path = args.out or (None if args.quick else RESULTS / "serve.json")

    from shopclip.core.threads import usable_cores
    from shopclip.index.store import EmbeddingStore

    prov = Provenance.start()
    with tempfile.TemporaryDirectory(prefix="shopclip-bench-serve-") as tmp:
        if args.workdir:
            work = Path(tmp) / "work"
            shutil.copytree(args.workdir, work, ignore=shutil.ignore_patterns("cache"))
        else:
            work = quick_workdir(Path(tmp), 60) if args.quick else full_workdir(Path(tmp))
        ids = EmbeddingStore.open(work / "embeddings").ids
        rng = random.Random(args.seed)
        n_s = args.requests // 2
        rounds = 0 if args.no_ablation else args.rounds
        qs = iter(queries((3 + 2 * rounds) * n_s + 2 * args.sequential + 60, args.seed))

        def take(n: int) -> list[str]:
            return list(itertools.islice(qs, n))

        warm = mix(take(20), ids, 40, args.k, rng)
        main_jobs = mix(take(n_s), ids, args.requests, args.k, rng)
        httpx_jobs = mix(take(n_s), ids, args.requests, args.k, rng)
        ablation_jobs = mix(take(n_s), ids, args.requests, args.k, rng)
        seq_q, seq_ids = take(args.sequential), [rng.choice(ids) for _ in range(args.sequential)]
        sequential = [("search", "/search", {"q": q, "k": args.k}) for q in seq_q]
        sequential += [("similar", f"/products/{i}/similar", {"k": args.k}) for i in seq_ids]
        plan = {"warm": warm, "arms": {"load": ("lean", main_jobs, args.concurrency),
                                       "load_httpx": ("httpx", httpx_jobs, args.concurrency),
                                       "sequential": ("lean", sequential, 1)}}
        arms = serve_arm(work, True, args, plan)
        ablation = None
        if not args.no_ablation:
            ablation = serve_arm(work, False, args, {"warm": warm, "arms": {
                "load": ("lean", ablation_jobs, args.concurrency)}})["load"]
        # One change at a time: the CLI's default request threads (cores + 1) against anyio's
        # default pool (40), each on a fresh server, alternating, same mix with fresh queries.
        threads_rounds = []
        for _ in range(rounds):
            one = {}
            for label, wt in (("default", None), ("40", 40)):
                jobs = mix(take(n_s), ids, args.requests, args.k, rng)
                one[label] = serve_arm(work, True, args, {"warm": warm, "arms": {
                    "load": ("lean", jobs, args.concurrency)}}, worker_threads=wt)["load"]
            threads_rounds.append(one)
        direct = in_process(work, take(args.sequential), seq_ids, args.k, args.threads)

    result = arms["load"]
    http_seq = {k: v["latency_ms"] for k, v in arms["sequential"]["endpoints"].items()}
    report = {
        "benchmark": "shopclip serve over the full sample: text search + similar items over HTTP on loopback",
        "requests": result["requests"],
        "errors": result["errors"] + arms["sequential"]["errors"] + arms["load_httpx"]["errors"],
        "concurrency": args.concurrency,
        "requests_per_s": result["requests_per_s"],
        "latency_ms": result["latency_ms"],
        "endpoints": result["endpoints"],
        "wall_s": result["wall_s"],
        "text_batches": result["text_batches"],
        "error_examples": result["error_examples"] + arms["sequential"]["error_examples"],
        "targets": {"requests_per_s_min": 200, "p99_ms_max": 50, "errors": 0,
                    "met": result["requests_per_s"] >= 200 and result["latency_ms"]["p99"] < 50
                    and result["errors"] == 0},
        "load_httpx": arms["load_httpx"],
        "ablation_no_batching": ablation,
        "ablation_worker_threads": {
            "note": "the server's request threads: default = the CLI's cores + 1 (here "
                    f"{usable_cores() + 1}); 40 = anyio's default pool, as before; fresh server per arm, "
                    "arms alternating, each with fresh queries",
            "rounds": [{label: {"requests_per_s": r["requests_per_s"], "latency_ms": r["latency_ms"],
                                "errors": r["errors"]} for label, r in one.items()} for one in threads_rounds],
        },
        "overhead": {
            "note": "one request at a time; ratio = HTTP p50 / in-process p50 for the same kind of request",
            "http_sequential_ms": http_seq,
            "in_process_ms": direct,
            "http_over_in_process_p50": {k: round(http_seq[k]["p50"] / max(direct[k]["p50"], 1e-6), 2)
                                         for k in direct},
            "http_added_p50_ms": {k: round(http_seq[k]["p50"] - direct[k]["p50"], 3) for k in direct},
        },
        "setup": {
            "products": len(ids), "k": args.k, "server": "python -m shopclip.cli serve WORKDIR (one process)",
            "server_torch_threads": args.threads or "default",
            "server_request_threads": f"{usable_cores() + 1} (the CLI's default: usable cores + 1)",
            "server_gc": "gc.freeze() after loading (the CLI's default)",
            "query_batching": "requested (--batch-queries); in effect: "
                              + ("yes" if result["text_batches"]["tower_calls"] else
                                 "no, the text engine is dynamic int8, whose output depends on its batch, "
                                 "so each query is embedded alone (ablation_no_batching is then a repeat)"),
            "uvicorn_http": "httptools" if importlib.util.find_spec("httptools") else "h11",
            "uvicorn_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            "request_mix": f"{args.requests} GETs shuffled: half /search?q=<distinct query>&k={args.k} (fused view), "
                           f"half /products/<random id>/similar?k={args.k} (fused view)",
            "query_cache_hits": "none (every text query distinct, across all arms)",
            "client": "lean asyncio HTTP/1.1, one keep-alive connection per in-flight request "
                      "(load_httpx: httpx.AsyncClient, keep-alive pool)",
            "quick": args.quick,
        },
    }
    if out_path is None:
        print(json.dumps(report, indent=2))
    else:
        write_result(out_path, report, prov)
        print(f"wrote {out_path}", file=sys.stderr)
    print(json.dumps({k: report[k] for k in ("requests", "errors", "requests_per_s", "latency_ms")}, indent=2))


if __name__ == "__main__":
    main()
