"""On-disk cache of locked-tower outputs, keyed by tower fingerprint + content hash.

It lives in `models` (not `train`) because it caches what the towers output: the trainer
fills it, and the embed step reads it, without either importing the other.

With a tower locked (LiT), its output for a given image or text never changes, so it
is computed once: 8k product photos through EfficientNet-Lite0 take minutes on two CPU
cores, and every later heads-only run reads them back in a second. The cache key is

* the *tower fingerprint*: tower name, a hash of every weight and buffer, and the
  preprocessing that decides what the tower sees (image size/mean/std/pad mode, text
  max length) — a retrained or differently preprocessed tower gets its own namespace;
* the *content hash*: the image file's SHA-1 (plus which augmented view) or the
  text's SHA-1 — so a renamed file is a hit and an edited title is a miss.

Layout: ``ROOT/<kind>-<fingerprint[:20]>/meta.json`` and ``shard-*.npz`` files (``keys``,
``feats``), each written to a temp name and renamed; a run killed mid-way keeps every
finished shard. Several processes may add shards at once (torchrun ranks) because
every shard has a unique name.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shopclip.core.hashing import json_sha1, sha1_bytes
from shopclip.core.images import open_image
from shopclip.core.io import atomic_write_json
from shopclip.models.augment import AugmentConfig, augment_image, view_rng
from shopclip.models.text_batching import length_bucketed

CLEAN_VIEW = "clean"


def cache_root() -> Path:
    """`$SHOPCLIP_CACHE_DIR`, else `$XDG_CACHE_HOME/shopclip`, else `~/.cache/shopclip`."""
    env = os.environ.get("SHOPCLIP_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shopclip"


def default_cache_dir() -> Path:
    """Where tower features are cached: `features/` under :func:`cache_root`."""
    return cache_root() / "features"


def tower_fingerprint(tower: nn.Module, **preprocessing: Any) -> str:
    """Changes whenever the tower's output for the same input can change."""
    parts = [json_sha1({"name": getattr(tower, "name", type(tower).__name__), "class": type(tower).__name__,
                        **preprocessing})]
    for key, value in sorted(tower.state_dict().items()):
        t = value.detach().cpu().contiguous()
        raw = t.view(torch.uint8) if t.dtype == torch.bfloat16 else t
        parts.append(key + str(tuple(t.shape)) + sha1_bytes(raw.numpy().tobytes()))
    return sha1_bytes("|".join(parts).encode())


def engine_numerics(engine: Any) -> dict[str, str]:
    """{kind: tag} for the towers whose numbers the inference engine changes (int8); {} for torch/fp32 ONNX."""
    if engine is None:
        return {}
    tags = {kind: engine.numerics(kind) for kind in ("image", "text")}
    return {k: v for k, v in tags.items() if v}


def model_fingerprint(model: Any, *, numerics: bool = True) -> str:
    """Changes whenever the dual encoder's outputs can change (config, any trained weight, an int8 engine).

    Config entries still at their default are left out, so a release that adds a config field
    (with a default that keeps today's behaviour) does not orphan every stored embedding.
    `numerics=False` leaves the engine out: the fingerprint of the embedding *space* (the same
    weights under torch, onnx or onnx-int8), which is what a head mapping into it depends on.
    """
    cfg = model.config.to_dict()
    defaults = type(model.config)().to_dict()
    h = [json_sha1({k: v for k, v in cfg.items() if k != "info" and (k not in defaults or v != defaults[k])})]
    state = model.heads_state() if model.config.tower_weights == "pretrained" else model.state_dict()
    for k in sorted(state):
        h.append(k + sha1_bytes(state[k].detach().cpu().float().numpy().tobytes()))
    tags = engine_numerics(getattr(model, "engine", None)) if numerics else {}
    if tags:  # fp32 engines keep the torch fingerprint: their vectors are interchangeable
        h.append(json_sha1({"engine_numerics": tags}))
    return sha1_bytes("|".join(h).encode())


def _with_engine(fp: str, engine: Any, kind: str) -> str:
    tag = engine_numerics(engine).get(kind) if engine is not None else None
    return sha1_bytes(f"{fp}|{tag}".encode()) if tag else fp


