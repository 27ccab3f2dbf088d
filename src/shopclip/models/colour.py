"""A colour level for the multi-level image tower: a soft joint RGB histogram of the photo.

Whole-catalog confusers are near-identical items of one kind that differ in colour or print
("Puma Men White Casual Shoes" among forty other white-and-something Puma shoes), and the
colour is in almost every title. ImageNet features are trained to be partly colour-invariant
(colour jitter is one of their augmentations), so the tower's head carries colour only
weakly. This level hands the projection heads the colours themselves:

* the photo is first shrunk by area averaging (``shrink``, 4: 224 px → 56 px, plenty for a
  histogram and 16x fewer votes); every pixel then votes into a joint RGB grid of ``bins``³ cells with trilinear weights
  (per channel ``max(0, 1 − |x·(bins−1) − b|)``, the product over the three channels), so
  the histogram is a smooth, differentiable and exportable function of the pixels;
* votes are averaged over the cells of the tower's head grid (``feature_map``: a local
  histogram per grid cell, what grounding reads) and over the whole photo (the pooled vector);
* the pooled histogram goes through the Hellinger map (element-wise square root), then is
  L2-normalised like every other level, so the white background and padding that fill most
  product photos do not swamp the product's own colours (the square root flattens a
  dominant bin; a linear head can then weigh the rest).

Pixels arrive normalised as the tower expects (``(x − mean) / std``); the level undoes that
with the tower's own transform constants. It has no trainable weights and costs ~0.5 MFLOP per
224-px photo (EfficientNet-Lite0: ~400 MFLOP).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ColourHistogram(nn.Module):
    """Normalised pixels (B, 3, H, W) → (B, bins³, h, w) local joint RGB histograms on an (h, w) grid."""

    def __init__(self, bins: int, mean: Sequence[float], std: Sequence[float], shrink: int = 4) -> None:
        super().__init__()
        if bins < 2 or shrink < 1:
            raise ValueError(f"a colour histogram needs ≥ 2 bins per channel and shrink ≥ 1, got {bins}, {shrink}")
        self.bins = int(bins)
        self.shrink = int(shrink)
        self.dim = self.bins**3
        # Buffers so they follow .to(); persistent=False keeps them out of state dicts (and fingerprints
        # only change through the tower's name and preprocessing, which already name the bins).
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("centres", torch.arange(self.bins, dtype=torch.float32).view(1, 1, self.bins, 1, 1),
                             persistent=False)

    def votes(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, bins³, H/shrink, W/shrink): each (shrunk) pixel's trilinear weights over the joint grid (summing to 1)."""
        x = pixels.float()
        if self.shrink > 1:  # area-average shrink first: a 56-px photo has colours enough, at 1/16 the votes
            x = F.avg_pool2d(x, self.shrink)
        x = (x * self.std + self.mean).clamp(0.0, 1.0) * (self.bins - 1)
        w = F.relu(1.0 - (x.unsqueeze(2) - self.centres).abs())  # (B, 3, bins, H, W)
        r, g, b = w[:, 0], w[:, 1], w[:, 2]  # (B, bins, H, W) each
        rg = r.unsqueeze(2) * g.unsqueeze(1)  # (B, bins, bins, H, W)
        joint = rg.unsqueeze(3) * b.unsqueeze(1).unsqueeze(1)  # (B, bins, bins, bins, H, W)
        return joint.reshape(joint.shape[0], self.dim, *joint.shape[-2:])

    def forward(self, pixels: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.votes(pixels), tuple(int(g) for g in grid))


def hellinger(hist: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """√h, L2-normalised along ``dim`` (the Hellinger kernel as a dot product); exact zeros stay zero."""
    return F.normalize(hist.clamp_min(0.0).sqrt(), dim=dim)


__all__ = ["ColourHistogram", "hellinger"]
