"""The build pipeline and search over a real (small) work folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import SAMPLE_DIR
from shopclip.catalog import Catalog
from shopclip.index.store import EmbeddingStore
from shopclip.models import load_model
from shopclip.pipeline.build import BuildOptions, build
from shopclip.pipeline.embed import embed_catalog
from shopclip.search import SearchEngine


@pytest.fixture(scope="module")
def model():
    return load_model("default")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, mini_catalog):
    wd = tmp_path_factory.mktemp("work")
    results = build(mini_catalog, wd, BuildOptions(progress=False))
    assert [r.name for r in results] == ["validate", "embed", "index"] or results[0].name == "validate"
    assert all(r.ran for r in results)
    return wd


def test_build_writes_a_self_describing_work_folder(workdir, mini_catalog):
    manifest = json.loads((workdir / "shopclip.json").read_text())
    assert set(manifest["stages"]) >= {"validate", "embed", "index"}
    store = EmbeddingStore.open(workdir / "embeddings")
    assert len(store) == len(Catalog.load(mini_catalog)) == 40
    dim = load_model("default").embed_dim
    assert store.manifest["dim"] == dim and store.manifest["dtype"] == "float16"
    for view in ("image", "text"):
        v = store.vectors(view)
        assert v.dtype == np.float32 and v.shape == (40, dim)
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=2e-3)


def test_rebuild_skips_every_stage_when_nothing_changed(workdir, mini_catalog):
    results = build(mini_catalog, workdir, BuildOptions(progress=False))
    assert not any(r.ran for r in results)


def test_image_search_returns_the_query_product_first(workdir):
    eng = SearchEngine(workdir)
    for m in eng.store.meta()[:5]:
        assert eng.search_image(m["image"], k=3)[0].id == m["id"]


def test_similar_excludes_itself_and_filters_by_category(workdir):
    eng = SearchEngine(workdir)
    pid = eng.store.ids[0]
    res = eng.similar(pid, k=5)
    assert len(res) == 5 and pid not in [r.id for r in res]
    top = eng.product(pid)["category"].split(" > ")[0]
    filtered = eng.similar(pid, k=5, category=top)
    assert filtered and all(r.category.startswith(top) for r in filtered)


def test_text_search_before_training_matches_product_text(workdir):
    eng = SearchEngine(workdir)
    m = eng.store.meta()[7]
    hits = eng.search_text(m["text"], k=1)
    assert hits[0].id == m["id"]


def test_resumed_embed_computes_only_missing_or_changed_rows(tmp_path, mini_catalog, model):
    cat = Catalog.load(mini_catalog)
    out = tmp_path / "emb"
    first = embed_catalog(cat.subset(cat.ids[:25]), out, model, progress=False)
    assert first.embedded == 25
    # "interrupted" after 25 products: the full run embeds only the other 15
    second = embed_catalog(cat, out, model, progress=False)
    assert (second.embedded, second.skipped) == (15, 25)
    # a changed title re-embeds exactly that product
    p = cat.products[3]
    p.title = p.title + " (new season)"
    third = embed_catalog(cat, out, model, progress=False)
    assert (third.embedded, third.skipped) == (1, 39)
    # removed products leave the store
    fourth = embed_catalog(cat.subset(cat.ids[:30]), out, model, progress=False)
    assert fourth.embedded == 0 and len(EmbeddingStore.open(out)) == 30


def test_changed_image_file_is_re_embedded(tmp_path, mini_catalog, model):
    folder = tmp_path / "cat"
    shutil.copytree(mini_catalog.parent, folder)
    cat = Catalog.load(folder / mini_catalog.name)
    embed_catalog(cat, tmp_path / "emb", model, progress=False)
    victim, donor = cat.products[0], cat.products[1]
    shutil.copyfile(SAMPLE_DIR / donor.image, folder / victim.image)
    res = embed_catalog(cat, tmp_path / "emb", model, progress=False)
    assert res.embedded == 1
    store = EmbeddingStore.open(tmp_path / "emb")
    img = store.vectors("image")
    i, j = store.ids.index(victim.id), store.ids.index(donor.id)
    assert float(img[i] @ img[j]) > 0.99


def test_sample_option_is_deterministic(tmp_path, mini_catalog):
    a = build(mini_catalog, tmp_path / "a", BuildOptions(sample=10, progress=False))
    b = build(mini_catalog, tmp_path / "b", BuildOptions(sample=10, progress=False))
    assert a[0].ran and b[0].ran
    assert EmbeddingStore.open(tmp_path / "a" / "embeddings").ids == EmbeddingStore.open(tmp_path / "b" / "embeddings").ids
    assert len(EmbeddingStore.open(tmp_path / "a" / "embeddings")) == 10


def test_embedding_through_the_feature_cache_matches_direct_encoding(tmp_path, mini_catalog, model):
    cat = Catalog.load(mini_catalog).subset(Catalog.load(mini_catalog).ids[:12])
    direct = embed_catalog(cat, tmp_path / "direct", model, progress=False)
    cache = tmp_path / "features"
    first = embed_catalog(cat, tmp_path / "cached", model, progress=False, feature_cache=cache)
    assert direct.embedded == first.embedded == 12
    assert len(list(cache.glob("image-*/shard-*.npz"))) >= 1 and len(list(cache.glob("text-*/shard-*.npz"))) >= 1
    a, b = EmbeddingStore.open(tmp_path / "direct"), EmbeddingStore.open(tmp_path / "cached")
    for view in ("image", "text"):
        cos = np.sum(a.vectors(view) * b.vectors(view), axis=1)
        assert cos.min() > 0.999, (view, cos.min())
    # A fresh store over a warm cache reads the towers' outputs back: same vectors.
    shutil.rmtree(tmp_path / "cached")
    again = embed_catalog(cat, tmp_path / "cached", model, progress=False, feature_cache=cache)
    assert again.embedded == 12
    np.testing.assert_allclose(EmbeddingStore.open(tmp_path / "cached").vectors("image"), b.vectors("image"), atol=1e-3)


def test_bad_dtype_or_a_dtype_change_never_deletes_embeddings(tmp_path, mini_catalog, model):
    from shopclip.pipeline.embed import StoreConflictError

    cat = Catalog.load(mini_catalog)
    cat = cat.subset(cat.ids[:6])
    out = tmp_path / "emb"
    embed_catalog(cat, out, model, progress=False)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(ValueError, match="dtype must be one of float16, float32, got 'float64'"):
        embed_catalog(cat, out, model, dtype="float64", progress=False)
    with pytest.raises(StoreConflictError, match="holds float16 embeddings of this model; asked for float32"):
        embed_catalog(cat, out, model, dtype="float32", progress=False)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == files
    assert EmbeddingStore.open(out).ids == cat.ids


def test_another_model_replaces_the_store_and_says_so(tmp_path, mini_catalog, model, caplog):
    cat = Catalog.load(mini_catalog)
    cat = cat.subset(cat.ids[:4])
    out = tmp_path / "emb"
    first = embed_catalog(cat, out, model, progress=False)
    assert first.replaced is None
    other = load_model("minilm-efflite0")  # untrained heads: another fingerprint and 256-d
    with caplog.at_level("WARNING"):
        res = embed_catalog(cat, out, other, progress=False)
    assert res.embedded == 4 and res.replaced and f"{model.embed_dim}-d" in res.replaced
    assert "deleted the old embeddings of another model" in res.summary()
    assert "deleting them to re-embed" in caplog.text
    assert EmbeddingStore.open(out).dim == other.embed_dim


def test_search_refuses_an_index_built_from_other_embeddings(tmp_path, mini_catalog, model):
    from shopclip.pipeline.indexing import IndexOutOfDateError, build_indexes
    from shopclip.pipeline.workdir import WorkDir

    wd = WorkDir(tmp_path / "w")
    cat = Catalog.load(mini_catalog)
    embed_catalog(cat.subset(cat.ids[:8]), wd.embeddings, model, progress=False)
    build_indexes(wd.embeddings, wd.index)
    assert len(SearchEngine(wd.root)) == 8  # current: opens
    # a newly embedded product is not in the index
    embed_catalog(cat.subset(cat.ids[:9]), wd.embeddings, model, progress=False)
    with pytest.raises(IndexOutOfDateError, match=r"1 products in the embeddings are not in the image index.*"
                                                  r"run `shopclip index build"):
        SearchEngine(wd.root)
    build_indexes(wd.embeddings, wd.index)
    # a re-embedded product (new photo, same id): the index still holds its old vector
    folder = tmp_path / "cat"
    shutil.copytree(mini_catalog.parent, folder)
    moved = Catalog.load(folder / mini_catalog.name).subset(cat.ids[:9])
    shutil.copyfile(folder / moved.products[1].image, folder / moved.products[0].image)
    embed_catalog(moved, wd.embeddings, model, progress=False)
    with pytest.raises(IndexOutOfDateError, match="re-embedded since the image index was built"):
        SearchEngine(wd.root)
    build_indexes(wd.embeddings, wd.index)
    SearchEngine(wd.root).similar(moved.ids[0], k=2)
    # another model: the whole store changed
    embed_catalog(moved, wd.embeddings, load_model("minilm-efflite0"), progress=False)
    with pytest.raises(IndexOutOfDateError, match="made by another model"):
        SearchEngine(wd.root)


def test_an_index_kept_in_step_with_the_store_stays_current(tmp_path, mini_catalog, model):
    """What the server does on an upsert: commit to the store, then add the same vectors to every index."""
    from shopclip.index import load_index
    from shopclip.pipeline.embed import fused_vectors
    from shopclip.pipeline.indexing import VIEWS, build_indexes
    from shopclip.pipeline.workdir import WorkDir

    wd = WorkDir(tmp_path / "w")
    cat = Catalog.load(mini_catalog)
    embed_catalog(cat.subset(cat.ids[:6]), wd.embeddings, model, progress=False)
    build_indexes(wd.embeddings, wd.index)
    embed_catalog(cat.subset(cat.ids[:7]), wd.embeddings, model, progress=False)
    store = EmbeddingStore.open(wd.embeddings)
    new = cat.ids[6]
    row = store.ids.index(new)
    for view in VIEWS:
        index = load_index(wd.index / view)
        vecs = fused_vectors(store) if view == "fused" else store.vectors(view)
        index.add([new], vecs[row : row + 1], [store.get(new)["category"]])
        index.save(wd.index / view)
    eng = SearchEngine(wd.root)  # opens: the changed product's vectors match the store's
    assert len(eng) == 7 and eng.similar(new, k=3)


def test_an_interrupted_embed_keeps_every_finished_chunk(tmp_path, mini_catalog, model):
    import inspect

    from shopclip.core.images import ImageError

    assert inspect.signature(embed_catalog).parameters["chunk"].default <= 128
    folder = tmp_path / "cat"
    shutil.copytree(mini_catalog.parent, folder)
    cat = Catalog.load(folder / mini_catalog.name)
    cat = cat.subset(cat.ids[:12])
    (folder / cat.products[9].image).write_bytes(b"not a picture")  # the run dies in the third chunk
    with pytest.raises(ImageError):
        embed_catalog(cat, tmp_path / "emb", model, chunk=4, progress=False)
    assert sorted(EmbeddingStore.open(tmp_path / "emb").ids) == sorted(cat.ids[:8])
    shutil.copyfile(SAMPLE_DIR / cat.products[9].image, folder / cat.products[9].image)
    res = embed_catalog(cat, tmp_path / "emb", model, chunk=4, progress=False)
    assert (res.embedded, res.skipped) == (4, 8)
