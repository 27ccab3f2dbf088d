"""Scale: what a write costs as the catalog grows, vector stores at 100k, compact indexes at 1M, Ray vs local.

Sections (all in one run, one results file, `bench/results/scale.json`):

- `writes`: the server's write path (`ServeState.commit_upsert` / `delete`: commit to the
  embedding log with its fsync, then the in-place change of all three view indexes and
  the product table) at 10k, 100k and 1M products, one write at a time, p50/p99. The
  model's encode time is excluded there (it does not depend on the catalog) and reported
  apart (`encode_ms`, real photos and titles through the default model). A second phase
  runs writes while a background snapshot of the indexes is being written, to show that
  snapshots do not stall writes. The catalogs are synthetic (`_synthetic.py`: vectors drawn
  around the real sample embeddings, categories and photos of the product each row was
  drawn from); at every size each view's index is a copy of one index built over the fused
  vectors: what a write costs does not depend on which vectors the rows hold, and it saves
  two 1M-row HNSW builds. The `store` arm "pgvector" runs the same writes against the
  embedded PostgreSQL (one transaction per write over the three tables) where available.
- `stores`: faiss exact, faiss HNSW, pgvector, Milvus Lite at 100k (`_scale_stores.py`).
- `compact_index`: memory per million vectors and recall@10 against exact at 1M for the
  faiss kinds (flat, hnsw, hnsw-sq8, ivfpq), with build seconds and query latency.
- `runner`: products/s of the local runner vs Ray Data on this machine (`_scale_runner.py`).

    .venv/bin/python bench/scale.py                          # hours: builds 1M-product folders (cached)
    .venv/bin/python bench/scale.py --sections writes --sizes 10000 100000
    .venv/bin/python bench/scale.py --quick --out /tmp/scale.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from _common import RESULTS, SAMPLE, Provenance, write_result  # noqa: E402
from _synthetic import QUICK_REAL, cache_root, real_embeddings, synthetic_catalog  # noqa: E402

SECTIONS = ("writes", "stores", "compact_index", "runner")


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs), q)), 3)


# ---------------------------------------------------------------------- synthetic work folders


def synthetic_workdir(real, n: int, *, quick: bool, store: str = "faiss", uri: str | None = None,
                      index_options: dict | None = None) -> tuple[Path, float]:
    """A served-work-folder of `n` synthetic products, cached by size and store; returns (path, build seconds)."""
    from shopclip.core.io import atomic_write_json
    from shopclip.index import create_index
    from shopclip.index.store import EmbeddingStore
    from shopclip.pipeline.indexing import VIEWS, build_indexes, record_source, row_hash

    key = hashlib.sha1(f"{real.model}|{len(real.ids)}|{n}|{store}|{json.dumps(index_options or {}, sort_keys=True)}"
                       .encode()).hexdigest()[:10]
    # An embedded PostgreSQL (run as root it becomes a 'pgserver' user) makes every parent of its data folder
    # readable by others: keep server-store folders under /tmp, never under the home folder.
    base = cache_root() if store == "faiss" else Path("/tmp") / "shopclip-bench"
    root = base / f"scale-{store}-{n}-{key}"
    done = root / ".complete"
    if done.exists():
        return root, float(done.read_text() or 0)
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    fused = synthetic_catalog(real, n, view="fused", seed=0)
    rng = np.random.default_rng(1)
    src = fused.source
    meta_of = real.meta
    emb = EmbeddingStore.create(root / "embeddings", model=real.model, dim=real.dim, dtype="float16",
                                model_info={"name": "synthetic", "config": {"trained": True}})
    ids = fused.ids
    hashes = [hashlib.sha1(i.encode()).hexdigest() for i in ids]
    step = 50_000
    for s in range(0, n, step):
        e = min(n, s + step)
        from _synthetic import _jitter

        vecs = {m: _jitter(real.views[m][src[s:e]], rng, 0.93) for m in ("image", "text")}
        metas = [{"id": ids[r], "title": meta_of[src[r]].get("title", ""), "category": fused.categories[r],
                  "image": meta_of[src[r]].get("image", ""), "attributes": {}, "description": ""}
                 for r in range(s, e)]
        emb.append(ids[s:e], hashes[s:e], vecs, metas)
    emb.compact()
    cats = fused.categories
    row_hashes = [row_hash(h, c) for h, c in zip(hashes, cats, strict=True)]
    if store == "faiss":
        index = create_index("faiss", dim=real.dim, **(index_options or {}))
        for s in range(0, n, 100_000):
            index.add(ids[s : s + 100_000], fused.vectors[s : s + 100_000], cats[s : s + 100_000],
                      hashes=row_hashes[s : s + 100_000])
        for view in VIEWS:
            index.save(root / "index" / view)
        record_source(emb, root / "index")
    else:  # a server store: the real build path (one table per view)
        build_indexes(root / "embeddings", root / "index", backend=store, **({"uri": uri} if uri else {}))
    atomic_write_json(root / "shopclip.json", {"format": "shopclip.workdir/1", "stages": {},
                                               "model": "default", "catalog_root": str(SAMPLE)})
    took = time.perf_counter() - t0
    done.write_text(f"{took:.1f}")
    del quick
    return root, took


# ---------------------------------------------------------------------- writes


def _prepared(state, pid: str, row: dict, photo: bytes, vecs: dict):
    from shopclip.catalog.validation import validate_row
    from shopclip.core.hashing import sha1_bytes
    from shopclip.serve.state import PreparedUpsert

    digest = sha1_bytes(photo)
    rel = f"uploads/{digest}.jpg"
    product, errors = validate_row({"id": pid, "title": row["title"], "category": row.get("category") or "",
                                    "image": rel}, 1)
    assert product is not None, errors
    return PreparedUpsert(pid, product, product.text(), photo, rel, digest, vecs["image"][None], vecs["text"][None])


def measure_writes(real, n: int, *, quick: bool, store: str = "faiss", uri: str | None = None) -> dict[str, Any]:
    from shopclip.serve.state import ServeState

    base, build_s = synthetic_workdir(real, n, quick=quick, store=store, uri=uri)
    work = base.parent / f"{base.name}-run"
    shutil.rmtree(work, ignore_errors=True)
    # a writable copy: for faiss, hard links for the big immutable files and fresh copies of what writes
    # touch; a server store's data folder is copied whole (PostgreSQL changes its files in place, so a
    # hard-linked copy would change the cached base under the next run) with its owners (run as root,
    # PostgreSQL runs as 'pgserver', which must own every folder of the copy)
    shutil.copytree(base, work, copy_function=os.link if store == "faiss" else shutil.copy2,
                    ignore=shutil.ignore_patterns(".complete"))
    if store != "faiss" and os.geteuid() == 0:
        for folder, dirs, files in os.walk(base):
            for name in dirs + files:
                src = Path(folder) / name
                dst = work / src.relative_to(base)
                if dst.exists():
                    st_ = src.lstat()
                    os.lchown(dst, st_.st_uid, st_.st_gid)
    for mutable in [work / "embeddings" / "state.json", work / "embeddings" / "manifest.json"]:
        if mutable.exists():
            data = mutable.read_bytes()
            mutable.unlink()
            mutable.write_bytes(data)
    t0 = time.perf_counter()
    st = ServeState(work, background=False, snapshot_every=10**9, snapshot_seconds=10**9,
                    **({"store": store, "uri": uri} if store != "faiss" else {}))
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(2)
    k = 40 if quick else 200
    photos = [(Path(m["image"]).read_bytes(), m) for m in real.meta[:8]]
    existing = st.snapshot.indexes["fused"].ids
    ups, dels, during = [], [], []

    def vecs() -> dict:
        pick = rng.integers(0, len(real.ids))
        return {m: real.views[m][pick] for m in ("image", "text")}

    for w in range(k):
        pid = f"new-{w:05d}" if w % 2 == 0 else existing[int(rng.integers(0, len(existing)))]
        photo, row = photos[w % len(photos)]
        prep = _prepared(st, pid, row, photo, vecs())
        t = time.perf_counter()
        st.commit_upsert(prep)
        ups.append((time.perf_counter() - t) * 1000)
    victims = [existing[int(i)] for i in rng.choice(len(existing), size=k // 2, replace=False)]
    for pid in victims:
        if pid not in st.snapshot.products:
            continue
        t = time.perf_counter()
        st.delete(pid)
        dels.append((time.perf_counter() - t) * 1000)
    snap = {}
    if st.in_process:
        # writes while a background snapshot of every index is being written
        result: dict = {}
        th = threading.Thread(target=lambda: result.update(st.maintain(force=True)))
        t_snap = time.perf_counter()
        th.start()
        w = 0
        while th.is_alive() and w < k:
            photo, row = photos[w % len(photos)]
            prep = _prepared(st, f"during-{w:05d}", row, photo, vecs())
            t = time.perf_counter()
            st.commit_upsert(prep)
            during.append((time.perf_counter() - t) * 1000)
            w += 1
        th.join()
        snap = {"snapshot_seconds": round(time.perf_counter() - t_snap, 2), "snapshot_ok": bool(result.get("snapshot")),
                "writes_during_snapshot": len(during),
                "upsert_during_snapshot_p50_ms": pct(during, 50) if during else None,
                "upsert_during_snapshot_p99_ms": pct(during, 99) if during else None}
    st.close()
    shutil.rmtree(work, ignore_errors=True)
    return {"n": n, "store": store, "upserts": len(ups), "deletes": len(dels),
            "upsert_p50_ms": pct(ups, 50), "upsert_p99_ms": pct(ups, 99),
            "delete_p50_ms": pct(dels, 50), "delete_p99_ms": pct(dels, 99),
            "server_start_seconds": round(load_s, 2), "folder_build_seconds": round(build_s, 1), **snap}


def measure_encode(quick: bool) -> dict[str, Any]:
    """The model's share of an upsert (one photo + one text, as the server does), apart from the write."""
    from shopclip.core.images import open_image
    from shopclip.models import load_model

    model = load_model("default")
    rows = [json.loads(line) for line in (SAMPLE / "catalog.jsonl").read_text().splitlines()[:30]]
    times = []
    for r in rows[: 8 if quick else 30]:
        img = open_image((SAMPLE / r["image"]).read_bytes())
        t = time.perf_counter()
        model.encode_image([img], num_workers=1)
        model.encode_text([r["title"]])
        times.append((time.perf_counter() - t) * 1000)
    times = times[2:]  # the first calls pay one-off allocations
    return {"encode_p50_ms": pct(times, 50), "encode_p99_ms": pct(times, 99), "samples": len(times)}


