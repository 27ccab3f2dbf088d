"""The HTTP API against a real uvicorn server on 127.0.0.1, over real sample products."""

from __future__ import annotations

import io
import shutil
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from shopclip.serve.app import create_app  # noqa: E402
from shopclip.serve.testing import running, shared_model  # noqa: E402

KEY = "test-key-123"
UPLOAD_LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def server(serve_workdir, tmp_path_factory):
    """A writable copy of the work folder behind a real server; yields (base url, work folder, app)."""
    work = tmp_path_factory.mktemp("api") / "work"
    shutil.copytree(serve_workdir, work)
    app = create_app(work, api_key=KEY, model=shared_model(), max_upload_bytes=UPLOAD_LIMIT,
                     allow_url_fetch=True, url_fetch_hosts=("127.0.0.1",), preload_model=True)
    with running(app) as url:
        yield url, work, app


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server[0], timeout=60) as c:
        yield c


def products(work: Path) -> dict[str, dict]:
    from shopclip.core.io import read_jsonl

    return {r["id"]: r for r in read_jsonl(work / "catalog.valid.jsonl")}


def of_kind(work: Path, word: str) -> list[str]:
    return sorted(i for i, r in products(work).items() if word in " > ".join(r["category"]))


def image_bytes(work: Path, product_id: str) -> bytes:
    from shopclip.core.io import read_json

    root = Path(read_json(work / "shopclip.json")["catalog_root"])
    return (root / products(work)[product_id]["image"]).read_bytes()


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 1 if mode == "1" else (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) >= {"error", "message"} and body["message"], body
    if code:
        assert body["error"] == code, body
    return body


# ---------------------------------------------------------------------- reads


def test_health_openapi_and_page(client, server):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["model_loaded"] and h["writes_enabled"]
    assert h["products"] == len(products(server[1])) == h["index"]["image"] == h["index"]["fused"]
    spec = client.get("/openapi.json").json()
    for path in ("/search", "/search/image", "/products/{product_id}/similar", "/recommend", "/products/{product_id}",
                 "/products/{product_id}/image", "/healthz", "/metrics", "/categories"):
        assert path in spec["paths"], path
    assert {"401", "403", "413", "415", "422"} <= set(spec["paths"]["/products/{product_id}"]["put"]["responses"])
    assert "ErrorBody" in spec["components"]["schemas"]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


