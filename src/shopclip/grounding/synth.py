"""The localisation benchmark: real catalog products cut out and composed into scenes with known boxes.

No catalog here has box labels, so they are made: product photos shot on a plain
white backdrop are cut out (everything not backdrop-coloured, holes filled) and pasted,
with 1-3 *other* products, onto canvases with varied backgrounds, at random sizes and
positions. The target's box is the bounding box of its pasted mask; the prompt is
its product type (the category leaf, e.g. "Casual Shoes"), exactly what the grounding
stage uses on a real catalog.

How a scene is made (all draws from ``numpy.random.default_rng([seed, index])``, so
scene *i* is the same whatever ``n`` is and scenes can be generated in any order):

* canvas 320-512 px each side (independently: portrait, landscape, square);
* background, uniformly one of: ``white`` (the studio case), ``plain`` (a random
  colour), ``gradient`` (two random colours, random direction), ``noise`` (smooth
  random colour blobs plus grain), ``stripes`` (two colours, random period and angle),
  ``photo`` (a random crop of a real non-studio catalog photo: blankets, curtains,
  rugs — real texture and clutter), when the catalog has such photos;
* the target: a product type drawn uniformly among the types with at least 5 cut-outs
  (rarer types appear as distractors only), then a product of that type;
* 1-3 distractors from *other* look-alike groups (:func:`taxonomy.group_of`: never a
  second shoe when the prompt is "Casual Shoes", which would make the true box
  ambiguous);
* each object's long side is 28-60 % of the canvas's short side, mirrored with
  probability 0.5, placed where its box does not touch any other object's box
  (shrunk by 15 % and retried when it does not fit);
* the finished scene is JPEG-compressed (quality 80-95) so pasted edges are not
  pixel-perfect.

Pool: products whose photo border is ≥ 90 % backdrop-white, whose mask covers 3-85 %
of the photo, fills at least a quarter of its own box (light products on white come
out in fragments) and barely touches the photo's edge; apparel photos showing a person (MediaPipe
pose: visible face, shoulders or hips) are left out, since the product would then
be one part of the cut-out (without MediaPipe, apparel is left out entirely).
Images are generated on the fly and never written into the repository.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from shopclip.catalog import Catalog, Product
from shopclip.core.images import ImageError, open_image
from shopclip.grounding.base import Box
from shopclip.grounding.saliency import fill_holes, foreground_mask
from shopclip.grounding.spatial import mask_components
from shopclip.grounding.taxonomy import group_of, product_type, type_of_product

BACKGROUNDS = ("white", "plain", "gradient", "noise", "stripes", "photo")
_PERSON_CATEGORIES = ("apparel", "baby care")


@dataclass
class Cutout:
    """One product, cut from its studio photo: RGBA cropped to the product, alpha = product mask."""

    product_id: str
    prompt: str
    group: str
    rgba: Image.Image


@dataclass
class Scene:
    """A composed image, the target's true box and the prompt that names it."""

    index: int
    image: Image.Image
    box: Box
    prompt: str
    target_id: str
    others: list[str] = field(default_factory=list)
    background: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "box": [round(v, 1) for v in self.box.xyxy], "prompt": self.prompt,
                "target_id": self.target_id, "others": self.others, "background": self.background,
                "size": list(self.image.size)}


def cut_out(image: Image.Image, *, min_uniformity: float = 0.9, min_frac: float = 0.03,
            max_frac: float = 0.85, max_edge_touch: float = 0.03) -> tuple[Image.Image | None, str]:
    """(RGBA cut-out, "") for a product on a light plain backdrop, else (None, why not)."""
    rgb = image.convert("RGB")
    fg = foreground_mask(rgb, work_side=max(rgb.size), min_uniformity=min_uniformity)
    if fg is None:
        return None, "backdrop not plain"
    if min(fg.background) < 215:
        return None, "backdrop not white"
    mask = fill_holes(fg.mask)
    comps = mask_components(mask, min_pixels=max(1, int(0.002 * mask.size)))
    if not comps:
        return None, "no foreground"
    biggest = max(m for _, m in comps)
    keep = np.zeros_like(mask)
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    sizes = np.bincount(labels.ravel(), minlength=n)
    for i in range(1, n):
        if sizes[i] >= 0.15 * biggest:
            keep |= labels == i
    frac = float(keep.mean())
    if not min_frac <= frac <= max_frac:
        return None, f"product covers {frac:.0%} of the photo"
    edge = np.concatenate([keep[0], keep[-1], keep[:, 0], keep[:, -1]])
    if edge.mean() > max_edge_touch:
        return None, "product cut by the photo's edge"
    ys, xs = np.nonzero(keep)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    if keep.sum() < 0.25 * (x1 - x0) * (y1 - y0):
        return None, "mask too fragmented (a light product on a white backdrop)"
    alpha = cv2.GaussianBlur(keep.astype(np.float32), (3, 3), 0.7)  # soft 1-px edge, like a real matte
    rgba = np.dstack([np.asarray(rgb), (alpha * 255).astype(np.uint8)])[y0:y1, x0:x1]
    return Image.fromarray(rgba, "RGBA"), ""


