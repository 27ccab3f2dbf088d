"""Image decoding shared by validation, embedding, grounding and serving.

Product photos arrive rotated by EXIF, as palette or RGBA PNGs, or truncated by a
bad upload; every consumer must see the same upright RGB picture, so they all go
through :func:`load_image`.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

# A decompression bomb is refused rather than decoded (about 8k x 8k).
Image.MAX_IMAGE_PIXELS = 64_000_000

class ImageError(ValueError):
    """The image cannot be used; the message says why (one short phrase)."""


def _flatten(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Composite transparency onto white: catalog photos are shown on white pages."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB") if img.mode != "RGB" else img


def open_image(source: str | Path | bytes | Image.Image) -> Image.Image:
    """Decode fully (so truncation fails here, not later), upright, RGB."""
    if isinstance(source, Image.Image):
        img = source
    else:
        try:
            fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb")  # noqa: SIM115
        except OSError as e:
            raise ImageError(f"cannot open image: {e.strerror or e}") from e
        try:
            with fp:
                img = Image.open(fp)
                img.load()
        except Image.DecompressionBombError as e:
            raise ImageError("image too large (decompression bomb)") from e
        except (OSError, SyntaxError, ValueError) as e:
            msg = _clean(str(e))
            if "truncated" in msg.lower():
                raise ImageError("truncated image") from e
            raise ImageError(f"unreadable image: {msg or type(e).__name__}") from e
    with contextlib.suppress(Exception):  # a broken EXIF block must not cost us the picture
        img = ImageOps.exif_transpose(img) or img
    return _flatten(img)


def load_image(source: str | Path | bytes | Image.Image) -> Image.Image:
    """Alias kept for readability at call sites that only read."""
    return open_image(source)


# Pixel formats that are not photos (depth maps, 16-bit scans, bilevel): refused, not guessed.
REFUSED_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F", "1")
_FILE_OBJECT = re.compile(r"\s*<_io\.\w+ name=.*?>")


def _clean(msg: str) -> str:
    """PIL names the file object ("cannot identify image file <_io.BufferedReader name='x.jpg'>"):
    the report already shows the path, so keep only the words."""
    return _FILE_OBJECT.sub("", msg).strip()


@dataclass(frozen=True)
class ImageCheck:
    """What validation learns from decoding one image file."""

    reason: str | None  # why it is refused; None when usable
    size: tuple[int, int] | None
    warning: str | None = None  # usable, but converted on the way in (say so, keep the row)


def conversion_note(img: Image.Image) -> str | None:
    """How `open_image` will change this picture to make it RGB, or None when it is RGB already.

    Every consumer converts the same way (`_flatten`); validation says so per row, because
    a CMYK or greyscale photo embeds differently from the colour photo a shopper sees.
    """
    mode = img.mode
    if mode == "RGB":
        return None
    alpha = _has_transparency(img)
    flat = ", transparency flattened onto white" if alpha else ""
    if mode == "CMYK":
        return "CMYK image (converted to RGB)"
    if mode in ("L", "LA", "La"):
        return f"greyscale image (mode {mode}, converted to RGB{flat})"
    if mode in ("P", "PA"):
        return f"palette image (mode {mode}, converted to RGB{flat})"
    if mode in ("RGBA", "RGBa"):
        return f"transparent image (mode {mode}, flattened onto white)" if alpha else None
    return f"non-RGB image (mode {mode}, converted to RGB{flat})"


def _has_transparency(img: Image.Image) -> bool:
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        lo, _ = img.getchannel("A").getextrema()
        return lo < 255
    return img.mode == "P" and "transparency" in img.info


def inspect_image(path: str | Path, *, min_size: int = 32) -> ImageCheck:
    """Decode one file fully and judge it: refused (reason), usable, or usable after conversion (warning)."""
    try:
        with open(path, "rb") as fp:
            img = Image.open(fp)
            mode = img.mode
            img.load()
    except FileNotFoundError:
        return ImageCheck("image file not found", None)
    except Image.DecompressionBombError:
        return ImageCheck("image too large (decompression bomb)", None)
    except OSError as e:
        msg = _clean(str(e))
        if "truncated" in msg.lower():
            return ImageCheck("truncated image", None)
        return ImageCheck(f"unreadable image: {msg or type(e).__name__}", None)
    except (SyntaxError, ValueError) as e:
        return ImageCheck(f"unreadable image: {_clean(str(e)) or type(e).__name__}", None)
    if mode in REFUSED_MODES:
        return ImageCheck(f"non-RGB image (mode {mode})", img.size)
    problem = size_problem(img.size, min_size)
    return ImageCheck(problem, img.size, None if problem else conversion_note(img))


def check_image(path: str | Path, *, min_size: int = 32) -> tuple[str | None, tuple[int, int] | None]:
    """Return (reason, size): reason is None when the file is a usable RGB-able photo.

    Reasons are the ones `shopclip validate` reports: unreadable, truncated, tiny,
    non-RGB data that are not photos (16-bit single channel "I;16", float "F", bilevel "1").
    CMYK, greyscale and palette images are usable: :func:`inspect_image` also says how
    they are converted.
    """
    c = inspect_image(path, min_size=min_size)
    return c.reason, c.size


def size_problem(size: tuple[int, int], min_size: int) -> str | None:
    """Too few pixels to embed: fewer than a min_size x min_size square, or a sliver.

    Deliberately not "short side < min_size": thin products (a USB stick light is
    30x256 in the sample catalog) are real photos with plenty of pixels.
    """
    w, h = size
    if w * h < min_size * min_size:
        return f"image too small ({w}x{h}, fewer pixels than {min_size}x{min_size})"
    sliver = max(1, min_size // 4)
    if min(w, h) < sliver:
        return f"image too small ({w}x{h}, short side under {sliver}px)"
    return None
