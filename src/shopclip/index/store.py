"""A catalog's embeddings in one self-describing folder, safe to kill at any moment.

Layout (names are fixed; everything else in the folder is ignored)::

    manifest.json                 what the vectors are: model, dim, dtype, modalities
    state.json                    which main generation is live, which parts it already holds
    main-000002.ids.json          {"ids": [...], "hashes": [...]}      (compacted rows)
    main-000002.meta.jsonl        one meta dict per row, read only when asked for
    main-000002.<modality>.npy    (n, dim) float16/float32, memory-mapped
    parts/part-000007-1a2b3c4d.npz    arrays appended since, one per modality
    parts/part-000007-1a2b3c4d.jsonl  its rows {"id", "hash", "meta"} or {"id", "deleted": true}

Every file is written under a temporary name and renamed into place. A part becomes live
when its `.jsonl` appears, which is written after its `.npz`, so an embedding run killed
mid-way keeps every finished part and leaves at most an orphan that is ignored. Compaction
writes a new main generation and commits it by replacing `state.json`; the old files are
deleted only after that, and parts listed in `state["merged"]` are skipped if they survive.
Later rows win: a part supersedes main and earlier parts, a delete row removes the id.

Appending is safe from several processes at once (each writes its own part); `compact` and
`delete` assume one writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from shopclip.core.io import atomic_write_json, atomic_write_jsonl, fsync_dir, read_json, read_jsonl

STORE_FORMAT = "shopclip.embeddings/1"
DTYPES = ("float16", "float32")
_NAME = re.compile(r"^[a-z0-9_]+$")
_PART = re.compile(r"^part-(\d+)-[0-9a-f]+$")
_MAIN = re.compile(r"^main-(\d+)$")
ORPHAN_GRACE_S = 600.0  # a temp or unreferenced file younger than this may be a write in flight


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise unit length in float32; all-zero rows stay zero instead of becoming NaN."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


class _ManifestFields:
    """The manifest's model, dim, dtype and modalities, for the store and its writer alike."""

    _manifest: dict[str, Any]

    @property
    def model(self) -> str:
        return self._manifest["model"]

    @property
    def dim(self) -> int:
        return int(self._manifest["dim"])

    @property
    def dtype(self) -> str:
        return self._manifest["dtype"]

    @property
    def modalities(self) -> list[str]:
        return list(self._manifest["modalities"])


