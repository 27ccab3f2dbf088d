"""Retrieval quality of training → bench/results/train_quality.json, produced whole by one run.

Every arm is trained by `shopclip train` (the Trainer) on tower features cached on disk
(each tower featurised once for all arms) and measured on two protocols:

* **whole catalog** (the headline, ``eval/whole_catalog.py``): queries from a split, the
  candidates are all 8,225 catalog products (train and val included as distractors), the
  exact product (or its declared / byte-identical twin) is relevant; text→image and
  image→text HITS@1/5/10, MRR, NDCG@10; image→image same-leaf precision@10 over the
  whole catalog (and the same for the fused vector). On **val** (what the default is
  chosen by) and on **test** (what is reported);
* **split** (the older protocol): text i must find photo i among the 821 test products only
  (and back), recall@1/5/10 and MRR, as in earlier versions of this file.

Query texts: ``full`` = `Product.text()` (title, category path, attributes, description: what
`shopclip embed` indexes and the trainer validates with); ``title`` = the bare title (closer to
what a shopper types). `shopclip eval` reports title + description; its numbers differ.

Arms (each varies one thing from ``default_recipe``, today's recipe retrained here):
  references   untrained, image_tower (raw tower features, image→image only), shipped_before (the
               heads shipped in the package when this run started), lit_baseline (the plain LiT recipe:
               single-level towers, 10 epochs, no augmentation, 256-d)
  like-for-like single_level, epochs_10, no_augment, dim_256, no_fn_mask
  harder       leaf_batches, hard_negatives, leaf_hard
  similar items i2i_shared (image–image term on the shared space), similar_subspace(_leaf) (on its own
               256-d subspace of the image embedding; its weight in image→image scores chosen on val)
  partial      partial_ft (EfficientNet-Lite0's last MBConv block + head conv fine-tuned on cached
               lower-block outputs, continuing similar_subspace)
  towers       towers_ref, lite1, lite2 (image), mpnet (text): one cheaper recipe for all four
  pilots       (in no set; --arms, val only) colour, colour_no_augment (the colour level), batch_2048, mlp_head,
               full_text_only
  chosen       new_default: the arm the selection rule picks on val (its config retrained), shipped
               with --ship as float16 heads and measured again as ``shipped`` (fp16).

Usage: python bench/train_quality.py [--set core|towers] [--ship] [--arms a,b] [--cache-dir DIR] [--quick] [--out PATH]
  --set core   (default) → train_quality.json: references, like-for-like, harder, similar items; chooses the default
  --set towers → train_quality_towers.json: partial fine-tuning, Lite1/Lite2/mpnet, single-level and LiT references
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import RESULTS, SAMPLE, Provenance, write_result  # noqa: E402
from _features import catalog_features, derive_colour_features, fill_training_views  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIP_DIR = ROOT / "src" / "shopclip" / "models" / "pretrained" / "default"
BASE = "minilm-efflite0-ml"
COLOUR = "minilm-efflite0-mlc"
# An architecture that is another one plus the colour level: its cached features are derived from that one's
# (bench/_features.py: derive_colour_features), not featurised again.
COLOUR_BASES = {COLOUR: BASE}


@dataclass
class Arm:
    group: str
    doc: str
    model: str = BASE
    over: dict[str, Any] = field(default_factory=dict)
    candidate: bool = False  # may be chosen as the new default
    init: str | None = None  # continue from this arm's trained model (its heads kept)


HARD = {"batch_sampler": "leaf", "leaf_chunk": 32, "hard_beta": 4.0}
I2I = {"i2i_weight": 1.0, "i2i_positives": "leaf", "i2i_temperature": 0.1}
# The similar-items subspace (models/heads.py): 256 of the 768 image dims trained by the image-image term
# alone; search rankings stay the contrastive heads' (512-d); its weight in image-image scores is chosen on val.
SIM = {"hard_beta": 4.0, **I2I, "sim_dim": 256, "sim_weight": 0.5}
TOWERS = {**SIM, "augment": False, "text_variants": []}
ARMS: dict[str, Arm] = {
    "default_recipe": Arm("like_for_like", "today's recipe (TrainConfig defaults before this change), retrained here",
                          candidate=True),
    "single_level": Arm("like_for_like", "plain towers (pooled head features only), no augmentation: compare with "
                        "no_augment (the plain towers are featurised clean only)", "minilm-efflite0",
                        over={"augment": False}),
    "epochs_10": Arm("like_for_like", "10 epochs instead of 40", over={"epochs": 10}),
    "no_augment": Arm("like_for_like", "no augmented views (clean photos only)", over={"augment": False}),
    "dim_256": Arm("like_for_like", "256-d heads instead of 768", over={"embed_dim": 256}),
    "no_fn_mask": Arm("like_for_like", "false-negative masking off (duplicates count as negatives)",
                      over={"fn_mode": "none"}),
    "leaf_batches": Arm("harder", "batches of same-leaf runs of 32", over={"batch_sampler": "leaf", "leaf_chunk": 32},
                        candidate=True),
    "hard_negatives": Arm("harder", "hard-negative-weighted InfoNCE (beta 4)", over={"hard_beta": 4.0},
                          candidate=True),
    "leaf_hard": Arm("harder", "leaf batches + hard-negative weighting", over=HARD, candidate=True),
    # Pilot arms (val only): one more knob each, run with --arms; not in a set unless they earned it on val.
    "batch_2048": Arm("harder", "batches of 2,048 instead of 512 (4x the in-batch negatives)",
                      over={"batch_size": 2048}, candidate=True),
    "mlp_head": Arm("like_for_like", "MLP heads instead of linear ones", over={"head": "mlp"}, candidate=True),
    "full_text_only": Arm("like_for_like", "trained on the full product text only (no title / field-subset "
                          "variants): the whole-catalog query text", over={"text_variants": []}, candidate=True),
    "i2i_shared": Arm("similar_items", "hard_negatives + image-image term (weight 1, same-leaf and other-view "
                      "positives) on the shared 768-d space", over={"hard_beta": 4.0, **I2I}, candidate=True),
    "similar_subspace": Arm("similar_items", "hard_negatives + the image-image term on its own 256-d subspace of "
                            "the image embedding (search on the other 512)", over=SIM, candidate=True),
    "similar_subspace_leaf": Arm("similar_items", "similar_subspace with leaf batches", over={**SIM, **HARD},
                                 candidate=True),
    "partial_ft": Arm("partial", "similar_subspace's model, then 3 more epochs with EfficientNet-Lite0's last MBConv "
                      "block + head conv unlocked, fed cached lower-block outputs (~90 s an epoch on 2 cores)",
                      over={**SIM, "lock": "text", "unlock_blocks": 2, "tower_lr": 1e-4, "epochs": 3, "lr": 2e-4,
                            "warmup_steps": 5, "image_views": 1}, candidate=True, init="similar_subspace"),
    # Tower arms share one cheaper recipe (clean photos only, the full product text only) so each new tower
    # is featurised once (8,225 photos or 8,225 texts), not with augmented views and text variants;
    # towers_ref is the same recipe on the default towers: each tower arm varies the tower alone.
    # The colour level (models/colour.py): the same towers plus a 64-cell joint RGB histogram of the photo.
    "colour": Arm("colour", "default_recipe on the towers + the colour level (minilm-efflite0-mlc)", COLOUR,
                  candidate=True),
    "colour_no_augment": Arm("colour", "no_augment on the towers + the colour level", COLOUR,
                             over={"augment": False}),
    "towers_ref": Arm("towers", "the tower arms' recipe on Lite0 + MiniLM", over=TOWERS, candidate=True),
    "lite1": Arm("towers", "EfficientNet-Lite1 image tower (240 px)", "minilm-efflite1-ml", over=TOWERS, candidate=True),
    "lite2": Arm("towers", "EfficientNet-Lite2 image tower (260 px)", "minilm-efflite2-ml", over=TOWERS, candidate=True),
    "mpnet": Arm("towers", "all-mpnet-base-v2 text tower", "mpnet-efflite0-ml", over=TOWERS, candidate=True),
}
QUICK_ARMS = ("default_recipe", "leaf_hard", "similar_subspace")
# Two sets, two result files (each produced whole by one run; `make bench` runs both): the core arms choose and
# ship the default on Lite0 + MiniLM features that are cached once; the towers set featurises new towers
# (minutes each on 2 cores) and measures them, partial fine-tuning and the single-level / LiT references.
SETS = {
    "core": ("default_recipe", "epochs_10", "no_augment", "dim_256", "no_fn_mask", "leaf_batches", "hard_negatives",
             "leaf_hard", "i2i_shared", "similar_subspace", "similar_subspace_leaf"),
    "towers": ("similar_subspace", "partial_ft", "towers_ref", "lite1", "lite2", "mpnet", "single_level",
               "lit_baseline"),
}
SET_RESULTS = {"core": "train_quality.json", "towers": "train_quality_towers.json"}


# ----------------------------------------------------------------------------- data


@dataclass
class Context:
    catalog: Any
    rows: dict[str, np.ndarray]  # split → catalog rows
    protos: dict[str, Any]  # split → whole-catalog Protocol
    cache_dir: str
    quick: bool


def quick_catalog(catalog: Any, per_split: dict[str, int]) -> Any:
    """A deterministic, leaf-diverse subset (round-robin over leaves in id order) for --quick."""
    from shopclip.catalog import Catalog

    keep = []
    for split, n in per_split.items():
        by_leaf: dict[str, list] = {}
        for p in sorted((p for p in catalog.products if p.split == split), key=lambda p: p.id):
            by_leaf.setdefault(p.category_path, []).append(p)
        leaves = sorted(by_leaf, key=lambda k: (-len(by_leaf[k]), k))
        got: list = []
        i = 0
        while len(got) < n and any(i < len(v) for v in by_leaf.values()):
            got += [by_leaf[leaf][i] for leaf in leaves if i < len(by_leaf[leaf])]
            i += 1
        keep += got[:n]
    ids = {p.id for p in keep}
    return Catalog([p for p in catalog.products if p.id in ids], root=catalog.root, source=catalog.source)


def make_context(catalog: Any, cache_dir: str, quick: bool) -> tuple[Context, dict[str, Any]]:
    from shopclip.catalog import group_key
    from shopclip.catalog.photos import merge_identical_photos
    from shopclip.eval.whole_catalog import Protocol

    merged, photos = merge_identical_photos(catalog)
    ids = [p.id for p in merged.products]
    keys = [group_key(p) for p in merged.products]
    leaves = [p.category_path for p in merged.products]
    rows = {s: np.array([i for i, p in enumerate(merged.products) if p.split == s]) for s in ("train", "val", "test")}
    protos = {s: Protocol.build(ids, keys, leaves, [ids[i] for i in rows[s]], s) for s in ("val", "test")}
    return Context(catalog, rows, protos, cache_dir, quick), photos.summary(merged)


# ----------------------------------------------------------------------------- measuring


def tower_speed(model: Any, catalog: Any, n_images: int = 96, n_texts: int = 256) -> dict[str, float]:
    """Tower forward throughput on this machine's threads (photos decoded beforehand; after a warm-up)."""
    from shopclip.train.config import TextConfig
    from shopclip.train.data import render_text

    prods = catalog.products[: max(n_images, n_texts)]
    pixels = torch.stack([model.preprocess(catalog.image_path(p)) for p in prods[:n_images]])
    texts = [render_text(p, TextConfig().fields, TextConfig()) for p in prods[:n_texts]]
    model.eval()
    with torch.inference_mode():
        model.image_tower(pixels[:16])
        t0 = time.perf_counter()
        for i in range(0, len(pixels), 16):
            model.image_tower(pixels[i : i + 16])
        img_s = len(pixels) / (time.perf_counter() - t0)
        model.text_tower(model.text_tower.tokenize(texts[:32]))
        t0 = time.perf_counter()
        for i in range(0, len(texts), 64):
            model.text_tower(model.text_tower.tokenize(texts[i : i + 64]))
        txt_s = len(texts) / (time.perf_counter() - t0)
    return {"image_tower_images_per_s": round(img_s, 1), "text_tower_texts_per_s": round(txt_s, 1),
            "threads": torch.get_num_threads()}


