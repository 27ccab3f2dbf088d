"""POST /tag and POST /dedupe/check on a real uvicorn server on 127.0.0.1, over real products.

Heads: the session fixture ``serve_heads`` (default model, 8 leaves, a MADE-UP
``labels.adult`` = flip flops), copied into the served work folder as WORKDIR/heads.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from conftest import SAMPLE_DIR, read_sample_rows  # noqa: E402
from shopclip.core.io import read_json, read_jsonl  # noqa: E402
from shopclip.serve.app import create_app  # noqa: E402
from shopclip.serve.testing import running, shared_model  # noqa: E402

UPLOAD_LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def server(serve_workdir, serve_heads, tmp_path_factory):
    work = tmp_path_factory.mktemp("understand") / "work"
    shutil.copytree(serve_workdir, work)
    shutil.copytree(serve_heads, work / "heads")
    app = create_app(work, model=shared_model(), preload_model=True, max_upload_bytes=UPLOAD_LIMIT)
    with running(app) as url:
        yield url, work


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server[0], timeout=60) as c:
        yield c


def served(work: Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(work / "catalog.valid.jsonl")}


def photo(work: Path, row: dict) -> bytes:
    return (Path(read_json(work / "shopclip.json")["catalog_root"]) / row["image"]).read_bytes()


def shoe(work: Path) -> dict:
    return next(r for _, r in sorted(served(work).items()) if r["category"][:2] == ["Footwear", "Shoes"])


def listing(data: bytes, title: str, **fields: str) -> dict:
    return {"files": {"image": ("listing.jpg", data, "image/jpeg")}, "data": {"title": title, **fields}}


def error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert body["error"] == code and body["message"], body
    return body


def test_tag_a_new_listing(client, server):
    row = shoe(server[1])
    r = client.post("/tag", **listing(photo(server[1], row), row["title"]))
    assert r.status_code == 200, r.text
    out = r.json()
    cat = out["category"]
    assert cat["levels"][:2] == ["Footwear", "Shoes"] and cat["decided"].startswith("Footwear")
    assert all(a >= b for a, b in zip(cat["confidence"], cat["confidence"][1:], strict=False))
    assert "color" in out["attributes"] and out["attributes"]["color"]["given"] is None
    assert set(out["fill"]) == {n for n, a in out["attributes"].items() if a["status"] == "filled"}
    adult = out["labels"]["adult"]
    assert adult["calibrated"] is True and adult["decision"] is False  # a made-up label: flip flops only
    assert len(out["neighbours"]) == 3 and out["neighbours"][0]["category"].startswith("Footwear")
    assert out["took_ms"] > 0


def test_tag_never_replaces_what_the_seller_gave(client, server):
    row = shoe(server[1])
    r = client.post("/tag", **listing(photo(server[1], row), row["title"], category="Apparel > Topwear",
                                      attributes=json.dumps({"color": "Pink", "usage": "Casual"})))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["attributes"]["color"]["given"] == "Pink" and "color" not in out["fill"]
    assert out["attributes"]["color"]["status"] in ("disagrees", "given")
    assert out["category"]["given"] == "Apparel > Topwear" and out["category"]["agrees"] is False
    assert any(d["field"] == "category" and d["given"] == "Apparel > Topwear" for d in out["disagreements"])


def test_dedupe_check_finds_the_listed_product(client, server):
    row = shoe(server[1])
    r = client.post("/dedupe/check?k=5", **listing(photo(server[1], row), row["title"] + " new"))
    assert r.status_code == 200, r.text
    out = r.json()
    top = out["duplicates"][0]
    assert top["id"] == row["id"] and top["decision"] == "duplicate" and top["reason"] == "identical photo"
    assert top["probability"] == 1.0 and top["image_similarity"] > 0.99 and top["image_url"].endswith("/image")
    assert 0 < out["review_threshold"] <= out["threshold"] < 1 and out["candidates"] >= 5
    assert all(d["probability"] >= out["review_threshold"] for d in out["duplicates"])


def test_dedupe_check_of_a_product_not_listed(client, server):
    listed = set(served(server[1]))
    other = next(r for r in sorted(read_sample_rows(), key=lambda r: r["id"])
                 if r["id"] not in listed and r["category"][-1] == "Watches")
    r = client.post("/dedupe/check", **listing((SAMPLE_DIR / other["image"]).read_bytes(), other["title"]))
    assert r.status_code == 200, r.text
    assert not [d for d in r.json()["duplicates"] if d["decision"] == "duplicate"]


def test_bad_listings_get_clear_4xx(client, server):
    row = shoe(server[1])
    good = photo(server[1], row)
    error(client.post("/tag", files={"image": ("x.jpg", good, "image/jpeg")}), 422, "invalid_request")  # no title
    error(client.post("/tag", **listing(good, "\u200b \u2800")), 422, "empty_title")
    error(client.post("/tag", **listing(good, "Shoe", attributes="[1, 2]")), 422, "invalid_attributes")
    error(client.post("/tag", **listing(good, "Shoe", attributes='{"color": {"a": 1}}')), 422, "invalid_attributes")
    error(client.post("/dedupe/check", **listing(b"not an image", "Shoe")), 415, "invalid_image")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    error(client.post("/tag", **listing(buf.getvalue(), "Shoe")), 422, "image_too_small")
    error(client.post("/dedupe/check?k=0", **listing(good, "Shoe")), 422, "invalid_request")
    r = client.post("/tag", **listing(b"\xff" * (UPLOAD_LIMIT + 10), "Shoe"))
    assert r.status_code == 413 and r.json()["error"] in ("upload_too_large", "payload_too_large")


def test_openapi_documents_the_routes_and_their_errors(client):
    spec = client.get("/openapi.json").json()
    for path in ("/tag", "/dedupe/check"):
        codes = set(spec["paths"][path]["post"]["responses"])
        assert {"200", "413", "415", "422", "503"} <= codes, (path, codes)


def test_without_heads_or_with_another_models_heads_503_says_how_to_fix(serve_workdir, serve_heads, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(serve_workdir, work)
    row = shoe(work)
    with running(create_app(work, model=shared_model())) as url, httpx.Client(base_url=url, timeout=60) as c:
        body = error(c.post("/tag", **listing(photo(work, row), row["title"])), 503, "heads_missing")
        assert "shopclip heads train" in body["message"] and "heads" in body["message"]
        error(c.post("/dedupe/check", **listing(photo(work, row), row["title"])), 503, "heads_missing")
        shutil.copytree(serve_heads, work / "heads")  # fitted while the server runs: picked up without a restart
        assert c.post("/tag", **listing(photo(work, row), row["title"])).status_code == 200
        doc = read_json(work / "heads" / "heads.json")
        doc["model"]["fingerprint"] = "another-model"
        (work / "heads" / "heads.json").write_text(json.dumps(doc))
        body = error(c.post("/tag", **listing(photo(work, row), row["title"])), 503, "heads_mismatch")
        assert "refit" in body["message"]
