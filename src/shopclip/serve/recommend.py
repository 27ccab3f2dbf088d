"""Session recommendations that keep a shopper's separate interests apart.

Averaging a history of shoes and lamps gives a vector close to neither, so the
history is first grouped into interests (average-linkage agglomerative clustering on
cosine similarity), each interest is searched on its own, and the ranked lists are
interleaved in proportion to how much weight each interest carries. Recency and
explicit weights (a purchase counts more than a view) decide that weight.

Pure numpy; the server supplies the vectors and the search function.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Interest:
    """One group of related history items: who is in it, how much it counts, what to search with."""

    members: list[int]  # positions in the (deduplicated) history
    weight: float
    vector: np.ndarray  # weighted, L2-normalised centroid of the members


def event_weights(
    n: int,
    weights: Sequence[float] | None = None,
    timestamps: Sequence[float] | None = None,
    *,
    half_life_s: float = 1800.0,
    half_life_events: float = 10.0,
) -> np.ndarray:
    """Each event's weight times a recency decay, so the latest clicks steer the session.

    With timestamps, an event loses half its weight every `half_life_s` seconds before the
    newest one; without, the list order is the time order and the decay counts events.
    """
    base = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if timestamps is not None:
        ts = np.asarray(timestamps, dtype=np.float64)
        age = (ts.max() - ts) / max(half_life_s, 1e-9) if n else ts
    else:
        age = (n - 1 - np.arange(n)) / max(half_life_events, 1e-9)
    return base * np.power(0.5, age)


def cluster_interests(
    vectors: np.ndarray, weights: np.ndarray, threshold: float, max_interests: int = 4
) -> list[Interest]:
    """Average-linkage clustering: merge the two closest groups while their mean cosine ≥ threshold.

    Average linkage (not single) stops a chain of look-alikes from gluing shoes to lamps;
    a fixed threshold (not a fixed k) lets a one-topic session stay one interest. Only the
    `max_interests` heaviest interests are kept: a stray click should not claim a slot.
    """
    n = len(vectors)
    if n == 0:
        return []
    v = np.asarray(vectors, dtype=np.float64)
    sim = v @ v.T
    groups: list[list[int]] = [[i] for i in range(n)]
    link = sim.copy()  # mean similarity between groups (Lance-Williams update below)
    np.fill_diagonal(link, -np.inf)
    alive = np.ones(n, dtype=bool)
    while alive.sum() > 1:
        masked = np.where(alive[:, None] & alive[None, :], link, -np.inf)
        a, b = np.unravel_index(int(np.argmax(masked)), masked.shape)
        if masked[a, b] < threshold:
            break
        na, nb = len(groups[a]), len(groups[b])
        merged = (link[a] * na + link[b] * nb) / (na + nb)
        link[a, :] = merged
        link[:, a] = merged
        link[a, a] = -np.inf
        groups[a] = groups[a] + groups[b]
        groups[b] = []
        alive[b] = False
    out = []
    for g in (groups[i] for i in np.flatnonzero(alive)):
        w = np.asarray(weights, dtype=np.float64)[g]
        centroid = (w[:, None] * v[g]).sum(axis=0)
        norm = np.linalg.norm(centroid)
        if norm < 1e-12:  # weights cancelled out: fall back to the plain mean
            centroid, norm = v[g].mean(axis=0), np.linalg.norm(v[g].mean(axis=0))
        out.append(Interest(sorted(g), float(w.sum()), (centroid / max(norm, 1e-12)).astype(np.float32)))
    out.sort(key=lambda it: (-it.weight, it.members[0]))
    return out[:max_interests]


def interleave(
    ranked: Sequence[Sequence[Hashable]],
    shares: Sequence[float],
    k: int,
    key: Callable[[Hashable], Hashable] = lambda x: x,
) -> list[tuple[Hashable, int]]:
    """Merge ranked lists into k items, list i getting about shares[i] of the slots.

    Smooth weighted round-robin: every turn each list earns its share, the richest list
    with something left gives its next unseen item and pays one full turn. Returns
    (item, list index) so callers can say which interest an item came from.
    """
    total = float(sum(shares)) or 1.0
    share = [max(float(s), 0.0) / total for s in shares]
    credit = [0.0] * len(ranked)
    pos = [0] * len(ranked)
    seen: set[Hashable] = set()
    out: list[tuple[Hashable, int]] = []
    while len(out) < k:
        live = [i for i in range(len(ranked)) if pos[i] < len(ranked[i])]
        if not live:
            break
        for i in live:
            credit[i] += share[i] if any(share[j] > 0 for j in live) else 1.0
        i = max(live, key=lambda j: (credit[j], -j))
        credit[i] -= 1.0
        while pos[i] < len(ranked[i]):
            item = ranked[i][pos[i]]
            pos[i] += 1
            if key(item) not in seen:
                seen.add(key(item))
                out.append((item, i))
                break
    return out
