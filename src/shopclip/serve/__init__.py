"""Serving: the HTTP API (FastAPI), the web page, and `shopclip serve`.

Imports are lazy so `import shopclip.serve` does not pull FastAPI into CLI start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shopclip.serve.app import create_app
    from shopclip.serve.cli import serve_command
    from shopclip.serve.state import ServeState

__all__ = ["ServeState", "create_app", "serve_command"]

_LAZY = {"create_app": "shopclip.serve.app", "serve_command": "shopclip.serve.cli", "ServeState": "shopclip.serve.state"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
