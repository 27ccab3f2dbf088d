"""The work folder's layout and manifest, shared by the pipeline, the CLI and the server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shopclip.core.io import atomic_write_json, read_json

MANIFEST = "shopclip.json"


@dataclass(frozen=True)
class WorkDir:
    root: Path

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.valid.jsonl"

    @property
    def errors(self) -> Path:
        return self.root / "catalog.errors.jsonl"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def index(self) -> Path:
        return self.root / "index"

    def stage_dir(self, name: str) -> Path:
        return self.root / name

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def read(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"format": "shopclip.workdir/1", "stages": {}}
        return read_json(self.manifest_path)

    def write(self, manifest: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.manifest_path, manifest)

    def model_ref(self) -> str:
        return self.read().get("model", "default")
