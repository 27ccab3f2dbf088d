"""Catalog updates survive crashes: a restart serves exactly the acknowledged writes.

Real server processes are killed (SIGKILL) right after their acknowledgements with a
write in flight, and in the middle of a background index snapshot; the other tests stop
a write at each internal step (the failpoints) and reopen the folder, which is what a
crash at that instant leaves on disk.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")

from shopclip.core.io import read_json, read_jsonl  # noqa: E402
from shopclip.index.store import EmbeddingStore  # noqa: E402
from shopclip.pipeline.embed import fused_vectors  # noqa: E402
from shopclip.serve.errors import ApiError  # noqa: E402
from shopclip.serve.state import ServeState  # noqa: E402
from shopclip.serve.testing import ServerProcess, shared_model  # noqa: E402

KEY = "crash-key"


@pytest.fixture()
def work(serve_workdir, tmp_path) -> Path:
    dst = tmp_path / "work"
    shutil.copytree(serve_workdir, dst)
    return dst


def catalog_rows(work: Path) -> list[dict]:
    return read_jsonl(work / "catalog.valid.jsonl")


def photo(work: Path, row: dict) -> bytes:
    return (Path(read_json(work / "shopclip.json")["catalog_root"]) / row["image"]).read_bytes()


def assert_consistent(state: ServeState) -> None:
    """Every index holds exactly the store's ids, with the store's vectors."""
    store = EmbeddingStore.open(state.workdir.embeddings)
    want = {"image": store.vectors("image"), "text": store.vectors("text"), "fused": fused_vectors(store)}
    for view, index in state.snapshot.indexes.items():
        assert sorted(index.ids) == sorted(store.ids), view
        got = np.stack([index.get_vector(i) for i in store.ids])
        assert np.abs(got - want[view]).max() < 1e-4, view
    assert sorted(state.snapshot.products) == sorted(store.ids)


def test_killed_server_restarts_with_exactly_the_acknowledged_writes(work, tmp_path):
    rows = catalog_rows(work)
    source, renamed, gone = rows[0], rows[1], rows[2]  # image donor, product to rename, product to delete
    log = tmp_path / "server.log"
    with httpx.Client(timeout=120) as c:
        srv = ServerProcess(work, api_key=KEY, preload=True, log=log).wait_ready(timeout=240)
        try:
            def put(pid: str, fields: dict, image: bytes | None) -> httpx.Response:
                files = {"image": ("p.jpg", image, "image/jpeg")} if image else None
                return c.put(f"{srv.url}/products/{pid}", data={"product": json.dumps(fields)}, files=files,
                             headers={"X-API-Key": KEY})

            assert put("crash-new", {"title": "Crash Test Product", "category": source["category"]},
                       photo(work, source)).status_code == 201
            assert put(renamed["id"], {"title": "Renamed Product", "category": renamed["category"]},
                       None).status_code == 200
            assert c.delete(f"{srv.url}/products/{gone['id']}", headers={"X-API-Key": KEY}).status_code == 200
            # one more write in flight when the process dies: it may land or not, never half
            inflight = threading.Thread(target=lambda: _ignore(lambda: put(
                "crash-inflight", {"title": "In Flight", "category": source["category"]}, photo(work, renamed))))
            inflight.start()
            time.sleep(0.15)
        finally:
            srv.kill()  # SIGKILL: no shutdown hook, no flush
        inflight.join()

        with ServerProcess(work, log=log) as again:  # no model needed to read
            u = again.url
            assert c.get(f"{u}/products/crash-new").json()["title"] == "Crash Test Product"
            assert c.get(f"{u}/products/{renamed['id']}").json()["title"] == "Renamed Product"
            assert c.get(f"{u}/products/{gone['id']}").status_code == 404
            # the new product's image vector is its donor's: it is the donor's nearest neighbour
            near = c.get(f"{u}/products/{source['id']}/similar", params={"k": 1, "view": "image"}).json()["results"]
            assert near[0]["id"] == "crash-new" and near[0]["score"] > 0.99
            health = c.get(f"{u}/healthz").json()
            inflight_landed = c.get(f"{u}/products/crash-inflight").status_code == 200
            expected = len(rows) + 1 - 1 + int(inflight_landed)
            assert health["products"] == expected
            assert health["index"] == {"image": expected, "text": expected, "fused": expected}
            if inflight_landed:
                assert c.get(f"{u}/products/crash-inflight/similar").status_code == 200
            # the lexical view's commits are deferred past the acknowledgement: the restart rebuilt them from the log
            def lexical(q: str) -> list[str]:
                r = c.get(f"{u}/search", params={"q": q, "mode": "lexical", "k": 5, "understand": "false"})
                return [h["id"] for h in r.json()["results"]]

            assert lexical("Crash Test Product")[0] == "crash-new"
            assert renamed["id"] in lexical("Renamed Product")
            assert gone["id"] not in lexical(gone["title"])


def _ignore(fn) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the server died mid-request: exactly what this test does
        fn()


class Crash(Exception):
    pass


def crashing_at(point: str):
    def failpoint(name: str) -> None:
        if name == point:
            raise Crash(name)

    return failpoint


@pytest.mark.parametrize(("point", "lands"), [
    ("upsert:before_commit", False),
    ("upsert:after_commit", True),   # store committed, no index changed yet
    ("applied:image", True),         # one of three in-memory indexes changed
    ("applied", True),               # all changed in memory, no snapshot saved
])
def test_upsert_stopped_at_any_step_reopens_old_or_new(work, point, lands):
    rows = catalog_rows(work)
    st = ServeState(work, model=shared_model(), failpoint=crashing_at(point), background=False)
    with pytest.raises(Crash):
        st.upsert("half-done", {"title": "Half Done Lamp", "category": "Home Decor > Lamps"}, photo(work, rows[5]))
    reopened = ServeState(work)
    assert ("half-done" in reopened.snapshot.products) is lands
    assert_consistent(reopened)
    uploads = list((work / "uploads").glob("*")) if (work / "uploads").exists() else []
    assert len(uploads) == int(lands)  # an image whose write never committed is collected
    if lands:
        assert reopened.repaired  # the lagging saved indexes were caught up and re-saved
        assert not ServeState(work, background=False).repaired  # ...durably


@pytest.mark.parametrize(("point", "gone"), [("delete:before_commit", False), ("delete:after_commit", True),
                                             ("applied:text", True), ("applied", True)])
def test_delete_stopped_at_any_step_reopens_old_or_new(work, point, gone):
    victim = catalog_rows(work)[3]["id"]
    st = ServeState(work, failpoint=crashing_at(point), background=False)
    with pytest.raises(Crash):
        st.delete(victim)
    reopened = ServeState(work)
    assert (victim not in reopened.snapshot.products) is gone
    assert_consistent(reopened)


def test_lost_or_stale_indexes_are_rebuilt_from_the_store(work):
    rows = catalog_rows(work)
    stale = work.parent / "stale-index"
    shutil.copytree(work / "index", stale)
    st = ServeState(work, model=shared_model(), background=False)
    st.upsert("late-1", {"title": "Late Arrival", "category": rows[0]["category"]}, photo(work, rows[0]))
    st.delete(rows[1]["id"])
    st.close()  # a clean shutdown saves the indexes...
    shutil.rmtree(work / "index")
    shutil.copytree(stale, work / "index")  # indexes from before both writes
    shutil.rmtree(work / "index" / "text")  # and one missing entirely
    reopened = ServeState(work)
    assert reopened.repaired["image"] == 2 and reopened.repaired["text"] == len(rows)
    assert "late-1" in reopened.snapshot.products and rows[1]["id"] not in reopened.snapshot.products
    assert_consistent(reopened)


def test_model_mismatch_refuses_writes(work):
    from shopclip.index.store import EmbeddingStore as Store

    st = ServeState(work, model=shared_model(), background=False)
    manifest = read_json(work / "embeddings" / "manifest.json")
    st.store = Store(work / "embeddings", {**manifest, "model": "some-other-model"})
    with pytest.raises(ApiError) as e:
        st.upsert("x-1", {"title": "X"}, photo(work, catalog_rows(work)[0]))
    assert e.value.status == 409 and e.value.error == "model_mismatch"


@pytest.mark.parametrize("op", ["delete", "replace"])
def test_stop_before_an_unused_upload_is_removed_leaves_only_garbage(work, op):
    """The upload is removed after the commit; stopping in between loses nothing and the
    next start collects the file."""
    rows = catalog_rows(work)
    st = ServeState(work, model=shared_model(), failpoint=crashing_at("drop_upload"), background=False)
    st.upsert("photo-owner", {"title": "Photo Owner"}, photo(work, rows[6]))  # new: nothing to remove
    (first,) = (work / "uploads").iterdir()
    with pytest.raises(Crash):
        if op == "delete":
            st.delete("photo-owner")
        else:
            st.upsert("photo-owner", {"title": "Photo Owner"}, photo(work, rows[7]))
    assert first.exists()  # stopped between the commit and the removal
    reopened = ServeState(work)
    assert ("photo-owner" in reopened.snapshot.products) is (op == "replace")
    assert_consistent(reopened)
    assert not first.exists()  # collected on start: no product points at it
    if op == "replace":
        (kept,) = (work / "uploads").iterdir()
        assert reopened.snapshot.products["photo-owner"]["image"] == str(kept)


def _stray_children(marker: str) -> list[int]:
    """Live processes whose command line names `marker` (a server's port): forked snapshot children."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                stat = (proc / "stat").read_text()
                if marker in cmd and ") Z " not in stat:  # zombies are dead already
                    out.append(int(proc.name))
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc to look for orphaned children")
def test_server_killed_during_a_background_snapshot_restarts_with_exactly_the_acknowledged_writes(work, tmp_path):
    """The server dies (exit 137, no cleanup) right after forking its snapshot child, which is
    mid-write: the child must die with it, the previous saved indexes stay readable, and a
    restart serves exactly the acknowledged writes (replayed from the store, the log)."""
    rows = catalog_rows(work)
    saved_before = {v: read_json(work / "index" / v / "manifest.json")["data"] for v in ("image", "text", "fused")}
    log = tmp_path / "server.log"
    # snapshot every 2 writes; die in the parent as soon as the snapshot child is forked
    srv = ServerProcess(work, api_key=KEY, preload=True, log=log, snapshot_every=2,
                        crash_at="snapshot:forked").wait_ready(timeout=240)
    second = None
    try:
        with httpx.Client(timeout=120) as c:
            def put(pid: str, row: dict) -> httpx.Response:
                return c.put(f"{srv.url}/products/{pid}", headers={"X-API-Key": KEY},
                             data={"product": json.dumps({"title": f"Snapshot {pid}", "category": row["category"]})},
                             files={"image": ("p.jpg", photo(work, row), "image/jpeg")})

            assert put("snap-1", rows[0]).status_code == 201  # acknowledged; no snapshot yet
            with contextlib.suppress(httpx.HTTPError):  # its snapshot kills the server: the answer may be lost
                second = put("snap-2", rows[1]).status_code
            deadline = time.monotonic() + 60
            while srv.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert srv.proc.poll() == 137, "the server should have died mid-snapshot"
    finally:
        srv.kill()
    deadline = time.monotonic() + 10
    while _stray_children(f" {srv.port}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _stray_children(f" {srv.port}") == []  # the snapshot child died with its parent
    # killed mid-save or before it began: each view's manifest names one whole saved index
    from shopclip.index import load_index

    for view in saved_before:
        assert len(load_index(work / "index" / view)) >= len(rows) - 1
    reopened = ServeState(work, background=False)
    assert "snap-1" in reopened.snapshot.products
    if second == 201:
        assert "snap-2" in reopened.snapshot.products
    assert_consistent(reopened)


def test_background_snapshots_save_in_place_changes_and_restart_needs_no_repair(work):
    rows = catalog_rows(work)
    st = ServeState(work, model=shared_model(), snapshot_every=2, background=False)
    st.upsert("bg-1", {"title": "Background One", "category": rows[0]["category"]}, photo(work, rows[0]))
    assert st.maintain() == {"lexical_flushed": True}  # its deferred lexical commit; no snapshot due yet
    st.delete(rows[1]["id"])
    assert st.maintain() == {"lexical_flushed": True, "snapshot": True}
    assert st.maintain() == {}
    again = ServeState(work, background=False)
    assert again.repaired == {}  # the snapshot holds both writes
    assert "bg-1" in again.snapshot.products and rows[1]["id"] not in again.snapshot.products
    assert_consistent(again)


def test_store_compaction_runs_beside_writes_and_loses_nothing(work):
    rows = catalog_rows(work)
    st = ServeState(work, model=shared_model(), compact_parts=3, background=False)
    for n in range(4):
        st.upsert(f"cmp-{n}", {"title": f"Compaction Lamp {n}", "category": rows[0]["category"]}, photo(work, rows[n]))
    st.delete("cmp-0")
    assert st.maintain().get("compacted") is True
    assert not list((work / "embeddings" / "parts").glob("part-*.jsonl"))
    st.upsert("cmp-9", {"title": "After Compaction", "category": rows[0]["category"]}, photo(work, rows[9]))
    reopened = ServeState(work, background=False)
    assert {"cmp-1", "cmp-2", "cmp-3", "cmp-9"} <= set(reopened.snapshot.products)
    assert "cmp-0" not in reopened.snapshot.products
    assert_consistent(reopened)
