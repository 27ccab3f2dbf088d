"""Is this the same photo, edited? Local keypoints, a geometric check and a colour check.

Global embeddings are trained to say "same kind of product", which is the wrong question
for duplicates: on the sample, a re-listed photo (re-cropped, padded, background swapped,
re-compressed) often embeds further from its original (photo cosine median 0.56) than the
nearest *other* product does (0.74 at the 99th percentile). Near-duplicate photos are
found the classical way instead:

1. ORB keypoints (OpenCV) on the grey photo;
2. ratio-tested matches, then RANSAC for one similarity transform (shift, scale,
   rotation): the *inliers* are matches that agree on one geometry, which survive crops,
   padding, background changes and JPEG artefacts, and stay few between different photos;
3. the colour of the product: the second photo is warped onto the first with that
   transform and the two are compared where both show something (not near-white background)
   at 64 px: the same pose in another colour (a colour variant shot on the same template)
   matches geometrically but not in colour. (Comparing the colour *at the keypoints* was
   tried first: keypoints sit on edges, where a swapped background changes the colour,
   so a re-listing looked more different than a colour variant.)

OpenCV comes with the ``understand`` extra (``pip install shopclip[understand]``); without
it the matcher falls back to embedding similarities only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

N_FEATURES = 500
RATIO = 0.8  # Lowe's ratio test
RANSAC_PX = 5.0  # photos are ~256 px on the long side
THUMB = 64  # long side of the thumbnail the colours are compared on
WHITE = 225  # a pixel whose every channel is above this is background
NO_COLOUR = 1.0  # the colour distance reported when there is nothing to compare
MIN_INLIERS = 4
MIN_PIXELS = 20


def available() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Keypoints:
    """ORB keypoints of one photo: positions (n, 2) and binary descriptors (n, 32), with a
    small RGB thumbnail (uint8, long side :data:`THUMB`) and its scale, for the colour check."""

    xy: np.ndarray
    descriptors: np.ndarray | None
    thumb: np.ndarray
    scale: float

    def __len__(self) -> int:
        return len(self.xy)


def describe(image: Any, n_features: int = N_FEATURES) -> Keypoints:
    """Keypoints of a photo (a path, bytes or a PIL image)."""
    import cv2

    from shopclip.core.images import open_image

    img = open_image(image).convert("RGB")
    grey = cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2GRAY)
    kp, desc = cv2.ORB_create(nfeatures=n_features).detectAndCompute(grey, None)
    xy = np.float32([k.pt for k in kp]).reshape(-1, 2)
    w, h = img.size
    scale = THUMB / max(w, h)
    thumb = np.asarray(img.resize((max(1, round(w * scale)), max(1, round(h * scale)))), dtype=np.uint8)
    return Keypoints(xy, desc, thumb, scale)


def compare(a: Keypoints, b: Keypoints) -> tuple[int, float, float]:
    """``(inliers, colour distance, overlap)``: matches consistent with one similarity
    transform; the median RGB distance (0-1) between the two photos' foregrounds once ``b``
    is warped onto ``a`` (:data:`NO_COLOUR` when there is nothing to compare); and the share
    of ``a``'s thumbnail where both photos show foreground."""
    import cv2

    if a.descriptors is None or b.descriptors is None or len(a) < 2 or len(b) < 2:
        return 0, NO_COLOUR, 0.0
    matches = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < MIN_INLIERS:
        return 0, NO_COLOUR, 0.0
    src = a.xy[[g.queryIdx for g in good]]
    dst = b.xy[[g.trainIdx for g in good]]
    M, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX)
    n = int(mask.sum()) if mask is not None else 0
    if M is None or n < MIN_INLIERS:
        return n, NO_COLOUR, 0.0
    colour, overlap = _foreground_distance(a, b, M)
    return n, colour, overlap


def _foreground_distance(a: Keypoints, b: Keypoints, M: np.ndarray) -> tuple[float, float]:
    """Warp ``b``'s thumbnail onto ``a``'s with the full-size transform ``M`` (a → b) and compare
    the pixels that are foreground in both."""
    import cv2

    mt = M.astype(np.float64).copy()
    mt[:, :2] *= b.scale / a.scale
    mt[:, 2] *= b.scale
    h, w = a.thumb.shape[:2]
    warped = cv2.warpAffine(b.thumb.astype(np.float32), mt, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(-1.0, -1.0, -1.0))
    ta = a.thumb.astype(np.float32)
    fg = (warped[..., 0] >= 0) & (ta.min(axis=2) < WHITE) & (warped.min(axis=2) < WHITE)
    if int(fg.sum()) < MIN_PIXELS:
        return NO_COLOUR, float(fg.mean())
    d = np.linalg.norm(ta[fg] - warped[fg], axis=1) / (255.0 * np.sqrt(3.0))
    return float(np.median(d)), float(fg.mean())


class KeypointCache:
    """Keypoints by key (a content hash), computed on first use; at most ``size`` kept."""

    def __init__(self, load: Callable[[str], Any], size: int = 4096) -> None:
        self.load = load
        self.size = size
        self._items: OrderedDict[str, Keypoints] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Keypoints:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        kp = describe(self.load(key))
        with self._lock:
            self._items[key] = kp
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return kp


def compare_pairs(keypoints: Callable[[int], Keypoints], pairs: np.ndarray, *, workers: int = 2) -> np.ndarray:
    """(m, 3) ``[inliers, colour distance, overlap]`` per index pair; ``keypoints(i)`` gives item i's
    keypoints. OpenCV releases the GIL, so ``workers`` threads use that many cores."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if not len(pairs):
        return np.zeros((0, 3), dtype=np.float32)
    import cv2

    cv2.setNumThreads(1)  # parallel over pairs instead

    def one(p: Sequence[int]) -> tuple[int, float, float]:
        return compare(keypoints(int(p[0])), keypoints(int(p[1])))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return np.asarray(list(pool.map(one, pairs.tolist(), chunksize=64)), dtype=np.float32)


__all__ = ["Keypoints", "KeypointCache", "available", "compare", "compare_pairs", "describe"]
