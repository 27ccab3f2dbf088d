"""Partial fine-tuning on CPU: cached lower blocks + the unlocked top equal the whole tower; only those
blocks are trained, saved (float16) and laid over the pretrained tower when loading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import SAMPLE_DIR
from shopclip.models import create_tower, load_model
from shopclip.models.partial import ImageTopSplit
from shopclip.train.config import TrainConfig
from shopclip.train.trainer import train


@pytest.fixture(scope="module")
def tower():
    return create_tower("efficientnet-lite0-ml").eval()


@pytest.mark.parametrize("n_top", [1, 2, 3])
def test_cached_lower_plus_top_equals_the_whole_tower(tower, n_top):
    x = torch.stack([tower.transform(__import__("PIL.Image").Image.open(SAMPLE_DIR / "images" / f).convert("RGB"))
                     for f in ("myntra-10104.jpg", "myntra-15970.jpg", "myntra-10200.jpg")])
    split = ImageTopSplit(tower, n_top)
    with torch.no_grad():
        whole = tower(x)
        flat = split.lower(x)
        assert flat.shape == (3, split.dim)
        assert torch.allclose(split.upper(flat), whole, atol=1e-4)
    # the cut sits below the last n_top blocks: block 15 (192 ch in) + head for n_top=2
    if n_top == 2:
        assert split.map_shape == (192, 7, 7) and split.low_dims == [40, 80, 112, 192]


def test_partial_run_trains_saves_and_loads_only_the_top_blocks(tmp_path, mini_catalog):
    cfg = TrainConfig(catalog=str(mini_catalog), out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                      model="minilm-efflite0-ml", embed_dim=64, lock="text", unlock_blocks=2, epochs=2, batch_size=8,
                      image_views=1, progress=False, num_workers=1, warmup_steps=1, tower_lr=1e-3, precision="fp32")
    result = train(cfg)
    assert result.steps == 8
    model_dir = tmp_path / "run" / "model"
    assert json.loads((model_dir / "config.json").read_text())["tower_weights"] == "partial"
    saved = load_file(str(model_dir / "towers.safetensors"))
    assert saved and all(k.startswith(("image_tower.net._blocks.15.", "image_tower.net._conv_head.",
                                       "image_tower.net._bn1.")) for k in saved)
    assert all(v.dtype == torch.float16 for v in saved.values())
    # only the lower blocks' outputs were cached (float16), never the tower's pooled features
    kinds = {p.name.split("-")[0] + "-" + p.name.split("-")[1] for p in (tmp_path / "cache").iterdir()}
    assert "image-lower2" in kinds
    pretrained = create_tower("efficientnet-lite0-ml").state_dict()
    loaded = load_model(tmp_path / "run").image_tower.state_dict()
    assert torch.equal(loaded["net._blocks.3._depthwise_conv.weight"], pretrained["net._blocks.3._depthwise_conv.weight"])
    moved = loaded["net._conv_head.weight"] - pretrained["net._conv_head.weight"]
    assert moved.abs().max() > 1e-4  # the head conv was trained
    assert torch.equal(loaded["net._conv_head.weight"], saved["image_tower.net._conv_head.weight"].float())


def test_a_loaded_partial_model_saves_the_same_blocks_again(tmp_path, mini_catalog):
    cfg = TrainConfig(catalog=str(mini_catalog), out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                      model="minilm-efflite0-ml", embed_dim=32, lock="text", unlock_blocks=1, epochs=1, batch_size=16,
                      augment=False, progress=False, num_workers=1, warmup_steps=1, precision="fp32")
    train(cfg)
    model = load_model(tmp_path / "run")
    model.save(tmp_path / "again", half=True)
    a = load_file(str(tmp_path / "run" / "model" / "towers.safetensors"))
    b = load_file(str(tmp_path / "again" / "towers.safetensors"))
    assert set(a) == set(b) and all(k.startswith(("image_tower.net._conv_head.", "image_tower.net._bn1.")) for k in a)
    assert json.loads((tmp_path / "again" / "config.json").read_text())["tower_weights"] == "partial"
