"""Localisation benchmark: every localiser on generated scenes with known boxes (see grounding/synth.py).

Real studio photos from ../shared are cut out and composed with 1-3 other products
onto varied backgrounds; the prompt is the target's product type. For each localiser:
hit rate at IoU ≥ 0.5 and mean IoU of the *chosen* box (``choose_box`` with no
margin, the method's own fallback threshold), broken down by background and by
whether the prompt has ImageNet vocabulary; its speed on the scenes; and the default's
throughput on real catalog photos (what ``shopclip ground`` spends its time on).
Nothing is written but the JSON and one contact sheet; scenes live in memory.

    .venv/bin/python bench/grounding.py             # ~10 min on 2 busy cores
    .venv/bin/python bench/grounding.py --scenes 60 --out /tmp/g.json   # a quick look
    .venv/bin/python bench/grounding.py --update --localisers "" \
        --trained-model on_crops=.cache/grounding-ablation/runs/trained_on_crops/model   # add a trained textmap
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

# Before torch loads (OpenMP reads it once), as `shopclip ground` does: spinning idle threads ran 28x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "products" / "catalog.jsonl"
LOCALISERS = ("full_image", "foreground", "saliency", "cam", "textmap", "pose", "combined")


SWEEP = (0.0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
MAX_HIT_LOSS = 0.01  # a threshold may cost at most this much hit rate on the scenes
QUANTILES = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def junk_images(prompts: list[str], known: set[str], seed: int) -> list[tuple[str, object, str]]:
    """Photos with no product at all: blank/one-colour, noise, gradients; each asked for a known and an unknown type."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    imgs: list[tuple[str, Image.Image]] = []
    for c in ((255, 255, 255), (0, 0, 0), (128, 128, 128), (250, 248, 245), *(tuple(int(x) for x in rng.integers(0, 256, 3))
                                                                           for _ in range(4))):
        imgs.append(("uniform", Image.new("RGB", (400, 400) if len(imgs) % 2 else (640, 480), c)))
    for sigma in (20, 40, 60, 90):
        imgs.append(("gaussian_noise", Image.fromarray(np.clip(rng.normal(128, sigma, (400, 400, 3)), 0, 255)
                                                      .astype(np.uint8))))
    for _ in range(4):
        imgs.append(("uniform_noise", Image.fromarray(rng.integers(0, 256, (400, 400, 3), dtype=np.uint8))))
    yy, xx = np.mgrid[0:400, 0:400] / 399.0
    for ramp in (xx, yy, (xx + yy) / 2, np.hypot(xx - 0.5, yy - 0.5) / 0.71):
        col = rng.uniform(0.3, 1.0, 3)
        imgs.append(("gradient", Image.fromarray((255 * ramp[..., None] * col).astype(np.uint8))))
    a = sorted(p for p in prompts if p in known)
    b = sorted(p for p in prompts if p not in known) or a
    return [(kind, img, q) for i, (kind, img) in enumerate(imgs) for q in (a[i % len(a)], b[i % len(b)])]


def _q(values: list[float]) -> list[float] | None:
    return [round(float(x), 4) for x in np.quantile(values, QUANTILES)] if values else None


