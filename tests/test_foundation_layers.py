"""Imports flow one way: a package may import its own layer and lower ones, never a higher one.

Every `import` in every module under src/shopclip counts, including the lazy ones inside
functions: a lazy import of a higher layer is still a cycle, only one that fails later.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "shopclip"

# Top-level package (or module) of shopclip → its layer. Lower numbers are lower layers;
# packages on one layer may import each other only through lower layers' ideas of them.
LAYERS: dict[str, int] = {
    "core": 0,
    "catalog": 1,
    "models": 2,
    "index": 2,
    "grounding": 3,
    "enrich": 3,
    "train": 3,
    "eval": 3,
    "query": 3,
    "heads": 3,
    "pipeline": 4,
    "search": 4,
    "understand": 4,
    "serve": 5,
    "cli": 5,
}
# shopclip/__init__.py re-exports names lazily (module paths in strings): it sits above everything.
TOP = "__init__"


def _unit(module: str) -> str | None:
    """'shopclip.models.features' → 'models'; None for modules outside shopclip."""
    parts = module.split(".")
    if parts[0] != "shopclip":
        return None
    return parts[1] if len(parts) > 1 else TOP


def imports_of(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """(line, absolute module) for every import statement in a file under `root` (the shopclip folder)."""
    package = list(path.relative_to(root.parent).with_suffix("").parts[:-1])
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            if mod == "shopclip":  # `from shopclip import pipeline` imports the subpackage
                out.extend((node.lineno, f"shopclip.{a.name}") for a in node.names)
    return sorted(out)


def layer_violations(root: Path = SRC) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        own = _unit(".".join(path.relative_to(root.parent).with_suffix("").parts))
        if own == TOP:
            continue
        for line, mod in imports_of(path, root):
            other = _unit(mod)
            if other is None or other in (TOP, own) or other not in LAYERS:
                continue
            if LAYERS[other] > LAYERS[own]:
                bad.append(f"{path.relative_to(root.parent)}:{line}: {own} (layer {LAYERS[own]}) imports "
                           f"{mod} (layer {LAYERS[other]})")
    return bad


def test_every_package_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
             if (p.is_file() and p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").exists())}
    assert units - {TOP} == set(LAYERS), "add new packages to LAYERS in this test"


def test_imports_flow_from_higher_to_lower_layers():
    assert layer_violations() == []


def test_the_checker_finds_lazy_and_relative_upward_imports(tmp_path):
    root = tmp_path / "shopclip"
    (root / "train").mkdir(parents=True)
    probe = root / "train" / "probe.py"
    probe.write_text("def f():\n    from shopclip.pipeline.build import Stage\n\n"
                     "from . import augment\nfrom ..core import io\nfrom ..search import SearchEngine\n")
    assert [m for _, m in imports_of(probe, root)] == [
        "shopclip.pipeline.build", "shopclip.train", "shopclip.core", "shopclip.search"]  # by line
    bad = layer_violations(root)
    assert len(bad) == 2 and "imports shopclip.pipeline.build" in bad[0] and "shopclip.search" in bad[1]
