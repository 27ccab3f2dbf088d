"""PNG plots for the report: recall@k curves, confusion matrices, a 2-D map, example queries.

matplotlib with the Agg backend only (no display on servers); each plot is one file so
report.md can embed it and a reader can open it alone.
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from shopclip.eval.data import ProductSet


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_recall_curves(path: Path, curves: dict[str, dict[str, tuple[str, list[float]]]]) -> Path | None:
    """One panel per retrieval task, one line per model/baseline (its view in brackets)."""
    tasks = list(dict.fromkeys(t for per in curves.values() for t, (_, ys) in per.items() if ys))
    if not tasks:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.4 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for name, per in curves.items():
            view, ys = per.get(task, ("", []))
            if ys:
                label = f"{name} [{view}]" if view else name
                ax.plot(range(1, len(ys) + 1), ys, label=label, lw=2.2 if name == "model" else 1.2)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("k")
        ax.set_ylabel("recall@k")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusions(path: Path, confusions: dict[str, dict[str, Any]]) -> Path | None:
    """Row-normalised confusion matrices (true rows, predicted columns)."""
    items = [(k, c) for k, c in confusions.items() if c and c.get("labels")]
    if not items:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(items), figsize=(6.5 * len(items), 6.0), squeeze=False)
    for ax, (title, conf) in zip(axes[0], items, strict=True):
        m = np.asarray(conf["matrix"], dtype=np.float64)
        norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        labels = [textwrap.shorten(str(lab).split(" > ")[-1], 22) for lab in conf["labels"]]
        ax.set_xticks(range(len(labels)), labels, rotation=70, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_map(path: Path, x: np.ndarray, labels: list[str], title: str, seed: int = 0) -> Path | None:
    """2-D t-SNE of product embeddings, coloured by (top-level) category."""
    if len(x) < 5:
        return None
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # see tasks.clustering_task: OpenMP on a busy machine
        xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 7))
    cats = sorted(set(labels), key=lambda c: (-labels.count(c), c))
    cmap = plt.get_cmap("tab20")
    for i, c in enumerate(cats):
        sel = np.asarray([lab == c for lab in labels])
        ax.scatter(xy[sel, 0], xy[sel, 1], s=9, color=cmap(i % 20), label=f"{c or '(none)'} ({int(sel.sum())})",
                   alpha=0.8)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _thumb(path: Path, size: int = 160) -> np.ndarray:
    from PIL import Image

    from shopclip.core.images import open_image

    img = open_image(path)
    img.thumbnail((size, size))
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return np.asarray(canvas)


def pick_examples(ps: ProductSet, n: int, seed: int = 0) -> list[int]:
    """``n`` products from different top-level categories where possible (seeded)."""
    rng = random.Random(f"shopclip-eval-examples:{seed}")
    by_top: dict[str, list[int]] = {}
    for i, t in enumerate(ps.tops):
        by_top.setdefault(t, []).append(i)
    tops = sorted(by_top, key=lambda t: (-len(by_top[t]), t))
    out: list[int] = []
    while len(out) < min(n, len(ps)):
        for t in tops:
            pool = [i for i in by_top[t] if i not in out]
            if pool and len(out) < n:
                out.append(rng.choice(pool))
    return out


def plot_examples(path: Path, ps: ProductSet, rows: list[tuple[str, int, np.ndarray, str]], k: int = 5) -> Path | None:
    """Grid: each row a query (a text, or a product shown by its photo) and its top-k
    images; frame colour = relevance (green same product, orange same leaf category, grey
    otherwise). Product queries exclude the product itself."""
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(1.9 * (k + 1), 2.15 * len(rows)), squeeze=False)
    for r, (kind, q, scores, label) in enumerate(rows):
        s = scores.astype(np.float64).copy()
        if kind == "product":
            s[q] = -np.inf
        top = np.argsort(-s, kind="stable")[:k]
        ax = axes[r][0]
        if kind == "text":
            ax.text(0.02, 0.5, "\n".join(textwrap.wrap(ps.texts[q], 22)[:7]), fontsize=7, va="center")
        else:
            ax.imshow(_thumb(ps.images[q]))
        ax.set_title(label, fontsize=8)
        ax.set_axis_off()
        for c, j in enumerate(top, 1):
            ax = axes[r][c]
            ax.imshow(_thumb(ps.images[j]))
            same = ps.ids[j] == ps.ids[q] or (ps.groups[q] and ps.groups[j] == ps.groups[q])
            colour = "tab:green" if same else "tab:orange" if ps.paths[j] == ps.paths[q] else "0.6"
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(4)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(textwrap.shorten(ps.titles[j], 26), fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(out: Path, report: dict[str, Any], sets: Any, extras: dict[str, dict[str, Any]], cfg: Any) -> dict[str, str]:
    """All plots of a run; returns {name: file name} for report.json/report.md."""
    files: dict[str, str] = {}

    def keep(name: str, p: Path | None) -> None:
        if p is not None:
            files[name] = p.name

    keep("recall_curves", plot_recall_curves(out / "recall_at_k.png", {n: e["curves"] for n, e in extras.items()}))
    cat = report["tasks"].get("category", {})
    keep("confusion", plot_confusions(out / "confusion_categories.png", {
        f"top-level category, probe on {extras['model']['main_view']} (model)": cat.get("top", {}).get("confusion"),
        f"15 most frequent leaf categories, probe on {extras['model']['main_view']} (model)":
            cat.get("leaf", {}).get("confusion"),
    }))
    main = extras["model"]
    keep("map", plot_map(out / "map_tsne.png", main["views"][main["main_view"]], sets.eval.tops,
                         f"t-SNE of {main['main_view']} embeddings ({cfg.split} split), coloured by top-level category",
                         seed=cfg.seed))
    rows: list[tuple[str, int, np.ndarray, str]] = []
    picks = pick_examples(sets.eval, cfg.examples, cfg.seed)
    if "t2i_scores" in main:
        rows += [("text", q, main["t2i_scores"][q], "text → image") for q in picks]
    rows += [("product", q, main["similar_scores"][q], f"similar items ({main['main_view']})") for q in picks]
    keep("examples", plot_examples(out / "example_queries.png", sets.eval, rows))
    return files


__all__ = ["plot_confusions", "plot_examples", "plot_map", "plot_recall_curves", "write_plots"]