class EmbeddingStore(_ManifestFields):
    """Append-only embedding parts plus a compacted main generation; see the module docstring."""

    def __init__(self, root: str | Path, manifest: dict[str, Any]) -> None:
        """Use `create` or `open`; this only wires up an already-validated folder."""
        self.root = Path(root)
        self._manifest = manifest
        self._load()

    # ------------------------------------------------------------------ opening

    @classmethod
    def create(
        cls,
        root: str | Path,
        *,
        model: str,
        dim: int,
        modalities: Sequence[str] = ("image", "text"),
        dtype: str = "float16",
        model_info: dict[str, Any] | None = None,
    ) -> EmbeddingStore:
        """New store, or the existing one at `root` when it describes the same vectors.

        Reopening (instead of failing) is what lets an interrupted embedding run resume.
        """
        root = Path(root)
        modalities = list(modalities)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if int(dim) <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if (
            not modalities
            or len(set(modalities)) != len(modalities)
            or not all(_NAME.match(m) for m in modalities)
        ):
            raise ValueError(f"modalities must be distinct lower-case names ([a-z0-9_]), got {modalities}")
        if (root / "manifest.json").exists():
            store = cls.open(root)
            want = {"model": model, "dim": int(dim), "dtype": dtype, "modalities": modalities}
            have = {key: store._manifest[key] for key in want}
            diff = {key: (have[key], want[key]) for key in want if have[key] != want[key]}
            if diff:
                detail = ", ".join(f"{key}: store has {a!r}, asked for {b!r}" for key, (a, b) in diff.items())
                raise ValueError(
                    f"{root} already holds embeddings of different vectors ({detail}); "
                    "use another folder or delete this one to re-embed"
                )
            return store
        manifest = {
            "format": STORE_FORMAT,
            "model": model,
            "model_info": model_info or {},
            "dim": int(dim),
            "dtype": dtype,
            "modalities": modalities,
            "count": 0,
            "normalized": True,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (root / "parts").mkdir(parents=True, exist_ok=True)
        atomic_write_json(root / "manifest.json", manifest)  # last: its presence marks a store
        return cls(root, manifest)

    @classmethod
    def open(cls, root: str | Path) -> EmbeddingStore:
        root = Path(root)
        path = root / "manifest.json"
        if not path.exists():
            raise FileNotFoundError(f"no embedding store at {root} (manifest.json missing)")
        manifest = read_json(path)
        if manifest.get("format") != STORE_FORMAT:
            raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {STORE_FORMAT!r}")
        return cls(root, manifest)

    def _load(self, attempts: int = 5) -> None:
        """Read the live state, again if a compaction elsewhere switched it or deleted files mid-read."""
        for attempt in range(attempts):
            try:
                before = self._read_state()
                if self._state_text() == before:
                    return
            except FileNotFoundError:
                if attempt == attempts - 1:
                    raise
            time.sleep(0.05 * (attempt + 1))
        raise RuntimeError(f"{self.root}: state kept changing while reading it")

    def _state_text(self) -> str:
        try:
            return (self.root / "state.json").read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""

    def _read_state(self) -> str:
        text = self._state_text()
        self._state: dict[str, Any] = json.loads(text) if text else {}
        # A source is one set of arrays: index 0 is main (possibly empty), then each part.
        self._arrays: list[dict[str, np.ndarray]] = []
        self._metas: list[list[dict[str, Any]] | None] = []
        self._loc: dict[str, tuple[int, int]] = {}  # id -> (source, row); dict order = ids order
        self._hash: dict[str, str] = {}
        self._cache: dict[str, np.ndarray] = {}

        main = self._state.get("main")
        if main:
            info = read_json(self.root / f"{main}.ids.json")
            arrays = {m: np.load(self.root / f"{main}.{m}.npy", mmap_mode="r") for m in self.modalities}
            self._arrays.append(arrays)
            self._metas.append(None)  # loaded lazily: json-parsing meta dominates open time
            self._loc = {i: (0, r) for r, i in enumerate(info["ids"])}
            self._hash = dict(zip(info["ids"], info["hashes"], strict=True))
        else:
            self._arrays.append({m: np.zeros((0, self.dim), dtype=self.dtype) for m in self.modalities})
            self._metas.append([])
        self._applied: list[str] = self._live_parts()  # what this view holds; compaction merges exactly these
        for name in self._applied:
            self._apply_part(name)
        return text

    def _live_parts(self) -> list[str]:
        merged = set(self._state.get("merged", []))
        parts = self.root / "parts"
        if not parts.is_dir():
            return []
        names = [p.stem for p in parts.glob("part-*.jsonl") if _PART.match(p.stem) and p.stem not in merged]
        return sorted(names, key=lambda n: (int(_PART.match(n).group(1)), n))

    def _apply_part(self, name: str) -> None:
        rows = read_jsonl(self.root / "parts" / f"{name}.jsonl")
        with np.load(self.root / "parts" / f"{name}.npz") as npz:
            arrays = {m: npz[m] for m in self.modalities}
        self._apply(rows, arrays, name)

    def _apply(self, rows: list[dict[str, Any]], arrays: dict[str, np.ndarray], name: str) -> None:
        src = len(self._arrays)
        metas: list[dict[str, Any]] = []
        for row in rows:
            i = row["id"]
            if row.get("deleted"):
                self._loc.pop(i, None)
                self._hash.pop(i, None)
                continue
            self._loc[i] = (src, len(metas))  # an existing key keeps its place in the order
            self._hash[i] = row["hash"]
            metas.append(row.get("meta") or {})
        for m in self.modalities:
            if len(arrays[m]) != len(metas):
                raise ValueError(
                    f"{self.root}/parts/{name}: {len(arrays[m])} {m} vectors for {len(metas)} rows"
                )
        self._arrays.append(arrays)
        self._metas.append(metas)
        self._cache.clear()

    # ------------------------------------------------------------------ description

    @property
    def manifest(self) -> dict[str, Any]:
        return {**self._manifest, "count": len(self)}

    @property
    def ids(self) -> list[str]:
        return list(self._loc)

    def __len__(self) -> int:
        return len(self._loc)

    def __contains__(self, id: object) -> bool:
        return id in self._loc

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.root)!r}, model={self.model!r}, n={len(self)}, dim={self.dim}, dtype={self.dtype})"

    def hashes(self) -> dict[str, str]:
        """id -> content hash, so an embedding run can skip products that did not change."""
        return dict(self._hash)

    def state_key(self) -> str:
        """Changes whenever what the store holds changes (model, ids or any product's content hash).

        Indexes record it when built, so a reader can tell an index built from other
        embeddings. Row order (which compaction may change) does not count.
        """
        h = hashlib.sha1(f"{self.model}\x1e{self.dim}\x1e".encode())
        for i in sorted(self._hash):
            h.update(f"{i}\x1f{self._hash[i]}\x1e".encode())
        return h.hexdigest()

    # ------------------------------------------------------------------ reading

    def vectors(self, modality: str) -> np.ndarray:
        """float32 (n, dim) in `ids` order, re-normalised after the storage cast; read-only, cached."""
        if modality not in self.modalities:
            raise KeyError(f"modality {modality!r} not in this store ({self.modalities})")
        cached = self._cache.get(modality)
        if cached is not None:
            return cached
        src, row = self._positions()
        out = np.empty((len(src), self.dim), dtype=np.float32)
        for s in np.unique(src):
            sel = src == s
            out[sel] = self._arrays[s][modality][row[sel]]
        out = l2_normalize(out)
        out.setflags(write=False)
        self._cache[modality] = out
        return out

    def rows(self, modality: str, ids: Sequence[str]) -> np.ndarray:
        """float32 (len(ids), dim) for just these ids, re-normalised: no full-matrix copy."""
        if modality not in self.modalities:
            raise KeyError(f"modality {modality!r} not in this store ({self.modalities})")
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for r, i in enumerate(ids):
            src, row = self._loc[i]
            out[r] = self._arrays[src][modality][row]
        return l2_normalize(out)

    def _positions(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._loc)
        flat = np.fromiter((v for pair in self._loc.values() for v in pair), dtype=np.int64, count=2 * n)
        return flat[0::2], flat[1::2]

    def get(self, id: str) -> dict[str, Any]:
        """The meta dict given at append time (a copy)."""
        self._ensure_main_meta()
        src, row = self._loc[id]
        return dict(self._metas[src][row])  # type: ignore[index]

    def meta(self) -> list[dict[str, Any]]:
        self._ensure_main_meta()
        return [dict(self._metas[s][r]) for s, r in self._loc.values()]  # type: ignore[index]

    def _ensure_main_meta(self) -> None:
        """Read main's meta on first use; if a compaction elsewhere removed it, reload the new state."""
        if self._metas[0] is not None:
            return
        try:
            self._metas[0] = read_jsonl(self.root / f"{self._state['main']}.meta.jsonl")
        except FileNotFoundError:
            self._load()
            if self._metas[0] is None:
                self._metas[0] = read_jsonl(self.root / f"{self._state['main']}.meta.jsonl")

    # ------------------------------------------------------------------ writing

    def append(
        self,
        ids: Sequence[str],
        hashes: Sequence[str],
        vectors: dict[str, np.ndarray],
        meta: Sequence[dict[str, Any] | None] | None = None,
    ) -> None:
        """Commit one part; an id seen before is superseded (it keeps its position in `ids`)."""
        part = _part(self._manifest, ids, hashes, vectors, meta)
        if part is not None:
            self._commit_part(*part)

    def delete(self, ids: Iterable[str]) -> int:
        """Remove ids by committing a part of delete rows; returns how many were present."""
        self._load()  # judge presence by what is on disk now, not by a possibly stale view
        gone = list(dict.fromkeys(i for i in ids if i in self._loc))
        if gone:
            self._commit_part(*_delete_part(self._manifest, gone))
        return len(gone)

    def writer(self) -> StoreWriter:
        """A handle that only commits parts: for a long-running single writer (the server)."""
        return StoreWriter(self.root, self._manifest)

    def _commit_part(self, rows: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> None:
        name = _write_part(self.root, rows, arrays)
        self._apply(rows, arrays, name)
        self._write_count()

    def _next_seq(self) -> int:
        return _next_seq(self.root)

    def compact(self, keep_ids: Sequence[str] | None = None) -> None:
        """Rewrite everything live as one new main generation.

        `keep_ids` drops every other id and sets the row order; ids in it that the store does
        not hold are skipped (products whose embedding failed), not an error.
        """
        self._load()  # merge what is on disk now, including parts other processes appended
        self._ensure_main_meta()
        live = list(self._applied)  # not a fresh listing: a part committed since _load is not in this view
        order = (
            list(self._loc)
            if keep_ids is None
            else [i for i in dict.fromkeys(map(str, keep_ids)) if i in self._loc]
        )
        if not live and order == list(self._loc) and self._state.get("main"):
            return  # already compact
        gen = 1 + max(
            (int(m.group(1)) for p in self.root.glob("main-*") if (m := _MAIN.match(p.name.split(".")[0]))),
            default=0,
        )
        main = f"main-{gen:06d}"
        src = np.fromiter((self._loc[i][0] for i in order), dtype=np.int64, count=len(order))
        row = np.fromiter((self._loc[i][1] for i in order), dtype=np.int64, count=len(order))
        for m in self.modalities:
            out = np.empty((len(order), self.dim), dtype=self.dtype)
            for s in np.unique(src):
                sel = src == s
                out[sel] = self._arrays[s][m][row[sel]]
            _atomic_write(self.root / f"{main}.{m}.npy", lambda fp, out=out: np.save(fp, out))
        atomic_write_jsonl(
            self.root / f"{main}.meta.jsonl", (self._metas[s][r] for s, r in (self._loc[i] for i in order))
        )
        atomic_write_json(
            self.root / f"{main}.ids.json",
            {"ids": order, "hashes": [self._hash[i] for i in order]},
            indent=None,
        )

        old_main = self._state.get("main")
        existing = {p.stem for p in (self.root / "parts").glob("part-*.jsonl")}
        merged = [n for n in self._state.get("merged", []) if n in existing] + live
        next_seq = max([self._next_seq()] + [int(_PART.match(n).group(1)) + 1 for n in merged])
        fsync_dir(self.root)
        atomic_write_json(
            self.root / "state.json", {"main": main, "merged": merged, "next_seq": next_seq}
        )  # commit
        fsync_dir(self.root)

        self._arrays = []  # drop memory maps of files about to go
        self._cache = {}
        for name in merged:
            for ext in (".jsonl", ".npz"):  # .jsonl first: a half-deleted part is then an orphan
                _unlink(self.root / "parts" / f"{name}{ext}")
        self._remove_orphans(keep_main=main, old_main=old_main)
        self._load()
        self._write_count()

    def _remove_orphans(self, keep_main: str, old_main: str | None) -> None:
        """Delete old generations and leftovers of killed writes (temp files, .npz without .jsonl).

        Leftovers younger than ORPHAN_GRACE_S are kept: they may be a part another process
        is committing right now (its .npz written, its .jsonl not yet), and the next
        compaction collects them if they really were orphaned.
        """
        old = time.time() - ORPHAN_GRACE_S

        def stale(p: Path) -> bool:
            try:
                return p.stat().st_mtime < old
            except FileNotFoundError:
                return False

        for p in self.root.iterdir():
            stem = p.name.split(".")[0]
            if (_MAIN.match(stem) and stem != keep_main) or (
                p.name.startswith(".") and p.name.endswith(".tmp") and stale(p)
            ):
                _unlink(p)
        parts = self.root / "parts"
        committed = {p.stem for p in parts.glob("part-*.jsonl")}
        for p in parts.iterdir():
            if ((p.suffix == ".npz" and p.stem not in committed) or p.name.endswith(".tmp")) and stale(p):
                _unlink(p)

    def _write_count(self) -> None:
        """Keep the manifest's `count` current for people reading the folder; the property is authoritative."""
        self._manifest = {**self._manifest, "count": len(self)}
        atomic_write_json(self.root / "manifest.json", self._manifest)


class StoreWriter(_ManifestFields):
    """Commits parts to a store without reading it: a write costs what it writes.

    `EmbeddingStore` keeps every row it has read or appended in memory, and its `delete`
    re-reads the folder to judge presence; a server that appends for months needs neither.
    The caller (one writer per folder) vouches that ids it deletes are present. Compaction
    runs elsewhere (`EmbeddingStore.open(root).compact()`, e.g. in a background thread),
    which is safe beside this writer: parts it did not read stay live, and leftovers younger
    than ORPHAN_GRACE_S are never collected.
    """

    def __init__(self, root: str | Path, manifest: dict[str, Any]) -> None:
        self.root = Path(root)
        self._manifest = dict(manifest)

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(self._manifest)

    def append(
        self,
        ids: Sequence[str],
        hashes: Sequence[str],
        vectors: dict[str, np.ndarray],
        meta: Sequence[dict[str, Any] | None] | None = None,
    ) -> str | None:
        """Commit one part (durable when this returns, after the folder fsync); its name, or None if empty."""
        part = _part(self._manifest, ids, hashes, vectors, meta)
        return None if part is None else _write_part(self.root, *part)

    def delete(self, ids: Iterable[str]) -> str | None:
        gone = list(dict.fromkeys(str(i) for i in ids))
        return _write_part(self.root, *_delete_part(self._manifest, gone)) if gone else None

    def part_count(self) -> int:
        parts = self.root / "parts"
        return sum(1 for _ in parts.glob("part-*.jsonl")) if parts.is_dir() else 0


def _part(
    manifest: dict[str, Any],
    ids: Sequence[str],
    hashes: Sequence[str],
    vectors: dict[str, np.ndarray],
    meta: Sequence[dict[str, Any] | None] | None,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]] | None:
    """Check an append and turn it into (rows, arrays at the store's dtype); None when empty."""
    ids = [str(i) for i in ids]
    n = len(ids)
    if not n:
        return None
    meta = list(meta) if meta is not None else [None] * n
    if len(hashes) != n or len(meta) != n:
        raise ValueError(f"append: {n} ids, {len(hashes)} hashes, {len(meta)} meta rows")
    modalities, dim, dtype = list(manifest["modalities"]), int(manifest["dim"]), manifest["dtype"]
    if set(vectors) != set(modalities):
        raise ValueError(f"append: vectors for {sorted(vectors)}, this store holds {modalities}")
    arrays = {}
    for m in modalities:
        x = np.asarray(vectors[m], dtype=np.float32)
        if x.shape != (n, dim):
            raise ValueError(f"append: {m} vectors have shape {x.shape}, expected {(n, dim)}")
        if not np.isfinite(x).all():
            raise ValueError(f"append: {m} vectors contain NaN or inf")
        arrays[m] = l2_normalize(x).astype(dtype)
    rows = [{"id": i, "hash": str(h), "meta": m or {}} for i, h, m in zip(ids, hashes, meta, strict=True)]
    return rows, arrays


