"""`TrainConfig`: every knob of a training run in one dataclass, saved as YAML into the run folder.

A run is reproducible from its ``config.yaml`` alone (`python -m shopclip.train --config
RUN/config.yaml`), and `--resume` refuses a checkpoint written under a different
config (except for the fields listed in :data:`RESUMABLE_CHANGES`, e.g. a longer run).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

LOCK_MODES = ("both", "image", "text", "none")
LOSSES = ("clip", "siglip")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BATCH_SAMPLERS = ("random", "leaf")
I2I_POSITIVES = ("view", "leaf")
# Fields that may differ between a checkpoint and the config that resumes it.
RESUMABLE_CHANGES = frozenset({"resume", "progress", "log_every", "checkpoint_every", "num_workers", "out",
                               "catalog", "cache_dir", "device", "val_every", "parallel"})


@dataclass
class TextConfig:
    """How a product becomes the text the text tower reads (per field)."""

    fields: list[str] = field(default_factory=lambda: ["title", "category", "attributes", "description"])
    category_levels: int = 0  # 0 = the whole path; N = its last N levels
    attribute_keys: list[str] | None = None  # None = every attribute, in catalog order
    attribute_exclude: list[str] = field(default_factory=list)
    description_chars: int = 0  # 0 = the whole description (the tokenizer truncates it anyway)
    # Extra field subsets sampled during training so short, query-like texts also align.
    variants: list[list[str]] = field(default_factory=lambda: [["title"], ["title", "category"],
                                                               ["title", "attributes"]])
    full_p: float = 0.5  # probability of the full text (else a uniformly drawn variant)


@dataclass
class TrainConfig:
    # --- data
    catalog: str = ""
    out: str = "runs/default"
    train_split: str = "train"  # splits joined by "+" train on all of them (train+val: the final fit)
    val_split: str = "val"  # "" = no validation split
    val_max: int = 0  # validate on at most this many products (0 = all)
    text: TextConfig = field(default_factory=TextConfig)
    # --- model
    # Registered architecture, or a model/run folder to continue from. The multi-level towers beat
    # the plain ones on the val split: t2i MRR 0.635 vs 0.554 at the same recipe (bench/train_quality.py).
    model: str = "minilm-efflite0-ml"
    head: str = "linear"  # linear | mlp (new heads only)
    embed_dim: int = 768  # val t2i MRR: 512 0.614, 768 0.619, 1024 0.618 (multi-level towers, 30 epochs); heads are 8.6 MB
    lock: str = "both"  # both = heads only; image = image locked, text trained; text; none
    unlock_blocks: int = -1  # for the towers that are not locked: train only their last N blocks (-1 = all)
    standardize: bool = False  # z-score locked-tower features; folded into the saved heads
    # An image tower that trains only its last N blocks is fed cached outputs of its frozen lower blocks
    # (partial fine-tuning on CPU: one epoch costs seconds of top-block work, not a full forward pass).
    tower_cache: bool = True
    # --- loss
    loss: str = "clip"
    fn_mode: str = "mask"  # mask | positive | none
    fn_signals: list[str] = field(default_factory=lambda: ["group", "image", "phash", "title"])
    label_smoothing: float = 0.0
    hard_beta: float = 0.0  # hard-negative weighting of InfoNCE's denominator (0 = plain InfoNCE)
    i2i_weight: float = 0.0  # weight of the image–image term (two views of each photo; 0 = off)
    i2i_positives: str = "view"  # view = the product's other view; leaf = also same-leaf products of the batch
    i2i_temperature: float = 0.1
    # > 0: a separate image-image subspace of this many dims in the image embedding, trained by the i2i term
    # alone (models/heads.py); search rankings stay the contrastive heads'. sim_weight: its share in
    # image-image scores (re-chosen on val after training by bench/train_quality.py).
    sim_dim: int = 0
    sim_weight: float = 0.5
    init_temperature: float = 0.07
    siglip_bias: float = -10.0
    # --- optimisation
    epochs: int = 40  # val t2i MRR 0.619 / 0.635 / 0.637 / 0.634 at 30 / 40 / 50 / 80 epochs; R@10 drops after 50
    batch_size: int = 512
    batch_schedule: str = ""  # "EPOCH:BATCH,…", e.g. "0:256,10:512,20:1024" (e-CLIP grows the batch)
    batch_sampler: str = "random"  # random | leaf: batches made of same-leaf-category runs (harder negatives)
    leaf_chunk: int = 32  # leaf sampler: products of one leaf category that enter a batch together
    lr: float = 1e-3
    tower_lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_steps: int = 10
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    grad_cache_chunk: int = 0  # >0: GradCache with this many pairs per chunk (big batches, little memory)
    precision: str = "auto"  # auto = bf16 autocast on bf16 GPUs, and on bf16 CPUs when a tower trains; else fp32
    # --- augmentation
    augment: bool = True
    image_views: int = 2  # augmented views cached per training image when the image tower is locked
    clean_view_p: float = 0.5  # probability of the un-augmented image in a training pair
    # --- runtime
    seed: int = 0
    device: str = "auto"
    parallel: str = "auto"  # several processes: ddp (replicated) | fsdp (sharded) | auto = by size (train/parallel.py)
    num_workers: int = 2
    feature_batch_size: int = 16  # images per tower forward while caching (small batches are faster on CPU)
    cache_dir: str | None = None
    checkpoint_every: int = 200
    val_every: int = 1  # validate every N epochs (0 = only at the end)
    log_every: int = 10
    progress: bool = True
    resume: bool = False

    # ------------------------------------------------------------------ checks
    def validate(self) -> TrainConfig:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(self.lock in LOCK_MODES, f"lock must be one of {LOCK_MODES}, got {self.lock!r}")
        need(self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}")
        need(self.fn_mode in ("mask", "positive", "none"), f"fn_mode must be mask|positive|none, got {self.fn_mode!r}")
        need(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        need(self.head in ("linear", "mlp"), f"head must be linear|mlp, got {self.head!r}")
        need(self.batch_sampler in BATCH_SAMPLERS, f"batch_sampler must be one of {BATCH_SAMPLERS}, "
                                                   f"got {self.batch_sampler!r}")
        need(self.i2i_positives in I2I_POSITIVES, f"i2i_positives must be one of {I2I_POSITIVES}, "
                                                  f"got {self.i2i_positives!r}")
        need(self.sim_dim == 0 or (self.i2i_weight > 0 and 0 < self.sim_weight < 1 and self.head == "linear"
                                   and 0 < self.sim_dim < self.embed_dim),
             "sim_dim needs i2i_weight > 0, 0 < sim_weight < 1, linear heads and sim_dim < embed_dim")
        need(self.leaf_chunk >= 1 and self.i2i_weight >= 0 and self.hard_beta >= 0 and self.i2i_temperature > 0,
             "leaf_chunk must be ≥ 1, i2i_weight and hard_beta ≥ 0, i2i_temperature > 0")
        need(self.parallel in ("auto", "ddp", "fsdp"), f"parallel must be auto|ddp|fsdp, got {self.parallel!r}")
        need(self.epochs >= 1 and self.batch_size >= 2, "epochs must be ≥ 1 and batch_size ≥ 2")
        need(0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)")
        need(0.0 <= self.clean_view_p <= 1.0, "clean_view_p must be in [0, 1]")
        need(0.0 <= self.text.full_p <= 1.0, "text.full_p must be in [0, 1]")
        need(self.image_views >= 0 and self.grad_cache_chunk >= 0, "image_views and grad_cache_chunk must be ≥ 0")
        known = {"title", "category", "attributes", "description"}
        for fs in [self.text.fields, *self.text.variants]:
            need(bool(fs) and set(fs) <= known, f"text fields must be a non-empty subset of {sorted(known)}: {fs}")
        parse_batch_schedule(self.batch_schedule, self.batch_size)
        return self

    def batch_size_at(self, epoch: int) -> int:
        size = self.batch_size
        for start, b in parse_batch_schedule(self.batch_schedule, self.batch_size):
            if epoch >= start:
                size = b
        return size

    # ------------------------------------------------------------------ IO
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        d = dict(d)
        if isinstance(d.get("text"), dict):
            tknown = {f.name for f in fields(TextConfig)}
            bad = set(d["text"]) - tknown
            if bad:
                raise ValueError(f"unknown text config keys: {sorted(bad)}")
            d["text"] = TextConfig(**d["text"])
        return cls(**d)

    def save(self, path: str | Path) -> None:
        """YAML (``.yaml``/``.yml``) or JSON, written atomically."""
        from shopclip.core.io import atomic_write_json, atomic_write_text

        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        return cls.from_dict(data)

    def diff(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Fields that differ and matter for resuming (see RESUMABLE_CHANGES)."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in RESUMABLE_CHANGES and a[k] != b[k]}


def parse_batch_schedule(spec: str, default: int) -> list[tuple[int, int]]:
    """"0:256,10:1024" → [(0, 256), (10, 1024)]; epochs ascending, batch sizes ≥ 2."""
    if not spec.strip():
        return [(0, default)]
    out: list[tuple[int, int]] = []
    for part in spec.split(","):
        try:
            e, b = (int(x) for x in part.split(":"))
        except ValueError:
            raise ValueError(f"batch_schedule entries are EPOCH:BATCH, got {part!r}") from None
        if b < 2 or e < 0 or (out and e <= out[-1][0]):
            raise ValueError(f"batch_schedule needs ascending epochs and batch sizes ≥ 2: {spec!r}")
        out.append((e, b))
    if out[0][0] != 0:
        out.insert(0, (0, default))
    return out
