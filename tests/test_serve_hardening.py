"""Inputs from the serving audit, against a real uvicorn server on 127.0.0.1.

Each case once gave a 500, stored something that could not be read back, or was
accepted where it should not be: deep nesting, NaN, unpaired surrogates, huge titles,
invisible queries, URL fetches into the server's own network. Also: /metrics labels
every route by its template, and deleting a product removes its uploaded photo.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from shopclip.core.io import read_json, read_jsonl  # noqa: E402
from shopclip.serve.app import MAX_JSON_DEPTH, create_app, json_depth  # noqa: E402
from shopclip.serve.fetch import address_allowed  # noqa: E402
from shopclip.serve.state import TEXT_LIMITS  # noqa: E402
from shopclip.serve.testing import free_port, running, shared_model  # noqa: E402

KEY = "hardening-key"
UPLOAD_LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def server(serve_workdir, tmp_path_factory):
    """(base url, writable work folder, app) with writes on and URL fetch off."""
    work = tmp_path_factory.mktemp("hardening") / "work"
    shutil.copytree(serve_workdir, work)
    app = create_app(work, api_key=KEY, model=shared_model(), max_upload_bytes=UPLOAD_LIMIT, preload_model=True)
    with running(app) as url:
        yield url, work, app


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server[0], timeout=60) as c:
        yield c


def photo(work: Path, n: int) -> bytes:
    """The n-th catalog product's real photo."""
    row = read_jsonl(work / "catalog.valid.jsonl")[n]
    return (Path(read_json(work / "shopclip.json")["catalog_root"]) / row["image"]).read_bytes()


def put(client: httpx.Client, pid: str, product: dict | str, image: bytes | None = None) -> httpx.Response:
    body = product if isinstance(product, str) else json.dumps(product)
    files = {"image": ("p.jpg", image, "image/jpeg")} if image is not None else None
    return client.put(f"/products/{pid}", data={"product": body}, files=files, headers={"X-API-Key": KEY})


def delete(client: httpx.Client, pid: str) -> httpx.Response:
    return client.delete(f"/products/{pid}", headers={"X-API-Key": KEY})


def error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert body["message"] and (code is None or body["error"] == code), body
    return body


def uploads(work: Path) -> set[str]:
    folder = work / "uploads"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def nested(depth: int) -> dict:
    out: dict = {}
    cur = out
    for _ in range(depth - 1):
        cur["a"] = {}
        cur = cur["a"]
    return out


# ---------------------------------------------------------------------- product bodies


def test_deep_labels_are_refused_before_anything_is_written(client, server):
    """Depth ~260 once passed validation, was stored, and made every later GET a 500."""
    version = client.get("/healthz").json()["version"]
    before = uploads(server[1])
    body = error(put(client, "deep-labels", {"title": "Deep", "labels": nested(260)}, photo(server[1], 0)),
                 422, "invalid_product")
    assert f"deeper than {MAX_JSON_DEPTH} levels" in body["message"]
    # shallow enough to parse, still not flat: the labels check names the label
    body = error(put(client, "deep-labels", {"title": "Deep", "labels": nested(3)}, photo(server[1], 0)),
                 422, "invalid_product")
    assert body["details"] == [{"field": "labels.a", "reason": "wrong type: expected a scalar or a list of "
                                "scalars, got object"}]
    error(client.get("/products/deep-labels"), 404, "not_found")
    assert client.get("/healthz").json()["version"] == version  # nothing committed
    assert uploads(server[1]) == before  # and no photo left behind


