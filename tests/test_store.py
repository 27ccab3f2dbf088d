"""EmbeddingStore: parts, compaction, supersede, delete, and what a killed writer leaves behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from shopclip.index import EmbeddingStore
from shopclip.index.store import ORPHAN_GRACE_S, STORE_FORMAT

DIM = 32
FP16_ATOL = 2e-3  # float16 keeps ~3 decimal digits of a unit vector's components


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def batch(
    start: int, n: int, *, dim: int = DIM, salt: int = 0
) -> tuple[list[str], list[str], dict, list[dict]]:
    """Deterministic per id, so what a killed writer committed can be checked afterwards."""
    ids = [f"sku-{i:05d}" for i in range(start, start + n)]
    image = np.stack(
        [np.random.default_rng(i * 7 + salt).standard_normal(dim) for i in range(start, start + n)]
    )
    text = np.stack(
        [np.random.default_rng(i * 7 + 3 + salt).standard_normal(dim) for i in range(start, start + n)]
    )
    hashes = [f"h{i}-{salt}" for i in range(start, start + n)]
    meta = [
        {"title": f"Product {i}", "category": ["Footwear", "Shoes"], "image": f"images/{i}.jpg"}
        for i in range(start, start + n)
    ]
    return ids, hashes, {"image": image * 3.0, "text": text}, meta  # unnormalised on purpose


def make(root: Path, **kw) -> EmbeddingStore:
    return EmbeddingStore.create(
        root, model="test-model", dim=kw.pop("dim", DIM), model_info={"run": "r1"}, **kw
    )


def assert_rows(store: EmbeddingStore, start: int, n: int, *, salt: int = 0, atol: float = FP16_ATOL) -> None:
    ids, hashes, vecs, meta = batch(start, n, salt=salt)
    pos = {i: r for r, i in enumerate(store.ids)}
    rows = [pos[i] for i in ids]
    for m in ("image", "text"):
        np.testing.assert_allclose(store.vectors(m)[rows], unit(vecs[m]), atol=atol)
    assert [store.hashes()[i] for i in ids] == hashes
    assert [store.get(i) for i in ids] == meta


def test_three_parts_compact_to_inputs_in_order(tmp_path):
    store = make(tmp_path / "s")
    for start in (0, 40, 80):
        store.append(*batch(start, 40))
    assert len(store) == 120 and len(list((tmp_path / "s" / "parts").glob("*.jsonl"))) == 3
    assert_rows(store, 0, 120)
    store.compact()
    assert list((tmp_path / "s" / "parts").iterdir()) == []
    reopened = EmbeddingStore.open(tmp_path / "s")
    assert reopened.ids == [f"sku-{i:05d}" for i in range(120)]
    assert_rows(reopened, 0, 120)
    for m in ("image", "text"):
        v = reopened.vectors(m)
        assert v.dtype == np.float32 and v.shape == (120, DIM) and not v.flags.writeable
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    assert reopened.meta()[5] == batch(5, 1)[3][0]
    manifest = reopened.manifest
    assert manifest["format"] == STORE_FORMAT and manifest["count"] == 120 and manifest["normalized"] is True
    assert manifest["model_info"] == {"run": "r1"} and manifest["modalities"] == ["image", "text"]


def test_hashes_survive_reopen_before_and_after_compaction(tmp_path):
    store = make(tmp_path / "s")
    store.append(*batch(0, 10))
    expected = dict(zip(batch(0, 10)[0], batch(0, 10)[1], strict=True))
    assert EmbeddingStore.open(tmp_path / "s").hashes() == expected
    store.compact()
    assert EmbeddingStore.open(tmp_path / "s").hashes() == expected


def test_reappend_supersedes_and_keeps_position(tmp_path):
    store = make(tmp_path / "s")
    store.append(*batch(0, 20))
    store.compact()
    store.append(*batch(5, 3, salt=1))  # changed products: new vectors and hashes
    store.append(*batch(20, 2))
    assert len(store) == 22 and store.ids[5:8] == ["sku-00005", "sku-00006", "sku-00007"]
    assert_rows(store, 5, 3, salt=1)
    assert_rows(store, 0, 5)
    for s in (store, EmbeddingStore.open(tmp_path / "s")):
        s.compact()
        assert len(s) == 22
        assert_rows(s, 5, 3, salt=1)
        assert_rows(s, 8, 14)


def test_reader_opened_before_a_compaction_elsewhere_keeps_working(tmp_path):
    root = tmp_path / "s"
    writer = make(root)
    writer.append(*batch(0, 10))
    writer.compact()
    reader = EmbeddingStore.open(root)  # a server holding the store open
    before = reader.vectors("image")
    writer.append(*batch(10, 5))
    writer.compact()  # deletes the generation the reader mapped
    np.testing.assert_array_equal(reader.vectors("image"), before)  # its snapshot stays readable
    assert reader.get("sku-00003") == batch(3, 1)[3][0]  # meta not read yet: reloads the new state
    assert len(reader) == 15
    assert_rows(reader, 0, 15)


def test_compact_with_keep_ids_sets_order_and_drops_the_rest(tmp_path):
    store = make(tmp_path / "s")
    store.append(*batch(0, 10))
    store.append(*batch(10, 10))
    keep = ["sku-00015", "sku-00002", "sku-00099", "sku-00002", "sku-00007"]
    store.compact(keep_ids=keep)
    assert store.ids == ["sku-00015", "sku-00002", "sku-00007"]  # unknown skipped, duplicate once
    reopened = EmbeddingStore.open(tmp_path / "s")
    assert reopened.ids == store.ids and set(reopened.hashes()) == set(store.ids)
    assert_rows(reopened, 2, 1)
    assert_rows(reopened, 15, 1)


def test_delete_persists_and_an_id_can_come_back(tmp_path):
    store = make(tmp_path / "s")
    store.append(*batch(0, 10))
    store.compact()
    assert store.delete(["sku-00003", "sku-00004", "nope", "sku-00003"]) == 2
    assert store.delete(["sku-00003"]) == 0
    reopened = EmbeddingStore.open(tmp_path / "s")
    assert len(reopened) == 8 and "sku-00003" not in reopened and "sku-00003" not in reopened.hashes()
    assert reopened.vectors("image").shape == (8, DIM)
    reopened.append(*batch(3, 1, salt=2))
    assert reopened.ids[-1] == "sku-00003"  # a re-added id goes to the end
    reopened.compact()
    again = EmbeddingStore.open(tmp_path / "s")
    assert len(again) == 9
    assert_rows(again, 3, 1, salt=2)


@pytest.mark.parametrize("dtype,atol,itemsize", [("float16", FP16_ATOL, 2), ("float32", 1e-6, 4)])
def test_storage_dtype(dtype, atol, itemsize, tmp_path):
    store = make(tmp_path / "s", dtype=dtype)
    store.append(*batch(0, 30))
    store.compact()
    [npy] = (tmp_path / "s").glob("main-*.image.npy")
    assert np.load(npy, mmap_mode="r").dtype.itemsize == itemsize
    reopened = EmbeddingStore.open(tmp_path / "s")
    assert reopened.dtype == dtype and reopened.vectors("text").dtype == np.float32
    assert_rows(reopened, 0, 30, atol=atol)


def test_create_reopens_matching_store_and_refuses_a_different_one(tmp_path):
    store = make(tmp_path / "s")
    store.append(*batch(0, 5))
    assert make(tmp_path / "s").ids == store.ids  # a resumed run finds its work
    with pytest.raises(ValueError, match="model: store has 'test-model', asked for 'other'"):
        EmbeddingStore.create(tmp_path / "s", model="other", dim=DIM)
    with pytest.raises(ValueError, match="dim"):
        make(tmp_path / "s", dim=DIM * 2)
    with pytest.raises(ValueError, match="dtype"):
        make(tmp_path / "s", dtype="float32")
    with pytest.raises(ValueError, match="dtype must be"):
        make(tmp_path / "t", dtype="int8")
    with pytest.raises(FileNotFoundError):
        EmbeddingStore.open(tmp_path / "missing")


def test_append_checks_its_inputs(tmp_path):
    store = make(tmp_path / "s")
    ids, hashes, vecs, meta = batch(0, 4)
    with pytest.raises(ValueError, match="vectors for"):
        store.append(ids, hashes, {"image": vecs["image"]}, meta)
    with pytest.raises(ValueError, match="shape"):
        store.append(ids, hashes, {"image": vecs["image"][:, :5], "text": vecs["text"]}, meta)
    with pytest.raises(ValueError, match="hashes"):
        store.append(ids, hashes[:2], vecs, meta)
    bad = vecs["text"].copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        store.append(ids, hashes, {"image": vecs["image"], "text": bad}, meta)
    assert len(store) == 0 and list((tmp_path / "s" / "parts").iterdir()) == []


def test_leftovers_of_killed_writes_are_ignored_then_cleaned(tmp_path):
    root = tmp_path / "s"
    store = make(root)
    store.append(*batch(0, 10))
    store.compact()
    store.append(*batch(10, 10))
    parts = root / "parts"
    # killed mid-append: a temp file, and a part whose .npz landed but whose .jsonl did not
    (parts / ".part-000009-0badc0de.npz.x1y2.tmp").write_bytes(b"PK\x03\x04 half a zip")
    _, _, vecs, _ = batch(50, 5)
    np.savez(parts / "part-000009-0badc0de.npz", **vecs)
    # killed mid-compaction, before the state switch: a half-written next generation
    (root / "main-000009.image.npy").write_bytes(b"\x93NUMPY garbage")
    (root / ".main-000009.text.npy.abcd.tmp").write_bytes(b"")
    long_ago = time.time() - 2 * ORPHAN_GRACE_S
    for f in [*parts.glob("*0badc0de*"), root / ".main-000009.text.npy.abcd.tmp"]:
        os.utime(f, (long_ago, long_ago))
    # a part another process is committing right now (its .npz is there, its .jsonl not yet)
    np.savez(parts / "part-000099-1f1f1f1f.npz", **vecs)
    reopened = EmbeddingStore.open(root)
    assert len(reopened) == 20
    assert_rows(reopened, 0, 20)
    reopened.append(*batch(20, 5))
    reopened.compact()
    assert len(EmbeddingStore.open(root)) == 25
    assert_rows(EmbeddingStore.open(root), 0, 25)
    leftovers = sorted(p.name for p in root.rglob("*") if p.is_file())
    assert all(not n.endswith(".tmp") and "0badc0de" not in n and "000009" not in n for n in leftovers), (
        leftovers
    )
    assert "part-000099-1f1f1f1f.npz" in leftovers  # young: maybe a write in flight, kept


def test_crash_after_compaction_commit_does_not_double_count(tmp_path):
    """Killed after state.json switched but before the merged parts were deleted."""
    root = tmp_path / "s"
    store = make(root)
    store.append(*batch(0, 10))
    store.append(*batch(5, 10, salt=1))
    saved = {p.name: p.read_bytes() for p in (root / "parts").iterdir()}
    store.compact()
    for name, data in saved.items():  # put the merged parts back, as if never deleted
        (root / "parts" / name).write_bytes(data)
    reopened = EmbeddingStore.open(root)
    assert len(reopened) == 15
    assert_rows(reopened, 0, 5)
    assert_rows(reopened, 5, 10, salt=1)
    reopened.append(*batch(15, 1))  # new parts still sort after the survivors
    assert len(EmbeddingStore.open(root)) == 16


WRITER = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [sys.argv[2]]
    from test_store import batch, make
    from pathlib import Path
    store = make(Path(sys.argv[1]))
    start = 0
    while True:
        store.append(*batch(start, 25))
        start += 25
        print(start, flush=True)
    """
)


