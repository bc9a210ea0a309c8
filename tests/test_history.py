"""Deployment history, pure: what was in force at a time T, from hand-written events."""

from __future__ import annotations

from typing import Any

import pytest

from router.control.history import describe_state, in_force

BG = {"active": "blue", "version": "v1"}


def event(ts: str, kind: str, revision: str | None, routes: dict[str, Any],
          source: str = "rollout") -> dict[str, Any]:
    return {"ts": f"2026-11-26T{ts}Z", "event": kind, "revision": revision, "source": source,
            "routes": routes, "errors": []}


def step(ts: str, kind: str, canary: float, index: int, status: str, steps: int = 3,
         revision: str = "r1") -> dict[str, Any]:
    """A rollout event as ``rollout.Controller._event`` writes it."""
    return event(ts, kind, revision, {"fraud": {"weights": {"v1": 100 - canary, "v2": canary},
                                                "step": index, "steps": steps,
                                                "status": status}})


# One route under a rollout (steps 10, 50, 100), one blue/green route beside it.
EVENTS = [
    step("10:00:00.000", "rollout_step", 10, 0, "running"),  # written by the transform...
    event("10:00:00.001", "applied", "r1",                   # ...just before its apply
          {"fraud": {"weights": {"v1": 90, "v2": 10}}, "bg": BG}, source="file"),
    step("10:01:00.000", "rollout_step", 50, 1, "running"),
    event("10:01:30.000", "rejected", None, {}, source="file"),
    step("10:02:00.000", "paused", 50, 1, "paused"),
    step("10:03:00.000", "resumed", 50, 1, "running"),
    step("10:04:00.000", "promoted", 100, 2, "promoted"),
    # the block edited (steps 20, 100): the rollout starts again with the new revision
    step("10:05:00.000", "rollout_step", 20, 0, "running", steps=2),
    event("10:05:00.001", "applied", "r2",
          {"fraud": {"weights": {"v1": 80, "v2": 20}}, "bg": BG}, source="api"),
    step("10:06:00.000", "rolled_back", 0, 0, "rolled_back", steps=2, revision="r2"),
    # the rollout block replaced by a split; the blue/green route removed
    event("10:07:00.000", "applied", "r3", {"fraud": {"weights": {"v1": 70, "v2": 30}}},
          source="file"),
    event("10:08:00.000", "paused", "r3", {"bg": {"weights": {"v1": 0, "v2": 100}}}),
]

CASES = [
    # at, fraud weights, event that set them, its revision, step
    ("10:00:00.500", {"v1": 90, "v2": 10}, "applied", "r1", None),
    ("10:01:00.000", {"v1": 50, "v2": 50}, "rollout_step", "r1", 1),
    ("10:01:45.000", {"v1": 50, "v2": 50}, "rollout_step", "r1", 1),
    ("10:02:30.000", {"v1": 50, "v2": 50}, "paused", "r1", 1),
    ("10:03:30.000", {"v1": 50, "v2": 50}, "resumed", "r1", 1),
    ("10:04:30.000", {"v1": 0, "v2": 100}, "promoted", "r1", 2),
    ("10:05:30.000", {"v1": 80, "v2": 20}, "applied", "r2", None),
    ("10:06:30.000", {"v1": 100, "v2": 0}, "rolled_back", "r2", 0),
    ("10:07:30.000", {"v1": 70, "v2": 30}, "applied", "r3", None),
    ("10:09:00.000", {"v1": 70, "v2": 30}, "applied", "r3", None),
]


@pytest.mark.parametrize(("at", "weights", "kind", "revision", "index"), CASES,
                         ids=["first-apply", "step-at-its-own-ts", "rejected-changes-nothing",
                              "paused", "resumed", "promoted", "block-edited-restarts",
                              "rolled-back", "split-replaces-rollout",
                              "event-for-a-removed-route-changes-nothing"])
def test_weights_in_force(at: str, weights: dict[str, float], kind: str, revision: str,
                          index: int | None) -> None:
    live = in_force(EVENTS, f"2026-11-26T{at}Z")
    assert live is not None
    fraud = live["routes"]["fraud"]
    assert fraud["weights"] == weights
    assert fraud["set_by"]["event"] == kind
    assert fraud["set_by"]["revision"] == revision
    assert fraud["set_by"].get("step") == index
    applied = [e for e in EVENTS if e["event"] == "applied" and e["ts"] <= live["at"]][-1]
    assert (live["revision"], live["ts"], live["source"]) == \
        (applied["revision"], applied["ts"], applied["source"])


def test_other_routes_keep_their_applied_state() -> None:
    live = in_force(EVENTS, "2026-11-26T10:04:30.000Z")
    assert live is not None
    assert live["routes"]["bg"] == {**BG, "set_by": {
        "event": "applied", "ts": "2026-11-26T10:00:00.001Z", "revision": "r1",
        "source": "file"}}
    later = in_force(EVENTS, "2026-11-26T10:09:00.000Z")
    assert later is not None and set(later["routes"]) == {"fraud"}


def test_nothing_applied_yet() -> None:
    assert in_force(EVENTS, "2026-11-26T09:59:59.000Z") is None
    assert in_force([], "2026-11-26T10:00:00.000Z") is None


@pytest.mark.parametrize(("at", "text"), [
    ("10:00:00.500", "v1 90, v2 10 (applied rev r1 at 2026-11-26T10:00:00.001Z)"),
    ("10:01:10.000", "v1 50, v2 50 (rollout step 2/3 at 2026-11-26T10:01:00.000Z)"),
    ("10:02:30.000", "v1 50, v2 50 (rollout paused at 2026-11-26T10:02:00.000Z, step 2/3)"),
    ("10:06:30.000", ("v1 100, v2 0 (rollout rolled back at 2026-11-26T10:06:00.000Z, "
                      "step 1/2)")),
], ids=["applied", "step", "paused", "rolled-back"])
def test_describe_state(at: str, text: str) -> None:
    live = in_force(EVENTS, f"2026-11-26T{at}Z")
    assert live is not None
    assert describe_state(live["routes"]["fraud"]) == text


def test_describe_blue_green_and_old_events_without_step_count() -> None:
    live = in_force(EVENTS, "2026-11-26T10:00:00.500Z")
    assert live is not None
    assert describe_state(live["routes"]["bg"]) == \
        "active blue (v1) (applied rev r1 at 2026-11-26T10:00:00.001Z)"
    old = {"weights": {"v1": 50.0, "v2": 50.0},
           "set_by": {"event": "rollout_step", "ts": "T", "step": 1}}
    assert describe_state(old) == "v1 50, v2 50 (rollout step 2 at T)"
