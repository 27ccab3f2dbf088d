"""Training throughput and memory → bench/results/train.json (produced whole by one run).

Every timing is the mean of several steps after one warm-up step (the first step pays
thread-pool start, oneDNN kernel selection and page faults), each measurement in its own
process with OMP_NUM_THREADS=2:

* pairs/s at batch 256: heads only on cached tower features (the default, LiT); heads + the
  last MBConv block and head conv of EfficientNet-Lite0 on cached lower-block outputs
  (partial fine-tuning, ``--lock text --unlock-blocks 2``); both towers unlocked
  (photos decoded + augmented, EfficientNet-Lite0 and MiniLM trained, GradCache chunks of 64);
* bf16 autocast vs fp32 for the unlocked step at batch 64 (why precision=auto picks bf16 on
  CPUs with native bf16 when a tower trains), same steps, same batches;
* memory, plain step vs GradCache (128-pair chunks) with the text tower unlocked and image
  features cached, both under the SAME address-space cap: at batch 256 both fit and their
  peak RSS (ru_maxrss of the process) is compared; at batch 1,024 the plain step does not
  fit under the cap while GradCache does (its peak RSS is reported, the plain arm says it
  failed under that cap: a pass/fail comparison, not a number against a number).

Usage: python bench/train.py [--catalog PATH] [--quick] [--out PATH]
  --quick  64 products, heads-only and partial arms only, 3 timed steps (the test suite's run)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SAMPLE, Provenance, write_result  # noqa: E402

CAP_GIB = 14  # address-space cap per measurement process (the same for both arms of a comparison)


def _rss_mib() -> float:
    with open("/proc/self/status") as fp:
        for line in fp:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(catalog: str, lock: str, batch: int, chunk: int, steps: int, precision: str, unlock: int,
            quick: bool) -> dict:
    """Set up a Trainer, run one warm-up step, then time `steps` more (mean and spread reported)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np

    from shopclip.catalog import Catalog
    from shopclip.train.config import TrainConfig
    from shopclip.train.data import effective_batch_size, epoch_batches
    from shopclip.train.trainer import Trainer

    cat = Catalog.load(catalog)
    if quick:
        from train_quality import quick_catalog

        cat = quick_catalog(cat, {"train": 48, "val": 8, "test": 8})
    out = tempfile.mkdtemp(prefix="shopclip-bench-train-")
    cfg = TrainConfig(catalog=catalog, out=out, lock=lock, unlock_blocks=unlock, batch_size=batch,
                      grad_cache_chunk=chunk, epochs=1, progress=False, image_views=0 if lock != "both" else 2,
                      precision=precision, val_max=2, num_workers=2,
                      cache_dir=os.path.join(out, "cache") if quick else None)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, catalog=cat)
    trainer.setup()
    setup_s = time.perf_counter() - t0
    rss_setup = _rss_mib()
    n = len(trainer.train)
    batches = epoch_batches(cfg.seed, 0, n, effective_batch_size(batch, n, 1))
    times = []
    for k in range(steps + 1):
        t = time.perf_counter()
        trainer.train_step(batches[k % len(batches)], 0)
        times.append(time.perf_counter() - t)
    timed = np.asarray(times[1:])
    return {"lock": lock, "unlock_blocks": unlock, "batch": int(min(batch, n)), "grad_cache_chunk": chunk,
            "precision": trainer.precision, "warmup_steps": 1, "steps_timed": len(timed),
            "seconds_per_step": float(timed.mean()), "seconds_per_step_min_max": [float(timed.min()), float(timed.max())],
            "warmup_step_seconds": times[0], "pairs_per_s": float(min(batch, n) / timed.mean()),
            "setup_s": round(setup_s, 1), "rss_after_setup_mib": round(rss_setup),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def run_child(catalog: str, args: list[str], quick: bool, timeout: int = 1800) -> dict:
    """One measurement in a fresh process under the address-space cap."""
    cap = CAP_GIB * 2**30

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    cmd = [sys.executable, __file__, "--catalog", catalog, "--child", *args] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=limit,
                          env={**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = proc.stderr.strip().splitlines()
    reason = next((e for e in reversed(err) if "memory" in e.lower() or "Error" in e), err[-1] if err else "")
    oom = "memory" in reason.lower()
    return {"failed": True, "returncode": proc.returncode, "reason": reason[-300:], "cap_gib": CAP_GIB,
            "note": f"did not fit under the {CAP_GIB} GiB address-space cap" if oom else "failed (see reason)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default=str(SAMPLE / "catalog.jsonl"))
    ap.add_argument("--quick", action="store_true", help="64 products, heads-only and partial arms, 3 timed steps")
    ap.add_argument("--out", default=None, help=f"result file [default: {RESULTS / 'train.json'}; none with --quick]")
    ap.add_argument("--child", nargs=6, metavar=("LOCK", "BATCH", "CHUNK", "STEPS", "PRECISION", "UNLOCK"))
    a = ap.parse_args()
    if a.child:
        lock, batch, chunk, steps, precision, unlock = a.child
        print(json.dumps(measure(a.catalog, lock, int(batch), int(chunk), int(steps), precision, int(unlock),
                                 a.quick)), flush=True)
        return
    out_path = Path(a.out) if a.out else (None if a.quick else RESULTS / "train.json")
    prov = Provenance.start()

    def child(*args: object) -> dict:
        return run_child(a.catalog, [str(x) for x in args], a.quick)

    steps = 3
    res: dict = {"config": {"catalog": a.catalog, "quick": a.quick, "cap_gib": CAP_GIB, "omp_num_threads": 2,
                            "warmup_steps": 1}}
    heads = child("both", 256, 0, 30, "fp32", -1)
    partial = child("text", 256, 0, steps, "fp32", 2)
    res["throughput_runs"] = {"heads_cached": heads, "partial_image_top2_cached": partial}
    if not a.quick:
        res["throughput_runs"]["unlocked"] = child("none", 256, 64, steps, "auto", -1)
    res["pairs_per_s"] = {k: v.get("pairs_per_s") for k, v in res["throughput_runs"].items()}
    if not a.quick:
        res["bf16_vs_fp32_unlocked_batch_64"] = {p: child("none", 64, 0, steps, p, -1) for p in ("fp32", "bf16")}
        r = res["bf16_vs_fp32_unlocked_batch_64"]
        if not r["fp32"].get("failed") and not r["bf16"].get("failed"):
            r["bf16_speedup"] = r["fp32"]["seconds_per_step"] / r["bf16"]["seconds_per_step"]
        mem: dict = {"setup": "text tower unlocked (MiniLM, trained), image features cached; 1 warm-up + 2 timed "
                              f"steps; peak RSS of the process; both arms under the same {CAP_GIB} GiB cap"}
        for batch in (256, 1024):
            for chunk in (0, 128):
                key = f"batch_{batch}_{'grad_cache_128' if chunk else 'plain'}"
                mem[key] = child("image", batch, chunk, 2, "fp32", -1)
                print(key, mem[key], flush=True)
        p, g = mem["batch_256_plain"], mem["batch_256_grad_cache_128"]
        if not p.get("failed") and not g.get("failed"):
            mem["batch_256_peak_rss_ratio_plain_over_grad_cache"] = p["peak_rss_mib"] / g["peak_rss_mib"]
        mem["batch_1024"] = ("plain " + ("fits" if not mem["batch_1024_plain"].get("failed") else "fails") +
                             f", GradCache {'fits' if not mem['batch_1024_grad_cache_128'].get('failed') else 'fails'}"
                             f" under the same {CAP_GIB} GiB cap")
        res["peak_memory"] = mem
    if out_path is not None:
        write_result(out_path, res, prov)
        print("→", out_path)
    print(json.dumps(res["pairs_per_s"]))


if __name__ == "__main__":
    main()