def _delete_part(manifest: dict[str, Any], ids: list[str]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    empty = {m: np.zeros((0, int(manifest["dim"])), dtype=manifest["dtype"]) for m in manifest["modalities"]}
    return [{"id": i, "deleted": True} for i in ids], empty


def _write_part(root: Path, rows: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> str:
    """Write a part's arrays, then its rows: the .jsonl appearing is the commit. Returns its name."""
    parts = root / "parts"
    parts.mkdir(exist_ok=True)
    name = f"part-{_next_seq(root):06d}-{uuid.uuid4().hex[:8]}"
    _atomic_write(parts / f"{name}.npz", lambda fp: np.savez(fp, **arrays))
    atomic_write_jsonl(parts / f"{name}.jsonl", rows)  # the commit point
    return name


def _next_seq(root: Path) -> int:
    """Above every part name on disk or ever merged, read fresh so a stale view cannot reorder."""
    state_path = root / "state.json"
    state = read_json(state_path) if state_path.exists() else {}
    seqs = [int(state.get("next_seq", 1)) - 1]
    parts = root / "parts"
    if parts.is_dir():
        seqs += [int(m.group(1)) for p in parts.iterdir() if (m := _PART.match(p.name.split(".")[0]))]
    return max(seqs) + 1


# ---------------------------------------------------------------------- file helpers


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Stream into a temp file beside `path`, then rename: large arrays never sit in memory twice."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fp:
            write(fp)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(Path(tmp))
        raise


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()




__all__ = ["STORE_FORMAT", "EmbeddingStore", "StoreWriter", "l2_normalize"]
