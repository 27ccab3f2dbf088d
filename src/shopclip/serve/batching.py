"""Text queries on the request path: concurrent queries share one tower call, repeats hit a cache.

Why (py-spy on `shopclip serve` over the 8,225-product sample under bench/serve.py's
load): 56% of the server's time was the text tower, one call per query. At a few tokens a
query its fp32 matmuls run far below the CPU's peak (every call streams all the layer
weights for a handful of rows), so a lone query costs nearly what four in one call do, and
`DualEncoder.encode_text` also walks every module of both towers for eval()/train() per call.
So every text query goes to one worker thread that embeds, in a single call, everything
that queued while it was busy. There is no timer: a lone query is embedded at once; under
load the batches grow by themselves, which is when they pay.

`embed_texts` is the only place the server calls the text tower: a faster engine (ONNX,
a single-query fast path) is swapped in there.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Encode = Callable[[list[str]], np.ndarray]


def embed_texts(model: Any, texts: Sequence[str]) -> np.ndarray:
    """(n, d) float32 unit vectors for `texts` in one tower call: the server's one call into the model.

    It goes through the model's inference engine (`model.engine`: ONNX int8 by default, see
    `shopclip.models.engines`), a lone text unpadded. The model is in eval mode for the
    server's whole life (ServeState sets it), so this skips `encode_text`'s per-call
    eval()/train() walk over both towers (~1 ms a call here).
    """
    import torch

    from shopclip.models.text_batching import single as single_tokens

    texts = list(texts)
    tokens = single_tokens(model.text_tower, texts[0]) if len(texts) == 1 else model.text_tower.tokenize(texts)
    with torch.inference_mode():
        return model.project_text(model.engine.text_features(tokens)).float().cpu().numpy()


@dataclass
class BatchStats:
    """What the batcher did since it started: the mean batch size is `items / batches`."""

    batches: int = 0
    items: int = 0
    largest: int = 0

    def record(self, n: int) -> None:
        self.batches += 1
        self.items += n
        self.largest = max(self.largest, n)


class MicroBatcher:
    """One worker thread runs `encode` over everything queued since its last call.

    `submit(text)` returns a Future of that text's own row. Duplicates within a batch are
    encoded once. If a batch fails, each of its texts is retried alone, so a text that
    breaks the encoder fails only its own caller.
    """

    def __init__(self, encode: Encode, *, max_batch: int = 32, name: str = "shopclip-text-batcher",
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.encode = encode
        self.max_batch = int(max_batch)
        self.name = name
        self.stats = BatchStats()
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[tuple[str, Future[np.ndarray]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    def submit(self, text: str) -> Future[np.ndarray]:
        if self._closed:
            raise RuntimeError("the batcher is closed")
        if self._thread is None:  # started on first use: most ServeStates in tests never embed a query
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                    self._thread.start()
        fut: Future[np.ndarray] = Future()
        self._queue.put((text, fut))
        return fut

    def __call__(self, text: str) -> np.ndarray:
        return self.submit(text).result()

    def close(self, timeout: float = 5.0) -> None:
        """Finish what is queued, then stop the thread."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            stop = False
            while len(jobs) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
            self._process(jobs)
            if stop:
                return

    def _process(self, jobs: list[tuple[str, Future[np.ndarray]]]) -> None:
        jobs = [(t, f) for t, f in jobs if f.set_running_or_notify_cancel()]
        if not jobs:
            return
        unique = list(dict.fromkeys(t for t, _ in jobs))
        self.stats.record(len(unique))
        if self._on_batch is not None:
            self._on_batch(len(unique))
        try:
            out = self._encode(unique)
        except Exception as e:
            if len(unique) > 1:
                log.warning("a batch of %d queries failed (%s); embedding them one by one", len(unique), e)
            for text in unique:  # alone, so a text that breaks the encoder fails only its callers
                try:
                    vec: np.ndarray | None = self._encode([text])[0] if len(unique) > 1 else None
                    err: BaseException | None = None if len(unique) > 1 else e
                except Exception as e1:
                    vec, err = None, e1
                for t, fut in jobs:
                    if t == text:
                        if err is not None:
                            fut.set_exception(err)
                        else:
                            fut.set_result(np.array(vec))
            return
        row = {t: i for i, t in enumerate(unique)}
        for text, fut in jobs:
            fut.set_result(out[row[text]].copy())  # each caller owns its row

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.asarray(self.encode(texts), dtype=np.float32)
        if out.ndim != 2 or len(out) != len(texts):
            raise ValueError(f"encoder returned shape {out.shape} for {len(texts)} texts")
        return out


class QueryEmbedder:
    """Text → unit vector for the request path: a bounded LRU of recent queries in front of a
    `MicroBatcher` (or a direct call with `batching=False`)."""

    def __init__(self, encode: Encode, *, cache_size: int = 4096, max_batch: int = 32, batching: bool = True,
                 on_batch: Callable[[int], None] | None = None,
                 batch_invariant: Callable[[], bool] | None = None) -> None:
        """`batch_invariant()` is asked at the first query: when the encoder's output for a text
        depends on the rest of its batch (dynamic int8), queries are embedded one by one in
        their callers' threads, so a query's results never depend on other shoppers' traffic."""
        self.encode = encode
        self.cache_size = int(cache_size)
        self.batcher = MicroBatcher(encode, max_batch=max_batch, on_batch=on_batch) if batching else None
        self._invariant = batch_invariant
        self._setup = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __call__(self, text: str) -> np.ndarray:
        if self._invariant is not None:
            with self._setup:  # decided once, before any query reaches the batcher
                if self._invariant is not None:
                    if self.batcher is not None and not self._invariant():
                        log.info("text engine is not batch-invariant (dynamic int8): queries are embedded one by one")
                        self.batcher, batcher = None, self.batcher
                        batcher.close()
                    self._invariant = None
        if self.cache_size:
            with self._lock:
                hit = self._cache.get(text)
                if hit is not None:
                    self._cache.move_to_end(text)
                    self.hits += 1
                    return hit
                self.misses += 1
        vec = self.batcher(text) if self.batcher is not None else np.asarray(self.encode([text]), np.float32)[0]
        vec.setflags(write=False)  # shared by every later hit: nobody may edit it
        if self.cache_size:
            with self._lock:
                self._cache[text] = vec
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return vec

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
