"""The trainer end to end on the 40-product mini catalog: tiny towers in-process, a real kill -9, real towers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from shopclip.catalog import Catalog
from shopclip.models import load_model
from shopclip.train.config import TrainConfig
from shopclip.train.data import split_catalog, text_variants
from shopclip.train.evaluate import retrieval_report
from shopclip.train.schedule import steps_per_epoch, warmup_cosine
from shopclip.train.testing import register_tiny, tiny_model
from shopclip.train.trainer import Trainer, apply_locking, fold_standardization, train


def _cfg(mini_catalog: Path, out: Path, cache: Path, **kw) -> TrainConfig:
    base = dict(catalog=str(mini_catalog), out=str(out), cache_dir=str(cache), epochs=4, batch_size=8,
                progress=False, num_workers=1, image_views=1, warmup_steps=2, checkpoint_every=3)
    base.update(kw)
    return TrainConfig(**base)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_heads_only_run_writes_a_complete_run_folder(tmp_path, mini_catalog):
    torch.manual_seed(0)
    cfg = _cfg(mini_catalog, tmp_path / "run", tmp_path / "cache", head="mlp", epochs=6, lr=3e-3)
    result = train(cfg, model=tiny_model(head="mlp"))
    run = tmp_path / "run"
    assert TrainConfig.load(run / "config.yaml") == cfg
    rows = _rows(run / "metrics.jsonl")
    vals = [r for r in rows if r["type"] == "val"]
    steps = [r for r in rows if r["type"] == "step"]
    assert [v["epoch"] for v in vals] == list(range(6))
    assert {"t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10"} <= set(vals[-1])
    assert steps and {"loss", "lr", "pairs_per_s"} <= set(steps[-1])
    assert result.steps == sum(steps_per_epoch(cfg, 32, 1)) == 24  # 32 train products (4 val, 4 test)
    assert steps[-1]["loss"] < steps[0]["loss"]  # it learns (heads only, tiny towers)
    cfg_json = json.loads((run / "model" / "config.json").read_text())
    assert cfg_json["trained"] is True and cfg_json["head"] == "mlp"
    assert cfg_json["info"]["training"]["steps"] == 24
    assert (run / "model" / "heads.safetensors").exists() and not (run / "model" / "towers.safetensors").exists()
    # a second run finds every tower output in the cache: no new shard is written
    shards = sorted((tmp_path / "cache").rglob("shard-*.npz"))
    assert len({p.parent.name.split("-")[0] for p in shards}) == 3  # image, text, signature
    Trainer(_cfg(mini_catalog, tmp_path / "run2", tmp_path / "cache", epochs=1), model=tiny_model()).setup()
    assert sorted((tmp_path / "cache").rglob("shard-*.npz")) == shards


def test_refuses_to_overwrite_a_run_and_to_resume_with_another_config(tmp_path, mini_catalog):
    cfg = _cfg(mini_catalog, tmp_path / "run", tmp_path / "cache", epochs=1)
    train(cfg, model=tiny_model())
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg, model=tiny_model()).setup()
    changed = _cfg(mini_catalog, tmp_path / "run", tmp_path / "cache", epochs=1, lr=0.5, resume=True)
    with pytest.raises(ValueError, match="lr"):
        Trainer(changed, model=tiny_model()).setup()


def _cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    code = ("import sys; from shopclip.train.testing import register_tiny; register_tiny(); "
            "from shopclip.train.cli import main; main(sys.argv[1:])")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_kill_9_then_resume_ends_at_the_same_weights(tmp_path, mini_catalog):
    """Towers unlocked (dropout, augmentation, BN) so every piece of state has to come back."""
    common = [str(mini_catalog), "--model", "tiny", "--lock", "none", "--epochs", "3", "--batch-size", "8",
              "--checkpoint-every", "4", "--no-progress", "--num-workers", "1", "--cache-dir", str(tmp_path / "c"),
              "--warmup-steps", "3", "--tower-lr", "1e-3"]
    full = _cli([*common, "--out", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr[-2000:]
    killed = _cli([*common, "--out", str(tmp_path / "cut")], env={"SHOPCLIP_TRAIN_KILL_AT_STEP": "7"})
    assert killed.returncode == -9, killed.stderr[-2000:]  # really SIGKILLed, after step 7 (checkpoint at 4)
    assert not (tmp_path / "cut" / "model").exists()
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["position"]["step"] == 4
    resumed = _cli([*common, "--out", str(tmp_path / "cut"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name in ("heads.safetensors", "towers.safetensors"):
        a = load_file(str(tmp_path / "full" / "model" / name))
        b = load_file(str(tmp_path / "cut" / "model" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    # the killed run's rows after step 4 were dropped and redone once: the log reads like one run
    steps = [r["step"] for r in _rows(tmp_path / "cut" / "metrics.jsonl") if r["type"] == "step"]
    full_steps = [r["step"] for r in _rows(tmp_path / "full" / "metrics.jsonl") if r["type"] == "step"]
    assert steps == full_steps


def test_locking_modes():
    model = tiny_model()

    def trainable(prefix: str) -> int:
        return sum(p.requires_grad for n, p in model.named_parameters() if n.startswith(prefix))

    apply_locking(model, 0, 0)  # LiT: heads only
    assert trainable("image_tower.") == trainable("text_tower.") == 0
    assert trainable("image_head.") > 0 and trainable("text_head.") > 0 and model.logit_scale.requires_grad
    apply_locking(model, 0, -1)  # image locked, text trained
    assert trainable("image_tower.") == 0
    assert trainable("text_tower.") == sum(1 for n, _ in model.named_parameters() if n.startswith("text_tower."))
    apply_locking(model, 1, 1)  # last block of each
    last_text = {id(p) for p in model.text_tower.blocks()[-1].parameters()}
    assert {id(p) for p in model.text_tower.parameters() if p.requires_grad} == last_text
    last_img = {id(p) for p in model.image_tower.blocks()[-1].parameters()}
    assert {id(p) for p in model.image_tower.parameters() if p.requires_grad} == last_img


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_standardisation_folds_into_the_saved_heads(head):
    torch.manual_seed(0)
    model = tiny_model(head=head)
    x = torch.randn(5, 24) * 3 + 1
    mean = torch.zeros(24) if head == "linear" else x.mean(0)
    std = x.std(0)
    before = model.project_image((x - mean) / std)
    fold_standardization(model.image_head, mean, std)
    torch.testing.assert_close(model.project_image(x), before, rtol=1e-5, atol=1e-6)
    if head == "linear":
        with pytest.raises(ValueError, match="bias"):
            fold_standardization(model.text_head, torch.ones(16), torch.ones(16))


def test_lr_schedule_and_batch_schedule():
    assert warmup_cosine(0, warmup=4, total=20) == pytest.approx(0.25)
    assert warmup_cosine(3, warmup=4, total=20) == pytest.approx(1.0)
    assert warmup_cosine(12, warmup=4, total=20) == pytest.approx(0.5)
    assert warmup_cosine(20, warmup=4, total=20, min_ratio=0.1) == pytest.approx(0.1)
    cfg = TrainConfig(epochs=4, batch_size=8, batch_schedule="0:4,2:16")
    assert [cfg.batch_size_at(e) for e in range(4)] == [4, 4, 16, 16]
    assert steps_per_epoch(cfg, 34, 2) == [8, 8, 2, 2]
    with pytest.raises(ValueError):
        TrainConfig(batch_schedule="3:8,1:16").validate()


def test_real_towers_heads_only(tmp_path, mini_catalog):
    """The shipped path: MiniLM + EfficientNet-Lite0 locked, features cached, model loadable by run folder."""
    cfg = _cfg(mini_catalog, tmp_path / "run", tmp_path / "cache", epochs=3, image_views=1, feature_batch_size=8)
    result = train(cfg)
    model = load_model(tmp_path / "run")
    assert model.config.trained and model.config.tower_weights == "pretrained"
    assert model.config.info["training"]["train_pairs"] == 32
    size = sum(f.stat().st_size for f in result.model_dir.iterdir())
    assert size < 10 * 2**20  # heads only: 768-d projections of the 2024-d + 768-d multi-level features
    # the saved (standardisation-folded) heads reproduce the trainer's own validation embeddings
    catalog = Catalog.load(mini_catalog)
    _, val = split_catalog(catalog)
    img = model.encode_image([catalog.image_path(p) for p in val])
    txt = model.encode_text([text_variants(p, cfg.text)[0] for p in val])
    rep = retrieval_report(img, txt)
    for k, v in result.val.items():
        assert rep[k] == pytest.approx(v, abs=1e-6), k
    vals = [r for r in _rows(tmp_path / "run" / "metrics.jsonl") if r["type"] == "val"]
    assert vals[-1]["t2i_mrr"] == result.val["t2i_mrr"]


register_tiny()  # `--model tiny` for the in-process runs above


def test_harder_batches_hard_negatives_and_image_image_term_train(tmp_path, mini_catalog):
    """Leaf batches + hard-negative weighting + the image–image term (two cached views) run end to end."""
    torch.manual_seed(0)
    cfg = _cfg(mini_catalog, tmp_path / "run", tmp_path / "cache", epochs=5, lr=3e-3, image_views=2,
               batch_sampler="leaf", leaf_chunk=4, hard_beta=2.0, i2i_weight=0.5, i2i_positives="leaf")
    trainer = Trainer(cfg, model=tiny_model())
    trainer.setup()
    idx = np.arange(8)
    images, texts = trainer._inputs(idx, 0)
    assert images.shape[0] == 2 * len(idx) and texts.shape[0] == len(idx)  # [view a; view b] per pair
    assert not torch.equal(images[:8], images[8:])

    def loss_on_fixed_batch() -> float:
        with torch.no_grad():
            fn = trainer.make_loss(torch.from_numpy(trainer.train.keys.keys[idx]), torch.from_numpy(trainer.train.leaves[idx]))
            return float(fn(trainer.encode_image(images), trainer.encode_text(texts)))

    before = loss_on_fixed_batch()
    result = trainer.fit()
    assert result.steps == 20 and loss_on_fixed_batch() < before


def test_similar_items_subspace_trains_by_the_image_image_term_only(tmp_path, mini_catalog):
    cfg = _cfg(mini_catalog, tmp_path / "run", tmp_path / "cache", epochs=3, lr=3e-3, image_views=2,
               i2i_weight=0.5, i2i_positives="leaf", sim_dim=3, sim_weight=0.5)
    model = tiny_model(embed_dim=8, sim_dim=3, sim_weight=0.5)
    before_sim = model.image_head.sim.weight.detach().clone()
    before_text = model.text_head.main.weight.detach().clone()
    trainer = Trainer(cfg, model=model)
    trainer.setup()
    idx = np.arange(8)
    images, texts = trainer._inputs(idx, 0)
    trainer.optimizer.zero_grad()
    loss = trainer.make_loss(torch.from_numpy(trainer.train.keys.keys[idx]), torch.from_numpy(trainer.train.leaves[idx]))
    # without the image-image term the subspace would get no gradient: the text side has zeros there
    cfg.i2i_weight = 0.0
    out = loss(trainer.encode_image(images[:8]), trainer.encode_text(texts))
    out.backward()
    assert model.image_head.sim.weight.grad is None or float(model.image_head.sim.weight.grad.abs().max()) < 1e-10
    cfg.i2i_weight = 0.5
    trainer.optimizer.zero_grad()
    trainer.fit()
    assert not torch.equal(model.image_head.sim.weight.detach(), before_sim)
    assert not torch.equal(model.text_head.main.weight.detach(), before_text)
