"""`shopclip heads train`, `tag` and `dedupe` on real sample products, through the real CLI.

The heads come from the session fixture ``serve_heads`` (conftest): the default model's
heads fitted on 192 real products of 8 leaves with a MADE-UP ``labels.adult`` (1 for flip
flops), which exists only to exercise the calibrated binary head.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import SAMPLE_DIR, read_sample_rows, write_catalog
from shopclip.cli import app
from shopclip.core.io import read_json, read_jsonl
from shopclip.heads.binary import ZeroShotBinary
from shopclip.heads.bundle import HEADS_FILE, HeadsMismatchError, TaskHeads
from shopclip.heads.matching import default_features
from shopclip.understand.testing import LEAVES, cached_heads, labelled_rows

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def rows():
    return labelled_rows(read_sample_rows())


@pytest.mark.parametrize("cmd", [["heads", "train"], ["tag"], ["dedupe"]], ids=" ".join)
def test_help_has_an_example(cmd):
    res = run(*cmd, "--help")
    assert res.exit_code == 0 and "Example" in res.output


def test_heads_train_command_fits_and_reports(request, rows, tmp_path):
    small = labelled_rows(read_sample_rows(), per_leaf=12)
    cat = write_catalog(tmp_path / "cat", small)
    cache = Path(request.config.cache.mkdir("shopclip-heads")) / "features"  # the fixture's tower cache
    res = run("heads", "train", cat, "--out", tmp_path / "heads", "--min-attribute-products", "10",
              "--relist-train", "24", "--cache", cache)
    assert res.exit_code == 0, res.output
    assert "leaf accuracy" in res.output and "heads saved to" in res.output
    heads = TaskHeads.load(tmp_path / "heads")
    assert heads.metrics["data"] == {"train": 64, "val": 16, "test": 16, "rejected_rows": 0, "catalog": str(cat)}
    assert heads.config["C_chosen"] in (0.01, 0.1, 1.0) and heads.metrics["C_choice"]["val_leaf_accuracy"]
    bad = run("heads", "train", tmp_path / "missing.jsonl", "--out", tmp_path / "h2")
    assert bad.exit_code == 2 and "missing.jsonl" in bad.output


def test_heads_folder_holds_vocabularies_calibration_and_metrics(serve_heads):
    assert {p.name for p in serve_heads.iterdir()} >= {HEADS_FILE, "weights.npz", "neighbours", "neighbours.jsonl"}
    doc = read_json(serve_heads / HEADS_FILE)
    heads = TaskHeads.load(serve_heads)
    assert sorted(" > ".join(c) for c in heads.category.tree.classes) == sorted(LEAVES)
    assert heads.category.head.temperature > 0 and len(heads.category.thresholds) == 3
    assert "color" in heads.attributes and "Black" in heads.attributes["color"].head.classes
    assert "adult" in heads.binary and "adult" not in heads.zero_shot  # labels exist: the calibrated head
    test = doc["metrics"]["test"]
    assert test["category"]["leaf_accuracy"] >= 0.8 and test["category"]["top_accuracy"] >= 0.9
    assert 0.0 <= test["category"]["ece_leaf"] <= 0.3
    assert test["binary"]["adult"]["positives"] == 4 and test["binary"]["adult"]["recall"] >= 0.5
    m = heads.matcher
    assert 0 < m.review <= m.threshold < 1 and m.features == default_features()  # photo checks with OpenCV
    assert doc["model"]["fingerprint"] and doc["config"]["target_accuracy"] == 0.9


def test_heads_refuse_another_models_vectors(serve_heads):
    with pytest.raises(HeadsMismatchError, match="refit them"):
        TaskHeads.load(serve_heads, fingerprint="0" * 40)
    with pytest.raises(FileNotFoundError, match="shopclip heads train"):
        TaskHeads.load(serve_heads.parent / "nowhere")


def test_without_adult_labels_the_zero_shot_score_says_it_is_uncalibrated(request, rows):
    unlabelled = [{k: v for k, v in r.items() if k != "labels"} for r in rows]
    folder = cached_heads(Path(request.config.cache.mkdir("shopclip-heads")), unlabelled, write_catalog)
    heads = TaskHeads.load(folder)
    assert not heads.binary and isinstance(heads.zero_shot["adult"], ZeroShotBinary)
    assert "zero-shot" in heads.skipped["binary"]["adult"]
    rng = np.random.default_rng(0)
    views = {v: rng.normal(size=(2, heads.model["embed_dim"])).astype(np.float32) for v in ("image", "text")}
    views["fused"] = np.concatenate([views["image"], views["text"]], axis=1)
    lab = heads.tag(views, [{}, {}], neighbours=0)[0]["labels"]["adult"]
    assert lab["calibrated"] is False and lab["decision"] is None and "probability" not in lab
    assert "uncalibrated" in lab["note"] and "not a probability" in lab["note"]


def _tag_catalog(tmp_path: Path, rows: list[dict]) -> tuple[Path, dict]:
    """The fixture's test split, one product with its colour removed, one with a wrong colour, two bad rows."""
    test = [dict(r, attributes=dict(r["attributes"])) for r in rows if r["split"] == "test"]
    no_colour, wrong = test[0], next(r for r in test if r["attributes"].get("color") == "Black")
    del no_colour["attributes"]["color"]
    wrong["attributes"]["color"] = "Pink"
    bad = [{"id": "no-title", "image": test[1]["image"]}, {**test[2], "id": "no-photo", "image": "images/missing.jpg"}]
    cat = write_catalog(tmp_path / "cat", test[:10] + bad[:1] + test[10:] + bad[1:])
    return cat, {"no_colour": no_colour["id"], "wrong": wrong["id"], "valid": [r["id"] for r in test]}


