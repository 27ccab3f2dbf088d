"""Body-part regions for worn products, from MediaPipe's bundled pose and selfie-segmentation models.

A kurta photo shows a face, arms and legs; the product is the torso. MediaPipe 0.10.14
ships the `model_complexity=1` pose landmarker and the selfie-segmentation models in
its wheel (complexity 0/2 would download; we never ask for them). Landmarks are
trusted only at visibility ≥ 0.5: on this catalog ankles are often guessed at
0.1-0.3 and legs-only shots collapse. When the landmarks a region needs are not
visible, the person mask's box is returned instead (labelled ``pose:mask``, lower
score), and when there is no person at all, nothing.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from shopclip.grounding.base import Box, Localiser
from shopclip.grounding.taxonomy import match_type

os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging, before it is imported

# MediaPipe pose landmark indices.
NOSE, L_EYE_OUT, R_EYE_OUT, L_EAR, R_EAR, MOUTH_L, MOUTH_R = 0, 3, 6, 7, 8, 9, 10
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 11, 12, 13, 14, 15, 16
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 23, 24, 25, 26, 27, 28
L_HEEL, R_HEEL, L_TOE, R_TOE = 29, 30, 31, 32

VISIBLE = 0.5


@dataclass
class PoseResult:
    """Landmarks in image pixels (33, 2), their visibility (33,), and the person mask (H, W) or None."""

    points: np.ndarray | None
    visibility: np.ndarray | None
    mask: np.ndarray | None

    def visible(self, *idx: int) -> bool:
        return self.points is not None and all(self.visibility[i] >= VISIBLE for i in idx)

    def pt(self, i: int) -> np.ndarray:
        return self.points[i]


class _MediaPipe:
    """Lazily built MediaPipe graphs; one lock because the graphs are not thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pose: Any = None
        self._seg: Any = None

    def _build(self) -> None:
        try:
            import mediapipe as mp
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError("the pose localiser needs mediapipe==0.10.14 (pip install mediapipe==0.10.14)") from e
        # model_complexity=1 is the only pose model inside the wheel; 0 and 2 download.
        self._pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                            enable_segmentation=False, min_detection_confidence=0.5)
        self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def run(self, rgb: np.ndarray, *, want_mask: bool) -> PoseResult:
        with self._lock, warnings.catch_warnings():
            # MediaPipe 0.10.14 calls a protobuf API that warns on every image.
            warnings.filterwarnings("ignore", message=".*GetPrototype.*")
            if self._pose is None:
                self._build()
            res = self._pose.process(rgb)
            mask = None
            if want_mask:
                seg = self._seg.process(rgb).segmentation_mask
                mask = None if seg is None else seg > 0.5
        h, w = rgb.shape[:2]
        if res.pose_landmarks is None:
            return PoseResult(None, None, mask)
        lms = res.pose_landmarks.landmark
        pts = np.array([[lm.x * w, lm.y * h] for lm in lms], np.float32)
        vis = np.array([lm.visibility for lm in lms], np.float32)
        return PoseResult(pts, vis, mask)


_MP = _MediaPipe()


def detect_pose(image: Image.Image, *, want_mask: bool = True) -> PoseResult:
    return _MP.run(np.ascontiguousarray(np.asarray(image.convert("RGB"))), want_mask=want_mask)


def has_person(image: Image.Image) -> bool:
    """A visible face or shoulders (vis ≥ 0.5): the photo shows a person, not just a product."""
    r = detect_pose(image, want_mask=False)
    if r.points is None:
        return False
    return bool((r.visibility[[NOSE, L_SHOULDER, R_SHOULDER, L_HIP, R_HIP]] >= VISIBLE).any())


def _band_box(mask: np.ndarray | None, y0: float, y1: float, fallback_x: tuple[float, float]) -> tuple[float, float]:
    """Horizontal extent of the person mask between rows y0 and y1 (the garment's width), else the fallback."""
    if mask is None:
        return fallback_x
    h = mask.shape[0]
    a, b = int(max(0, y0)), int(min(h, y1))
    if b <= a:
        return fallback_x
    cols = np.flatnonzero(mask[a:b].any(axis=0))
    if cols.size == 0:
        return fallback_x
    return float(cols[0]), float(cols[-1] + 1)