def test_writer_killed_mid_run_keeps_every_finished_part(tmp_path):
    root = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        done = 0
        deadline = time.monotonic() + 15
        while done < 100 and time.monotonic() < deadline:
            done = int(proc.stdout.readline() or 0) or done
        assert done >= 100, "writer never got going"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    store = EmbeddingStore.open(root)
    n = len(store)
    assert n >= done and n % 25 == 0  # whole parts only
    assert store.ids == [f"sku-{i:05d}" for i in range(n)]
    assert_rows(store, 0, n)
    store.append(*batch(n, 25))  # and the run can resume
    store.compact()
    assert len(EmbeddingStore.open(root)) == n + 25


def test_opening_8k_products_is_fast(tmp_path):
    n, dim = 8_000, 256
    rng = np.random.default_rng(0)
    store = make(tmp_path / "big", dim=dim)
    ids = [f"p{i}" for i in range(n)]
    vecs = {m: rng.standard_normal((n, dim), dtype=np.float32) for m in ("image", "text")}
    meta = [
        {"title": f"Item {i}", "category": ["Apparel", "Topwear", "Tshirts"], "image": f"images/{i}.jpg"}
        for i in range(n)
    ]
    store.append(ids, [f"h{i}" for i in range(n)], vecs, meta)
    store.compact()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        opened = EmbeddingStore.open(tmp_path / "big")
        image, text = opened.vectors("image"), opened.vectors("text")
        hashes = opened.hashes()
        best = min(best, time.perf_counter() - t0)
    assert image.shape == text.shape == (n, dim) and len(hashes) == n
    np.testing.assert_allclose(image[123], unit(vecs["image"][123:124])[0], atol=FP16_ATOL)
    assert best < 0.2, f"open + vectors took {best:.3f} s"


