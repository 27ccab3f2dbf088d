"""Partial fine-tuning on a CPU: run the frozen lower blocks of a tower once, the unlocked top every step.

Unlocking a whole EfficientNet on two CPU cores costs ~8 pairs/s (bench/train.py), so an
epoch over 6,594 products takes a quarter of an hour. Unlocking only its top blocks
(LiT's "unlock the last N", e-CLIP's partial fine-tuning) leaves the lower blocks frozen:
their output for a given photo view never changes, so it is computed once, cached on
disk like the locked towers' features, and each training step runs only the top blocks
on it (the last MBConv block and the 1x1 head conv of EfficientNet-Lite0: ~50 MFLOP an
image instead of ~400).

:class:`ImageTopSplit` cuts an :class:`~shopclip.models.towers.EfficientNetLiteTower` at
``n_top`` trainable blocks (the tower's ``blocks()`` order: its MBConv blocks, then the
head conv as one block). ``lower(pixels)`` returns one flat vector per image: the
activation map entering the top, then the pooled means of the multi-level taps below the
cut; ``upper(flat)`` finishes the forward pass and pools exactly as the tower does, so
``upper(lower(x)) == tower(x)`` (tested).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shopclip.models.towers import EfficientNetLiteTower


class ImageTopSplit(nn.Module):
    """An EfficientNet-Lite tower cut below its last ``n_top`` blocks (see the module docstring)."""

    def __init__(self, tower: EfficientNetLiteTower, n_top: int) -> None:
        super().__init__()
        n_blocks = len(tower.net._blocks)
        if not 1 <= n_top <= n_blocks + 1:
            raise ValueError(f"n_top must be in 1..{n_blocks + 1} for {tower.name}, got {n_top}")
        self.tower = tower
        self.n_top = n_top
        self.start = n_blocks + 1 - n_top  # first trainable MBConv block (n_blocks: only the head conv trains)
        self.low_levels = [i for i in tower.levels if i < self.start]
        self.low_dims = [int(tower.net._blocks[i]._block_args.output_filters) for i in self.low_levels]
        size = tower.transform.size
        with torch.no_grad():
            x = self._run_lower(torch.zeros(1, 3, size, size))[0]
            self.grid = tuple(tower.net.extract_features(torch.zeros(1, 3, size, size)).shape[-2:])
        self.map_shape = tuple(x.shape[1:])
        # The colour level (models/colour.py) depends on the pixels alone: its pooled histogram rides along.
        self.colour_dim = tower.colour.dim if tower.colour is not None else 0
        self.dim = int(x[0].numel()) + sum(self.low_dims) + self.colour_dim

    def _rate(self, idx: int) -> float:
        rate = self.tower.net._global_params.drop_connect_rate
        return rate * idx / len(self.tower.net._blocks) if rate else rate

    def _run_lower(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        net = self.tower.net
        x = net._swish(net._bn0(net._conv_stem(pixels)))
        taps = []
        for idx in range(self.start):
            x = net._blocks[idx](x, drop_connect_rate=self._rate(idx))
            if idx in self.low_levels:
                taps.append(x.mean(dim=(2, 3)))
        return x, taps

    def lower(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, dim): the activation map entering the top blocks, flattened, then the lower taps' means
        (and the pooled colour histogram, for a tower with a colour level)."""
        x, taps = self._run_lower(pixels)
        if self.tower.colour is not None:
            taps.append(self.tower.colour(pixels, self.grid).mean(dim=(2, 3)))
        return torch.cat([x.reshape(len(x), -1), *taps], dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # what a feature cache runs
        return self.lower(pixels)

    def upper(self, flat: torch.Tensor) -> torch.Tensor:
        """(B, tower.output_dim): the tower's pooled output from cached ``lower`` vectors."""
        tower, net = self.tower, self.tower.net
        n_map = int(torch.tensor(self.map_shape).prod())
        x = flat[:, :n_map].reshape(len(flat), *self.map_shape)
        low = list(torch.split(flat[:, n_map:], [*self.low_dims, self.colour_dim], dim=1))
        colour = low.pop()
        taps: dict[int, torch.Tensor] = dict(zip(self.low_levels, low, strict=True))
        for idx in range(self.start, len(net._blocks)):
            x = net._blocks[idx](x, drop_connect_rate=self._rate(idx))
            if idx in tower.levels:
                taps[idx] = x.mean(dim=(2, 3))
        head = net._swish(net._bn1(net._conv_head(x))).mean(dim=(2, 3))
        if not tower.level_dims:
            return head
        parts = [head, *(taps[i] for i in tower.levels)]
        return tower.finish_levels([*parts, colour] if self.colour_dim else parts)


def image_top_split(tower: Any, n_top: int) -> ImageTopSplit | None:
    """The split for towers that support one (EfficientNet-Lite), else None (the trainer then runs the whole tower)."""
    return ImageTopSplit(tower, n_top) if isinstance(tower, EfficientNetLiteTower) else None


__all__ = ["ImageTopSplit", "image_top_split"]
