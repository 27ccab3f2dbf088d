"""Export a loaded tower to ONNX and quantise it to int8 (ONNX Runtime's quantisation tools).

Export works from the torch module that is loaded, never from a fixed architecture: the
wrapper calls the tower's own ``forward`` (an image tower's pooled features, a text
tower's pooled features from its tokenised batch), so multi-level towers, other
EfficientNet-Lite sizes, other Hugging Face encoders and fine-tuned tower blocks export
the same way. It uses torch's ``torch.export``-based exporter (``dynamo=True``): the
TorchScript exporter cannot export the multi-level image tower's adaptive pooling onto
the head's grid. The batch (and for text the sequence) dimension stays dynamic.

int8 recipes (chosen by the measurements in ``bench/embed.py``):

* images, static: per-channel int8 weights, uint8 activations in QDQ form, activation
  ranges calibrated (MinMax) on catalog photos — the train split when the catalog has one.
  Convolutions need calibrated ranges: dynamic quantisation of this CNN measured 3x
  slower than fp32 with cosines down to 0.72.
* texts, dynamic: per-channel int8 weights of the MatMuls that multiply by a weight matrix,
  activations quantised per call (so a text's vector depends slightly on its batch-mates). ``quantize_text_static`` (the same MatMuls, ranges calibrated on
  catalog texts) is kept for comparison in the benchmark.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)
OPSET = 18


class _ImageGraph(nn.Module):
    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower(pixels)


TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _TextGraph(nn.Module):
    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.tower({k: v for k, v in given.items() if v is not None})


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporter prints progress to stdout (it would corrupt `--json` output) and warns a lot."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.INFO)  # the quantiser and optimiser log every tensor at INFO on the root logger
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


@contextlib.contextmanager
def _in_folder(folder: str) -> Any:
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _atomic_export(module: nn.Module, inputs: dict[str, torch.Tensor], dynamic: dict[str, dict[int, Any]],
                   dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}-", suffix=".onnx", dir=dst.parent)
    os.close(fd)
    was_training = module.training
    module.eval()
    try:
        # Grad mode on, even when called under inference_mode: a tower's inference-only branch
        # (the image tower's chunked CPU path) would otherwise pin the batch size into the graph.
        with _quiet(), torch.inference_mode(False), torch.enable_grad():
            torch.onnx.export(module, (), tmp, kwargs=inputs, dynamo=True, input_names=list(inputs),
                              output_names=["features"], dynamic_shapes=dynamic, external_data=False,
                              opset_version=OPSET)
        _canonical_names(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        module.train(was_training)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst


def _canonical_names(path: Path) -> None:
    """Rename the export's counter-numbered tensors after what computes them (calibration ranges are keyed by them)."""
    import onnx

    from shopclip.models.engines.onnx_names import canonicalize

    model = onnx.load(str(path))
    if canonicalize(model):
        onnx.save(model, str(path))


def export_image_tower(tower: nn.Module, dst: Path, image_size: int) -> Path:
    """(B, 3, S, S) float pixels → (B, D) features."""
    example = torch.randn(2, 3, image_size, image_size)  # batch 2: a size-1 batch would be specialised
    return _atomic_export(_ImageGraph(tower), {"pixels": example}, {"pixels": {0: torch.export.Dim("batch")}}, dst)


@contextlib.contextmanager
def _eager_attention(tower: nn.Module) -> Any:
    """Hugging Face encoders export their attention as plain MatMul/Softmax (which ONNX Runtime fuses)."""
    configs = [m.config for m in tower.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")]
    before = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = "eager"
        yield
    finally:
        for c, b in zip(configs, before, strict=True):
            c._attn_implementation = b


def export_text_tower(tower: nn.Module, dst: Path) -> tuple[Path, list[str]]:
    """Tokenised (B, L) inputs, in the order `tower.tokenize` returns them → (B, D) features.

    Hugging Face encoders go through the TorchScript exporter with eager attention: that
    graph is the pattern ONNX Runtime's transformer optimiser fuses (:func:`optimize_text_graph`);
    anything it cannot export goes through ``torch.export``.
    """
    tokens = tower.tokenize(["a short one", "a somewhat longer example text for the exporter"])
    unknown = set(tokens) - set(TEXT_INPUTS)
    if unknown:
        raise ValueError(f"cannot export a text tower whose tokenizer returns {sorted(unknown)}")
    keys = [k for k in TEXT_INPUTS if k in tokens]
    inputs = {k: tokens[k] for k in keys}
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.stem}-ts.onnx")
        with _quiet(), _eager_attention(tower), torch.no_grad():
            axes = {k: ({0: "batch", 1: "seq"} if inputs[k].dim() == 2 else {0: "batch"}) for k in keys}
            torch.onnx.export(_TextGraph(tower).eval(), tuple(inputs[k] for k in keys), str(tmp), dynamo=False,
                              input_names=keys, output_names=["features"],
                              dynamic_axes={**axes, "features": {0: "batch"}}, opset_version=17)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
        return dst, keys
    except Exception as e:  # noqa: BLE001 - the other exporter handles more
        log.info("TorchScript export of the text tower failed (%s); using torch.export", type(e).__name__)
        dst.with_name(f".{dst.stem}-ts.onnx").unlink(missing_ok=True)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dyn = {k: ({0: batch, 1: seq} if inputs[k].dim() == 2 else {0: batch}) for k in keys}
    _atomic_export(_TextGraph(tower), inputs, dyn, dst)
    return dst, keys


