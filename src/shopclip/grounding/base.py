"""The localiser interface, boxes, and the rule that turns scored boxes into one crop.

Every localiser answers the same question — where in this photo is the thing the
prompt names? — with scored boxes in the image's pixel coordinates, best first.
Choosing *the* box (margin, clipping, confidence, fallback) is kept out of the
localisers so that every method is judged and used the same way.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class Box:
    """Pixel box [x0, x1) x [y0, y1) with the localiser's confidence and what it thinks it found."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0
    label: str = ""

    def __post_init__(self) -> None:
        # numpy scalars sneak in from OpenCV/torch; boxes must stay plain floats (JSON, hashing).
        for name in ("x0", "y0", "x1", "y1", "score"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "label", str(self.label))

    @property
    def width(self) -> float:
        return max(0.0, self.x1 - self.x0)

    @property
    def height(self) -> float:
        return max(0.0, self.y1 - self.y0)

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x1, other.x1) - max(self.x0, other.x0))
        iy = max(0.0, min(self.y1, other.y1) - max(self.y0, other.y0))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def clip(self, width: float, height: float) -> Box:
        return Box(min(max(self.x0, 0.0), width), min(max(self.y0, 0.0), height),
                   min(max(self.x1, 0.0), width), min(max(self.y1, 0.0), height), self.score, self.label)

    def expand(self, margin: float) -> Box:
        """Grow each side by `margin` times the box's own width/height (a crop that keeps the edges)."""
        dx, dy = self.width * margin, self.height * margin
        return Box(self.x0 - dx, self.y0 - dy, self.x1 + dx, self.y1 + dy, self.score, self.label)

    def union(self, other: Box) -> Box:
        return Box(min(self.x0, other.x0), min(self.y0, other.y0), max(self.x1, other.x1), max(self.y1, other.y1),
                   max(self.score, other.score), self.label or other.label)

    def scaled(self, sx: float, sy: float) -> Box:
        return Box(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy, self.score, self.label)

    def with_score(self, score: float, label: str | None = None) -> Box:
        return Box(self.x0, self.y0, self.x1, self.y1, float(score), self.label if label is None else label)

    def rounded(self) -> tuple[int, int, int, int]:
        """Integer pixel box for cropping: the smallest that contains this one."""
        import math

        return (math.floor(self.x0), math.floor(self.y0), math.ceil(self.x1), math.ceil(self.y1))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("x0", "y0", "x1", "y1", "score"):
            d[k] = round(float(d[k]), 4)
        return d

    @classmethod
    def full(cls, width: float, height: float, score: float = 0.0, label: str = "full image") -> Box:
        return cls(0.0, 0.0, float(width), float(height), score, label)


class Localiser(ABC):
    """image + text prompt → boxes, best first; an empty list means "found nothing"."""

    name: str = "localiser"
    # Below this score the best box is not trusted and the full image is used instead.
    min_score: float = 0.0

    @abstractmethod
    def localise(self, image: Image.Image, prompt: str) -> list[Box]:
        """Boxes in `image` pixel coordinates, sorted by descending score."""

    def options(self) -> dict[str, Any]:
        """The settings that change this localiser's boxes (part of every cache key).

        The constructor's plain-valued arguments (read back from attributes of the same
        name) and, recursively, localisers held as attributes. Run-time state (counters,
        caches) and models/processors are left out: a model's identity is in the name or
        the model ref.
        """
        import inspect

        params = set(inspect.signature(type(self).__init__).parameters) - {"self"}
        out: dict[str, Any] = {"name": self.name}
        for k, v in vars(self).items():
            if k.startswith("_") or not (k in params or isinstance(v, Localiser)):
                continue
            if v is None or isinstance(v, bool | int | float | str):
                out[k] = v
            elif isinstance(v, tuple | list) and all(isinstance(x, bool | int | float | str) for x in v):
                out[k] = list(v)
            elif isinstance(v, Localiser):
                out[k] = v.options()
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class FullImage(Localiser):
    """The baseline every method must beat: the whole photo."""

    name = "full_image"

    def localise(self, image: Image.Image, prompt: str) -> list[Box]:
        return [Box.full(*image.size, score=1.0)]


