"""`shopclip build --train`: the train stage inside a work folder, on what the embed stage embeds."""

from __future__ import annotations

import pytest

from conftest import pick_rows, write_catalog
from shopclip.index.store import EmbeddingStore
from shopclip.pipeline import build as build_mod
from shopclip.pipeline.workdir import WorkDir
from shopclip.train.config import TextConfig
from shopclip.train.data import render_text


@pytest.fixture()
def stages(monkeypatch):
    from shopclip.train.stage import train_stage

    monkeypatch.setattr(build_mod, "_STAGES", list(build_mod._STAGES))
    build_mod.register_stage(train_stage(), before="embed")  # replacing a stage keeps one of it
    return build_mod.stages()


def test_build_trains_on_enriched_text_then_embeds_with_the_trained_model(tmp_path, stages):
    assert stages.index("enrich") < stages.index("train") < stages.index("embed")
    cat = write_catalog(tmp_path / "cat", pick_rows(24))
    opts = build_mod.BuildOptions(progress=False, extra={"enrich": "rules", "train": True, "train_epochs": 2})
    runs = {r.name: r for r in build_mod.build(cat, tmp_path / "work", opts)}
    assert runs["enrich"].ran and runs["train"].ran and runs["embed"].ran
    assert "trained" in runs["train"].summary
    store = EmbeddingStore.open(tmp_path / "work" / "embeddings")
    assert store.manifest["model_info"]["config"]["trained"] is True
    info = store.manifest["model_info"]["config"]["info"]["training"]
    assert info["epochs"] == 2 and info["lock"] == "both"

    # What the trainer read: the enriched text as each product's full text.
    from shopclip.pipeline.build import BuildContext
    from shopclip.train.stage import _training_catalog

    ctx = BuildContext(cat, WorkDir(tmp_path / "work"), opts)
    build_mod.build(cat, tmp_path / "work", opts)  # nothing changed: restores only
    from shopclip.enrich.runner import load_enriched_texts

    ctx.texts.update(load_enriched_texts(tmp_path / "work" / "enrich" / "enriched.jsonl"))
    crop = tmp_path / "crop.jpg"
    first = ctx.catalog().products[0]
    crop.write_bytes(ctx.catalog().image_path(first).read_bytes())
    ctx.images[first.id] = crop
    seen = _training_catalog(ctx)
    tcfg = TextConfig()
    assert seen.image_path(first.id) == crop  # absolute crop paths are read as they are
    for p in seen.products:
        assert render_text(p, tcfg.fields, tcfg) == ctx.texts[p.id]
        assert render_text(p, ["title"], tcfg).rstrip(".") == " ".join(p.title.split()).rstrip(".")  # variants: source

    again = {r.name: r for r in build_mod.build(cat, tmp_path / "work", opts)}
    assert not any(r.ran for r in again.values())
    longer = build_mod.BuildOptions(progress=False, extra={"enrich": "rules", "train": True, "train_epochs": 3})
    rerun = {r.name: r for r in build_mod.build(cat, tmp_path / "work", longer)}
    assert not rerun["enrich"].ran and rerun["train"].ran and rerun["embed"].ran
