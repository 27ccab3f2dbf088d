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
3. the colour at each inlier in both photos (a small patch mean): the same pose in another
   colour (a colour variant shot on the same template) matches geometrically but not in colour.

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
PATCH = 2  # colour patch: (2 * PATCH + 1)^2 pixels around a keypoint
NO_COLOUR = 1.0  # the colour distance reported when too few inliers exist to compare colours
MIN_INLIERS_FOR_COLOUR = 4


def available() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Keypoints:
    """ORB keypoints of one photo: positions (n, 2), binary descriptors (n, 32) and the mean
    RGB colour of a small patch around each (n, 3), for the colour check."""

    xy: np.ndarray
    descriptors: np.ndarray | None
    colours: np.ndarray

    def __len__(self) -> int:
        return len(self.xy)


def describe(image: Any, n_features: int = N_FEATURES) -> Keypoints:
    """Keypoints of a photo (a path, bytes or a PIL image)."""
    import cv2

    from shopclip.core.images import open_image

    rgb = np.asarray(open_image(image).convert("RGB"))
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    kp, desc = cv2.ORB_create(nfeatures=n_features).detectAndCompute(grey, None)
    xy = np.float32([k.pt for k in kp]).reshape(-1, 2)
    return Keypoints(xy, desc, _colours(rgb, xy))


def _colours(rgb: np.ndarray, xy: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    out = np.empty((len(xy), 3), dtype=np.float32)
    for i, (x, y) in enumerate(np.rint(xy).astype(int)):
        x0, x1 = max(0, x - PATCH), min(w, x + PATCH + 1)
        y0, y1 = max(0, y - PATCH), min(h, y + PATCH + 1)
        out[i] = rgb[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)
    return out


def compare(a: Keypoints, b: Keypoints) -> tuple[int, float]:
    """``(inliers, colour distance)``: matches consistent with one similarity transform, and the
    median RGB distance (0-1) between the two photos at those inliers (:data:`NO_COLOUR` when
    fewer than four inliers leave nothing to compare)."""
    import cv2

    if a.descriptors is None or b.descriptors is None or len(a) < 2 or len(b) < 2:
        return 0, NO_COLOUR
    matches = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < MIN_INLIERS_FOR_COLOUR:
        return 0, NO_COLOUR
    ia = np.asarray([g.queryIdx for g in good])
    ib = np.asarray([g.trainIdx for g in good])
    src, dst = a.xy[ia], b.xy[ib]
    _, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX)
    if mask is None:
        return 0, NO_COLOUR
    keep = mask.reshape(-1).astype(bool)
    n = int(keep.sum())
    if n < MIN_INLIERS_FOR_COLOUR:
        return n, NO_COLOUR
    diff = a.colours[ia[keep]] - b.colours[ib[keep]]
    return n, float(np.median(np.linalg.norm(diff, axis=1)) / (255.0 * np.sqrt(3.0)))


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
    """(m, 2) ``[inliers, colour distance]`` per index pair; ``keypoints(i)`` gives item i's
    keypoints. OpenCV releases the GIL, so ``workers`` threads use that many cores."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if not len(pairs):
        return np.zeros((0, 2), dtype=np.float32)
    import cv2

    cv2.setNumThreads(1)  # parallel over pairs instead

    def one(p: Sequence[int]) -> tuple[int, float]:
        return compare(keypoints(int(p[0])), keypoints(int(p[1])))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return np.asarray(list(pool.map(one, pairs.tolist(), chunksize=64)), dtype=np.float32)


__all__ = ["Keypoints", "KeypointCache", "available", "compare", "compare_pairs", "describe"]
