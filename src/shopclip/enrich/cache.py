"""SQLite cache of finished enrichments keyed by (backend, model, prompt version, input hash).

The input hash covers the product's source fields *and* every setting that changes the result
(rounds, max tokens, temperature, check thresholds), so a re-run with the same settings costs one
indexed read per product and a changed setting never serves a stale answer. WAL mode, one
connection per thread, safe for the concurrent HTTP backend.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS enrich_cache (
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (backend, model, prompt_version, input_hash)
)
"""


class EnrichCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.hits = 0
        self.misses = 0
        with self._conn() as c:
            c.execute(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get(self, backend: str, model: str, prompt_version: str, input_hash: str) -> dict[str, Any] | None:
        row = self._conn().execute(
            "SELECT result FROM enrich_cache WHERE backend=? AND model=? AND prompt_version=? AND input_hash=?",
            (backend, model, prompt_version, input_hash)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def get_many(self, backend: str, model: str, prompt_version: str,
                 hashes: Iterable[str]) -> dict[str, dict[str, Any]]:
        hashes = list(hashes)
        out: dict[str, dict[str, Any]] = {}
        conn = self._conn()
        for start in range(0, len(hashes), 500):
            chunk = hashes[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for h, res in conn.execute(
                    f"SELECT input_hash, result FROM enrich_cache WHERE backend=? AND model=? AND prompt_version=? "
                    f"AND input_hash IN ({marks})", (backend, model, prompt_version, *chunk)):
                out[h] = json.loads(res)
        self.hits += len(out)
        self.misses += len(hashes) - len(out)
        return out

    def put(self, backend: str, model: str, prompt_version: str, input_hash: str, result: dict[str, Any]) -> None:
        self.put_many(backend, model, prompt_version, [(input_hash, result)])

    def put_many(self, backend: str, model: str, prompt_version: str,
                 items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        now = time.time()
        conn = self._conn()
        with conn:
            conn.executemany(
                "INSERT OR REPLACE INTO enrich_cache VALUES (?, ?, ?, ?, ?, ?)",
                [(backend, model, prompt_version, h, json.dumps(r, ensure_ascii=False), now) for h, r in items])

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM enrich_cache").fetchone()[0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
