"""`shopclip build`: run the pipeline's stages in order, each cached and resumable.

A stage is skipped when its fingerprint (its inputs, including upstream stages'
fingerprints) matches the one recorded in the work folder's manifest. The pipeline
knows its stages: validate → ground → enrich → train → embed → index. The optional
steps describe themselves (`ground_stage()`, `enrich_stage()`, `train_stage()`, each a
:class:`shopclip.core.stages.Stage`) without importing the pipeline, and run only when
their option is set. :func:`register_stage` adds or replaces one (plug-ins, tests).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shopclip.catalog import Catalog, Product, validate_catalog, write_errors
from shopclip.catalog.readers import read_rows
from shopclip.catalog.schema import image_relpath
from shopclip.catalog.validation import image_path_problem
from shopclip.core.hashing import file_sha1, json_sha1
from shopclip.core.io import read_jsonl
from shopclip.core.stages import Stage
from shopclip.enrich.pipeline import enrich_stage
from shopclip.grounding.pipeline import ground_stage
from shopclip.index.store import DTYPES
from shopclip.models import DualEncoder, check_model_ref, load_model
from shopclip.models.dual_encoder import CONFIG_FILE
from shopclip.models.engines import ENGINES, default_engine
from shopclip.pipeline.workdir import WorkDir
from shopclip.train.stage import train_stage

__all__ = ["BuildContext", "BuildOptions", "BuildOptionsError", "Stage", "StageResult", "build", "planned_stages", "register_stage",
           "stages"]

log = logging.getLogger(__name__)


@dataclass
class BuildOptions:
    model: str = "default"
    dtype: str = "float16"
    backend: str = "faiss"  # the vector store: faiss (in-process), pgvector, milvus
    index_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"uri": ..., "index": "hnsw-sq8"}
    check_images: bool = True
    sample: int | None = None  # embed a deterministic sample of N valid products (demos)
    progress: bool = True
    force: bool = False
    engine: str | None = None  # inference engine for the embed stage (None: $SHOPCLIP_ENGINE or the default)
    runner: str = "local"  # where per-product jobs run: local | ray (shopclip.pipeline.runners)
    address: str | None = None  # the ray runner's cluster: None = start one here, "auto", "ray://host:port"
    extra: dict[str, Any] = field(default_factory=dict)  # options of the optional stages (and runners: ray_actors)

    def check(self) -> None:
        """Refuse bad options before any stage touches the work folder (a typo must cost nothing)."""
        from shopclip.index import available_backends

        if self.dtype not in DTYPES:
            raise BuildOptionsError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.backend not in available_backends():
            raise BuildOptionsError(f"unknown index backend {self.backend!r}; known: {', '.join(available_backends())}")
        if self.sample is not None and self.sample < 1:
            raise BuildOptionsError(f"--sample must be at least 1, got {self.sample}")
        check_model_ref(self.model)  # UnknownModelError lists the known names
        if self.engine is not None and self.engine not in ENGINES:
            raise BuildOptionsError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        from shopclip.pipeline.runners import RunnerError, check_runner

        try:
            check_runner(self.runner, self.address)
        except RunnerError as e:
            raise BuildOptionsError(str(e)) from None


class BuildOptionsError(ValueError):
    """An option `build` cannot work with; raised before anything runs."""


class BuildContext:
    """What stages share: paths, options, the validated catalog and the model (loaded once)."""

    def __init__(self, catalog_path: Path, workdir: WorkDir, options: BuildOptions) -> None:
        self.catalog_path = catalog_path
        self.workdir = workdir
        self.options = options
        self.manifest = workdir.read()
        self.fingerprints: dict[str, str] = {}
        self.texts: dict[str, str] = {}  # product id → text override (enrichment)
        self.images: dict[str, Path] = {}  # product id → image override (grounded crops)
        self.model_ref = options.model
        self._catalog: Catalog | None = None
        self._model: DualEncoder | None = None

    def catalog(self) -> Catalog:
        if self._catalog is None:
            rows = read_jsonl(self.workdir.catalog)
            root = Path(self.manifest["catalog_root"])
            self._catalog = Catalog([Product.from_dict(r, line=i + 1) for i, r in enumerate(rows)], root=root,
                                    source=self.catalog_path)
        return self._catalog

    def model(self) -> DualEncoder:
        if self._model is None:
            # int8 image graphs calibrate on this catalog's train split when no ranges are cached yet.
            self._model = load_model(self.model_ref, engine=self.engine,
                                     calibration=lambda: calibration_images(self.catalog()))
        return self._model

    @property
    def engine(self) -> str:
        return self.options.engine or default_engine()

    def upstream(self, name: str) -> str:
        return json_sha1([self.fingerprints[k] for k in sorted(self.fingerprints) if k != name])


_STAGES: list[Stage] = []


def register_stage(stage: Stage, *, before: str | None = None) -> None:
    """Insert a stage (replacing one with the same name) before `before`, or at the end."""
    _STAGES[:] = [s for s in _STAGES if s.name != stage.name]
    if before is None:
        _STAGES.append(stage)
        return
    names = [s.name for s in _STAGES]
    _STAGES.insert(names.index(before), stage)


def stages() -> list[str]:
    return [s.name for s in _STAGES]


def model_key(ref: str) -> str:
    """Cheap identity of a model reference: folder contents when it is a folder, else the name."""
    from shopclip.models.factory import resolve_model_ref

    resolved = resolve_model_ref(ref)
    folder = Path(resolved)
    if (folder / CONFIG_FILE).exists():
        return json_sha1({p.name: file_sha1(p) for p in sorted(folder.iterdir()) if p.is_file()})
    return resolved


def calibration_images(catalog: Catalog, n: int = 64) -> list[Path]:
    """A deterministic sample of the catalog's train-split photos (all photos when it has no split)."""
    products = list(catalog)
    train = [p for p in products if p.split == "train"] or products
    return [catalog.image_path(p) for p in sample_products(train, n)]