def _mask_box(mask: np.ndarray | None) -> Box | None:
    if mask is None or mask.mean() < 0.02:
        return None
    ys, xs = np.nonzero(mask)
    return Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def plausible_person(r: PoseResult) -> bool:
    """Landmarks that add up to a human body, not a pose hallucinated on a product.

    On this catalog the pose model reports a whole person at visibility ≥ 0.99 on one
    sandal photo in four; those "people" are tiny (shoulders 3-8 % of the image wide,
    face-to-hip span ≤ 0.2 of its height) and off the person mask. Required: shoulders
    and hips visible with human proportions (shoulder width 0.45-1.6 x torso length,
    torso ≥ 8 % of the image height), or shoulders and a face of matching size (eye
    span 0.12-0.6 x shoulder width); and, with a mask, most of those points on it.
    """
    if r.points is None:
        return False
    p = r.pt
    h_img = r.mask.shape[0] if r.mask is not None else None
    shoulders, hips = r.visible(L_SHOULDER, R_SHOULDER), r.visible(L_HIP, R_HIP)
    if not shoulders:
        return False
    sw = float(np.linalg.norm(p(L_SHOULDER) - p(R_SHOULDER)))
    used = [L_SHOULDER, R_SHOULDER]
    ok = False
    if hips:
        torso = float(np.linalg.norm((p(L_SHOULDER) + p(R_SHOULDER)) / 2 - (p(L_HIP) + p(R_HIP)) / 2))
        span_ok = h_img is None or torso >= 0.08 * h_img
        ok = torso > 0 and 0.45 <= sw / torso <= 1.6 and span_ok
        used += [L_HIP, R_HIP]
    if not ok and r.visible(NOSE, L_EYE_OUT, R_EYE_OUT):
        eyes = float(np.linalg.norm(p(L_EYE_OUT) - p(R_EYE_OUT)))
        ok = sw > 0 and 0.12 <= eyes / sw <= 0.6
        used = [L_SHOULDER, R_SHOULDER, NOSE]
    if not ok or r.mask is None:
        return ok
    hh, ww = r.mask.shape
    on = [bool(r.mask[min(hh - 1, max(0, int(p(i)[1]))), min(ww - 1, max(0, int(p(i)[0])))]) for i in used]
    return sum(on) >= 0.6 * len(on)


def _on_person(box: Box, mask: np.ndarray | None, min_cover: float = 0.15) -> bool:
    """The person mask covers at least `min_cover` of the box (no mask: no veto)."""
    if mask is None:
        return True
    x0, y0, x1, y1 = (int(round(v)) for v in box.xyxy)
    region = mask[max(0, y0):max(0, y1), max(0, x0):max(0, x1)]
    return region.size > 0 and float(region.mean()) >= min_cover


