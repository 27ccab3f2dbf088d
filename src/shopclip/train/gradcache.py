"""One contrastive step, plain or with gradient caching (GradCache, Gao et al. 2021).

The contrastive loss couples every pair of the batch, so a plain step keeps the
activations of the whole batch alive until backward: memory grows with the batch.
GradCache splits the step in three:

1. embed the whole batch chunk by chunk *without* a graph (activations freed at once);
2. compute the loss on those embeddings (made leaves) and backpropagate it only as far
   as the embeddings: ∂L/∂e for every pair, plus the gradient of the temperature;
3. re-run the towers chunk by chunk *with* a graph and push ∂L/∂e into each chunk.

Peak memory is one chunk's activations plus the (B, d) embeddings and the (B, B)
logits, and the parameter gradients equal the plain step's (the loss is a function of
the embeddings only). Dropout draws are replayed: the RNG state before each chunk's
first pass is restored for its second pass, so both passes see the same masks.
BatchNorm in train mode would still differ per chunk; the trainer keeps BN frozen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Inputs = Any  # a tensor (B, …) or a dict of such tensors
Encoder = Callable[[Inputs], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batch_len(x: Inputs) -> int:
    return int(next(iter(x.values())).shape[0]) if isinstance(x, dict) else int(x.shape[0])


def slice_inputs(x: Inputs, start: int, stop: int) -> Inputs:
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    return x[start:stop]


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def plain_step(encode_image: Encoder, encode_text: Encoder, images: Inputs, texts: Inputs, loss_fn: LossFn) -> torch.Tensor:
    """Forward the whole batch with a graph, backward; returns the detached loss."""
    loss = loss_fn(encode_image(images), encode_text(texts))
    loss.backward()
    return loss.detach()


def grad_cache_step(encode_image: Encoder, encode_text: Encoder, images: Inputs, texts: Inputs, loss_fn: LossFn,
                    chunk_size: int) -> torch.Tensor:
    """Same gradients as :func:`plain_step`, with activation memory of one `chunk_size` chunk."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    sides = [(encode_image, images), (encode_text, texts)]
    reps: list[torch.Tensor] = []
    states: list[list[tuple[torch.Tensor, list[torch.Tensor] | None]]] = []
    # 1. embeddings without a graph, remembering the RNG state before every chunk
    with torch.no_grad():
        for encode, x in sides:
            n = batch_len(x)
            side_states, parts = [], []
            for s in range(0, n, chunk_size):
                side_states.append(_rng_state())
                parts.append(encode(slice_inputs(x, s, s + chunk_size)))
            states.append(side_states)
            reps.append(torch.cat(parts))
    after = _rng_state()
    # 2. loss on leaf embeddings → ∂L/∂e (and the temperature's gradient, which needs no towers)
    leaves = [r.detach().requires_grad_(True) for r in reps]
    loss = loss_fn(leaves[0], leaves[1])
    loss.backward()
    # 3. towers again, chunk by chunk, with the cached embedding gradients
    for (encode, x), leaf, side_states in zip(sides, leaves, states, strict=True):
        grad = leaf.grad
        if grad is None:
            continue
        n = batch_len(x)
        for k, s in enumerate(range(0, n, chunk_size)):
            _set_rng_state(side_states[k])
            emb = encode(slice_inputs(x, s, s + chunk_size))
            if emb.requires_grad:
                emb.backward(grad[s : s + chunk_size].to(emb.dtype))
    _set_rng_state(after)
    return loss.detach()


def contrastive_step(encode_image: Encoder, encode_text: Encoder, images: Inputs, texts: Inputs, loss_fn: LossFn,
                     chunk_size: int = 0) -> torch.Tensor:
    """GradCache when `chunk_size` > 0 and smaller than the batch, else a plain step."""
    if chunk_size > 0 and chunk_size < batch_len(images):
        return grad_cache_step(encode_image, encode_text, images, texts, loss_fn, chunk_size)
    return plain_step(encode_image, encode_text, images, texts, loss_fn)
