"""Learning-rate and batch-size schedules, as pure functions of the step (checkpoint-friendly)."""

from __future__ import annotations

import math

import torch

from shopclip.train.config import TrainConfig
from shopclip.train.data import effective_batch_size


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup from ~0 to 1 over `warmup` steps, then cosine down to `min_ratio`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, *, warmup: int, total: int,
                   min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR (its state_dict is just the step count) over `warmup_cosine`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup=warmup, total=total, min_ratio=min_ratio))


def steps_per_epoch(cfg: TrainConfig, n: int, world: int) -> list[int]:
    """Optimizer steps in each epoch, following the batch-size schedule."""
    return [n // effective_batch_size(cfg.batch_size_at(e), n, world) for e in range(cfg.epochs)]
