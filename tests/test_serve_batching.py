"""Micro-batched text queries: under concurrency every caller gets its own query's vector.

Real model (the shipped default), real threads, a real server on 127.0.0.1 over sample products.
"""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")

from shopclip.serve.app import create_app  # noqa: E402
from shopclip.serve.batching import MicroBatcher, QueryEmbedder, embed_texts  # noqa: E402
from shopclip.serve.testing import running, shared_model  # noqa: E402

QUERIES = ["red running shoes", "black leather wallet", "women blue jeans", "white coffee mug", "table lamp",
           "men analog watch", "pink kurta", "grey backpack", "brown belt", "yellow t-shirt", "navy socks",
           "silver sunglasses", "green cushion cover", "kids sandals", "beige handbag", "floral dress"]


@pytest.fixture(scope="module")
def model():
    """The shipped default on the torch engine: its text features do not depend on the batch,
    which is what batching requires (the int8 engine is tested for the opposite below)."""
    from shopclip.models import load_model

    m = load_model("default", engine="torch")
    m.eval()
    return m


@pytest.fixture(scope="module")
def singles(model):
    """Each query embedded alone through the public API: what a batched answer must equal."""
    return {q: model.encode_text([q])[0] for q in QUERIES}


def gated(model, gate: threading.Event, seen: list[list[str]]):
    """The real encoder, held at the gate on its first call so that the others queue behind it."""
    def encode(texts: list[str]) -> np.ndarray:
        seen.append(list(texts))
        gate.wait(30)
        return embed_texts(model, texts)
    return encode


def test_embed_texts_equals_the_public_encode(model, singles):
    out = embed_texts(model, QUERIES)
    assert out.shape == (len(QUERIES), model.embed_dim) and out.dtype == np.float32
    for row, q in zip(out, QUERIES, strict=True):
        assert float(row @ singles[q]) > 0.9999, q  # padding to the batch's longest changes only rounding


def test_concurrent_callers_share_a_batch_and_each_get_their_own_vector(model, singles):
    gate, seen = threading.Event(), []
    batcher = MicroBatcher(gated(model, gate, seen), max_batch=64)
    first = batcher.submit(QUERIES[0])  # the worker takes it and waits at the gate
    while not seen:
        threading.Event().wait(0.01)
    with ThreadPoolExecutor(len(QUERIES) - 1) as pool:
        futures = list(pool.map(batcher.submit, QUERIES[1:]))  # all queued behind the first call
        gate.set()
        got = {QUERIES[0]: first.result(30)} | {q: f.result(30) for q, f in zip(QUERIES[1:], futures, strict=True)}
    batcher.close()
    assert len(seen) == 2 and seen[0] == [QUERIES[0]]  # one call for the first, one call for all the rest
    assert sorted(seen[1]) == sorted(QUERIES[1:])
    assert batcher.stats.batches == 2 and batcher.stats.largest == len(QUERIES) - 1
    refs = np.stack([singles[q] for q in QUERIES])
    for q, vec in got.items():
        sims = refs @ vec
        assert QUERIES[int(np.argmax(sims))] == q and sims.max() > 0.9999, q  # its own query, nobody else's


def test_many_threads_at_once_without_a_gate(model, singles):
    """No staging: 64 requests from 16 threads, whatever batches form, each answer is its own query's."""
    emb = QueryEmbedder(lambda t: embed_texts(model, t), cache_size=0, max_batch=8)
    asks = [QUERIES[i % len(QUERIES)] for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(emb, asks))
    emb.close()
    for q, vec in zip(asks, got, strict=True):
        assert float(vec @ singles[q]) > 0.9999, q
    assert emb.batcher is not None and emb.batcher.stats.items <= 64 and emb.batcher.stats.largest <= 8


def test_duplicates_in_a_batch_are_embedded_once(model, singles):
    gate, seen = threading.Event(), []
    batcher = MicroBatcher(gated(model, gate, seen))
    futures = [batcher.submit(q) for q in ("blue jeans", "red running shoes", "blue jeans", "red running shoes")]
    gate.set()
    vecs = [f.result(30) for f in futures]
    batcher.close()
    assert sum(len(s) for s in seen) <= 3  # "blue jeans" alone first, then both distinct texts once
    assert np.allclose(vecs[0], vecs[2]) and np.allclose(vecs[1], vecs[3])
    assert float(vecs[1] @ singles["red running shoes"]) > 0.9999
    vecs[0][0] = 42.0  # each caller owns its array
    assert vecs[2][0] != 42.0


