"""`--runner local` (the default): everything in this process, as shopclip always ran."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shopclip.catalog import Catalog
from shopclip.models import DualEncoder
from shopclip.pipeline.embed import EmbedResult, embed_catalog
from shopclip.pipeline.runners.base import BlockJob, commit_all


@dataclass
class LocalRunner:
    """Runs block jobs block by block in this process; embeds with the tuned single-process path."""

    name: str = "local"

    def run(self, job: BlockJob, *, progress: bool = True) -> int:
        """One worker, built once; each block is computed and committed before the next starts."""
        worker = job.worker(**job.worker_kwargs)
        return commit_all(job, (worker(b) for b in job.blocks(job.block_size or 64)), progress=progress, desc=job.name)

    def embed(self, catalog: Catalog, out: str | Path, model: DualEncoder, model_ref: str, *,
              texts: dict[str, str] | None = None, images: dict[str, Path] | None = None, dtype: str = "float16",
              progress: bool = True, feature_cache: str | Path | None = None) -> EmbedResult:
        """Today's `embed_catalog`: threaded decode, adaptive part size, the feature cache when given."""
        return embed_catalog(catalog, out, model, texts=texts, images=images, dtype=dtype, progress=progress,
                             feature_cache=feature_cache)
