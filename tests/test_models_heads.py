"""Split heads: an image-image subspace that cannot change search rankings, mixed in for similar items."""

from __future__ import annotations

import math

import pytest
import torch

from shopclip.models.heads import PaddedTextHead, SplitImageHead
from shopclip.train.testing import tiny_model


def test_split_heads_keep_search_rankings_and_mix_image_similarity():
    torch.manual_seed(0)
    img_head = SplitImageHead(12, 6, 4, weight=0.36)
    txt_head = PaddedTextHead(10, 6, 4)
    x, y = torch.randn(5, 12), torch.randn(7, 10)
    with torch.no_grad():
        a, t = img_head(x), txt_head(y)
        m, s = img_head.parts(x)
        tm = torch.nn.functional.normalize(txt_head.main(y), dim=-1)
    assert torch.allclose(a.norm(dim=1), torch.ones(5)) and torch.allclose(t.norm(dim=1), torch.ones(7))
    # text→image: the main subspaces' cosine times √(1−w) = 0.8, so the ranking is the main heads'
    assert torch.allclose(t @ a.T, 0.8 * (tm @ m.T), atol=1e-6)
    # image→image: (1−w)⟨m, m'⟩ + w⟨s, s'⟩
    assert torch.allclose(a @ a.T, 0.64 * (m @ m.T) + 0.36 * (s @ s.T), atol=1e-6)
    img_head.set_weight(0.0)
    with torch.no_grad():
        assert torch.allclose(img_head(x)[:, :6], m) and float(img_head(x)[:, 6:].abs().max()) == 0.0
    with pytest.raises(ValueError, match="sim_weight"):
        img_head.set_weight(1.0)


def test_dual_encoder_with_a_similar_items_subspace_saves_and_loads(tmp_path):
    model = tiny_model(embed_dim=8, sim_dim=3, sim_weight=0.25)
    assert isinstance(model.image_head, SplitImageHead) and model.image_head.main_dim == 5
    folder = model.save(tmp_path / "m", half=True)
    from shopclip.models.dual_encoder import DualEncoder

    cfg = model.config
    again = DualEncoder(cfg, model.image_tower, model.text_tower)
    from safetensors.torch import load_file

    state = {k: v.float() for k, v in load_file(str(folder / "heads.safetensors")).items()}
    assert all(v.dtype == torch.float16 for v in load_file(str(folder / "heads.safetensors")).values())
    again.load_state_dict(state, strict=False)
    x = torch.randn(3, model.image_tower.output_dim)
    with torch.no_grad():
        assert torch.allclose(again.project_image(x), model.project_image(x), atol=2e-3)  # float16 heads
        assert math.isclose(float(again.project_image(x)[:, 5:].norm(dim=1)[0]), 0.5, rel_tol=1e-3)
    with pytest.raises(ValueError, match="sim_dim needs linear heads"):
        tiny_model(head="mlp", embed_dim=8, sim_dim=3, sim_weight=0.25)
