"""Inference engines: how a loaded dual encoder's towers run at inference time.

``torch`` (eager, the towers' own forward), ``onnx`` (ONNX Runtime, fp32: equal to torch
within float rounding), ``onnx-int8`` (ONNX Runtime, int8: static for the image tower,
calibrated on catalog photos; dynamic for the text tower) and ``torch-bf16`` (eager bfloat16:
the text tower as a bf16 copy, the image tower under autocast; the fastest text path on CPUs
with AMX, slow without native bf16). Select one with
``load_model(..., engine=)``, ``--engine`` on ``shopclip embed|build|serve``, or the
``SHOPCLIP_ENGINE`` environment variable. Training always uses the torch towers.

:data:`DEFAULT_ENGINE` is the fastest engine whose text→image recall@10 on the sample
catalog's test split stays within 0.5 points of fp32 torch, as measured by
``bench/embed.py`` (``bench/results/embed.json``: ``recall_at_10`` and ``default_engine``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from shopclip.models.engines.base import InferenceEngine, TorchBf16Engine, TorchEngine, native_bf16

log = logging.getLogger(__name__)

ENGINES = ("torch", "onnx", "onnx-int8", "torch-bf16")
# From bench/results/embed.json (2 cores): see the README's "Inference engines" section.
DEFAULT_ENGINE = "onnx-int8"
ENGINE_ENV = "SHOPCLIP_ENGINE"


class UnknownEngineError(ValueError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown engine"


def default_engine() -> str:
    """`$SHOPCLIP_ENGINE` when set (the CLI's `--engine` sets it for the process), else :data:`DEFAULT_ENGINE`."""
    return check_engine(os.environ.get(ENGINE_ENV) or DEFAULT_ENGINE)


def check_engine(name: str) -> str:
    if name not in ENGINES:
        raise UnknownEngineError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    return name


def create_engine(model: Any, name: str | None = None, *, calibration: Any = None,
                  cache_dir: str | None = None) -> InferenceEngine:
    """An engine for `model`; ONNX graphs are exported/opened lazily, on first use."""
    name = check_engine(name) if name else default_engine()
    if name == "torch":
        return TorchEngine(model.image_tower, model.text_tower)
    if name == "torch-bf16":
        if not native_bf16():
            log.warning("engine torch-bf16: this CPU has no native bf16 (AMX or AVX512-BF16); "
                        "it will be slower than torch or onnx-int8")
        return TorchBf16Engine(model.image_tower, model.text_tower)
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
        from shopclip.models.towers import ModelUnavailableError

        raise ModelUnavailableError(f"engine {name!r} needs onnxruntime: pip install onnxruntime") from e
    from shopclip.models.engines.onnx_engine import OnnxEngine

    return OnnxEngine(model, "fp32" if name == "onnx" else "int8", calibration=calibration, cache_dir=cache_dir)


def attach_engine(model: Any, name: str | None = None, *, calibration: Any = None) -> Any:
    """Run `model`'s inference (`encode_*`, the build's feature path) on engine `name`; returns the model."""
    from shopclip.core.threads import warn_if_spinning

    warn_if_spinning()
    model.use_engine(create_engine(model, name, calibration=calibration))
    return model


__all__ = ["DEFAULT_ENGINE", "ENGINES", "ENGINE_ENV", "InferenceEngine", "TorchBf16Engine", "TorchEngine",
           "UnknownEngineError", "native_bf16",
           "attach_engine", "check_engine", "create_engine", "default_engine"]
