"""The contrastive trainer: LiT locking, cached tower features, GradCache, torchrun, resumable runs.

A run folder holds everything about one run::

    RUN/config.yaml          the TrainConfig (re-run with --config RUN/config.yaml)
    RUN/metrics.jsonl        {"type": "step", …} every log_every steps, {"type": "val", …} per epoch
    RUN/checkpoints/last.pt  trainable weights, optimizer, scheduler, scaler, RNG, data position
    RUN/model/               the trained DualEncoder (config.json + heads.safetensors [+ towers])
    RUN/summary.json         what `model/config.json`'s info holds: data, steps, time, final metrics

Locked towers (LiT) are never run during training: their outputs for every training
image view and text variant come from the on-disk feature cache (see `features.py`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shopclip.catalog import Catalog
from shopclip.core.io import atomic_write_json
from shopclip.models.augment import AugmentConfig, augment_image, view_rng
from shopclip.models.features import (
    CLEAN_VIEW,
    FeatureCache,
    compute_image_features,
    compute_text_features,
    default_cache_dir,
    image_fingerprint,
    load_view,
    text_fingerprint,
    text_key,
    view_key,
)
from shopclip.train import distributed as D
from shopclip.train.config import TrainConfig
from shopclip.train.data import (
    PairSet,
    build_pairs,
    effective_batch_size,
    epoch_batches,
    keys_tensor,
    leaf_batches,
    pick_other_views,
    pick_texts,
    pick_views,
    rank_slice,
    split_catalog,
    view_names,
)
from shopclip.train.evaluate import retrieval_report
from shopclip.train.false_negatives import false_negative_mask
from shopclip.train.gradcache import contrastive_step
from shopclip.train.losses import clip_loss, image_image_loss, siglip_loss
from shopclip.train.schedule import make_scheduler, steps_per_epoch

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoints/last.pt"


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    steps: int
    seconds: float
    val: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------ locking
def tower_plan(cfg: TrainConfig) -> tuple[int, int]:
    """(image, text) trainable blocks: 0 = locked, -1 = whole tower, N = last N blocks."""
    image = 0 if cfg.lock in ("both", "image") else cfg.unlock_blocks
    text = 0 if cfg.lock in ("both", "text") else cfg.unlock_blocks
    return image, text


def apply_locking(model: nn.Module, image_blocks: int, text_blocks: int) -> None:
    """requires_grad per LiT plan: heads and temperature always train, towers per plan."""
    for tower, n in ((model.image_tower, image_blocks), (model.text_tower, text_blocks)):
        for p in tower.parameters():
            p.requires_grad_(n < 0)
        if n > 0:
            blocks = tower.blocks()
            if not blocks:
                raise ValueError(f"{type(tower).__name__} exposes no blocks(); use unlock_blocks=-1 or lock it")
            for b in blocks[-n:]:
                for p in b.parameters():
                    p.requires_grad_(True)
    for m in (model.image_head, model.text_head):
        for p in m.parameters():
            p.requires_grad_(True)
    model.logit_scale.requires_grad_(True)


def set_train_mode(model: nn.Module, image_blocks: int, text_blocks: int) -> None:
    """Heads train; locked towers run in eval; BatchNorm stays frozen everywhere.

    Frozen BN keeps GradCache exact (chunks would otherwise see different batch stats)
    and avoids re-estimating statistics from small CPU batches.
    """
    model.train()
    if image_blocks == 0:
        model.image_tower.eval()
    if text_blocks == 0:
        model.text_tower.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def param_groups(model: nn.Module, extra: list[nn.Parameter], cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms (1-D tensors) and the temperature/bias scalars."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        tower = name.startswith(("image_tower.", "text_tower."))
        decay = p.ndim >= 2 and name != "logit_scale"
        groups.setdefault((tower, decay), []).append(p)
    out = [{"params": ps, "lr": cfg.tower_lr if tower else cfg.lr, "weight_decay": cfg.weight_decay if decay else 0.0,
            "name": f"{'tower' if tower else 'head'}-{'decay' if decay else 'no_decay'}"}
           for (tower, decay), ps in sorted(groups.items())]
    if extra:
        out.append({"params": extra, "lr": cfg.lr, "weight_decay": 0.0, "name": "loss-scalars"})
    return out


# ------------------------------------------------------------------------------ RNG
def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _bf16_pays_off(device: torch.device, lock: str) -> bool:
    """bf16 autocast where the hardware has it: GPUs with bf16, and CPUs with native bf16
    (AVX512-BF16/AMX) when a tower is trained (bench/train.py: 1.8x pairs/s); heads-only
    steps on cached features are tiny matmuls that bf16 only makes less exact."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or lock == "both":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# ------------------------------------------------------------------------------ trainer
