"""The shipped default model retrieves across modalities on real held-out products, and `make demo` runs.

A broken or untrained ``heads.safetensors`` passes every shape and API test; it cannot pass this floor.
Measured on the 100 products below (category-diverse, test split, never trained on; 2026-12 default):
the shipped default reaches text→image recall@5 0.91 and image→text 0.89; the same architecture with
untrained heads (``minilm-efflite0-ml``) 0.05 / 0.04, and the default with its heads re-drawn at random
0.02-0.07 both ways (chance: 0.05). The floor, 0.5 both ways, leaves room for any sound retraining
(the plain LiT recipe reaches recall@10 0.87 on all 821 test products) and is out of reach of random
heads: at chance, recall@5 >= 0.5 over 100 queries has probability < 1e-30.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import ROOT, SAMPLE_DIR, pick_rows, write_catalog

FLOOR_RECALL_AT_5 = 0.5


def recall_at(scores: np.ndarray, k: int) -> float:
    """Share of queries (rows) whose own item (the diagonal) ranks in the top k; ties count against it."""
    own = np.diag(scores)[:, None]
    rank = (scores >= own).sum(axis=1) - 1  # items scoring at least as high, itself excluded
    return float((rank < k).mean())


def test_recall_at_counts_ties_against_the_query():
    assert recall_at(np.eye(4), 1) == 1.0
    assert recall_at(np.ones((4, 4)), 3) == 0.0  # a collapsed model (all scores equal) retrieves nothing
    s = np.array([[0.9, 0.8, 0.1], [0.9, 0.5, 0.1], [0.1, 0.2, 0.3]])
    assert recall_at(s, 1) == pytest.approx(2 / 3) and recall_at(s, 2) == 1.0


def test_shipped_default_retrieves_across_modalities(sample_catalog):
    from shopclip.models import load_model

    rows = pick_rows(100, seed_split="test")
    assert len({r["category"][-1] for r in rows}) >= 40  # many kinds of product, not one easy category
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = load_model("default")
        model.eval()
        img = model.encode_image([str(SAMPLE_DIR / r["image"]) for r in rows], batch_size=16)
        txt = model.encode_text([r["title"] for r in rows], batch_size=64)
    finally:
        torch.set_num_threads(old)
    assert model.config.trained, "the shipped default must carry trained heads"
    assert np.isfinite(img).all() and np.isfinite(txt).all()
    scores = txt @ img.T
    t2i, i2t = recall_at(scores, 5), recall_at(scores.T, 5)
    assert t2i >= FLOOR_RECALL_AT_5 and i2t >= FLOOR_RECALL_AT_5, (t2i, i2t)


def _make_demo_commands(catalog: Path, workdir: Path, sample: int) -> list[list[str]]:
    """The `shopclip` commands `make demo` runs (read from the Makefile with `make -n`), pointed at a small
    catalog and a temporary work folder."""
    out = subprocess.run(["make", "-n", "--no-print-directory", "demo", f"CATALOG={catalog}", f"SAMPLE={sample}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cmds = []
    for line in out.stdout.splitlines():
        argv = shlex.split(line)
        if argv and argv[0].endswith("/shopclip"):
            cmds.append(argv[1:])
    assert [c[0] for c in cmds] == ["build", "demo"], out.stdout
    return [[str(workdir) if a == "demo-work" else a for a in c] for c in cmds]


def test_make_demo_runs_on_a_small_sample(tmp_path, sample_catalog, monkeypatch):
    """`make demo` = build --sample N --train, then `shopclip demo`: run both (in-process) on 30 products."""
    from shopclip.cli import app

    catalog = write_catalog(tmp_path / "cat", pick_rows(40))
    monkeypatch.setenv("SHOPCLIP_CACHE_DIR", str(tmp_path / "cache"))
    build, demo = _make_demo_commands(catalog, tmp_path / "demo-work", 30)
    assert "--train" in build and "--sample" in build
    runner = CliRunner()
    res = runner.invoke(app, build, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, demo, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    for q in ("red running shoes", "women's handbag", "analog watch for men"):
        assert f"text query {q!r}" in said
    assert "matched against product text" not in said  # --train gave it trained heads
    probe = re.search(r"image query: photo of (\S+) ", said)
    similar = re.search(r"similar to (\S+):", said)
    assert probe and similar, res.output
    # the image query is the probe's own photo: it comes back first, with cosine 1
    table = said[probe.end():similar.start()]
    first = re.search(r"│ 1 │ (\S+?)(?:…)? │.*?│ (\d\.\d{3}) │", table)
    assert first and probe.group(1).startswith(first.group(1)) and first.group(2) == "1.000", table
    # "similar" never returns the product itself
    assert f"│ {similar.group(1)} │" not in said[similar.end():]