BAD_BODIES = [
    ("[" * 100_000, "brackets"),                                    # RecursionError in json.loads, once a 500
    ("{" * 100_000, "braces"),
    ('{"title": "T", "x": ' + "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1) + "}", "deep extra field"),
    ('{"title": "T", "labels": {"x": NaN}}', "NaN label"),
    ('{"title": "T", "labels": {"x": 1e999}}', "infinite label"),
    ('{"title": "T", "attributes": {"x": [1]}}', "list attribute"),
    ('{"title": "T", "labels": {"x": [[1]]}}', "nested label list"),
    ('{"title": "T", "labels": {"x": {"y": 1}}}', "label object"),
    ('{"title": "T", "labels": {"x": 9007199254740993}}', "label int past 2**53"),
    ('{"title": "\\ud800 lone surrogate"}', "unpaired surrogate"),
    ('{"title": "T", "labels": {"n": "' + "x" * 257 + '"}}', "long label"),
    (json.dumps({"title": "T", "labels": {f"k{i}": i for i in range(65)}}), "too many labels"),
    (json.dumps({"title": "x" * 100_000}), "100k-char title"),
    (json.dumps({"title": "x" * (TEXT_LIMITS["title"] + 1)}), "title one over"),
    (json.dumps({"title": "T", "description": "d" * (TEXT_LIMITS["description"] + 1)}), "long description"),
    (json.dumps({"title": "T", "category": ["c" * 300, "d" * 300]}), "long category levels"),
    (json.dumps({"title": "T", "attributes": {f"a{i}": "v" for i in range(101)}}), "too many attributes"),
    ("1" * 5000, "a number too long to parse"),
]


@pytest.mark.parametrize("body", [b for b, _ in BAD_BODIES], ids=[name for _, name in BAD_BODIES])
def test_bad_product_bodies_get_a_json_4xx_not_a_500(client, server, body):
    r = put(client, "bad-body", body, photo(server[1], 1))
    error(r, 422, "invalid_product")
    error(client.get("/products/bad-body"), 404, "not_found")


def test_title_over_the_cap_names_the_field(client, server):
    body = error(put(client, "long-title", {"title": "x" * 100_000}, photo(server[1], 1)), 422, "invalid_product")
    assert body["details"] == [{"field": "title", "reason": f"too long (100000 > {TEXT_LIMITS['title']} chars)"}]


# Everything the limits still allow, at or near each limit: PUT must be readable back as sent.
EDGE_PRODUCTS = [
    {"title": "t" * TEXT_LIMITS["title"], "description": "d" * TEXT_LIMITS["description"]},
    {"title": "Family 👨‍👩‍👧 mug, café ☕ — 東京", "category": "Kitchen & Dining > Coffee Mugs",
     "attributes": {"colour": "blue", "capacity_ml": 350, "dishwasher_safe": True, "ratio": 0.5}},
    {"title": "Labelled", "labels": {"adult": False, "score": 0.25, "count": 2**53, "neg": -(2**53),
                                     "none": None, "tags": ["a", 1, 2.5, True, None], "long": "s" * 256,
                                     "empty_list": [], "unicode": "naïve ☃"}},
    {"title": "Many labels", "labels": {f"k{i}": i for i in range(64)}},
    {"title": "Url and group", "url": "https://example.com/p/" + "x" * 2000, "group": "g" * 256, "price": 1e12,
     "split": "test"},
    {"title": "Depth at the limit", "x": json.loads("[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1))},
]


@pytest.mark.parametrize("fields", EDGE_PRODUCTS, ids=range(len(EDGE_PRODUCTS)))
def test_whatever_is_accepted_reads_back(client, server, fields):
    pid = "edge-product"
    r = put(client, pid, fields, photo(server[1], 2))
    assert r.status_code == 201, r.text[:300]
    got = client.get(f"/products/{pid}")
    assert got.status_code == 200, got.text[:300]
    product = got.json()
    assert product == r.json()["product"]
    assert product["title"] == fields["title"]
    if "labels" in fields:
        assert product["labels"] == fields["labels"]
    hits = client.get("/search", params={"q": fields["title"][:100], "k": 100}).json()["results"]
    assert pid in {h["id"] for h in hits}  # served from search results too
    assert delete(client, pid).status_code == 200


def test_deep_json_request_bodies_are_refused_before_parsing(client, server):
    shoe = read_jsonl(server[1] / "catalog.valid.jsonl")[0]["id"]
    deep = '{"history": ["' + shoe + '"], "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    error(client.post("/recommend", content=deep, headers={"content-type": "application/json"}), 400,
          "json_too_deep")
    error(client.post("/recommend", content="[" * 100_000, headers={"content-type": "application/json"}), 400)
    # brackets inside strings are text, not nesting
    ok = client.post("/recommend", json={"history": [shoe, "[" * 100]})
    assert ok.status_code == 200, ok.text[:300]
    assert json_depth('{"a": "[[[[", "b": [{"c": "\\"]]"}]}') == 3
    assert json_depth('"\\' * 1000) == 0  # an unterminated string, linear time


# ---------------------------------------------------------------------- queries


@pytest.mark.parametrize("q", ["\u200b", "\u200b\u200c\u200d\ufeff\u2060", " \u00ad ", "\u3164\u2800", "\x00\x07"])
def test_invisible_queries_are_empty(client, q):
    error(client.get("/search", params={"q": q}), 422, "empty_query")


def test_zero_width_characters_inside_a_query_are_ignored(client):
    plain = client.get("/search", params={"q": "coffee mug", "k": 5}).json()["results"]
    marked = client.get("/search", params={"q": "cof\u200bfee\u00ad mug\ufeff", "k": 5}).json()["results"]
    assert [h["id"] for h in marked] == [h["id"] for h in plain]


# ---------------------------------------------------------------------- URL fetch


def test_address_allowed_only_for_public_unicast():
    for ip in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):
        assert address_allowed(ip), ip
    for ip in ("127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
               "100.64.0.1", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1%eth0", "fc00::1", "fd12::1",
               "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:0001::1", "ff02::1", "not-an-ip"):
        assert not address_allowed(ip), ip