# ---------------------------------------------------------------------- compact indexes


def measure_compact(real, n: int, *, quick: bool, kinds: tuple[str, ...]) -> dict[str, Any]:
    from shopclip.index import create_index

    cat = synthetic_catalog(real, n, view="fused", seed=0)
    queries, qcats = cat.queries(200 if quick else 1000, seed=5)
    exact = create_index("faiss", dim=real.dim, index="flat")
    exact.add(cat.ids, cat.vectors)
    truth = [[h.id for h in r] for r in exact.search(queries, 10)]
    rows = []
    for kind in kinds:
        t0 = time.perf_counter()
        if kind == "flat":
            index, build_s = exact, 0.0
        else:
            index = create_index("faiss", dim=real.dim, index=kind, train_min=min(20_000, n // 2))
            for s in range(0, n, 100_000):
                index.add(cat.ids[s : s + 100_000], cat.vectors[s : s + 100_000])
            build_s = time.perf_counter() - t0
        lat, got = [], []
        for q in queries:
            t = time.perf_counter()
            got.append([h.id for h in index.search(q, 10)[0]])
            lat.append((time.perf_counter() - t) * 1000)
        rec = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth, strict=True)]))
        mem = index.memory_bytes()
        rows.append({"index": kind, "n": n, "build_seconds": round(build_s, 1), "memory_bytes": mem,
                     "memory_gb_per_million": round(mem / n * 1e6 / 1e9, 3), "recall_at_10": round(rec, 4),
                     "query_p50_ms": pct(lat, 50), "query_p99_ms": pct(lat, 99)})
        print(json.dumps(rows[-1]), flush=True)
        if index is not exact:
            del index
    del qcats
    return {"rows": rows, "queries": len(queries), "dim": real.dim,
            "ten_million_three_views_gb": {r["index"]: round(r["memory_gb_per_million"] * 10 * 3, 1) for r in rows}}


