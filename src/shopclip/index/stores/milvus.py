"""Milvus store through pymilvus: one collection per view, filter expressions for categories.

The same client code talks to a Milvus cluster (`http://host:19530`) or to Milvus Lite, the
in-process engine that pymilvus starts for a local file (`--uri embedded` =
`WORKDIR/milvus.db`, or any path ending in `.db`). Milvus Lite is one process's file: two
processes must not open the same `.db` at once (use a Milvus server for that).

Each view is a collection `{name}_{view}_{token}` reached through the alias
`{name}_{view}`. A new index (`create_index`, `index build`, the server's repair) fills a new
collection and `save()` points the alias at it (Milvus switches an alias atomically) before
dropping the old one, so a build never leaves a half-written view in use. Categories are
an array of whole-level, lower-cased prefixes; a filter is `array_contains(cat_prefixes,
"footwear>shoes")`, exactly `category_matches` of base.py. Collections are created with
`Strong` consistency, so a search sees every acknowledged upsert.

What Milvus does not give: transactions. An upsert or delete is atomic per collection and
call at best, and nothing spans the three views, so `transaction()` is a no-op and
`transaction_key` None. What remains: the embedding store is the durable log and is
committed before any view changes; the server's readers-writer lock keeps its own readers
from seeing a write applied to one view but not the next; and after a crash (or a Milvus
failure mid-write, which marks the server degraded) `ServeState.reconcile` compares each
view's row hashes with the log and re-applies what differs. Another process reading the
same collections directly can see a write in one view before the others.

Credentials never reach the manifest: a cluster token comes from `MILVUS_TOKEN` (or
`token=` at load); user:password in the URI is dropped from what is saved.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from shopclip.index.base import (
    CategoryLike,
    Hit,
    StoreUnavailableError,
    VectorIndex,
    add_inputs,
    as_matrix,
    category_levels,
    category_text,
    id_list,
    read_manifest,
    save_folder,
)
from shopclip.index.stores.naming import default_name

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC's C core logs every fork() of this process at INFO
try:
    from pymilvus import DataType, MilvusClient, MilvusException
except ImportError as e:  # get_backend turns this into "pip install 'shopclip[milvus]'"
    raise ImportError(f"the milvus store needs pymilvus and milvus-lite ({e.name} is missing)") from e

EMBEDDED = "embedded"


class _QuietIterator(logging.Filter):
    """Milvus Lite answers query iterators without a server timestamp; pymilvus warns each time."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "mvccTs" not in record.getMessage()


logging.getLogger("pymilvus").addFilter(_QuietIterator())
for _h in logging.getLogger("pymilvus").handlers:
    _h.addFilter(_QuietIterator())
MAX_ID = 512
MAX_CATEGORY = 2048
MAX_LEVELS = 32
_BATCH = 2000  # rows per insert call (gRPC messages stay far below their 64 MB limit at 2,000-d)
_MAX_K = 16_384  # Milvus' topk limit


def _is_lite(uri: str) -> bool:
    return uri.endswith(".db")


def _lit(text: str) -> str:
    """A string literal for a Milvus filter expression (backslash and quote escaped)."""
    return json.dumps(str(text), ensure_ascii=False)


def redact(uri: str) -> str:
    parts = urlsplit(uri)
    if not parts.scheme or (parts.username is None and parts.password is None):
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class _Client:
    """One MilvusClient per URI in this process, shared by the views (Lite: one engine per file)."""

    _open: dict[str, _Client] = {}
    _lock = threading.Lock()

    def __init__(self, uri: str, label: str, token: str | None, timeout: float) -> None:
        self.uri, self.label = uri, label
        self.users = 0
        try:
            kwargs: dict[str, Any] = {"timeout": timeout}
            if token:
                kwargs["token"] = token
            self.client = MilvusClient(uri, **kwargs)
        except Exception as e:  # connection refused, bad URI, a Lite file that cannot be opened
            raise StoreUnavailableError(
                f"milvus store at {label} is unreachable ({_first_line(e)}): start Milvus or fix --uri "
                "(http://host:19530 for a server, a path ending in .db or 'embedded' for Milvus Lite)") from None

    @classmethod
    def get(cls, uri: str, label: str, token: str | None, timeout: float) -> _Client:
        with cls._lock:
            c = cls._open.get(uri)
            if c is None:
                c = cls._open[uri] = cls(uri, label, token, timeout)
            c.users += 1
            return c

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users <= 0:
                self._open.pop(self.uri, None)
                with contextlib.suppress(Exception):
                    self.client.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


