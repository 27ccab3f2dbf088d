"""Stable content hashes: the keys of every cache (embeddings, tower features, crops)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def sha1_bytes(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def file_sha1(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fp:
        while block := fp.read(chunk):
            h.update(block)
    return h.hexdigest()


def json_sha1(obj: Any) -> str:
    """Hash of a JSON-able object, independent of key order."""
    return sha1_bytes(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode())
