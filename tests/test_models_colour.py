"""The colour level of the image tower: a soft joint RGB histogram (hand-checked cells), Hellinger-mapped and
L2-normalised like the other levels, carried through partial fine-tuning's cached lower blocks, and telling red
products from blue ones on real sample photos."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from conftest import SAMPLE_DIR, read_sample_rows
from shopclip.models import create_model, create_tower
from shopclip.models.colour import ColourHistogram, hellinger
from shopclip.models.partial import ImageTopSplit
from shopclip.models.towers import LEVEL_NORM

HALF = (0.5, 0.5, 0.5)


def _pixels(rgb: tuple[float, float, float], size: int = 8) -> torch.Tensor:
    """One (1, 3, size, size) photo of a single colour, normalised as EfficientNet-Lite expects."""
    x = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size)
    return (x - 0.5) / 0.5


def test_a_pure_colour_votes_into_its_one_cell():
    h = ColourHistogram(4, HALF, HALF, shrink=1)
    hist = h(_pixels((1.0, 0.0, 0.0)), (1, 1)).flatten()
    assert hist.shape == (64,)
    # red = bins (3, 0, 0): cell 3·16 + 0·4 + 0 = 48
    assert hist[48].item() == pytest.approx(1.0) and hist.sum().item() == pytest.approx(1.0)
    blue = h(_pixels((0.0, 0.0, 1.0)), (1, 1)).flatten()
    assert blue[3].item() == pytest.approx(1.0)


def test_a_colour_between_bin_centres_splits_trilinearly():
    h = ColourHistogram(4, HALF, HALF, shrink=1)
    # 0.5 · 3 = 1.5 on every channel: half to bin 1, half to bin 2, so 8 cells get 1/8 each
    hist = h(_pixels((0.5, 0.5, 0.5)), (1, 1)).flatten()
    cells = {r * 16 + g * 4 + b for r in (1, 2) for g in (1, 2) for b in (1, 2)}
    for c in range(64):
        assert hist[c].item() == pytest.approx(0.125 if c in cells else 0.0, abs=1e-6)
    # (1/3, 0, 1): exactly on centres (1, 0, 3)
    hist = h(_pixels((1 / 3, 0.0, 1.0)), (1, 1)).flatten()
    assert hist[1 * 16 + 0 * 4 + 3].item() == pytest.approx(1.0, abs=1e-5)


def test_local_histograms_on_the_grid_and_the_shrink_keeps_a_uniform_photo():
    h = ColourHistogram(3, HALF, HALF, shrink=4)
    x = torch.cat([_pixels((1.0, 1.0, 1.0), 16)[..., :8], _pixels((0.0, 0.0, 0.0), 16)[..., 8:]], dim=-1)
    cells = h(x, (2, 2))  # left half white, right half black
    assert cells.shape == (1, 27, 2, 2)
    assert cells[0, 26, :, 0].tolist() == pytest.approx([1.0, 1.0]) and cells[0, 0, :, 1].tolist() == pytest.approx([1.0, 1.0])
    assert torch.allclose(cells.sum(dim=1), torch.ones(1, 2, 2))


def test_hellinger_is_sqrt_then_unit_norm():
    v = torch.tensor([[0.64, 0.36, 0.0]])
    assert hellinger(v).tolist()[0] == pytest.approx([0.8, 0.6, 0.0])


@pytest.fixture(scope="module")
def tower():
    return create_tower("efficientnet-lite0-mlc").eval()


def _photos(tower, names):
    return torch.stack([tower.transform(Image.open(SAMPLE_DIR / "images" / n).convert("RGB")) for n in names])


def test_the_colour_tower_is_the_multi_level_tower_plus_one_normalised_level(tower):
    plain = create_tower("efficientnet-lite0-ml").eval()
    x = _photos(tower, ["myntra-10104.jpg", "myntra-15970.jpg"])
    with torch.no_grad():
        a, b = tower(x), plain(x)
        hist = tower.colour(x, (7, 7)).mean(dim=(2, 3))
    assert tower.output_dim == plain.output_dim + 64 == a.shape[1]
    assert torch.allclose(a[:, : plain.output_dim], b, atol=1e-5)  # the other levels are untouched
    assert torch.allclose(a[:, -64:], hellinger(hist) * LEVEL_NORM, atol=1e-5)
    assert a[:, -64:].norm(dim=1).tolist() == pytest.approx([LEVEL_NORM] * 2, rel=1e-5)
    # the registry's model uses it
    assert create_model("minilm-efflite0-mlc").image_tower.output_dim == tower.output_dim


@pytest.mark.parametrize("n_top", [1, 2])
def test_partial_fine_tuning_caches_the_colour_level_with_the_lower_blocks(tower, n_top):
    x = _photos(tower, ["myntra-10104.jpg", "myntra-15970.jpg", "myntra-10200.jpg"])
    split = ImageTopSplit(tower, n_top)
    with torch.no_grad():
        flat = split.lower(x)
        assert flat.shape == (3, split.dim) and split.colour_dim == 64
        assert torch.allclose(split.upper(flat), tower(x), atol=1e-4)


def test_red_products_fill_red_cells_and_blue_products_blue_cells(tower):
    rows = [r for r in read_sample_rows() if r["id"].startswith("myntra-")]
    pick = {c: [r for r in rows if r["attributes"].get("color") == c][:24] for c in ("Red", "Blue")}
    assert all(len(v) == 24 for v in pick.values())
    red_cells = [r * 16 + g * 4 + b for r in range(4) for g in range(4) for b in range(4) if r >= g + 2 and r >= b + 2]
    blue_cells = [r * 16 + g * 4 + b for r in range(4) for g in range(4) for b in range(4) if b >= r + 2 and b >= g + 1]
    share = {}
    with torch.no_grad():
        for colour, prods in pick.items():
            x = torch.stack([tower.transform(Image.open(SAMPLE_DIR / p["image"]).convert("RGB")) for p in prods])
            hist = tower.colour(x, (7, 7)).mean(dim=(2, 3))
            share[colour] = (hist[:, red_cells].sum(1) - hist[:, blue_cells].sum(1)).tolist()
    # per product: red photos put more of their pixels in red cells than in blue ones, and the reverse
    red_wins = sum(v > 0 for v in share["Red"])
    blue_wins = sum(v < 0 for v in share["Blue"])
    assert red_wins >= 18 and blue_wins >= 18, (red_wins, blue_wins)
    assert not math.isnan(sum(share["Red"]))
