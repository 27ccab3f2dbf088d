"""Contrastive losses as pure functions of embeddings: no model, no state, easy to check by hand.

* :func:`clip_loss` — symmetric InfoNCE (CLIP): cross-entropy of image→text and
  text→image softmaxes over the batch, averaged.
* :func:`siglip_loss` — pairwise sigmoid loss (SigLIP): every (image, text) pair is
  its own binary problem, so no softmax over the batch is needed.

Both take an optional ``fn_mask`` (B, B) marking *false negatives*: off-diagonal pairs
that are really the same product (re-listings, identical photos, identical titles).
With ``fn_mode="mask"`` (default) those pairs are dropped from the denominator
(softmax) or from the pair set (sigmoid): they are neither pulled nor pushed. With
``fn_mode="positive"`` they count as extra positives: the InfoNCE target becomes
uniform over all positives of a row (soft-target cross-entropy), the sigmoid label +1.

* ``hard_beta`` (InfoNCE) — hard-negative weighting (Robinson et al., 2021): each
  negative's exp(logit) in the denominator is weighted by w_ij = M · exp(β c_ij) /
  Σ_k exp(β c_ik) over the row's M negatives (c = cosine, weights detached), so the
  near-identical confusers of a batch count more; β = 0 is plain InfoNCE.
* :func:`image_image_loss` — a multi-positive InfoNCE between two image views of the
  batch: positives are the same product's other view, and with ``pos_mask`` also other
  products (e.g. the same leaf category), so similar-items search gains from training.

Embeddings are expected L2-normalised; ``scale`` is the already exponentiated and
clamped inverse temperature (see :func:`temperature_scale`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FN_MODES = ("mask", "positive", "none")


def temperature_scale(log_scale: torch.Tensor, max_log_scale: float = math.log(100.0)) -> torch.Tensor:
    """exp(clamp(log_scale, 0, max)): CLIP clamps the learnable temperature so logits stay ≤ 100."""
    return log_scale.clamp(0.0, max_log_scale).exp()


def _check(image_emb: torch.Tensor, text_emb: torch.Tensor, fn_mask: torch.Tensor | None, fn_mode: str) -> None:
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"image and text embeddings must both be (B, d); got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    if fn_mode not in FN_MODES:
        raise ValueError(f"fn_mode must be one of {FN_MODES}, got {fn_mode!r}")
    if fn_mask is not None and fn_mask.shape != (image_emb.shape[0],) * 2:
        raise ValueError(f"fn_mask must be (B, B) = {(image_emb.shape[0],) * 2}, got {tuple(fn_mask.shape)}")


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision embeddings (autocast) are compared in float32; float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _clean_mask(fn_mask: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """Boolean (B, B), symmetric, never marking the diagonal (a pair is its own positive)."""
    if fn_mask is None:
        return torch.zeros(n, n, dtype=torch.bool, device=device)
    m = fn_mask.to(device=device, dtype=torch.bool)
    m = m | m.T
    return m & ~torch.eye(n, dtype=torch.bool, device=device)


def hard_negative_log_weights(cosines: torch.Tensor, negatives: torch.Tensor, beta: float) -> torch.Tensor:
    """(B, B) log w_ij for the negatives of each row (0 elsewhere), detached.

    w_ij = M_i · exp(β c_ij) / Σ_{k ∈ neg_i} exp(β c_ik): the weights of a row's M_i
    negatives average 1, so β = 0 leaves InfoNCE unchanged.
    """
    c = cosines.detach()
    z = (beta * c).masked_fill(~negatives, float("-inf"))
    m = negatives.sum(dim=1, keepdim=True).clamp_min(1).to(c.dtype)
    logw = z - torch.logsumexp(z, dim=1, keepdim=True) + torch.log(m)
    return torch.where(negatives, logw, torch.zeros_like(logw))


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy −Σ_j t_ij log softmax_j(l_ij), softmax only over `valid` entries."""
    logits = logits.masked_fill(~valid, float("-inf"))
    logp = torch.log_softmax(logits, dim=1)
    # 0 · (−inf) must be 0, not NaN, for the excluded entries.
    return -(targets * logp.masked_fill(~valid, 0.0)).sum(dim=1)


