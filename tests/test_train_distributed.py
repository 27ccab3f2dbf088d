"""Two CPU processes (gloo) compute the same loss and gradients as one process on the whole batch,
with the trained weights replicated (DDP-style) or sharded (FSDP2)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from shopclip.train.config import TrainConfig
from shopclip.train.data import effective_batch_size, epoch_batches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step(catalog: str, cache: str, out: str, chunk: int, fn_mode: str, parallel: str = "ddp") -> dict:
    """Set up the real Trainer on the tiny model and run one step on the first global batch."""
    from shopclip.train.parallel import full, is_sharded
    from shopclip.train.testing import tiny_model
    from shopclip.train.trainer import Trainer

    torch.set_num_threads(1)
    cfg = TrainConfig(catalog=catalog, out=out, cache_dir=cache, lock="none", batch_size=16, epochs=1, grad_clip=0.0,
                      grad_cache_chunk=chunk, fn_mode=fn_mode, progress=False, num_workers=1, val_max=4,
                      label_smoothing=0.1, precision="fp32", parallel=parallel)  # fp32: exact comparison
    torch.manual_seed(0)  # the mlp heads draw their init from the global RNG
    trainer = Trainer(cfg, model=tiny_model(head="mlp"))
    trainer.setup()
    n = len(trainer.train)
    batch = epoch_batches(cfg.seed, 0, n, effective_batch_size(cfg.batch_size, n, 2))[0]
    loss = trainer.train_step(batch, 0)
    # Under FSDP a gradient is this rank's shard: gather it whole (a collective, same order on every rank).
    grads = {k: full(p.grad).detach().clone() for k, p in trainer.model.named_parameters() if p.grad is not None}
    sharded = sum(is_sharded(p) for p in trainer.model.parameters())
    return {"loss": loss, "grads": grads, "mask_pairs": int(trainer.train.keys.pairs()), "parallel": trainer.parallel,
            "sharded": sharded}


# (GradCache chunk per rank, false-negative mode, strategy): the plain path, and GradCache + extra positives,
# each with replicated and with sharded weights
CASES = [(0, "mask", "ddp"), (3, "positive", "ddp"), (0, "mask", "fsdp"), (3, "positive", "fsdp")]


def _worker(rank: int, world: int, port: int, catalog: str, cache: str, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from shopclip.train import distributed as D

    try:
        for k, (chunk, fn_mode, parallel) in enumerate(CASES):
            res = _step(catalog, cache, str(Path(result_dir) / f"multi{k}"), chunk, fn_mode, parallel)
            torch.save(res, Path(result_dir) / f"case{k}-rank{rank}.pt")
    finally:
        D.cleanup()


def test_two_processes_match_one_process(tmp_path, mini_catalog):
    """Each rank holds half of the batch; all-gather with gradient makes the loss see all of it."""
    cache = str(tmp_path / "cache")
    singles = {fn_mode: _step(str(mini_catalog), cache, str(tmp_path / f"single-{fn_mode}"), 0, fn_mode)
               for fn_mode in dict.fromkeys(c[1] for c in CASES)}
    mp.spawn(_worker, args=(2, _free_port(), str(mini_catalog), cache, str(tmp_path)), nprocs=2, join=True)
    for k, (_, fn_mode, parallel) in enumerate(CASES):
        single = singles[fn_mode]
        assert any(k.startswith("image_tower.") for k in single["grads"])
        for rank in (0, 1):
            got = torch.load(tmp_path / f"case{k}-rank{rank}.pt")
            assert got["parallel"] == parallel and (got["sharded"] > 0) == (parallel == "fsdp")
            assert got["loss"] == pytest.approx(single["loss"], rel=1e-5), CASES[k]
            assert set(got["grads"]) == set(single["grads"])
            for name, g in single["grads"].items():
                torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=1e-6, msg=f"{CASES[k]} {name}")


def test_torchrun_two_processes_end_to_end(tmp_path, mini_catalog):
    """`torchrun --nproc_per_node=2 -m shopclip.train …` trains and writes a loadable run."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SHOPCLIP_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "-m", "shopclip.train", str(mini_catalog), "--out", str(out), "--model", "tiny",
           "--register", "shopclip.train.testing:register_tiny", "--epochs", "2", "--batch-size", "8",
           "--no-progress", "--image-views", "1", "--num-workers", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model" / "heads.safetensors").exists()
    summary = (out / "summary.json").read_text()
    assert '"world_size": 2' in summary


def _torchrun(tmp_path, catalog, out, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SHOPCLIP_CACHE_DIR": str(tmp_path / "cache"), **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "-m", "shopclip.train", str(catalog), "--out", str(out), "--model", "tiny",
           "--register", "shopclip.train.testing:register_tiny", "--epochs", "1", "--batch-size", "8",
           "--no-progress", "--image-views", "1", "--num-workers", "1", "--lock", "none", "--checkpoint-every", "1",
           "--precision", "fp32", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def test_torchrun_fsdp_killed_and_resumed_matches_ddp(tmp_path, mini_catalog):
    """Sharded training, kill -9 mid-run, `--resume`: the exported model equals the replicated run's."""
    from shopclip.models import create_model, load_model
    from shopclip.train.testing import register_tiny

    ddp = _torchrun(tmp_path, mini_catalog, tmp_path / "ddp", "--parallel", "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    killed = _torchrun(tmp_path, mini_catalog, tmp_path / "fsdp", "--parallel", "fsdp",
                       env={"SHOPCLIP_TRAIN_KILL_AT_STEP": "2"})
    assert killed.returncode != 0 and (tmp_path / "fsdp" / "checkpoints" / "last.pt").exists()
    resumed = _torchrun(tmp_path, mini_catalog, tmp_path / "fsdp", "--parallel", "fsdp", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((tmp_path / "fsdp" / "summary.json").read_text())
    assert summary["parallel"] == "fsdp" and summary["world_size"] == 2 and summary["steps"] >= 3
    register_tiny()
    want, got = load_model(tmp_path / "ddp"), load_model(tmp_path / "fsdp")
    start = create_model("tiny", head=TrainConfig.head, embed_dim=TrainConfig.embed_dim).state_dict()  # its init
    assert max(float((got.state_dict()[k] - v).abs().max()) for k, v in start.items() if "head" in k) > 1e-3
    assert any(k.startswith("image_tower.") for k in got.state_dict())
    for name, w in want.state_dict().items():
        torch.testing.assert_close(got.state_dict()[name], w, rtol=1e-4, atol=1e-5, msg=name)