def test_url_fetch_without_allow_list_refuses_the_servers_network(server):
    """--allow-url-fetch alone must not let a client reach loopback, private or metadata addresses."""
    app = create_app(server[1], state=server[2].state.shopclip, api_key=KEY, allow_url_fetch=True)
    mug = read_jsonl(server[1] / "catalog.valid.jsonl")[3]["id"]
    port = server[0].rsplit(":", 1)[1]
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        for target in (f"http://127.0.0.1:{port}/products/{mug}/image", f"http://localhost:{port}/products/{mug}/image",
                       f"http://[::1]:{port}/", f"http://[::ffff:127.0.0.1]:{port}/", "http://169.254.169.254/latest",
                       "http://10.0.0.1/x.jpg", "http://0.0.0.0/", "http://2130706433/", "http://0x7f.1/"):
            r = c.post("/search/image", data={"url": target})
            error(r, 403, "url_address_not_allowed")
        error(c.post("/search/image", data={"url": "http://[::1/"}), 422, "invalid_url")
        error(c.post("/search/image", data={"url": "http://host:99999/"}), 422, "invalid_url")
        metrics = c.get("/metrics").text
        assert 'route="/search/image",status="403"' in metrics


def test_serve_command_takes_fetch_hosts_and_pixel_limit(server, tmp_path):
    """The real `shopclip serve`: --url-fetch-host and --max-image-pixels reach the app."""
    port = free_port()
    cli = Path(sys.executable).with_name("shopclip")
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (closed below)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": str(cli.parent), "HOME": str(tmp_path)}
    proc = subprocess.Popen([str(cli), "serve", str(server[1]), "--port", str(port), "--no-preload",
                             "--allow-url-fetch", "--url-fetch-host", "images.example.com",
                             "--url-fetch-host", "cdn.example.com", "--max-image-pixels", "10000",
                             "--log-level", "warning"], stdout=log, stderr=log, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(600):
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                time.sleep(0.1)
            body = error(c.post("/search/image", data={"url": f"{url}/healthz"}), 403, "url_host_not_allowed")
            assert "images.example.com, cdn.example.com" in body["message"]
            buf = io.BytesIO()
            Image.new("RGB", (200, 200), (10, 200, 10)).save(buf, format="PNG")  # 40,000 px > 10,000
            body = error(c.post("/search/image", files={"image": ("g.png", buf.getvalue(), "image/png")}), 413,
                         "image_too_large")
            assert "10000 pixels" in body["message"]
    finally:
        proc.kill()
        proc.wait(timeout=30)
        log.close()


# ---------------------------------------------------------------------- metrics


def test_metrics_label_docs_static_and_refused_uploads_by_route(client):
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/no-such-file.js").status_code == 404
    r = client.post("/search/image", content=b"x" * (UPLOAD_LIMIT + 2 * 1024 * 1024),
                    headers={"content-type": "application/octet-stream"})
    error(r, 413, "payload_too_large")
    client.put("/healthz")  # right path, wrong method
    client.get("/no/such/route")
    text = client.get("/metrics").text
    assert 'route="/openapi.json",status="200"' in text
    assert 'method="GET",route="/static/{path}",status="200"' in text
    assert 'route="/static/{path}",status="404"' in text
    assert 'method="POST",route="/search/image",status="413"' in text
    assert 'method="PUT",route="/healthz",status="405"' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "app.js" not in text and "style.css" not in text and "/no/such/route" not in text
    for gauge in ("shopclip_products", "shopclip_index_vectors", "shopclip_model_loaded", "shopclip_state_version",
                  "shopclip_uptime_seconds"):
        assert f"# HELP {gauge} " in text and f"# TYPE {gauge} gauge" in text, gauge
    helped = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    typed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert helped == typed  # every metric family is described


def test_head_metrics(client):
    r = client.head("/metrics")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"].startswith("text/plain")
    assert 'method="HEAD",route="/metrics",status="200"' in client.get("/metrics").text


# ---------------------------------------------------------------------- uploads


def test_uploaded_photo_is_removed_when_no_product_uses_it(client, server):
    work = server[1]
    first, second = photo(work, 4), photo(work, 5)
    before = uploads(work)
    assert put(client, "up-a", {"title": "Upload A"}, first).status_code == 201
    assert put(client, "up-b", {"title": "Upload B"}, first).status_code == 201  # same photo: one file
    shared = uploads(work) - before
    assert len(shared) == 1
    assert delete(client, "up-a").status_code == 200
    assert uploads(work) - before == shared  # up-b still uses it
    assert client.get("/products/up-b/image").content == first

    assert put(client, "up-b", {"title": "Upload B"}, second).status_code == 200  # photo replaced
    replaced = uploads(work) - before
    assert len(replaced) == 1 and replaced != shared  # the old file went with the replacement
    assert client.get("/products/up-b/image").content == second
    assert put(client, "up-b", {"title": "Upload B renamed"}).status_code == 200  # same photo kept
    assert uploads(work) - before == replaced
    assert delete(client, "up-b").status_code == 200
    assert uploads(work) == before
    error(client.get("/products/up-b/image"), 404, "not_found")


def test_random_product_bodies_are_stored_readable_or_refused(client, server):
    """Property: any JSON object sent as `product` is either refused with a 4xx and leaves
    nothing behind, or stored and then read back exactly as the PUT answered it."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    # every code point, unpaired surrogates and zero-width characters included
    text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | text
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                          max_leaves=12)
    listed = st.lists(scalars, max_size=3)
    plausible = {  # each field: mostly the right shape with hostile contents, sometimes anything at all
        "title": text.filter(str.strip), "description": text, "category": text | st.lists(text, max_size=3),
        "attributes": st.dictionaries(text, scalars, max_size=4),
        "labels": st.dictionaries(text, scalars | listed, max_size=4), "price": scalars, "url": text,
        "group": text | st.integers(), "split": st.sampled_from(["train", "val", "test"]) | text, "vendor_sku": values,
    }
    shaped = {name: st.one_of(good, good, good, values) for name, good in plausible.items()}
    fields = st.fixed_dictionaries({"title": shaped.pop("title")}, optional=shaped)
    image = photo(server[1], 6)
    seen = {"n": 0, "stored": 0, "refused": 0}

    @hypothesis.settings(max_examples=40, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(fields)
    def check(product: dict) -> None:
        seen["n"] += 1
        pid = f"prop-{seen['n']}"
        r = put(client, pid, json.dumps(product), image)  # ensure_ascii: surrogates travel as \\ud800 escapes
        assert r.status_code in (201, 422), (r.status_code, r.text[:300])
        got = client.get(f"/products/{pid}")
        if r.status_code == 422:
            assert r.json()["error"] == "invalid_product" and got.status_code == 404
            seen["refused"] += 1
            return
        assert got.status_code == 200, got.text[:300]
        assert got.json() == r.json()["product"]
        assert delete(client, pid).status_code == 200
        seen["stored"] += 1

    check()
    assert seen["stored"] >= 5 and seen["refused"] >= 5, seen  # both sides of the property were exercised
