"""run_eval end to end: report files, required keys, baselines with deltas, caching, the CLI.

The model is a real DualEncoder whose towers are tiny modules defined here (hashed
bag-of-words text, one random conv layer for images), registered through the same tower
registry the real towers use, so the whole pipeline runs in seconds on real products.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import read_sample_rows, write_catalog
from shopclip.eval import run_eval
from shopclip.models import ImageTransform, add_model_config, load_model
from shopclip.models.towers import ImageTower, TextTower, register_tower

TINY = "test-eval-tiny"


class TinyTextTower(TextTower):
    """Hashed bag of words → mean of seeded random word vectors (word overlap = similarity)."""

    name = "test-eval-tiny-text"

    def __init__(self, max_length: int = 16, **_: object) -> None:
        super().__init__()
        self.max_length = max_length
        self.output_dim = 32
        self.words = nn.Embedding(1024, 32)
        with torch.no_grad():
            self.words.weight.copy_(torch.randn(1024, 32, generator=torch.Generator().manual_seed(0)))

    def tokenize(self, texts):
        ids = [[1 + zlib.crc32(w.encode()) % 1023 for w in re.findall(r"[a-z0-9]+", t.lower())][: self.max_length]
               for t in texts]
        width = max(1, max(len(i) for i in ids))
        input_ids = torch.zeros(len(ids), width, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for r, row in enumerate(ids):
            input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def forward(self, batch):
        m = batch["attention_mask"].unsqueeze(-1).float()
        return (self.words(batch["input_ids"]) * m).sum(1) / m.sum(1).clamp_min(1.0)


class TinyImageTower(ImageTower):
    """One seeded random conv layer + mean colour, on 32-px images."""

    name = "test-eval-tiny-image"

    def __init__(self, image_size: int = 32, **_: object) -> None:
        super().__init__()
        self.transform = ImageTransform(size=image_size)
        self.conv = nn.Conv2d(3, 24, 5, stride=2)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.2)
            self.conv.bias.zero_()
        self.output_dim = 27

    def feature_map(self, pixels):
        return torch.relu(self.conv(pixels))

    def forward(self, pixels):
        return torch.cat([self.feature_map(pixels).mean(dim=(2, 3)), pixels.mean(dim=(2, 3))], dim=1)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 'trained' tiny dual encoder saved as a model folder (heads perturbed, so it differs
    from its untrained twin), loaded back through `load_model(folder)`."""
    register_tower("test-eval-tiny-text", "text", TinyTextTower, "test only")
    register_tower("test-eval-tiny-image", "image", TinyImageTower, "test only")
    folder = tmp_path_factory.mktemp("tiny-model")
    cfg = {"name": TINY, "text_tower": "test-eval-tiny-text", "image_tower": "test-eval-tiny-image",
           "embed_dim": 16, "head": "linear", "image_size": 32, "text_max_length": 16}
    (folder / "arch.json").write_text(json.dumps(cfg))
    add_model_config(folder / "arch.json")
    model = load_model(TINY)
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        model.image_head.weight.add_(0.3 * torch.randn(model.image_head.weight.shape, generator=g))
    model.config.trained = True
    model.save(folder / "model")
    return folder / "model"


LEAVES = ["Apparel > Topwear > Shirts", "Apparel > Topwear > Tshirts", "Accessories > Watches > Watches",
          "Footwear > Shoes > Casual Shoes", "Accessories > Bags > Handbags", "Footwear > Shoes > Heels"]