def _r(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _r(v) for k, v in d.items()}
    if isinstance(d, float):
        return None if math.isnan(d) else round(d, 4)
    return d


def measure(ctx: Context, img: np.ndarray, txt: np.ndarray | None, title: np.ndarray | None) -> dict[str, Any]:
    """Both protocols for one set of catalog-order embeddings (image, full text, title)."""
    from shopclip.eval.whole_catalog import whole_catalog_metrics
    from shopclip.train.evaluate import retrieval_report

    out: dict[str, Any] = {"whole_catalog": {}, "whole_catalog_title_query": {}, "split": {}}
    for s, proto in ctx.protos.items():
        out["whole_catalog"][s] = whole_catalog_metrics(img, txt, proto)
        if title is not None:
            out["whole_catalog_title_query"][s] = {"t2i": whole_catalog_metrics(img, title, proto)["t2i"]}
        if txt is not None:
            r = ctx.rows[s]
            out["split"][s] = retrieval_report(img[r], txt[r])
            if title is not None:
                t = retrieval_report(img[r], title[r])
                out["split"][s].update({"title_t2i_r10": t["t2i_r10"], "title_t2i_mrr": t["t2i_mrr"]})
    return _r(out)


@torch.no_grad()
def project(model: Any, feats: Any, image: torch.Tensor | None = None) -> tuple[np.ndarray, ...]:
    """What encode_image / encode_text return, from cached tower features (tower → head → L2)."""
    model.eval()
    img = model.project_image(torch.from_numpy(feats.image) if image is None else image).numpy()
    title = model.project_text(torch.from_numpy(feats.title)).numpy() if feats.title is not None else None
    return img, model.project_text(torch.from_numpy(feats.full)).numpy(), title