class Trainer:
    """`Trainer(cfg).fit()`; pass `model=` / `catalog=` to train objects built in Python (tests, notebooks)."""

    def __init__(self, cfg: TrainConfig, *, model: nn.Module | None = None, catalog: Catalog | None = None) -> None:
        self.cfg = cfg.validate()
        self.dist = D.init_distributed(cfg.device)
        self.device = self._device()
        self.run_dir = Path(cfg.out)
        self.ckpt_path = self.run_dir / CHECKPOINT
        self._given_model = model
        self._given_catalog = catalog
        self.aug = AugmentConfig(enabled=cfg.augment)
        self.extra_params: dict[str, nn.Parameter] = {}
        self._pool_: ThreadPoolExecutor | None = None
        self.continued = False  # training goes on from an already trained model

    @property
    def _pool(self) -> ThreadPoolExecutor:
        """Threads that decode and augment photos (PIL releases the GIL)."""
        if self._pool_ is None:
            self._pool_ = ThreadPoolExecutor(max_workers=max(1, self.cfg.num_workers))
        return self._pool_

    # ------------------------------------------------------------------ setup
    def _device(self) -> torch.device:
        want = self.cfg.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want == "cuda":
            return torch.device("cuda", self.dist.local_rank)
        return torch.device(want)

    def _autocast(self) -> Any:
        p = self.cfg.precision
        if p == "auto":
            p = "bf16" if _bf16_pays_off(self.device, self.cfg.lock) else "fp32"
        self.precision = p
        if p == "fp32":
            return contextlib.nullcontext
        dtype = torch.bfloat16 if p == "bf16" else torch.float16
        return lambda: torch.autocast(self.device.type, dtype=dtype)

    def _load_model(self) -> nn.Module:
        from shopclip.models import create_model, load_model
        from shopclip.models.dual_encoder import CONFIG_FILE

        if self._given_model is not None:
            return self._given_model
        ref = Path(self.cfg.model)
        if (ref / CONFIG_FILE).exists() or (ref / "model" / CONFIG_FILE).exists():
            model = load_model(ref)  # continue from a trained model; its heads are kept
            self.continued = True
        else:
            extra = {"sim_dim": self.cfg.sim_dim, "sim_weight": self.cfg.sim_weight} if self.cfg.sim_dim else {}
            model = create_model(self.cfg.model, head=self.cfg.head, embed_dim=self.cfg.embed_dim, **extra)
            with torch.no_grad():
                init = math.log(10.0) if self.cfg.loss == "siglip" else math.log(1 / self.cfg.init_temperature)
                model.logit_scale.fill_(init)
        return model

    def _log(self, msg: str) -> None:
        if self.dist.is_main and self.cfg.progress:
            from tqdm.auto import tqdm

            tqdm.write(msg)
        log.info(msg)

    def setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.ckpt_path.exists() and not cfg.resume:
                raise FileExistsError(f"{self.run_dir} already holds a run (checkpoint {self.ckpt_path}); "
                                      "pass --resume to continue it or choose another --out")
            if cfg.resume and self.ckpt_path.exists():
                old = TrainConfig.from_dict(torch.load(self.ckpt_path, weights_only=False)["config"])
                changed = old.diff(cfg)
                if changed:
                    raise ValueError(f"cannot resume {self.run_dir}: config differs from the checkpoint's: {changed}")
            cfg.save(self.run_dir / "config.yaml")
        D.barrier()
        catalog = self._given_catalog or Catalog.load(cfg.catalog)
        self.catalog = catalog
        train_p, val_p = split_catalog(catalog, cfg.train_split, cfg.val_split)
        if cfg.val_max and len(val_p) > cfg.val_max:
            val_p = sorted(val_p, key=lambda p: view_rng(cfg.seed, "val", p.id).random())[: cfg.val_max]
        if len(train_p) < 2:
            raise ValueError(f"only {len(train_p)} products in split {cfg.train_split!r}: nothing to train on")
        self.train = build_pairs(catalog, train_p, cfg, num_workers=cfg.num_workers)
        self.val = build_pairs(catalog, val_p, cfg, num_workers=cfg.num_workers) if len(val_p) >= 2 else None

        model = self._load_model().to(self.device)
        self.model = model
        self.image_blocks, self.text_blocks = tower_plan(cfg)
        apply_locking(model, self.image_blocks, self.text_blocks)
        set_train_mode(model, self.image_blocks, self.text_blocks)
        self.autocast = self._autocast()
        if cfg.loss == "siglip":
            self.extra_params["logit_bias"] = nn.Parameter(torch.tensor(cfg.siglip_bias, device=self.device))
        self._prepare_features()

        self.world = self.dist.world
        self.spe = steps_per_epoch(cfg, len(self.train), self.world)
        self.total_steps = sum(self.spe)
        warmup = min(cfg.warmup_steps, self.total_steps // 2)
        self.optimizer = torch.optim.AdamW(param_groups(model, list(self.extra_params.values()), cfg),
                                           betas=(0.9, 0.98), eps=1e-6)
        self.scheduler = make_scheduler(self.optimizer, warmup=warmup, total=self.total_steps,
                                        min_ratio=cfg.min_lr_ratio)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.epoch, self.batch_in_epoch, self.step, self.last_val_epoch = 0, 0, 0, -1
        self.last_val: dict[str, float] = {}
        self.started = time.time()
        self.elapsed_before = 0.0
        if cfg.resume and self.ckpt_path.exists():
            self._load_checkpoint()

    # ------------------------------------------------------------------ features of locked towers
    def _cache_root(self) -> Path:
        return Path(self.cfg.cache_dir) if self.cfg.cache_dir else default_cache_dir()

    def _prepare_features(self) -> None:
        """Fill the cache for locked towers (work split across ranks), then load it as tensors."""
        cfg, model = self.cfg, self.model
        self.views = view_names(cfg.image_views if cfg.augment else 0, self.aug, cfg.seed)
        self.img_feats = self.txt_feats = self.val_img = self.val_txt = None
        self.img_split = None
        rank, world = self.dist.rank, self.dist.world
        sets = [s for s in (self.train, self.val) if s is not None]
        if self.image_blocks > 0 and cfg.tower_cache:
            from shopclip.models.partial import image_top_split

            self.img_split = image_top_split(model.image_tower, self.image_blocks)
        if self.image_blocks == 0 or self.img_split is not None:
            if self.img_split is None:
                cache = FeatureCache(self._cache_root(), "image", image_fingerprint(model), model.image_tower.output_dim)
                featurizer: Any = model
            else:  # frozen lower blocks' outputs (float16: they are activations, not the features themselves)
                cache = FeatureCache(self._cache_root(), f"image-lower{self.image_blocks}", image_fingerprint(model),
                                     self.img_split.dim, dtype="float16")
                featurizer = _Featurizer(self.img_split, model.transform)
            jobs = [(it, v) for it in self.train.items for v in self.views]
            if self.val is not None:
                jobs += [(it, CLEAN_VIEW) for it in self.val.items]
            mine = jobs[rank::world]
            for v in dict.fromkeys(v for _, v in mine):
                compute_image_features(featurizer, [it for it, vv in mine if vv == v], [v], cache, aug=self.aug,
                                       seed=cfg.seed, batch_size=cfg.feature_batch_size, num_workers=cfg.num_workers,
                                       progress=cfg.progress and self.dist.is_main)
            D.barrier()
            cache.refresh()
            self.img_feats = torch.from_numpy(np.stack([
                cache.get([view_key(it.sha1, v) for it in self.train.items]) for v in self.views]))
            if self.val is not None:
                self.val_img = torch.from_numpy(cache.get([view_key(it.sha1, CLEAN_VIEW) for it in self.val.items]))
        if self.text_blocks == 0:
            cache = FeatureCache(self._cache_root(), "text", text_fingerprint(model), model.text_tower.output_dim)
            texts = [t for s in sets for ts in s.texts for t in ts]
            compute_text_features(model, list(dict.fromkeys(texts))[rank::world], cache,
                                  progress=cfg.progress and self.dist.is_main)
            D.barrier()
            cache.refresh()
            nvar = len(self.train.texts[0])
            self.txt_feats = torch.from_numpy(np.stack([
                cache.get([text_key(ts[k]) for ts in self.train.texts]) for k in range(nvar)]))
            if self.val is not None:
                self.val_txt = torch.from_numpy(cache.get([text_key(ts[0]) for ts in self.val.texts]))
        # Feature standardisation (locked towers): z-scores from the clean training features;
        # centred only where the head can absorb the shift (a first layer with a bias).
        self.stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if cfg.standardize and not self.continued and self.img_split is None:  # trained heads expect raw features
            for name, feats, head in (("image", self.img_feats, model.image_head),
                                      ("text", self.txt_feats, model.text_head)):
                first = first_linear(head)
                if feats is not None and first is not None:
                    f = feats[0].double()
                    mean = f.mean(0) if first.bias is not None else torch.zeros(f.shape[1], dtype=f.dtype)
                    std = (f - mean).pow(2).mean(0).sqrt().clamp_min(1e-6)
                    self.stats[name] = (mean.float().to(self.device), std.float().to(self.device))

    def _standardize(self, side: str, x: torch.Tensor) -> torch.Tensor:
        if side not in self.stats:
            return x
        mean, std = self.stats[side]
        return (x - mean) / std

    # ------------------------------------------------------------------ batches
    def _load_pixels(self, pairs: PairSet, idx: np.ndarray, epoch: int, augment: bool, salt: str = "aug") -> torch.Tensor:
        views = pick_views(self.cfg.seed, epoch, idx, 1 if augment and self.cfg.augment else 0,
                           self.cfg.clean_view_p if salt == "aug" else 0.0)

        def one(i: int, v: int) -> torch.Tensor:
            item = pairs.items[i]
            if v == 0:
                return load_view(item, CLEAN_VIEW, self.model, self.aug, self.cfg.seed)
            from shopclip.core.images import open_image

            img = augment_image(open_image(item.path), view_rng(self.cfg.seed, salt, epoch, i), self.aug,
                                can_flip=item.can_flip)
            return self.model.transform(img)

        return torch.stack(list(self._pool.map(one, idx.tolist(), views)))

    def _inputs(self, idx: np.ndarray, epoch: int) -> tuple[Any, Any]:
        """(image inputs, text inputs) for this rank's pairs: cached features or raw pixels/tokens."""
        cfg = self.cfg
        if self.img_feats is not None:
            views = pick_views(cfg.seed, epoch, idx, len(self.views) - 1, cfg.clean_view_p)
            images = self.img_feats[torch.as_tensor(views), torch.from_numpy(idx)]
            if cfg.i2i_weight > 0:  # the image–image term sees a second, different view of each photo
                other = pick_other_views(cfg.seed, epoch, idx, len(self.views) - 1, views)
                images = torch.cat([images, self.img_feats[torch.as_tensor(other), torch.from_numpy(idx)]])
        else:
            images = self._load_pixels(self.train, idx, epoch, augment=True)
            if cfg.i2i_weight > 0:
                images = torch.cat([images, self._load_pixels(self.train, idx, epoch, augment=True, salt="aug2")])
        variants = pick_texts(cfg.seed, epoch, idx, len(self.train.texts[0]), cfg.text.full_p)
        if self.txt_feats is not None:
            texts = self.txt_feats[torch.as_tensor(variants), torch.from_numpy(idx)]
        else:
            texts = self.model.text_tower.tokenize([self.train.texts[i][v] for i, v in zip(idx.tolist(), variants,
                                                                                             strict=True)])
        return images, texts

    def _to_device(self, x: Any) -> Any:
        if isinstance(x, dict):
            return {k: v.to(self.device, non_blocking=True) for k, v in x.items()}
        return x.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ encoders and loss
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            if self.img_split is not None:  # cached lower blocks → the unlocked top → head
                return self.model.project_image(self.img_split.upper(x.float()))
            if self.img_feats is not None:
                return self.model.project_image(self._standardize("image", x))
            return self.model.forward_image(x)

    def encode_text(self, x: Any) -> torch.Tensor:
        with self.autocast():
            if self.txt_feats is not None:
                return self.model.project_text(self._standardize("text", x))
            return self.model.forward_text(x)

    def make_loss(self, keys_local: torch.Tensor, leaves_local: torch.Tensor | None = None) -> Any:
        cfg = self.cfg
        keys = D.all_gather_nograd(keys_local.to(self.device))
        mask = false_negative_mask(keys) if cfg.fn_mode != "none" else None
        same_leaf = None
        if cfg.i2i_weight > 0 and cfg.i2i_positives == "leaf" and leaves_local is not None:
            leaves = D.all_gather_nograd(leaves_local.to(self.device))
            same_leaf = (leaves[:, None] == leaves[None, :]) & (leaves[:, None] >= 0)

        split = getattr(self.model.image_head, "main_dim", 0) if self.model.config.sim_dim else 0

        def loss_fn(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
            second = None
            if cfg.i2i_weight > 0:  # images = [view a; view b] of this rank's pairs
                img, second = img[: len(txt)], img[len(txt) :]
            if split:  # contrastive loss on the main subspace, image-image term on the similar-items one
                second = F.normalize(second[:, split:].float(), dim=-1) if second is not None else None
                sim_a = F.normalize(img[:, split:].float(), dim=-1)
                img, txt = F.normalize(img[:, :split].float(), dim=-1), F.normalize(txt[:, :split].float(), dim=-1)
            img_g, txt_g = D.all_gather_with_grad(img.float()), D.all_gather_with_grad(txt.float())
            scale = self.model.clamped_logit_scale().exp()
            if cfg.loss == "siglip":
                loss = siglip_loss(img_g, txt_g, scale, self.extra_params["logit_bias"], fn_mask=mask,
                                   fn_mode=cfg.fn_mode)
            else:
                loss = clip_loss(img_g, txt_g, scale, fn_mask=mask, fn_mode=cfg.fn_mode,
                                 label_smoothing=cfg.label_smoothing, hard_beta=cfg.hard_beta)
            if second is not None:
                first = D.all_gather_with_grad(sim_a) if split else img_g
                loss = loss + cfg.i2i_weight * image_image_loss(
                    first, D.all_gather_with_grad(second.float()), 1.0 / cfg.i2i_temperature, pos_mask=same_leaf,
                    fn_mask=mask)
            return self.scaler.scale(loss)

        return loss_fn

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.extra_params.values())

    def train_step(self, idx_global: np.ndarray, epoch: int, inputs: tuple[Any, Any] | None = None) -> float:
        """One optimizer step on a global batch (this rank uses its slice); returns the loss."""
        idx = rank_slice(idx_global, self.dist.rank, self.dist.world)
        images, texts = inputs if inputs is not None else self._inputs(idx, epoch)
        images, texts = self._to_device(images), self._to_device(texts)
        self.optimizer.zero_grad(set_to_none=True)
        leaves = torch.from_numpy(self.train.leaves[idx]) if self.train.leaves is not None else None
        loss = contrastive_step(self.encode_image, self.encode_text, images, texts,
                                self.make_loss(keys_tensor(self.train, idx), leaves), self.cfg.grad_cache_chunk)
        D.average_gradients(self.trainable())
        self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.item()) / max(self.scaler.get_scale(), 1e-12) if self.scaler.is_enabled() else float(loss.item())

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def embed_val(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.val is not None
        model = self.model
        model.eval()
        try:
            if self.val_img is not None:
                img = torch.cat([self.encode_image(self.val_img[s : s + 1024].to(self.device))
                                 for s in range(0, len(self.val), 1024)])
            else:
                idx = np.arange(len(self.val))
                img = torch.cat([self.encode_image(self._load_pixels(self.val, idx[s : s + 32], 0, False).to(self.device))
                                 for s in range(0, len(idx), 32)])
            if self.val_txt is not None:
                txt = torch.cat([self.encode_text(self.val_txt[s : s + 1024].to(self.device))
                                 for s in range(0, len(self.val), 1024)])
            else:
                texts = [ts[0] for ts in self.val.texts]
                txt = torch.cat([self.encode_text(self._to_device(model.text_tower.tokenize(texts[s : s + 64])))
                                 for s in range(0, len(texts), 64)])
        finally:
            set_train_mode(model, self.image_blocks, self.text_blocks)
        return img.float().cpu().numpy(), txt.float().cpu().numpy()

    def validate(self, epoch: int) -> dict[str, float]:
        if self.val is None or not self.dist.is_main:
            return {}
        img, txt = self.embed_val()
        rep = retrieval_report(img, txt)
        self._metric({"type": "val", "epoch": epoch, "step": self.step, "n": len(self.val), **rep})
        self._log(f"epoch {epoch}: val t2i R@1/5/10 {rep['t2i_r1']:.3f}/{rep['t2i_r5']:.3f}/{rep['t2i_r10']:.3f} "
                  f"i2t {rep['i2t_r1']:.3f}/{rep['i2t_r5']:.3f}/{rep['i2t_r10']:.3f}")
        return rep

    # ------------------------------------------------------------------ logs and checkpoints
    def _metric(self, row: dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fp:
                fp.write(json.dumps(row) + "\n")

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        state = self.model.state_dict()
        keep = set(self.model.heads_state()) | names
        return {k: v.detach().cpu().clone() for k, v in state.items() if k in keep}

    def save_checkpoint(self) -> None:
        rngs = D.gather_objects(rng_state())
        if not self.dist.is_main:
            return
        state = {
            "model": self._trainable_state(),
            "extra": {k: v.detach().cpu() for k, v in self.extra_params.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "position": {"epoch": self.epoch, "batch": self.batch_in_epoch, "step": self.step,
                         "last_val_epoch": self.last_val_epoch},
            "last_val": self.last_val,
            "elapsed": self.elapsed_before + time.time() - self.started,
            "config": self.cfg.to_dict(),
        }
        self.ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.ckpt_path.with_name(f".{self.ckpt_path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fp:
            torch.save(state, fp)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, self.ckpt_path)

    def _load_checkpoint(self) -> None:
        state = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
        missing = set(state["model"]) - set(self.model.state_dict())
        if missing:
            raise ValueError(f"checkpoint holds weights the model lacks: {sorted(missing)[:5]}")
        self.model.load_state_dict(state["model"], strict=False)
        for k, v in state["extra"].items():
            with torch.no_grad():
                self.extra_params[k].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        pos = state["position"]
        self.epoch, self.batch_in_epoch, self.step = pos["epoch"], pos["batch"], pos["step"]
        self.last_val_epoch = pos["last_val_epoch"]
        self.last_val = state.get("last_val", {})
        self.elapsed_before = float(state.get("elapsed", 0.0))
        if self.dist.is_main:
            self._truncate_metrics(self.step)
        self._log(f"resumed {self.run_dir} at epoch {self.epoch}, batch {self.batch_in_epoch}, step {self.step}")

    def _truncate_metrics(self, step: int) -> None:
        """Drop log rows written after the checkpoint by the run that was killed (they will be redone)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        keep = [r for r in rows if r.get("step", 0) <= step and not (r.get("type") == "val"
                                                                      and r.get("epoch", -1) > self.last_val_epoch)]
        from shopclip.core.io import atomic_write_jsonl

        atomic_write_jsonl(path, keep)

    # ------------------------------------------------------------------ loop
    def _batches(self) -> Iterator[tuple[int, int, np.ndarray]]:
        n = len(self.train)
        for epoch in range(self.epoch, self.cfg.epochs):
            bs = effective_batch_size(self.cfg.batch_size_at(epoch), n, self.world)
            if self.cfg.batch_sampler == "leaf" and self.train.leaves is not None:
                batches = leaf_batches(self.cfg.seed, epoch, self.train.leaves, bs, self.cfg.leaf_chunk)
            else:
                batches = epoch_batches(self.cfg.seed, epoch, n, bs)
            start = self.batch_in_epoch if epoch == self.epoch else 0
            for b in range(start, len(batches)):
                yield epoch, b, batches[b]

    def fit(self) -> TrainResult:
        if not hasattr(self, "model"):
            self.setup()
        cfg = self.cfg
        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        prefetch: Future[Any] | None = None
        # Its own thread: a prefetch task waits on decode tasks in `_pool` and must not occupy one of its workers.
        self._prefetcher = ThreadPoolExecutor(max_workers=1)
        try:
            # A run resumed exactly at an epoch boundary may still owe that epoch's validation.
            if self.epoch > 0 and self.batch_in_epoch == 0 and self.last_val_epoch < self.epoch - 1:
                self._end_epoch(self.epoch - 1)
            it = self._batches()
            nxt = next(it, None)
            while nxt is not None:
                epoch, b, idx_global = nxt
                t0 = time.perf_counter()
                inputs = prefetch.result() if prefetch is not None else None
                following = next(it, None)
                prefetch = None
                if following is not None and self.img_feats is None:
                    # Decode the next batch's photos while this one trains.
                    fe, _, fidx = following
                    prefetch = self._prefetcher.submit(self._inputs, rank_slice(fidx, self.dist.rank, self.world), fe)
                loss = self.train_step(idx_global, epoch, inputs)
                self.step += 1
                self.epoch, self.batch_in_epoch = (epoch, b + 1)
                dt = time.perf_counter() - t0
                lr = self.optimizer.param_groups[0]["lr"]
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    loss_avg = D.all_reduce_mean(loss)
                    self._metric({"type": "step", "step": self.step, "epoch": epoch, "loss": loss_avg, "lr": lr,
                                  "scale": float(self.model.clamped_logit_scale().detach().exp()), "batch": len(idx_global),
                                  "pairs_per_s": len(idx_global) / dt})
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", pairs_s=f"{len(idx_global) / dt:.0f}",
                                    epoch=epoch)
                    bar.update(1)
                if self.step == _kill_at_step():
                    os.kill(os.getpid(), signal.SIGKILL)  # fault injection: a real kill -9 mid-run
                epoch_done = following is None or following[0] != epoch
                if epoch_done:
                    self.epoch, self.batch_in_epoch = epoch + 1, 0
                    self._end_epoch(epoch)
                if self.step % cfg.checkpoint_every == 0 or following is None:
                    self.save_checkpoint()
                nxt = following
            if self.last_val_epoch < cfg.epochs - 1 and self.val is not None:
                self._end_epoch(cfg.epochs - 1, force=True)
        finally:
            if bar is not None:
                bar.close()
            self._prefetcher.shutdown(wait=True)
            if self._pool_ is not None:
                self._pool_.shutdown(wait=True)
                self._pool_ = None
        return self.finish()

    def _end_epoch(self, epoch: int, force: bool = False) -> None:
        last = epoch == self.cfg.epochs - 1
        every = self.cfg.val_every
        if force or last or (every > 0 and (epoch + 1) % every == 0):
            rep = self.validate(epoch)
            self.last_val = D.broadcast_object(rep)
        self.last_val_epoch = epoch
        D.barrier()

    # ------------------------------------------------------------------ the trained model
    def export_model(self) -> nn.Module:
        """A copy of the model with feature standardisation folded into the heads, ready for `save`."""
        model = copy.deepcopy(self.model).cpu()
        for side, head in (("image", model.image_head), ("text", model.text_head)):
            if side in self.stats:
                mean, std = (t.cpu() for t in self.stats[side])
                fold_standardization(head, mean, std)
        model.eval()
        return model

    def finish(self) -> TrainResult:
        cfg = self.cfg
        seconds = self.elapsed_before + time.time() - self.started
        model_dir = self.run_dir / "model"
        if self.dist.is_main:
            model = self.export_model()
            summary = {
                "run": str(self.run_dir.resolve()), "catalog": str(cfg.catalog or getattr(self.catalog, "source", "")),
                "train_pairs": len(self.train), "val_pairs": len(self.val) if self.val is not None else 0,
                "steps": self.step, "epochs": cfg.epochs, "seconds": round(seconds, 1), "world_size": self.world,
                "lock": cfg.lock, "loss": cfg.loss, "fn_mode": cfg.fn_mode, "precision": self.precision,
                "val": self.last_val, "config": cfg.to_dict(),
            }
            model.config.trained = True
            model.config.info = {"training": summary}
            partial = -1 not in (self.image_blocks, self.text_blocks)  # only some blocks trained: save those alone
            keys = [n for n, p in self.model.named_parameters()
                    if p.requires_grad and n.startswith(("image_tower.", "text_tower."))] if partial else None
            model.save(model_dir, save_towers=self.image_blocks != 0 or self.text_blocks != 0,
                       tower_keys=keys if keys else None)
            atomic_write_json(self.run_dir / "summary.json", summary)
            self._log(f"saved {model_dir} ({self.step} steps, {seconds:.0f} s)")
        D.barrier()
        return TrainResult(self.run_dir, model_dir, self.step, seconds, dict(self.last_val))


class _Featurizer:
    """What `compute_image_features` needs of a model (`image_tower`, `transform`), for a tower's lower blocks."""

    def __init__(self, tower: nn.Module, transform: Any) -> None:
        self.image_tower = tower
        self.transform = transform


def _kill_at_step() -> int:
    """SHOPCLIP_TRAIN_KILL_AT_STEP=k makes the run SIGKILL itself after step k (resume tests)."""
    return int(os.environ.get("SHOPCLIP_TRAIN_KILL_AT_STEP", "0") or 0)


def first_linear(head: nn.Module) -> nn.Linear | None:
    if isinstance(head, nn.Linear):
        return head
    return next((m for m in head.modules() if isinstance(m, nn.Linear)), None)


def fold_standardization(head: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make head(x) equal the trained head((x − mean) / std) by rewriting its first linear layer.

    A linear head without bias can absorb the 1/std scale but not the mean shift, so
    the trainer only centres features when the head's first layer has a bias (mlp).
    """
    first = first_linear(head)
    if first is None:
        raise ValueError("the head has no linear layer to fold the standardisation into")
    with torch.no_grad():
        w = first.weight / std[None, :]
        if first.bias is not None:
            first.bias.sub_(w @ mean)
        elif mean.abs().max() > 0:
            raise ValueError("cannot fold a mean shift into a bias-free linear head")
        first.weight.copy_(w)


def train(cfg: TrainConfig, **kwargs: Any) -> TrainResult:
    """Build a Trainer and run it (the one-call Python API)."""
    trainer = Trainer(cfg, **kwargs)
    try:
        return trainer.fit()
    finally:
        D.cleanup()
