"""Contrastive training of the dual encoder (e-CLIP / LiT): losses, false negatives, GradCache, torchrun.

    from shopclip.train import TrainConfig, train
    result = train(TrainConfig(catalog="catalog.jsonl", out="runs/x"))
    # result.model_dir is loadable with shopclip.models.load_model

CLI: `shopclip train CATALOG --out RUN` or `python -m shopclip.train …` (torchrun).
"""

from shopclip.train.config import TextConfig, TrainConfig
from shopclip.train.losses import clip_loss, siglip_loss
from shopclip.train.trainer import Trainer, TrainResult, train

__all__ = ["TextConfig", "TrainConfig", "TrainResult", "Trainer", "clip_loss", "siglip_loss", "train"]
