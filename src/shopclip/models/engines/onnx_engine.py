"""ONNX Runtime engine: the towers as exported graphs, fp32 or int8, cached next to the model.

Graph files are keyed by the tower's weights fingerprint (the same one the feature
cache uses: name, every weight and buffer, preprocessing), so a retrained or swapped
tower gets new graphs and stale ones of that model folder are deleted:

    <model folder>/onnx/image-<fp20>.fp32.onnx
    <model folder>/onnx/image-<fp20>.int8-static.onnx   + image-<fp20>.calibration.json (ranges)
    <model folder>/onnx/text-<fp20>.export.onnx        (as exported; what int8 quantises)
    <model folder>/onnx/text-<fp20>.fp32.onnx          (with ONNX Runtime's transformer fusions)
    <model folder>/onnx/text-<fp20>.int8-dynamic.onnx

The model folder is used when writable; otherwise (a model inside site-packages, a
registry name) ``$SHOPCLIP_CACHE_DIR/onnx`` or ``~/.cache/shopclip/onnx``. Calibration
ranges are also looked up in the model folder, so a shipped model can carry the ranges
it was calibrated with (the default model ships ranges from the sample catalog's
train split) and build its int8 graph anywhere without the photos.

Graphs are built on first use (export ~15 s a tower on 2 cores, quantisation seconds)
under a lock, then each later load opens them in well under a second.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shopclip.core.hashing import sha1_bytes
from shopclip.core.threads import session_options
from shopclip.models.engines import onnx_export as ox
from shopclip.models.engines.base import InferenceEngine, TorchEngine

log = logging.getLogger(__name__)

ImageSource = Any  # a path, bytes or PIL image (anything DualEncoder.preprocess takes)
Calibration = Sequence[ImageSource] | Callable[[], Sequence[ImageSource]] | None
CALIBRATION_IMAGES = 64  # MinMax ranges settle by ~32 photos; 64 keeps calibration ~10 s on 2 cores
_TORCH = object()  # marks a tower that fell back to torch
IMAGE_CHUNK = 8  # images per session run (int8 graph on 2 cores: 4 → 118/s, 8 → 142/s, 32 → 105/s)


def default_onnx_dir() -> Path:
    """`onnx/` under shopclip's cache root (`$SHOPCLIP_CACHE_DIR`, else `~/.cache/shopclip`)."""
    from shopclip.models.features import cache_root

    return cache_root() / "onnx"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
        return True
    except OSError:
        return False


def graph_folders(model: Any, cache_dir: str | Path | None = None) -> tuple[Path, list[Path]]:
    """(where to write, where to look): the model folder's `onnx/` when writable, else the cache dir."""
    source = getattr(model, "source_dir", None)
    here = Path(source) / "onnx" if source else None
    fallback = Path(cache_dir) if cache_dir else default_onnx_dir()
    write = here if here is not None and _writable(here) else fallback
    look = [p for p in (here, fallback) if p is not None]
    return write, list(dict.fromkeys([write, *look]))