def test_a_failing_text_fails_only_its_own_caller(model, singles):
    gate = threading.Event()

    def encode(texts: list[str]) -> np.ndarray:
        gate.wait(30)
        if any("boom" in t for t in texts):
            raise ValueError("cannot embed boom")
        return embed_texts(model, texts)

    batcher = MicroBatcher(encode)
    futures = {q: batcher.submit(q) for q in ("warm", "white coffee mug", "boom", "table lamp")}
    gate.set()
    with pytest.raises(ValueError, match="boom"):
        futures["boom"].result(30)
    for q in ("white coffee mug", "table lamp"):
        assert float(futures[q].result(30) @ singles[q]) > 0.9999
    batcher.close()


def test_query_cache_is_bounded_and_read_only(model):
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return embed_texts(model, texts)

    emb = QueryEmbedder(encode, cache_size=2, batching=False)
    a = emb("pink kurta")
    assert emb("pink kurta") is a and emb.hits == 1
    emb("brown belt")
    emb("navy socks")  # evicts "pink kurta", the least recently used
    emb("pink kurta")
    assert [c[0] for c in calls] == ["pink kurta", "brown belt", "navy socks", "pink kurta"]
    with pytest.raises(ValueError):
        a[0] = 1.0


def test_server_answers_concurrent_searches_like_sequential_ones(serve_workdir, tmp_path, model):
    """A real server (on the torch engine, which batches): 16 distinct searches at once return
    what each returns alone; /metrics saw a batch."""
    work = tmp_path / "work"
    shutil.copytree(serve_workdir, work)
    app = create_app(work, model=model, preload_model=True)
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        def ids(q: str) -> list[str]:
            r = client.get("/search", params={"q": q, "k": 5})
            assert r.status_code == 200, r.text
            return [h["id"] for h in r.json()["results"]]

        alone = {q: ids(q) for q in QUERIES}
        app.state.shopclip.queries._cache.clear()  # the concurrent round must embed again, batched
        with ThreadPoolExecutor(len(QUERIES)) as pool:
            together = dict(zip(QUERIES, pool.map(ids, QUERIES), strict=True))
        assert together == alone
        text = client.get("/metrics").text
    count = [line for line in text.splitlines() if line.startswith("shopclip_text_query_batch_size_count")]
    assert count and float(count[0].split()[-1]) >= 1


def test_a_batch_dependent_engine_embeds_each_query_alone_so_results_do_not_depend_on_traffic():
    """Dynamic int8 picks its scale from the whole batch: batching other shoppers' queries would
    move a query's vector. The server then embeds queries one by one, and a query's vector is the
    same alone or amid concurrent traffic."""
    int8 = shared_model()  # the default engine
    if int8.engine.batch_invariant("text"):
        pytest.skip(f"the default text engine ({int8.engine.name}) is batch-invariant")
    batched = embed_texts(int8, QUERIES)
    alone = np.stack([embed_texts(int8, [q])[0] for q in QUERIES])
    assert float(np.min(np.sum(batched * alone, axis=1))) < 0.9999  # the reason: batching moves vectors
    emb = QueryEmbedder(lambda t: embed_texts(int8, t), cache_size=0, max_batch=8,
                        batch_invariant=lambda: int8.engine.batch_invariant("text"))
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(emb, QUERIES * 2))
    assert emb.batcher is None
    for q, v in zip(QUERIES * 2, got, strict=True):
        np.testing.assert_array_equal(v, alone[QUERIES.index(q)])


def _most_at_once(app, client, n: int = 8) -> int:
    """Send n searches at once; how many were computing at the same time (each held ~50 ms)."""
    import time

    st = app.state.shopclip
    real, lock, state = st.search_query, threading.Lock(), {"now": 0, "most": 0}

    def counted(*args, **kwargs):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        try:
            time.sleep(0.05)  # long enough that unbounded requests overlap
            return real(*args, **kwargs)
        finally:
            with lock:
                state["now"] -= 1

    st.search_query = counted
    with ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(lambda q: client.get("/search", params={"q": q, "k": 3}).status_code, QUERIES[:n]))
    assert codes == [200] * n
    return state["most"]


def test_worker_threads_bound_the_requests_computed_at_once_and_gc_freezes_what_is_loaded(
        serve_workdir, tmp_path, model):
    """`worker_threads=2`: 8 concurrent searches compute two at a time (anyio's default pool runs
    them all at once); `freeze_gc` moves the loaded state out of the collector's sight."""
    import gc

    work = tmp_path / "work"
    shutil.copytree(serve_workdir, work)
    try:
        bounded = create_app(work, model=model, preload_model=True, worker_threads=2, freeze_gc=True)
        with running(bounded) as url, httpx.Client(base_url=url, timeout=60) as client:
            assert gc.get_freeze_count() > 0
            assert _most_at_once(bounded, client) == 2
    finally:
        gc.unfreeze()
    free = create_app(work, model=model, preload_model=True)
    with running(free) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert _most_at_once(free, client) > 2
