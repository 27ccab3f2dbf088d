"""Crops as JPEG files, and the contact sheet people look at to judge the boxes.

Crops are written atomically (a killed run never leaves a half JPEG that the embed
stage would then fail on) and keep the photo's own resolution: the embedder resizes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from shopclip.core.io import atomic_write_bytes
from shopclip.grounding.base import Box


def crop_image(image: Image.Image, box: Box) -> Image.Image:
    """The box's pixels (rounded outwards, clipped to the image)."""
    x0, y0, x1, y1 = box.clip(*image.size).rounded()
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    return image.crop((x0, y0, min(x1, image.size[0]), min(y1, image.size[1])))


def save_jpeg(image: Image.Image, path: str | Path, quality: int = 90) -> Path:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


@dataclass
class SheetItem:
    """One tile of a contact sheet: the image, its box (None: error), and a caption."""

    image: Image.Image | None
    box: Box | None
    caption: str
    fallback: bool = False


def contact_sheet(items: Sequence[SheetItem], path: str | Path, *, tile: int = 144, cols: int = 8,
                  colours: int = 128) -> Path:
    """A grid of thumbnails with the chosen box drawn (green: localised, orange: full-image fallback).

    Saved as a palette PNG: photos as truecolour PNG run to megabytes; 128 colours keep
    the sheet small (a few hundred KB for 48 tiles) and the boxes crisp.
    """
    rows = max(1, (len(items) + cols - 1) // cols)
    cap = 24
    sheet = Image.new("RGB", (cols * tile, rows * (tile + cap)), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for i, it in enumerate(items):
        x, y = (i % cols) * tile, (i // cols) * (tile + cap)
        if it.image is not None:
            img = it.image.convert("RGB")
            s = (tile - 4) / max(img.size)
            thumb = img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))), Image.BILINEAR)
            ox, oy = x + (tile - thumb.size[0]) // 2, y + (tile - thumb.size[1]) // 2
            sheet.paste(thumb, (ox, oy))
            if it.box is not None:
                b = it.box.scaled(s, s)
                colour = (255, 150, 0) if it.fallback else (0, 230, 0)
                draw.rectangle((ox + b.x0, oy + b.y0, ox + b.x1 - 1, oy + b.y1 - 1), outline=colour, width=2)
        else:
            draw.line((x + 8, y + 8, x + tile - 8, y + tile - 8), fill=(220, 0, 0), width=3)
        for j, line in enumerate(_wrap(it.caption, tile // 6)[:2]):
            draw.text((x + 3, y + tile + 1 + 11 * j), line, fill=(235, 235, 235))
    pal = sheet.quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
    buf = io.BytesIO()
    pal.save(buf, "PNG", optimize=True)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _wrap(text: str, width: int) -> list[str]:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    if cur:
        lines.append(cur)
    return [ln[:width] for ln in lines]