def region_boxes(r: PoseResult, region: str, size: tuple[int, int]) -> list[Box]:
    """Boxes for one body region from trusted landmarks on a plausible, segmented person; [] otherwise."""
    w, h = size
    if not plausible_person(r):
        return []
    p = r.pt
    out: list[Box] = []
    shoulders = r.visible(L_SHOULDER, R_SHOULDER)
    hips = r.visible(L_HIP, R_HIP)
    sh_y = (p(L_SHOULDER)[1] + p(R_SHOULDER)[1]) / 2 if shoulders else None
    hip_y = (p(L_HIP)[1] + p(R_HIP)[1]) / 2 if hips else None
    torso = (hip_y - sh_y) if shoulders and hips else None
    if region in ("torso", "tunic", "body") and shoulders and hips and torso > 0:
        y0 = min(p(L_SHOULDER)[1], p(R_SHOULDER)[1]) - 0.15 * torso
        if region == "torso":
            y1 = max(p(L_HIP)[1], p(R_HIP)[1]) + 0.2 * torso
        elif region == "tunic":  # kurtas end near the knees
            knee = [p(i)[1] for i in (L_KNEE, R_KNEE) if r.visible(i)]
            y1 = max(knee) + 0.15 * torso if knee else hip_y + 0.9 * torso
        else:
            ank = [p(i)[1] for i in (L_ANKLE, R_ANKLE) if r.visible(i)]
            knee = [p(i)[1] for i in (L_KNEE, R_KNEE) if r.visible(i)]
            y1 = max(ank) if ank else (max(knee) + 0.3 * torso if knee else hip_y + 1.2 * torso)
        xs = [p(i)[0] for i in (L_SHOULDER, R_SHOULDER, L_HIP, R_HIP)]
        xs += [p(i)[0] for i in (L_ELBOW, R_ELBOW, L_WRIST, R_WRIST) if r.visible(i)]
        x0, x1 = _band_box(r.mask, y0, y1, (min(xs) - 0.1 * torso, max(xs) + 0.1 * torso))
        out.append(Box(x0, y0, x1, y1, 0.9, f"pose:{region}"))
    elif region in ("legs", "hips") and hips:
        knees = [p(i) for i in (L_KNEE, R_KNEE) if r.visible(i)]
        thigh = (np.mean([k[1] for k in knees]) - hip_y) if knees else (0.8 * torso if torso else None)
        if thigh is None or thigh <= 0:
            return []
        if region == "hips":
            y0, y1 = hip_y - 0.45 * thigh, hip_y + 0.55 * thigh
        else:
            y0 = hip_y - 0.35 * thigh
            ankles = [p(i)[1] for i in (L_ANKLE, R_ANKLE, L_HEEL, R_HEEL) if r.visible(i)]
            y1 = max(ankles) + 0.1 * thigh if ankles else hip_y + 2.1 * thigh
        xs = [p(i)[0] for i in (L_HIP, R_HIP)] + [k[0] for k in knees]
        x0, x1 = _band_box(r.mask, y0, y1, (min(xs) - 0.4 * thigh, max(xs) + 0.4 * thigh))
        out.append(Box(x0, y0, x1, y1, 0.9, f"pose:{region}"))
    elif region == "feet":
        for ankle, heel, toe in ((L_ANKLE, L_HEEL, L_TOE), (R_ANKLE, R_HEEL, R_TOE)):
            pts = [p(i) for i in (ankle, heel, toe) if r.visible(i)]
            if not pts:
                continue
            arr = np.array(pts)
            knee = L_KNEE if ankle == L_ANKLE else R_KNEE
            shin = float(np.linalg.norm(p(knee) - p(ankle))) if r.visible(knee, ankle) else 0.15 * h
            s = 0.35 * shin
            out.append(Box(arr[:, 0].min() - s, arr[:, 1].min() - s, arr[:, 0].max() + s, arr[:, 1].max() + 0.6 * s,
                           0.8, "pose:feet"))
        if len(out) == 2:  # a pair of shoes is one product
            out = [out[0].union(out[1])]
    elif region in ("head", "eyes") and r.visible(NOSE, L_EYE_OUT, R_EYE_OUT):
        nose = p(NOSE)
        eye_w = float(np.linalg.norm(p(L_EYE_OUT) - p(R_EYE_OUT)))
        if eye_w <= 1:
            return []
        if region == "eyes":
            cy = (p(L_EYE_OUT)[1] + p(R_EYE_OUT)[1]) / 2
            out.append(Box(nose[0] - 1.1 * eye_w, cy - 0.45 * eye_w, nose[0] + 1.1 * eye_w, cy + 0.45 * eye_w,
                           0.9, "pose:eyes"))
        else:
            out.append(Box(nose[0] - 1.3 * eye_w, nose[1] - 2.2 * eye_w, nose[0] + 1.3 * eye_w,
                           nose[1] + 0.3 * eye_w, 0.9, "pose:head"))
    elif region == "neck" and shoulders and r.visible(MOUTH_L, MOUTH_R):
        mouth_y = (p(MOUTH_L)[1] + p(MOUTH_R)[1]) / 2
        x0, x1 = sorted((p(L_SHOULDER)[0], p(R_SHOULDER)[0]))
        y1 = hip_y if hip_y is not None else sh_y + 1.5 * (sh_y - mouth_y)
        out.append(Box(x0, mouth_y, x1, y1, 0.8, "pose:neck"))
    elif region == "wrist":
        for wrist, elbow in ((L_WRIST, L_ELBOW), (R_WRIST, R_ELBOW)):
            if not r.visible(wrist):
                continue
            fore = float(np.linalg.norm(p(wrist) - p(elbow))) if r.visible(elbow) else 0.1 * h
            s = 0.3 * fore
            c = p(wrist)
            out.append(Box(c[0] - s, c[1] - s, c[0] + s, c[1] + s, 0.7 * float(r.visibility[wrist]), "pose:wrist"))
    boxes = [b.clip(w, h) for b in out]
    return [b for b in boxes if b.area > 0 and _on_person(b, r.mask)]


class PoseLocaliser(Localiser):
    """Worn products: topwear → shoulders–hips, bottomwear → hips–ankles, footwear → feet, head/eyewear → head.

    Prompts that name no worn product return nothing; a person whose landmarks for the
    region are hidden gives the person-mask box (score 0.3); no person, nothing.
    """

    name = "pose"
    min_score = 0.2  # a barely visible landmark is no box; chosen on train/val scenes (grounding.json thresholds)

    def __init__(self, use_mask: bool = True) -> None:
        self.use_mask = use_mask

    def localise(self, image: Image.Image, prompt: str) -> list[Box]:
        t = match_type(prompt)
        if t is None or t.region is None:
            return []
        r = detect_pose(image, want_mask=self.use_mask)
        boxes = region_boxes(r, t.region, image.size)
        if boxes:
            return sorted(boxes, key=lambda b: -b.score)
        mb = _mask_box(r.mask)
        return [mb.with_score(0.3, "pose:mask")] if mb is not None else []
