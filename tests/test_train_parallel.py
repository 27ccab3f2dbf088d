"""The DDP-or-FSDP rule and the gradient clipping that works across both (one process)."""

from __future__ import annotations

import pytest
import torch

from shopclip.models import load_model
from shopclip.train.parallel import (
    FSDP_MIN_STATE_BYTES,
    STATE_BYTES_PER_PARAM,
    choose_parallel,
    clip_grad_norm,
    trainable_params,
)
from shopclip.train.trainer import apply_locking


def test_auto_shards_only_above_the_state_threshold():
    edge = FSDP_MIN_STATE_BYTES // STATE_BYTES_PER_PARAM  # 268,435,456 parameters = 4 GiB of training state
    assert edge == 268_435_456
    assert choose_parallel("auto", edge, world=8) == "ddp"
    assert choose_parallel("auto", edge + 1, world=8) == "fsdp"
    assert choose_parallel("auto", 428_000_000, world=2) == "fsdp"  # e.g. a ViT-L/14 CLIP trained whole
    assert choose_parallel("auto", 10**9, world=1) == "ddp"  # one process never shards
    assert choose_parallel("fsdp", 10, world=2) == "fsdp" and choose_parallel("ddp", 10**9, world=2) == "ddp"
    assert choose_parallel("auto", 1000, world=2, threshold_bytes=1000) == "fsdp"
    with pytest.raises(ValueError, match="parallel must be one of"):
        choose_parallel("zero3", 10, world=2)


def test_the_shipped_model_stays_replicated_even_with_both_towers_unlocked():
    model = load_model("default")
    apply_locking(model, 0, 0)  # heads only (the default recipe)
    heads = trainable_params(model)
    apply_locking(model, -1, -1)  # --lock none
    whole = trainable_params(model)
    assert 1_000_000 < heads < whole < 50_000_000  # a few M of heads; ~27M with MiniLM + EfficientNet-Lite0
    assert choose_parallel("auto", whole, world=16) == "ddp"


def test_clip_grad_norm_matches_torch_on_plain_tensors():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for x, y in zip(a, b, strict=True):
        x.grad = torch.randn_like(x) * 3
        y.grad = x.grad.clone()
    want = torch.nn.utils.clip_grad_norm_(b, 1.0)
    got = clip_grad_norm(a, 1.0)
    assert got == pytest.approx(float(want), rel=1e-6)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.grad, y.grad)