def sample_products(products: list[Product], n: int | None) -> list[Product]:
    """A deterministic uniform sample (by id hash), kept in catalog order."""
    if n is None or n >= len(products):
        return products
    keep = set(sorted((p.id for p in products), key=lambda i: hashlib.sha1(i.encode()).hexdigest())[:n])
    return [p for p in products if p.id in keep]


# ------------------------------------------------------------------------ core stages


def image_stamps(catalog_path: Path) -> str:
    """Hash of (path, size, mtime_ns) of every image the catalog names.

    The catalog file's own hash misses an image overwritten in place; stat-ing every
    image is cheap (no decoding), and the embed step's per-product content hash then
    re-embeds only the products whose photo really changed.
    """
    root = catalog_path.resolve().parent
    stamps: list[tuple[str, int | None, int | None]] = []
    for _, row in read_rows(catalog_path):
        image = row.get("image") if isinstance(row, dict) else None
        if not isinstance(image, str) or not image.strip() or image_path_problem(image):
            continue
        try:
            st = os.stat(root / image_relpath(image))
            stamps.append((image, st.st_size, st.st_mtime_ns))
        except OSError:
            stamps.append((image, None, None))  # missing now; appearing later changes the hash
    return json_sha1(stamps)


def _validate_fp(ctx: BuildContext) -> str:
    o = ctx.options
    # Images count even with check_images off: the embed stage downstream reads them.
    return json_sha1([file_sha1(ctx.catalog_path), image_stamps(ctx.catalog_path), o.check_images, o.sample])


def _validate_run(ctx: BuildContext) -> str:
    report = validate_catalog(ctx.catalog_path, check_images=ctx.options.check_images, progress=ctx.options.progress)
    write_errors(report.findings, ctx.workdir.errors)
    products = sample_products(report.products, ctx.options.sample)
    ctx.manifest["catalog"] = str(ctx.catalog_path.resolve())
    ctx.manifest["catalog_root"] = str(ctx.catalog_path.resolve().parent)
    cat = Catalog(products, root=ctx.catalog_path.resolve().parent, source=ctx.catalog_path)
    cat.write_jsonl(ctx.workdir.catalog)
    ctx._catalog = None
    msg = report.summary()
    if ctx.options.sample:
        msg += f"; sampled {len(products)} products"
    if report.errors or report.warnings:
        msg += f"; {'errors' if report.errors else 'warnings'} in {ctx.workdir.errors}"
    return msg


def _embed_fp(ctx: BuildContext) -> str:
    o = ctx.options
    return json_sha1([ctx.upstream("embed"), model_key(ctx.model_ref), o.dtype,
                      json_sha1(ctx.texts), json_sha1({k: str(v) for k, v in ctx.images.items()}), ctx.engine])


