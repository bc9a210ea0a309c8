"""Bucket bounds, written once (DESIGN.md "Routing rules"): version i owns buckets
``[round(100*sum(w[:i])), round(100*sum(w[:i+1])))`` of 10000, in the listed order. A ``split``
and a rollout's weights compile through the same ``bucket_bounds``. Pure: no files, no sockets.
"""

from __future__ import annotations

import pytest

from router.config import BUCKETS, Checks, Rollout, bucket_bounds


@pytest.mark.parametrize(("weights", "bounds"), [
    ((100,), (10_000,)),
    ((95, 5), (9_500, 10_000)),
    ((5, 95), (500, 10_000)),
    ((0, 100), (0, 10_000)),
    ((100, 0), (10_000, 10_000)),
    ((50, 25, 25), (5_000, 7_500, 10_000)),
    ((33.33, 33.33, 33.34), (3_333, 6_666, 10_000)),
    ((0.004, 99.996), (0, 10_000)),          # under a bucket rounds away
    ((0.006, 99.994), (1, 10_000)),          # over half a bucket owns one
    ((99.5, 0.5), (9_950, 10_000)),
    ((), ()),
], ids=["one", "95-5", "5-95", "zero-first", "zero-last", "three", "thirds", "tiny-down",
        "tiny-up", "half-percent", "empty"])
def test_bounds_table(weights: tuple[float, ...], bounds: tuple[int, ...]) -> None:
    assert bucket_bounds(weights) == bounds


@pytest.mark.parametrize("weights", [(95, 5), (33.33, 33.33, 33.34), (12.5, 37.5, 50),
                                     (0.01, 0.02, 99.97), (10,) * 10],
                         ids=["two", "thirds", "eighths", "hundredths", "tenths"])
def test_bounds_are_the_contract_formula(weights: tuple[float, ...]) -> None:
    bounds = bucket_bounds(weights)
    for i in range(len(weights)):
        low = 0 if i == 0 else bounds[i - 1]
        assert low == round(100 * sum(weights[:i]))
        assert bounds[i] == round(100 * sum(weights[:i + 1]))
    assert bounds[-1] == BUCKETS


def _rollout() -> Rollout:
    return Rollout(baseline="v1", canary="v2", steps=(1, 5, 25, 50, 100), key="k",
                   checks=Checks())


@pytest.mark.parametrize(("canary", "bounds"), [
    (0, (10_000, 10_000)), (1, (9_900, 10_000)), (5, (9_500, 10_000)),
    (12.345, (8_766, 10_000)), (50, (5_000, 10_000)), (100, (0, 10_000)),
], ids=["0", "1", "5", "fraction", "50", "100"])
def test_rollout_split_lists_baseline_then_canary(canary: float,
                                                  bounds: tuple[int, ...]) -> None:
    entries, got = _rollout().split(canary)
    assert entries == (("v1", 100.0 - canary), ("v2", canary))
    assert got == bounds == bucket_bounds(w for _, w in entries)


def test_a_growing_canary_only_gains_buckets() -> None:
    rollout = _rollout()
    lows = [rollout.split(step)[1][0] for step in (0, *rollout.steps)]
    assert lows == sorted(lows, reverse=True)  # the canary owns [low, 10000): it only grows