# ---------------------------------------------------------------------- main


def _optional(module: str, fn: str, **kw) -> dict[str, Any]:
    """Sections owned by their own modules; a module that is missing or fails says why in the file."""
    try:
        return getattr(importlib.import_module(module), fn)(**kw)
    except Exception as e:  # noqa: BLE001 - the rest of the run must still be written
        return {"error": f"{type(e).__name__}: {e}"}


def _have_pgvector() -> bool:
    with contextlib.suppress(Exception):
        importlib.import_module("shopclip.index.stores.pgvector")
        return True
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, seconds: for the test suite")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--sizes", nargs="+", type=int, default=None, help="catalog sizes for `writes`")
    ap.add_argument("--compact-n", type=int, default=None, help="catalog size for `compact_index`")
    ap.add_argument("--stores", nargs="+", default=["faiss", "pgvector"], help="stores for `writes`")
    ap.add_argument("--pg-sizes", nargs="+", type=int, default=None,
                    help="catalog sizes for pgvector's `writes` (default 10k and 100k: building three 1M-row "
                         "HNSW tables in the embedded PostgreSQL takes hours on 2 cores)")
    args = ap.parse_args()
    out = args.out or (RESULTS / "scale.json" if not args.quick else Path("/tmp/scale-quick.json"))
    prov = Provenance.start()
    sys.path.insert(0, str(Path(__file__).parent))
    real = real_embeddings("default", progress=not args.quick, sample=QUICK_REAL if args.quick else None)
    result: dict[str, Any] = {"quick": args.quick, "dim": real.dim}
    if "writes" in args.sections:
        sizes = args.sizes or ([1_000, 5_000] if args.quick else [10_000, 100_000, 1_000_000])
        rows = []
        for store in args.stores:
            if store == "pgvector" and not _have_pgvector():
                rows.append({"store": "pgvector", "error": "shopclip.index.stores.pgvector not available"})
                continue
            for n in (args.pg_sizes or (sizes if args.quick else [10_000, 100_000])) if store == "pgvector" else sizes:
                row = measure_writes(real, n, quick=args.quick, store=store,
                                     uri="embedded" if store == "pgvector" else None)
                print(json.dumps(row), flush=True)
                rows.append(row)
        faiss_rows = {r["n"]: r for r in rows if r.get("store") == "faiss" and "upsert_p99_ms" in r}
        lo, hi = min(faiss_rows, default=None), max(faiss_rows, default=None)
        summary = {}
        if lo is not None and hi is not None and lo != hi:
            ratio = faiss_rows[hi]["upsert_p99_ms"] / faiss_rows[lo]["upsert_p99_ms"]
            summary = {"faiss_upsert_p99_ratio_largest_to_smallest": round(ratio, 3), "sizes": [lo, hi],
                       "target": "ratio <= 2 and p99 < 100 ms at the largest size",
                       "met": bool(ratio <= 2 and faiss_rows[hi]["upsert_p99_ms"] < 100)}
        result["writes"] = {"rows": rows, "summary": summary, "encode": measure_encode(args.quick)}
    if "stores" in args.sections:
        result["stores"] = _optional("_scale_stores", "measure_stores", quick=args.quick)
    if "compact_index" in args.sections:
        n = args.compact_n or (5_000 if args.quick else 1_000_000)
        result["compact_index"] = measure_compact(real, n, quick=args.quick,
                                                  kinds=("flat", "hnsw-sq8", "ivfpq") if args.quick else
                                                  ("flat", "hnsw", "hnsw-sq8", "ivfpq"))
    if "runner" in args.sections:
        result["runner"] = _optional("_scale_runner", "measure_runner", quick=args.quick)
    write_result(out, result, prov)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
