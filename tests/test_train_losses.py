"""Contrastive losses against values worked out by hand (written as explicit exp/log sums)."""

from __future__ import annotations

import math

import pytest
import torch

from shopclip.train.false_negatives import duplicate_keys, false_negative_mask
from shopclip.train.losses import clip_loss, clip_loss_terms, siglip_loss, temperature_scale

E = math.e


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# 3×3: images are the unit axes, text 2 leans towards image 0 (cos 0.6) but belongs to image 2 (cos 0.8).
IMG3 = t([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
TXT3 = t([[1, 0, 0], [0, 1, 0], [0.6, 0, 0.8]])
# scale 2 → logits rows (image i vs texts): [2, 0, 1.2], [0, 2, 0], [0, 0, 1.6]


def test_infonce_3x3_by_hand():
    i2t = [-math.log(E**2 / (E**2 + 1 + E**1.2)),
           -math.log(E**2 / (1 + E**2 + 1)),
           -math.log(E**1.6 / (1 + 1 + E**1.6))]
    # columns: text j against images: [2, 0, 0], [0, 2, 0], [1.2, 0, 1.6]
    t2i = [-math.log(E**2 / (E**2 + 1 + 1)),
           -math.log(E**2 / (1 + E**2 + 1)),
           -math.log(E**1.6 / (E**1.2 + 1 + E**1.6))]
    expected = 0.5 * (sum(i2t) / 3 + sum(t2i) / 3)
    got = clip_loss(IMG3, TXT3, 2.0)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    rows, cols = clip_loss_terms(IMG3, TXT3, 2.0)
    assert rows.tolist() == pytest.approx(i2t, rel=1e-12)
    assert cols.tolist() == pytest.approx(t2i, rel=1e-12)


def test_label_smoothing_3x3_by_hand():
    eps = 0.3
    z = [[2, 0, 1.2], [0, 2, 0], [0, 0, 1.6]]

    def ce(logits: list[float], target: int) -> float:
        lse = math.log(sum(math.exp(v) for v in logits))
        logp = [v - lse for v in logits]
        weights = [(1 - eps) * (k == target) + eps / 3 for k in range(3)]
        return -sum(w * lp for w, lp in zip(weights, logp, strict=True))

    rows = [ce(z[i], i) for i in range(3)]
    cols = [ce([z[r][j] for r in range(3)], j) for j in range(3)]
    expected = 0.5 * (sum(rows) / 3 + sum(cols) / 3)
    assert clip_loss(IMG3, TXT3, 2.0, label_smoothing=eps).item() == pytest.approx(expected, rel=1e-12)


# 4×4: products 0 and 1 are copies (text 1 == text 0); scale 3 → logits
#   image 0: [3, 3, 0, 0]   image 1: [0, 0, 0, 0]   image 2: [0, 0, 3, 0]   image 3: [0, 0, 0, 3]
IMG4 = torch.eye(4, dtype=torch.float64)
TXT4 = t([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
DUP01 = torch.tensor([[False, True, False, False], [True, False, False, False],
                      [False] * 4, [False] * 4])


def test_infonce_4x4_without_mask_by_hand():
    rows = [-math.log(E**3 / (2 * E**3 + 2)), -math.log(1 / 4),
            -math.log(E**3 / (E**3 + 3)), -math.log(E**3 / (E**3 + 3))]
    cols = [-math.log(E**3 / (E**3 + 3)), -math.log(1 / (E**3 + 3)),
            -math.log(E**3 / (E**3 + 3)), -math.log(E**3 / (E**3 + 3))]
    got = clip_loss(IMG4, TXT4, 3.0)
    assert got.item() == pytest.approx(0.5 * (sum(rows) / 4 + sum(cols) / 4), rel=1e-12)
    # fn_mode="none" ignores a mask entirely
    assert clip_loss(IMG4, TXT4, 3.0, fn_mask=DUP01, fn_mode="none").item() == pytest.approx(got.item(), rel=1e-12)


def test_infonce_4x4_masked_by_hand():
    # the copy leaves the denominator: image 0 sees texts {0, 2, 3}, image 1 sees {1, 2, 3}
    rows = [-math.log(E**3 / (E**3 + 2)), -math.log(1 / 3),
            -math.log(E**3 / (E**3 + 3)), -math.log(E**3 / (E**3 + 3))]
    cols = [-math.log(E**3 / (E**3 + 2)), -math.log(1 / 3),
            -math.log(E**3 / (E**3 + 3)), -math.log(E**3 / (E**3 + 3))]
    got = clip_loss(IMG4, TXT4, 3.0, fn_mask=DUP01, fn_mode="mask")
    assert got.item() == pytest.approx(0.5 * (sum(rows) / 4 + sum(cols) / 4), rel=1e-12)


def test_infonce_4x4_extra_positive_by_hand():
    # targets spread over both copies: row 0 → ½ on texts 0 and 1
    p00 = E**3 / (2 * E**3 + 2)
    rows = [-0.5 * (math.log(p00) + math.log(p00)), -math.log(1 / 4),
            -math.log(E**3 / (E**3 + 3)), -math.log(E**3 / (E**3 + 3))]
    col01 = -0.5 * (math.log(E**3 / (E**3 + 3)) + math.log(1 / (E**3 + 3)))
    cols = [col01, col01, -math.log(E**3 / (E**3 + 3)), -math.log(E**3 / (E**3 + 3))]
    got = clip_loss(IMG4, TXT4, 3.0, fn_mask=DUP01, fn_mode="positive")
    assert got.item() == pytest.approx(0.5 * (sum(rows) / 4 + sum(cols) / 4), rel=1e-12)


def test_copies_contribute_no_negative_term():
    """Two listings of one product in a batch: neither is pushed away from the other's pair."""
    keys = duplicate_keys(groups=["g1", "g1", None, None], image_sha1s=["a", "b", "c", "d"],
                          titles=["Red Shoe", "red shoe!", "Blue Bag", "Green Hat"], signals=["group", "title"])
    mask = false_negative_mask(torch.from_numpy(keys.keys))
    assert mask.tolist() == DUP01.tolist()
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 5, dtype=torch.float64), dim=1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(4, 5, dtype=torch.float64), dim=1).requires_grad_()
    rows, cols = clip_loss_terms(img, txt, 10.0, fn_mask=mask)
    # image 0's softmax never sees text 1, and text 0's never sees image 1 (and vice versa)
    for term, other, copy in ((rows[0], txt, 1), (cols[0], img, 1), (rows[1], txt, 0), (cols[1], img, 0)):
        (g,) = torch.autograd.grad(term, other, retain_graph=True)
        assert torch.count_nonzero(g[copy]) == 0
        assert torch.count_nonzero(g[2]) > 0  # real negatives still push
    # without the mask the copy *is* a negative: the same gradient is non-zero
    rows_u, _ = clip_loss_terms(img, txt, 10.0)
    (g,) = torch.autograd.grad(rows_u[0], txt)
    assert torch.count_nonzero(g[1]) > 0


def test_siglip_3x3_by_hand():
    def logsig(x: float) -> float:
        return -math.log(1 + math.exp(-x))

    scale, bias = 2.0, -1.0
    sims = [[1, 0, 0.6], [0, 1, 0], [0, 0, 0.8]]
    total = 0.0
    for i in range(3):
        for j in range(3):
            z = 1 if i == j else -1
            total += logsig(z * (scale * sims[i][j] + bias))
    assert siglip_loss(IMG3, TXT3, scale, bias).item() == pytest.approx(-total / 3, rel=1e-12)
    # masked: pair (0, 2) and (2, 0) leave the sum
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[0, 2] = True
    masked = total - logsig(-(scale * 0.6 + bias)) - logsig(-(scale * 0 + bias))
    assert siglip_loss(IMG3, TXT3, scale, bias, fn_mask=mask).item() == pytest.approx(-masked / 3, rel=1e-12)
    # as positives: their label flips to +1
    pos = masked + logsig(scale * 0.6 + bias) + logsig(scale * 0 + bias)
    got = siglip_loss(IMG3, TXT3, scale, bias, fn_mask=mask, fn_mode="positive").item()
    assert got == pytest.approx(-pos / 3, rel=1e-12)


def test_temperature_is_clamped():
    assert temperature_scale(torch.tensor(10.0)).item() == pytest.approx(100.0)
    assert temperature_scale(torch.tensor(-3.0)).item() == pytest.approx(1.0)
    assert temperature_scale(torch.tensor(math.log(20.0))).item() == pytest.approx(20.0, rel=1e-6)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="embeddings"):
        clip_loss(IMG3, TXT4, 1.0)
    with pytest.raises(ValueError, match="fn_mask"):
        clip_loss(IMG4, TXT4, 1.0, fn_mask=torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="fn_mode"):
        clip_loss(IMG4, TXT4, 1.0, fn_mode="drop")


# -- hard-negative weighting and the image–image term --------------------------------


def test_hard_negative_weighted_infonce_3x3_by_hand():
    beta = 1.0
    cos = [[1, 0, 0.6], [0, 1, 0], [0, 0, 0.8]]  # image i vs text j (IMG3, TXT3)

    def row_loss(c: list[float], i: int) -> float:
        negs = [j for j in range(3) if j != i]
        m = len(negs)
        z = sum(math.exp(beta * c[j]) for j in negs)
        denom = math.exp(2 * c[i]) + sum(m * math.exp(beta * c[j]) / z * math.exp(2 * c[j]) for j in negs)
        return -math.log(math.exp(2 * c[i]) / denom)

    rows = [row_loss(cos[i], i) for i in range(3)]
    cols = [row_loss([cos[r][j] for r in range(3)], j) for j in range(3)]
    got_rows, got_cols = clip_loss_terms(IMG3, TXT3, 2.0, hard_beta=beta)
    assert got_rows.tolist() == pytest.approx(rows, rel=1e-12)
    assert got_cols.tolist() == pytest.approx(cols, rel=1e-12)
    assert clip_loss(IMG3, TXT3, 2.0, hard_beta=beta).item() == pytest.approx(0.5 * (sum(rows) + sum(cols)) / 3)
    # the confuser (text 2 for image 0, cos 0.6) weighs more than plain InfoNCE gives it
    assert clip_loss(IMG3, TXT3, 2.0, hard_beta=beta).item() > clip_loss(IMG3, TXT3, 2.0).item()
    # β = 0 is plain InfoNCE
    assert clip_loss(IMG3, TXT3, 2.0, hard_beta=0.0).item() == pytest.approx(clip_loss(IMG3, TXT3, 2.0).item())


def test_hard_negative_weighting_keeps_masked_duplicates_out():
    # image 0's copy (text 1) stays out of the denominator: only texts 2 and 3 are its negatives
    rows, _ = clip_loss_terms(IMG4, TXT4, 3.0, fn_mask=DUP01, hard_beta=2.0)
    # both negatives have cosine 0: weights 1 each → the masked plain value
    assert rows[0].item() == pytest.approx(-math.log(E**3 / (E**3 + 2)), rel=1e-12)


def test_image_image_loss_by_hand():
    from shopclip.train.losses import image_image_loss

    a = IMG3
    b = TXT3  # view b of photo 2 leans towards photo 0 (cos 0.6)
    s = 2.0
    z = [[s * sum(x * y for x, y in zip(a[i].tolist(), b[j].tolist(), strict=True)) for j in range(3)]
         for i in range(3)]

    def ce(row: list[float], targets: list[int], valid: list[int]) -> float:
        lse = math.log(sum(math.exp(row[j]) for j in valid))
        return -sum((row[j] - lse) / len(targets) for j in targets)

    plain = 0.5 * (sum(ce(z[i], [i], [0, 1, 2]) for i in range(3)) / 3
                   + sum(ce([z[r][j] for r in range(3)], [j], [0, 1, 2]) for j in range(3)) / 3)
    assert image_image_loss(a, b, s).item() == pytest.approx(plain, rel=1e-12)
    # photos 0 and 2 share a leaf category: each is also a positive of the other
    pos = torch.zeros(3, 3, dtype=torch.bool)
    pos[0, 2] = True
    tg = [[0, 2], [1], [0, 2]]
    leaf = 0.5 * (sum(ce(z[i], tg[i], [0, 1, 2]) for i in range(3)) / 3
                  + sum(ce([z[r][j] for r in range(3)], tg[j], [0, 1, 2]) for j in range(3)) / 3)
    assert image_image_loss(a, b, s, pos_mask=pos).item() == pytest.approx(leaf, rel=1e-12)
    # a duplicate that is not a positive leaves the softmax (photo 1 ~ photo 2)
    fn = torch.zeros(3, 3, dtype=torch.bool)
    fn[1, 2] = True
    masked = 0.5 * (sum(ce(z[i], [i], v) for i, v in enumerate([[0, 1, 2], [0, 1], [0, 2]])) / 3
                    + sum(ce([z[r][j] for r in range(3)], [j], v) for j, v in enumerate([[0, 1, 2], [0, 1], [0, 2]])) / 3)
    assert image_image_loss(a, b, s, fn_mask=fn).item() == pytest.approx(masked, rel=1e-12)
