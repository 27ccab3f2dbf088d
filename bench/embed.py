"""Embedding throughput: shopclip's batched, threaded path vs. a plain reference loop.

The reference is what one writes first: one thread, PIL decode + transform, eager
PyTorch forward per batch. Both run in this process, side by side, on the same
real product images, so the ratio is meaningful on a noisy machine.

    .venv/bin/python bench/embed.py            # writes bench/results/embed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "products"


def reference_images(model, paths: list[Path], batch: int) -> float:
    from PIL import Image

    # The obvious way: NCHW, the whole batch in one forward (the tower's channels-last chunked path off).
    tower = model.image_tower
    plain = getattr(tower, "set_fast_path", None)
    if plain:
        plain(False)
    try:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(paths), batch):
                x = torch.stack([model.transform(Image.open(p).convert("RGB")) for p in paths[i : i + batch]])
                model.forward_image(x)
        return len(paths) / (time.perf_counter() - t0)
    finally:
        if plain:
            plain(True)


def reference_texts(model, texts: list[str], batch: int) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            model.forward_text(model.text_tower.tokenize(texts[i : i + batch]))
    return len(texts) / (time.perf_counter() - t0)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512, help="number of product images per measurement")
    ap.add_argument("--texts", type=int, default=2048, help="number of product texts per measurement")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embed.json")
    args = ap.parse_args()

    from shopclip.catalog import Catalog
    from shopclip.models import load_model

    cat = Catalog.load(SAMPLE / "catalog.jsonl")
    products = list(cat)
    paths = [cat.image_path(p) for p in products[: args.images]]
    texts = [p.text() for p in products[: args.texts]]
    model = load_model("default")
    model.encode_image(paths[:16])  # warm-up: first-call allocations
    model.encode_text(texts[:64])

    result: dict = {"images_per_s": {}, "texts_per_s": {}, "by_batch": {}}
    for batch in (32, 64):
        ref_i = reference_images(model, paths, batch)
        ours_i = len(paths) / timed(lambda b=batch: model.encode_image(paths, batch_size=b))
        ref_t = reference_texts(model, texts, batch)
        ours_t = len(texts) / timed(lambda b=batch: model.encode_text(texts, batch_size=b))
        result["by_batch"][str(batch)] = {
            "images_per_s": {"eager_reference": round(ref_i, 2), "shopclip": round(ours_i, 2), "ratio": round(ours_i / ref_i, 3)},
            "texts_per_s": {"eager_reference": round(ref_t, 2), "shopclip": round(ours_t, 2), "ratio": round(ours_t / ref_t, 3)},
        }
    # shopclip's default image batch (smaller batches run faster on this 2-core CPU: cache effects)
    default_i = len(paths) / timed(lambda: model.encode_image(paths))
    result["by_batch"]["default"] = {"images_per_s": {"shopclip": round(default_i, 2)}}
    best = max((32, 64), key=lambda b: result["by_batch"][str(b)]["images_per_s"]["eager_reference"])
    for kind in ("images_per_s", "texts_per_s"):
        row = result["by_batch"][str(best)][kind]
        result[kind] = {"eager_reference": row["eager_reference"], "shopclip": row["shopclip"], "ratio": row["ratio"], "batch": best}
    result["machine"] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                         "load_average_1m_at_end": round(os.getloadavg()[0], 2),
                         "python": platform.python_version(), "torch": torch.__version__}
    result["workload"] = {"images": len(paths), "texts": len(texts), "model": model.name,
                          "image_size": model.config.image_size}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
