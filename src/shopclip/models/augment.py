"""Image augmentations for product photos, in PIL + numpy (torchvision does not import here).

Product photos are not ImageNet photos: the product is centred, often on white, and
its colour is part of what a shopper types ("red dress"). So the crop keeps most of
the object (area 70-100 %), colour jitter never touches hue, flips are skipped for
products whose picture carries text (packaging, posters, watch dials), and the result
is padded to a square on white exactly like inference (`ImageTransform`, mode "pad").

Every random draw comes from a generator seeded by the caller, so a view is a pure
function of (image, seed): cached augmented features and resumed runs stay exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageEnhance

# Substrings of a category path / title that mean "the picture probably shows text".
DEFAULT_NO_FLIP = (
    "computers", "beauty and personal care", "posters", "stickers", "paintings", "wall decals",
    "software", "watch", "clock", "books",
)


@dataclass(frozen=True)
class AugmentConfig:
    """One switch per augmentation; `enabled=False` gives the inference transform."""

    enabled: bool = True
    crop_scale: tuple[float, float] = (0.70, 1.0)  # fraction of the image area kept
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of the crop
    flip_p: float = 0.5
    brightness: float = 0.15  # factor drawn from 1 ± this
    contrast: float = 0.15
    saturation: float = 0.10
    rotate_deg: float = 4.0  # small tilts, filled with white
    no_flip: tuple[str, ...] = DEFAULT_NO_FLIP

    def to_dict(self) -> dict:
        return asdict(self)


def flip_allowed(text: str, no_flip: Sequence[str] = DEFAULT_NO_FLIP) -> bool:
    """Mirroring a photo with printed text makes mirrored letters; skip flips for such products."""
    low = text.lower()
    return not any(word in low for word in no_flip)


def random_resized_crop(img: Image.Image, rng: np.random.Generator, scale: tuple[float, float],
                        ratio: tuple[float, float]) -> Image.Image:
    """A crop of `scale` of the area and aspect in `ratio` (log-uniform); the whole image if none fits."""
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left = int(rng.integers(0, w - cw + 1))
            top = int(rng.integers(0, h - ch + 1))
            return img.crop((left, top, left + cw, top + ch))
    return img


def augment_image(img: Image.Image, rng: np.random.Generator, cfg: AugmentConfig, *, can_flip: bool = True) -> Image.Image:
    """One random view of a product photo (before padding to square)."""
    if not cfg.enabled:
        return img
    if img.mode != "RGB":
        img = img.convert("RGB")
    img = random_resized_crop(img, rng, cfg.crop_scale, cfg.crop_ratio)
    if can_flip and rng.random() < cfg.flip_p:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if cfg.rotate_deg > 0:
        angle = float(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
        img = img.rotate(angle, resample=Image.BICUBIC, expand=False, fillcolor=(255, 255, 255))
    for enhancer, amount in ((ImageEnhance.Brightness, cfg.brightness), (ImageEnhance.Contrast, cfg.contrast),
                             (ImageEnhance.Color, cfg.saturation)):
        if amount > 0:
            img = enhancer(img).enhance(float(rng.uniform(1 - amount, 1 + amount)))
    return img


def view_rng(seed: int, *parts: int | str) -> np.random.Generator:
    """A generator that depends only on (seed, parts): reproducible across processes and resumes."""
    import zlib

    salt = [zlib.crc32(str(p).encode()) for p in parts]
    return np.random.default_rng([seed & 0xFFFFFFFF, *salt])
