"""What gets evaluated: a model or a baseline, as functions from images/texts to vectors.

Embedding is the expensive part of an evaluation, so vectors are cached in
:class:`~shopclip.index.store.EmbeddingStore` folders and reused by every run:

* every dual encoder whose towers are the *pretrained* ones (the untrained dual encoder,
  a trained model whose towers stayed frozen, ``text-tower`` / ``image-tower``
  baselines) shares one cache of raw tower features per tower; its own embeddings are
  its heads applied to those, which takes milliseconds. So the model and all default
  baselines together cost one pass over the images;
* a model whose towers were fine-tuned (``tower_weights == "saved"``) or a hub pair gets a
  cache of its own, keyed by :func:`shopclip.models.features.model_fingerprint`.

Stores are keyed by content (sha1 of what produced the vector + the image file or the
text), not by product id, so synthetic re-listings, prompts and a second catalog holding
the same photo all hit the same entries. ``embed_catalog`` is not used because it embeds
catalog products only and in the model's space; the eval also needs raw tower features
(e.g. 2024-d and 768-d for the multi-level towers) and non-catalog inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shopclip.core.hashing import file_sha1, json_sha1, sha1_bytes
from shopclip.index.store import EmbeddingStore, l2_normalize
from shopclip.models import DualEncoder, load_model, resolve_model_ref

EncodeFn = Callable[[Sequence[Any]], np.ndarray]
DEFAULT_BASELINES = ("text-tower", "image-tower", "untrained")


class CachedEncoder:
    """``encode`` with its outputs kept in an EmbeddingStore under ``root/<key>``.

    The store re-normalises rows; the original norm is kept in each row's meta and
    restored on read (``keep_norm``) because an MLP head is not scale-invariant.
    """

    def __init__(self, root: Path, key: str, dim: int, modality: str, encode: EncodeFn,
                 *, chunk: int = 256, keep_norm: bool = False, progress: bool = False) -> None:
        self.root = Path(root) / key
        self.key = key
        self.dim = dim
        self.modality = modality
        self.encode = encode
        self.chunk = chunk
        self.keep_norm = keep_norm
        self.progress = progress

    def content_key(self, item: Any) -> str:
        if self.modality == "text":
            return sha1_bytes(f"{self.key}\x1f{item}".encode())
        return sha1_bytes(f"{self.key}\x1f{file_sha1(item)}".encode())

    def __call__(self, items: Sequence[Any]) -> np.ndarray:
        items = list(items)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        keys = [self.content_key(x) for x in items]
        store = EmbeddingStore.create(self.root, model=self.key, dim=self.dim, modalities=(self.modality,),
                                      dtype="float32")
        have = set(store.ids)
        todo: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in have and k not in todo:
                todo[k] = i
        if todo:
            bar = None
            if self.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(todo), desc=f"encode {self.modality} ({self.key[:28]})", unit=self.modality,
                           leave=False)
            pending = list(todo.items())
            for start in range(0, len(pending), self.chunk):
                part = pending[start : start + self.chunk]
                vecs = np.asarray(self.encode([items[i] for _, i in part]), dtype=np.float32)
                norms = np.linalg.norm(vecs, axis=1)
                ids = [k for k, _ in part]
                store.append(ids, ids, {self.modality: vecs}, [{"norm": float(n)} for n in norms])
                if bar is not None:
                    bar.update(len(part))
            if bar is not None:
                bar.close()
            store.compact()
        row = {k: i for i, k in enumerate(store.ids)}
        idx = np.fromiter((row[k] for k in keys), dtype=np.int64, count=len(keys))
        out = np.array(store.vectors(self.modality)[idx])
        if self.keep_norm:
            meta = store.meta()
            norms = np.asarray([meta[i].get("norm", 1.0) for i in idx], dtype=np.float32)
            out *= norms[:, None]
        return out


@dataclass
class Embedder:
    """One thing under evaluation: image and/or text encoders (L2-normalised outputs).

    ``aligned`` means text and image live in one trained space (cross-modal scores mean
    something); the untrained dual encoder has both modalities but is not aligned.
    """

    name: str
    kind: str  # "dual", "image-tower", "text-tower"
    info: dict[str, Any]
    image_fn: EncodeFn | None = None
    text_fn: EncodeFn | None = None
    aligned: bool = False

    @property
    def has_image(self) -> bool:
        return self.image_fn is not None

    @property
    def has_text(self) -> bool:
        return self.text_fn is not None

    @property
    def cross_modal(self) -> bool:
        """Text and image vectors share one space (same dim), aligned or not."""
        return self.kind == "dual" and self.has_image and self.has_text

    def images(self, paths: Sequence[str | Path]) -> np.ndarray:
        if self.image_fn is None:
            raise ValueError(f"{self.name} has no image encoder")
        return l2_normalize(self.image_fn([Path(p) for p in paths]))

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        if self.text_fn is None:
            raise ValueError(f"{self.name} has no text encoder")
        return l2_normalize(self.text_fn(list(texts)))


# --------------------------------------------------------------------------- building


def _tower_keys(model: DualEncoder) -> tuple[str, str]:
    tf = model.transform
    image_key = "tower-image-" + json_sha1({"tower": model.config.image_tower, "size": tf.size, "mode": tf.mode,
                                           "mean": list(tf.mean), "std": list(tf.std), "fill": list(tf.fill)})[:16]
    text_key = "tower-text-" + json_sha1({"tower": model.config.text_tower,
                                         "max_length": model.text_tower.max_length})[:16]
    return image_key, text_key


def _shares_pretrained_towers(model: DualEncoder) -> bool:
    return model.config.pair is None and model.config.tower_weights == "pretrained"


@dataclass
class TowerFeatures:
    """Raw (un-projected) tower features of one dual encoder's pretrained towers, cached."""

    image: CachedEncoder
    text: CachedEncoder

    @classmethod
    def of(cls, model: DualEncoder, cache: Path, *, image_batch_size: int = 16, text_batch_size: int = 64,
           num_workers: int = 2, progress: bool = False) -> TowerFeatures:
        image_key, text_key = _tower_keys(model)

        @torch.inference_mode()
        def encode_images(paths: Sequence[Any]) -> np.ndarray:
            model.eval()
            out = [model.image_tower(b).float().cpu().numpy()
                   for b in model.iter_pixel_batches(list(paths), image_batch_size, num_workers)]
            return np.concatenate(out) if out else np.zeros((0, model.image_tower.output_dim), np.float32)

        @torch.inference_mode()
        def encode_texts(texts: Sequence[Any]) -> np.ndarray:
            # Batches of similar length: short titles are not padded to a long description.
            model.eval()
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            out = np.zeros((len(texts), model.text_tower.output_dim), np.float32)
            for i in range(0, len(order), text_batch_size):
                idx = order[i : i + text_batch_size]
                batch = model.text_tower.tokenize([texts[j] for j in idx])
                out[idx] = model.text_tower(batch).float().numpy()
            return out

        return cls(
            image=CachedEncoder(cache, image_key, model.image_tower.output_dim, "image", encode_images,
                                keep_norm=True, progress=progress),
            text=CachedEncoder(cache, text_key, model.text_tower.output_dim, "text", encode_texts,
                               chunk=1024, keep_norm=True, progress=progress),
        )


