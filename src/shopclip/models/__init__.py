"""Towers, dual encoder, transforms and the `load_model` door."""

from shopclip.models.dual_encoder import DualEncoder, DualEncoderConfig
from shopclip.models.factory import (
    UnknownModelError,
    add_model_config,
    check_model_ref,
    create_model,
    list_models,
    load_model,
    resolve_model_ref,
)
from shopclip.models.towers import (
    ImageTower,
    ModelUnavailableError,
    TextTower,
    create_tower,
    create_tower_pair,
    list_towers,
    register_tower,
)
from shopclip.models.transforms import ImageTransform

__all__ = [
    "DualEncoder", "DualEncoderConfig", "ImageTower", "ImageTransform", "ModelUnavailableError", "TextTower", "UnknownModelError",
    "add_model_config", "check_model_ref", "create_model", "create_tower", "create_tower_pair", "list_models", "list_towers", "load_model",
    "register_tower", "resolve_model_ref",
]