def test_text_search_finds_the_named_kind(client, server):
    r = client.get("/search", params={"q": "ceramic coffee mug", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert len(body["results"]) == 5 and body["took_ms"] > 0
    assert sum("Coffee Mugs" in h["category"] for h in body["results"]) >= 4, body["results"]
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    img = client.get(body["results"][0]["image_url"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(img.content)).size[0] > 0


def test_category_filter_and_categories(client):
    cats = client.get("/categories").json()["categories"]
    paths = {c["path"]: c for c in cats}
    assert "Footwear" in paths and paths["Footwear"]["depth"] == 1 and paths["Footwear"]["count"] >= 8
    r = client.get("/search", params={"q": "white", "k": 10, "category": "Footwear"}).json()
    assert r["results"] and all(h["category"].startswith("Footwear") for h in r["results"])
    none = client.get("/search", params={"q": "white", "category": "No Such Category"}).json()
    assert none["results"] == []


def test_image_search_finds_the_same_product(client, server):
    shoe = of_kind(server[1], "Shoes")[0]
    r = client.post("/search/image", params={"k": 3}, files={"image": ("shoe.jpg", image_bytes(server[1], shoe),
                                                                      "image/jpeg")})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["id"] == shoe and top["score"] > 0.99 and r.json()["view"] == "image"


def test_image_search_by_url_when_allowed(client, server):
    mug = of_kind(server[1], "Coffee Mugs")[0]
    r = client.post("/search/image", data={"url": f"{server[0]}/products/{mug}/image"})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["id"] == mug
    assert_error(client.post("/search/image", data={"url": "http://example.com/x.jpg"}), 403, "url_host_not_allowed")
    assert_error(client.post("/search/image", data={"url": "file:///etc/passwd"}), 422, "invalid_url")


def test_similar_excludes_itself_and_stays_on_topic(client, server):
    mug = of_kind(server[1], "Coffee Mugs")[0]
    r = client.get(f"/products/{mug}/similar", params={"k": 5})
    assert r.status_code == 200
    hits = r.json()["results"]
    assert len(hits) == 5 and mug not in {h["id"] for h in hits}
    assert sum("Coffee Mugs" in h["category"] for h in hits) >= 4, hits
    for view in ("image", "text", "fused"):
        assert client.get(f"/products/{mug}/similar", params={"k": 2, "view": view}).json()["view"] == view


def test_product_detail_has_no_server_paths(client, server):
    pid = of_kind(server[1], "Shoes")[0]
    p = client.get(f"/products/{pid}").json()
    assert p["id"] == pid and p["title"] and p["image_url"] == f"/products/{pid}/image"
    assert "text" not in p and "image" not in p  # the server's file layout stays private


def test_recommend_keeps_interests_apart(client, server):
    shoes, mugs = of_kind(server[1], "Shoes"), of_kind(server[1], "Coffee Mugs")
    history = [shoes[0], mugs[0], shoes[1], mugs[1], shoes[2], mugs[2]]
    r = client.post("/recommend", json={"history": history, "k": 6})
    assert r.status_code == 200, r.text
    body = r.json()
    got = [h["id"] for h in body["results"]]
    assert len(got) == 6 and not set(got) & set(history)
    kinds = [h["category"] for h in body["results"]]
    assert sum("Shoes" in c for c in kinds) >= 2 and sum("Coffee Mugs" in c for c in kinds) >= 2, kinds
    assert len(body["interests"]) == 2
    assert {frozenset(i["members"]) for i in body["interests"]} == {frozenset(shoes[:3]), frozenset(mugs[:3])}
    # the top two slots go one to each interest: interleaved, not one list after the other
    assert {body["results"][0]["interest"], body["results"][1]["interest"]} == {0, 1}


def test_recommend_weights_and_recency_shift_the_mix(client, server):
    shoes, mugs = of_kind(server[1], "Shoes"), of_kind(server[1], "Coffee Mugs")
    events = [{"id": s, "weight": 5.0} for s in shoes[:2]] + [{"id": m, "weight": 0.5} for m in mugs[:2]]
    body = client.post("/recommend", json={"history": events, "k": 6}).json()
    kinds = [h["category"] for h in body["results"]]
    assert sum("Shoes" in c for c in kinds) > sum("Coffee Mugs" in c for c in kinds)
    # old mug views, fresh shoe views: with a short half-life the shoes dominate
    t = 1_700_000_000.0
    events = [{"id": m, "timestamp": t} for m in mugs[:2]] + [{"id": s, "timestamp": t + 3600} for s in shoes[:2]]
    body = client.post("/recommend", json={"history": events, "k": 6, "half_life_s": 600}).json()
    assert body["interests"][0]["members"] == shoes[:2]
    assert body["interests"][0]["share"] > 0.9


def test_recommend_unknown_and_invalid_history(client, server):
    shoe = of_kind(server[1], "Shoes")[0]
    body = client.post("/recommend", json={"history": [shoe, "no-such-id"], "k": 3}).json()
    assert body["unknown"] == ["no-such-id"] and len(body["results"]) == 3
    assert_error(client.post("/recommend", json={"history": ["nope-1", "nope-2"]}), 404, "not_found")
    assert_error(client.post("/recommend", json={"history": []}), 422)
    mixed = [{"id": shoe, "timestamp": 1.0}, {"id": "x"}]
    assert_error(client.post("/recommend", json={"history": mixed}), 422, "invalid_history")
    assert_error(client.post("/recommend", json={"history": [shoe], "k": "5"}), 422)  # no silent coercion
    assert_error(client.post("/recommend", json={"history": [{"id": shoe, "weight": -1}]}), 422)
    assert_error(client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"}), 422)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, bytes]:
    """A PNG whose header claims 144 M pixels (PIL refuses), one at 49 M (PIL only warns; we refuse)."""
    return {"huge": png((12_000, 12_000), "1"), "large": png((7_000, 7_000), "1")}


BAD_READS = [
    ("/search", {"q": ""}, 422, None),
    ("/search", {"q": "   "}, 422, "empty_query"),
    ("/search", {"q": "x" * 513}, 422, None),
    ("/search", {"q": "shoe", "k": 0}, 422, None),
    ("/search", {"q": "shoe", "k": 101}, 422, None),
    ("/search", {"q": "shoe", "k": "ten"}, 422, None),
    ("/search", {"q": "shoe", "view": "audio"}, 422, None),
    ("/search", {}, 422, None),
    ("/products/no-such-product", {}, 404, "not_found"),
    ("/products/no-such-product/similar", {}, 404, "not_found"),
    ("/products/no-such-product/image", {}, 404, "not_found"),
    ("/products/..%2F..%2Fetc%2Fpasswd", {}, 404, "not_found"),
    ("/products/..%2F..%2Fetc%2Fpasswd/image", {}, 404, "not_found"),
    ("/products/%2e%2e/image", {}, 404, "not_found"),
    ("/products/..%5C..%5Cwindows/image", {}, 404, "not_found"),
    ("/nowhere", {}, 404, "not_found"),
]


@pytest.mark.parametrize(("path", "params", "status", "code"), BAD_READS)
def test_bad_reads_get_clear_4xx(client, path, params, status, code):
    assert_error(client.get(path, params=params), status, code)


def test_bad_uploads_get_clear_4xx(client, server, bombs):
    def search(data: bytes, name: str = "x.png"):
        return client.post("/search/image", files={"image": (name, data, "application/octet-stream")})

    assert_error(search(b"this is not an image at all"), 415, "invalid_image")
    assert_error(search(b""), 422, "empty_upload")
    jpeg = image_bytes(server[1], of_kind(server[1], "Shoes")[0])
    assert_error(search(jpeg[: len(jpeg) // 2], "half.jpg"), 415, "invalid_image")  # truncated
    assert_error(search(bombs["huge"]), 413, "image_too_large")
    assert_error(search(bombs["large"]), 413, "image_too_large")
    assert_error(search(png((8, 8))), 422, "image_too_small")
    assert_error(search(b"\xff" * (UPLOAD_LIMIT + 10)), 413, "upload_too_large")
    assert_error(client.post("/search/image", content=b"x" * (UPLOAD_LIMIT + 2 * 1024 * 1024),
                             headers={"content-type": "application/octet-stream"}), 413, "payload_too_large")

    def chunks():  # no Content-Length: the limit must hold on a streamed body too
        for _ in range(40):
            yield b"y" * 100_000

    assert_error(client.post("/search/image", content=chunks(), headers={"content-type": "multipart/form-data; "
                                                                          "boundary=x"}), 413, "payload_too_large")
    assert_error(client.post("/search/image"), 422, "missing_image")
    assert client.get("/healthz").status_code == 200  # still serving


# ---------------------------------------------------------------------- writes


def put(client, pid: str, fields: dict, image: bytes | None = None, key: str | None = KEY):
    import json

    files = {"image": ("p.jpg", image, "image/jpeg")} if image is not None else None
    headers = {"X-API-Key": key} if key else {}
    return client.put(f"/products/{pid}", data={"product": json.dumps(fields)}, files=files, headers=headers)


def test_writes_need_the_api_key(client, server):
    shoe = of_kind(server[1], "Shoes")[0]
    assert_error(put(client, "new-1", {"title": "x"}, png((64, 64)), key=None), 401, "unauthorized")
    assert_error(put(client, "new-1", {"title": "x"}, png((64, 64)), key="wrong"), 401, "unauthorized")
    assert_error(client.delete(f"/products/{shoe}"), 401, "unauthorized")
    assert client.get(f"/products/{shoe}").status_code == 200


def test_upsert_is_searchable_then_delete_removes_it(client, server):
    work = server[1]
    mug_photo = image_bytes(work, of_kind(work, "Coffee Mugs")[3])
    fields = {"title": "Zanzibar Striped Ceramic Coffee Mug", "category": "Kitchen & Dining > Coffee Mugs",
              "attributes": {"color": "blue"}, "price": 349}
    r = put(client, "api-mug-1", fields, mug_photo)
    assert r.status_code == 201, r.text
    assert r.json()["created"] is True and r.json()["product"]["price"] == 349.0
    stored = list((work / "uploads").iterdir())
    assert len(stored) == 1 and stored[0].suffix == ".jpg" and stored[0].read_bytes() == mug_photo
    assert client.get("/products/api-mug-1/image").content == mug_photo

    hits = client.get("/search", params={"q": "Zanzibar Striped Ceramic Coffee Mug", "k": 3}).json()["results"]
    assert hits[0]["id"] == "api-mug-1"
    similar = client.get("/products/api-mug-1/similar", params={"k": 3}).json()["results"]
    assert all("Coffee Mugs" in h["category"] for h in similar)

    r = put(client, "api-mug-1", {**fields, "title": "Zanzibar Dotted Ceramic Coffee Mug"})  # keeps its image
    assert r.status_code == 200 and r.json()["created"] is False
    assert client.get("/products/api-mug-1").json()["title"] == "Zanzibar Dotted Ceramic Coffee Mug"
    h = client.get("/healthz").json()
    assert h["products"] == len(products(work)) + 1 == h["index"]["text"]

    assert client.delete("/products/api-mug-1", headers={"X-API-Key": KEY}).json() == {"id": "api-mug-1",
                                                                                      "deleted": True}
    assert_error(client.get("/products/api-mug-1"), 404)
    assert_error(client.delete("/products/api-mug-1", headers={"X-API-Key": KEY}), 404)
    hits = client.get("/search", params={"q": "Zanzibar Dotted Ceramic Coffee Mug", "k": 10}).json()["results"]
    assert "api-mug-1" not in {x["id"] for x in hits}


UPSERT_ERRORS = [
    ("bad-1", "{not json", "img", 422, "invalid_product"),
    ("bad-1", "[1, 2]", "img", 422, "invalid_product"),
    ("bad-1", {"title": "T", "price": -3}, "img", 422, "invalid_product"),
    ("bad-1", {"title": ""}, "img", 422, "invalid_product"),
    ("bad-1", {"title": "T", "image": "../../etc/passwd"}, "img", 422, "invalid_product"),
    ("bad-1", {"title": "T", "id": "other"}, "img", 422, "invalid_product"),
    ("..hidden", {"title": "T"}, "img", 422, "invalid_id"),
    ("a%5Cb", {"title": "T"}, "img", 422, "invalid_id"),
    ("bad-1", {"title": "T"}, None, 422, "missing_image"),
    ("bad-1", {"title": "T"}, "text", 415, "invalid_image"),
    ("bad-1", {"title": "T"}, "tiny", 422, "image_too_small"),
]


@pytest.mark.parametrize(("pid", "fields", "image", "status", "code"), UPSERT_ERRORS)
def test_upsert_rejects_bad_input(client, pid, fields, image, status, code):
    import json

    data = {"img": png((64, 64)), "text": b"hello", "tiny": png((4, 4)), None: None}[image]
    files = {"image": ("p.png", data, "image/png")} if data is not None else None
    body = {"product": fields if isinstance(fields, str) else json.dumps(fields)}
    r = client.put(f"/products/{pid}", data=body, files=files, headers={"X-API-Key": KEY})
    err = assert_error(r, status, code)
    if fields == {"title": "T", "price": -3}:
        assert err["details"] == [{"field": "price", "reason": "negative price"}]
    assert client.get(f"/products/{pid}").status_code == 404


def test_reads_stay_consistent_during_writes(client, server):
    """Searches running while products are added and removed never fail or see a torn state."""
    work = server[1]
    photo = image_bytes(work, of_kind(work, "Shoes")[4])
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        with httpx.Client(base_url=server[0], timeout=60) as c:
            while not stop.is_set():
                for r in (c.get("/search", params={"q": "running shoes", "k": 5}),
                          c.get(f"/products/{of_kind(work, 'Shoes')[0]}/similar", params={"k": 5})):
                    if r.status_code != 200 or len(r.json()["results"]) != 5:
                        errors.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(3):
            assert put(client, f"conc-{i}", {"title": f"Concurrent Shoe {i}", "category": "Footwear > Shoes"},
                       photo).status_code == 201
        for i in range(3):
            assert client.delete(f"/products/conc-{i}", headers={"X-API-Key": KEY}).status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]


def test_metrics_count_requests_and_index_size(client):
    client.get("/search", params={"q": "metrics probe"})
    client.get("/products/missing-for-metrics")
    text = client.get("/metrics").text
    assert 'shopclip_http_requests_total{method="GET",route="/search",status="200"}' in text
    assert 'route="/products/{product_id}",status="404"' in text
    assert "missing-for-metrics" not in text  # route templates, not raw paths
    from prometheus_client.parser import text_string_to_metric_families

    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]  # the official parser reads it
    assert any(s.name == "shopclip_http_request_duration_seconds_bucket" and s.value >= 1
               and s.labels == {"method": "GET", "route": "/search", "le": "+Inf"} for s in samples)
    assert 'shopclip_index_vectors{view="fused"}' in text
    assert "shopclip_catalog_writes_total" in text


def test_second_app_config_read_only_and_protected(server):
    """Same state, stricter config: no key → writes refused; protect_reads → reads need the key."""
    app = create_app(server[1], state=server[2].state.shopclip, api_key="", protect_reads=False)
    strict = create_app(server[1], state=server[2].state.shopclip, api_key=KEY, protect_reads=True)
    with running(app) as url, running(strict) as strict_url, httpx.Client(timeout=30) as c:
        assert_error(c.delete(f"{url}/products/anything", headers={"X-API-Key": ""}), 403, "writes_disabled")
        assert_error(c.post(f"{url}/search/image", data={"url": "http://127.0.0.1/x.jpg"}), 403, "url_fetch_disabled")
        assert_error(c.get(f"{strict_url}/search", params={"q": "shoe"}), 401, "unauthorized")
        assert c.get(f"{strict_url}/search", params={"q": "shoe"}, headers={"X-API-Key": KEY}).status_code == 200
        assert c.get(f"{strict_url}/healthz").status_code == 200  # probes stay open


def test_serve_command_plugs_into_typer(tmp_path):
    import typer
    from typer.testing import CliRunner

    from shopclip.serve.cli import serve_command

    app = typer.Typer()
    app.command("serve")(serve_command)
    app.command("noop")(lambda: None)  # two commands, so "serve" is a subcommand as in shopclip's CLI
    runner = CliRunner()
    help_text = runner.invoke(app, ["serve", "--help"]).output
    assert "--port" in help_text and "shopclip serve demo-work --port 8000" in help_text
    missing = runner.invoke(app, ["serve", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "shopclip build" in missing.output
