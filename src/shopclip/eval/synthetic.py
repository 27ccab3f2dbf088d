"""Synthetic re-listings: the same product as another seller would post it.

The sample catalog has only 45 tiny groups of real duplicate listings (same photo, same
title), too few to measure product matching. So matching is *also* measured on
clearly labelled synthetic re-listings built from real products:

* **photo** — one or two of: ``recrop`` (keep 75-92 % of the frame at a random offset,
  resized back), ``pad`` (8-25 % border in a random flat colour on each side, so the
  aspect ratio changes), ``background`` (the near-white background that touches the
  border replaced by a random colour with noise; photos without such a background get
  ``pad`` instead, and the op list says so), ``recompress`` (down-scaled to 50-80 % and
  back, JPEG quality 15-35). Every re-listing is then saved as a JPEG (quality 40-85
  unless ``recompress`` chose a lower one) — it was re-uploaded.
* **title** — one to three of, in this order: ``drop_attribute`` (a word or phrase
  equal to one of the product's attribute values — colour, gender, usage… — is removed;
  else a random non-brand word), ``abbreviate`` (common seller abbreviations such as
  Men→M, Black→Blk, T-shirt→Tee, else vowels dropped from a long word), ``reorder``
  (brand moved to the end, or the middle words shuffled), ``casing`` (lower, UPPER or
  Title Case). The result always differs from the original title.
* **description** — kept, cut to its first 50-100 % of words (another seller copies
  part of the spec sheet); products without one get none.

Everything is drawn from a generator seeded by ``(seed, product id)``, so a product's
re-listing does not depend on which other products are in the run, and the same seed
gives byte-identical images and identical titles.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shopclip.core.images import open_image
from shopclip.core.io import atomic_write_bytes

IMAGE_OPS = ("background", "recrop", "pad", "recompress")
TITLE_OPS = ("drop_attribute", "abbreviate", "reorder", "casing")

# Abbreviations seen in marketplace titles; keys are matched case-insensitively.
ABBREVIATIONS: dict[str, str] = {
    "men": "M", "men's": "M", "women": "W", "women's": "W", "boys": "Bys", "girls": "Grls",
    "unisex": "Uni", "t-shirt": "Tee", "tshirt": "Tee", "tshirts": "Tees", "t-shirts": "Tees",
    "black": "Blk", "white": "Wht", "blue": "Blu", "grey": "Gry", "gray": "Gry", "navy": "Nvy",
    "green": "Grn", "brown": "Brn", "purple": "Prpl", "yellow": "Ylw", "orange": "Orng",
    "casual": "Csl", "sports": "Spts", "formal": "Frml", "shoes": "Shs", "sandals": "Sndls",
    "printed": "Prntd", "cotton": "Ctn", "leather": "Lthr", "watch": "Wtch", "round": "Rnd",
    "neck": "Nk", "pack": "Pk", "sleeve": "Slv", "sleeves": "Slvs", "striped": "Strpd",
    "analog": "Anlg", "digital": "Dgtl", "with": "w/", "and": "&",
}
_VOWELS = re.compile(r"[aeiouAEIOU]")


@dataclass
class Relisting:
    """One synthetic re-listing of a real product (``source_id``)."""

    id: str
    source_id: str
    title: str
    description: str
    image: str  # path of the written JPEG
    image_ops: list[str] = field(default_factory=list)
    title_ops: list[str] = field(default_factory=list)

    def text(self) -> str:
        return listing_text(self.title, self.description)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def listing_text(title: str, description: str = "") -> str:
    """What a seller wrote: title, then description (whitespace squashed)."""
    t = " ".join(str(title).split())
    d = " ".join(str(description).split())
    return f"{t}. {d}" if d and d != t else t


def _rng(seed: int, key: str) -> random.Random:
    digest = hashlib.sha1(f"shopclip-relist:{seed}:{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# ------------------------------------------------------------------------------ titles


def _words(text: str) -> list[str]:
    return text.split()


def _drop_attribute(words: list[str], attributes: dict[str, str], rng: random.Random) -> tuple[list[str], str]:
    lowered = [w.lower().strip(",.") for w in words]
    candidates = []
    for name, value in attributes.items():
        value_words = str(value).lower().split()
        n = len(value_words)
        if not n or n >= len(words):
            continue
        for start in range(1, len(words) - n + 1):  # never the first word: usually the brand
            if lowered[start : start + n] == value_words:
                candidates.append((name, start, n))
    if candidates:
        name, start, n = rng.choice(sorted(candidates))
        return words[:start] + words[start + n :], f"drop_attribute:{name}"
    if len(words) >= 3:
        i = rng.randrange(1, len(words))
        return words[:i] + words[i + 1 :], "drop_word"
    return words, ""


def _abbreviate(words: list[str], rng: random.Random) -> tuple[list[str], str]:
    known = [i for i, w in enumerate(words) if w.lower() in ABBREVIATIONS]
    if known:
        picks = rng.sample(known, k=min(len(known), rng.choice((1, 2))))
        out = list(words)
        for i in picks:
            out[i] = ABBREVIATIONS[words[i].lower()]
        return out, "abbreviate"
    long = [i for i, w in enumerate(words) if len(w) >= 6 and w.isalpha()]
    if long:
        i = rng.choice(long)
        w = words[i]
        out = list(words)
        out[i] = w[0] + _VOWELS.sub("", w[1:])
        return out, "abbreviate:vowels"
    return words, ""


def _reorder(words: list[str], rng: random.Random) -> tuple[list[str], str]:
    if len(words) < 3:
        return words[::-1], "reorder:reverse" if len(words) == 2 else ""
    if rng.random() < 0.5:
        return words[1:] + words[:1], "reorder:brand_last"
    middle = words[1:]
    for _ in range(5):
        shuffled = rng.sample(middle, k=len(middle))
        if shuffled != middle:
            return words[:1] + shuffled, "reorder:shuffle"
    return words[1:] + words[:1], "reorder:brand_last"


def _casing(text: str, rng: random.Random) -> tuple[str, str]:
    options = [("lower", text.lower()), ("upper", text.upper()), ("title", text.title())]
    changed = [(n, t) for n, t in options if t != text]
    if not changed:
        return text, ""
    name, out = rng.choice(changed)
    return out, f"casing:{name}"


def rewrite_title(title: str, attributes: dict[str, str], rng: random.Random) -> tuple[str, list[str]]:
    """Rewrite a title as another seller would; returns ``(title, ops applied)``."""
    n_ops = rng.choices((1, 2, 3), weights=(0.3, 0.45, 0.25))[0]
    chosen = set(rng.sample(TITLE_OPS, k=n_ops))
    words = _words(title)
    ops: list[str] = []
    if "drop_attribute" in chosen:
        words, op = _drop_attribute(words, attributes, rng)
        ops += [op] if op else []
    if "abbreviate" in chosen:
        words, op = _abbreviate(words, rng)
        ops += [op] if op else []
    if "reorder" in chosen:
        words, op = _reorder(words, rng)
        ops += [op] if op else []
    text = " ".join(words)
    if "casing" in chosen or text == " ".join(_words(title)):
        text, op = _casing(text, rng)
        ops += [op] if op else []
    return text, ops


# ------------------------------------------------------------------------------ images


def _random_colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _recrop(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    s = rng.uniform(0.75, 0.92)
    cw, ch = max(1, round(w * s)), max(1, round(h * s))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC)


def _pad(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    left, right = (round(w * rng.uniform(0.08, 0.25)) for _ in range(2))
    top, bottom = (round(h * rng.uniform(0.08, 0.25)) for _ in range(2))
    canvas = Image.new("RGB", (w + left + right, h + top + bottom), _random_colour(rng))
    canvas.paste(img, (left, top))
    return canvas


def _border_background(arr: np.ndarray, threshold: int = 235) -> np.ndarray:
    """Mask of near-white pixels connected to the image border (the studio background)."""
    from scipy import ndimage

    white = arr.min(axis=2) >= threshold
    labels, _ = ndimage.label(white)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    border = border[border > 0]
    return np.isin(labels, border)


def _background(img: Image.Image, rng: random.Random, np_rng: np.random.Generator) -> tuple[Image.Image, str]:
    arr = np.asarray(img, dtype=np.uint8)
    mask = _border_background(arr)
    if mask.mean() < 0.05:  # not a studio shot: nothing to swap, pad instead
        return _pad(img, rng), "pad(no white background)"
    colour = np.asarray(_random_colour(rng), dtype=np.float32)
    noise = np_rng.normal(0.0, 12.0, size=arr.shape).astype(np.float32)
    out = arr.astype(np.float32)
    out[mask] = np.clip(colour + noise[mask], 0, 255)
    return Image.fromarray(out.astype(np.uint8)), "background"


def _recompress(img: Image.Image, rng: random.Random) -> tuple[Image.Image, int]:
    w, h = img.size
    f = rng.uniform(0.5, 0.8)
    small = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
    return small.resize((w, h), Image.BILINEAR), rng.randint(15, 35)


def relist_image(img: Image.Image, rng: random.Random, np_rng: np.random.Generator) -> tuple[bytes, list[str]]:
    """JPEG bytes of the photo as re-uploaded by another seller, and the ops applied."""
    img = open_image(img)
    n_ops = rng.choices((1, 2), weights=(0.6, 0.4))[0]
    chosen = set(rng.sample(IMAGE_OPS, k=n_ops))
    ops: list[str] = []
    quality = rng.randint(40, 85)
    if "background" in chosen:
        img, op = _background(img, rng, np_rng)
        ops.append(op)
    if "recrop" in chosen:
        img = _recrop(img, rng)
        ops.append("recrop")
    if "pad" in chosen:
        img = _pad(img, rng)
        ops.append("pad")
    if "recompress" in chosen:
        img, quality = _recompress(img, rng)
        ops.append("recompress")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    ops.append(f"jpeg:q{quality}")
    return buf.getvalue(), ops


# ---------------------------------------------------------------------------- listings


def _safe_name(product_id: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", product_id)[:80]
    return f"{clean}-{hashlib.sha1(product_id.encode()).hexdigest()[:8]}"


def make_relisting(
    product_id: str,
    title: str,
    description: str,
    attributes: dict[str, str],
    image: str | Path | Image.Image,
    out_dir: str | Path,
    seed: int = 0,
) -> Relisting:
    """One synthetic re-listing of a real product, its photo written under ``out_dir``."""
    rng = _rng(seed, product_id)
    np_rng = np.random.default_rng(rng.getrandbits(64))
    new_title, title_ops = rewrite_title(title, attributes, rng)
    words = description.split()
    keep = max(1, round(len(words) * rng.uniform(0.5, 1.0))) if words else 0
    data, image_ops = relist_image(open_image(image), rng, np_rng)
    path = Path(out_dir) / f"{_safe_name(product_id)}.jpg"
    if not path.exists() or path.read_bytes() != data:
        atomic_write_bytes(path, data)
    return Relisting(
        id=f"{product_id}~relist{seed}",
        source_id=product_id,
        title=new_title,
        description=" ".join(words[:keep]),
        image=str(path),
        image_ops=image_ops,
        title_ops=title_ops,
    )


def make_relistings(
    products: Iterable[Any],
    image_path: Callable[[Any], str | Path],
    out_dir: str | Path,
    seed: int = 0,
    progress: bool = False,
) -> list[Relisting]:
    """Re-listings of catalog products (objects with id/title/description/attributes)."""
    items: Sequence[Any] = list(products)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="synthetic re-listings", unit="product", leave=False)
    return [
        make_relisting(p.id, p.title, p.description or "", dict(p.attributes), image_path(p), out_dir, seed)
        for p in items
    ]


__all__ = ["IMAGE_OPS", "TITLE_OPS", "Relisting", "listing_text", "make_relisting", "make_relistings",
           "relist_image", "rewrite_title"]