def image_fingerprint(model: Any, engine: Any = None) -> str:
    """The image tower's cache key; with an `engine` that changes the numbers (int8), that engine's too."""
    tf = model.transform
    fp = tower_fingerprint(model.image_tower, size=tf.size, mean=list(tf.mean), std=list(tf.std), mode=tf.mode,
                           fill=list(tf.fill))
    return _with_engine(fp, engine, "image")


def text_fingerprint(model: Any, engine: Any = None) -> str:
    fp = tower_fingerprint(model.text_tower, max_length=getattr(model.text_tower, "max_length", None))
    return _with_engine(fp, engine, "text")


class FeatureCache:
    """Content-hash → feature vector, for one tower fingerprint (one folder of shards)."""

    def __init__(self, root: str | Path, kind: str, fingerprint: str, dim: int, dtype: str = "float32") -> None:
        self.folder = Path(root) / f"{kind}-{fingerprint[:20]}"
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self._index: dict[str, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        self._seen_files: set[str] = set()
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "meta.json"
        if not meta.exists():
            atomic_write_json(meta, {"kind": kind, "fingerprint": fingerprint, "dim": dim, "dtype": dtype})
        self.refresh()

    def refresh(self) -> None:
        """Pick up shards written since (by this or another process)."""
        for path in sorted(self.folder.glob("shard-*.npz")):
            if path.name in self._seen_files:
                continue
            try:
                with np.load(path, allow_pickle=False) as z:
                    keys, feats = z["keys"], z["feats"]
            except (OSError, ValueError, KeyError):
                continue  # a foreign or damaged file: ignore it rather than fail training
            if feats.ndim != 2 or feats.shape[1] != self.dim or feats.dtype != self.dtype:
                continue
            self._seen_files.add(path.name)
            s = len(self._shards)
            self._shards.append(feats)
            for i, k in enumerate(keys.tolist()):
                self._index[k] = (s, i)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def missing(self, keys: Sequence[str]) -> list[int]:
        return [i for i, k in enumerate(keys) if k not in self._index]

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """(n, dim) rows; KeyError names the first missing key."""
        out = np.empty((len(keys), self.dim), dtype=self.dtype)
        for i, k in enumerate(keys):
            s, j = self._index[k]
            out[i] = self._shards[s][j]
        return out

    def add(self, keys: Sequence[str], feats: np.ndarray) -> None:
        """Write one shard atomically and index it."""
        if not len(keys):
            return
        feats = np.ascontiguousarray(feats, dtype=self.dtype)
        name = f"shard-{uuid.uuid4().hex}.npz"
        fd, tmp = tempfile.mkstemp(prefix=".shard-", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as fp:
                np.savez(fp, keys=np.asarray(list(keys), dtype=str), feats=feats)
                fp.flush()
                os.fsync(fp.fileno())
            os.replace(tmp, self.folder / name)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._seen_files.add(name)
        s = len(self._shards)
        self._shards.append(feats)
        for i, k in enumerate(keys):
            self._index[k] = (s, i)

    def compact(self) -> None:
        """Merge all shards into one (call from one process only, e.g. rank 0 after a barrier)."""
        self.refresh()
        old = sorted(self._seen_files)
        if len(old) <= 1:
            return
        keys = list(self._index)
        feats = self.get(keys)
        self._index, self._shards, self._seen_files = {}, [], set()
        self.add(keys, feats)
        for name in old:
            (self.folder / name).unlink(missing_ok=True)


@dataclass(frozen=True)
class ImageItem:
    """One image to featurise: where it is, its content hash, and whether it may be mirrored."""

    path: str
    sha1: str
    can_flip: bool = True


def view_key(sha1: str, view: str) -> str:
    return f"{sha1}:{view}"


def aug_view_name(aug: AugmentConfig, seed: int, k: int) -> str:
    """Name of the k-th cached augmented view (k ≥ 1) for an augmentation config and seed."""
    return f"aug{k}-{json_sha1([aug.to_dict(), seed])[:12]}"


def load_view(item: ImageItem, view: str, model: Any, aug: AugmentConfig, seed: int) -> torch.Tensor:
    """Decode, (augment), pad to square and normalise exactly as inference does."""
    img = open_image(item.path)
    if view != CLEAN_VIEW:
        img = augment_image(img, view_rng(seed, item.sha1, view), aug, can_flip=item.can_flip)
    return model.transform(img)


def _batched_forward(fn: Callable[[Any], torch.Tensor], batches: Any, on_batch: Callable[[int, np.ndarray], None]) -> None:
    with torch.inference_mode():
        for i, b in batches:
            on_batch(i, fn(b).float().cpu().numpy())


def compute_image_features(model: Any, items: Sequence[ImageItem], views: Sequence[str], cache: FeatureCache, *,
                           aug: AugmentConfig, seed: int, batch_size: int = 16, num_workers: int = 2,
                           flush_every: int = 512, progress: bool = False, engine: Any = None) -> int:
    """Fill the cache with tower features of every (item, view) not in it yet; returns how many were computed.

    `engine` (an inference engine, e.g. ``model.engine``) computes the features instead of the
    torch tower; the cache must then be keyed by ``image_fingerprint(model, engine)``."""
    todo = [(it, v) for v in views for it in items if view_key(it.sha1, v) not in cache]
    seen: set[str] = set()
    todo = [(it, v) for it, v in todo if not (view_key(it.sha1, v) in seen or seen.add(view_key(it.sha1, v)))]
    if not todo:
        return 0
    tower = model.image_tower
    was_training = tower.training
    tower.eval()
    bar = _bar(progress, len(todo), "image features")
    pend_keys: list[str] = []
    pend_feats: list[np.ndarray] = []

    def flush() -> None:
        if pend_keys:
            cache.add(list(pend_keys), np.concatenate(pend_feats))
            pend_keys.clear()
            pend_feats.clear()

    try:
        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            chunks = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]

            def submit(chunk: list[tuple[ImageItem, str]]) -> list[Any]:
                return [pool.submit(load_view, it, v, model, aug, seed) for it, v in chunk]

            def batches() -> Any:
                pending = submit(chunks[0])
                for n in range(len(chunks)):
                    nxt = submit(chunks[n + 1]) if n + 1 < len(chunks) else None
                    yield n, torch.stack([f.result() for f in pending])
                    pending = nxt

            def on_batch(n: int, feats: np.ndarray) -> None:
                pend_keys.extend(view_key(it.sha1, v) for it, v in chunks[n])
                pend_feats.append(feats)
                if len(pend_keys) >= flush_every:
                    flush()
                if bar is not None:
                    bar.update(len(chunks[n]))

            _batched_forward(engine.image_features if engine is not None else tower, batches(), on_batch)
        flush()
    finally:
        tower.train(was_training)
        if bar is not None:
            bar.close()
    return len(todo)


def text_key(text: str) -> str:
    return sha1_bytes(text.encode("utf-8"))


def compute_text_features(model: Any, texts: Sequence[str], cache: FeatureCache, *, batch_size: int = 64,
                          flush_every: int = 2048, progress: bool = False, engine: Any = None) -> int:
    """Fill the cache with text-tower features of every text not in it yet; returns how many were computed.

    Length-bucketed batches (little padding); `engine` as in :func:`compute_image_features`."""
    uniq = list(dict.fromkeys(t for t in texts if text_key(t) not in cache))
    if not uniq:
        return 0
    tower = model.text_tower
    fn = engine.text_features if engine is not None else tower
    was_training = tower.training
    tower.eval()
    bar = _bar(progress, len(uniq), "text features")
    keys: list[str] = []
    feats: list[np.ndarray] = []
    try:
        batches = length_bucketed(tower, uniq, batch_size)

        def on_batch(n: int, f: np.ndarray) -> None:
            keys.extend(text_key(uniq[j]) for j in batches[n].index)
            feats.append(f)
            if len(keys) >= flush_every:
                cache.add(list(keys), np.concatenate(feats))
                keys.clear()
                feats.clear()
            if bar is not None:
                bar.update(len(batches[n].index))

        _batched_forward(fn, ((n, b.tokens) for n, b in enumerate(batches)), on_batch)
        if keys:
            cache.add(keys, np.concatenate(feats))
    finally:
        tower.train(was_training)
        if bar is not None:
            bar.close()
    return len(uniq)


def _bar(progress: bool, total: int, desc: str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True)
