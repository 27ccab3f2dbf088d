"""`ground_catalog`, `shopclip ground` and the build stage on small real catalogs with broken rows mixed in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import pick_rows, write_catalog
from shopclip.catalog import Catalog
from shopclip.grounding import Box, Localiser, create_localiser, crop_overrides, ground_catalog, read_boxes
from shopclip.grounding.runner import safe_name


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture()
def small(tmp_path) -> Path:
    """8 real products + a truncated JPEG + a missing image + a text file posing as an image."""
    rows = pick_rows(8)
    path = write_catalog(tmp_path, rows)
    (tmp_path / "images" / "broken.jpg").write_bytes((tmp_path / rows[0]["image"]).read_bytes()[:300])
    (tmp_path / "images" / "text.jpg").write_text("not a jpeg")
    extra = [
        {**rows[1], "id": "bad/truncated", "image": "images/broken.jpg"},
        {**rows[2], "id": "missing", "image": "images/nope.jpg"},
        {**rows[3], "id": "text", "image": "images/text.jpg"},
    ]
    with open(path, "a", encoding="utf-8") as fp:
        for r in extra:
            fp.write(json.dumps(r) + "\n")
    return path


class Counting(Localiser):
    """A real localiser (foreground) that counts its calls and can be told to fail or stop."""

    name = "counting"

    def __init__(self, fail_on: str | None = None, stop_after: int | None = None) -> None:
        self.inner = create_localiser("foreground")
        self.calls = 0
        self.fail_on = fail_on
        self.stop_after = stop_after

    def options(self) -> dict:
        return self.inner.options()  # the same boxes as the real localiser it wraps

    def localise(self, image: Image.Image, prompt: str) -> list[Box]:
        self.calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise KeyboardInterrupt  # a user's Ctrl-C halfway through
        if self.fail_on and prompt == self.fail_on:
            raise RuntimeError("boom")
        return self.inner.localise(image, prompt)


def test_ground_catalog_writes_boxes_crops_sheet_and_reports_bad_rows(small, tmp_path):
    out = tmp_path / "out"
    res = ground_catalog(small, out, method="foreground", progress=False, sheet=12)
    rows = read_boxes(out)
    assert res.total == len(rows) == 11
    assert res.errors == 3 and res.localised + res.fallback == 8
    by_id = {r["id"]: r for r in rows}
    assert "truncated" in by_id["bad/truncated"]["error"]
    assert by_id["missing"]["error"].startswith("cannot read image")
    assert "unreadable" in by_id["text"]["error"]
    for r in rows:
        assert {"id", "box", "score", "method", "prompt", "fallback", "error"} <= set(r)
        if r["error"]:
            continue
        w, h = r["size"]
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert r["method"] == "foreground"
        if r["fallback"]:
            assert r["crop"] is None and r["reason"]
        else:
            crop = Image.open(out / r["crop"])
            assert crop.format == "JPEG"
            assert abs(crop.size[0] - (x1 - x0)) <= 2 and abs(crop.size[1] - (y1 - y0)) <= 2
    sheet = out / "contact_sheet.png"
    assert sheet.exists() and sheet.stat().st_size < 500_000
    assert Image.open(sheet).size[0] == 8 * 144
    # crop_overrides: only really localised rows with a crop on disk
    over = crop_overrides(out)
    assert set(over) == {r["id"] for r in rows if r["crop"]}


def test_rerun_is_cached_and_a_new_method_is_not(small, tmp_path):
    out = tmp_path / "out"
    first = Counting()
    ground_catalog(small, out, localiser=first, progress=False, sheet=0)
    assert first.calls == 8
    again = Counting()
    res = ground_catalog(small, out, localiser=again, progress=False, sheet=0)
    assert again.calls == 0 and res.cached == 8
    before = {r["id"]: r["box"] for r in read_boxes(out)}
    res = ground_catalog(small, out, method="full_image", progress=False, sheet=0)
    assert res.cached == 0 and res.fallback == 0
    assert {r["id"]: r["box"] for r in read_boxes(out)} != before
    # the earlier method's crops are gone; the current ones exist
    assert all((out / r["crop"]).exists() for r in read_boxes(out) if r["crop"])
    assert len(list((out / "crops").glob("*.jpg"))) == 8


def test_interrupted_run_resumes(small, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        ground_catalog(small, out, localiser=Counting(stop_after=3), progress=False, sheet=0)
    assert not (out / "boxes.jsonl").exists()
    rest = Counting()
    res = ground_catalog(small, out, localiser=rest, progress=False, sheet=0)
    assert res.cached == 3 and rest.calls == 5


def test_localiser_failure_is_a_row_error_not_a_crash(small, tmp_path):
    cat = Catalog.load(small)
    victim = next(p for p in cat if p.id == pick_rows(8)[4]["id"])
    from shopclip.grounding.taxonomy import product_type

    res = ground_catalog(cat, tmp_path / "o", localiser=Counting(fail_on=product_type(victim)), progress=False,
                         sheet=0)
    rows = {r["id"]: r for r in read_boxes(tmp_path / "o")}
    assert "localiser failed: RuntimeError: boom" in rows[victim.id]["error"]
    assert res.errors >= 4 and res.localised + res.fallback >= 1


class Degenerate(Localiser):
    name = "degenerate"

    def localise(self, image: Image.Image, prompt: str) -> list[Box]:
        return [Box(5, 5, 6, 6, 0.99, "speck")]


def test_degenerate_boxes_fall_back_with_a_reason(small, tmp_path):
    ground_catalog(small, tmp_path / "o", localiser=Degenerate(), progress=False, sheet=0)
    ok = [r for r in read_boxes(tmp_path / "o") if not r["error"]]
    assert ok and all(r["fallback"] and "degenerate box" in r["reason"] and r["box"][:2] == [0, 0] for r in ok)


def test_prompt_modes_and_safe_names(small, tmp_path):
    ground_catalog(small, tmp_path / "o", method="full_image", prompt="title", progress=False, sheet=0)
    titles = {r["id"]: r["title"] for r in map(json.loads, small.read_text().splitlines())}
    assert all(r["prompt"] == titles[r["id"]] for r in read_boxes(tmp_path / "o"))
    with pytest.raises(KeyError):
        ground_catalog(small, tmp_path / "p", method="full_image", prompt="colour", progress=False)
    assert "/" not in safe_name("a/b") and safe_name("a/b") != safe_name("a_b")


def test_cli_ground(small, tmp_path):
    import typer

    from shopclip.grounding.cli import ground_command

    app = typer.Typer()
    app.command("ground")(ground_command)
    app.command("noop")(lambda: None)  # a second command keeps typer in sub-command mode
    runner = CliRunner()
    res = runner.invoke(app, ["ground", str(small), "--out", str(tmp_path / "o"), "--method", "foreground",
                              "--sheet", "4"])
    assert res.exit_code == 1, res.output  # three rows have unreadable images
    rows = read_boxes(tmp_path / "o")
    localised = sum(1 for r in rows if not r["error"] and not r["fallback"])
    fallback = sum(1 for r in rows if not r["error"] and r["fallback"])
    assert len(rows) == 11 and localised + fallback == 8 and localised >= 6  # foreground finds most studio shots
    # the printed summary says exactly what boxes.jsonl holds (rich may wrap it: whitespace collapsed)
    said = " ".join(res.output.split())
    assert f"11 products: {localised} localised, {fallback} full-image fallbacks, 3 errors" in said, res.output
    res = runner.invoke(app, ["ground", str(small), "--out", str(tmp_path / "o"), "--method", "nope"])
    assert res.exit_code == 2 and "unknown localiser" in res.output
    res = runner.invoke(app, ["ground", str(small), "--out", str(tmp_path / "o"), "--list-methods"])
    assert res.exit_code == 0 and "combined" in res.output and "owlv2:<model id>" in res.output
    res = runner.invoke(app, ["ground", "--help"])
    assert "Example: shopclip ground" in res.output


def test_build_stage_feeds_crops_to_embed(tmp_path, monkeypatch):
    from shopclip.grounding import ground_stage
    from shopclip.index.store import EmbeddingStore
    from shopclip.pipeline import build as build_mod

    monkeypatch.setattr(build_mod, "_STAGES", list(build_mod._STAGES))
    build_mod.register_stage(ground_stage(), before="embed")  # the pipeline has it already; no duplicate
    assert build_mod.stages().count("ground") == 1
    assert build_mod.stages().index("ground") == build_mod.stages().index("embed") - 1
    cat = write_catalog(tmp_path / "cat", pick_rows(6))
    opts = build_mod.BuildOptions(progress=False, extra={"ground": "foreground"})
    runs = {r.name: r for r in build_mod.build(cat, tmp_path / "work", opts)}
    assert runs["ground"].ran and "6 products" in runs["ground"].summary
    store = EmbeddingStore.open(tmp_path / "work" / "embeddings")
    images = {m["id"]: m["image"] for m in store.meta()}
    crops = crop_overrides(tmp_path / "work" / "ground")
    assert crops and all(images[i] == str(p) for i, p in crops.items())
    again = {r.name: r for r in build_mod.build(cat, tmp_path / "work", opts)}
    assert not again["ground"].ran and not again["embed"].ran  # restore() re-supplied the same crops
    # without the option the stage is skipped and the photos themselves are embedded
    plain = {r.name: r for r in build_mod.build(cat, tmp_path / "work", build_mod.BuildOptions(progress=False))}
    assert "ground" not in plain and plain["embed"].ran


def test_localiser_options_are_part_of_the_cache_key(small, tmp_path):
    out = tmp_path / "o"
    ground_catalog(small, out, localiser=create_localiser("foreground", keep_frac=0.15), progress=False, sheet=0)
    same = ground_catalog(small, out, localiser=create_localiser("foreground", keep_frac=0.15), progress=False,
                          sheet=0)
    other = ground_catalog(small, out, localiser=create_localiser("foreground", keep_frac=0.5), progress=False,
                           sheet=0)
    assert same.cached == 8 and other.cached == 0


def test_boxes_only_run_then_crops_run(small, tmp_path):
    out = tmp_path / "o"
    ground_catalog(small, out, method="foreground", crops=False, progress=False, sheet=0)
    assert not list((out / "crops").glob("*.jpg"))
    ground_catalog(small, out, method="foreground", crops=True, progress=False, sheet=0)
    rows = [r for r in read_boxes(out) if not r["error"] and not r["fallback"]]
    assert rows and all(r["crop"] and (out / r["crop"]).exists() for r in rows)


def _cli():
    import typer

    from shopclip.grounding.cli import ground_command

    app = typer.Typer()
    app.command("ground")(ground_command)
    app.command("noop")(lambda: None)
    return app


def test_rows_rejected_by_the_catalog_are_reported_and_counted(tmp_path):
    rows = pick_rows(3)
    path = write_catalog(tmp_path, rows)
    with open(path, "a", encoding="utf-8") as fp:
        fp.write(json.dumps({**rows[0], "id": "no-title", "title": ""}) + "\n")   # line 4
        fp.write(json.dumps({"title": "no id", "image": rows[1]["image"]}) + "\n")  # line 5
    res = ground_catalog(path, tmp_path / "o", method="full_image", progress=False, sheet=0)
    assert res.total == 3 and res.errors == 0 and res.rejected == 2 and not res.ok
    assert {r["line"] for r in res.rejected_rows} == {4, 5}
    assert all(r["field"] and r["reason"] for r in res.rejected_rows)
    assert "2 catalog rows rejected" in res.summary()

    out = CliRunner().invoke(_cli(), ["ground", str(path), "--out", str(tmp_path / "c"), "--method", "full_image",
                                      "--sheet", "0"])
    assert out.exit_code == 1, out.output
    text = " ".join(out.output.split())
    assert "rejected: line 4 (id no-title): title:" in text and "rejected: line 5: id:" in text
    assert "3 products:" in text and "0 errors, 2 catalog rows rejected" in text


def test_a_catalog_whose_every_row_is_rejected_is_not_a_success(tmp_path):
    rows = pick_rows(2)
    path = write_catalog(tmp_path, [{**r, "title": ""} for r in rows])
    out = CliRunner().invoke(_cli(), ["ground", str(path), "--out", str(tmp_path / "c"), "--method", "full_image"])
    assert out.exit_code == 2, out.output
    text = " ".join(out.output.split())
    assert "0 products" not in text and "0 errors" not in text
    assert "all 2 catalog rows were rejected" in text and "rejected: line 1" in text and "rejected: line 2" in text
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = CliRunner().invoke(_cli(), ["ground", str(empty), "--out", str(tmp_path / "e"), "--method", "full_image"])
    assert out.exit_code == 2 and "holds no rows" in " ".join(out.output.split())
