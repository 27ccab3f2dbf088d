"""Training throughput and memory → bench/results/train.json (rerunnable; each run is short).

* pairs/s at batch 256: heads only on cached tower features (the default, LiT) vs both
  towers unlocked (photos decoded + augmented, EfficientNet-Lite0 and MiniLM trained);
* peak memory of one training step at batch 1,024 and 4,096, plain vs GradCache, with the
  text tower unlocked and image features cached (the image tower unlocked at those batch
  sizes takes tens of minutes per step on 2 CPU cores). Each measurement runs in its own
  process (peak RSS = ru_maxrss of that process; its RSS after setup is reported too),
  under an address-space cap so an oversized plain step fails cleanly instead of
  swapping the machine;
* bf16 autocast vs fp32 for the unlocked step on this CPU (why precision=auto picks bf16 on
  CPUs with native bf16 when a tower trains).

Usage: python bench/train.py [--catalog ../shared/data/products/catalog.jsonl] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CATALOG = ROOT.parent / "shared" / "data" / "products" / "catalog.jsonl"
RESULTS = ROOT / "bench" / "results" / "train.json"
CAP_GIB = 14  # address-space cap per measurement process


def _rss_mib() -> float:
    with open("/proc/self/status") as fp:
        for line in fp:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(catalog: str, lock: str, batch: int, chunk: int, steps: int, precision: str) -> dict:
    """Set up a Trainer and time `steps` training steps (the first one is a warm-up when steps > 1)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np

    from shopclip.train.config import TrainConfig
    from shopclip.train.data import effective_batch_size, epoch_batches
    from shopclip.train.trainer import Trainer

    out = tempfile.mkdtemp(prefix="shopclip-bench-train-")
    cfg = TrainConfig(catalog=catalog, out=out, lock=lock, batch_size=batch, grad_cache_chunk=chunk, epochs=1,
                      progress=False, image_views=0 if lock != "both" else 2, precision=precision,
                      val_max=2, num_workers=2)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.setup()
    setup_s = time.perf_counter() - t0
    rss_setup = _rss_mib()
    n = len(trainer.train)
    batches = epoch_batches(cfg.seed, 0, n, effective_batch_size(batch, n, 1))
    times = []
    for k in range(steps):
        t = time.perf_counter()
        trainer.train_step(batches[k % len(batches)], 0)
        times.append(time.perf_counter() - t)
    timed = times[1:] if len(times) > 1 else times
    return {"lock": lock, "batch": batch, "grad_cache_chunk": chunk, "precision": trainer.precision,
            "steps_timed": len(timed), "seconds_per_step": float(np.mean(timed)),
            "pairs_per_s": batch / float(np.mean(timed)), "setup_s": round(setup_s, 1),
            "rss_after_setup_mib": round(rss_setup),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def run_child(args: list[str], timeout: int = 1800) -> dict:
    """One measurement in a fresh process under the address-space cap."""
    cap = CAP_GIB * 2**30

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, env={**os.environ, "OMP_NUM_THREADS": "2"})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = proc.stderr.strip().splitlines()
    reason = next((e for e in reversed(err) if "memory" in e.lower() or "Error" in e), err[-1] if err else "")
    return {"failed": True, "returncode": proc.returncode, "reason": reason[-300:],
            "note": f"did not fit under the {CAP_GIB} GiB address-space cap" if "memory" in reason.lower() else ""}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalog", default=str(DEFAULT_CATALOG))
    ap.add_argument("--quick", action="store_true", help="skip the batch-4096 and bf16 measurements")
    ap.add_argument("--child", nargs=5, metavar=("LOCK", "BATCH", "CHUNK", "STEPS", "PRECISION"))
    a = ap.parse_args()
    if a.child:
        lock, batch, chunk, steps, precision = a.child
        print(json.dumps(measure(a.catalog, lock, int(batch), int(chunk), int(steps), precision)), flush=True)
        return
    import torch

    res: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "platform": platform.platform(), "torch": torch.__version__,
                             "load_avg_at_start": os.getloadavg()}}
    heads = run_child(["both", "256", "0", "30", "fp32"])
    # Both towers trained at batch 256 need > 14 GiB in one step; GradCache (64-pair chunks) fits.
    unlocked = run_child(["none", "256", "64", "2", "auto"])
    res["pairs_per_s"] = {"heads_cached": heads.get("pairs_per_s"), "unlocked": unlocked.get("pairs_per_s")}
    res["throughput_runs"] = {"heads_cached": heads, "unlocked": unlocked}
    mem: dict = {}
    for batch in (1024, 4096) if not a.quick else (1024,):
        for chunk in (0, 128):
            key = f"batch_{batch}_{'grad_cache_128' if chunk else 'plain'}"
            mem[key] = run_child(["image", str(batch), str(chunk), "1", "fp32"])
            print(key, mem[key], flush=True)
    res["peak_memory"] = {"setup": "text tower unlocked (MiniLM, trained), image features cached; one step; "
                                   f"peak RSS of the process, {CAP_GIB} GiB address-space cap", **mem}
    if not a.quick:
        res["bf16_vs_fp32_unlocked_batch_64"] = {p: run_child(["none", "64", "0", "2", p]) for p in ("fp32", "bf16")}
    res["load_avg_at_end"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["pairs_per_s"]), "→", RESULTS)


if __name__ == "__main__":
    main()
