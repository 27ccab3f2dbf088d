"""Text in, token batches out: Rust tokenisation, length buckets, and the one-query path.

Product texts vary from 5 to 64+ tokens. Padding every batch to its longest member
wastes most of a transformer's work, so :func:`length_bucketed` tokenises everything
once with the tokenizer's Rust backend (``tokenizers.Tokenizer.encode_batch``, no padding),
sorts by token count, pads each batch only to its own longest member, and returns each
batch with the positions it came from so callers restore the input order.
:func:`single` tokenises one query with no padding at all, for the request path.

Towers whose tokenizer has no Rust backend, or which need fixed-length padding (SigLIP),
go through their own ``tokenize`` (sorted by character length, which still buckets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_FAST_KEYS = ("input_ids", "attention_mask")


@dataclass
class TokenBatch:
    index: np.ndarray  # positions in the input list, in batch order
    tokens: dict[str, torch.Tensor]


def _rust_tokenizer(tower: Any) -> Any | None:
    """A private copy of the tower's Rust tokenizer, truncating like `tower.tokenize`; None if unusable."""
    cached = tower.__dict__.get("_shopclip_rust_tokenizer", False)
    if cached is not False:
        return cached
    fast = None
    tok = getattr(tower, "tokenizer", None)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and "siglip" not in str(getattr(tower, "name", "")):
        try:
            keys = tuple(tower.tokenize(["a"]).keys())
        except Exception:  # noqa: BLE001 - a tower we cannot probe keeps its own tokenize
            keys = ()
        if set(keys) <= set(_FAST_KEYS) and "input_ids" in keys:
            from tokenizers import Tokenizer

            fast = Tokenizer.from_str(backend.to_str())
            fast.no_padding()
            fast.enable_truncation(max_length=int(getattr(tower, "max_length", 512)))
            tower.__dict__["_shopclip_token_keys"] = keys
            tower.__dict__["_shopclip_pad_id"] = int(getattr(tok, "pad_token_id", 0) or 0)
    tower.__dict__["_shopclip_rust_tokenizer"] = fast
    return fast


def _pad(ids: list[list[int]], keys: Sequence[str], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(x) for x in ids)
    arr = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for i, x in enumerate(ids):
        arr[i, : len(x)] = x
        mask[i, : len(x)] = 1
    out = {"input_ids": torch.from_numpy(arr), "attention_mask": torch.from_numpy(mask)}
    return {k: out[k] for k in keys}


def length_bucketed(tower: Any, texts: Sequence[str], batch_size: int) -> list[TokenBatch]:
    """Batches of similar length; concatenating their `index` fields gives a permutation of the input."""
    texts = list(texts)
    if not texts:
        return []
    fast = _rust_tokenizer(tower)
    batch_size = max(1, int(batch_size))
    if fast is None:
        order = np.argsort([len(t) for t in texts], kind="stable")
        return [TokenBatch(order[i : i + batch_size], tower.tokenize([texts[j] for j in order[i : i + batch_size]]))
                for i in range(0, len(texts), batch_size)]
    ids = [e.ids for e in fast.encode_batch(texts, add_special_tokens=True)]
    order = np.argsort([len(x) for x in ids], kind="stable")
    keys, pad = tower.__dict__["_shopclip_token_keys"], tower.__dict__["_shopclip_pad_id"]
    return [TokenBatch(order[i : i + batch_size], _pad([ids[j] for j in order[i : i + batch_size]], keys, pad))
            for i in range(0, len(texts), batch_size)]


def single(tower: Any, text: str) -> dict[str, torch.Tensor]:
    """One text as a (1, L) batch with no padding (the request path)."""
    fast = _rust_tokenizer(tower)
    if fast is None:
        return tower.tokenize([text])
    ids = fast.encode(text, add_special_tokens=True).ids
    keys = tower.__dict__["_shopclip_token_keys"]
    out = {"input_ids": torch.tensor([ids], dtype=torch.int64),
           "attention_mask": torch.ones((1, len(ids)), dtype=torch.int64)}
    return {k: out[k] for k in keys}
