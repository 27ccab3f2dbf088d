"""Synthetic catalogs of any size that keep the structure of real embeddings.

ANN recall on uniform random vectors is far lower than on real embeddings (they have no
clusters), so large-scale benchmarks draw their vectors from the real product embeddings
of the sample catalog. Jittering copies of 8,225 products would not do either: at 1M rows
every product has ~120 near-copies, the exact top 10 is a coin toss among near-ties, and
recall against it measures nothing. So each synthetic product lies between two real
products of the same leaf category (a random mix of the two, re-normalised, then a small
jitter), which fills the space between real products the way more products of the same
kinds would, and inherits its first parent's category. Queries are the real products'
*text* embeddings (what a shopper's query looks like to the index), also jittered, so they
are not copies of indexed rows.

The real embeddings come from one `shopclip build` of the whole sample catalog with the
given model, kept in `~/.cache/shopclip/bench/` (or `$SHOPCLIP_CACHE_DIR/bench`) and reused.

    from _synthetic import real_embeddings, synthetic_catalog
    real = real_embeddings("default")             # ids, categories, image/text/fused (8,225 x d)
    cat = synthetic_catalog(real, 1_000_000, view="fused", seed=0)
    cat.vectors, cat.categories, cat.queries(1000)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from _common import SAMPLE

NOISE_COS = 0.98  # expected cosine between a synthetic vector and the mix of real ones it was drawn from
QUICK_REAL = 1_000  # real products a --quick run draws from (the whole sample takes ~1 min to embed)


def cache_root() -> Path:
    base = os.environ.get("SHOPCLIP_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "shopclip") / "bench"


@dataclass(frozen=True)
class RealEmbeddings:
    model: str
    ids: list[str]
    categories: list[str]
    splits: list[str]
    views: dict[str, np.ndarray]  # image, text, fused: (n, d) float32, L2-normalised
    meta: list[dict]  # the store's meta per product (title, category, image path, …)
    workdir: Path  # the cached full-sample work folder these came from

    @property
    def dim(self) -> int:
        return int(self.views["fused"].shape[1])


def real_embeddings(model: str = "default", *, catalog: Path | None = None, progress: bool = True,
                    sample: int | None = None) -> RealEmbeddings:
    """Embeddings of every sample product (one build, cached by model reference and catalog).

    `sample`: only that many products (`shopclip build --sample`), for quick runs: the whole
    sample takes about a minute to embed on 2 cores, a quick run needs only the shape of it."""
    from shopclip.index.store import EmbeddingStore
    from shopclip.models.factory import resolve_model_ref
    from shopclip.pipeline.build import BuildOptions, build
    from shopclip.pipeline.embed import fused_vectors

    catalog = catalog or SAMPLE / "catalog.jsonl"
    ref = resolve_model_ref(model)
    key = hashlib.sha1(f"{ref}|{catalog.resolve()}|{catalog.stat().st_size}".encode()).hexdigest()[:12]
    work = cache_root() / (f"work-{key}" if sample is None else f"quick-work-{key}-{sample}")
    build(catalog, work, BuildOptions(model=model, progress=progress, check_images=False, sample=sample))
    store = EmbeddingStore.open(work / "embeddings")
    meta = store.meta()
    return RealEmbeddings(
        model=store.model, ids=store.ids, categories=[m.get("category") or "" for m in meta],
        splits=[m.get("split") or "" for m in meta],
        views={"image": np.array(store.vectors("image")), "text": np.array(store.vectors("text")),
               "fused": fused_vectors(store)},
        meta=meta, workdir=work,
    )


def _jitter(base: np.ndarray, rng: np.random.Generator, cos: float) -> np.ndarray:
    """Unit vectors at an expected cosine `cos` from the unit rows of `base`."""
    noise = rng.standard_normal(base.shape, dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    # in high dimension the noise is ~orthogonal to base: mix so that cos(out, base) ≈ cos
    out = cos * base + np.sqrt(max(0.0, 1 - cos * cos)) * noise
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


@dataclass
class SyntheticCatalog:
    vectors: np.ndarray  # (n, d) float32 unit rows
    categories: list[str]
    source: np.ndarray  # index of the real product each row was drawn from
    real: RealEmbeddings
    seed: int

    @property
    def ids(self) -> list[str]:
        return [f"syn-{i:08d}" for i in range(len(self.vectors))]

    def queries(self, n: int, *, seed: int = 1, cos: float = 0.97) -> tuple[np.ndarray, list[str]]:
        """Jittered real text embeddings (a shopper's query to the index) and their products' categories."""
        rng = np.random.default_rng(seed)
        pick = rng.integers(0, len(self.real.ids), size=n)
        return _jitter(self.real.views["text"][pick], rng, cos), [self.real.categories[i] for i in pick]


def synthetic_catalog(real: RealEmbeddings, n: int, *, view: str = "fused", seed: int = 0,
                      cos: float = NOISE_COS, chunk: int = 200_000) -> SyntheticCatalog:
    """`n` products drawn between same-leaf pairs of real `view` embeddings; the first len(real) rows are the real ones."""
    rng = np.random.default_rng(seed)
    base = real.views[view]
    m = len(base)
    src = np.concatenate([np.arange(min(n, m)), rng.integers(0, m, size=max(0, n - m))])
    mate = same_leaf_mates(real, src[m:], rng)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    out[: min(n, m)] = base[: min(n, m)]
    for start in range(m, n, chunk):
        stop = min(n, start + chunk)
        a, b = src[start:stop], mate[start - m : stop - m]
        w = rng.uniform(0.0, 1.0, size=(len(a), 1)).astype(np.float32)
        mix = w * base[a] + (1 - w) * base[b]
        mix /= np.maximum(np.linalg.norm(mix, axis=1, keepdims=True), 1e-12)
        out[start:stop] = _jitter(mix, rng, cos)
    return SyntheticCatalog(out, [real.categories[i] for i in src], src, real, seed)


def same_leaf_mates(real: RealEmbeddings, src: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each row index in `src`, a random real product of the same leaf category (itself if alone)."""
    by_leaf: dict[str, np.ndarray] = {}
    for i, c in enumerate(real.categories):
        by_leaf.setdefault(c, []).append(i)  # type: ignore[arg-type]
    groups = {c: np.asarray(v) for c, v in by_leaf.items()}
    leaf_of = np.asarray([real.categories[i] for i in range(len(real.categories))], dtype=object)
    out = np.empty(len(src), dtype=np.int64)
    for c, members in groups.items():
        rows = np.flatnonzero(leaf_of[src] == c)
        if len(rows):
            out[rows] = members[rng.integers(0, len(members), size=len(rows))]
    return out
