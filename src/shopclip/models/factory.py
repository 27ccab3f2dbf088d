"""One door for every model: registry names, run folders, hub specs and "default".

Architectures are data (JSON files in ``models/configs``), as in open_clip.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from shopclip.models.dual_encoder import CONFIG_FILE, DualEncoder, DualEncoderConfig
from shopclip.models.engines import attach_engine
from shopclip.models.towers import create_tower_pair

DEFAULT_BASE = "minilm-efflite0-ml"
HUB_PREFIXES = ("hf-clip", "hf-siglip", "open_clip")
_CONFIGS: dict[str, dict[str, Any]] = {}


class UnknownModelError(KeyError):
    """A `--model` value that names nothing loadable; its message is one line for a terminal."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else "unknown model"


def _unknown(ref: str) -> UnknownModelError:
    return UnknownModelError(f"unknown model {ref!r}: not a model or run folder, and not one of "
                             f"{', '.join(list_models())}, nor hf-clip:<id>, hf-siglip:<id>, open_clip:<arch>/<tag> "
                             "(see `shopclip models`)")


def check_model_ref(name_or_path: str | Path) -> None:
    """Raise UnknownModelError / FileNotFoundError now for a reference `load_model` could never load.

    Cheap (no weights are read), so commands can refuse a typo before doing any work.
    """
    ref = str(name_or_path)
    p = Path(ref)
    if ref == "default" or ref in _CONFIGS or (p / CONFIG_FILE).exists() or (p / "model" / CONFIG_FILE).exists():
        return
    if ":" in ref and ref.split(":", 1)[0] in HUB_PREFIXES and ref.split(":", 1)[1]:
        return
    if p.exists():
        raise FileNotFoundError(f"{p} exists but holds no shopclip model ({CONFIG_FILE} not found)")
    raise _unknown(ref)


def _scan_configs() -> None:
    root = resources.files("shopclip.models") / "configs"
    for entry in root.iterdir():
        if entry.name.endswith(".json"):
            cfg = json.loads(entry.read_text())
            _CONFIGS[cfg["name"]] = cfg


def add_model_config(path: str | Path) -> str:
    """Register a dual-encoder architecture from a JSON file; returns its name."""
    cfg = json.loads(Path(path).read_text())
    DualEncoderConfig.from_dict(cfg)  # validate
    _CONFIGS[cfg["name"]] = cfg
    return cfg["name"]


def list_models() -> list[str]:
    return ["default", *sorted(_CONFIGS)]


def pretrained_dir(name: str = "default") -> Path | None:
    """A trained model shipped inside the package (small: heads only), if present."""
    folder = Path(str(resources.files("shopclip.models") / "pretrained" / name))
    return folder if (folder / CONFIG_FILE).exists() else None


def create_model(name: str = DEFAULT_BASE, **overrides: Any) -> DualEncoder:
    """A fresh (untrained-heads) dual encoder from a registered architecture."""
    if name not in _CONFIGS:
        raise _unknown(name)
    cfg = DualEncoderConfig.from_dict({**_CONFIGS[name], **overrides})
    return DualEncoder.from_config(cfg)


def resolve_model_ref(name_or_path: str | Path) -> str:
    """A stable string naming what `load_model` will load (stored next to embeddings)."""
    ref = str(name_or_path)
    if ref == "default":
        d = pretrained_dir("default")
        return str(d) if d else DEFAULT_BASE
    p = Path(ref)
    if (p / CONFIG_FILE).exists():
        return str(p.resolve())
    if (p / "model" / CONFIG_FILE).exists():  # a training run folder
        return str((p / "model").resolve())
    return ref


def load_model(name_or_path: str | Path = "default", device: str | torch.device | None = None, *,
               engine: str | None = None, calibration: Any = None) -> DualEncoder:
    """`default`, a registered name (`minilm-efflite0`), a saved model or run folder, or a hub
    spec (`hf-clip:openai/clip-vit-base-patch32`, `hf-siglip:…`, `open_clip:ViT-B-32/laion2b_s34b_b79k`).

    `engine` runs inference (`encode_*`, the build's feature path): "torch", "onnx" or
    "onnx-int8" (default: `$SHOPCLIP_ENGINE`, else :data:`shopclip.models.engines.DEFAULT_ENGINE`).
    ONNX graphs are exported on first use and cached next to the model. `calibration`
    (images, or a callable returning them) calibrates the int8 image graph when no ranges
    are cached for this tower yet."""
    ref = str(name_or_path)
    p = Path(ref)
    if ref == "default":
        d = pretrained_dir("default")
        model = DualEncoder.load(d) if d else create_model(DEFAULT_BASE)
    elif (p / CONFIG_FILE).exists():
        model = DualEncoder.load(p)
    elif (p / "model" / CONFIG_FILE).exists():  # a training run folder
        model = DualEncoder.load(p / "model")
    elif ref in _CONFIGS:
        model = create_model(ref)
    elif ":" in ref and ref.split(":", 1)[0] in HUB_PREFIXES:
        image_tower, text_tower = create_tower_pair(ref)
        cfg = DualEncoderConfig(name=ref, pair=ref, head="identity", embed_dim=text_tower.output_dim, trained=True)
        model = DualEncoder(cfg, image_tower, text_tower)
    elif p.exists():
        raise FileNotFoundError(f"{p} exists but holds no shopclip model ({CONFIG_FILE} not found)")
    else:
        raise _unknown(ref)
    model.eval()
    if device is not None:
        model.to(device)
    return attach_engine(model, engine, calibration=calibration)


_scan_configs()