def confidence(raw: list[tuple[float, float, bool]], junk: list[tuple[str, float, bool]], min_score: float,
               full_ious: list[float]) -> dict:
    """Best-box scores of hits vs misses vs junk, and what each threshold in SWEEP would do.

    `raw`: per scene (IoU, score, fallback) of the choice without a threshold; a threshold t
    keeps that choice when its score >= t and falls back to the full image otherwise (the
    boxes are sorted, so no lower box can pass) — so the sweep is exact, not re-run.
    """
    hit = np.asarray([iou >= 0.5 and not fb for iou, _, fb in raw])
    score = np.asarray([sc for _, sc, _ in raw])
    real = np.asarray([not fb for _, _, fb in raw])
    j_score = np.asarray([sc for _, sc, _ in junk])
    j_real = np.asarray([not fb for _, _, fb in junk])
    full_hit = np.asarray(full_ious) >= 0.5
    sweep = []
    for t in SWEEP:
        keep = real & (score >= t)
        sweep.append({"min_score": t, "hit_rate_iou50": round(float(np.mean(np.where(keep, hit, full_hit))), 4),
                      "hits_lost": int((hit & ~keep).sum()), "misses_to_fallback": int((real & ~hit & ~keep).sum()),
                      "junk_fallback_rate": round(float(np.mean(~(j_real & (j_score >= t)))), 4)})
    base = sweep[0]["hit_rate_iou50"]
    suggested = max(r["min_score"] for r in sweep if base - r["hit_rate_iou50"] <= MAX_HIT_LOSS + 1e-9)
    kinds = sorted({k for k, _, _ in junk})
    return {
        "min_score": min_score,
        "suggested_min_score": suggested,
        "rule": f"largest threshold in {list(SWEEP)} costing at most {MAX_HIT_LOSS} of the scenes' hit rate",
        "score_quantiles": {"at": list(QUANTILES), "hits": _q(score[hit & real].tolist()),
                            "misses": _q(score[~hit & real].tolist()),
                            "junk": _q(j_score[j_real].tolist())},
        "junk_images": len(junk),
        "junk_fallback_rate": round(float(np.mean(~(j_real & (j_score >= min_score)))), 4),
        "junk_fallback_by_kind": {k: round(float(np.mean([fb or sc < min_score for kk, sc, fb in junk if kk == k])), 4)
                                  for k in kinds},
        "sweep": sweep,
    }


def evaluate(loc, scenes, known: set[str], junk: list | None = None) -> dict:
    from shopclip.grounding import Box, choose_box

    ious, fallbacks, per_bg, per_kind = [], 0, {}, {"imagenet_prompt": [], "other_prompt": []}
    raw, full_ious = [], []
    t0 = time.perf_counter()
    for s in scenes:
        boxes = loc.localise(s.image, s.prompt)
        g = choose_box(boxes, s.image.size, margin=0.0, min_score=loc.min_score)
        g0 = choose_box(boxes, s.image.size, margin=0.0, min_score=0.0)
        raw.append((g0.box.iou(s.box), g0.box.score, g0.fallback))
        full_ious.append(Box.full(*s.image.size).iou(s.box))
        iou = g.box.iou(s.box)
        ious.append(iou)
        fallbacks += g.fallback
        per_bg.setdefault(s.background, []).append(iou)
        per_kind["imagenet_prompt" if s.prompt in known else "other_prompt"].append(iou)
    secs = time.perf_counter() - t0
    arr = np.asarray(ious)
    junk_raw = []
    for kind, img, prompt in junk or []:
        g0 = choose_box(loc.localise(img, prompt), img.size, margin=0.0, min_score=0.0)
        junk_raw.append((kind, g0.box.score, g0.fallback))

    def stats(v: list[float]) -> dict:
        a = np.asarray(v)
        return {"n": len(a), "hit_rate_iou50": round(float((a >= 0.5).mean()), 4) if len(a) else None,
                "mean_iou": round(float(a.mean()), 4) if len(a) else None}

    return {
        "hit_rate_iou50": round(float((arr >= 0.5).mean()), 4),
        "mean_iou": round(float(arr.mean()), 4),
        "hit_rate_iou75": round(float((arr >= 0.75).mean()), 4),
        "fallback_rate": round(fallbacks / len(arr), 4),
        "ms_per_scene": round(1000 * secs / len(arr), 1),
        "by_background": {k: stats(v) for k, v in sorted(per_bg.items())},
        "by_prompt": {k: stats(v) for k, v in per_kind.items()},
        "confidence": confidence(raw, junk_raw, loc.min_score, full_ious),
    }