@pytest.fixture(scope="module")
def labelled_catalog(tmp_path_factory) -> Path:
    """72 real ungrouped products (6 leaves x 12: 8 train, 2 val, 2 test) + 4 real groups of
    re-listed shirts (2 in test, 2 in val), with a MADE-UP `labels.adult` column
    (1 = footwear). The label is a test fixture for the adult task's mechanics only."""
    rows = sorted(read_sample_rows(), key=lambda r: r["id"])
    out = []
    for leaf in LEAVES:
        match = [dict(r) for r in rows if " > ".join(r["category"]) == leaf and not r.get("group")][:12]
        for i, r in enumerate(match):
            r["split"] = "train" if i < 8 else "val" if i < 10 else "test"
            out.append(r)
    groups = sorted({r["group"] for r in rows if r.get("group") and r["category"][-1] == "Shirts"})[:4]
    for gi, g in enumerate(groups):
        for r in rows:
            if r.get("group") == g:
                out.append({**r, "split": "test" if gi < 2 else "val"})
    for r in out:
        r["labels"] = {"adult": int(r["category"][0] == "Footwear")}
    return write_catalog(tmp_path_factory.mktemp("labelled"), out)


RUN_KW = dict(probe_train_max=1000, min_attribute_products=10, synthetic_max=20, synthetic_tune_max=12,
              progress=False)


