"""Paired retrieval metrics for validation: product i's text should find product i's image and back."""

from __future__ import annotations

import numpy as np


def paired_ranks(queries: np.ndarray, gallery: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """0-based rank of gallery item i for query i (ties count against the query: pessimistic)."""
    q = np.asarray(queries, dtype=np.float32)
    g = np.asarray(gallery, dtype=np.float32)
    ranks = np.empty(len(q), dtype=np.int64)
    for s in range(0, len(q), chunk):
        scores = q[s : s + chunk] @ g.T
        own = scores[np.arange(scores.shape[0]), np.arange(s, s + scores.shape[0])]
        ranks[s : s + chunk] = (scores >= own[:, None]).sum(axis=1) - 1
    return ranks


def retrieval_report(image_emb: np.ndarray, text_emb: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k and MRR both ways over n paired items: `t2i_r10`, `i2t_r1`, `t2i_mrr`, …"""
    out: dict[str, float] = {}
    for name, q, g in (("t2i", text_emb, image_emb), ("i2t", image_emb, text_emb)):
        r = paired_ranks(q, g)
        for k in ks:
            out[f"{name}_r{k}"] = float((r < k).mean()) if len(r) else float("nan")
        out[f"{name}_mrr"] = float((1.0 / (r + 1)).mean()) if len(r) else float("nan")
    return out
