"""Projection heads whose image side also carries a "similar items" subspace.

Contrastive text–image heads serve search well and "similar items" less well: they learn
what a *text* can say about a photo, and image→image neighbours drift from the kind of
product (on the sample, same-leaf precision@10 of the trained heads barely beats the raw
image tower). The split heads below keep both in one vector of the usual size:

* the image head outputs ``[√(1−w) · m, √w · s]``: ``m`` (``main_dim``) is the
  contrastive image embedding, ``s`` (``sim_dim``) an image–image embedding trained only
  by the image–image term (same-leaf products and augmented views as positives);
* the text head outputs ``[t, 0]``: ``t`` is the contrastive text embedding.

Both halves are unit vectors, so every output has norm 1 and

* text→image and image→text scores are ``√(1−w) · ⟨m, t⟩``: the ranking is exactly the
  contrastive heads' — the image–image subspace cannot hurt search;
* image→image scores are ``(1−w)⟨m, m'⟩ + w⟨s, s'⟩``, a mix whose weight ``w`` is chosen
  on the validation split after training (``bench/train_quality.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _orthogonal_linear(in_dim: int, out_dim: int, seed: int) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_dim, out_dim, bias=False)
    q, _ = torch.linalg.qr(torch.randn(max(in_dim, out_dim), min(in_dim, out_dim), generator=gen))
    with torch.no_grad():
        lin.weight.copy_(q.T if out_dim <= in_dim else q)
    return lin


class SplitImageHead(nn.Module):
    """Image features → ``[√(1−w)·m, √w·s]`` (see the module docstring)."""

    def __init__(self, in_dim: int, main_dim: int, sim_dim: int, weight: float, seed: int = 0) -> None:
        super().__init__()
        self.main = _orthogonal_linear(in_dim, main_dim, seed)
        self.sim = _orthogonal_linear(in_dim, sim_dim, seed + 2)
        self.main_dim = main_dim
        self.set_weight(weight)

    def set_weight(self, weight: float) -> None:
        if not 0.0 <= weight < 1.0:
            raise ValueError(f"sim_weight must be in [0, 1), got {weight}")
        self.weight = float(weight)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """The linear map before the per-part normalisation (grounding averages cells through it)."""
        return torch.cat([self.main(x), self.sim(x)], dim=-1)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, s), each L2-normalised."""
        return F.normalize(self.main(x), dim=-1), F.normalize(self.sim(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, s = self.parts(x)
        return torch.cat([m * math.sqrt(1.0 - self.weight), s * math.sqrt(self.weight)], dim=-1)


class PaddedTextHead(nn.Module):
    """Text features → ``[t, 0]``: zeros where the image side keeps its image–image subspace."""

    def __init__(self, in_dim: int, main_dim: int, sim_dim: int, seed: int = 1) -> None:
        super().__init__()
        self.main = _orthogonal_linear(in_dim, main_dim, seed)
        self.main_dim = main_dim
        self.sim_dim = sim_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = F.normalize(self.main(x), dim=-1)
        return torch.cat([t, t.new_zeros(*t.shape[:-1], self.sim_dim)], dim=-1)


__all__ = ["PaddedTextHead", "SplitImageHead"]