@pytest.fixture(scope="module")
def report_dir(tiny_model, labelled_catalog, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    report = run_eval(str(tiny_model), labelled_catalog, out,
                      baselines=("text-tower", "image-tower", "untrained", TINY), **RUN_KW)
    return out, report


def test_report_files_and_required_keys(report_dir):
    out, report = report_dir
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["headline"] == report["headline"]
    for key in ("retrieval", "tasks", "baselines", "config", "model", "catalog", "split", "headline", "timing"):
        assert key in on_disk, key
    assert set(on_disk["tasks"]) >= {"category", "attributes", "matching", "clustering", "adult"}
    assert on_disk["split"] == "test" and len(on_disk["catalog"]["sha1"]) == 40
    assert on_disk["model"]["trained"] is True and on_disk["model"]["fingerprint"]
    assert on_disk["data"]["sizes"]["eval"] == 12 + 4 and on_disk["data"]["sizes"]["train"] == 48
    md = (out / "report.md").read_text()
    assert "## Model vs. baselines" in md and "SYNTHETIC" in md and "REAL groups" in md
    for name in on_disk["plots"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    assert set(on_disk["plots"]) == {"recall_curves", "confusion", "map", "examples"}


def test_task_numbers_are_sane(report_dir):
    _, r = report_dir
    cat = r["tasks"]["category"]["leaf"]
    assert cat["n_classes"] == 6 and cat["probe"]["fused"]["accuracy"] > cat["chance"]["majority"]
    assert set(cat["zero_shot"]) == {"image", "text", "fused"}  # a trained dual encoder: all three
    reg = r["tasks"]["probe_regularisation"]
    assert set(reg["C"]) == {"image", "text", "fused"} and set(reg["C"].values()) <= {0.01, 0.1, 1.0}
    assert "color" in r["tasks"]["attributes"]["attributes"]
    m = r["tasks"]["matching"]
    assert m["synthetic"]["fused"]["n_pos"] == 16 and m["real"]["image"]["n_pos"] == 2
    assert m["real"]["threshold_from"].startswith("real groups")
    assert 0.0 <= r["tasks"]["clustering"]["kmeans"]["fused"]["leaf"]["nmi"] <= 1.0
    t2i = r["retrieval"]["t2i"]["exact"]
    assert t2i["n_queries"] == 16 and 0.0 <= t2i["mrr"] <= 1.0


def test_small_samples_carry_counts_intervals_and_a_warning(report_dir):
    out, r = report_dir
    real = r["tasks"]["matching"]["real"]
    assert real["positive_pairs"] == {"eval": 2, "tune": 2} and real["small_sample"] is True
    assert "only 2 real positive pairs" in real["warning"]
    for v in ("image", "text", "fused", "probe"):
        lo, hi = real[v]["ci95"]["auroc"]
        assert 0.0 <= lo <= real[v]["auroc"] <= hi <= 1.0
        assert real[v]["small_sample"] and "precision@recall0.9" in real[v]
    syn = r["tasks"]["matching"]["synthetic"]["fused"]
    assert len(syn["ci95"]["f1"]) == 2 and "warning" not in r["tasks"]["matching"]["synthetic"]
    md = (out / "report.md").read_text()
    assert "**Small sample:** only 2 real positive pairs" in md and "AUROC 95% CI" in md
    assert "precision @ 90% recall" in md and "percentile bootstrap" in md and "recall 95% CI" in md
    lo, hi = real["fused"]["ci95"]["recall_wilson"]
    assert lo < real["fused"]["recall"] <= hi or hi == real["fused"]["recall"] == 1.0


def test_top_level_zero_shot_aggregates_leaves_and_is_documented(report_dir):
    out, r = report_dir
    top = r["tasks"]["category"]["top"]
    assert "max of the cosines of its leaves' prompts" in top["zero_shot_method"]
    assert set(top["zero_shot"]) == {"image", "text", "fused"}
    assert {"accuracy", "macro_f1", "micro_f1"} <= set(top["zero_shot"]["text"])
    md = (out / "report.md").read_text()
    assert "Top-level zero-shot: hierarchical" in md and "micro-F1" in md


def test_every_attribute_with_enough_values_is_evaluated_and_the_rest_listed(report_dir):
    out, r = report_dir
    a = r["tasks"]["attributes"]
    assert a["selection"]["max_attributes"] is None
    assert len(a["attributes"]) >= 3  # color, gender, usage, … on 48 train products
    skipped = a["selection"]["skipped"]  # reasons are checked in test_eval_tasks (attribute_selection)
    assert all(isinstance(v, str) and v for v in skipped.values())
    assert not set(skipped) & set(a["attributes"])
    assert {"color", "gender", "usage", "season"} <= set(a["attributes"]) | set(skipped)
    md = (out / "report.md").read_text()
    assert "Accuracy per attribute" in md and "Macro-F1 per attribute" in md


def test_clustering_against_groups(report_dir):
    _, r = report_dir
    g = r["tasks"]["clustering"]["group"]
    assert g["k"] == 2 and g["n"] >= 4 and g["small_sample"]  # the two real shirt groups in test
    assert 0.0 <= g["kmeans"]["fused"]["nmi"] <= 1.0


def test_untrained_text_side_equal_to_the_tower_is_said(report_dir):
    _, r = report_dir
    same = r["baselines"]["untrained"]["tasks"]["category"]["leaf"]["zero_shot"]["text"]
    tower = r["baselines"]["text-tower"]["tasks"]["category"]["leaf"]["zero_shot"]["text"]
    noted = any(n.startswith("untrained: its text side gives the same cosines") for n in r["notes"])
    assert noted == (same == pytest.approx(tower))


def test_adult_task_runs_on_the_labelled_fixture(report_dir):
    _, r = report_dir
    adult = r["tasks"]["adult"]
    assert adult["label"] == "labels.adult" and "status" not in adult
    assert adult["positives"] == {"train": 16, "eval": 4, "tune": 4}
    probe = adult["probe"]["image"]
    assert probe["auroc"] > 0.7 and {"precision", "recall", "recall@precision0.99"} <= set(probe)
    assert set(adult["zero_shot"]) == {"image", "text", "fused"}


def test_baselines_carry_their_numbers_and_differences(report_dir):
    _, r = report_dir
    b = r["baselines"]
    assert set(b) == {"text-tower", "image-tower", "untrained", TINY}
    key = "tasks/category/leaf/probe/image/accuracy"
    assert b["image-tower"]["delta"][key] == pytest.approx(r["headline"][key] - b["image-tower"]["headline"][key])
    assert b["text-tower"]["headline"][key] is None  # a text tower has no image view
    assert b["image-tower"]["retrieval"]["t2i"]["status"] == "n/a"
    # the registered untrained architecture is the same model as the untrained twin
    assert b[TINY]["headline"] == b["untrained"]["headline"]
    assert b["untrained"]["aligned"] is False and b["untrained"]["model"]["trained"] is False


def test_rerun_reuses_the_cache_and_reproduces_the_numbers(report_dir, tiny_model, labelled_catalog, tmp_path):
    out, first = report_dir
    cache = Path(first["data"]["cache"])
    before = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())
    again = run_eval(str(tiny_model), labelled_catalog, tmp_path / "again", cache_dir=cache,
                     baselines=("text-tower", "image-tower", "untrained", TINY), plots=False, **RUN_KW)
    after = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())
    assert after == before, "a rerun on the same cache must not encode anything again"
    assert again["headline"] == pytest.approx(first["headline"], nan_ok=True)
    assert again["baselines"]["image-tower"]["headline"] == first["baselines"]["image-tower"]["headline"]


