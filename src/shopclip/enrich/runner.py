"""Resumable batch enrichment of a catalog into ``enriched.jsonl``.

Rows are appended (and fsync'ed) one batch at a time, so a run killed at any moment keeps every
finished batch; the next run reads the rows already in the output and does only the rest (a
truncated last line is dropped and redone). A row counts as done only if it was made by the same
backend (and server URL), model and prompt, from the same source fields and settings
(``input_hash``): rows made otherwise, or by an older version that did not record this, are removed
from the file and redone (``RunSummary.rows_redone``). The SQLite cache makes a full re-run cheap too.

Output rows: ``id, text, description, attributes, product_type, checks, rounds, fallback, method,
backend, model, prompt, input_hash``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shopclip.core.io import atomic_write_bytes
from shopclip.enrich.agent import Enricher, EnrichResult

#: The row fields that say how a row was made; all must match for resume to skip it.
PROVENANCE_KEYS = ("backend", "model", "prompt", "input_hash")


@dataclass
class RunSummary:
    rows_total: int = 0  # products asked for
    rows_done_before: int = 0  # already in the output, made the same way (skipped)
    rows_redone: int = 0  # in the output but made by another backend/model/prompt or from other inputs: redone
    rows_processed: int = 0  # enriched in this run (cache hits included)
    rows_enriched: int = 0  # method llm or llm+repair (or rules in rules-only mode)
    rows_repaired: int = 0  # llm+repair
    rows_fallback: int = 0
    cache_hits: int = 0
    rounds_total: int = 0  # LLM calls of the rows computed in this run (cache hits excluded)
    rows_computed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_seconds: float = 0.0  # wall-clock time waiting for the backend
    seconds: float = 0.0
    backend: str = ""
    model: str = ""
    prompt: str = ""
    out: str = ""
    method_counts: dict[str, int] = field(default_factory=dict)

    @property
    def avg_rounds(self) -> float:
        return self.rounds_total / self.rows_computed if self.rows_computed else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.llm_seconds if self.llm_seconds else 0.0

    @property
    def products_per_s(self) -> float:
        return self.rows_processed / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(avg_rounds=round(self.avg_rounds, 3), tokens_per_s=round(self.tokens_per_s, 2),
                 products_per_s=round(self.products_per_s, 4))
        return d

    def lines(self) -> list[str]:
        return [
            f"backend {self.backend} · model {self.model} · prompt {self.prompt}",
            f"rows: {self.rows_total} asked, {self.rows_done_before} already done, {self.rows_processed} processed "
            f"({self.cache_hits} from cache)" + (
                f", of which {self.rows_redone} redone (made by another backend, model, prompt or settings)"
                if self.rows_redone else ""),
            f"enriched {self.rows_enriched} (of which repaired {self.rows_repaired}), fell back {self.rows_fallback}",
            f"average rounds {self.avg_rounds:.2f} · {self.completion_tokens} tokens generated · "
            f"{self.tokens_per_s:.1f} tokens/s · {self.products_per_s:.2f} products/s · {self.seconds:.1f}s",
            f"output: {self.out}",
        ]


def read_done_rows(out: Path) -> dict[str, dict[str, Any]]:
    """id → the row's provenance fields (:data:`PROVENANCE_KEYS`, None where a row lacks one) for every
    complete row in `out`; a trailing partial line (a killed run) is cut off the file."""
    if not out.exists():
        return {}
    done: dict[str, dict[str, Any]] = {}
    good_bytes = 0
    with open(out, "rb") as fp:
        for raw in fp:
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            if not raw.endswith(b"\n"):
                break
            done[str(row["id"])] = {k: row.get(k) for k in PROVENANCE_KEYS}
            good_bytes += len(raw)
    if good_bytes != out.stat().st_size:
        with open(out, "r+b") as fp:
            fp.truncate(good_bytes)
    return done


def read_done_ids(out: Path) -> set[str]:
    """Ids already in `out` (whatever made them); a trailing partial line is cut off the file."""
    return set(read_done_rows(out))


def _drop_rows(out: Path, ids: set[str]) -> None:
    """Rewrite `out` without the rows of `ids` (atomically: a kill leaves the old or the new file)."""
    with open(out, "rb") as fp:
        kept = [raw for raw in fp if str(json.loads(raw)["id"]) not in ids]
    atomic_write_bytes(out, b"".join(kept))


def _append(out: Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(out, "a", encoding="utf-8") as fp:
        for r in rows:
            fp.write(json.dumps(r, ensure_ascii=False) + "\n")
        fp.flush()
        os.fsync(fp.fileno())


def run_enrichment(products: Sequence[Any], out: str | Path, enricher: Enricher, *, batch_size: int = 8,
                   resume: bool = True, progress: bool = True,
                   on_batch: Callable[[list[EnrichResult]], None] | None = None) -> RunSummary:
    """Enrich `products` (Product objects or catalog row dicts) into JSONL at `out`.

    ``resume=False`` starts the file afresh. ``batch_size`` is how many products go to the backend
    per round (set it to at least the HTTP backend's concurrency).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not resume and out.exists():
        out.unlink()
    done = read_done_rows(out) if resume else {}
    prov = enricher.provenance()
    valid: set[str] = set()
    stale: set[str] = set()
    for p in products:
        pid = _pid(p)
        if pid in done:
            same = done[pid] == {**prov, "input_hash": enricher.input_hash(p)}
            (valid if same else stale).add(pid)
    if stale:
        _drop_rows(out, stale)
    todo = [p for p in products if _pid(p) not in valid]
    s = RunSummary(rows_total=len(products), rows_done_before=len(products) - len(todo), rows_redone=len(stale),
                   backend=enricher.backend_name, model=enricher.model_name, prompt=enricher.prompt_id, out=str(out))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="enrich", unit="product", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            wall0 = enricher.llm_wall_seconds
            results = enricher.enrich_many(batch)
            s.llm_seconds += enricher.llm_wall_seconds - wall0
            _append(out, ({**r.to_row(), **prov, "input_hash": r.input_hash} for r in results))
            for r in results:
                _count(s, r, rules_only=enricher.backend is None)
            if on_batch:
                on_batch(results)
            if bar is not None:
                bar.update(len(batch))
                bar.set_postfix(fallback=s.rows_fallback, cached=s.cache_hits,
                                tok_s=f"{s.tokens_per_s:.0f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
        s.seconds = time.perf_counter() - t0
    return s


def _pid(p: Any) -> str:
    return str(p["id"] if isinstance(p, dict) else p.id)


def _count(s: RunSummary, r: EnrichResult, rules_only: bool) -> None:
    s.rows_processed += 1
    s.method_counts[r.method] = s.method_counts.get(r.method, 0) + 1
    if r.fallback:
        s.rows_fallback += 1
    else:
        s.rows_enriched += 1
    if r.method == "llm+repair":
        s.rows_repaired += 1
    if r.cached:
        s.cache_hits += 1
        return
    s.rows_computed += 1
    s.rounds_total += r.rounds
    s.prompt_tokens += r.prompt_tokens
    s.completion_tokens += r.completion_tokens


def load_enriched_texts(path: str | Path) -> dict[str, str]:
    """id → enriched text, from an enriched.jsonl (what the embed stage reads)."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as fp:
        for line in fp:
            if line.strip():
                row = json.loads(line)
                out[str(row["id"])] = row["text"]
    return out