class MilvusIndex(VectorIndex):
    backend = "milvus"
    per_view_name = True

    def __init__(
        self,
        dim: int,
        *,
        uri: str,
        view: str = "default",
        workdir: str | Path | None = None,
        name: str | None = None,
        alias: str | None = None,
        index_type: str = "HNSW",
        hnsw_m: int = 16,
        ef_construction: int = 64,
        ef_search: int = 100,
        timeout: float = 10.0,
        token: str | None = None,
        _existing: bool = False,
    ) -> None:
        """A new, empty collection, made live by `save()`; `load()` opens the live one (the alias)."""
        self.dim = int(dim)
        self.uri = str(uri)
        self.view = str(view)
        self.workdir = None if workdir is None else str(Path(workdir).resolve())
        self.name = name or default_name(self.workdir)
        self.alias = alias or f"{self.name}_{self.view}"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,200}", self.alias):
            raise ValueError(f"milvus collection name {self.alias!r}: use letters, digits and '_'")
        if index_type not in ("HNSW", "FLAT"):
            raise ValueError(f"milvus index_type must be HNSW or FLAT, got {index_type!r}")
        self.index_type = index_type
        self.hnsw_m = int(hnsw_m)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.timeout = float(timeout)
        self._seq = time.time_ns()
        self._closed = False
        target, label = self._target()
        self._conn = _Client.get(target, label, token or os.environ.get("MILVUS_TOKEN"), self.timeout)
        self._label = label
        try:
            if _existing:
                self._current = self.alias
                self._verify_live()
            else:
                self._current = f"{self.alias}_{uuid.uuid4().hex[:8]}"
                self._create(self._current)
        except BaseException:
            self.close()
            raise

    @property
    def _c(self) -> MilvusClient:
        return self._conn.client

    def _target(self) -> tuple[str, str]:
        uri = self.uri
        if uri == EMBEDDED:
            if self.workdir is None:
                raise StoreUnavailableError("milvus store: --uri embedded needs a work folder (WORKDIR/milvus.db); "
                                            "give --uri http://host:19530 or a path ending in .db otherwise")
            path = Path(self.workdir) / "milvus.db"
            return str(path), f"Milvus Lite {path}"
        if _is_lite(uri):
            path = Path(uri).expanduser().resolve()
            if not path.parent.is_dir():
                raise StoreUnavailableError(f"milvus store: folder {path.parent} for Milvus Lite file does not exist")
            return str(path), f"Milvus Lite {path}"
        if not uri.startswith(("http://", "https://", "tcp://", "grpc://")):
            raise StoreUnavailableError(
                f"milvus store: {redact(uri)!r} is not a Milvus URI: give --uri http://host:19530, "
                "a path ending in .db (Milvus Lite), or 'embedded'")
        return uri, redact(uri)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except StoreUnavailableError:
            raise
        except (MilvusException, ConnectionError, TimeoutError, OSError) as e:
            raise StoreUnavailableError(f"milvus store at {self._label} failed ({_first_line(e)}): check that "
                                        "Milvus is running and --uri; the server replays writes once it is back") from None
        except Exception as e:  # grpc's own errors are not MilvusException
            if type(e).__module__.startswith(("grpc", "pymilvus")):
                raise StoreUnavailableError(f"milvus store at {self._label} failed ({_first_line(e)}): check that "
                                            "Milvus is running and --uri") from None
            raise

    @property
    def options(self) -> dict[str, Any]:
        return {"index_type": self.index_type, "hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction,
                "ef_search": self.ef_search, "timeout": self.timeout}

    def _create(self, collection: str) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID)
        schema.add_field("seq", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("category", DataType.VARCHAR, max_length=MAX_CATEGORY, nullable=True)
        schema.add_field("cat_prefixes", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_LEVELS,
                         max_length=MAX_CATEGORY)
        schema.add_field("hash", DataType.VARCHAR, max_length=128, nullable=True)
        params = self._c.prepare_index_params()
        if self.index_type == "HNSW":
            params.add_index("vector", index_type="HNSW", metric_type="IP",
                             params={"M": self.hnsw_m, "efConstruction": self.ef_construction})
        else:
            params.add_index("vector", index_type="FLAT", metric_type="IP")
        with self._errors():
            self._c.create_collection(collection, schema=schema, index_params=params, consistency_level="Strong")

    def _verify_live(self) -> None:
        with self._errors():
            if not self._c.has_collection(self.alias):
                raise FileNotFoundError(
                    f"milvus store at {self._label} has no collection {self.alias!r}: run "
                    "`shopclip index build WORKDIR --store milvus --uri …` (or start `shopclip serve`, which fills it)")
            info = self._c.describe_collection(self.alias)
        dims = [f.get("params", {}).get("dim") for f in info.get("fields", []) if f.get("name") == "vector"]
        if dims and int(dims[0]) != self.dim:
            raise StoreUnavailableError(
                f"milvus collection {self.alias!r} at {self._label} holds {dims[0]}-d vectors, this work folder's are "
                f"{self.dim}-d: rebuild it with `shopclip index build WORKDIR --store milvus --uri …`")

    def _next_seq(self, n: int) -> range:
        start = max(self._seq + 1, time.time_ns())
        self._seq = start + n - 1
        return range(start, start + n)

    # -- mutation
    def add(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        categories: Sequence[CategoryLike] | None = None,
        *,
        hashes: Sequence[str | None] | None = None,
    ) -> None:
        x, ids, rows, given = add_inputs(ids, vectors, categories, hashes, self.dim)
        if not ids:
            return
        if too_long := [i for i in ids if len(i.encode()) > MAX_ID]:
            raise ValueError(f"milvus ids are at most {MAX_ID} bytes: {too_long[0][:40]!r}…")
        data = []
        for i, r, s in zip(ids, rows, self._next_seq(len(ids)), strict=True):
            cat = categories[r] if categories is not None else None
            levels = category_levels(cat)[:MAX_LEVELS]
            data.append({"id": i, "seq": s, "vector": x[r].tolist(), "category": category_text(cat),
                         "cat_prefixes": [">".join(levels[: d + 1]) for d in range(len(levels))], "hash": given[r]})
        with self._errors():
            for start in range(0, len(data), _BATCH):
                self._c.upsert(self._current, data[start : start + _BATCH])

    def remove(self, ids: Sequence[str]) -> int:
        ids = id_list(ids)
        if not ids:
            return 0
        with self._errors():
            present = [r["id"] for r in self._c.get(self._current, ids=ids, output_fields=["id"])]
            if present:
                self._c.delete(self._current, ids=present)
        return len(present)

    # -- queries
    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        category: CategoryLike = None,
        exclude: Collection[str] = (),
        allow: Collection[str] | None = None,
    ) -> list[list[Hit]]:
        q = as_matrix(queries, self.dim, "queries")
        k = min(int(k), _MAX_K)
        if k <= 0 or len(q) == 0:
            return [[] for _ in range(len(q))]
        expr = []
        levels = category_levels(category) if category else ()
        if levels:
            expr.append(f"array_contains(cat_prefixes, {_lit('>'.join(levels))})")
        skip = id_list(exclude)
        if skip:
            expr.append(f"id not in [{', '.join(_lit(i) for i in skip)}]")
        if allow is not None:
            if not allow:
                return [[] for _ in range(len(q))]
            expr.append(f"id in [{', '.join(_lit(i) for i in id_list(allow))}]")
        params = {"metric_type": "IP", "params": {"ef": max(self.ef_search, k)} if self.index_type == "HNSW" else {}}
        with self._errors():
            res = self._c.search(self._current, data=[v.tolist() for v in q], limit=k, filter=" and ".join(expr),
                                 output_fields=["id"], search_params=params)
        out = []
        for row in res:
            hits = [Hit(str(h["id"]), float(h["distance"])) for h in row]
            hits.sort(key=lambda h: -h.score)
            out.append(hits)
        return out

    def _get(self, id: str, field: str) -> Any:
        with self._errors():
            rows = self._c.get(self._current, ids=[id], output_fields=[field])
        if not rows:
            raise KeyError(id)
        return rows[0][field]

    def get_vector(self, id: str) -> np.ndarray:
        return np.asarray(self._get(id, "vector"), dtype=np.float32)

    def get_category(self, id: str) -> str | None:
        return self._get(id, "category")

    def __len__(self) -> int:
        with self._errors():
            return int(self._c.query(self._current, filter="", output_fields=["count(*)"])[0]["count(*)"])

    def __contains__(self, id: object) -> bool:
        if not isinstance(id, str):
            return False
        with self._errors():
            return bool(self._c.get(self._current, ids=[id], output_fields=["id"]))

    def _scan(self, fields: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self._errors():
            it = self._c.query_iterator(self._current, batch_size=4096, filter="", output_fields=fields)
            try:
                while batch := it.next():
                    out.extend(batch)
            finally:
                it.close()
        return out

    @property
    def ids(self) -> list[str]:
        rows = self._scan(["id", "seq"])
        rows.sort(key=lambda r: r["seq"])
        return [r["id"] for r in rows]

    def hashes(self) -> dict[str, str | None]:
        return {r["id"]: r.get("hash") for r in self._scan(["id", "hash"])}

    def health(self) -> str | None:
        try:
            with self._errors():
                if not self._c.has_collection(self._current):
                    return f"milvus store at {self._label} has no collection {self._current!r}: run `shopclip index build`"
        except StoreUnavailableError as e:
            return str(e)
        return None

    # -- persistence
    def save(self, folder: str | Path) -> None:
        """Point the alias at a new collection (atomic in Milvus), drop the old one, write the manifest."""
        count = len(self)
        if self._current != self.alias:
            with self._errors():
                old = None
                if self._c.has_collection(self.alias):  # the alias, or a plain collection of that name
                    with contextlib.suppress(MilvusException):
                        old = self._c.describe_alias(self.alias).get("collection_name")
                if old is None:
                    if self._c.has_collection(self.alias):  # a plain collection under the name: replace it
                        self._c.drop_collection(self.alias)
                    self._c.create_alias(self._current, self.alias)
                else:
                    self._c.alter_alias(self._current, self.alias)
                for stale in self._c.list_collections():
                    if stale.startswith(self.alias + "_") and stale != self._current and \
                            re.fullmatch(r"[0-9a-f]{8}", stale[len(self.alias) + 1:]):
                        self._c.drop_collection(stale)  # the previous live one and crashed builds
            self._current = self.alias
        manifest = {
            "backend": self.backend,
            "dim": self.dim,
            "count": count,
            "uri": EMBEDDED if self.uri == EMBEDDED else redact(self.uri),
            "alias": self.alias,
            "view": self.view,
            "name": self.name,
            "workdir": self.workdir,
            "options": self.options,
        }
        save_folder(folder, manifest, None)

    @classmethod
    def load(cls, folder: str | Path, **overrides: Any) -> MilvusIndex:
        manifest = read_manifest(folder)
        if manifest["backend"] != cls.backend:
            raise ValueError(f"{folder} holds a {manifest['backend']!r} index, not {cls.backend!r}")
        uri = overrides.pop("uri", None) or manifest["uri"]
        here = Path(folder).resolve().parent.parent
        workdir = overrides.pop("workdir", None) or (
            str(here) if (here / "milvus.db").exists() or manifest.get("workdir") is None else manifest["workdir"])
        dim = overrides.pop("dim", manifest["dim"])  # the caller's vectors, checked against the live table
        options = {**manifest.get("options", {}), **overrides}
        return cls(dim=dim, uri=uri, view=manifest.get("view", "default"), workdir=workdir,
                   name=manifest.get("name"), alias=manifest["alias"], _existing=True, **options)

    def close(self) -> None:
        """Drop an unsaved new collection (a build that never finished) and release the client."""
        if self._closed:
            return
        self._closed = True
        conn = getattr(self, "_conn", None)
        if conn is None:
            return
        if getattr(self, "_current", self.alias) != self.alias:
            with contextlib.suppress(Exception):
                self._c.drop_collection(self._current)
        conn.release()

    def __repr__(self) -> str:
        return f"MilvusIndex(collection={self._current!r}, dim={self.dim}, at={self._label})"
