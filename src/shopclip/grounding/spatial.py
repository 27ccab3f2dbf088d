"""Spatial features of the image tower and heat map → box helpers shared by the CAM and text-map localisers.

The image is fed at its own aspect ratio (long side ~320 px, both sides multiples of
32) rather than letterboxed to 224: EfficientNet is fully convolutional, a wider input
gives a finer grid (10x8 cells instead of 7x7) and the cells map back to the photo
without padding arithmetic.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from shopclip.grounding.base import Box

_MODEL_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def shared_model(ref: str = "default"):  # -> DualEncoder (import kept lazy: models pull transformers)
    """One loaded dual encoder per reference for all localisers in the process (loading takes seconds)."""
    from shopclip.models import load_model

    with _MODEL_LOCK:
        model = load_model(ref)
    model.eval()
    return model


def image_tensor(image: Image.Image, long_side: int, mean: tuple[float, ...], std: tuple[float, ...],
                 multiple: int = 32) -> torch.Tensor:
    """(1, 3, H, W) normalised tensor, aspect kept, sides rounded to `multiple` (≥ one cell)."""
    w, h = image.size
    scale = long_side / max(w, h)
    nw = max(multiple, int(round(w * scale / multiple)) * multiple)
    nh = max(multiple, int(round(h * scale / multiple)) * multiple)
    img = image.convert("RGB").resize((nw, nh), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]


@dataclass
class SpatialFeatures:
    """The tower's (C, h, w) map for one image; cell (i, j) covers the image's own (i, j)-th grid patch."""

    fmap: torch.Tensor  # (C, h, w)
    image_size: tuple[int, int]  # (W, H) of the original image


@torch.inference_mode()
def spatial_features(model, image: Image.Image, long_side: int = 320) -> SpatialFeatures:
    tower = model.image_tower
    tf = model.transform
    x = image_tensor(image, long_side, tf.mean, tf.std).to(model.device)
    fmap = tower.feature_map(x)[0].float().cpu()
    return SpatialFeatures(fmap, image.size)


def upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear, cell-centre aligned (cv2's half-pixel convention matches a stride-32 grid)."""
    w, h = size
    return cv2.resize(heat.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def mask_components(mask: np.ndarray, weight: np.ndarray | None = None, min_pixels: int = 1) -> list[tuple[Box, float]]:
    """Connected components of a boolean mask → (box, mass); mass = summed `weight` (or pixel count)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    out: list[tuple[Box, float]] = []
    if n <= 1:
        return out
    if weight is not None:
        mass = np.bincount(labels.ravel(), weights=weight.ravel().astype(np.float64), minlength=n)
    for i in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        if area < min_pixels:
            continue
        m = float(mass[i]) if weight is not None else float(area)
        out.append((Box(x, y, x + bw, y + bh, 0.0), m))
    return out


def heat_boxes(heat: np.ndarray, size: tuple[int, int], rel_threshold: float, label: str,
               score: float) -> list[Box]:
    """Threshold a (h, w) heat map at `rel_threshold`·max, biggest connected component first.

    The first box gets `score`; the others get `score` times their share of the heat
    mass, so a localiser's confidence stays comparable between images.
    """
    heat = np.nan_to_num(heat.astype(np.float32))
    if heat.max() <= 0:
        return []
    # Threshold at ≤ 512 px: finer than the 32-px cells anyway, and a 12-MP photo costs no more.
    w, h = size
    s = min(1.0, 512 / max(w, h))
    work = (max(1, round(w * s)), max(1, round(h * s)))
    up = upsample(heat, work)
    mask = up >= rel_threshold * float(up.max())
    comps = mask_components(mask, weight=np.clip(up, 0, None))
    if not comps:
        return []
    comps = [(b.scaled(w / work[0], h / work[1]), m) for b, m in comps]
    comps.sort(key=lambda bm: -bm[1])
    total = sum(m for _, m in comps) or 1.0
    boxes = [comps[0][0].with_score(score, label)]
    boxes += [b.with_score(score * m / total, label) for b, m in comps[1:]]
    return boxes
