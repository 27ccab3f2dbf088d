"""Tiny random towers for fast tests of the trainer (no downloads, ~1 ms per batch).

They follow the real tower interfaces (`tokenize`, `blocks`, `transform`, `output_dim`),
so the trainer runs exactly the code paths it runs with MiniLM and EfficientNet.
`register_tiny()` adds them to the tower/model registries as ``tiny-text``,
``tiny-image`` and the architecture ``tiny``, so a subprocess (torchrun, kill -9
tests) can build the same model by name.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from shopclip.models.towers import ImageTower, TextTower
from shopclip.models.transforms import ImageTransform


class TinyTextTower(TextTower):
    """Hashed word ids → embedding → residual MLP blocks → masked mean pool."""

    def __init__(self, dim: int = 16, vocab: int = 512, n_blocks: int = 2, dropout: float = 0.0,
                 max_length: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.name, self.output_dim, self.vocab, self.max_length = "tiny-text", dim, vocab, max_length
        with torch.random.fork_rng():  # same weights every time, global RNG untouched
            torch.manual_seed(seed)
            self.embed = nn.Embedding(vocab, dim)
            self.layers = nn.ModuleList(
                nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout))
                for _ in range(n_blocks))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = [[1 + zlib.crc32(w.encode()) % (self.vocab - 1) for w in t.lower().split()][: self.max_length] or [0]
               for t in texts]
        n = max(len(x) for x in ids)
        input_ids = torch.zeros(len(ids), n, dtype=torch.long)
        mask = torch.zeros(len(ids), n, dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.embed(batch["input_ids"])
        for layer in self.layers:
            h = h + layer(h)
        m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1e-6)

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)


class TinyImageTower(ImageTower):
    """Two strided convs (+ a frozen-in-training BatchNorm, like EfficientNet) → global average pool."""

    def __init__(self, dim: int = 24, size: int = 32, dropout: float = 0.0, seed: int = 1) -> None:
        super().__init__()
        self.name, self.output_dim = "tiny-image", dim
        self.transform = ImageTransform(size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.GELU())
            self.head = nn.Sequential(nn.Conv2d(8, dim, 3, stride=2, padding=1), nn.GELU(), nn.Dropout(dropout))

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(pixels))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.feature_map(pixels).mean(dim=(2, 3))

    def blocks(self) -> list[nn.Module]:
        return [self.stem, self.head]


def tiny_model(head: str = "linear", embed_dim: int = 8, dropout: float = 0.0, **config: Any) -> Any:
    """A DualEncoder over tiny random towers (the heads are the real ones)."""
    from shopclip.models.dual_encoder import DualEncoder, DualEncoderConfig

    cfg = DualEncoderConfig(name="tiny", text_tower="tiny-text", image_tower="tiny-image", head=head,
                            embed_dim=embed_dim, image_size=32, text_max_length=16, **config)
    return DualEncoder(cfg, TinyImageTower(dropout=dropout), TinyTextTower(dropout=dropout))


def register_tiny() -> None:
    """Make `create_model("tiny")` and `--model tiny` build the tiny towers (idempotent)."""
    import json
    import tempfile
    from pathlib import Path

    from shopclip.models import add_model_config, list_models, register_tower

    # dropout on, so resume tests must restore the RNG to reproduce a run
    register_tower("tiny-text", "text", lambda **kw: TinyTextTower(dropout=0.1), "tiny random text tower (tests)")
    register_tower("tiny-image", "image", lambda **kw: TinyImageTower(size=kw.get("image_size", 32)),
                   "tiny random image tower (tests)")
    if "tiny" not in list_models():
        path = Path(tempfile.mkdtemp(prefix="shopclip-tiny-")) / "tiny.json"
        path.write_text(json.dumps({"name": "tiny", "text_tower": "tiny-text", "image_tower": "tiny-image",
                                    "embed_dim": 8, "image_size": 32, "text_max_length": 16}))
        add_model_config(path)