@dataclass
class Grounding:
    """The chosen crop for one image, and whether it is a real localisation or the fallback."""

    box: Box
    fallback: bool
    reason: str | None = None  # why the fallback was taken

    @property
    def score(self) -> float:
        return self.box.score


def choose_box(boxes: list[Box], size: tuple[int, int], *, margin: float = 0.05, min_score: float = 0.0,
               min_side: float = 8.0, min_area_frac: float = 0.002) -> Grounding:
    """Best box with a margin, clipped to the image; the full image (fallback=True, with a reason) otherwise.

    Degenerate boxes (NaN, inverted, thinner than `min_side` px or smaller than
    `min_area_frac` of the image) are skipped rather than cropped: a 2-px crop
    would embed as noise.
    """
    w, h = size
    if not boxes:
        return Grounding(Box.full(w, h), True, "no box found")
    rejected: list[str] = []
    for b in sorted(boxes, key=lambda b: -b.score if b.score == b.score else float("inf")):
        coords = (b.x0, b.y0, b.x1, b.y1, b.score)
        if any(c != c for c in coords):  # NaN
            rejected.append("NaN box")
            continue
        if b.score < min_score:
            rejected.append(f"low confidence {b.score:.3f} < {min_score:.3f}")
            break  # sorted: every later box scores lower still
        c = b.clip(w, h)
        if c.width < min_side or c.height < min_side or c.area < min_area_frac * w * h:
            rejected.append(f"degenerate box {c.width:.0f}x{c.height:.0f}px")
            continue
        return Grounding(b.expand(margin).clip(w, h), False)
    return Grounding(Box.full(w, h), True, rejected[0] if rejected else "no box found")


# ------------------------------------------------------------------------- registry

_FACTORIES: dict[str, tuple[Callable[..., Localiser], str]] = {}
_PREFIXED: dict[str, tuple[Callable[..., Localiser], str]] = {}
_CACHE: dict[tuple[str, tuple[tuple[str, Any], ...]], Localiser] = {}
_LOCK = threading.Lock()


def register_localiser(name: str, factory: Callable[..., Localiser], description: str = "", *,
                       prefix: bool = False) -> None:
    """`prefix=True` registers a family named `name:<model id>` (detectors from a model hub)."""
    (_PREFIXED if prefix else _FACTORIES)[name] = (factory, description)


def list_localisers() -> dict[str, str]:
    """Name → one-line description (hub families shown as `name:<model id>`)."""
    _ensure_builtin()
    out = {k: d for k, (_, d) in _FACTORIES.items()}
    out.update({f"{k}:<model id>": d for k, (_, d) in _PREFIXED.items()})
    return out


def create_localiser(name: str, *, cached: bool = True, **kwargs: Any) -> Localiser:
    """A localiser by name; built once per (name, options) since the models behind them are slow to load."""
    _ensure_builtin()
    key = (name, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if cached and key in _CACHE:
        return _CACHE[key]
    prefix, _, rest = name.partition(":")
    if name in _FACTORIES:
        loc = _FACTORIES[name][0](**kwargs)
    elif rest and prefix in _PREFIXED:
        loc = _PREFIXED[prefix][0](rest, **kwargs)
    else:
        known = ", ".join(sorted(list_localisers()))
        raise KeyError(f"unknown localiser {name!r}; known: {known}")
    if cached:
        with _LOCK:
            _CACHE.setdefault(key, loc)
    return loc


def _ensure_builtin() -> None:
    if "full_image" not in _FACTORIES:
        import shopclip.grounding.localisers  # noqa: F401  (registers the built-in localisers)
