"""The full evaluation of the default model on the sample catalog, timed.

Writes the report folder (report.json, report.md, plots) and copies report.json, plus how
long the run took and whether the embedding cache was cold, to
bench/results/eval_sample.json. The numbers do not depend on the cache; the time does.

    .venv/bin/python bench/eval_sample.py                 # cold run: cache emptied first
    .venv/bin/python bench/eval_sample.py --keep-cache    # warm rerun (seconds for embeddings)

Same as: shopclip eval default ../shared/data/products/catalog.jsonl --out reports/eval_sample
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see shopclip/eval/cli.py

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "products" / "catalog.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--catalog", type=Path, default=SAMPLE)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "eval_sample")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "eval_sample.json")
    ap.add_argument("--keep-cache", action="store_true", help="reuse embeddings from an earlier run")
    args = ap.parse_args()

    from shopclip.core.io import atomic_write_json
    from shopclip.eval import run_eval

    cache = args.out / "cache"
    if cache.exists() and not args.keep_cache:
        shutil.rmtree(cache)
    load_start = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    report = run_eval(args.model, args.catalog, args.out, cache_dir=cache)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    report["bench"] = {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "cache": "warm" if args.keep_cache else "cold (emptied before the run)",
        "command": f"python bench/eval_sample.py{' --keep-cache' if args.keep_cache else ''}",
        "load_average_1m_at_start": load_start,
        "load_average_1m_at_end": os.getloadavg()[0],
        "note": "wall time on this machine, slowed by other jobs sharing its 2 cores (see the load average); "
                "cpu_s is the work done: an otherwise idle 2-core machine needs between cpu_s / 2 and cpu_s",
    }
    atomic_write_json(args.results, report)
    head = report["headline"]
    for k, v in head.items():
        if v is not None:
            print(f"{k:55s} {v:.3f}")
    print(json.dumps(report["timing"], indent=1, default=str))
    print(f"wall {wall:.0f} s → {args.results}")


if __name__ == "__main__":
    main()
