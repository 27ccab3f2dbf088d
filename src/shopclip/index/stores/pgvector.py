"""PostgreSQL + pgvector store: one table per view, an HNSW index, writes as transactions.

Table `{name}_{view}`: `id text primary key, seq bigint (insertion order), embedding
vector(dim), category text, cat_prefixes text[], hash text`, with an HNSW index on
`embedding vector_ip_ops` (inner product: cosine on unit vectors) and a GIN index on
`cat_prefixes`. A category filter is `cat_prefixes @> ARRAY[prefix]`: the row's category as
every whole-level, lower-cased prefix ("footwear", "footwear>shoes", …), so it is exactly
`category_matches` of base.py and no LIKE wildcard can leak. pgvector's iterative index scan
(`hnsw.iterative_scan = relaxed_order`, ≥ 0.8) keeps filtered queries at k results; the
planner may instead answer a tight filter exactly from the GIN index, and a query the walk
leaves short of k is re-asked exactly.

Builds never leave a half-written store: a new index (`create_index`, what `index build`
and the server's repair use) fills a staging table `{table}__new_{token}` with binary COPY,
builds its HNSW index once at the end, and `save()` swaps it in (drop old, rename new) in
one transaction; the manifest is written after that commit. An index opened with `load()`
is the live table and every `add`/`remove` is one statement group in a transaction:
indexes opened on the same database share one connection pool and one `transaction_key`,
and inside `transaction()` all their changes (the server's write to three views) are one
PostgreSQL transaction on the writer thread's connection. Readers in other threads use
pooled autocommit connections and see a write all at once or not at all.

Passwords never reach the manifest: it keeps the URI without one. Give it at load time the
way libpq does (`PGPASSWORD`, `~/.pgpass`, `PGPASSFILE`), or pass `--uri` again.
Connection failures, a missing table or extension and a dimension the table does not hold
raise `StoreUnavailableError` with one line naming the store and the fix.
"""

from __future__ import annotations

import contextlib
import re
import threading
import uuid
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
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

try:
    import psycopg
    from pgvector.psycopg import register_vector
    from psycopg import sql
except ImportError as e:  # get_backend turns this into "pip install 'shopclip[pgvector]'"
    raise ImportError(f"the pgvector store needs psycopg and pgvector ({e.name} is missing)") from e

EMBEDDED = "embedded"
MIN_PGVECTOR = (0, 8, 0)  # hnsw.iterative_scan
# Server-side failures that mean "the database is not usable now", as opposed to a bug in a query.
_DOWN = (psycopg.OperationalError, psycopg.InterfaceError)


