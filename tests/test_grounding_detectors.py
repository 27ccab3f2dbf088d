"""Grounding DINO and OWLv2 adapters with tiny randomly initialised models (never a download).

Random weights say nothing about accuracy; these tests pin the plumbing: the prompt
reaches the model in the form each expects, boxes come back in the photo's pixel
coordinates (OWLv2 pads to a square), inside the photo, sorted, and thresholded; long
prompts are truncated to the text model's length; a model saved to a folder loads by name.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

from shopclip.grounding import Box, choose_box, create_localiser  # noqa: E402
from shopclip.grounding.detectors import HFDetectorLocaliser  # noqa: E402

CHARS = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def owlv2(tmp_path_factory) -> HFDetectorLocaliser:
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    d = tmp_path_factory.mktemp("owl")
    # OWL treats a query whose first token id is 0 as padding: keep id 0 for a filler token.
    vocab = {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    for c in CHARS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    torch.manual_seed(0)
    cfg = Owlv2Config(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=len(vocab), max_position_embeddings=24, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=64, patch_size=16),
        projection_dim=32,
    )
    proc = Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size={"height": 64, "width": 64}), tokenizer=tok)
    # No max_text_length: the adapter must read the limit (24 positions) from the model config.
    return HFDetectorLocaliser(Owlv2ForObjectDetection(cfg), proc, "owlv2", threshold=0.0)


@pytest.fixture(scope="module")
def grounding_dino(tmp_path_factory) -> HFDetectorLocaliser:
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    d = tmp_path_factory.mktemp("gdino")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "casual", "shoes", "watches", "a", *CHARS]
    (d / "vocab.txt").write_text("\n".join(words))
    tok = BertTokenizer(str(d / "vocab.txt"))
    torch.manual_seed(0)
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                      window_size=4, out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=64)
    cfg = GroundingDinoConfig(backbone_config=swin, use_timm_backbone=False, text_config=text, d_model=32,
                              encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                              encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=10, num_feature_levels=3,
                              encoder_n_points=2, decoder_n_points=2, max_text_len=32)
    proc = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(
        size={"shortest_edge": 64, "longest_edge": 96}), tokenizer=tok)
    return HFDetectorLocaliser(GroundingDinoForObjectDetection(cfg), proc, "grounding-dino", threshold=0.0,
                               text_threshold=0.0)


@pytest.mark.parametrize("which", ["owlv2", "grounding_dino"])
@pytest.mark.parametrize("size", [(120, 80), (70, 150)])
def test_detector_boxes_are_in_photo_pixels(request, which, size):
    loc = request.getfixturevalue(which)
    img = Image.new("RGB", size, (250, 250, 250))
    img.paste((200, 30, 30), (10, 10, 40, 40))
    boxes = loc.localise(img, "Casual Shoes")
    assert boxes, "threshold 0 keeps every query"
    assert all(isinstance(b, Box) and b.label == loc.kind for b in boxes)
    assert all(0 <= b.x0 <= b.x1 <= size[0] and 0 <= b.y0 <= b.y1 <= size[1] for b in boxes)
    assert [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)
    g = choose_box(boxes, img.size)
    assert g.box.x1 <= size[0] and g.box.y1 <= size[1]


def test_owlv2_scales_boxes_to_the_padded_square(owlv2, monkeypatch):
    """OWLv2 predicts relative to the photo padded to a square: a box at the square's
    lower half must land below a landscape photo's edge and be clipped, not squeezed."""
    img = Image.new("RGB", (100, 50))
    real = owlv2.processor.post_process_grounded_object_detection

    def spy(outputs, threshold, target_sizes):
        assert target_sizes == [(100, 100)]
        return real(outputs, threshold=threshold, target_sizes=target_sizes)

    monkeypatch.setattr(owlv2.processor, "post_process_grounded_object_detection", spy)
    assert all(b.y1 <= 50 for b in owlv2.localise(img, "watch"))


