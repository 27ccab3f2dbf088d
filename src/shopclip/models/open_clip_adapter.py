"""OpenCLIP models as shopclip towers: ``load_model("open_clip:ViT-B-32/laion2b_s34b_b79k")``.

open_clip is imported lazily and only here: it imports torchvision, which does not import
beside the CPU torch this project pins, so everything else must work without it. The
image side uses shopclip's own PIL transform, built from the model's preprocess config
(image size, mean, std, resize mode), so decoding stays the same for every model.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
from torch import nn

from shopclip.models.towers import ImageTower, ModelUnavailableError, TextTower
from shopclip.models.transforms import ImageTransform

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# open_clip's resize modes → ImageTransform modes ("shortest" side + centre crop is its default).
_RESIZE_MODES = {"shortest": "center_crop", "squash": "resize", "longest": "pad"}


def import_open_clip() -> ModuleType:
    """open_clip, or a ModelUnavailableError (a RuntimeError) that says what is missing and how to get it."""
    try:
        import open_clip
    except Exception as e:
        raise ModelUnavailableError(
            "open_clip models need the open_clip_torch package, which could not be imported "
            f"({type(e).__name__}: {e}). Install it with `pip install open_clip_torch` together with a "
            "torchvision build matching your torch; the torch 2.13 CPU pin of this project has no such "
            "torchvision, so use a hf-clip:<id> model here instead"
        ) from e
    return open_clip


def parse_spec(spec: str) -> tuple[str, str]:
    """'ViT-B-32/laion2b_s34b_b79k' → ('ViT-B-32', 'laion2b_s34b_b79k')."""
    arch, sep, tag = spec.partition("/")
    if not sep or not arch or not tag:
        raise ValueError(f"open_clip spec {spec!r}: expected open_clip:<arch>/<pretrained tag>, "
                         "e.g. open_clip:ViT-B-32/laion2b_s34b_b79k")
    return arch, tag


def preprocess_transform(model: nn.Module, open_clip: Any | None = None) -> ImageTransform:
    """shopclip's transform for what the model was trained on: size, mean, std and resize mode."""
    getter = getattr(open_clip, "get_model_preprocess_cfg", None) if open_clip is not None else None
    cfg = dict(getter(model)) if getter is not None else {}
    visual = getattr(model, "visual", model)
    size = cfg.get("size", getattr(visual, "image_size", 224))
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ValueError(f"non-square input size {tuple(size)} is not supported")
        size = size[0]
    mean = tuple(cfg.get("mean") or getattr(visual, "image_mean", None) or OPENAI_MEAN)
    std = tuple(cfg.get("std") or getattr(visual, "image_std", None) or OPENAI_STD)
    mode = _RESIZE_MODES.get(str(cfg.get("resize_mode", "shortest")), "center_crop")
    return ImageTransform(size=int(size), mean=mean, std=std, mode=mode)


class OpenClipImageTower(ImageTower):
    """`model.visual`, i.e. `model.encode_image` without its optional normalisation (the heads normalise)."""

    def __init__(self, visual: nn.Module, name: str, transform: ImageTransform) -> None:
        super().__init__()
        self.visual = visual
        self.name = name
        self.transform = transform
        dim = getattr(visual, "output_dim", None)
        self.output_dim = int(dim) if dim else int(self.forward(torch.zeros(1, 3, transform.size, transform.size)).shape[-1])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.visual(pixels)
        return out[0] if isinstance(out, tuple) else out  # CoCa-style towers also return tokens

    def blocks(self) -> list[nn.Module]:
        return list(getattr(getattr(self.visual, "transformer", None), "resblocks", []))


class OpenClipTextTower(TextTower):
    """`model.encode_text` on open_clip's own tokenizer (fixed context length, usually 77)."""

    def __init__(self, text_model: nn.Module, tokenizer: Any, name: str, output_dim: int) -> None:
        super().__init__()
        self.text_model = text_model
        self.tokenizer = tokenizer
        self.name = name
        self.output_dim = output_dim
        self.max_length = int(getattr(tokenizer, "context_length", 77) or 77)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokenizer(list(texts))}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.text_model.encode_text(batch["input_ids"])

    def blocks(self) -> list[nn.Module]:
        m = self.text_model
        trunk = getattr(m, "transformer", None) or getattr(getattr(m, "text", None), "transformer", None)
        return list(getattr(trunk, "resblocks", []))


def text_half(model: nn.Module) -> nn.Module:
    """The model without `visual` (and the logit scale/bias), sharing every text weight with it.

    open_clip keeps the text weights on the model itself (token_embedding, transformer,
    text_projection, …) next to `visual`; a tower holding the whole model would also train
    and fingerprint the image weights. A shallow copy with its own child tables holds only
    the text half, and `encode_text` runs on it unchanged.
    """
    import copy

    half = copy.copy(model)
    half._modules = {k: v for k, v in model._modules.items() if k != "visual"}
    half._parameters = {k: v for k, v in model._parameters.items() if k not in ("logit_scale", "logit_bias")}
    half._buffers = dict(model._buffers)
    return half


def _text_dim(model: nn.Module, image_dim: int) -> int:
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor) and proj.ndim == 2:
        return int(proj.shape[1])
    if isinstance(proj, nn.Linear):
        return int(proj.out_features)
    text = getattr(model, "text", None)
    return int(getattr(text, "output_dim", 0) or image_dim)


def open_clip_towers(spec: str, open_clip: Any | None = None, **_: Any) -> tuple[ImageTower, TextTower]:
    """Both towers of `open_clip:<arch>/<tag>`; `open_clip` is the module (imported here when None)."""
    arch, tag = parse_spec(spec)
    oc = open_clip if open_clip is not None else import_open_clip()
    model, _, _ = oc.create_model_and_transforms(arch, pretrained=tag)
    model.eval()
    tokenizer = oc.get_tokenizer(arch)
    name = f"open_clip:{arch}/{tag}"
    image = OpenClipImageTower(model.visual, name, preprocess_transform(model, oc))
    text = OpenClipTextTower(text_half(model), tokenizer, name, _text_dim(model, image.output_dim))
    if text.output_dim != image.output_dim:
        raise ValueError(f"{name}: text embeddings are {text.output_dim}-d, image embeddings {image.output_dim}-d")
    return image, text