def redact(uri: str) -> str:
    """The URI without its password (what manifests and messages show)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# --------------------------------------------------------------------------- connections


class Pool:
    """Up to `max_size` autocommit connections, each checked before it is handed out.

    Deliberately small: a connection that fails to open raises at once (the caller answers
    503 now instead of queueing), and the first request after the database is back opens a
    fresh connection, with no background reconnect schedule to wait for. (psycopg_pool's
    exponential reconnect back-off kept a pool failing for over a minute after PostgreSQL
    had restarted in the fault tests here.)
    """

    def __init__(self, conninfo: str, max_size: int, timeout: float, configure: Callable[[Any], None]) -> None:
        self.conninfo = conninfo
        self.timeout = float(timeout)
        self._configure = configure
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_size)
        self._max = max_size

    def getconn(self) -> Any:
        if not self._slots.acquire(timeout=self.timeout):
            raise psycopg.OperationalError(f"all {self._max} connections busy for {self.timeout:.0f}s")
        try:
            while True:
                with self._lock:
                    conn = self._idle.pop() if self._idle else None
                if conn is None:
                    break
                try:
                    conn.execute("")  # a round trip: drops connections a restarted server closed
                    return conn
                except psycopg.Error:
                    conn.close()
            conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=max(1, int(self.timeout)))
            try:
                self._configure(conn)
            except BaseException:
                conn.close()
                raise
            return conn
        except BaseException:
            self._slots.release()
            raise

    def putconn(self, conn: Any) -> None:
        try:
            if conn.closed or conn.broken or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.close()
            else:
                with self._lock:
                    self._idle.append(conn)
        finally:
            self._slots.release()

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        conn = self.getconn()
        try:
            yield conn
        finally:
            self.putconn(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


# --------------------------------------------------------------------------- one database


class Database:
    """A connection pool to one database, shared by every index opened on it in this process.

    `transaction()` pins one connection to the calling thread until the outermost block
    ends; every index on this database uses it meanwhile, so their changes commit together.
    """

    _open: dict[str, Database] = {}
    _open_lock = threading.Lock()

    def __init__(self, conninfo: str, label: str, *, max_size: int = 16, timeout: float = 5.0) -> None:
        self.conninfo = conninfo
        self.label = label
        self.key = f"pgvector:{label}"
        self.timeout = float(timeout)
        self._max_size = int(max_size)
        self._pool: Pool | None = None
        self._pool_lock = threading.Lock()
        self._local = threading.local()
        self._settings: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()
        self.users = 0

    @classmethod
    def get(cls, conninfo: str, label: str, timeout: float = 5.0) -> Database:
        with cls._open_lock:
            db = cls._open.get(conninfo)
            if db is None:
                db = cls._open[conninfo] = cls(conninfo, label, timeout=timeout)
            db.users += 1
            return db

    def release(self) -> None:
        with self._open_lock:
            self.users -= 1
            if self.users <= 0:
                self._open.pop(self.conninfo, None)
                if self._pool is not None:
                    self._pool.close()
                    self._pool = None

    def down(self, e: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(f"pgvector store at {self.label} is unreachable ({_first_line(e)}): start "
                                     "PostgreSQL or fix --uri; the server replays writes once it is back")

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        try:
            yield
        except _DOWN as e:
            raise self.down(e) from None

    def check(self) -> None:
        """Connect once outside the pool: the exact reason a database cannot be used, and the extension."""
        try:
            with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=int(self.timeout)) as conn:
                row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
                if row is None:
                    try:
                        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                    except psycopg.Error as e:
                        raise StoreUnavailableError(
                            f"pgvector store at {self.label}: the 'vector' extension is not installed and cannot "
                            f"be created here ({_first_line(e)}): run `CREATE EXTENSION vector;` as a superuser "
                            f"(pgvector >= {'.'.join(map(str, MIN_PGVECTOR))} must be installed on the server)"
                        ) from None
                    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        except StoreUnavailableError:
            raise
        except psycopg.Error as e:
            raise self.down(e) from None
        version = tuple(int(p) for p in re.findall(r"\d+", row[0])[:3])
        if version < MIN_PGVECTOR:
            raise StoreUnavailableError(
                f"pgvector store at {self.label}: extension 'vector' is {row[0]}, filtered search needs "
                f">= {'.'.join(map(str, MIN_PGVECTOR))}: run `ALTER EXTENSION vector UPDATE;` after upgrading pgvector")

    def _configure(self, conn: Any) -> None:
        register_vector(conn)
        conn.execute("SET hnsw.iterative_scan = relaxed_order")

    @property
    def pool(self) -> Pool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = Pool(self.conninfo, self._max_size, self.timeout, self._configure)
            return self._pool

    @property
    def in_transaction(self) -> bool:
        return getattr(self._local, "conn", None) is not None

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        """The thread's transaction connection if it has one, else a pooled autocommit connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            with self.errors():
                yield conn
            return
        with self.errors(), self.pool.connection() as conn:
            yield conn

    def on_commit(self, fn: Callable[[], None]) -> None:
        """Run `fn` after the current transaction commits (now, when there is none)."""
        if self.in_transaction:
            self._local.after.append(fn)
        else:
            fn()

    def before_commit(self, fn: Callable[[Any], None]) -> None:
        """Run `fn(connection)` as the last statements of the current transaction (its own one, when none)."""
        if self.in_transaction:
            self._local.before.append(fn)
        else:
            with self.transaction(), self.connection() as conn:
                fn(conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self.in_transaction:  # nested: joins the outer transaction
            yield
            return
        with self.errors():
            conn = self.pool.getconn()
        self._local.conn, self._local.after, self._local.before = conn, [], []
        try:
            with self.errors(), conn.transaction():
                yield
                for fn in self._local.before:
                    fn(conn)
            after = self._local.after
        except BaseException:
            self._settings.pop(conn, None)  # a rolled-back SET is undone
            raise
        finally:
            self._local.conn = None
            with contextlib.suppress(Exception):
                self.pool.putconn(conn)
        for fn in after:
            fn()

    def setting(self, conn: Any, name: str, value: str) -> None:
        """SET a session variable once per connection, not before every query."""
        seen = self._settings.setdefault(conn, {})
        if seen.get(name) != value:
            conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(*name.split(".")), sql.Literal(value)))
            if not self.in_transaction:
                seen[name] = value


