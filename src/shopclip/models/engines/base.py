"""The inference engine contract: what runs a dual encoder's towers at inference time.

The towers stay torch modules (training, grounding's feature maps and fingerprints read
them); an engine only decides how their *outputs* are computed for inference: eager
torch (:class:`TorchEngine`), or an exported ONNX Runtime graph
(:mod:`shopclip.models.engines.onnx_engine`). The heads are always applied by the model.

``numerics(kind)`` names what an engine does to the numbers: ``""`` when it reproduces
the torch fp32 tower (within float rounding), else a tag (e.g. ``"onnx-int8-static:…"``)
that goes into feature-cache keys and the model fingerprint stored with embeddings, so
vectors of different numerics are never mixed in one store or cache.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


class InferenceEngine:
    """Computes pooled tower features for inference (no gradients)."""

    name: str = "engine"

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels → (B, image_dim) tower features."""
        raise NotImplementedError

    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokenised batch (as the text tower's `tokenize` returns it) → (B, text_dim) tower features."""
        raise NotImplementedError

    def numerics(self, kind: str) -> str:
        """"" if this engine's `kind` ("image" | "text") features equal torch fp32's, else a tag naming the change."""
        return ""

    def batch_invariant(self, kind: str) -> bool:
        """Whether one input's features are the same whatever else is in its batch.

        Dynamic int8 quantisation picks its scale from the whole batch, so batching other
        shoppers' queries with a query would change its vector: a server must then not batch
        queries (the same query would rank differently under load).
        """
        return True

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name}


class TorchEngine(InferenceEngine):
    """The towers' own eager forward (with the image tower's CPU fast path)."""

    name = "torch"

    def __init__(self, image_tower: torch.nn.Module, text_tower: torch.nn.Module) -> None:
        self.image_tower = image_tower
        self.text_tower = text_tower

    @torch.inference_mode()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_tower(pixels.to(_device(self.image_tower)))

    @torch.inference_mode()
    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        dev = _device(self.text_tower)
        return self.text_tower({k: v.to(dev) for k, v in tokens.items()})


def _device(module: torch.nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class TorchBf16Engine(TorchEngine):
    """The towers' eager forward in bfloat16: on CPUs with native bf16 matmul (AMX,
    AVX512-BF16) the transformer text tower runs ~3x its fp32 speed (bench/embed.py).

    The text tower runs as a bf16 copy of itself (weights cast once, not per call as autocast
    does: 550-690 vs ~480 texts/s here); the copy is remade when the tower's weights change.
    The image tower, mostly depthwise convolutions, gains little and runs under autocast.
    Outputs come back as fp32. Vectors differ from fp32 in the fourth digit (cosine > 0.9999),
    so the engine carries its own numerics tag and never shares a store or cache with fp32
    vectors. On a CPU without native bf16 the arithmetic is emulated and slower than fp32:
    `native_bf16()` says which.
    """

    name = "torch-bf16"

    def __init__(self, image_tower: torch.nn.Module, text_tower: torch.nn.Module) -> None:
        super().__init__(image_tower, text_tower)
        self._text_copy: tuple[tuple[int, ...], torch.nn.Module] | None = None

    def _bf16_text(self) -> torch.nn.Module:
        stamp = tuple(p._version for p in self.text_tower.parameters())  # bumped by every in-place update
        if self._text_copy is None or self._text_copy[0] != stamp:
            self._text_copy = (stamp, copy.deepcopy(self.text_tower).to(torch.bfloat16).eval())
        return self._text_copy[1]

    @torch.inference_mode()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(_device(self.image_tower).type, dtype=torch.bfloat16):
            return super().image_features(pixels).float()

    @torch.inference_mode()
    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        tower = self._bf16_text()
        dev = _device(tower)
        return tower({k: v.to(dev) for k, v in tokens.items()}).float()

    def numerics(self, kind: str) -> str:
        return "torch-bf16"

    def batch_invariant(self, kind: str) -> bool:
        # bf16 kernels block differently for other batch shapes: a text moves ~5e-4 with its batch-mates
        return False


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX tiles or AVX512-BF16)."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(bool(c()) for c in checks if callable(c))