def _embed_run(ctx: BuildContext) -> str:
    from shopclip.pipeline.runners import get_runner

    o = ctx.options
    runner = get_runner(o.runner, address=o.address, **({"actors": o.extra["ray_actors"]}
                                                        if o.extra.get("ray_actors") else {}))
    res = runner.embed(ctx.catalog(), ctx.workdir.embeddings, ctx.model(), ctx.model_ref, texts=ctx.texts,
                       images=ctx.images, dtype=o.dtype, progress=o.progress,
                       feature_cache=ctx.workdir.root / "cache" / "features")
    ctx.manifest["model"] = ctx.model_ref
    ctx.manifest["engine"] = ctx.engine  # `shopclip serve` defaults to the engine the store was embedded with
    return res.summary()


def _index_fp(ctx: BuildContext) -> str:
    # The store's state too: `shopclip embed` or the server may have changed it since.
    from shopclip.index.store import EmbeddingStore
    from shopclip.pipeline.indexing import INDEX_FORMAT_VERSION

    store = EmbeddingStore.open(ctx.workdir.embeddings).state_key() if ctx.workdir.embeddings.exists() else None
    return json_sha1([ctx.upstream("index"), ctx.options.backend, store, INDEX_FORMAT_VERSION,
                      sorted(ctx.options.index_options.items()), "lexical/1"])


def _index_run(ctx: BuildContext) -> str:
    from shopclip.pipeline.indexing import build_indexes

    sizes = build_indexes(ctx.workdir.embeddings, ctx.workdir.index, backend=ctx.options.backend,
                          **ctx.options.index_options)
    return "indexes built: " + ", ".join(f"{k} ({v})" for k, v in sizes.items())


register_stage(Stage("validate", _validate_fp, _validate_run, lambda c: [c.workdir.catalog]))
# The optional steps, in VL-CLIP's order: crop to the product, rewrite its text, train on both.
register_stage(ground_stage())
register_stage(enrich_stage())
register_stage(train_stage())
register_stage(Stage("embed", _embed_fp, _embed_run, lambda c: [c.workdir.embeddings]))
register_stage(Stage("index", _index_fp, _index_run, lambda c: [c.workdir.index, c.workdir.index / "lexical" / "manifest.json"]))


@dataclass
class StageResult:
    name: str
    ran: bool
    summary: str
    seconds: float


def _selected(ctx: BuildContext, only: Collection[str] | None) -> list[Stage]:
    if only is not None:
        unknown = set(only) - set(stages())
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {stages()}")
    return [s for s in _STAGES if (only is None or s.name in only) and s.enabled(ctx)]


def planned_stages(catalog: str | Path, workdir: str | Path, options: BuildOptions | None = None,
                   only: Collection[str] | None = None) -> list[str]:
    """Names of the stages `build` with these arguments considers (enabled ones, in order)."""
    ctx = BuildContext(Path(catalog), WorkDir(Path(workdir)), options or BuildOptions())
    return [s.name for s in _selected(ctx, only)]


def build(catalog: str | Path, workdir: str | Path, options: BuildOptions | None = None,
          on_stage: Callable[[StageResult], None] | None = None,
          only: Collection[str] | None = None) -> list[StageResult]:
    """Run the enabled stages in order (or just those named in `only`), skipping those up to date."""
    options = options or BuildOptions()
    options.check()
    ctx = BuildContext(Path(catalog), WorkDir(Path(workdir)), options)
    ctx.manifest.setdefault("stages", {})
    ctx.manifest["options"] = asdict(options)
    results = []
    for stage in _selected(ctx, only):
        t0 = time.perf_counter()
        fp = stage.fingerprint(ctx)
        ctx.fingerprints[stage.name] = fp
        done = ctx.manifest["stages"].get(stage.name, {})
        outputs_ok = all(p.exists() for p in stage.outputs(ctx))
        if not options.force and done.get("fingerprint") == fp and outputs_ok:
            if stage.restore:
                stage.restore(ctx)
            res = StageResult(stage.name, False, done.get("summary", "up to date"), time.perf_counter() - t0)
        else:
            summary = stage.run(ctx)
            ctx.manifest["stages"][stage.name] = {"fingerprint": fp, "summary": summary,
                                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            ctx.workdir.write(ctx.manifest)  # a crash later keeps this stage done
            res = StageResult(stage.name, True, summary, time.perf_counter() - t0)
        results.append(res)
        if on_stage:
            on_stage(res)
    ctx.manifest["model"] = ctx.model_ref
    ctx.workdir.write(ctx.manifest)
    return results
