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
