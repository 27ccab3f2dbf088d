"""Recommendation building blocks: event weights, interest clustering, interleaving (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from shopclip.serve.recommend import cluster_interests, event_weights, interleave


def blob(center: np.ndarray, n: int, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    x = center[None, :] + noise * rng.standard_normal((n, center.size))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_event_weights_decay_with_age_and_scale_with_weight():
    w = event_weights(3, [1.0, 1.0, 2.0], [0.0, 1800.0, 3600.0], half_life_s=1800)
    assert w == pytest.approx([0.25, 0.5, 2.0])
    by_order = event_weights(3, None, None, half_life_events=1)
    assert by_order == pytest.approx([0.25, 0.5, 1.0])  # no timestamps: list order is time order


def test_two_separate_interests_stay_apart_one_interest_stays_whole():
    rng = np.random.default_rng(0)
    a, b = np.eye(16)[0], np.eye(16)[1]
    x = np.concatenate([blob(a, 4, rng), blob(b, 3, rng)])
    interests = cluster_interests(x, np.ones(7), threshold=0.5)
    assert [sorted(i.members) for i in interests] == [[0, 1, 2, 3], [4, 5, 6]]
    assert interests[0].weight == pytest.approx(4.0)
    assert float(interests[0].vector @ a) > 0.99 and float(interests[1].vector @ b) > 0.99
    single = cluster_interests(blob(a, 5, rng), np.ones(5), threshold=0.5)
    assert len(single) == 1 and sorted(single[0].members) == [0, 1, 2, 3, 4]


def test_average_linkage_does_not_chain_through_a_bridge():
    a, b = np.eye(8)[0], np.eye(8)[1]
    bridge = (a + b) / np.linalg.norm(a + b)  # cos 0.71 to both ends, ends 0 to each other
    x = np.stack([a, a, bridge, b, b])
    groups = [sorted(i.members) for i in cluster_interests(x, np.ones(5), threshold=0.6)]
    assert [0, 1, 2, 3, 4] not in groups and len(groups) >= 2


def test_max_interests_keeps_the_heaviest():
    x = np.eye(6)[:4]
    interests = cluster_interests(x, np.array([1.0, 5.0, 3.0, 0.5]), threshold=0.9, max_interests=2)
    assert [i.members for i in interests] == [[1], [2]]


def test_weighted_centroid_leans_to_the_heavier_item():
    x = np.stack([np.eye(4)[0], (np.eye(4)[0] + np.eye(4)[1]) / np.sqrt(2)])
    (it,) = cluster_interests(x, np.array([10.0, 1.0]), threshold=0.5)
    assert float(it.vector @ np.eye(4)[0]) > float(it.vector @ np.eye(4)[1])


def test_interleave_shares_slots_and_dedupes():
    got = interleave([["a1", "a2", "a3", "a4"], ["b1", "b2", "b3", "b4"]], [1, 1], 4)
    assert [x for x, _ in got] == ["a1", "b1", "a2", "b2"]
    got = interleave([list("abcdefgh"), list("ABCDEFGH")], [3, 1], 8)
    assert sum(src == 0 for _, src in got) == 6  # 75 % of the slots
    got = interleave([["x", "y"], ["x", "z"]], [1, 1], 3)
    assert [x for x, _ in got] == ["x", "z", "y"]  # "x" once; its list's turn goes to the next item
    got = interleave([["p"], ["q", "r", "s"]], [5, 1], 4)
    assert [x for x, _ in got] == ["p", "q", "r", "s"]  # an exhausted list hands its slots over
    assert interleave([[], []], [1, 1], 3) == []