def test_state_key_follows_content_not_row_order(tmp_path):
    store = make(tmp_path / "s")
    store.append(*batch(0, 5))
    key = store.state_key()
    assert EmbeddingStore.open(tmp_path / "s").state_key() == key  # a reader sees the same key
    store.compact(keep_ids=[f"sku-{i:05d}" for i in (4, 3, 2, 1, 0)])  # reordered, same content
    assert store.state_key() == key
    store.append(*batch(2, 1, salt=1))  # one product re-embedded
    changed = store.state_key()
    assert changed != key
    store.append(*batch(5, 1))  # one product added
    assert store.state_key() not in (key, changed)
    store.delete(["sku-00005"])
    assert store.state_key() == changed


def test_writer_commits_parts_that_a_reader_sees_and_compaction_beside_it_loses_nothing(tmp_path):
    root = tmp_path / "s"
    store = make(root)
    store.append(*batch(0, 10))
    writer = store.writer()
    assert (writer.model, writer.dim, writer.dtype) == ("test-model", DIM, "float16")
    writer.append(*batch(10, 5))
    writer.delete(["sku-00002"])
    assert writer.part_count() == 3
    # a part committed right after the compactor read its view must not be swallowed by it
    compactor = EmbeddingStore.open(root)
    real_load = compactor._load

    def load_then_race(*a, **k):
        real_load(*a, **k)
        if not any(i == "sku-00015" for i in compactor.ids) and writer.part_count() == 3:
            writer.append(*batch(15, 5))

    compactor._load = load_then_race
    compactor.compact()
    reader = EmbeddingStore.open(root)
    assert len(reader) == 19 and "sku-00002" not in reader
    assert_rows(reader, 15, 5)
    assert_rows(reader, 10, 5)
    assert writer.part_count() == 1  # the part committed after the compactor's view stays live
    with pytest.raises(ValueError, match="shape"):
        writer.append(["x"], ["h"], {"image": np.ones((1, 3)), "text": np.ones((1, DIM))})


def test_rows_reads_just_the_asked_ids_normalised(tmp_path):
    store = make(tmp_path / "s")
    store.append(*batch(0, 6))
    store.compact()
    store.append(*batch(3, 2, salt=1))  # newer rows in a part supersede main
    ids = ["sku-00004", "sku-00000"]
    full = store.vectors("text")
    pos = {i: r for r, i in enumerate(store.ids)}
    np.testing.assert_allclose(store.rows("text", ids), full[[pos[i] for i in ids]], atol=1e-6)