SIM_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@torch.no_grad()
def choose_sim_weight(ctx: Context, model: Any, image_feats: torch.Tensor) -> dict[str, Any]:
    """The similar-items subspace's share in image→image scores, by VAL same-leaf precision@10 (set on the model)."""
    from shopclip.eval.whole_catalog import same_leaf_precision

    m, s = (x.numpy() for x in model.image_head.parts(image_feats))
    sweep = {w: same_leaf_precision(np.concatenate([m * math.sqrt(1 - w), s * math.sqrt(w)], axis=1),
                                    ctx.protos["val"]) for w in SIM_WEIGHTS}
    best = max(sweep, key=lambda w: sweep[w])
    model.image_head.set_weight(best)
    model.config.sim_weight = best
    return {"chosen": best, "val_i2i_same_leaf_precision@10": {str(w): round(v, 4) for w, v in sweep.items()}}


def lower_features(ctx: Context, model: Any, n_top: int) -> torch.Tensor:
    """Cached frozen-lower-block outputs of every catalog photo (clean view), as the trainer caches them."""
    from _features import _items
    from shopclip.models.augment import AugmentConfig
    from shopclip.models.features import (
        CLEAN_VIEW,
        FeatureCache,
        compute_image_features,
        image_fingerprint,
        view_key,
    )
    from shopclip.models.partial import image_top_split
    from shopclip.train.trainer import _Featurizer

    split = image_top_split(model.image_tower, n_top)
    cache = FeatureCache(ctx.cache_dir, f"image-lower{n_top}", image_fingerprint(model), split.dim, dtype="float16")
    items = _items(ctx.catalog, ctx.catalog.products)
    compute_image_features(_Featurizer(split, model.transform), items, [CLEAN_VIEW], cache, aug=AugmentConfig(),
                           seed=0, progress=not ctx.quick)
    return torch.from_numpy(cache.get([view_key(it.sha1, CLEAN_VIEW) for it in items]))