def optimize_text_graph(tower: nn.Module, src: Path, dst: Path) -> Path:
    """ONNX Runtime's transformer fusions (attention, skip-LayerNorm, GELU) when they keep the outputs.

    Checked on a probe batch (max abs difference 1e-4); a tower they do not fit keeps `src`.
    """
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = next((m.config for m in tower.modules() if hasattr(getattr(m, "config", None), "num_attention_heads")), None)
    if cfg is None:
        return src
    try:
        # Its shape inference dumps scratch files into the working directory when it gives up:
        # run it inside a scratch folder (first use only; the server builds graphs before traffic).
        with _quiet(), contextlib.redirect_stderr(io.StringIO()), tempfile.TemporaryDirectory() as scratch, \
                _in_folder(scratch):
            opt = optimize_model(str(src), model_type="bert", num_heads=int(cfg.num_attention_heads),
                                 hidden_size=int(cfg.hidden_size))
            _atomic(dst, lambda tmp: opt.save_model_to_file(tmp))
        probe = tower.tokenize(["red running shoes", "a longer product title, with its category > path; colour: red"])
        feed = {k: v.numpy() for k, v in probe.items()}
        so = ort.SessionOptions()
        so.log_severity_level = 3
        a = ort.InferenceSession(str(src), so).run(None, feed)[0]
        b = ort.InferenceSession(str(dst), so).run(None, feed)[0]
        if float(np.abs(a - b).max()) <= 1e-4:
            return dst
        log.info("transformer fusions changed the text tower's outputs; keeping the plain graph")
    except Exception as e:  # noqa: BLE001 - an encoder the optimiser does not know
        log.info("transformer fusions do not apply to this text tower (%s)", type(e).__name__)
    dst.unlink(missing_ok=True)
    return src


def graph_signature(path: Path) -> str:
    """Identity of a graph's tensor names (calibration ranges are keyed by them)."""
    import onnx

    from shopclip.core.hashing import sha1_bytes

    g = onnx.load(str(path), load_external_data=False).graph
    return sha1_bytes("|".join(sorted(o for n in g.node for o in n.output)).encode())


def weight_matmuls(path: Path, *, skip_after_gelu: bool = False) -> list[str]:
    """MatMul/Gemm nodes that multiply by a weight matrix (activation x activation products stay fp32).

    With `skip_after_gelu`, the feed-forward down-projections (fed by the GELU) stay fp32 too.
    Measured once while choosing the recipe (default model, sample test split, text→image
    recall@10 with int8 images, fp32 torch 0.9026): all weight MatMuls per-tensor 0.8940,
    the same without the down-projections 0.9001, all of them per-channel 0.9050. Per-channel
    on all of them is the recipe (the quick way to compare: `bench/embed.py` records the
    engines' recall).
    """
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def after_gelu(tensor: str) -> bool:
        n = producer.get(tensor)
        return "gelu" in tensor.lower() or (n is not None and ("gelu" in n.op_type.lower() or "gelu" in n.name.lower()))

    return [n.name for n in g.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits
            and not (skip_after_gelu and after_gelu(n.input[0]))]


def preprocess(src: Path, dst: Path) -> Path:
    """ONNX Runtime's pre-quantisation pass (graph optimisation + ONNX shape inference)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    return _atomic(dst, lambda tmp: quant_pre_process(str(src), tmp, skip_symbolic_shape=True))


class _Reader:
    """ONNX Runtime calibration reader over an iterable of feed dicts."""

    def __init__(self, feeds: Iterable[dict[str, Any]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)


def _atomic(dst: Path, write: Callable[[str], None]) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}-", suffix=".onnx", dir=dst.parent)
    os.close(fd)
    try:
        with _quiet(), contextlib.redirect_stderr(io.StringIO()):
            write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst


def quantize_image_static(src: Path, dst: Path, feeds: Iterable[dict[str, Any]] | None,
                          ranges: Path) -> Path:
    """Static int8 (QDQ); `ranges` is the calibration cache: read if present, else computed from `feeds` and saved."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    def write(tmp: str) -> None:
        quantize_static(str(src), tmp, _Reader(feeds or []) if not ranges.exists() else None,
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax,
                        calibration_cache_path=str(ranges))

    return _atomic(dst, write)


def quantize_text_dynamic(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = weight_matmuls(src)
    return _atomic(dst, lambda tmp: quantize_dynamic(str(src), tmp, weight_type=QuantType.QInt8,
                                                     per_channel=True, nodes_to_quantize=nodes))


def quantize_text_static(src: Path, dst: Path, feeds: Iterable[dict[str, Any]] | None, ranges: Path) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    nodes = weight_matmuls(src)

    def write(tmp: str) -> None:
        quantize_static(str(src), tmp, _Reader(feeds or []) if not ranges.exists() else None,
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, nodes_to_quantize=nodes,
                        calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(ranges))

    return _atomic(dst, write)