def _providers() -> list[str]:
    import onnxruntime as ort

    have = ort.get_available_providers()
    # Device-agnostic: CUDA when this onnxruntime build and a GPU have it, else CPU.
    if "CUDAExecutionProvider" in have and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxEngine(InferenceEngine):
    """Both towers through ONNX Runtime sessions; `precision` "fp32" or "int8"."""

    def __init__(self, model: Any, precision: str = "fp32", *, calibration: Calibration = None,
                 cache_dir: str | Path | None = None, threads: int | None = None,
                 image_recipe: str = "static", text_recipe: str = "dynamic") -> None:
        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision must be fp32 or int8, got {precision!r}")
        from shopclip.models.features import image_fingerprint, text_fingerprint

        self.model = model
        self.precision = precision
        self.name = "onnx" if precision == "fp32" else "onnx-int8"
        self.image_recipe = image_recipe
        self.text_recipe = text_recipe
        self._calibration = calibration
        self._threads = threads
        self._write, self._look = graph_folders(model, cache_dir)
        self._fp = {"image": image_fingerprint(model), "text": text_fingerprint(model)}
        self._sessions: dict[str, Any] = {}
        self._variant: dict[str, str] = {}
        self._text_keys: list[str] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles (the trainer deep-copies its model) carry the recipe, not open sessions."""
        state = dict(self.__dict__)
        state.update(_sessions={}, _variant={}, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ files
    def _file(self, kind: str, suffix: str) -> str:
        return f"{kind}-{self._fp[kind][:20]}.{suffix}"

    def _find(self, name: str) -> Path | None:
        return next((d / name for d in self._look if (d / name).is_file()), None)

    def _drop_stale(self, kind: str) -> None:
        """Delete this model folder's graphs of `kind` built from other weights (only inside the model folder)."""
        if getattr(self.model, "source_dir", None) is None or self._write.parent != Path(self.model.source_dir):
            return
        keep = f"{kind}-{self._fp[kind][:20]}."
        for p in self._write.glob(f"{kind}-*.onnx"):
            if not p.name.startswith(keep):
                p.unlink(missing_ok=True)

    def _export(self, kind: str) -> Path:
        """The plain exported graph (what int8 quantises)."""
        name = self._file(kind, "export.onnx" if kind == "text" else "fp32.onnx")
        found = self._find(name)
        if found is not None:
            return found
        dst = self._write / name
        log.info("exporting the %s tower to ONNX (%s; once per tower weights)", kind, dst)
        if kind == "image":
            ox.export_image_tower(self.model.image_tower, dst, int(self.model.transform.size))
        else:
            ox.export_text_tower(self.model.text_tower, dst)
        self._drop_stale(kind)
        return dst

    def _fp32_graph(self, kind: str) -> Path:
        """The graph the fp32 engine runs: for text, the export with ONNX Runtime's transformer fusions."""
        plain = self._export(kind)
        if kind == "image":
            return plain
        name = self._file("text", "fp32.onnx")
        found = self._find(name)
        if found is not None:
            return found
        fused = ox.optimize_text_graph(self.model.text_tower, plain, self._write / name)
        if fused == plain:  # record the decision so later loads do not retry
            import shutil

            shutil.copyfile(plain, self._write / name)
        return self._write / name

    # ------------------------------------------------------------ calibration
    def _calibration_feeds(self) -> Iterator[dict[str, np.ndarray]] | None:
        src = self._calibration() if callable(self._calibration) else self._calibration
        if not src:
            return None
        items = list(src)[:CALIBRATION_IMAGES]
        self._calibrated_on = [Path(x).name if isinstance(x, str | Path) else type(x).__name__ for x in items]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=4) as pool:
            pixels = list(pool.map(self.model.preprocess, items))
        return ({"pixels": torch.stack(pixels[i : i + 8]).numpy()} for i in range(0, len(pixels), 8))

    def _ranges(self, fp32: Path) -> tuple[Path, bool]:
        """The calibration-ranges file for this image graph, and whether it already holds matching ranges."""
        name = self._file("image", "calibration.json")
        sig = ox.graph_signature(fp32)
        found = self._find(name)
        if found is not None:
            meta = found.with_suffix(".meta.json")
            try:
                ok = json.loads(meta.read_text()).get("graph_signature") == sig
            except (OSError, ValueError):
                ok = False
            if ok:
                return found, True
            log.warning("calibration ranges %s were made for another export of this tower; recalibrating", found)
        return self._write / name, False

    # ------------------------------------------------------------------ build
    def _int8_graph(self, kind: str) -> tuple[Path, str]:
        """(graph, variant) for the int8 engine; an image tower with no calibration stays fp32 (variant says so)."""
        fp32 = self._export(kind)
        if kind == "text":
            recipe = self.text_recipe
            name = self._file("text", f"int8-{recipe}.onnx")
            found = self._find(name)
            if found is not None:
                return found, f"int8-{recipe}"
            pre = ox.preprocess(fp32, self._write / self._file("text", "pre.onnx.tmp"))
            try:
                if recipe == "dynamic":
                    ox.quantize_text_dynamic(pre, self._write / name)
                else:
                    rng = self._write / self._file("text", "calibration.json")
                    texts = self._calibration_texts()
                    ox.quantize_text_static(pre, self._write / name, texts, rng)
            finally:
                pre.unlink(missing_ok=True)
            return self._write / name, f"int8-{recipe}"
        name = self._file("image", "int8-static.onnx")
        ranges, have_ranges = self._ranges(fp32)
        found = self._find(name)
        if found is not None and have_ranges:
            return found, "int8-static:" + sha1_bytes(ranges.read_bytes())[:12]
        feeds = None if have_ranges else self._calibration_feeds()
        if not have_ranges and feeds is None:
            log.warning("no calibration images for the int8 image graph (pass calibration=[...] to load_model, or "
                        "build with --engine onnx-int8, which calibrates on the catalog's train split): the image "
                        "tower runs fp32 ONNX")
            return self._fp32_graph("image"), "fp32"
        pre = ox.preprocess(fp32, self._write / self._file("image", "pre.onnx.tmp"))
        try:
            if not have_ranges:
                ranges.unlink(missing_ok=True)
            ox.quantize_image_static(pre, self._write / name, feeds, ranges)
        finally:
            pre.unlink(missing_ok=True)
        if not have_ranges:
            os.chmod(ranges, 0o644)
            ranges.with_suffix(".meta.json").write_text(json.dumps({
                "graph_signature": ox.graph_signature(fp32), "tower_fingerprint": self._fp["image"],
                "method": "MinMax", "images": getattr(self, "_calibrated_on", [])}, indent=1) + "\n")
        return self._write / name, "int8-static:" + sha1_bytes(ranges.read_bytes())[:12]

    def _calibration_texts(self) -> Iterator[dict[str, np.ndarray]]:
        src = self._calibration() if callable(self._calibration) else self._calibration
        texts = [x for x in (src or []) if isinstance(x, str)][:256]
        if not texts:
            raise ValueError("static text quantisation needs calibration texts")
        tower = self.model.text_tower
        return ({k: v.numpy() for k, v in tower.tokenize(texts[i : i + 16]).items()} for i in range(0, len(texts), 16))

    def session(self, kind: str) -> Any:
        s = self._sessions.get(kind)
        if s is not None:
            return s
        with self._lock:
            if kind not in self._sessions:
                import onnxruntime as ort

                try:
                    if self.precision == "int8":
                        path, variant = self._int8_graph(kind)
                    else:
                        path, variant = self._fp32_graph(kind), "fp32"
                    sess = ort.InferenceSession(str(path), session_options(self._threads), providers=_providers())
                except Exception as e:  # noqa: BLE001 - a tower the exporter cannot handle still runs
                    log.warning("the %s tower could not run on ONNX Runtime (%s: %s); it runs on torch",
                                kind, type(e).__name__, str(e).splitlines()[0][:200])
                    self._variant[kind] = "torch"
                    self._sessions[kind] = _TORCH
                    return _TORCH
                self._variant[kind] = variant
                if kind == "text":
                    self._text_keys = [i.name for i in sess.get_inputs()]
                self._sessions[kind] = sess
        return self._sessions[kind]

    def warm(self) -> OnnxEngine:
        """Build (or open) both graphs now instead of on the first call."""
        self.session("image")
        self.session("text")
        return self

    # ------------------------------------------------------------- inference
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        sess = self.session("image")
        if sess is _TORCH:
            return TorchEngine(self.model.image_tower, self.model.text_tower).image_features(pixels)
        x = pixels.detach().cpu().contiguous().numpy()
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        outs = [sess.run(None, {"pixels": x[i : i + IMAGE_CHUNK]})[0] for i in range(0, len(x), IMAGE_CHUNK)]
        return torch.from_numpy(outs[0] if len(outs) == 1 else np.concatenate(outs))

    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        sess = self.session("text")
        if sess is _TORCH:
            return TorchEngine(self.model.image_tower, self.model.text_tower).text_features(tokens)
        feed = {k: _as_int64(tokens[k]) for k in self._text_keys or []}
        return torch.from_numpy(sess.run(None, feed)[0])

    def numerics(self, kind: str) -> str:
        if self.precision == "fp32":
            return ""
        self.session(kind)
        v = self._variant[kind]
        return "" if v in ("fp32", "torch") else f"onnx-{v}"

    def batch_invariant(self, kind: str) -> bool:
        if self.precision == "fp32":
            return True
        self.session(kind)
        return "dynamic" not in self._variant[kind]

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "variants": dict(self._variant), "folder": str(self._write)}


def _as_int64(t: Any) -> np.ndarray:
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return a if a.dtype == np.int64 else a.astype(np.int64)