def _rank(seed: int, pid: str) -> str:
    return hashlib.sha1(f"shopclip-grounding-synth:{seed}:{pid}".encode()).hexdigest()


def _needs_person_check(p: Product) -> bool:
    top = p.category[0].lower() if p.category else ""
    t = type_of_product(p)
    return top in _PERSON_CATEGORIES or (t is not None and t.region is not None and t.group != "footwear")


def build_pool(catalog: Catalog, *, per_type: int = 40, seed: int = 0, exclude_people: bool = True,
               splits: tuple[str, ...] | None = None, types: tuple[str, ...] | None = None,
               max_tries: int = 4) -> list[Cutout]:
    """Cut-outs for up to `per_type` products of each product type (stable order per seed)."""
    person_check = None
    if exclude_people:
        try:
            from shopclip.grounding.pose import has_person

            person_check = has_person
        except Exception:  # pragma: no cover - mediapipe missing: apparel is left out instead
            person_check = None
    by_prompt: dict[str, list[Product]] = {}
    for p in catalog:
        if splits is not None and p.split not in splits:
            continue
        prompt = product_type(p)
        if types is not None and prompt not in types:
            continue
        by_prompt.setdefault(prompt, []).append(p)
    pool: list[Cutout] = []
    for prompt in sorted(by_prompt):
        items = sorted(by_prompt[prompt], key=lambda p: _rank(seed, p.id))
        got = 0
        for p in items[: per_type * max_tries]:
            if got >= per_type:
                break
            try:
                img = open_image(catalog.image_path(p))
            except ImageError:
                continue
            rgba, _ = cut_out(img)
            if rgba is None:
                continue
            if exclude_people and _needs_person_check(p) and (person_check is None or person_check(img)):
                continue
            pool.append(Cutout(p.id, prompt, group_of(p), rgba))
            got += 1
    return pool


def texture_sources(catalog: Catalog, limit: int = 40, seed: int = 0) -> list[Image.Image]:
    """Real non-studio photos (home furnishing: blankets, curtains, rugs) to use as cluttered backgrounds."""
    cands = [p for p in catalog if p.category and p.category[0].lower() == "home furnishing"]
    out: list[Image.Image] = []
    for p in sorted(cands, key=lambda p: _rank(seed, p.id)):
        if len(out) >= limit:
            break
        try:
            img = open_image(catalog.image_path(p))
        except ImageError:
            continue
        if min(img.size) >= 96 and foreground_mask(img) is None:
            out.append(img)
    return out


# ---------------------------------------------------------------------- backgrounds


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def make_background(kind: str, size: tuple[int, int], rng: np.random.Generator,
                    textures: list[Image.Image] | None = None) -> Image.Image:
    w, h = size
    if kind == "white":
        arr = np.full((h, w, 3), rng.integers(244, 256), np.float32)
    elif kind == "plain":
        arr = np.broadcast_to(_colour(rng), (h, w, 3)).copy()
    elif kind == "gradient":
        a, b = _colour(rng), _colour(rng)
        ang = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xx * np.cos(ang) + yy * np.sin(ang)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        arr = a * (1 - t[..., None]) + b * t[..., None]
    elif kind == "noise":
        g = int(rng.integers(3, 11))
        small = rng.integers(0, 256, (g, g, 3)).astype(np.float32)
        arr = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        arr += rng.normal(0, 8, (h, w, 3)).astype(np.float32)
    elif kind == "stripes":
        a, b = _colour(rng), _colour(rng)
        period = rng.uniform(12, 60)
        ang = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (np.sin(2 * np.pi * (xx * np.cos(ang) + yy * np.sin(ang)) / period) > 0).astype(np.float32)
        arr = a * (1 - t[..., None]) + b * t[..., None]
    elif kind == "photo" and textures:
        src = textures[int(rng.integers(len(textures)))]
        sw, sh = src.size
        scale = max(w / sw, h / sh) * rng.uniform(1.0, 1.6)
        big = src.resize((max(w, round(sw * scale)), max(h, round(sh * scale))), Image.BILINEAR)
        x = int(rng.integers(0, big.size[0] - w + 1))
        y = int(rng.integers(0, big.size[1] - h + 1))
        return big.crop((x, y, x + w, y + h))
    else:
        raise ValueError(f"unknown background {kind!r}")
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


# -------------------------------------------------------------------------- scenes


def _place(rng: np.random.Generator, size: tuple[int, int], obj: tuple[int, int], taken: list[Box],
           gap: float = 4.0, tries: int = 60) -> Box | None:
    w, h = size
    ow, oh = obj
    if ow >= w or oh >= h:
        return None
    for _ in range(tries):
        x = float(rng.integers(0, w - ow + 1))
        y = float(rng.integers(0, h - oh + 1))
        b = Box(x, y, x + ow, y + oh)
        if not any(_touch(b, t, gap) for t in taken):
            return b
    return None


