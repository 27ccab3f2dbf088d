"""The full evaluation of the default model on the sample catalog, timed.

Writes the report folder (report.json, report.md, plots; ``--report-dir``) and copies report.json, plus
how long the run took and whether the embedding cache was cold, to ``--out``
(bench/results/eval_sample.json) with the run's provenance (``run``: command, commit, machine, load).
The numbers do not depend on the cache; the time does.

    .venv/bin/python bench/eval_sample.py                 # cold run: cache emptied first
    .venv/bin/python bench/eval_sample.py --keep-cache    # warm rerun (seconds for embeddings)
    .venv/bin/python bench/eval_sample.py --quick --out /tmp/eval_quick.json   # 40 test products, no baselines

Same as: shopclip eval default ../shared/data/products/catalog.jsonl --out reports/eval_sample
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see shopclip/eval/cli.py

from _common import Provenance, write_result  # noqa: E402 (bench/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "products" / "catalog.jsonl"
#: The quick run: a group-aware sample of 40 test products, small probe/tune/synthetic sets, no baselines,
#: no plots, and no whole-catalog block (it embeds all 8,225 products: ~4 min on 2 cores; its own tests are
#: tests/test_eval_whole_catalog.py). It exercises the rest of the report; its numbers are not the sample's.
QUICK = dict(eval_max=40, probe_train_max=120, tune_max=40, synthetic_max=12, synthetic_tune_max=8,
             min_attribute_products=20, clustering=("kmeans",), plots=False, num_workers=0, whole_catalog=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--catalog", type=Path, default=SAMPLE)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eval_sample.json",
                    help="the results JSON (report.json + timing + provenance)")
    ap.add_argument("--report-dir", type=Path, default=None,
                    help="the report folder (default reports/eval_sample; a temporary folder with --quick)")
    ap.add_argument("--keep-cache", action="store_true", help="reuse embeddings from an earlier run")
    ap.add_argument("--quick", action="store_true", help="40 test products, no baselines, no plots (test suite)")
    args = ap.parse_args()

    from shopclip.eval import run_eval

    prov = Provenance.start()
    tmp = tempfile.TemporaryDirectory(prefix="eval-quick-") if args.quick and args.report_dir is None else None
    report_dir = Path(tmp.name) if tmp else (args.report_dir or ROOT / "reports" / "eval_sample")
    cache = report_dir / "cache"
    if cache.exists() and not args.keep_cache:
        shutil.rmtree(cache)
    t0, c0 = time.perf_counter(), time.process_time()
    kwargs = {"baselines": (), **QUICK} if args.quick else {}
    report = run_eval(args.model, args.catalog, report_dir, cache_dir=cache, progress=not args.quick, **kwargs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    report["bench"] = {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "cache": "warm" if args.keep_cache else "cold (emptied before the run)",
        "quick": args.quick,
        "report_dir": str(report_dir) if tmp is None else "(temporary)",
        "note": "wall time on this machine, slowed by other jobs sharing its 2 cores (see the load under 'run'); "
                "cpu_s is the work done: an otherwise idle 2-core machine needs between cpu_s / 2 and cpu_s",
    }
    write_result(args.out, report, prov)
    if tmp is not None:
        tmp.cleanup()
    head = report["headline"]
    for k, v in head.items():
        if v is not None:
            print(f"{k:55s} {v:.3f}")
    print(f"wall {wall:.0f} s → {args.out}")


if __name__ == "__main__":
    main()
