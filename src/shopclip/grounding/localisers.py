"""Registration of the built-in localisers (imported lazily by :func:`create_localiser`)."""

from __future__ import annotations

from typing import Any

from shopclip.grounding.base import FullImage, Localiser, register_localiser


def _cam(**kw: Any) -> Localiser:
    from shopclip.grounding.cam import CamLocaliser

    return CamLocaliser(**kw)


def _textmap(**kw: Any) -> Localiser:
    from shopclip.grounding.cam import TextMapLocaliser

    return TextMapLocaliser(**kw)


def _foreground(**kw: Any) -> Localiser:
    from shopclip.grounding.saliency import ForegroundLocaliser

    return ForegroundLocaliser(**kw)


def _saliency(**kw: Any) -> Localiser:
    from shopclip.grounding.saliency import SaliencyLocaliser

    return SaliencyLocaliser(**kw)


def _pose(**kw: Any) -> Localiser:
    from shopclip.grounding.pose import PoseLocaliser

    return PoseLocaliser(**kw)


register_localiser("full_image", lambda **kw: FullImage(), "the whole photo (baseline)")
register_localiser("foreground", _foreground, "everything that is not the plain studio backdrop")
register_localiser("saliency", _saliency, "OpenCV spectral-residual saliency, biggest blob (prompt-blind)")
register_localiser("cam", _cam, "EfficientNet-Lite0 class-activation map of the prompt's ImageNet classes")
register_localiser("textmap", _textmap, "dual-encoder cell-vs-prompt similarity map (needs trained heads)")
register_localiser("pose", _pose, "MediaPipe body-part region for worn products")


def _combined(**kw: Any) -> Localiser:
    from shopclip.grounding.combined import CombinedLocaliser

    return CombinedLocaliser(**kw)


register_localiser("combined", _combined, "pose for worn products; foreground / CAM+GrabCut proposals verified by "
                   "the ImageNet classifier")


def _detector(kind: str):  # noqa: ANN202
    def make(model_id: str, **kw: Any) -> Localiser:
        from shopclip.grounding.detectors import HFDetectorLocaliser

        return HFDetectorLocaliser.from_pretrained(kind, model_id, **kw)

    return make


register_localiser("grounding-dino", _detector("grounding-dino"),
                   "Grounding DINO zero-shot detection via transformers (needs a model hub)", prefix=True)
register_localiser("owlv2", _detector("owlv2"), "OWLv2 zero-shot detection via transformers (needs a model hub)",
                   prefix=True)
