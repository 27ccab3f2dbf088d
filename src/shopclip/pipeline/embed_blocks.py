"""The embed step as a block job: any runner (this process, a Ray cluster) fills the same store.

The driver plans exactly as :func:`shopclip.pipeline.embed.embed_catalog` does (products
whose content hash the store already holds are skipped, so a resumed job redoes only
unfinished blocks), workers load the model once each and embed blocks of rows, and the
driver appends every finished block to the embedding store as one part. The result is the
store the local runner writes: same ids in catalog order, same hashes and meta, vectors
equal within floating-point tolerance (batches are cut differently).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shopclip.catalog import Catalog
from shopclip.models import DualEncoder
from shopclip.models.factory import resolve_model_ref
from shopclip.pipeline.embed import EmbedResult, EmbedTask, commit_embeddings, open_store, plan_embedding
from shopclip.pipeline.runners.base import Batch, BlockJob, Runner

__all__ = ["EmbedWorker", "WorkerModelMismatchError", "embed_with_runner"]

log = logging.getLogger(__name__)


class WorkerModelMismatchError(RuntimeError):
    """A worker loaded other weights than the driver for the same model reference."""


class EmbedWorker:
    """One model load per process (per Ray actor); embeds a block of (id, text, image) rows.

    A row whose image cannot be read comes back with zero vectors and its reason in
    `error`, so one bad photo neither fails the block (which Ray would retry) nor is lost.
    """

    def __init__(self, model_ref: str, fingerprint: str, image_batch_size: int = 16, text_batch_size: int = 64,
                 num_workers: int = 2, engine: str | None = None) -> None:
        import torch

        from shopclip.models import load_model
        from shopclip.models.features import model_fingerprint

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        # the driver's engine, so the vectors (and the fingerprint checked below) are the driver's; int8 graphs
        # are rebuilt here from the same weights. On a GPU cluster run the driver with --engine torch.
        model = load_model(model_ref, engine=engine)
        got = model_fingerprint(model)
        if got != fingerprint:
            raise WorkerModelMismatchError(
                f"model {model_ref!r} loaded on this worker has fingerprint {got[:10]}, the driver's has "
                f"{fingerprint[:10]}: every node needs the same shopclip version and model files")
        if torch.cuda.is_available():  # Ray hands a GPU actor exactly its own device
            model = model.to("cuda")
            num_workers = max(num_workers, torch.get_num_threads())  # decoding feeds the GPU: all the actor's CPUs
        self.model = model.eval()
        self.image_batch_size, self.text_batch_size, self.num_workers = image_batch_size, text_batch_size, num_workers

    def __call__(self, batch: Batch) -> Batch:
        ids, texts, images = list(batch["id"]), [str(t) for t in batch["text"]], [str(p) for p in batch["image"]]
        n, dim = len(ids), self.model.embed_dim
        errors = [""] * n
        try:
            img = self.model.encode_image(images, batch_size=self.image_batch_size, num_workers=self.num_workers)
        except Exception:  # find the bad rows one by one; the others are still embedded
            img = np.zeros((n, dim), dtype=np.float32)
            for i, path in enumerate(images):
                try:
                    img[i] = self.model.encode_image([path], num_workers=1)[0]
                except Exception as e:
                    errors[i] = f"image {path}: {type(e).__name__}: {e}"
        txt = self.model.encode_text(texts, batch_size=self.text_batch_size)
        return {"id": np.asarray(ids), "hash": np.asarray(batch["hash"]), "image_vec": img.astype(np.float32),
                "text_vec": txt.astype(np.float32), "error": np.asarray(errors, dtype=object)}


@dataclass
class _Committer:
    """Driver side: appends each finished block to the store, counting rows so none is lost or doubled."""

    store: Any
    catalog: Catalog
    tasks: dict[str, EmbedTask]
    seen: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def __call__(self, out: Batch) -> None:
        ok = [i for i, e in enumerate(out["error"]) if not e]
        for i, e in enumerate(out["error"]):
            if e:
                self.failed[str(out["id"][i])] = str(e)
        tasks = [self.tasks[str(out["id"][i])] for i in ok]
        for t, h in zip(tasks, (str(out["hash"][i]) for i in ok), strict=True):
            if t.hash != h:  # a worker must echo the planned hash; anything else is a bug, never stored
                raise RuntimeError(f"{t.product.id}: worker returned hash {h[:10]}, planned {t.hash[:10]}")
        if tasks:
            commit_embeddings(self.store, self.catalog, tasks, np.asarray(out["image_vec"])[ok],
                              np.asarray(out["text_vec"])[ok])
        for i in out["id"]:
            self.seen[str(i)] = self.seen.get(str(i), 0) + 1


def embed_with_runner(
    runner: Runner,
    catalog: Catalog,
    out: str | Path,
    model: DualEncoder,
    model_ref: str,
    *,
    texts: dict[str, str] | None = None,
    images: dict[str, Path] | None = None,
    dtype: str = "float16",
    block_size: int | None = None,
    image_batch_size: int = 16,
    text_batch_size: int = 64,
    num_workers: int = 2,
    progress: bool = True,
) -> EmbedResult:
    """Embed the products the store at `out` lacks on `runner`; `model` (loaded here) fixes the fingerprint.

    Workers load `model_ref` themselves (a name, or a folder every node can read) and must
    arrive at the same fingerprint. Products that failed (an unreadable image) are listed
    in the result's summary and left out of the store; the next run tries them again.
    """
    from shopclip.models.features import model_fingerprint

    store, replaced = open_store(out, model, dtype)
    todo = plan_embedding(catalog, store, texts=texts, images=images)
    committer = _Committer(store, catalog, {t.product.id: t for t in todo})
    if todo:
        ref = resolve_model_ref(model_ref)  # a folder becomes absolute: workers do not share our cwd
        job = BlockJob(
            name="embed",
            rows={"id": np.asarray([t.product.id for t in todo]), "text": np.asarray([t.text for t in todo]),
                  "image": np.asarray([str(Path(t.image).resolve()) for t in todo]),
                  "hash": np.asarray([t.hash for t in todo])},
            worker=EmbedWorker,
            worker_kwargs={"model_ref": ref, "fingerprint": model_fingerprint(model),
                           "image_batch_size": image_batch_size, "text_batch_size": text_batch_size,
                           "num_workers": num_workers, "engine": model.engine.name},
            commit=committer,
            block_size=block_size,
            gpu=True,
        )
        runner.run(job, progress=progress)
    _check_complete(committer, todo)
    store.compact(keep_ids=catalog.ids)
    return EmbedResult(total=len(catalog), embedded=len(todo) - len(committer.failed),
                       skipped=len(catalog) - len(todo), store=Path(out), replaced=replaced,
                       failed=dict(committer.failed), returned=sum(committer.seen.values()))


def _check_complete(committer: _Committer, todo: list[EmbedTask]) -> None:
    """Every planned product came back exactly once; a runner that loses or doubles rows is an error."""
    planned = {t.product.id for t in todo}
    missing = planned - set(committer.seen)
    doubled = sorted(i for i, c in committer.seen.items() if c > 1)
    extra = set(committer.seen) - planned
    if missing or extra:
        raise RuntimeError(f"embed job incomplete: {len(missing)} planned products never came back "
                           f"(e.g. {sorted(missing)[:3]}), {len(extra)} unplanned came back")
    if doubled:  # harmless for the store (a later row supersedes), but a runner bug worth knowing
        log.warning("%d products came back more than once (e.g. %s)", len(doubled), doubled[:3])
    for i, reason in committer.failed.items():
        log.warning("not embedded: %s: %s", i, reason)
