"""Retrieval ablation (VL-CLIP's table): text→image on full photos vs. grounded crops.

Three image sets, one query set (each test product's text: title + description):

* ``test_split``: the 821 test products' own photos vs. the default localiser's crops
  (prompt = product type). Most photos are studio shots of one product, so crops
  mostly trim white margins or cut a model down to the garment.
* ``scenes``: one composed scene per test product that can be cut out (see
  ``grounding/synth.py``; distractors from the *train* split): the scene as is vs. the
  default localiser's crop vs. the true box (oracle, + 5 % margin). This is where
  grounding should matter most.
* models: ``load_model("default")`` as shipped (its heads may be untrained: then
  text→image is near chance and the table says so), and, when the trainer exists, two
  models trained identically (heads only, LiT) on full train photos vs. on crops.

Relevance is exact (the same product, or its re-listing group). Everything is
cached under ``--work`` (ground_catalog's cache, scenes, trainer features) so a rerun
or a crash costs little.

The file also holds the default localiser's throughput (``throughput``: images/s with
2 torch threads on real test-split photos and on the composed scenes, what ``shopclip
ground`` costs), measured in the same run. The script writes the whole file, with the
run's provenance (``run``: command, commit, machine, load). ``--only-throughput``
measures just the throughput into a file of its own (``--out``); it never merges into
an earlier file.

    .venv/bin/python bench/grounding_ablation.py                  # ~30 min-2 h on 2 busy cores with training
    .venv/bin/python bench/grounding_ablation.py --no-train       # minutes
    .venv/bin/python bench/grounding_ablation.py --only-throughput --out /tmp/tput.json   # ~1 min
    .venv/bin/python bench/grounding_ablation.py --quick --out /tmp/ga.json   # 12 products, 6 scenes: code path only
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

# Before torch loads (OpenMP reads it once), as `shopclip ground` does: spinning idle threads ran 28x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from _common import Provenance, write_result  # noqa: E402 (bench/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "products" / "catalog.jsonl"
KS = (1, 5, 10)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def t2i(model, texts: list[str], images: list[Path], ps, groups: list[str] | None = None) -> dict:
    """Text→image metrics; with `groups` (one label per query) also the MRR of each group."""
    from shopclip.eval.metrics import retrieval_metrics
    from shopclip.eval.retrieval import category_relevance, exact_relevance

    t = model.encode_text(texts, batch_size=64)
    v = model.encode_image([str(p) for p in images], batch_size=32, num_workers=2)
    s = t @ v.T
    rel = exact_relevance(ps, ps)
    ex = retrieval_metrics(s, rel, KS)
    cat = retrieval_metrics(s, category_relevance(ps, ps), KS)
    keep = ("hits@1", "hits@5", "hits@10", "mrr", "n_queries")
    out = {k: round(float(ex[k]), 4) for k in keep}
    out["category_hits@5"] = round(float(cat["hits@5"]), 4)
    if groups is not None:
        # rank of the best relevant item per query (ties broken by index, like the metrics module)
        order = np.argsort(-s, axis=1, kind="stable")
        ranked_rel = np.take_along_axis(rel, order, axis=1) > 0
        rr = 1.0 / (ranked_rel.argmax(axis=1) + 1.0)
        out["mrr_by_box_label"] = {g: {"n": int(sum(1 for x in groups if x == g)),
                                       "mrr": round(float(np.mean([r for r, x in zip(rr, groups, strict=True)
                                                                   if x == g])), 4)}
                                   for g in sorted(set(groups))}
    return out


def build_scenes(catalog, work: Path, seed: int, limit: int | None, per_type: int = 40
                 ) -> tuple[list, dict[str, Path], dict[str, list]]:
    """One scene per eligible test product, saved as JPEG (reused when present); returns targets, paths, boxes."""
    from shopclip.grounding.synth import build_pool, make_scene, texture_sources

    folder = work / "scenes"
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / "index.json"
    if index_path.exists():
        idx = json.loads(index_path.read_text())
        if idx.get("seed") == seed and idx.get("limit") == limit:
            return idx["targets"], {k: Path(v) for k, v in idx["paths"].items()}, idx["boxes"]
    targets = build_pool(catalog, per_type=10**6 if not limit else max(1, limit // 4), seed=seed, splits=("test",))
    if limit:
        targets = targets[:limit]
    distractors = build_pool(catalog, per_type=per_type, seed=seed, splits=("train",))
    textures = texture_sources(catalog.split("train"), seed=seed)
    paths, boxes = {}, {}
    for i, t in enumerate(targets):
        s = make_scene(distractors, i, seed=seed + 1000, textures=textures, target=t)
        p = folder / f"{i:05d}.jpg"
        s.image.save(p, "JPEG", quality=92)
        paths[t.product_id] = p
        boxes[t.product_id] = list(s.box.xyxy)
        del s
    ids = [t.product_id for t in targets]
    index_path.write_text(json.dumps({"seed": seed, "limit": limit, "targets": ids,
                                      "paths": {k: str(v) for k, v in paths.items()}, "boxes": boxes}))
    return ids, paths, boxes


def oracle_crops(paths: dict[str, Path], boxes: dict[str, list], folder: Path) -> dict[str, Path]:
    from shopclip.core.images import open_image
    from shopclip.grounding import Box
    from shopclip.grounding.crops import crop_image, save_jpeg

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for pid, p in paths.items():
        dst = folder / p.name
        if not dst.exists():
            img = open_image(p)
            save_jpeg(crop_image(img, Box(*boxes[pid]).expand(0.05).clip(*img.size)), dst)
        out[pid] = dst
    return out


def scene_catalog(catalog, ids: list[str], paths: dict[str, Path]):
    from dataclasses import replace

    from shopclip.catalog import Catalog

    return Catalog([replace(catalog[i], image=str(paths[i].resolve())) for i in ids], root=catalog.root)


def throughput(catalog, scene_paths: list[Path], n: int, threads: int) -> dict:
    """Images/s of the default localiser (``localise`` only: decoding is done first) on real and composed photos."""
    from shopclip.core.images import open_image
    from shopclip.grounding import DEFAULT_METHOD, create_localiser
    from shopclip.grounding.taxonomy import product_type

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    loc = create_localiser(DEFAULT_METHOD)
    test = [p for p in catalog if p.split == "test"]
    real = test[:: max(1, len(test) // n)][:n]  # spread over the split: Myntra and Flipkart
    sets = {"real_test_photos": ([open_image(catalog.image_path(p)) for p in real], [product_type(p) for p in real]),
            "composed_scenes": ([open_image(q) for q in scene_paths[:n]], None)}
    ids = {q: pid for pid, q in _scene_index.items()}
    out: dict = {"localiser": DEFAULT_METHOD, "threads": threads, "load_average_1m_before": round(os.getloadavg()[0], 2)}
    try:
        for name, (imgs, prompts) in sets.items():
            if prompts is None:
                prompts = [product_type(catalog[ids[q]]) for q in scene_paths[:n]]
            loc.localise(imgs[0], prompts[0])  # warm-up: model load, MediaPipe graph
            # Two passes: the first pays oneDNN's kernel set-up for every new input shape (photos
            # keep their aspect ratio); a long `shopclip ground` run sees the same few shapes again
            # and again, so the second pass is its steady state.
            rates = []
            for _ in range(2):
                t0 = time.perf_counter()
                for img, prompt in zip(imgs, prompts, strict=True):
                    loc.localise(img, prompt)
                rates.append(round(len(imgs) / (time.perf_counter() - t0), 2))
            out[name] = {"images": len(imgs), "images_per_s": rates[1], "images_per_s_first_pass": rates[0]}
            log(f"throughput {name}: {out[name]}")
    finally:
        torch.set_num_threads(old)
    out["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    out["cpus"] = os.cpu_count()
    return out


_scene_index: dict[str, Path] = {}  # product id -> scene JPEG, filled by main


def evaluate_model(name: str, model, sets: dict, groups: dict[str, list[str]] | None = None) -> dict:
    res = {}
    for set_name, (texts, variants, ps) in sets.items():
        res[set_name] = {}
        for variant, images in variants.items():
            t0 = time.perf_counter()
            res[set_name][variant] = t2i(model, texts, images, ps, (groups or {}).get(set_name))
            log(f"{name} {set_name} {variant}: {res[set_name][variant]} ({time.perf_counter() - t0:.0f}s)")
    return res


def _delta(a: dict, b: dict) -> dict:
    return {k: round(b[k] - a[k], 4) for k in ("hits@5", "hits@10", "mrr")}


def summarise(results: dict) -> dict:
    """Differences read off ``results`` (derived, nothing measured here).

    Per model: crops minus full photos embedded by that same model. ``vl_clip_pipeline``
    compares whole pipelines, as VL-CLIP's table does: train on crops and embed crops, minus
    train on full photos and embed full photos.
    """
    summary: dict = {}
    for mname, r in results.items():
        summary[mname] = {
            "test_split_crops_minus_full": _delta(r["test_split"]["full"], r["test_split"]["crops"]),
            "scenes_crops_minus_full": _delta(r["scenes"]["full"], r["scenes"]["crops"]),
            "scenes_oracle_minus_full": _delta(r["scenes"]["full"], r["scenes"]["oracle_crops"]),
        }
    if "trained_on_full" in results and "trained_on_crops" in results:
        full, crops = results["trained_on_full"], results["trained_on_crops"]
        summary["vl_clip_pipeline"] = {
            "what": "trained on crops + crops embedded, minus trained on full photos + full photos embedded",
            "test_split": _delta(full["test_split"]["full"], crops["test_split"]["crops"]),
            "scenes": _delta(full["scenes"]["full"], crops["scenes"]["crops"]),
        }
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "grounding-ablation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scene-limit", type=int, default=None, help="at most this many scenes (default: all eligible)")
    ap.add_argument("--no-train", action="store_true", help="skip the trained-on-full vs trained-on-crops models")
    ap.add_argument("--epochs", type=int, default=None, help="head epochs (default: the trainer's default recipe)")
    ap.add_argument("--no-augment", action="store_true",
                    help="train without the cached augmented views (faster; the shipped recipe uses them)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--throughput-images", type=int, default=100)
    ap.add_argument("--throughput-threads", type=int, default=2)
    ap.add_argument("--only-throughput", action="store_true",
                    help="measure only the default localiser's throughput, into a file of its own (--out)")
    ap.add_argument("--test-limit", type=int, default=None, help="only the first N test products (a quick look)")
    ap.add_argument("--quick", action="store_true", help="12 test products, 6 scenes, no training, in a temporary "
                    "work folder: the code path in seconds (test suite)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grounding_ablation.json")
    args = ap.parse_args()
    tmp = None
    if args.quick:
        import tempfile

        tmp = tempfile.TemporaryDirectory(prefix="grounding-ablation-quick-")
        args.work, args.no_train, args.scene_limit, args.test_limit = Path(tmp.name), True, 6, 12
        args.throughput_images = 3
    if args.only_throughput and args.out == ROOT / "bench" / "results" / "grounding_ablation.json":
        ap.error("--only-throughput writes a file of its own: give --out (it never merges into the ablation's)")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    prov = Provenance.start()

    from dataclasses import replace

    from shopclip.catalog import Catalog
    from shopclip.eval.data import ProductSet
    from shopclip.grounding import DEFAULT_METHOD, crop_overrides, ground_catalog
    from shopclip.models import load_model
    from shopclip.models.factory import pretrained_dir

    catalog = Catalog.load(SAMPLE)
    if args.only_throughput:
        log("building scenes (cached in --work)")
        ids, scene_paths, _ = build_scenes(catalog, args.work, args.seed, args.scene_limit)
        _scene_index.update({i: scene_paths[i] for i in ids})
        tput = throughput(catalog, [scene_paths[i] for i in ids], args.throughput_images, args.throughput_threads)
        write_result(args.out, {"what": "throughput of the default localiser only (bench/grounding_ablation.py "
                                        "--only-throughput)", "throughput": tput}, prov)
        log(json.dumps(tput, indent=2))
        return
    test = [p for p in catalog if p.split == "test"][: args.test_limit]
    ps = ProductSet.from_products("test", catalog, test)
    texts = ps.texts

    # 1. crops with the default localiser: the test split, and train/val too when training on crops
    to_ground = catalog.subset([p.id for p in test]) if args.no_train else catalog
    log(f"grounding {len(to_ground)} catalog photos with {DEFAULT_METHOD} (cached in {args.work})")
    g = ground_catalog(to_ground, args.work / "ground-catalog", method=DEFAULT_METHOD, sheet=48, progress=False)
    log(g.summary())
    crops = crop_overrides(args.work / "ground-catalog")
    test_full = [catalog.image_path(p) for p in test]
    test_crop = [crops.get(p.id, catalog.image_path(p)) for p in test]

    # 2. scenes: one per eligible test product
    log("building scenes")
    ids, scene_paths, boxes = build_scenes(catalog, args.work, args.seed, args.scene_limit,
                                           per_type=3 if args.quick else 40)
    _scene_index.update({i: scene_paths[i] for i in ids})
    sc_cat = scene_catalog(catalog, ids, scene_paths)
    gs = ground_catalog(sc_cat, args.work / "ground-scenes", method=DEFAULT_METHOD, sheet=24, progress=False)
    log(gs.summary())
    scene_crops = crop_overrides(args.work / "ground-scenes")
    oracle = oracle_crops(scene_paths, boxes, args.work / "scenes-oracle")
    sc_products = [catalog[i] for i in ids]
    sc_ps = ProductSet.from_products("scenes", catalog, sc_products)
    from shopclip.grounding import Box
    from shopclip.grounding.runner import read_boxes

    rows = {r["id"]: r for r in read_boxes(args.work / "ground-scenes")}
    scene_ious = [Box(*rows[i]["box"]).iou(Box(*boxes[i])) if rows[i].get("box") else 0.0 for i in ids]

    sets = {
        "test_split": (texts, {"full": test_full, "crops": test_crop}, ps),
        "scenes": (sc_ps.texts, {"full": [scene_paths[i] for i in ids],
                                 "crops": [scene_crops.get(i, scene_paths[i]) for i in ids],
                                 "oracle_crops": [oracle[i] for i in ids],
                                 "original_photo": [catalog.image_path(catalog[i]) for i in ids]}, sc_ps),
    }

    # Which kind of box each test photo got (pose region, single studio object, verified pick, …):
    # the per-group MRR shows where crops help or hurt.
    test_rows = {r["id"]: r for r in read_boxes(args.work / "ground-catalog")}
    groups = {"test_split": [(test_rows[p.id].get("label") or "error") if not test_rows[p.id].get("fallback")
                             else "fallback" for p in test]}

    # 3. the shipped default model
    had_pretrained = pretrained_dir("default") is not None
    model = load_model("default")
    results = {"default_model": {"trained_heads": bool(model.config.trained),
                                 **evaluate_model("default", model, sets, groups)}}

    # 4. trained on full photos vs trained on crops (same config), if the trainer is here
    training = {"done": False}
    try:
        from shopclip.train.config import TrainConfig
        from shopclip.train.trainer import Trainer
    except Exception as e:  # the trainer is another issue's work
        training["reason"] = f"trainer not importable: {type(e).__name__}: {e}"
        TrainConfig = Trainer = None  # noqa: N806
    if args.no_train:
        training["reason"] = "skipped (--no-train)"
    elif Trainer is not None:
        crop_catalog = Catalog([replace(p, image=str(crops[p.id].resolve())) if p.id in crops else p
                                for p in catalog], root=catalog.root)
        for name, cat in (("trained_on_full", catalog), ("trained_on_crops", crop_catalog)):
            recipe = {} if args.epochs is None else {"epochs": args.epochs}
            if args.no_augment:
                recipe.update(augment=False, image_views=0)
            cfg = TrainConfig(out=str(args.work / "runs" / name), batch_size=512, lock="both", progress=False,
                              num_workers=1, device="cpu", cache_dir=str(args.work / "features"), val_every=0,
                              seed=args.seed, **recipe)
            model_dir = Path(cfg.out) / "model"
            timing_file = Path(cfg.out) / "train_seconds.json"
            if not (model_dir / "config.json").exists():
                log(f"training {name}")
                t0 = time.perf_counter()
                Trainer(cfg, catalog=cat).fit()  # featurising (tower features, cached) + the head epochs
                timing_file.write_text(json.dumps({"train_seconds": round(time.perf_counter() - t0, 1),
                                                   "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}))
                trained_here = True
            else:
                trained_here = False
            timing = json.loads(timing_file.read_text()) if timing_file.exists() else {"train_seconds": None}
            trained = load_model(model_dir)
            results[name] = {"train_seconds": timing["train_seconds"], "trained_in_this_run": trained_here,
                             **({} if trained_here else {"trained_on": timing.get("date")}),
                             **evaluate_model(name, trained, sets, groups)}
        training.update(done=True, config={"model": cfg.model, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                                           "lock": "both (heads only, LiT)", "augment": cfg.augment,
                                           "image_views": cfg.image_views, "train_split": "train", "val_split": "val",
                                           "crops": f"{DEFAULT_METHOD} localiser, prompt = product type; "
                                                    "fallback rows keep the full photo",
                                           "train_seconds": "Trainer.fit wall time only (featurising the photos "
                                                            "not yet in the shared feature cache + the head "
                                                            "epochs); evaluation and model loading excluded"})

    tput = throughput(catalog, [scene_paths[i] for i in ids], args.throughput_images, args.throughput_threads)

    summary = summarise(results)
    out = {
        "task": "text→image retrieval, exact relevance (same product or re-listing group); query = title + description",
        "localiser": DEFAULT_METHOD,
        "pretrained_default_dir_existed": had_pretrained,
        "default_model_note": (
            "load_model('default') had trained heads" if results["default_model"]["trained_heads"] else
            "load_model('default') had UNTRAINED projection heads (no src/shopclip/models/pretrained/default/ yet): "
            "its text→image numbers are near chance and say nothing about grounding; read the trained rows"),
        "training": training,
        "results": results,
        "summary": summary,
        "grounding": {
            "catalog": {"products": g.total, "localised": g.localised, "fallback": g.fallback, "errors": g.errors},
            "scenes": {"n": len(ids), "localised": gs.localised, "fallback": gs.fallback,
                       "hit_rate_iou50": round(float(np.mean(np.asarray(scene_ious) >= 0.5)), 4),
                       "mean_iou": round(float(np.mean(scene_ious)), 4),
                       "distractors": "train split cut-outs", "seed": args.seed},
        },
        "throughput": tput,
        "environment": {"torch": torch.__version__, "threads": args.threads,
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "quick": args.quick,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    write_result(args.out, out, prov)
    if tmp is not None:
        tmp.cleanup()
    log(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