def _project(fn: Callable[[torch.Tensor], torch.Tensor], feats: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return fn(torch.from_numpy(np.ascontiguousarray(feats))).float().numpy()


def _model_info(model: DualEncoder, ref: str) -> dict[str, Any]:
    from shopclip.models.features import model_fingerprint

    return {"ref": ref, "resolved": resolve_model_ref(ref) if ref else None, "name": model.name,
            "trained": bool(model.config.trained), "fingerprint": model_fingerprint(model),
            "tower_weights": model.config.tower_weights, "image_tower": model.config.image_tower,
            "text_tower": model.config.text_tower, "embed_dim": model.embed_dim, "head": model.config.head,
            "pair": model.config.pair, "info": model.config.info}


def dual_embedder(model: DualEncoder, name: str, ref: str, cache: Path, *, progress: bool = False,
                  image_batch_size: int = 16, num_workers: int = 2) -> Embedder:
    """A dual encoder, through the shared tower cache when its towers are the pretrained ones."""
    info = _model_info(model, ref)
    aligned = bool(model.config.trained or model.config.pair)
    if _shares_pretrained_towers(model):
        towers = TowerFeatures.of(model, cache, image_batch_size=image_batch_size, num_workers=num_workers,
                                  progress=progress)
        return Embedder(name, "dual", info,
                        image_fn=lambda paths: _project(model.project_image, towers.image(paths)),
                        text_fn=lambda texts: _project(model.project_text, towers.text(texts)),
                        aligned=aligned)
    key = "model-" + info["fingerprint"][:16]
    image = CachedEncoder(cache, key + "-image", model.embed_dim, "image",
                          lambda p: model.encode_image(list(p), batch_size=image_batch_size, num_workers=num_workers),
                          progress=progress)
    text = CachedEncoder(cache, key + "-text", model.embed_dim, "text",
                         lambda t: model.encode_text(list(t)), chunk=1024, progress=progress)
    return Embedder(name, "dual", info, image_fn=image, text_fn=text, aligned=aligned)


def untrained_twin(model: DualEncoder) -> DualEncoder:
    """The model's architecture with fresh (untrained, deterministic) heads and pretrained towers."""
    cfg = dataclasses.replace(model.config, trained=False, info={}, tower_weights="pretrained")
    if _shares_pretrained_towers(model):
        twin = DualEncoder(cfg, model.image_tower, model.text_tower)  # towers shared, not reloaded
    else:
        twin = DualEncoder.from_config(cfg)
    return twin.eval()


def tower_embedders(model: DualEncoder, cache: Path, *, progress: bool = False, image_batch_size: int = 16,
                    num_workers: int = 2) -> dict[str, Embedder]:
    """``image-tower`` and ``text-tower`` baselines: raw pretrained tower features, no heads."""
    base = model if _shares_pretrained_towers(model) else untrained_twin(model)
    towers = TowerFeatures.of(base, cache, image_batch_size=image_batch_size, num_workers=num_workers,
                              progress=progress)
    img_info = {"ref": "image-tower", "tower": base.config.image_tower, "dim": base.image_tower.output_dim,
                "note": "pretrained image tower's pooled features (for a multi-level tower: head + stage "
                        "averages, each L2-normalised), no projection head"}
    txt_info = {"ref": "text-tower", "tower": base.config.text_tower, "dim": base.text_tower.output_dim,
                "note": "pretrained text tower's mean-pooled features (for a multi-level tower: last layer + "
                        "embedding layer, each L2-normalised), no projection head"}
    return {
        "image-tower": Embedder("image-tower", "image-tower", img_info, image_fn=towers.image),
        "text-tower": Embedder("text-tower", "text-tower", txt_info, text_fn=towers.text),
    }


def build_embedders(model_ref: str, baselines: Sequence[str], cache: Path, *, progress: bool = False,
                    image_batch_size: int = 16, num_workers: int = 2) -> tuple[Embedder, dict[str, Embedder], list[str]]:
    """The model under test, its baselines by name, and notes on baselines that were skipped."""
    kw = {"progress": progress, "image_batch_size": image_batch_size, "num_workers": num_workers}
    model = load_model(model_ref)
    main = dual_embedder(model, "model", model_ref, cache, **kw)
    out: dict[str, Embedder] = {}
    notes: list[str] = []
    for b in dict.fromkeys(baselines):
        if b in ("text-tower", "image-tower"):
            if model.config.pair:
                notes.append(f"baseline {b}: skipped, {model_ref} is a hub pair whose towers are already aligned")
                continue
            out[b] = tower_embedders(model, cache, **kw)[b]
        elif b == "untrained":
            if model.config.pair:
                notes.append("baseline untrained: skipped, a hub pair has no untrained heads")
                continue
            if not model.config.trained and _shares_pretrained_towers(model):
                notes.append("baseline untrained: the model itself is the untrained dual encoder "
                             "(no trained heads yet), so its numbers equal the model's")
            out[b] = dual_embedder(untrained_twin(model), "untrained", f"{model.config.name} (untrained heads)",
                                   cache, **kw)
        else:
            out[b] = dual_embedder(load_model(b), b, b, cache, **kw)
    return main, out, notes


__all__ = ["DEFAULT_BASELINES", "CachedEncoder", "Embedder", "TowerFeatures", "build_embedders", "dual_embedder",
           "tower_embedders", "untrained_twin"]