def test_tag_fills_only_missing_values_reports_disagreements_and_bad_rows(serve_heads, rows, tmp_path):
    cat, ids = _tag_catalog(tmp_path, rows)
    out = tmp_path / "tagged.jsonl"
    res = run("tag", cat, "--heads", serve_heads, "--out", out, "--batch", "8")
    assert res.exit_code == 1, res.output  # rows were rejected; the rest was tagged
    assert "2 rows rejected" in res.output and "line 11" in res.output
    errors = read_jsonl(Path(f"{out}.errors.jsonl"))
    assert {(e["line"], e["field"]) for e in errors} == {(11, "title"), (len(ids["valid"]) + 2, "image")}
    tagged = {r["id"]: r for r in read_jsonl(out)}
    assert sorted(tagged) == sorted(ids["valid"])
    given = {r["id"]: r for r in rows}
    for pid, row in tagged.items():
        assert row["category"]["levels"][0] == row["category"]["path"].split(" > ")[0]
        attrs = given[pid]["attributes"] if pid not in (ids["no_colour"], ids["wrong"]) else None
        for name, entry in row["attributes"].items():
            if entry["given"] is not None:
                assert name not in row["fill"] and entry["status"] in ("agrees", "disagrees", "given")
            if attrs is not None and name in attrs:
                assert entry["given"] == attrs[name]
        assert {d["field"] for d in row["disagreements"]} >= {f"attributes.{n}" for n, e in row["attributes"].items()
                                                              if e["status"] == "disagrees"}
        assert row["labels"]["adult"]["calibrated"] is True and 0 <= row["labels"]["adult"]["probability"] <= 1
        assert len(row["neighbours"]) == 3 and all(n["id"] != pid for n in row["neighbours"])
    colour = tagged[ids["no_colour"]]["attributes"]["color"]
    assert colour["given"] is None and colour["status"] in ("filled", "unsure")
    assert (colour["status"] == "filled") == ("color" in tagged[ids["no_colour"]]["fill"])
    wrong = tagged[ids["wrong"]]["attributes"]["color"]
    assert wrong["given"] == "Pink" and wrong["status"] in ("disagrees", "given")
    assert "color" not in tagged[ids["wrong"]]["fill"]
    flip = [r for pid, r in tagged.items() if given[pid]["category"][-1] == "Flip Flops"]
    assert sum(r["labels"]["adult"]["decision"] for r in flip) >= len(flip) // 2  # the made-up label is learnt


def test_tag_resumes_after_a_kill_and_restarts_for_other_heads(serve_heads, rows, tmp_path):
    cat, ids = _tag_catalog(tmp_path, rows)
    out = tmp_path / "tagged.jsonl"
    assert run("tag", cat, "--heads", serve_heads, "--out", out, "--no-check-images").exit_code == 1
    full = out.read_text().splitlines(keepends=True)
    out.write_text("".join(full[:5]) + full[5][: len(full[5]) // 2])  # killed while writing row 6
    res = run("tag", cat, "--heads", serve_heads, "--out", out, "--batch", "4")
    assert "5 already done" in res.output, res.output
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in again) == sorted(ids["valid"])  # every product once
    assert again[:5] == [json.loads(x) for x in full[:5]]
    other = tmp_path / "heads2"
    shutil.copytree(serve_heads, other)
    doc = read_json(other / HEADS_FILE)
    doc["created"] = "refitted"
    (other / HEADS_FILE).write_text(json.dumps(doc))
    res = run("tag", cat, "--heads", other, "--out", out)
    assert "0 already done" in res.output
    assert len({r["heads"] for r in read_jsonl(out)}) == 1


def test_dedupe_groups_a_copied_photo_and_a_relisting(serve_heads, rows, tmp_path):
    from shopclip.eval.synthetic import make_relisting

    pool = [dict(r) for r in rows if r["split"] in ("val", "test")]
    copied, relisted = pool[3], pool[20]
    copy = {**copied, "id": "copy-of-" + copied["id"], "title": copied["title"] + " (new stock)"}
    folder = tmp_path / "cat"
    rel = make_relisting(relisted["id"], relisted["title"], "", relisted["attributes"], SAMPLE_DIR / relisted["image"],
                         folder / "images", seed=4)
    relist = {**relisted, "id": "relist-of-" + relisted["id"], "title": rel.title, "image": "images/" + Path(rel.image).name}
    cat = write_catalog(folder, [*pool, copy, relist])
    out = tmp_path / "groups.jsonl"
    res = run("dedupe", cat, "--out", out, "--heads", serve_heads)
    assert res.exit_code == 0, res.output
    groups = [json.loads(line) for line in out.read_text().splitlines()]
    members = [{m["id"] for m in g["members"]} for g in groups]
    assert {copied["id"], copy["id"]} in members or any({copied["id"], copy["id"]} <= m for m in members)
    assert any({relisted["id"], relist["id"]} <= m for m in members), groups
    edge = next(e for g in groups for e in g["edges"] if {e["a"], e["b"]} == {copied["id"], copy["id"]})
    assert edge["reason"] == "identical photo" and edge["probability"] == 1.0
    review = read_jsonl(tmp_path / "groups.review.jsonl")
    assert all(r["probability"] < groups[0]["threshold"] or "same photo" in r["why_review"] for r in review)
    assert "groups of duplicates" in res.output
