"""Class-agnostic localisers: foreground on plain studio backgrounds, and spectral-residual saliency.

Most catalog shots of shoes, bags and watches sit on a white or flat backdrop: the
product is simply "what is not background", and no model is needed. The background
colour is read from the image border; when the border is not uniform the photo is not
a studio shot and the foreground localiser says so by returning nothing (so the
caller falls back, instead of boxing clutter). Saliency (Hou & Zhang 2007, OpenCV
contrib) is the cheap generic alternative; it cannot tell two products apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from shopclip.grounding.base import Box, Localiser
from shopclip.grounding.spatial import mask_components


@dataclass
class Foreground:
    """Foreground mask of a plain-background photo (at working resolution) and how it was found."""

    mask: np.ndarray  # bool (h, w) at working scale
    scale: float  # working px per image px
    background: tuple[int, int, int]
    border_uniformity: float  # share of border pixels close to the background colour


def _border(arr: np.ndarray, width: int) -> np.ndarray:
    return np.concatenate([arr[:width].reshape(-1, arr.shape[-1]), arr[-width:].reshape(-1, arr.shape[-1]),
                           arr[:, :width].reshape(-1, arr.shape[-1]), arr[:, -width:].reshape(-1, arr.shape[-1])])


def foreground_mask(image: Image.Image, *, work_side: int = 256, tolerance: float = 14.0,
                    min_uniformity: float = 0.6) -> Foreground | None:
    """Pixels that differ from the border colour (in Lab), cleaned; None when the border is not a plain backdrop."""
    w, h = image.size
    scale = min(1.0, work_side / max(w, h))
    img = image.convert("RGB")
    if scale < 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    rgb = np.asarray(img, dtype=np.uint8)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    border = _border(lab, 2)
    bg = np.median(border, axis=0)
    uniform = float((np.linalg.norm(border - bg, axis=1) < tolerance).mean())
    if uniform < min_uniformity:
        return None
    dist = np.linalg.norm(lab - bg, axis=2)
    mask = (dist > tolerance).astype(np.uint8)
    # Open removes JPEG speckle; a small close mends hairline gaps without gluing neighbouring products.
    k = max(3, (min(mask.shape) // 64) | 1)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    bg_rgb = cv2.cvtColor(bg.reshape(1, 1, 3).astype(np.uint8), cv2.COLOR_LAB2RGB)[0, 0]
    return Foreground(mask.astype(bool), scale, (int(bg_rgb[0]), int(bg_rgb[1]), int(bg_rgb[2])), uniform)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Close interior holes (a white shoe's laces on a white page) by flood-filling the outside."""
    m = mask.astype(np.uint8)
    padded = np.pad(m, 1)
    flood = padded.copy()
    ff = np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8)
    cv2.floodFill(flood, ff, (0, 0), 1)
    holes = (flood == 0)[1:-1, 1:-1]
    return mask.astype(bool) | holes


def foreground_parts(image: Image.Image, min_frac: float = 0.002, **kwargs: float) -> list[tuple[Box, float]] | None:
    """Components of the foreground as (box in image px, pixel share of the image); None if not a plain backdrop."""
    fg = foreground_mask(image, **kwargs)
    if fg is None:
        return None
    total = fg.mask.size
    comps = mask_components(fg.mask, min_pixels=max(1, int(min_frac * total)))
    inv = 1.0 / fg.scale
    return [(b.scaled(inv, inv), m / total) for b, m in comps]


class ForegroundLocaliser(Localiser):
    """Box around everything that is not the plain backdrop (small specks dropped).

    Components under `keep_frac` of the biggest one are ignored (dust, logos in a
    corner); the rest are united: a pair of shoes is two components and one product.
    Score: the border's uniformity (how sure we are this is a studio backdrop).
    """

    name = "foreground"
    min_score = 0.2  # chosen on train/val scenes (thresholds.min_score.foreground); its score, the border
    # uniformity, is >= min_uniformity (0.6) by construction, so no real box falls below it

    def __init__(self, keep_frac: float = 0.15, max_area: float = 0.98) -> None:
        self.keep_frac = keep_frac
        self.max_area = max_area

    def localise(self, image: Image.Image, prompt: str) -> list[Box]:
        fg = foreground_mask(image)
        if fg is None:
            return []
        total = fg.mask.size
        comps = mask_components(fg.mask, min_pixels=max(1, int(0.002 * total)))
        if not comps:
            return []
        biggest = max(m for _, m in comps)
        keep = [b for b, m in comps if m >= self.keep_frac * biggest]
        box = keep[0]
        for b in keep[1:]:
            box = box.union(b)
        inv = 1.0 / fg.scale
        box = box.scaled(inv, inv)
        if box.area > self.max_area * image.size[0] * image.size[1]:
            return []  # "everything is foreground" is not a localisation
        return [box.with_score(fg.border_uniformity, "foreground")]


class SaliencyLocaliser(Localiser):
    """OpenCV spectral-residual saliency → Otsu threshold → biggest blob. Under 1 ms, prompt-blind."""

    name = "saliency"
    min_score = 0.2  # chosen on train/val scenes: bench/results/grounding.json thresholds.min_score.saliency

    def __init__(self, work_side: int = 128) -> None:
        self.work_side = work_side

    def saliency_map(self, image: Image.Image) -> np.ndarray:
        w, h = image.size
        s = self.work_side / max(w, h)
        small = np.asarray(image.convert("RGB").resize((max(1, round(w * s)), max(1, round(h * s)))), np.uint8)
        sal = cv2.saliency.StaticSaliencySpectralResidual_create()
        ok, smap = sal.computeSaliency(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        if not ok:
            return np.zeros(small.shape[:2], np.float32)
        return cv2.GaussianBlur(smap.astype(np.float32), (0, 0), 2.0)

    def localise(self, image: Image.Image, prompt: str) -> list[Box]:
        smap = self.saliency_map(image)
        if smap.max() <= 0:
            return []
        u8 = (255 * smap / smap.max()).astype(np.uint8)
        _, mask = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        comps = mask_components(mask.astype(bool), weight=smap)
        if not comps:
            return []
        comps.sort(key=lambda bm: -bm[1])
        total = sum(m for _, m in comps)
        sx = image.size[0] / smap.shape[1]
        sy = image.size[1] / smap.shape[0]
        return [b.scaled(sx, sy).with_score(m / total, "saliency") for b, m in comps]
