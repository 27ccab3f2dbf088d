"""Helpers for testing and benchmarking the server for real: uvicorn on 127.0.0.1, not a mock.

`running(app)` serves an app from a background thread on a free loopback port (so tests
in one process share one loaded model); `spawn(...)` starts a separate server process,
for tests that must kill it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(app: Any, *, timeout: float = 30.0) -> Iterator[str]:
    """Serve `app` with uvicorn in a daemon thread; yields its base URL, stops it on exit."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# Started with `python -c`: builds the app, optionally with a failpoint that kills the
# process outright (os._exit skips every cleanup, like a power cut of the process).
_LAUNCHER = """
import os, sys, uvicorn
from shopclip.serve.app import create_app
crash_at = os.environ.get("SHOPCLIP_TEST_CRASH_AT")
def failpoint(name):
    if crash_at and name == crash_at:
        os._exit(137)
app = create_app(sys.argv[1], api_key=os.environ.get("SHOPCLIP_TEST_KEY"), failpoint=failpoint,
                 preload_model=os.environ.get("SHOPCLIP_TEST_PRELOAD") == "1",
                 snapshot_every=int(os.environ.get("SHOPCLIP_TEST_SNAPSHOT_EVERY", "1000")))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


class ServerProcess:
    """A server in its own process: `kill()` is SIGKILL, nothing gets to flush or clean up."""

    def __init__(self, workdir: Path, *, api_key: str | None = None, preload: bool = False,
                 crash_at: str | None = None, log: Path | None = None, snapshot_every: int = 1000) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "SHOPCLIP_TEST_PRELOAD": "1" if preload else "0", "SHOPCLIP_TEST_SNAPSHOT_EVERY": str(snapshot_every)}
        env.pop("SHOPCLIP_API_KEY", None)
        if api_key:
            env["SHOPCLIP_TEST_KEY"] = api_key
        if crash_at:
            env["SHOPCLIP_TEST_CRASH_AT"] = crash_at
        self._log = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed in kill)
        self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(workdir), str(self.port)],
                                     env=env, stdout=self._log, stderr=self._log)

    def wait_ready(self, timeout: float = 120.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before answering")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server on {self.url} not ready after {timeout}s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.kill()


@cache
def shared_model(ref: str = "default") -> Any:
    """One loaded model per process: loading takes seconds, and every test app can share it."""
    from shopclip.models import load_model

    model = load_model(ref)
    model.eval()
    return model


def select_rows(rows: Sequence[dict[str, Any]], diverse: Sequence[dict[str, Any]], per_group: int = 8) -> list[dict]:
    """Real products for serve tests: a diverse base plus shoes, coffee mugs and lamps, so a
    recommendation test has clearly different interests to keep apart."""
    def take(pred: Any, n: int) -> list[dict]:
        return sorted((r for r in rows if pred(r)), key=lambda r: r["id"])[:n]

    groups = [
        take(lambda r: r["category"][:2] == ["Footwear", "Shoes"], per_group),
        take(lambda r: "Coffee Mugs" in r["category"], per_group),
        take(lambda r: "Lamp" in r["title"] and r["category"][0].startswith("Home"), per_group),
    ]
    out: dict[str, dict] = {}
    for r in [*diverse, *(r for g in groups for r in g)]:
        out.setdefault(r["id"], r)
    return list(out.values())


def build_workdir(catalog: Path, workdir: Path) -> Path:
    """`shopclip build` over a small catalog; stages already done (same inputs) are skipped."""
    from shopclip.pipeline.build import BuildOptions, build

    build(catalog, workdir, BuildOptions(progress=False))
    return workdir


def cached_workdir(cache_root: Path, rows: Sequence[dict[str, Any]], write_catalog: Any) -> Path:
    """Build the serve-test work folder once under `cache_root` (pytest's cache) and reuse it.

    The build is fingerprinted by catalog content and model, so a changed selection or a
    new default model rebuilds it; tests that write must copy it first.
    """
    cache_root.mkdir(parents=True, exist_ok=True)
    catalog = write_catalog(cache_root / "catalog", list(rows))
    return build_workdir(catalog, cache_root / "work")