def _targets(n: int, fn: torch.Tensor, fn_mode: str, label_smoothing: float, device: torch.device,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, valid) for one direction; rows sum to 1 over valid entries."""
    eye = torch.eye(n, dtype=torch.bool, device=device)
    valid = ~fn if fn_mode == "mask" else torch.ones(n, n, dtype=torch.bool, device=device)
    pos = eye | fn if fn_mode == "positive" else eye
    t = pos.to(dtype)
    t = t / t.sum(dim=1, keepdim=True)
    if label_smoothing > 0:
        uniform = valid.to(dtype) / valid.sum(dim=1, keepdim=True).to(dtype)
        t = (1 - label_smoothing) * t + label_smoothing * uniform
    return t, valid


def clip_loss_terms(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor | float, *,
                    fn_mask: torch.Tensor | None = None, fn_mode: str = "mask",
                    label_smoothing: float = 0.0, hard_beta: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row losses (image→text, text→image), each (B,); their means average to :func:`clip_loss`."""
    _check(image_emb, text_emb, fn_mask, fn_mode)
    n = image_emb.shape[0]
    cos = _upcast(image_emb) @ _upcast(text_emb).T  # (B images, B texts)
    logits = scale * cos
    fn = _clean_mask(fn_mask, n, logits.device) if fn_mode != "none" else _clean_mask(None, n, logits.device)
    t, valid = _targets(n, fn, fn_mode if fn_mode != "none" else "mask", label_smoothing, logits.device, logits.dtype)
    # fn is symmetric, so the same targets serve the text→image direction (logits transposed).
    rows_l, cols_l = logits, logits.T
    if hard_beta:
        neg = valid & (t == 0) if label_smoothing == 0 else valid & ~torch.eye(n, dtype=torch.bool, device=logits.device)
        if fn_mode == "positive":
            neg = neg & ~fn
        rows_l = rows_l + hard_negative_log_weights(cos, neg, hard_beta)
        cols_l = cols_l + hard_negative_log_weights(cos.T, neg, hard_beta)
    return _soft_ce(rows_l, t, valid), _soft_ce(cols_l, t, valid)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor | float, *,
              fn_mask: torch.Tensor | None = None, fn_mode: str = "mask", label_smoothing: float = 0.0,
              hard_beta: float = 0.0) -> torch.Tensor:
    """Symmetric InfoNCE: ½ (CE(image→text) + CE(text→image)), each averaged over the batch."""
    i2t, t2i = clip_loss_terms(image_emb, text_emb, scale, fn_mask=fn_mask, fn_mode=fn_mode,
                               label_smoothing=label_smoothing, hard_beta=hard_beta)
    return 0.5 * (i2t.mean() + t2i.mean())


def image_image_loss(view_a: torch.Tensor, view_b: torch.Tensor, scale: torch.Tensor | float, *,
                     pos_mask: torch.Tensor | None = None, fn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-positive InfoNCE between two image views of one batch, both directions averaged.

    Row i of ``view_a`` should find row i of ``view_b`` and every j with ``pos_mask[i, j]``
    (targets uniform over those positives); ``fn_mask`` pairs that are not positives
    (duplicates) leave the softmax. With no masks it is SimCLR's cross-view loss.
    """
    _check(view_a, view_b, fn_mask, "mask")
    n = view_a.shape[0]
    dev = view_a.device
    logits = scale * _upcast(view_a) @ _upcast(view_b).T
    eye = torch.eye(n, dtype=torch.bool, device=dev)
    pos = eye if pos_mask is None else (pos_mask.to(device=dev, dtype=torch.bool) | pos_mask.to(dev).bool().T | eye)
    fn = _clean_mask(fn_mask, n, dev) & ~pos
    valid = ~fn
    t = pos.to(logits.dtype)
    t = t / t.sum(dim=1, keepdim=True)
    return 0.5 * (_soft_ce(logits, t, valid).mean() + _soft_ce(logits.T, t, valid).mean())


def siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor | float,
                bias: torch.Tensor | float, *, fn_mask: torch.Tensor | None = None, fn_mode: str = "mask") -> torch.Tensor:
    """SigLIP: −(1/B) Σ_ij log σ(z_ij (scale·⟨x_i, y_j⟩ + bias)), z = +1 on positives, −1 elsewhere.

    Masked pairs (fn_mode="mask") are dropped from the sum; the normalisation stays 1/B
    as in the paper, so the loss of an unmasked batch is unchanged.
    """
    _check(image_emb, text_emb, fn_mask, fn_mode)
    n = image_emb.shape[0]
    logits = scale * _upcast(image_emb) @ _upcast(text_emb).T + bias
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    fn = _clean_mask(fn_mask if fn_mode != "none" else None, n, logits.device)
    pos = eye | fn if fn_mode == "positive" else eye
    z = torch.where(pos, 1.0, -1.0).to(logits.dtype)
    weight = (~fn).to(logits.dtype) if fn_mode == "mask" else torch.ones_like(logits)
    return -(F.logsigmoid(z * logits) * weight).sum() / n
