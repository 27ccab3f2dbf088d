"""Visual grounding: find the product a listing photo is about, and crop to it (VL-CLIP's first step).

    from shopclip.grounding import create_localiser, choose_box
    loc = create_localiser("combined")            # the measured default
    boxes = loc.localise(image, "Casual Shoes")   # scored boxes, best first
    g = choose_box(boxes, image.size)             # margin, clipping, full-image fallback

Localisers: ``full_image`` (baseline), ``foreground`` (plain backdrops), ``saliency``,
``cam`` (ImageNet class-activation maps), ``pose`` (MediaPipe body regions),
``textmap`` (dual-encoder similarity map), ``combined`` (the default), and
``grounding-dino:<id>`` / ``owlv2:<id>`` for users with a model hub. Whole catalogs:
:func:`ground_catalog` or ``shopclip ground``; inside ``shopclip build``:
:func:`ground_stage` (included by `shopclip build`). Benchmark scenes: :mod:`shopclip.grounding.synth`.
"""

from shopclip.grounding.base import (
    Box,
    FullImage,
    Grounding,
    Localiser,
    choose_box,
    create_localiser,
    list_localisers,
    register_localiser,
)
from shopclip.grounding.pipeline import ground_stage
from shopclip.grounding.runner import DEFAULT_METHOD, GroundResult, crop_overrides, ground_catalog, read_boxes

__all__ = [
    "DEFAULT_METHOD", "Box", "FullImage", "GroundResult", "Grounding", "Localiser", "choose_box", "create_localiser",
    "crop_overrides", "ground_catalog", "ground_stage", "list_localisers", "read_boxes",
    "register_localiser",
]
