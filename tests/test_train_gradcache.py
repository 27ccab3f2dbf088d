"""GradCache gives the gradients of a plain full-batch step, chunk by chunk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shopclip.train.false_negatives import false_negative_mask
from shopclip.train.gradcache import contrastive_step, grad_cache_step, plain_step
from shopclip.train.losses import clip_loss, siglip_loss
from shopclip.train.testing import tiny_model
from shopclip.train.trainer import apply_locking, set_train_mode


def _batch(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64)
    words = ["red", "blue", "shoe", "shirt", "bag", "watch", "men", "women", "casual", "formal"]
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(2, 6)))) for _ in range(n)]
    keys = torch.from_numpy(rng.integers(0, n // 2, size=(n, 1)))  # some pairs are "duplicates"
    return pixels, {"texts": texts}, keys


def _model(dropout: float = 0.0) -> torch.nn.Module:
    model = tiny_model(head="mlp", dropout=dropout).double()
    apply_locking(model, -1, -1)  # everything trains: the hardest case for GradCache
    set_train_mode(model, -1, -1)
    return model


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _run(model: torch.nn.Module, chunk: int, loss: str = "clip") -> tuple[float, dict[str, torch.Tensor]]:
    pixels, texts, keys = _batch()
    tokens = model.text_tower.tokenize(texts["texts"])
    mask = false_negative_mask(keys)
    bias = torch.nn.Parameter(torch.tensor(-2.0, dtype=torch.float64))

    def loss_fn(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        scale = model.clamped_logit_scale().exp()
        if loss == "siglip":
            return siglip_loss(img, txt, scale, bias, fn_mask=mask)
        return clip_loss(img, txt, scale, fn_mask=mask, label_smoothing=0.1)

    model.zero_grad(set_to_none=True)
    if chunk:
        value = grad_cache_step(model.forward_image, model.forward_text, pixels, tokens, loss_fn, chunk)
    else:
        value = plain_step(model.forward_image, model.forward_text, pixels, tokens, loss_fn)
    grads = _grads(model)
    if bias.grad is not None:
        grads["__bias"] = bias.grad.detach().clone()
    return float(value), grads


@pytest.mark.parametrize(("chunk", "loss"), [(5, "clip"), (8, "siglip")])
def test_grad_cache_equals_full_batch_step(chunk, loss):
    model = _model()
    loss_full, g_full = _run(model, 0, loss)
    loss_gc, g_gc = _run(model, chunk, loss)
    assert loss_gc == pytest.approx(loss_full, rel=1e-12)
    assert set(g_gc) == set(g_full)
    tower_params = [n for n in g_full if n.startswith(("image_tower.", "text_tower."))]
    assert tower_params, "the towers must receive gradients in this test"
    for name, g in g_full.items():
        torch.testing.assert_close(g_gc[name], g, rtol=1e-9, atol=1e-12, msg=name)


def test_grad_cache_replays_dropout():
    """With dropout the second pass must see the first pass's masks: compare with a graph-kept chunked pass."""
    model = _model(dropout=0.3)
    pixels, texts, keys = _batch()
    tokens = model.text_tower.tokenize(texts["texts"])

    def loss_fn(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        return clip_loss(img, txt, model.clamped_logit_scale().exp())

    def chunked(encode, x, c):  # same RNG consumption order as GradCache's first pass, graph kept
        if isinstance(x, dict):
            return torch.cat([encode({k: v[s : s + c] for k, v in x.items()}) for s in range(0, 24, c)])
        return torch.cat([encode(x[s : s + c]) for s in range(0, 24, c)])

    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    ref = loss_fn(chunked(model.forward_image, pixels, 6), chunked(model.forward_text, tokens, 6))
    ref.backward()
    g_ref = _grads(model)
    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    got = grad_cache_step(model.forward_image, model.forward_text, pixels, tokens, loss_fn, 6)
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    for name, g in g_ref.items():
        torch.testing.assert_close(_grads(model)[name], g, rtol=1e-9, atol=1e-12, msg=name)
    # and dropout really is active (otherwise this test would prove nothing)
    torch.manual_seed(8)
    with torch.no_grad():
        a = model.forward_text(tokens)
        b = model.forward_text(tokens)
    assert not torch.allclose(a, b)


def test_contrastive_step_uses_plain_path_for_small_batches():
    model = _model()
    pixels, texts, _ = _batch(6)
    tokens = model.text_tower.tokenize(texts["texts"])
    calls = []

    def encode(x):
        calls.append(int(x.shape[0]))
        return model.forward_image(x)

    def loss_fn(img, txt):
        return clip_loss(img, txt, 5.0)

    contrastive_step(encode, model.forward_text, pixels, tokens, loss_fn, chunk_size=16)
    assert calls == [6]
    calls.clear()
    contrastive_step(encode, model.forward_text, pixels, tokens, loss_fn, chunk_size=4)
    assert calls == [4, 2, 4, 2]  # no-graph pass, then the pass with gradients