def _touch(a: Box, b: Box, gap: float) -> bool:
    return not (a.x1 + gap <= b.x0 or b.x1 + gap <= a.x0 or a.y1 + gap <= b.y0 or b.y1 + gap <= a.y0)


def _scaled(rgba: Image.Image, long_side: float) -> Image.Image:
    w, h = rgba.size
    s = long_side / max(w, h)
    return rgba.resize((max(2, round(w * s)), max(2, round(h * s))), Image.BICUBIC)


def target_prompts(pool: list[Cutout], min_per_type: int = 5) -> dict[str, list[int]]:
    """Prompt → pool indices, for prompts with at least `min_per_type` cut-outs (rarer ones are distractors only)."""
    by_prompt: dict[str, list[int]] = {}
    for i, c in enumerate(pool):
        by_prompt.setdefault(c.prompt, []).append(i)
    keep = {k: v for k, v in by_prompt.items() if len(v) >= min_per_type}
    return keep or by_prompt


def make_scene(pool: list[Cutout], index: int, seed: int = 0, textures: list[Image.Image] | None = None,
               *, by_prompt: dict[str, list[int]] | None = None, target: Cutout | None = None) -> Scene:
    """Scene `index` of the benchmark with this `seed` (see the module docstring for every draw).

    `target` fixes the product to find (the retrieval ablation makes one scene per test
    product); the distractors still come from `pool`.
    """
    if len(pool) < 2:
        raise ValueError("the cut-out pool needs at least two products")
    by_prompt = by_prompt if by_prompt is not None else target_prompts(pool)
    prompts = sorted(by_prompt)
    rng = np.random.default_rng([seed, index])
    fixed = target
    for _attempt in range(20):
        w, h = int(rng.integers(320, 513)), int(rng.integers(320, 513))
        kinds = [k for k in BACKGROUNDS if k != "photo" or textures]
        kind = kinds[int(rng.integers(len(kinds)))]
        canvas = make_background(kind, (w, h), rng, textures)
        if fixed is None:
            prompt = prompts[int(rng.integers(len(prompts)))]
            members = by_prompt[prompt]
            target = pool[members[int(rng.integers(len(members)))]]
        else:
            target, prompt = fixed, fixed.prompt
        others_pool = [i for i, c in enumerate(pool) if c.group != target.group and c.product_id != target.product_id]
        if not others_pool:
            raise ValueError(f"no product outside the group {target.group!r} to use as a distractor")
        n_other = int(rng.integers(1, 4))
        picks = [pool[i] for i in rng.choice(others_pool, size=min(n_other, len(others_pool)), replace=False)]
        objects = [target, *picks]
        order = rng.permutation(len(objects))
        short = min(w, h)
        taken: list[Box] = []
        placed: dict[int, tuple[Image.Image, Box]] = {}
        for k in order:
            rgba = objects[k].rgba
            if rng.random() < 0.5:
                rgba = rgba.transpose(Image.FLIP_LEFT_RIGHT)
            long_side = rng.uniform(0.28, 0.60) * short
            for _shrink in range(5):
                obj = _scaled(rgba, long_side)
                spot = _place(rng, (w, h), obj.size, taken)
                if spot is not None:
                    placed[int(k)] = (obj, spot)
                    taken.append(spot)
                    break
                long_side *= 0.85
        if 0 not in placed or len(placed) < 2:
            continue
        truth = None
        for k in sorted(placed, key=lambda k: list(order).index(k)):
            obj, spot = placed[k]
            canvas.paste(obj.convert("RGB"), (int(spot.x0), int(spot.y0)), obj.getchannel("A"))
            if k == 0:
                a = np.asarray(obj.getchannel("A")) > 127
                ys, xs = np.nonzero(a)
                truth = Box(spot.x0 + xs.min(), spot.y0 + ys.min(), spot.x0 + xs.max() + 1, spot.y0 + ys.max() + 1,
                            1.0, prompt)
        buf = io.BytesIO()
        canvas.save(buf, "JPEG", quality=int(rng.integers(80, 96)))
        image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        assert truth is not None
        return Scene(index, image, truth, prompt, target.product_id,
                     [objects[k].product_id for k in placed if k != 0], kind)
    raise RuntimeError(f"could not place scene {index} after 20 attempts")


def generate_scenes(pool: list[Cutout], n: int, seed: int = 0, textures: list[Image.Image] | None = None,
                    start: int = 0, min_per_type: int = 5) -> Iterator[Scene]:
    """Scenes start … start+n-1; deterministic per (pool, seed, index)."""
    by_prompt = target_prompts(pool, min_per_type)
    for i in range(start, start + n):
        yield make_scene(pool, i, seed, textures, by_prompt=by_prompt)