def test_detector_threshold_filters(grounding_dino):
    strict = HFDetectorLocaliser(grounding_dino.model, grounding_dino.processor, "grounding-dino", threshold=1.0)
    img = Image.new("RGB", (64, 64))
    assert strict.localise(img, "watches") == []
    assert choose_box(strict.localise(img, "watches"), img.size, min_score=strict.min_score).fallback


def test_prompt_forms():
    dino = HFDetectorLocaliser.__new__(HFDetectorLocaliser)
    dino.kind = "grounding-dino"
    assert dino._text("Casual  Shoes") == "casual shoes."
    owl = HFDetectorLocaliser.__new__(HFDetectorLocaliser)
    owl.kind = "owlv2"
    assert owl._text("Watches") == [["a photo of watches"]]


def test_hub_names_fail_clearly_offline(tmp_path):
    with pytest.raises((OSError, ValueError)):
        create_localiser(f"owlv2:{tmp_path / 'no-such-model'}", cached=False)
    with pytest.raises(ValueError, match="kind"):
        HFDetectorLocaliser.from_pretrained("yolo", "x")


LONG_PROMPT = "Puma Men White Running Shoes with extra cushioning and a breathable mesh upper " * 4


def light_photo(size: tuple[int, int] = (120, 80)) -> Image.Image:
    img = Image.new("RGB", size, (250, 250, 250))
    img.paste((200, 30, 30), (10, 10, 40, 40))
    return img


@pytest.mark.parametrize(("which", "limit"), [("owlv2", 24), ("grounding_dino", 32)])
def test_prompts_longer_than_the_text_model_are_truncated(request, which, limit):
    loc = request.getfixturevalue(which)
    assert loc.max_text_length == limit  # OWL: text max_position_embeddings; DINO: max_text_len (< positions)
    assert len(loc.processor.tokenizer(LONG_PROMPT)["input_ids"]) > limit + 20
    boxes = loc.localise(light_photo(), LONG_PROMPT)
    assert boxes and all(0 <= b.x0 <= b.x1 <= 120 and 0 <= b.y0 <= b.y1 <= 80 for b in boxes)


def test_max_text_length_is_capped_by_the_model(owlv2):
    big = HFDetectorLocaliser(owlv2.model, owlv2.processor, "owlv2", threshold=0.0, max_text_length=500)
    small = HFDetectorLocaliser(owlv2.model, owlv2.processor, "owlv2", threshold=0.0, max_text_length=8)
    assert (big.max_text_length, small.max_text_length) == (24, 8)
    assert big.localise(light_photo(), LONG_PROMPT)


@pytest.mark.parametrize(("which", "kind"), [("owlv2", "owlv2"), ("grounding_dino", "grounding-dino")])
def test_detector_saved_with_save_pretrained_loads_by_name(request, tmp_path, which, kind):
    """The path users take with a local copy: `create_localiser("owlv2:<folder>")`, then localise."""
    fixture = request.getfixturevalue(which)
    folder = tmp_path / kind
    fixture.model.save_pretrained(folder)
    fixture.processor.save_pretrained(folder)
    loc = create_localiser(f"{kind}:{folder}", cached=False, threshold=0.0, text_threshold=0.0)
    assert isinstance(loc, HFDetectorLocaliser) and loc.kind == kind and loc.name == f"{kind}:{folder}"
    assert loc.max_text_length == fixture.max_text_length
    img = light_photo((90, 130))
    boxes = loc.localise(img, "Casual Shoes")
    assert boxes and all(0 <= b.x0 <= b.x1 <= 90 and 0 <= b.y0 <= b.y1 <= 130 for b in boxes)
    # the same weights give the same boxes as the in-memory model
    same = fixture.localise(img, "Casual Shoes")
    assert [c for b in boxes for c in (*b.xyxy, b.score)] == pytest.approx(
        [c for b in same for c in (*b.xyxy, b.score)], abs=1e-3)
