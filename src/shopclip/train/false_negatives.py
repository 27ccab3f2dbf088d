"""Find products that are really the same product, so a batch never pushes them apart.

A product catalog re-lists one item under several ids (same ``group``), reuses the
same photo file (identical bytes), re-encodes or re-sizes it (perceptual-hash near
duplicates), or sells different items under one formulaic title ("W Women Printed
White Kurtas" appears 25 times in the sample). For InfoNCE such an in-batch pair is a
*false negative*: its text describes the other image just as well.

Each product gets one integer key per signal (``group``, ``image``, ``phash``,
``title``); two products are duplicates when any key matches. Keys travel with the
batch (and are all-gathered across ranks), so the (B, B) mask is built where the loss
is computed. Perceptual hashes are written here with PIL + numpy: a 64-bit dHash
(gradient signs of a 9×8 thumbnail) and a 64-bit pHash (signs of the low 8×8 DCT
block of a 32×32 thumbnail against its median); near duplicates need both within a
small Hamming distance *and* a 16×16 colour thumbnail within a mean absolute
difference of 1.5 (of 255). On the sample catalog, hashes alone at distance ≤ 4 pair
7,713 photos, nearly all look-alike "shoe on white" or sunglasses shots of different
products; the thumbnail check keeps 96 pairs, all the same photo (all 44 hash-matched
pairs of the catalog's re-listing groups among them).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from shopclip.core.images import open_image

SIGNALS = ("group", "image", "phash", "title")
NO_KEY = -1


# ----------------------------------------------------------------------- perceptual hashes
def _gray(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(img.convert("L").resize(size, Image.BILINEAR), dtype=np.float64)


def _pack(bits: np.ndarray) -> int:
    out = 0
    for b in bits.reshape(-1)[:64]:
        out = (out << 1) | int(bool(b))
    return out


def dhash(img: Image.Image) -> int:
    """64-bit difference hash: is each pixel of a 9×8 grey thumbnail brighter than its left neighbour."""
    px = _gray(img, (9, 8))
    return _pack(px[:, 1:] > px[:, :-1])


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT32 = _dct_matrix(32)


def phash(img: Image.Image) -> int:
    """64-bit perceptual hash: low-frequency 8×8 DCT coefficients of a 32×32 thumbnail vs their median."""
    px = _gray(img, (32, 32))
    low = (_DCT32 @ px @ _DCT32.T)[:8, :8]
    med = np.median(low.reshape(-1)[1:])  # the DC term would dominate the median
    return _pack(low > med)


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bit distance between 64-bit hashes (broadcasts)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    return np.bitwise_count(x).astype(np.int64)


def thumbnail(img: Image.Image, side: int = 16) -> np.ndarray:
    """(side, side, 3) uint8 colour thumbnail: confirms a hash match is the same photo, not a look-alike."""
    return np.asarray(img.convert("RGB").resize((side, side), Image.BILINEAR), dtype=np.uint8)


@dataclass(frozen=True)
class ImageSignature:
    dhash: int
    phash: int
    thumb: np.ndarray


SIGNATURE_BYTES = 8 + 8 + 16 * 16 * 3


def signature_to_row(sig: ImageSignature) -> np.ndarray:
    """Pack a signature into SIGNATURE_BYTES uint8 (for the on-disk feature cache)."""
    head = np.array([sig.dhash, sig.phash], dtype=">u8").view(np.uint8)
    return np.concatenate([head, sig.thumb.reshape(-1)])


def row_to_signature(row: np.ndarray) -> ImageSignature:
    d, p = np.ascontiguousarray(row[:16]).view(">u8").tolist()
    return ImageSignature(int(d), int(p), np.asarray(row[16:], dtype=np.uint8).reshape(16, 16, 3))


def image_signature(path: str) -> ImageSignature | None:
    """Hashes + thumbnail of one image file; None for an image that cannot be read."""
    try:
        img = open_image(path)
    except Exception:
        return None
    return ImageSignature(dhash(img), phash(img), thumbnail(img))


# --------------------------------------------------------------------------- titles
_PUNCT = re.compile(r"[^\w\s]+")


def normalise_title(title: str) -> str:
    """Case, accents, punctuation and spacing do not make a different product."""
    t = unicodedata.normalize("NFKD", title)
    t = "".join(c for c in t if not unicodedata.combining(c)).lower()
    return " ".join(_PUNCT.sub(" ", t).split())


# --------------------------------------------------------------------------- keys
class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:
            p[i], i = root, p[i]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_clusters(signatures: Sequence[ImageSignature | None], *, max_hash_distance: int = 4,
                            max_thumb_mad: float = 1.5, chunk: int = 1024) -> np.ndarray:
    """Cluster id per image (connected components of near-duplicate pairs); NO_KEY for unreadable images."""
    n = len(signatures)
    ok = np.array([s is not None for s in signatures])
    d = np.array([s.dhash if s else 0 for s in signatures], dtype=np.uint64)
    p = np.array([s.phash if s else 0 for s in signatures], dtype=np.uint64)
    thumbs = np.stack([s.thumb if s else np.zeros((16, 16, 3), np.uint8) for s in signatures]).astype(np.float32) \
        if n else np.zeros((0, 16, 16, 3), np.float32)
    uf = _UnionFind(n)
    for s in range(0, n, chunk):
        close = (hamming(d[s : s + chunk, None], d[None, :]) <= max_hash_distance) & (
            hamming(p[s : s + chunk, None], p[None, :]) <= max_hash_distance)
        ii, jj = np.nonzero(close)
        ii = ii + s
        keep = (jj > ii) & ok[ii] & ok[jj]
        ii, jj = ii[keep], jj[keep]
        if len(ii):
            mad = np.abs(thumbs[ii] - thumbs[jj]).mean(axis=(1, 2, 3))
            for i, j in zip(ii[mad <= max_thumb_mad].tolist(), jj[mad <= max_thumb_mad].tolist(), strict=True):
                uf.union(i, j)
    return np.array([uf.find(i) if ok[i] else NO_KEY for i in range(n)], dtype=np.int64)


def _ids(values: Sequence[str | None]) -> np.ndarray:
    table: dict[str, int] = {}
    return np.array([NO_KEY if v is None or v == "" else table.setdefault(v, len(table)) for v in values],
                    dtype=np.int64)


@dataclass
class DuplicateKeys:
    """(N, len(signals)) int64 keys per product; equal non-negative keys in a column = duplicates."""

    keys: np.ndarray
    signals: tuple[str, ...]

    def pairs(self) -> int:
        """How many unordered duplicate pairs exist in the whole set (a report number)."""
        m = false_negative_mask(torch.from_numpy(self.keys))
        return int(m.sum().item()) // 2


def duplicate_keys(*, groups: Sequence[str | None], image_sha1s: Sequence[str], titles: Sequence[str],
                   signatures: Sequence[ImageSignature | None] | None = None,
                   signals: Sequence[str] = SIGNALS, max_hash_distance: int = 4,
                   max_thumb_mad: float = 1.5) -> DuplicateKeys:
    """Keys for the signals asked for; ``phash`` needs the image signatures."""
    unknown = set(signals) - set(SIGNALS)
    if unknown:
        raise ValueError(f"unknown false-negative signals {sorted(unknown)}; known: {SIGNALS}")
    cols = []
    for s in signals:
        if s == "group":
            cols.append(_ids(groups))
        elif s == "image":
            cols.append(_ids(image_sha1s))
        elif s == "title":
            cols.append(_ids([normalise_title(t) for t in titles]))
        else:
            if signatures is None:
                raise ValueError("the phash signal needs image signatures")
            cols.append(near_duplicate_clusters(signatures, max_hash_distance=max_hash_distance,
                                                max_thumb_mad=max_thumb_mad))
    n = len(image_sha1s)
    keys = np.stack(cols, axis=1) if cols else np.zeros((n, 0), dtype=np.int64)
    return DuplicateKeys(keys=keys, signals=tuple(signals))


def false_negative_mask(keys: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: True where i ≠ j share any non-negative key. Works on all-gathered keys."""
    n = keys.shape[0]
    if keys.ndim != 2 or keys.shape[1] == 0:
        return torch.zeros(n, n, dtype=torch.bool, device=keys.device)
    same = (keys[:, None, :] == keys[None, :, :]) & (keys[:, None, :] >= 0)
    return same.any(dim=2) & ~torch.eye(n, dtype=torch.bool, device=keys.device)
