"""How the trainable weights are spread over processes: replicated (DDP-style) or sharded (FSDP).

Replicated ("ddp", what shopclip always did): every rank holds all weights, gradients and
AdamW moments, and gradients are averaged after backward (`distributed.average_gradients`).
That costs :data:`STATE_BYTES_PER_PARAM` bytes per trainable parameter on every rank.
Sharded ("fsdp", PyTorch FSDP2 `fully_shard`): each unit with trainable weights (a tower's
blocks, the tower, each head) keeps 1/world of them; a unit's weights are all-gathered for
its forward and backward, gradients are reduce-scattered (already averaged), and the
optimizer steps on shards. `choose_parallel` picks FSDP when the replicated training
state would exceed :data:`FSDP_MIN_STATE_BYTES`; the shipped model's heads (a few MB) and
even both towers unlocked (~27M parameters, ~0.4 GB) stay replicated, where FSDP would
only add communication. FSDP runs on CPU too (gloo has the reduce-scatter and
all-gather it needs in torch 2.13), which is what the 2-process test checks.

Checkpoints hold full (unsharded) tensors in the replicated layout either way, so a run
can resume with another strategy or world size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

PARALLEL_MODES = ("auto", "ddp", "fsdp")
STATE_BYTES_PER_PARAM = 16  # fp32 weight + gradient + AdamW's two moments
FSDP_MIN_STATE_BYTES = 4 * 2**30  # 4 GiB of replicated state (~268M trainable parameters): shard above it


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def choose_parallel(requested: str, n_trainable: int, world: int,
                    threshold_bytes: int = FSDP_MIN_STATE_BYTES) -> str:
    """"ddp" or "fsdp" for a run of `world` processes training `n_trainable` parameters.

    One process never shards. "auto" shards when replicating the training state
    (weights, gradients, AdamW moments: 16 bytes a parameter) on every rank would need
    more than `threshold_bytes`; an explicit "ddp" or "fsdp" is obeyed.
    """
    if requested not in PARALLEL_MODES:
        raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {requested!r}")
    if world <= 1:
        return "ddp"
    if requested != "auto":
        return requested
    return "fsdp" if n_trainable * STATE_BYTES_PER_PARAM > threshold_bytes else "ddp"


def _dtensor() -> Any:
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(t: Any) -> bool:
    return isinstance(t, _dtensor())


def shard_trainable(model: nn.Module) -> list[str]:
    """`fully_shard` every unit that trains: unlocked tower blocks, then the towers, then the heads.

    Units without a trainable weight (a locked tower whose features come from the cache)
    are left alone, and so is the model itself: the trainer calls its towers and heads
    directly, and the temperature (a root parameter) stays replicated. Returns the unit names.
    """
    from torch.distributed.fsdp import fully_shard

    def trains(m: nn.Module) -> bool:
        return any(p.requires_grad for p in m.parameters())

    done = []
    for name in ("image_tower", "text_tower", "image_head", "text_head"):
        unit = getattr(model, name)
        if not trains(unit):
            continue
        blocks = getattr(unit, "blocks", None)
        for i, block in enumerate(blocks() if callable(blocks) else []):
            if trains(block):
                fully_shard(block)
                done.append(f"{name}.block{i}")
        fully_shard(unit)
        done.append(name)
    return done


def replicated(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters whose gradients still need averaging over ranks (FSDP reduces its own)."""
    return [p for p in params if not is_sharded(p)]


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a sharded one: every rank must call it, in the same order)."""
    return t.full_tensor() if is_sharded(t) else t


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A full tensor laid out like `like` (sharded or not); every rank passes the same value."""
    if not is_sharded(like):
        return value.to(device=like.device, dtype=like.dtype)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(device=like.device, dtype=like.dtype), like.device_mesh, like.placements)


def full_state(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict with every sharded tensor gathered (collective), on CPU."""
    return {k: full(v).detach().cpu() if torch.is_tensor(v) else v for k, v in state.items()}


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy full tensors into the model's (possibly sharded) parameters and buffers; unknown keys are an error."""
    current = model.state_dict()
    unknown = set(state) - set(current)
    if unknown:
        raise ValueError(f"state holds weights the model lacks: {sorted(unknown)[:5]}")
    with torch.no_grad():
        for k in current:  # model order: the same collective sequence on every rank
            if k in state:
                target = current[k]
                target.copy_(shard_like(state[k], target))


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` with sharded moments gathered: the replicated layout, loadable anywhere."""
    sd = optimizer.state_dict()
    for pid in sorted(sd["state"]):
        sd["state"][pid] = {k: full(v).detach().cpu() if torch.is_tensor(v) else v
                            for k, v in sd["state"][pid].items()}
    return sd


def load_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    """Load a replicated-layout optimizer state, re-sharding the moments of sharded parameters."""
    optimizer.load_state_dict(sd)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for p in params:  # parameter order: the same collective sequence on every rank
        if not is_sharded(p):
            continue
        st = optimizer.state.get(p, {})
        for k, v in list(st.items()):
            if torch.is_tensor(v) and not is_sharded(v) and tuple(v.shape) == tuple(p.shape):
                st[k] = shard_like(v, p)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm over replicated and sharded parameters alike; returns the norm.

    (torch's `clip_grad_norm_` refuses a mix of plain tensors and DTensors.) Replicated
    gradients are equal on every rank after averaging, so only the shards' squares are summed
    over ranks.
    """
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g.to_local() for g in grads if is_sharded(g)]
    plain = [g for g in grads if not is_sharded(g)]
    device = (plain or sharded or [torch.zeros(())])[0].device
    sq_shard = torch.zeros((), dtype=torch.float64, device=device)
    for g in sharded:
        sq_shard += g.double().pow(2).sum()
    if sharded and dist.is_available() and dist.is_initialized():
        dist.all_reduce(sq_shard)
    sq = float(sq_shard) + sum(float(g.double().pow(2).sum()) for g in plain)
    norm = math.sqrt(sq)
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return norm
