"""Open-vocabulary detectors by name — Grounding DINO and OWLv2 through Hugging Face ``transformers``.

VL-CLIP grounds with Grounding DINO prompted by the product type. No such detector
ships its weights in a wheel, so these adapters are for users with a model hub (or
a local copy): ``create_localiser("grounding-dino:IDEA-Research/grounding-dino-tiny")``,
``create_localiser("owlv2:google/owlv2-base-patch16-ensemble")``. Image processors are
requested with the PIL backend, since torchvision does not import beside this torch.
Here they are tested only with tiny randomly initialised models (no download).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from shopclip.grounding.base import Box, Localiser

KINDS = ("grounding-dino", "owlv2")


def text_length_limit(model: torch.nn.Module, kind: str) -> int | None:
    """The most text tokens the detector's text model takes (its position table), from the model config."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    text_cfg = getattr(cfg, "text_config", None)
    limits = [getattr(text_cfg, "max_position_embeddings", None)]
    if kind == "grounding-dino":
        limits.append(getattr(cfg, "max_text_len", None))  # the fusion layers' own cap
    known = [int(x) for x in limits if isinstance(x, int) and x > 0]
    return min(known) if known else None


class HFDetectorLocaliser(Localiser):
    """Zero-shot detection of the prompt; boxes above `threshold`, best first, in image pixels."""

    min_score = 0.0

    def __init__(self, model: torch.nn.Module, processor: Any, kind: str, *, threshold: float = 0.1,
                 text_threshold: float = 0.25, name: str | None = None, max_text_length: int | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.model = model.eval()
        self.processor = processor
        self.kind = kind
        self.threshold = threshold
        self.text_threshold = text_threshold
        self.name = name or kind
        # Prompts longer than the text model's position table crash its forward pass, so
        # they are always truncated: to `max_text_length` when given (capped by the model),
        # else to the model's own limit read from its config.
        limit = text_length_limit(model, kind)
        self.max_text_length = min(max_text_length, limit) if max_text_length and limit else (max_text_length or limit)
        # The score a detector gives is its own calibrated confidence: trust it.
        self.min_score = threshold

    @classmethod
    def from_pretrained(cls, kind: str, model_id: str, **kwargs: Any) -> HFDetectorLocaliser:
        """Load from a hub id or a local folder (needs network or a cache; HF_HUB_OFFLINE is honoured)."""
        from transformers import AutoProcessor

        if kind == "owlv2":
            from transformers import Owlv2ForObjectDetection as Model
        elif kind == "grounding-dino":
            from transformers import GroundingDinoForObjectDetection as Model
        else:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        processor = AutoProcessor.from_pretrained(model_id, backend="pil")
        model = Model.from_pretrained(model_id)
        return cls(model, processor, kind, name=f"{kind}:{model_id}", **kwargs)

    def _text(self, prompt: str) -> Any:
        phrase = " ".join(prompt.lower().split()) or "product"
        # Grounding DINO reads "." separated phrases; OWLv2 takes a list of queries per image.
        return f"{phrase}." if self.kind == "grounding-dino" else [[f"a photo of {phrase}"]]

    @torch.inference_mode()
    def localise(self, image: Image.Image, prompt: str) -> list[Box]:
        image = image.convert("RGB")
        w, h = image.size
        text_kwargs: dict[str, Any] = {}
        if self.max_text_length:
            text_kwargs = {"truncation": True, "max_length": self.max_text_length}
            if self.kind == "owlv2":
                text_kwargs["padding"] = "max_length"  # OWL's queries are padded to the model's length
        inputs = self.processor(images=image, text=self._text(prompt), return_tensors="pt", **text_kwargs)
        outputs = self.model(**inputs)
        if self.kind == "owlv2":
            # OWLv2 pads the photo to a square at the bottom/right; boxes are relative to that square.
            side = max(w, h)
            res = self.processor.post_process_grounded_object_detection(
                outputs, threshold=self.threshold, target_sizes=[(side, side)])[0]
        else:
            res = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=self.threshold, text_threshold=self.text_threshold,
                target_sizes=[(h, w)])[0]
        boxes = []
        for (x0, y0, x1, y1), s in zip(res["boxes"].tolist(), res["scores"].tolist(), strict=True):
            b = Box(x0, y0, x1, y1, float(s), self.kind).clip(w, h)
            if b.area > 0:
                boxes.append(b)
        return sorted(boxes, key=lambda b: -b.score)
