"""The runner seam without Ray: the block-job contract, option checks, and the local block loop."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from shopclip.catalog import Catalog
from shopclip.index.store import EmbeddingStore
from shopclip.models import load_model
from shopclip.pipeline.build import BuildOptions, BuildOptionsError
from shopclip.pipeline.embed import embed_catalog
from shopclip.pipeline.embed_blocks import embed_with_runner
from shopclip.pipeline.runners import LocalRunner, RunnerError, check_runner, get_runner
from shopclip.pipeline.runners.base import BlockJob, auto_block_size


@pytest.fixture(scope="module")
def model():
    return load_model("default", engine="torch")  # batch-invariant: row-for-row equality across block sizes


def test_auto_block_size_rule():
    assert auto_block_size(48, 2) == 8  # 6 blocks: 3 per actor rounds down to the 8-row floor
    assert auto_block_size(480, 2) == 60  # 8 blocks, 4 per actor
    assert auto_block_size(10, 4) == 8  # never below 8 rows
    assert auto_block_size(50_000_000, 512) == 1024  # never above 1,024 rows (one store part, one retry)
    assert auto_block_size(100_000, 10) == 1024 and auto_block_size(4_000, 10) == 100


class _Doubler:
    """A toy worker: its state is built once (counted), each call doubles a block."""

    built = 0

    def __init__(self, factor: int) -> None:
        type(self).built += 1
        self.factor = factor

    def __call__(self, batch):
        return {"id": batch["id"], "y": batch["x"] * self.factor}


def test_local_runner_builds_the_worker_once_and_commits_every_block_in_order():
    got = []
    job = BlockJob("double", {"id": np.arange(10).astype(str), "x": np.arange(10)}, _Doubler, {"factor": 2},
                   commit=got.append, block_size=4)
    _Doubler.built = 0
    assert LocalRunner().run(job, progress=False) == 10
    assert _Doubler.built == 1
    assert [len(b["id"]) for b in got] == [4, 4, 2]
    assert np.concatenate([b["y"] for b in got]).tolist() == [2 * i for i in range(10)]


def test_block_embedding_in_process_equals_embed_catalog(tmp_path, mini_catalog, model):
    """The block job (what Ray runs) writes the store the single-process path writes."""
    cat = Catalog.load(mini_catalog).subset(Catalog.load(mini_catalog).ids[:12])
    ref = embed_catalog(cat, tmp_path / "ref", model, progress=False)
    res = embed_with_runner(LocalRunner(), cat, tmp_path / "blocks", model, "default", block_size=5, progress=False)
    assert (res.embedded, res.skipped, res.returned, res.failed) == (12, 0, 12, {})
    a, b = EmbeddingStore.open(ref.store), EmbeddingStore.open(res.store)
    assert a.ids == b.ids == cat.ids and a.hashes() == b.hashes() and a.meta() == b.meta()
    for m in ("image", "text"):
        np.testing.assert_allclose(a.vectors(m), b.vectors(m), atol=2e-3)
    again = embed_with_runner(LocalRunner(), cat, tmp_path / "blocks", model, "default", progress=False)
    assert (again.embedded, again.skipped, again.returned) == (0, 12, 0)


def test_an_unreadable_image_fails_its_row_only(tmp_path, mini_catalog, model):
    cat = Catalog.load(mini_catalog)
    cat = cat.subset(cat.ids[:6])
    bad = cat.ids[2]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    res = embed_with_runner(LocalRunner(), cat, tmp_path / "e", model, "default", images={bad: broken},
                            progress=False)
    assert res.embedded == 5 and list(res.failed) == [bad] and "broken.jpg" in res.failed[bad]
    assert f"1 failed (e.g. {bad}" in res.summary()
    store = EmbeddingStore.open(res.store)
    assert bad not in store and len(store) == 5
    retry = embed_with_runner(LocalRunner(), cat, tmp_path / "e", model, "default", progress=False)
    assert (retry.embedded, retry.skipped) == (1, 5)  # the next run tries the failed product again


def test_runner_options_are_checked_before_anything_runs():
    with pytest.raises(RunnerError, match="unknown runner 'spark'; runners: local, ray"):
        check_runner("spark")
    with pytest.raises(RunnerError, match="needs --runner ray"):
        check_runner("local", "auto")
    with pytest.raises(BuildOptionsError, match="cannot reach a Ray cluster at 127.0.0.1:1"):
        BuildOptions(runner="ray", address="127.0.0.1:1").check()
    assert isinstance(get_runner("local"), LocalRunner)


def test_missing_ray_is_one_line_naming_the_extra(tmp_path, mini_catalog, monkeypatch):
    from shopclip.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as without the package
    res = CliRunner().invoke(app, ["embed", str(mini_catalog), "--out", str(tmp_path / "w"), "--runner", "ray"])
    assert res.exit_code == 2
    assert "pip install 'shopclip[ray]'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "w").exists()  # refused before any stage touched the folder