@torch.no_grad()
def partial_tower(model: Any, lower: torch.Tensor, n_top: int) -> torch.Tensor:
    """The fine-tuned tower's output for every catalog photo, from the cached lower blocks."""
    from shopclip.models.partial import image_top_split

    split = image_top_split(model.image_tower, n_top).eval()
    return torch.cat([split.upper(lower[s : s + 512].float()) for s in range(0, len(lower), 512)])


# ----------------------------------------------------------------------------- the LiT baseline


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


# ----------------------------------------------------------------------------- choosing


SELECTION_RULE = (
    "on the VAL split only: among candidate arms whose image→image same-leaf precision@10 (whole catalog) is at "
    "least the image tower's + 0.05 and whose split-protocol t2i MRR is at least default_recipe's - 0.005, take the "
    "highest whole-catalog text→image MRR; an arm whose towers embed fewer than 0.6x the images/s of the Lite0 + "
    "MiniLM towers must beat the best cheaper arm by 5 % relative MRR to be chosen"
)


def choose(arms: dict[str, dict[str, Any]], tower_i2i: float, lite0_speed: float | None) -> dict[str, Any]:
    def val(name: str, *path: str) -> float:
        d: Any = arms[name]
        for p in path:
            d = d[p]
        return float(d)

    floor_split = val("default_recipe", "split", "val", "t2i_mrr") - 0.005 if "default_recipe" in arms else -1.0
    table, ok = {}, []
    for name, a in arms.items():
        if not a.get("candidate"):
            continue
        mrr = val(name, "whole_catalog", "val", "t2i", "mrr")
        i2i = val(name, "whole_catalog", "val", "i2i_same_leaf_precision@10")
        split_mrr = val(name, "split", "val", "t2i_mrr")
        speed = a["towers"].get("image_tower_images_per_s")
        passes = i2i >= tower_i2i + 0.05 and split_mrr >= floor_split
        table[name] = {"val_t2i_mrr": mrr, "val_i2i_same_leaf_precision@10": i2i, "val_split_t2i_mrr": split_mrr,
                       "image_tower_images_per_s": speed, "passes_floors": passes}
        if passes:
            ok.append(name)
    # Without timings (--no-timings: every arm on the Lite0 towers, checked in main) every arm is "cheap".
    cheap = [n for n in ok if lite0_speed is None or table[n]["image_tower_images_per_s"] >= 0.6 * lite0_speed]
    best_cheap = max(cheap, key=lambda n: table[n]["val_t2i_mrr"], default=None)
    chosen = best_cheap
    for n in ok:
        if n in cheap:
            continue
        bar = table[best_cheap]["val_t2i_mrr"] * 1.05 if best_cheap else -1.0
        if table[n]["val_t2i_mrr"] > bar and (chosen is None or table[n]["val_t2i_mrr"] > table[chosen]["val_t2i_mrr"]):
            chosen = n
    if chosen is None:  # nothing clears the floors: the best val MRR, said plainly
        chosen = max(table, key=lambda n: table[n]["val_t2i_mrr"])
    return {"rule": SELECTION_RULE, "image_tower_val_i2i_precision@10": round(tower_i2i, 4),
            "candidates": _r(table), "chosen": chosen, "chosen_passes_floors": chosen in ok}


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default=str(SAMPLE / "catalog.jsonl"))
    ap.add_argument("--cache-dir", default=None, help="feature cache root [default: a temp folder with --quick, "
                                                      "else $SHOPCLIP_CACHE_DIR/features or ~/.cache/shopclip/features]")
    ap.add_argument("--set", default="core", choices=sorted(SETS), help="which arms (and default result file): core "
                    "chooses and ships the default; towers measures new towers, partial fine-tuning, single-level")
    ap.add_argument("--arms", default="", help="comma-separated arms instead of a set (pilots; never committed)")
    ap.add_argument("--ship", action="store_true", help="ship the chosen arm as the package default (float16 heads)")
    ap.add_argument("--quick", action="store_true", help="a seconds-long run on ~240 products, 3 arms, 2 epochs")
    ap.add_argument("--no-timings", action="store_true", help="quality figures only: no training minutes, "
                    "featurising seconds or tower images/s, for a run that cannot hold the heavy lock (timings need "
                    "it, TEAM.md); only for arms on the Lite0 towers, where the selection rule's cost clause is moot")
    ap.add_argument("--out", default=None, help=f"result file [default: {RESULTS / 'train_quality.json'}]")
    a = ap.parse_args()
    if a.quick and a.ship:
        ap.error("--quick never ships")
    out_path = Path(a.out) if a.out else (None if a.quick or a.arms else RESULTS / SET_RESULTS[a.set])
    if a.ship and a.set != "core":
        ap.error("--ship goes with the core set (the arms the default is chosen from)")
    prov = Provenance.start()
    from shopclip.catalog import Catalog
    from shopclip.models import create_model, load_model
    from shopclip.models.features import default_cache_dir
    from shopclip.train.config import TextConfig, TrainConfig
    from shopclip.train.trainer import train

    tmp = Path(tempfile.mkdtemp(prefix="shopclip-train-quality-"))
    cache_dir = a.cache_dir or (str(tmp / "cache") if a.quick else str(default_cache_dir()))
    catalog = Catalog.load(a.catalog)
    if a.quick:
        catalog = quick_catalog(catalog, {"train": 160, "val": 40, "test": 40})
    ctx, photos = make_context(catalog, cache_dir, a.quick)
    names = [n for n in (a.arms.split(",") if a.arms else (QUICK_ARMS if a.quick else SETS[a.set])) if n]
    unknown = [n for n in names if n not in ARMS and n not in ("lit_baseline",)]
    if unknown:
        ap.error(f"unknown arms {unknown}; known: {', '.join(ARMS)}")
    if a.no_timings and any(n not in ARMS or ARMS[n].model not in (BASE, COLOUR) for n in names):
        ap.error("--no-timings only with arms on the Lite0 towers (the cost clause needs images/s otherwise)")
    timed = not a.no_timings
    for n in list(names):  # an arm that continues another needs that one first
        if n in ARMS and ARMS[n].init and ARMS[n].init not in names[: names.index(n)]:
            names.insert(names.index(n), ARMS[n].init)
    epochs = {"epochs": 2} if a.quick else {}
    train_rows = [catalog.products[i] for i in ctx.rows["train"]]

    # ---- featurise every architecture the arms use, once (what the cache lacks)
    archs = list(dict.fromkeys([BASE, *(ARMS[n].model for n in names if n in ARMS)]))
    bases: dict[str, Any] = {}
    feats: dict[str, Any] = {}
    arch_info: dict[str, Any] = {}
    archs.sort(key=lambda x: x in COLOUR_BASES)  # a colour architecture after the one it extends
    for arch in archs:
        t = time.perf_counter()
        model = create_model(arch).eval()
        bases[arch] = model
        users = [ARMS[n] for n in names if n in ARMS and ARMS[n].model == arch]
        variants = arch == BASE or any("text_variants" not in u.over for u in users)
        augmented = any(ARMS[n].model == arch and ARMS[n].over.get("augment", True) for n in names if n in ARMS)
        if arch in COLOUR_BASES:  # the base tower's features (and views), then + the colour level
            base_model = bases.get(COLOUR_BASES[arch]) or create_model(COLOUR_BASES[arch]).eval()
            catalog_features(catalog, base_model, cache_dir, progress=not a.quick, variants=variants)
            if augmented:
                fill_training_views(catalog, base_model, cache_dir, train_rows, views=2, progress=not a.quick)
            derive_colour_features(catalog, base_model, model, cache_dir, progress=not a.quick)
        feats[arch] = catalog_features(catalog, model, cache_dir, progress=not a.quick, variants=variants)
        if augmented:
            fill_training_views(catalog, model, cache_dir, train_rows, views=2, progress=not a.quick)
        arch_info[arch] = {"featurise_seconds": round(time.perf_counter() - t, 1),
                           **tower_speed(model, catalog, 16 if a.quick else 96, 32 if a.quick else 256)} if timed else {}

    arms: dict[str, dict[str, Any]] = {}
    base = bases[BASE]
    f0 = feats[BASE]
    arms["untrained"] = {"group": "reference", "doc": f"{BASE} with untrained heads",
                         **measure(ctx, *project(base, f0))}
    raw = f0.image / np.linalg.norm(f0.image, axis=1, keepdims=True)
    arms["image_tower"] = {"group": "reference", "doc": "the image tower's raw multi-level features (no head)",
                           **measure(ctx, raw, None, None)}
    if not a.quick:
        shipped = load_model("default")
        if shipped.config.image_tower == base.config.image_tower and shipped.config.text_tower == base.config.text_tower:
            arms["shipped_before"] = {"group": "reference", "doc": "the default shipped when this run started",
                                      "model": shipped.config.info.get("training", {}).get("config", {}),
                                      **measure(ctx, *project(shipped, f0))}
    if "lit_baseline" in names:
        single = bases.get("minilm-efflite0") or create_model("minilm-efflite0").eval()
        fs = feats.get("minilm-efflite0") or catalog_features(catalog, single, cache_dir, progress=not a.quick)
        t = time.perf_counter()
        tr = ctx.rows["train"]
        hi, ht = lit_baseline(torch.from_numpy(fs.image[tr]), torch.from_numpy(fs.full[tr]), epochs=2 if a.quick else 10)
        with torch.no_grad():
            e = [F.normalize(h(torch.from_numpy(x)), dim=-1).numpy() for h, x in ((hi, fs.image), (ht, fs.full),
                                                                                 (ht, fs.title))]
        arms["lit_baseline"] = {"group": "reference", "doc": "plain LiT: single-level towers, 10 epochs, no "
                                "augmentation, 256-d, random batches, no false-negative masking",
                                "train_minutes": round((time.perf_counter() - t) / 60, 2), **measure(ctx, *e)}

    runs: dict[str, Path] = {}

    def run_arm(name: str, arm: Arm, out_name: str | None = None) -> dict[str, Any]:
        over = {**arm.over, **epochs}
        if "text_variants" in over:
            over["text"] = TextConfig(variants=over.pop("text_variants"))
        start = str(runs[arm.init]) if arm.init else arm.model  # a model folder: training continues from it
        cfg = TrainConfig(catalog=a.catalog, out=str(tmp / (out_name or name)), model=start, progress=False,
                          cache_dir=cache_dir, **over)
        res = train(cfg, catalog=catalog)
        runs[out_name or name] = res.model_dir
        model = load_model(res.model_dir)  # the saved model, as every command loads it
        f = feats[arm.model]
        image = None
        tower_out = torch.from_numpy(f.image)
        if model.config.tower_weights == "partial":
            tower_out = partial_tower(model, lower_features(ctx, bases[arm.model], cfg.unlock_blocks), cfg.unlock_blocks)
            image = tower_out
        extra: dict[str, Any] = {}
        if model.config.sim_dim:  # its weight in image→image scores, chosen on val, saved with the model
            extra["sim_weight"] = choose_sim_weight(ctx, model, tower_out)
            model.save(res.model_dir)
        return {"group": arm.group, "doc": arm.doc, "model": arm.model, "overrides": arm.over, **extra,
                "candidate": arm.candidate, **({"train_minutes": round(res.seconds / 60, 2)} if timed else {}),
                "towers": {k: v for k, v in arch_info[arm.model].items() if k != "featurise_seconds"},
                **measure(ctx, *project(model, f, image))}

    for name in names:
        if name in ARMS:
            arms[name] = run_arm(name, ARMS[name])
            w = arms[name]["whole_catalog"]
            print(f"{name:16s} val t2i MRR {w['val']['t2i']['mrr']:.4f} i2i P@10 "
                  f"{w['val']['i2i_same_leaf_precision@10']:.4f} | split val MRR {arms[name]['split']['val']['t2i_mrr']:.4f}",
                  flush=True)

    selection = None
    if any(arms[n].get("candidate") for n in arms):
        lite0_speed = arch_info[BASE].get("image_tower_images_per_s")
        selection = choose(arms, arms["image_tower"]["whole_catalog"]["val"]["i2i_same_leaf_precision@10"],
                           lite0_speed)
        chosen = selection["chosen"]
    if selection is not None and a.set == "towers" and not a.arms:
        selection["note"] = ("informative: the default is chosen and shipped by the core set; this says whether "
                             "a tower option or partial fine-tuning would beat it on val (cost clause included)")
    elif selection is not None:
        arms["new_default"] = {**arms[chosen], "group": "chosen", "doc": f"the arm chosen on val: {chosen}",
                               "chosen_arm": chosen, "candidate": False}
        # Shipped as float16 heads (+ float16 tower blocks when fine-tuned) and measured again as loaded:
        # into the package with --ship, else into a temp folder (the same numbers, nothing shipped).
        ship_dir = SHIP_DIR if a.ship else tmp / "ship"
        if ship_dir.exists():
            shutil.rmtree(ship_dir)
        load_model(runs[chosen]).save(ship_dir, half=True)
        shipped = load_model(ship_dir)
        arm = ARMS[chosen]
        image = None
        if shipped.config.tower_weights == "partial":
            n_top = arm.over["unlock_blocks"]
            image = partial_tower(shipped, lower_features(ctx, bases[arm.model], n_top), n_top)
        size = sum(p.stat().st_size for p in ship_dir.iterdir())
        arms["shipped"] = {"group": "chosen", "doc": f"{chosen} saved as shipped (float16) and loaded back"
                           + (": src/shopclip/models/pretrained/default" if a.ship else " (not shipped: no --ship)"),
                           "package_bytes": size, "files": sorted(p.name for p in ship_dir.iterdir()),
                           "embed_dim": shipped.embed_dim, "sim_dim": shipped.config.sim_dim,
                           "sim_weight": shipped.config.sim_weight,
                           **measure(ctx, *project(shipped, feats[arm.model], image))}

    headline = {}
    for name, r in arms.items():
        w = r["whole_catalog"]
        headline[name] = {split: {k: w[split][k] for k in ("t2i", "i2t", "i2i_same_leaf_precision@10",
                                                            "fused_same_leaf_precision@10") if k in w[split]}
                          for split in ("val", "test")}
        headline[name].update({k: r[k] for k in ("train_minutes", "towers") if k in r})
    targets = None
    if "shipped" in arms and "default_recipe" in arms:
        wt = arms["shipped"]["whole_catalog"]["test"]
        tower_p = arms["image_tower"]["whole_catalog"]["test"]["i2i_same_leaf_precision@10"]
        targets = {"compared": "shipped (the chosen arm, float16) on the TEST split, whole catalog, against today's "
                               "default: its recipe retrained here (default_recipe) and the heads shipped when this "
                               "run started (shipped_before)", "t2i_mrr_target_relative_gain": 0.30,
                   "i2i_target_gain_over_image_tower": 0.05,
                   "i2i_same_leaf_precision@10_gain_over_image_tower": wt["i2i_same_leaf_precision@10"] - tower_p}
        for ref in ("default_recipe", "shipped_before"):
            if ref not in arms:
                continue
            wb = arms[ref]["whole_catalog"]["test"]
            st, sb = arms["shipped"]["split"]["test"], arms[ref]["split"]["test"]
            targets[f"vs_{ref}"] = {
                "t2i_mrr_relative_gain": wt["t2i"]["mrr"] / wb["t2i"]["mrr"] - 1,
                "split_protocol_delta": {k: st[k] - sb[k] for k in ("t2i_r1", "t2i_r5", "t2i_r10", "t2i_mrr", "i2t_r1",
                                                                     "i2t_r5", "i2t_r10", "i2t_mrr")}}
        targets = _r(targets)
    result = {
        "config": {"catalog": a.catalog, "quick": a.quick, "ship": a.ship, "set": a.set, "arms_requested": a.arms or None,
                   "timings": timed if timed else "omitted (--no-timings): run without the heavy lock, so no training "
                                                  "minutes or images/s are recorded",
                   "arms_run": names,
                   "cache_dir": cache_dir, "default_train_config": TrainConfig().to_dict(),
                   "arms": {n: {"model": ARMS[n].model, "overrides": ARMS[n].over, "group": ARMS[n].group}
                            for n in names if n in ARMS}, "epochs_override": epochs or None},
        "protocols": {
            "whole_catalog": "queries: the split's products; candidates: every catalog product; relevant: the "
                             "product and its merged group (declared + byte-identical photos); query text: full "
                             "(title, category, attributes, description); whole_catalog_title_query: bare title",
            "split": "text i vs the split's photos only (and back), no group merging: recall@k, MRR (the older "
                     "821-candidate protocol on test); title_t2i_*: bare-title queries",
            "sizes": {s: int(len(r)) for s, r in ctx.rows.items()} | {"catalog": len(catalog)},
        },
        "identical_photos": photos,
        "towers": arch_info,
        "whole_catalog": headline,
        "selection": selection,
        "targets": targets,
        "arms": arms,
    }
    if out_path is not None:
        write_result(out_path, result, prov)
        print("→", out_path)
    if targets:
        print(targets)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
