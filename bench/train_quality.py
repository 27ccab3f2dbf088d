"""Retrieval quality of training → bench/results/train_quality.json (rerunnable, ~minutes with a warm cache).

On the sample catalog's test split (821 products; text i must find image i among the
821 test photos, and back), all measured in this one run:

* ``untrained``          minilm-efflite0 with its initial (semi-orthogonal) heads;
* ``lit_baseline``       the plain 30-line LiT recipe of the issue: linear heads on the frozen,
                         mean-pooled MiniLM and EfficientNet-Lite0 (224 px, padded to square)
                         features, symmetric InfoNCE, AdamW, 10 epochs at batch 512;
* ``lit_baseline_d768``  the same recipe with 768-d heads (the default's width);
* ``trained``            `shopclip train` with the default TrainConfig (what ships as "default"):
                         the multi-level towers of ``minilm-efflite0-ml`` (EfficientNet-Lite0 head +
                         5 stage averages; MiniLM last layer + word-piece embedding layer);
* ``trained_single_level`` the same recipe on the plain towers (``minilm-efflite0``: pooled head
                         features only), to show what the multi-level features bring;
* ``trained_no_fn_mask`` the default with false-negative masking off (``fn_mode="none"``);
* ``trained_fn_positive``  the same with duplicates as extra positives (``--full`` only);
* ``best_text_unlocked`` the default, then MiniLM's last 2 blocks fine-tuned (``--best`` only).

Texts are the product text `shopclip embed` indexes (`Product.text()`: title, category path,
attributes, description); ``title_only`` repeats text→image with the bare title as the
query, closer to what a shopper types. Everything is chosen on the val split; the test split
is only read here. Tower features come from the trainer's on-disk cache (computed on first use).

Usage: python bench/train_quality.py [--catalog PATH] [--full] [--ship]
  --ship  also copy the default run's model into src/shopclip/models/pretrained/default/
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CATALOG = ROOT.parent / "shared" / "data" / "products" / "catalog.jsonl"
RESULTS = ROOT / "bench" / "results" / "train_quality.json"
SHIP_DIR = ROOT / "src" / "shopclip" / "models" / "pretrained" / "default"
# The best configuration tried: the default heads, then MiniLM's last 2 blocks unlocked
# (image tower locked, its cached augmented views reused), bf16 autocast where the CPU has it.
BEST = {"model": "@trained", "lock": "image", "unlock_blocks": 2, "epochs": 3, "batch_size": 256,
        "lr": 3e-4, "tower_lr": 3e-5, "warmup_steps": 20}


def lit_baseline(img: torch.Tensor, txt: torch.Tensor, *, epochs: int = 10, batch: int = 512, lr: float = 1e-3,
                 dim: int = 256, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The plain LiT recipe, written out on purpose without any of the trainer's machinery."""
    torch.manual_seed(seed)
    head_i, head_t = torch.nn.Linear(img.shape[1], dim), torch.nn.Linear(txt.shape[1], dim)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    opt = torch.optim.AdamW([*head_i.parameters(), *head_t.parameters(), log_scale], lr=lr)
    n = img.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n)
        for s in range(0, n, batch):
            idx = perm[s : s + batch]
            a = F.normalize(head_i(img[idx]), dim=-1)
            b = F.normalize(head_t(txt[idx]), dim=-1)
            logits = log_scale.clamp(0, math.log(100)).exp() * a @ b.T
            labels = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head_i, head_t


def report(img: np.ndarray, txt: np.ndarray, title: np.ndarray | None = None) -> dict:
    from shopclip.train.evaluate import retrieval_report

    rep = {k: round(v, 4) for k, v in retrieval_report(img, txt).items()}
    if title is not None:
        t = retrieval_report(img, title)
        rep["title_only_t2i_r10"] = round(t["t2i_r10"], 4)
        rep["title_only_t2i_mrr"] = round(t["t2i_mrr"], 4)
    return rep


def features(catalog, products, model, cache_dir: str | None) -> tuple[torch.Tensor, ...]:
    """Clean-view image features, full-text and title-only text features (cached on disk)."""
    from shopclip.core.hashing import file_sha1
    from shopclip.models.augment import AugmentConfig
    from shopclip.models.features import (
        CLEAN_VIEW,
        FeatureCache,
        ImageItem,
        compute_image_features,
        compute_text_features,
        default_cache_dir,
        image_fingerprint,
        text_fingerprint,
        text_key,
        view_key,
    )
    from shopclip.train.config import TextConfig
    from shopclip.train.data import render_text

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    items = [ImageItem(str(catalog.image_path(p)), file_sha1(catalog.image_path(p))) for p in products]
    ic = FeatureCache(root, "image", image_fingerprint(model), model.image_tower.output_dim)
    compute_image_features(model, items, [CLEAN_VIEW], ic, aug=AugmentConfig(), seed=0, progress=True)
    tcfg = TextConfig()
    full = [render_text(p, tcfg.fields, tcfg) for p in products]
    titles = [render_text(p, ["title"], tcfg) for p in products]
    tc = FeatureCache(root, "text", text_fingerprint(model), model.text_tower.output_dim)
    compute_text_features(model, full + titles, tc, progress=True)
    return (torch.from_numpy(ic.get([view_key(it.sha1, CLEAN_VIEW) for it in items])),
            torch.from_numpy(tc.get([text_key(t) for t in full])),
            torch.from_numpy(tc.get([text_key(t) for t in titles])), full, titles)


