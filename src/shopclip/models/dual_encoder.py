"""Dual encoder: image tower + text tower + projection heads into one shared space.

LiT / e-CLIP style: the towers are separately pretrained; the heads (and optionally
the towers' last blocks) are what contrastive training aligns. The numpy-level
``encode_text`` / ``encode_image`` mirror sentence-transformers' ``encode`` so a
notebook user never touches batching, threads or normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from shopclip.core.images import open_image
from shopclip.core.io import atomic_write_json, read_json
from shopclip.models.engines.base import InferenceEngine, TorchEngine
from shopclip.models.text_batching import length_bucketed
from shopclip.models.text_batching import single as single_tokens
from shopclip.models.towers import ImageTower, TextTower, create_tower, create_tower_pair
from shopclip.models.transforms import ImageTransform

CONFIG_FILE = "config.json"
HEADS_FILE = "heads.safetensors"
TOWERS_FILE = "towers.safetensors"
FORMAT = "shopclip.dual_encoder/1"

ImageInput = str | Path | bytes | Image.Image


@dataclass
class DualEncoderConfig:
    name: str = "minilm-efflite0"
    text_tower: str = "minilm-l6"
    image_tower: str = "efficientnet-lite0"
    pair: str | None = None  # "hf-clip:<id>" etc.: both towers from one aligned checkpoint
    embed_dim: int = 256
    head: str = "linear"  # "linear" | "mlp" | "identity"
    # > 0: the last sim_dim dimensions of the image embedding are an image-image ("similar items") subspace
    # mixed in with weight sim_weight; the text side is zero there (models/heads.py), so search is unchanged.
    sim_dim: int = 0
    sim_weight: float = 0.0
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)
    text_max_length: int = 64
    image_size: int = 224
    image_mode: str = "pad"
    trained: bool = False  # heads aligned by contrastive training (text→image search is meaningful)
    # "pretrained": towers come from their source; "saved": from towers.safetensors; "partial": pretrained
    # towers with the fine-tuned blocks in towers.safetensors laid over them
    tower_weights: str = "pretrained"
    info: dict[str, Any] = field(default_factory=dict)  # provenance: training run, data, metrics

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DualEncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - {"format"}
        if unknown:
            raise ValueError(f"unknown dual-encoder config keys: {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}


def _make_head(kind: str, in_dim: int, out_dim: int, seed: int) -> nn.Module:
    if kind == "identity":
        if in_dim != out_dim:
            raise ValueError(f"identity head needs in_dim == embed_dim ({in_dim} != {out_dim})")
        return nn.Identity()
    gen = torch.Generator().manual_seed(seed)
    if kind == "linear":
        lin = nn.Linear(in_dim, out_dim, bias=False)
        # Semi-orthogonal init: before training, projected cosines ≈ tower cosines,
        # so image→image and text→text search already work with untrained heads.
        q, _ = torch.linalg.qr(torch.randn(max(in_dim, out_dim), min(in_dim, out_dim), generator=gen))
        with torch.no_grad():
            lin.weight.copy_(q.T if out_dim <= in_dim else q)
        return lin
    if kind == "mlp":
        hidden = max(in_dim, out_dim)
        mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        return mlp
    raise ValueError(f"unknown head {kind!r} (linear, mlp, identity)")


class DualEncoder(nn.Module):
    source_dir: Path | None = None  # the folder it was loaded from (None: built from a registry name)

    def __init__(self, config: DualEncoderConfig, image_tower: ImageTower, text_tower: TextTower) -> None:
        super().__init__()
        self.config = config
        self.image_tower = image_tower
        self.text_tower = text_tower
        if config.sim_dim > 0:
            from shopclip.models.heads import PaddedTextHead, SplitImageHead

            if config.head != "linear" or not 0 < config.sim_dim < config.embed_dim:
                raise ValueError("sim_dim needs linear heads and 0 < sim_dim < embed_dim")
            main = config.embed_dim - config.sim_dim
            self.image_head: nn.Module = SplitImageHead(image_tower.output_dim, main, config.sim_dim, config.sim_weight)
            self.text_head: nn.Module = PaddedTextHead(text_tower.output_dim, main, config.sim_dim)
        else:
            self.image_head = _make_head(config.head, image_tower.output_dim, config.embed_dim, seed=0)
            self.text_head = _make_head(config.head, text_tower.output_dim, config.embed_dim, seed=1)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        tf = image_tower.transform
        # An aligned hub checkpoint brings its own preprocessing; our towers follow the config.
        self.transform = tf if config.pair else ImageTransform(size=config.image_size, mean=tf.mean, std=tf.std,
                                                               mode=config.image_mode)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: DualEncoderConfig) -> DualEncoder:
        if config.pair:
            image_tower, text_tower = create_tower_pair(config.pair, max_length=config.text_max_length)
        else:
            image_tower = create_tower(config.image_tower, image_size=config.image_size)
            text_tower = create_tower(config.text_tower, max_length=config.text_max_length)
        return cls(config, image_tower, text_tower)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    # --------------------------------------------------------------- torch-level API
    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head(features).float(), dim=-1)

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(features).float(), dim=-1)

    def forward_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.project_image(self.image_tower(pixels))

    def forward_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.project_text(self.text_tower(tokens))

    def forward(self, pixels: torch.Tensor, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.forward_image(pixels), self.forward_text(tokens), self.clamped_logit_scale().exp()

    def clamped_logit_scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(0.0, self.config.max_logit_scale)

    # ------------------------------------------------------------ inference engine
    @property
    def engine(self) -> InferenceEngine:
        """What computes tower features for `encode_*` (torch unless `use_engine` / `load_model(engine=)` chose)."""
        eng = self.__dict__.get("_engine")
        if eng is None:
            eng = self.__dict__["_engine"] = TorchEngine(self.image_tower, self.text_tower)
        return eng

    def use_engine(self, engine: InferenceEngine) -> DualEncoder:
        self.__dict__["_engine"] = engine
        return self

    # --------------------------------------------------------------- numpy-level API
    def encode_text(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """(n, d) float32, L2-normalised. Length-bucketed batches through the engine; one text takes `encode_query`."""
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings")
        texts = list(texts)
        if len(texts) == 1 and not progress:
            return self.encode_query(texts[0])[None]
        batches = ((b.index, b.tokens) for b in length_bucketed(self.text_tower, texts, batch_size))
        return self._encode_batches(batches, lambda t: self.project_text(self.engine.text_features(t)),
                                    len(texts), progress, "texts")

    @torch.inference_mode()
    def encode_query(self, text: str) -> np.ndarray:
        """(d,) float32 for one text, the request path: no padding, no thread pool, one engine call."""
        was_training = self.training
        self.eval()
        try:
            return self.project_text(self.engine.text_features(single_tokens(self.text_tower, text)))[0].cpu().numpy()
        finally:
            self.train(was_training)

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        return self.transform(open_image(image))

    def encode_image(self, images: Sequence[ImageInput], batch_size: int = 32, num_workers: int = 4,
                     progress: bool = False) -> np.ndarray:
        """(n, d) float32, L2-normalised. Images are decoded in worker threads, one batch ahead."""
        if isinstance(images, str | Path | bytes | Image.Image):
            raise TypeError("encode_image takes a list of images or paths")
        if len(images) == 1:  # one image: no thread pool
            batches: Iterator[Any] = iter([(slice(0, 1), self.preprocess(images[0])[None])])
        else:
            batches = ((slice(i * batch_size, i * batch_size + len(b)), b)
                       for i, b in enumerate(self.iter_pixel_batches(images, batch_size, num_workers)))
        return self._encode_batches(batches, lambda x: self.project_image(self.engine.image_features(x)),
                                    len(images), progress, "images")

    def iter_pixel_batches(self, images: Sequence[ImageInput], batch_size: int, num_workers: int = 4) -> Iterator[torch.Tensor]:
        """Decode + transform in threads (PIL releases the GIL), keeping one batch in flight."""
        batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        if not batches:
            return
        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            def submit(batch: Sequence[ImageInput]) -> list[Future[torch.Tensor]]:
                return [pool.submit(self.preprocess, x) for x in batch]

            pending = submit(batches[0])
            for nxt in [*batches[1:], None]:
                following = submit(nxt) if nxt is not None else None
                yield torch.stack([f.result() for f in pending])
                if following is None:
                    break
                pending = following

    @torch.inference_mode()
    def _encode_batches(self, batches: Iterator[tuple[Any, Any]], fn: Any, n: int, progress: bool,
                        unit: str) -> np.ndarray:
        """Run `fn` on each (where, batch) and write its rows to `out[where]` (a slice or index array)."""
        was_training = self.training
        self.eval()
        out = np.zeros((n, self.embed_dim), dtype=np.float32)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, unit=unit, desc=f"encode {unit}")
        try:
            for where, batch in batches:
                vecs = fn(batch).cpu().numpy()
                out[where] = vecs
                if bar is not None:
                    bar.update(len(vecs))
        finally:
            if bar is not None:
                bar.close()
            self.train(was_training)
        return out

    # ----------------------------------------------------------------- persistence
    def heads_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("image_tower.", "text_tower."))}

    def save(self, folder: str | Path, *, save_towers: bool | None = None, tower_keys: Sequence[str] | None = None,
             half: bool = False) -> Path:
        """One folder: config.json + heads.safetensors (+ towers.safetensors when towers were trained).

        ``tower_keys`` (partial fine-tuning) saves only those tower tensors, in float16
        (``tower_weights = "partial"``): loading rebuilds the pretrained towers and lays
        them over. ``half`` stores the heads in float16 too (the shipped default: half the
        wheel size; loading casts them back to float32).
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if tower_keys is None and self.config.tower_weights == "partial":
            tower_keys = getattr(self, "partial_keys", None)  # a loaded partial model saves the same blocks
        if save_towers is None:
            save_towers = self.config.tower_weights in ("saved", "partial")
        if tower_keys is not None:
            save_towers = True
            self.partial_keys = list(tower_keys)
        self.config.tower_weights = ("partial" if tower_keys is not None else "saved") if save_towers else "pretrained"

        def cast(v: torch.Tensor, to_half: bool) -> torch.Tensor:
            v = v.detach().cpu().contiguous()
            return v.half() if to_half and v.is_floating_point() else v

        tmp = folder / f".{HEADS_FILE}.tmp"
        save_file({k: cast(v, half) for k, v in self.heads_state().items()}, str(tmp))
        tmp.replace(folder / HEADS_FILE)
        if save_towers:
            keep = set(tower_keys) if tower_keys is not None else None
            towers = {k: cast(v, keep is not None) for k, v in self.state_dict().items()
                      if k.startswith(("image_tower.", "text_tower.")) and (keep is None or k in keep)}
            tmp = folder / f".{TOWERS_FILE}.tmp"
            save_file(towers, str(tmp))
            tmp.replace(folder / TOWERS_FILE)
        elif (folder / TOWERS_FILE).exists():
            (folder / TOWERS_FILE).unlink()
        atomic_write_json(folder / CONFIG_FILE, self.config.to_dict())
        return folder

    @classmethod
    def load(cls, folder: str | Path, map_location: str = "cpu") -> DualEncoder:
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg_path = folder / CONFIG_FILE
        if not cfg_path.exists():
            raise FileNotFoundError(f"{folder} is not a shopclip model folder (no {CONFIG_FILE})")
        config = DualEncoderConfig.from_dict(read_json(cfg_path))
        model = cls.from_config(config)
        state = load_file(str(folder / HEADS_FILE), device=map_location)
        if config.tower_weights in ("saved", "partial"):
            towers = load_file(str(folder / TOWERS_FILE), device=map_location)
            state.update(towers)
            if config.tower_weights == "partial":
                model.partial_keys = list(towers)
        state = {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if config.tower_weights == "saved" or not k.startswith(("image_tower.", "text_tower."))]
        if missing or unexpected:
            raise ValueError(f"model weights in {folder} do not match the config: missing={missing[:5]} unexpected={unexpected[:5]}")
        model.eval()
        model.source_dir = folder  # where the engine caches its exported graphs
        return model
