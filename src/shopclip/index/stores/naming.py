"""Names server stores give their tables/collections, derived from the work folder."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_NAME_RE = re.compile(r"[^a-z0-9_]+")


def default_name(workdir: str | Path | None) -> str:
    """`shopclip_<folder>_<hash>`: readable, and distinct for two work folders of the same name."""
    if workdir is None:
        return "shopclip"
    path = Path(workdir).resolve()
    slug = _NAME_RE.sub("_", path.name.lower()).strip("_")[:16] or "work"
    return f"shopclip_{slug}_{hashlib.sha1(str(path).encode()).hexdigest()[:6]}"