def throughput(loc, images: list, prompts: list[str], threads: int) -> float:
    torch.set_num_threads(threads)
    loc.localise(images[0], prompts[0])  # warm-up (model load, MediaPipe graph)
    t0 = time.perf_counter()
    for img, p in zip(images, prompts, strict=True):
        loc.localise(img, p)
    return round(len(images) / (time.perf_counter() - t0), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-type", type=int, default=40, help="cut-outs per product type in the pool")
    ap.add_argument("--localisers", default=",".join(LOCALISERS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads while scoring (1 is fastest on a busy box)")
    ap.add_argument("--throughput-images", type=int, default=100)
    ap.add_argument("--trained-model", action="append", default=[], metavar="NAME=FOLDER",
                    help="also score textmap with a trained model folder, reported as 'textmap_NAME' (repeatable)")
    ap.add_argument("--update", action="store_true",
                    help="merge into an existing --out JSON: only the localisers given are re-measured")
    ap.add_argument("--skip-throughput", action="store_true", help="keep (with --update) or omit throughput")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grounding.json")
    ap.add_argument("--sheet", type=Path, default=ROOT / "bench" / "results" / "grounding_scenes.png")
    ap.add_argument("--real-sheet", type=Path, default=ROOT / "bench" / "results" / "grounding_contact_sheet.png")
    args = ap.parse_args()

    from shopclip.catalog import Catalog
    from shopclip.core.images import open_image
    from shopclip.grounding import DEFAULT_METHOD, Box, choose_box, create_localiser
    from shopclip.grounding.crops import SheetItem, contact_sheet
    from shopclip.grounding.synth import build_pool, generate_scenes, target_prompts, texture_sources
    from shopclip.grounding.taxonomy import match_type, product_type
    from shopclip.models.factory import pretrained_dir

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    catalog = Catalog.load(SAMPLE)
    pool = build_pool(catalog, per_type=args.per_type, seed=args.seed)
    textures = texture_sources(catalog, seed=args.seed)
    scenes = list(generate_scenes(pool, args.scenes, seed=args.seed, textures=textures))
    prompts = sorted(target_prompts(pool))
    known = {p for p in prompts if match_type(p) is not None and match_type(p).classes}
    junk = junk_images(prompts, known, args.seed)
    print(f"pool {len(pool)} cut-outs, {len(prompts)} target prompts, {len(scenes)} scenes "
          f"in {time.perf_counter() - t0:.0f}s", flush=True)

    previous = json.loads(args.out.read_text()) if args.update and args.out.exists() else {}
    results = dict(previous.get("localisers", {}))
    todo = {name: (name, {}) for name in args.localisers.split(",") if name}
    for spec in args.trained_model:
        tag, _, folder = spec.partition("=")
        todo[f"textmap_{tag}"] = ("textmap", {"model": str(Path(folder).resolve())})
    for name, (kind, kwargs) in todo.items():
        loc = create_localiser(kind, **kwargs)
        results[name] = evaluate(loc, scenes, known, junk)
        if kwargs:
            results[name]["options"] = kwargs
        r = results[name]
        c = r["confidence"]
        print(f"{name:12s} hit@0.5={r['hit_rate_iou50']:.3f} mIoU={r['mean_iou']:.3f} "
              f"{r['ms_per_scene']:.0f} ms/scene; min_score {c['min_score']} (suggested {c['suggested_min_score']}), "
              f"junk fallback {c['junk_fallback_rate']:.2f}", flush=True)

    offline = {k: v for k, v in results.items() if k != "full_image"}
    best = max(offline, key=lambda k: (offline[k]["hit_rate_iou50"], offline[k]["mean_iou"]))

    # Throughput of the default on real catalog photos (test split, catalog order).
    default = create_localiser(DEFAULT_METHOD)
    test = [p for p in catalog if p.split == "test"]
    real = test[:: max(1, len(test) // args.throughput_images)][: args.throughput_images]  # Myntra and Flipkart
    imgs = [open_image(catalog.image_path(p)) for p in real]
    texts = [product_type(p) for p in real]
    tput = previous.get("throughput_images_per_s", {})
    if not args.skip_throughput:
        n2 = max(1, len(imgs) // 3)  # two threads on two contended cores is slow: a smaller sample
        tput = {f"{DEFAULT_METHOD}_real_photos_threads1": throughput(default, imgs, texts, 1),
                f"{DEFAULT_METHOD}_real_photos_threads2": throughput(default, imgs[:n2], texts[:n2], 2)}
        scene_imgs = [s.image for s in scenes[: args.throughput_images]]
        scene_prompts = [s.prompt for s in scenes[: args.throughput_images]]
        tput[f"{DEFAULT_METHOD}_scenes_threads1"] = throughput(default, scene_imgs, scene_prompts, 1)
        tput["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    torch.set_num_threads(args.threads)

    # Contact sheet: first 24 scenes, true box (drawn as the tile's "box") vs the default's choice in the caption.
    items = []
    for s in scenes[:24]:
        g = choose_box(default.localise(s.image, s.prompt), s.image.size, margin=0.0)
        img = s.image.copy()
        from PIL import ImageDraw

        ImageDraw.Draw(img).rectangle(s.box.xyxy, outline=(0, 90, 255), width=3)
        iou = g.box.iou(s.box)
        items.append(SheetItem(img, Box(*g.box.xyxy), f"{s.prompt} IoU {iou:.2f}", fallback=iou < 0.5))
    contact_sheet(items, args.sheet, tile=160, cols=6, colours=96)
    # And the default on real catalog photos (test split), for people to judge the boxes.
    by_leaf: dict[str, list] = {}
    for p in test:
        by_leaf.setdefault(p.category_path, []).append(p)
    leaves = sorted(by_leaf, key=lambda k: (-len(by_leaf[k]), k))
    shown = [by_leaf[k][i] for i in range(3) for k in leaves if i < len(by_leaf[k])][:48]  # many kinds
    real_items = []
    for p in shown:
        img, text = open_image(catalog.image_path(p)), product_type(p)
        g = choose_box(default.localise(img, text), img.size)
        real_items.append(SheetItem(img, g.box, f"{text} {g.box.label}", g.fallback))
    contact_sheet(real_items, args.real_sheet, tile=144, cols=8, colours=96)

    out = {
        "default": DEFAULT_METHOD,
        "best_on_benchmark": best,
        "default_is_best": best == DEFAULT_METHOD,
        "localisers": results,
        "throughput_images_per_s": tput,
        "benchmark": {
            "scenes": len(scenes), "seed": args.seed, "pool_cutouts": len(pool), "per_type": args.per_type,
            "target_prompts": len(prompts), "prompts_with_imagenet_classes": len(known),
            "backgrounds": sorted({s.background for s in scenes}),
            "generator": "shopclip.grounding.synth (module docstring documents every draw)",
            "box_choice": "choose_box(margin=0, min_score=localiser.min_score); IoU of the chosen box",
            "junk_images": f"{len(junk) // 2} images with no product (blank/one-colour, Gaussian and uniform noise, "
                           "gradients), each localised with a prompt that has ImageNet classes and one that has none",
        },
        "notes": [
            "pose: the scenes contain no people (apparel photos showing a person are kept out of the pool), "
            "so pose has nothing to find here and falls back to the full image; its value is on worn-apparel "
            "photos, judged by the contact sheet and the retrieval ablation, not by this benchmark.",
            "textmap: meaningful only with trained projection heads; 'model_trained' says whether the default "
            "model had them; 'textmap_<name>' entries (when present) use models trained by bench/grounding_ablation.py.",
            "cam: threshold 0.5·max (0.2 gave hit 0.13, 0.35 gave 0.28 on the first 120 scenes).",
            "confidence: per localiser, the best box's score on scene hits / misses / junk images, and the hit rate "
            "and junk fallback rate each min_score in the sweep would give (exact: boxes are sorted, so a threshold "
            "keeps the unthresholded choice or falls back). 'min_score' is the localiser's shipped threshold, "
            "'suggested_min_score' what the rule picks on this run.",
            "throughput: images/s on this shared 2-core machine (other jobs running; load average recorded); "
            "threads2 is often slower than threads1 here because the cores are contended.",
        ],
        "model_trained": bool(default.cam.model.config.trained) if hasattr(default, "cam") else None,
        "pretrained_default_dir_existed": pretrained_dir("default") is not None,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "torch_threads": args.threads, "cpus": os.cpu_count(),
                        "load_average_1m": round(os.getloadavg()[0], 2)},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("default", "best_on_benchmark", "throughput_images_per_s")}, indent=2))


if __name__ == "__main__":
    main()
