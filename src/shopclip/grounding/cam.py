"""Class-activation maps: where in the photo the ImageNet classes that match the prompt fire.

EfficientNet-Lite0 pools its last (1280, h, w) map and applies one linear layer, so the
logit of class c is the mean over cells of w_c · f(cell): the per-cell products are a
map of where the evidence for c sits (Zhou et al. 2016). The prompt picks the classes
through :mod:`shopclip.grounding.taxonomy` ("Casual Shoes" → running shoe, Loafer,
clog, sandal, cowboy boot); a prompt no class matches uses the image's own top 5.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from shopclip.grounding.base import Box, Localiser
from shopclip.grounding.spatial import SpatialFeatures, heat_boxes, shared_model, spatial_features
from shopclip.grounding.taxonomy import match_type


def prompt_classes(prompt: str) -> tuple[int, ...]:
    t = match_type(prompt)
    return t.classes if t is not None else ()


#: The CAM's relative threshold (cells >= CAM_THRESHOLD·max form the box), chosen by ``bench/grounding.py``
#: on composed scenes of train/val products (seed 0): ``thresholds.cam_threshold`` in
#: ``bench/results/grounding.json``; reported on test-product scenes of another seed.
CAM_THRESHOLD = 0.6


class CamLocaliser(Localiser):
    """ImageNet CAM of the prompt's classes → threshold at `threshold`·max → biggest component (by heat mass).

    The threshold (:data:`CAM_THRESHOLD`, 0.6) is well above the usual 0.2: lower, boxes spill over onto
    neighbouring products (on the train/val tuning scenes hit rate 0.28 at 0.3, 0.39 at 0.5, 0.42 at 0.6,
    0.33 at 0.7).

    Score: the softmax mass of the prompt's classes over the whole image, a fair "is
    it there at all" signal; generic prompts (no class) score 0.5 × the top-5 mass.
    """

    name = "cam"
    min_score = 0.0  # chosen on train/val scenes: bench/results/grounding.json thresholds.min_score.cam

    def __init__(self, model: str = "default", long_side: int = 320, threshold: float = CAM_THRESHOLD,
                 top_k: int = 5) -> None:
        self.model_ref = model
        self.long_side = long_side
        self.threshold = threshold
        self.top_k = top_k

    @property
    def model(self):  # noqa: ANN201 - DualEncoder, loaded lazily
        return shared_model(self.model_ref)

    def options(self) -> dict:
        return {**super().options(), "model": self.model_ref}

    def _classifier(self) -> torch.nn.Linear:
        tower = self.model.image_tower
        if not hasattr(tower, "classifier"):
            raise RuntimeError(f"the image tower {type(tower).__name__} has no ImageNet head; CAM needs EfficientNet")
        return tower.classifier()

    @torch.inference_mode()
    def heatmap(self, image: Image.Image, prompt: str, feats: SpatialFeatures | None = None
                ) -> tuple[np.ndarray, float, str]:
        """(h, w) class-activation map, the prompt's class mass, and a label naming the classes used."""
        feats = feats or spatial_features(self.model, image, self.long_side)
        fc = self._classifier()
        fmap = feats.fmap[: fc.in_features]  # (C, h, w): the channels the classifier reads
        logits = fc(fmap.mean(dim=(1, 2)))
        probs = logits.softmax(-1)
        classes = prompt_classes(prompt)
        generic = not classes
        if generic:
            classes = tuple(int(i) for i in probs.topk(self.top_k).indices)
        idx = torch.tensor(classes)
        p = probs[idx]
        weights = p / p.sum().clamp_min(1e-12)
        # Σ_c p_c (w_c · f) = (Σ_c p_c w_c) · f: one weighted class vector, one pass over the cells.
        vec = (weights[:, None] * fc.weight[idx]).sum(0)
        heat = torch.einsum("c,chw->hw", vec, fmap).clamp_min(0).numpy()
        mass = float(p.sum()) * (0.5 if generic else 1.0)
        label = "cam:" + ("generic" if generic else str(classes[0]))
        return heat, mass, label

    def localise(self, image: Image.Image, prompt: str) -> list[Box]:
        heat, mass, label = self.heatmap(image, prompt)
        return heat_boxes(heat, image.size, self.threshold, label, mass)


class TextMapLocaliser(Localiser):
    """Dual-encoder similarity map: each cell projected by the image head, compared with the prompt's text vector.

    This is the shopclip-native grounding signal (no ImageNet vocabulary), but it is
    only meaningful once the projection heads are trained: with untrained heads the
    text and image spaces are unrelated and the map is noise. Threshold is relative
    to the map's range; score is the best cell's cosine similarity.
    """

    name = "textmap"
    min_score = 0.2  # best-cell cosine; chosen on train/val scenes: bench/results/grounding.json thresholds

    def __init__(self, model: str = "default", long_side: int = 320, threshold: float = 0.5) -> None:
        self.model_ref = model
        self.long_side = long_side
        self.threshold = threshold
        self._text_cache: dict[str, torch.Tensor] = {}

    @property
    def model(self):  # noqa: ANN201
        return shared_model(self.model_ref)

    def options(self) -> dict:
        """The model *folder* behind "default" too: new trained heads must not reuse old boxes."""
        from shopclip.models.factory import resolve_model_ref

        return {**super().options(), "model_ref": resolve_model_ref(self.model_ref)}

    def text_vector(self, prompt: str) -> torch.Tensor:
        if prompt not in self._text_cache:
            if len(self._text_cache) > 4096:
                self._text_cache.clear()
            self._text_cache[prompt] = torch.from_numpy(self.model.encode_text([prompt])[0])
        return self._text_cache[prompt]

    @torch.inference_mode()
    def heatmap(self, image: Image.Image, prompt: str, feats: SpatialFeatures | None = None) -> np.ndarray:
        """(h, w) cosine similarity between each projected cell and the prompt."""
        model = self.model
        feats = feats or spatial_features(model, image, self.long_side)
        fmap = feats.fmap
        cells_of = getattr(model.image_tower, "cells", None)
        if cells_of is not None:  # a multi-level tower: each cell as a vector of the pooled space
            fmap = cells_of(fmap[None])[0]
        c, h, w = fmap.shape
        cells = fmap.reshape(c, h * w).T.to(model.device)
        proj = model.project_image(cells).cpu()  # (h*w, d), L2-normalised
        return (proj @ self.text_vector(prompt)).reshape(h, w).numpy()

    def localise(self, image: Image.Image, prompt: str) -> list[Box]:
        sim = self.heatmap(image, prompt)
        lo, hi = float(sim.min()), float(sim.max())
        if not np.isfinite(hi) or hi - lo < 1e-6:
            return []
        norm = (sim - lo) / (hi - lo)
        return heat_boxes(norm, image.size, self.threshold, "textmap", hi)