# --------------------------------------------------------------------------- the index


class PgVectorIndex(VectorIndex):
    backend = "pgvector"
    per_view_name = True

    def __init__(
        self,
        dim: int,
        *,
        uri: str,
        view: str = "default",
        workdir: str | Path | None = None,
        name: str | None = None,
        table: str | None = None,
        hnsw_m: int = 16,
        ef_construction: int = 64,
        ef_search: int = 100,
        max_scan_tuples: int = 20_000,
        timeout: float = 5.0,
        _existing: bool = False,
    ) -> None:
        """A new, empty index in a staging table, swapped in by `save()`; `load()` opens the live one.

        `uri`: `postgresql://user@host:5432/db` or "embedded" (the bundled server, data in
        `workdir/pgdata`). The live table is `table`, else `{name}_{view}` (name: from the
        work folder)."""
        self.dim = int(dim)
        if not 1 <= self.dim <= 2000:
            raise ValueError(f"pgvector's HNSW index takes 1 to 2000 dimensions, got {self.dim}")
        self.uri = str(uri)
        self.view = str(view)
        self.workdir = None if workdir is None else str(Path(workdir).resolve())
        self.name = name or default_name(self.workdir)
        self.table = table or f"{self.name}_{self.view}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,43}", self.table):
            raise ValueError(f"pgvector table name {self.table!r}: use 1-44 lower-case letters, digits, '_'")
        self.hnsw_m = int(hnsw_m)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.max_scan_tuples = int(max_scan_tuples)
        self.timeout = float(timeout)
        conninfo, label = self._conninfo()
        self._db = Database.get(conninfo, label, self.timeout)
        self._closed = False
        self._tx_rows = False  # rows added to the staging table inside a still-open transaction
        try:
            self._db.check()
            if _existing:
                self._current = self.table
                self._has_hnsw = True
                self._verify_live()
            else:
                self._current = f"{self.table}__new_{uuid.uuid4().hex[:8]}"
                self._has_hnsw = False
                self._create(self._current)
        except BaseException:
            self.close()
            raise

    # -- connection
    def _conninfo(self) -> tuple[str, str]:
        if self.uri == EMBEDDED:
            if self.workdir is None:
                raise StoreUnavailableError("pgvector store: --uri embedded needs a work folder for its data "
                                            "(WORKDIR/pgdata); give --uri postgresql://user@host:5432/db otherwise")
            from shopclip.index.stores.embedded_pg import embedded_server

            uri = embedded_server(Path(self.workdir) / "pgdata").uri
            return uri, f"embedded PostgreSQL in {Path(self.workdir) / 'pgdata'}"
        if not self.uri.startswith(("postgresql://", "postgres://")):
            raise StoreUnavailableError(
                f"pgvector store: {redact(self.uri)!r} is not a PostgreSQL URI: give "
                "--uri postgresql://user@host:5432/db, or --uri embedded for a server under the work folder")
        parts = urlsplit(self.uri)
        label = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"
        return self.uri, label

    @property
    def options(self) -> dict[str, Any]:
        return {"hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                "max_scan_tuples": self.max_scan_tuples, "timeout": self.timeout}

    def _ident(self, suffix: str = "") -> sql.Identifier:
        return sql.Identifier(self._current + suffix)

    def _create(self, table: str) -> None:
        with self._db.connection() as conn:
            conn.execute(sql.SQL(
                "CREATE TABLE {} (id text PRIMARY KEY, seq bigint GENERATED BY DEFAULT AS IDENTITY, "
                "embedding vector({}) NOT NULL, category text, cat_prefixes text[] NOT NULL DEFAULT '{{}}', "
                "hash text)").format(sql.Identifier(table), sql.Literal(self.dim)))

    def _verify_live(self) -> None:
        with self._db.connection() as conn:
            row = conn.execute(
                "SELECT a.atttypmod FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) "
                "AND a.attname = 'embedding'", (f'"{self.table}"',)).fetchone()
        if row is None:
            raise FileNotFoundError(
                f"pgvector store at {self._db.label} has no table {self.table!r}: run "
                "`shopclip index build WORKDIR --store pgvector --uri …` (or start `shopclip serve`, which fills it)")
        if int(row[0]) != self.dim:
            raise StoreUnavailableError(
                f"pgvector table {self.table!r} at {self._db.label} holds {row[0]}-d vectors, this work folder's are "
                f"{self.dim}-d: rebuild it with `shopclip index build WORKDIR --store pgvector --uri …`")

    def _build_indexes(self) -> None:
        """HNSW + GIN over what the staging table holds: one bulk build, not row-by-row inserts."""
        if self._has_hnsw:
            return
        # on a connection of its own when the rows are committed: a long build inside a write_together
        # transaction would otherwise run after another view's swap and hold that live table locked
        conns = self._db.connection() if self._tx_rows else _own(self._db)
        with conns as conn:
            conn.execute("SET maintenance_work_mem = '512MB'")
            conn.execute(sql.SQL(
                "CREATE INDEX {} ON {} USING hnsw (embedding vector_ip_ops) WITH (m = {}, ef_construction = {})"
            ).format(self._ident("_hnsw"), self._ident(), sql.Literal(self.hnsw_m), sql.Literal(self.ef_construction)))
            conn.execute(sql.SQL("CREATE INDEX {} ON {} USING gin (cat_prefixes)").format(
                self._ident("_cat"), self._ident()))
            conn.execute(sql.SQL("ANALYZE {}").format(self._ident()))
            conn.execute("RESET maintenance_work_mem")
        self._has_hnsw = True

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
        records = []
        for i, r in zip(ids, rows, strict=True):
            cat = categories[r] if categories is not None else None
            records.append((i, x[r], category_text(cat), _prefixes(cat), given[r]))
        cols = sql.SQL("(id, embedding, category, cat_prefixes, hash)")
        self._tx_rows = self._tx_rows or (self._db.in_transaction and self._current != self.table)
        with self._db.transaction(), self._db.connection() as conn:
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(self._ident()), (ids,))
            if len(records) <= 32:
                with conn.cursor() as cur:
                    cur.executemany(sql.SQL("INSERT INTO {} {} VALUES (%s, %s, %s, %s, %s)").format(
                        self._ident(), cols), records)
            else:
                with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} {} FROM STDIN WITH (FORMAT BINARY)").format(
                        self._ident(), cols)) as copy:
                    copy.set_types(["text", "vector", "text", "text[]", "text"])
                    for rec in records:
                        copy.write_row(rec)

    def remove(self, ids: Sequence[str]) -> int:
        ids = id_list(ids)
        if not ids:
            return 0
        with self._db.transaction(), self._db.connection() as conn:
            cur = conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(self._ident()), (ids,))
            return int(cur.rowcount)

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
        k = int(k)
        if k <= 0 or len(q) == 0:
            return [[] for _ in range(len(q))]
        if not self._has_hnsw:
            self._build_indexes()
        where, params = [], []
        levels = category_levels(category) if category else ()
        if levels:
            where.append(sql.SQL("cat_prefixes @> ARRAY[%s]::text[]"))
            params.append(">".join(levels))
        skip = id_list(exclude)
        if skip:
            where.append(sql.SQL("id <> ALL(%s)"))
            params.append(skip)
        if allow is not None:
            where.append(sql.SQL("id = ANY(%s)"))
            params.append(id_list(allow))
        cond = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
        approx = sql.SQL("SELECT id, embedding <#> %s AS d FROM {}{} ORDER BY embedding <#> %s LIMIT %s").format(
            self._ident(), cond)
        # `+ 0` hides the ordering from the HNSW index: an exact scan of the (filtered) rows
        exact = sql.SQL("SELECT id, embedding <#> %s AS d FROM {}{} ORDER BY (embedding <#> %s) + 0 LIMIT %s").format(
            self._ident(), cond)
        out = []
        with self._db.connection() as conn:
            self._db.setting(conn, "hnsw.ef_search", str(max(self.ef_search, min(k, 1000))))
            self._db.setting(conn, "hnsw.max_scan_tuples", str(self.max_scan_tuples))
            for vec in q:
                rows = conn.execute(approx, (vec, *params, vec, k)).fetchall()
                if len(rows) < k:  # the walk ran out of allowed rows within its budget: ask exactly
                    rows = conn.execute(exact, (vec, *params, vec, k)).fetchall()
                rows.sort(key=lambda r: r[1])  # relaxed_order: re-sort the k rows
                out.append([Hit(str(i), -float(d)) for i, d in rows])
        return out

    def get_vector(self, id: str) -> np.ndarray:
        with self._db.connection() as conn:
            row = conn.execute(sql.SQL("SELECT embedding FROM {} WHERE id = %s").format(self._ident()),
                               (id,)).fetchone()
        if row is None:
            raise KeyError(id)
        value = row[0]
        return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)

    def get_category(self, id: str) -> str | None:
        with self._db.connection() as conn:
            row = conn.execute(sql.SQL("SELECT category FROM {} WHERE id = %s").format(self._ident()),
                               (id,)).fetchone()
        if row is None:
            raise KeyError(id)
        return row[0]

    def __len__(self) -> int:
        with self._db.connection() as conn:
            return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self._ident())).fetchone()[0])

    def __contains__(self, id: object) -> bool:
        if not isinstance(id, str):
            return False
        with self._db.connection() as conn:
            return conn.execute(sql.SQL("SELECT 1 FROM {} WHERE id = %s").format(self._ident()),
                                (id,)).fetchone() is not None

    @property
    def ids(self) -> list[str]:
        with self._db.connection() as conn:
            return [r[0] for r in conn.execute(sql.SQL("SELECT id FROM {} ORDER BY seq").format(self._ident()))]

    def hashes(self) -> dict[str, str | None]:
        with self._db.connection() as conn:
            return dict(conn.execute(sql.SQL("SELECT id, hash FROM {}").format(self._ident())).fetchall())

    # -- transactions, health
    @property
    def transaction_key(self) -> str | None:
        return self._db.key

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        return self._db.transaction()

    def health(self) -> str | None:
        try:
            with self._db.errors(), self._db.pool.connection() as conn:
                conn.execute(sql.SQL("SELECT 1 FROM {} LIMIT 0").format(self._ident()))
        except StoreUnavailableError as e:
            return str(e)
        except psycopg.Error as e:
            return f"pgvector table {self._current!r} at {self._db.label}: {_first_line(e)}"
        return None

    # -- persistence
    def save(self, folder: str | Path) -> None:
        """Swap a staging table in (one transaction), then write the manifest: where the rows are."""
        count = len(self)
        if self._current != self.table:
            self._build_indexes()  # before any view's swap: no live table is locked during a build
            staging = self._current

            def swap(conn: Any) -> None:
                leftovers = [r[0] for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                    "AND tablename LIKE %s AND tablename <> %s", (_like_prefix(self.table + "__new_"), staging))]
                for old in [self.table, *leftovers]:  # the old live table and crashed builds' staging tables
                    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(old)))
                conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                    sql.Identifier(staging), sql.Identifier(self.table)))
                for suffix in ("_hnsw", "_cat", "_pkey"):
                    conn.execute(sql.SQL("ALTER INDEX IF EXISTS {} RENAME TO {}").format(
                        sql.Identifier(staging + suffix), sql.Identifier(self.table + suffix)))

            def swapped() -> None:
                self._current = self.table

            # inside write_together (index build), every view swaps at the end of one transaction
            in_tx = self._db.in_transaction
            self._db.before_commit(swap)
            if in_tx:
                self._db.on_commit(swapped)
            else:
                swapped()
        manifest = {
            "backend": self.backend,
            "dim": self.dim,
            "count": count,
            "uri": EMBEDDED if self.uri == EMBEDDED else redact(self.uri),
            "table": self.table,
            "view": self.view,
            "name": self.name,
            "workdir": self.workdir,
            "options": self.options,
        }
        self._db.on_commit(lambda: save_folder(folder, manifest, None))

    @classmethod
    def load(cls, folder: str | Path, **overrides: Any) -> PgVectorIndex:
        manifest = read_manifest(folder)
        if manifest["backend"] != cls.backend:
            raise ValueError(f"{folder} holds a {manifest['backend']!r} index, not {cls.backend!r}")
        uri = overrides.pop("uri", None) or manifest["uri"]
        workdir = overrides.pop("workdir", None) or _workdir_of(folder, manifest)
        dim = overrides.pop("dim", manifest["dim"])  # the caller's vectors, checked against the live table
        options = {**manifest.get("options", {}), **overrides}
        return cls(dim=dim, uri=uri, view=manifest.get("view", "default"), workdir=workdir,
                   name=manifest.get("name"), table=manifest["table"], _existing=True, **options)

    def close(self) -> None:
        """Drop an unsaved staging table (a build that never finished) and release the pool."""
        if self._closed:
            return
        self._closed = True
        db = getattr(self, "_db", None)
        if db is None:
            return
        if getattr(self, "_current", self.table) != self.table and not db.in_transaction:
            with contextlib.suppress(Exception), db.connection() as conn:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._ident()))
        db.release()

    def __repr__(self) -> str:
        return f"PgVectorIndex(table={self._current!r}, dim={self.dim}, at={self._db.label})"


@contextlib.contextmanager
def _own(db: Database) -> Iterator[Any]:
    """A pooled connection even while this thread holds a transaction."""
    with db.errors(), db.pool.connection() as conn:
        yield conn


def _prefixes(category: CategoryLike) -> list[str]:
    """Every whole-level prefix of the lower-cased path: what `category=` may ask for."""
    levels = category_levels(category)
    return [">".join(levels[: d + 1]) for d in range(len(levels))]


def _like_prefix(text: str) -> str:
    return re.sub(r"([\\%_])", r"\\\1", text) + "%"


def _workdir_of(folder: str | Path, manifest: dict[str, Any]) -> str | None:
    """Where an embedded server's data is: beside the index folder (WORKDIR/index/VIEW) when it
    is there, so a moved work folder still finds it; else where the manifest says."""
    here = Path(folder).resolve().parent.parent
    if (here / "pgdata").is_dir() or manifest.get("workdir") is None:
        return str(here)
    return manifest.get("workdir")