def test_unknown_split_is_a_clear_error(tiny_model, labelled_catalog, tmp_path):
    with pytest.raises(ValueError, match="holds no products"):
        run_eval(str(tiny_model), labelled_catalog, tmp_path, split="holdout", baselines=(), **RUN_KW)


def test_cli_command(tiny_model, labelled_catalog, report_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from shopclip.eval.cli import eval_command

    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("noop")(lambda: None)  # two commands: typer keeps `eval` as a sub-command
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "shopclip eval default" in res.output
    assert "labels.<name>" in res.output  # rich markup must not eat it
    cache = Path(report_dir[1]["data"]["cache"])
    ids = [json.loads(line)["id"] for line in labelled_catalog.read_text().splitlines()]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("a,b\n" + "".join(f"{a},{b}\n" for a, b in zip(ids[:10], ids[1:11], strict=True)))
    res = runner.invoke(app, ["eval", str(tiny_model), str(labelled_catalog), "--out", str(tmp_path / "cli"),
                              "--cache", str(cache), "--no-default-baselines", "--baseline", TINY, "--no-plots",
                              "--synthetic-max", "20", "--pairs", str(pairs)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert list(report["baselines"]) == [TINY] and "plots" not in report
    import hashlib

    assert report["data"]["pairs"] == {"path": str(pairs), "sha1": hashlib.sha1(pairs.read_bytes()).hexdigest(),
                                       "n_pairs": 10}
    assert f"sha1 `{report['data']['pairs']['sha1'][:12]}`" in (tmp_path / "cli" / "report.md").read_text()
    assert "report:" in res.output
    assert np.isfinite(report["headline"]["tasks/category/top/probe/fused/accuracy"])


def test_whole_catalog_block_ranks_every_product(report_dir):
    out, r = report_dir
    w = r["whole_catalog"]
    n_catalog = r["catalog"]["n_products"]
    assert w["n_candidates"] == n_catalog and w["n_queries"] == r["data"]["sizes"]["eval"] == 16
    assert w["text"] == "title + description"
    # the same trained model ranks among more candidates here than in the split protocol: never easier
    assert w["t2i"]["mrr"] <= r["retrieval"]["t2i"]["exact"]["mrr"] + 1e-9
    assert w["t2i"]["hits@1"] <= w["t2i"]["hits@5"] <= w["t2i"]["hits@10"]
    assert r["headline"]["whole_catalog/t2i/mrr"] == w["t2i"]["mrr"]
    img = r["baselines"]["image-tower"]["whole_catalog"]
    assert "t2i" not in img and img["i2i_same_leaf_precision@10"] == r["baselines"]["image-tower"]["headline"][
        "whole_catalog/i2i_same_leaf_precision@10"]
    # the fixture's ungrouped rows hold byte-identical twins (found here by hashing the files directly)
    rows = [json.loads(line) for line in Path(r["catalog"]["path"]).read_text().splitlines()]
    shas = [hashlib.sha1((Path(r["catalog"]["path"]).parent / row["image"]).read_bytes()).hexdigest() for row in rows]
    twins = sum(1 for row, sha in zip(rows, shas, strict=True) if shas.count(sha) > 1 and not row.get("group"))
    assert twins > 0 and r["data"]["identical_photos"]["merged_products"] == twins
    md = (out / "report.md").read_text()
    assert f"among all {n_catalog} products" in md