@torch.no_grad()
def project(model, img: torch.Tensor, txt: torch.Tensor, title: torch.Tensor) -> tuple[np.ndarray, ...]:
    """What encode_image / encode_text return, from tower features (tower → head → L2)."""
    model.eval()
    return (model.project_image(img).numpy(), model.project_text(txt).numpy(), model.project_text(title).numpy())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalog", default=str(DEFAULT_CATALOG))
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--full", action="store_true", help="also train the fn_mode=positive variant")
    ap.add_argument("--ship", action="store_true", help="copy the default run's model into the package")
    ap.add_argument("--best", action="store_true", help="also fine-tune the text tower's last blocks (LiT's "
                    "locked-image / unlocked-text setting), continuing from the default run; ~10 min on 2 cores")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from shopclip.catalog import Catalog
    from shopclip.models import create_model, load_model
    from shopclip.train.config import TrainConfig
    from shopclip.train.trainer import train

    catalog = Catalog.load(a.catalog)
    split = {s: [p for p in catalog.products if p.split == s] for s in ("train", "val", "test")}
    base = create_model("minilm-efflite0")
    te_img, te_txt, te_title, *_ = features(catalog, split["test"], base, a.cache_dir)
    tr_img, tr_txt, *_ = features(catalog, split["train"], base, a.cache_dir)
    results: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    results["untrained"] = report(*project(base, te_img, te_txt, te_title))

    # The recipe (256-d), and the same with the default's 768-d heads, to separate
    # what the wider heads bring from what the trainer's recipe brings.
    for name, dim in (("lit_baseline", 256), ("lit_baseline_d768", 768)):
        t = time.time()
        head_i, head_t = lit_baseline(tr_img, tr_txt, dim=dim)
        seconds[name] = round(time.time() - t, 1)
        with torch.no_grad():
            results[name] = report(F.normalize(head_i(te_img), dim=-1).numpy(),
                                   F.normalize(head_t(te_txt), dim=-1).numpy(),
                                   F.normalize(head_t(te_title), dim=-1).numpy())

    runs = {"trained": {}, "trained_single_level": {"model": "minilm-efflite0"},
            "trained_no_fn_mask": {"fn_mode": "none"}}
    if a.full:
        runs["trained_fn_positive"] = {"fn_mode": "positive"}
    if a.best:
        runs["best_text_unlocked"] = BEST
    tmp = Path(tempfile.mkdtemp(prefix="shopclip-train-quality-"))
    val: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    for name, over in runs.items():
        over_ = {k: (str(tmp / "trained" / "model") if v == "@trained" else v) for k, v in over.items()}
        cfg = TrainConfig(catalog=a.catalog, out=str(tmp / name), progress=False, cache_dir=a.cache_dir, **over_)
        t = time.time()
        res = train(cfg)
        seconds[name] = round(time.time() - t, 1)
        model = load_model(res.run_dir)  # the saved model, as every other command will load it
        # Tower features of *this* model (cached by tower fingerprint, so a fine-tuned text tower
        # gets fresh ones), through its trained heads: what encode_image / encode_text return.
        img, txt, title, *_ = features(catalog, split["test"], model, a.cache_dir)
        results[name] = report(*project(model, img, txt, title))
        val[name] = {k: round(v, 4) for k, v in res.val.items()}
        configs[name] = over
        if name == "trained" and a.ship:
            if SHIP_DIR.exists():
                shutil.rmtree(SHIP_DIR)
            shutil.copytree(res.model_dir, SHIP_DIR)
    out = {
        "recall_at_10": {k: {"text_to_image": v["t2i_r10"], "image_to_text": v["i2t_r10"]} for k, v in results.items()},
        "mrr": {k: {"text_to_image": v["t2i_mrr"], "image_to_text": v["i2t_mrr"]} for k, v in results.items()},
        "recall_at_1": {k: {"text_to_image": v["t2i_r1"], "image_to_text": v["i2t_r1"]} for k, v in results.items()},
        "title_only_text_to_image": {k: {"recall_at_10": v["title_only_t2i_r10"], "mrr": v["title_only_t2i_mrr"]}
                                     for k, v in results.items()},
        "all": results,
        "val_split_at_end_of_training": val,
        "train_seconds": seconds,
        "setup": {"test_products": len(split["test"]), "train_products": len(split["train"]),
                  "val_products": len(split["val"]), "catalog": str(a.catalog),
                  "default_config": TrainConfig().to_dict(), "overrides": configs,
                  "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                              "load_avg": os.getloadavg()}},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["recall_at_10"], indent=1))
    print(json.dumps(out["mrr"], indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
