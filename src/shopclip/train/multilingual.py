"""`shopclip train-multilingual`: distil shopclip's English text space onto frozen multilingual encoders.

Teacher: the shopclip model's own text embedding of each English title (the vector an
English query is searched with). Students: the frozen multilingual encoders the query
encoder routes to (`models.multilingual.BASES`: USE multilingual v3 for es/fr/de,
multilingual-e5-small for the rest, Hindi included), each with a head so that
head(base(text)) ≈ teacher(text). Three head types: ``ridge`` (a linear map + bias in closed
form, ridge-regularised), ``mlp`` (linear + GELU MLP branch, cosine loss plus an in-batch
contrastive term) and ``knn`` (no fitting: the English texts themselves are anchors, their
base embeddings the keys and their teacher vectors the values; see `apply_knn`). Only the
catalog's English text of the train split is used: titles, shortened views of them (a
shopper's query is shorter than a title) and, with ``phrases``, shopper phrases composed
from the products' type, colour, gender and brand ("red kurtas for women"); val titles pick
nothing but are reported. Because each base maps a sentence and its translation close
together, the heads carry foreign queries into shopclip's space without any translated
training text.

Teacher and student embeddings are cached in the output folder (keyed by the texts, the
model and the base), so a rerun with other head settings takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

__all__ = ["DistillConfig", "distill", "fit_ridge", "parse_routes", "query_phrases", "train_multilingual_command",
           "title_views"]

HEAD_TYPES = ("ridge", "mlp", "knn")


@dataclass
class DistillConfig:
    catalog: str
    out: str
    model: str = "default"
    bases: str = "e5,use"  # comma-separated keys of models.multilingual.BASES, one head each
    routes: str = "es=use,fr=use,de=use,*=e5"  # language=head; "*" for every other language
    head: str = "ridge"  # ridge | mlp | knn, or per base: "e5=ridge,use=knn"
    alpha: float = 1.0  # ridge: L2 penalty on the map
    anchors: str = "all"  # knn: which English texts are anchors: all (titles, views, phrases) | phrases
    k: int = 10  # knn: anchors mixed per query
    temperature: float = 0.02  # knn: softmax temperature
    hidden: int = 1024  # mlp: hidden width of the MLP branch (0: linear only, trained by gradient)
    epochs: int = 60
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.05
    contrastive_weight: float = 1.0
    views: int = 1  # shortened views per title (besides the title itself)
    phrases: bool = False  # also English shopper phrases from train products' type/colour/gender ("red kurtas for women")
    seed: int = 0
    threads: int = 2
    cache: str = ""  # embedding cache folder (default: OUT/cache); heads of other settings can share one


def title_views(title: str, n: int, rng: np.random.Generator) -> list[str]:
    """Shorter query-like views of a title: a random contiguous run of at least two of its words."""
    words = title.split()
    out: list[str] = []
    for _ in range(n):
        if len(words) <= 2:
            break
        size = int(rng.integers(2, len(words)))
        start = int(rng.integers(0, len(words) - size + 1))
        out.append(" ".join(words[start : start + size]))
    return out


def query_phrases(products: Any) -> list[str]:
    """English shopper phrases composed from each product's catalog fields (type, colour, gender, brand):
    "red kurtas", "red kurtas for women", "women red kurtas", "kurtas for women", "puma casual shoes".
    A query is shorter and more generic than a title; these teach the head where such queries land."""
    from shopclip.catalog.facets import product_facets

    out: dict[str, None] = {}
    for p in products:
        f = product_facets({"title": p.title, "category": p.category, "attributes": p.attributes})
        kind = (f.get("type") or ("",))[0]
        if not kind:
            continue
        colour, brand = (f.get("color") or ("",))[0], (f.get("brand") or ("",))[0]
        genders = [g for g in f.get("gender", ()) if g != "unisex"][:1]
        gender = genders[0] if genders else ""
        candidates = [kind, f"{colour} {kind}" if colour else "", f"{brand} {kind}" if brand else ""]
        if gender:
            candidates += [f"{kind} for {gender}", f"{gender} {kind}"]
            if colour:
                candidates += [f"{colour} {kind} for {gender}", f"{gender} {colour} {kind}"]
        out.update(dict.fromkeys(c for c in candidates if c))
    return list(out)


def parse_routes(spec: str, heads: list[str]) -> dict[str, str]:
    """"es=use,*=e5" → {"es": "use", "*": "e5"}; routes to heads not trained fall back to the default."""
    routes: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lang, sep, head = part.partition("=")
        if not sep or not lang.strip() or not head.strip():
            raise typer.BadParameter(f"route {part!r} is not LANG=HEAD (e.g. es=use or *=e5)")
        routes[lang.strip()] = head.strip()
    routes = {k: v for k, v in routes.items() if v in heads}
    routes.setdefault("*", heads[0])
    return routes


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> dict[str, np.ndarray]:
    """Least squares x @ W.T + b ≈ y with penalty alpha·|W|² (the bias is not penalised), in closed form."""
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = (x - mx).astype(np.float64), (y - my).astype(np.float64)
    gram = xc.T @ xc + alpha * np.eye(x.shape[1])
    w = np.linalg.solve(gram, xc.T @ yc).T  # (out, in)
    return {"linear": np.ascontiguousarray(w, dtype=np.float32), "bias": (my - mx @ w.T).astype(np.float32)}


def fit_mlp(x: np.ndarray, y: np.ndarray, cfg: DistillConfig, progress: bool = True) -> dict[str, np.ndarray]:
    """Linear map + (hidden > 0) a GELU MLP branch, trained on cosine + in-batch contrastive loss."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, cfg.threads))
    in_dim, out_dim = x.shape[1], y.shape[1]
    linear = torch.nn.Linear(in_dim, out_dim, bias=False)
    mlp = None
    if cfg.hidden:
        mlp = torch.nn.Sequential(torch.nn.Linear(in_dim, cfg.hidden), torch.nn.GELU(approximate="tanh"),
                                  torch.nn.Linear(cfg.hidden, out_dim, bias=False))
        torch.nn.init.zeros_(mlp[2].weight)  # start as the linear map; the MLP adds what it cannot do
    params = list(linear.parameters()) + (list(mlp.parameters()) if mlp is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = cfg.epochs * max(1, (len(xt) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)

    def forward(v: torch.Tensor) -> torch.Tensor:
        out = linear(v)
        if mlp is not None:
            out = out + mlp(v)
        return F.normalize(out, dim=-1)

    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(xt))
        total = 0.0
        for i in range(0, len(xt), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            pred, target = forward(xt[idx]), yt[idx]
            cos = (pred * target).sum(-1)
            logits = pred @ target.T / cfg.temperature
            loss = (1 - cos).mean() + cfg.contrastive_weight * F.cross_entropy(logits, torch.arange(len(idx)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        if progress and (epoch + 1) % 10 == 0:
            typer.echo(f"epoch {epoch + 1}/{cfg.epochs}: loss {total / len(xt):.4f}")
    weights = {"linear": linear.weight.detach().numpy().copy()}
    if mlp is not None:
        weights.update(w1=mlp[0].weight.detach().numpy().copy(), b1=mlp[0].bias.detach().numpy().copy(),
                       w2=mlp[2].weight.detach().numpy().copy())
    return weights


def head_types(spec: str, bases: list[str]) -> dict[str, str]:
    """"ridge" → every base gets a ridge head; "e5=ridge,use=knn" → one type per base (others: ridge)."""
    if "=" not in spec:
        kinds = dict.fromkeys(bases, spec.strip())
    else:
        kinds = dict.fromkeys(bases, "ridge")
        for part in filter(None, (p.strip() for p in spec.split(","))):
            base, _, kind = part.partition("=")
            if base.strip() not in bases:
                raise ValueError(f"head {part!r}: base {base.strip()!r} is not among the bases trained ({bases})")
            kinds[base.strip()] = kind.strip()
    bad = {b: k for b, k in kinds.items() if k not in HEAD_TYPES}
    if bad:
        raise ValueError(f"unknown head type(s) {bad} (known: {', '.join(HEAD_TYPES)})")
    return kinds


def _cached(path: Path, key: str, make: Any) -> np.ndarray:
    if path.exists():
        with np.load(path) as npz:
            if str(npz["key"]) == key:
                return np.array(npz["x"])
    x = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=x, key=np.array(key))
    tmp.replace(path)
    return x


def distill(cfg: DistillConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train one head per base, save them in `cfg.out`, return their metrics (val cosine, recall@1/@10)."""
    from shopclip.catalog import Catalog
    from shopclip.models import load_model
    from shopclip.models.features import model_fingerprint
    from shopclip.models.multilingual import (
        BASES,
        EncoderConfig,
        HeadConfig,
        MultilingualQueryEncoder,
        base_encoder,
        embed_base,
    )

    bases = [b.strip() for b in cfg.bases.split(",") if b.strip()]
    unknown = [b for b in bases if b not in BASES]
    if not bases or unknown:
        raise ValueError(f"unknown base encoder(s) {unknown or cfg.bases!r} (known: {', '.join(BASES)})")
    kinds = head_types(cfg.head, bases)
    if cfg.anchors not in ("all", "phrases") or (cfg.anchors == "phrases" and not cfg.phrases
                                                  and "knn" in kinds.values()):
        raise ValueError(f"anchors {cfg.anchors!r}: 'all', or 'phrases' together with --phrases")
    t0 = time.perf_counter()
    out = Path(cfg.out)
    cache = Path(cfg.cache) if cfg.cache else out / "cache"
    catalog = Catalog.load(cfg.catalog)
    rng = np.random.default_rng(cfg.seed)
    train_titles = [p.title for p in catalog if p.split == "train"] or [p.title for p in catalog]
    val_titles = [p.title for p in catalog if p.split == "val"]
    texts = list(dict.fromkeys(train_titles + [v for t in train_titles for v in title_views(t, cfg.views, rng)]))
    seen = set(texts)
    phrases = [t for t in query_phrases([p for p in catalog if p.split in ("train", None)]) if t not in seen] \
        if cfg.phrases else []
    model = load_model(cfg.model)
    fp = model_fingerprint(model)

    def key(items: list[str], base: str = "") -> str:
        return hashlib.sha1(json.dumps([fp, base, items]).encode()).hexdigest()

    def teacher(kind: str, items: list[str]) -> np.ndarray:
        if progress:
            typer.echo(f"{kind}: {len(items)} texts, teacher (cached in {cache})")
        k = key(items)
        return _cached(cache / f"{kind}-teacher-{k[:12]}.npz", k, lambda: model.encode_text(items, progress=progress))

    def student(kind: str, base: str, items: list[str]) -> np.ndarray:
        if progress:
            typer.echo(f"{kind}: {len(items)} texts, {base}")
        k = key(items, base)
        return _cached(cache / f"{kind}-{base}-{k[:12]}.npz", k,
                       lambda: embed_base(base_encoder(base, cfg.threads), items))

    y_train = teacher("train", texts)
    if phrases:  # cached apart, so that heads with and without them share the titles' embeddings
        y_train = np.concatenate([y_train, teacher("phrases", phrases)])
    y_val = teacher("val", val_titles) if val_titles else y_train[:0]
    heads: dict[str, HeadConfig] = {}
    weights: dict[str, dict[str, np.ndarray]] = {}
    metrics: dict[str, Any] = {}
    for base in bases:
        x_train = student("train", base, texts)
        if phrases:
            x_train = np.concatenate([x_train, student("phrases", base, phrases)])
        x_val = student("val", base, val_titles) if val_titles else x_train[:0]
        kind = kinds[base]
        if kind == "knn":  # the anchors themselves: their base embeddings (keys) and shopclip vectors (values)
            rows = slice(len(texts), None) if cfg.anchors == "phrases" else slice(None)
            w = {"keys": np.ascontiguousarray(x_train[rows]), "values": np.ascontiguousarray(y_train[rows])}
        elif kind == "ridge":
            w = fit_ridge(x_train, y_train, cfg.alpha)
        else:
            w = fit_mlp(x_train, y_train, cfg, progress)
        weights[base] = w
        heads[base] = HeadConfig(base=base, in_dim=x_train.shape[1], out_dim=y_train.shape[1],
                                 hidden=cfg.hidden if kind == "mlp" else 0, kind="knn" if kind == "knn" else "map",
                                 k=cfg.k, temperature=cfg.temperature)
        metrics[base] = _val_metrics(heads[base], w, x_val, y_val)
    metrics.update(train_texts=len(texts) + len(phrases), phrases=len(phrases), val_titles=len(val_titles), seconds=round(time.perf_counter() - t0, 1))
    space = model_fingerprint(model, numerics=False)  # the same weights under any engine
    config = EncoderConfig(heads, parse_routes(cfg.routes, bases), target_model=fp, target_name=str(cfg.model),
                           info={"distill": asdict(cfg), "metrics": metrics},
                           also_targets=[space] if space != fp else [])
    MultilingualQueryEncoder(config, weights).save(out)
    return metrics


def _val_metrics(head: Any, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Held-out titles: mean cosine to the teacher, and whether the teacher vector is found first."""
    from shopclip.models.multilingual import head_forward

    if not len(x):
        return {}
    pred = head_forward(head, {k: v.astype(np.float16).astype(np.float32) for k, v in weights.items()}, x)
    sims = pred @ y.T
    rank = (sims > np.diag(sims)[:, None]).sum(axis=1)
    return {"val_cosine": round(float(np.mean(np.diag(sims))), 4), "val_recall@1": round(float(np.mean(rank < 1)), 4),
            "val_recall@10": round(float(np.mean(rank < 10)), 4)}


def train_multilingual_command(
    catalog: Annotated[Path, typer.Argument(help="Catalog whose English titles (train split) teach the heads")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the heads (config.json, head.safetensors) "
                                                         "and their embedding cache")] = Path("runs/multilingual"),
    model: Annotated[str, typer.Option(help="The shopclip model whose text space the heads map into")] = "default",
    bases: Annotated[str, typer.Option(help="Base encoders, one head each: e5 (multilingual-e5-small, ~100 "
                                            "languages) and/or use (USE multilingual v3, 16 languages)")] = "e5,use",
    routes: Annotated[str, typer.Option(help="Which head reads which detected language; '*' = any other")]
    = "es=use,fr=use,de=use,*=e5",
    head: Annotated[str, typer.Option(help="Head type: ridge (closed-form linear map), mlp (linear + MLP, "
                                           "trained) or knn (English anchor lookup); or one per base, "
                                           "e.g. 'e5=ridge,use=knn'")] = "ridge",
    alpha: Annotated[float, typer.Option(help="ridge: L2 penalty")] = 1.0,
    anchors: Annotated[str, typer.Option(help="knn: anchor texts, all (titles, views, phrases) or phrases")] = "all",
    k: Annotated[int, typer.Option(help="knn: anchors mixed per query")] = 10,
    temperature: Annotated[float, typer.Option(help="knn: softmax temperature")] = 0.02,
    hidden: Annotated[int, typer.Option(help="mlp: hidden width of the MLP branch (0: linear only)")] = 1024,
    epochs: Annotated[int, typer.Option(help="mlp: training epochs over the titles")] = 60,
    phrases: Annotated[bool, typer.Option(help="Also train on English shopper phrases composed from the train "
                                               "products' type, colour, gender and brand")] = False,
    ship: Annotated[bool, typer.Option(help="Also copy the heads into the package (models/pretrained/"
                                            "multilingual-e5), where search finds them by default")] = False,
) -> None:
    """Distil a query encoder for Hindi, Spanish, French, German (and more) into the model's space.

    Uses only the catalog's English titles; a second run reuses the cached embeddings.

    Example: shopclip train-multilingual ../shared/data/products/catalog.jsonl --out runs/ml --ship
    """
    import shutil

    from shopclip.models.multilingual import CONFIG_FILE, HEAD_FILE, SHIPPED

    cfg = DistillConfig(catalog=str(catalog), out=str(out), model=model, bases=bases, routes=routes, head=head,
                        alpha=alpha, anchors=anchors, k=k, temperature=temperature, hidden=hidden,
                        epochs=epochs, phrases=phrases)
    try:
        metrics = distill(cfg)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    typer.echo(f"heads saved in {out}: {json.dumps(metrics)}")
    if ship:
        import shopclip.models as models_pkg

        dest = Path(models_pkg.__file__).parent / "pretrained" / SHIPPED
        dest.mkdir(parents=True, exist_ok=True)
        for name in (HEAD_FILE, CONFIG_FILE):
            shutil.copyfile(out / name, dest / name)
        typer.echo(f"shipped to {dest}")
