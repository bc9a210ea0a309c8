"""Progressive rollout: step the canary's weight, judge it on live evidence, promote or fail.

Pieces:
- ``Evidence`` (the seam): per route and arm (baseline, canary) since the step began:
  requests, errors (status >= 500), latency samples, shadow comparisons of the canary, and
  outcomes joined by request id. ``LocalEvidence`` collects it from this process's traffic
  (each replica judges its own); another source (Prometheus, say) can implement the same
  ``arms`` call without touching the statistics.
- ``judge`` (pure, SciPy; README.md "Progressive rollout"): a check *fails* when data show harm
  at the given alpha: one-sided two-proportion test of canary error rate > baseline +
  max_increase; bootstrap CI of the p99 latency ratio (p90 below 2,000 samples per arm)
  above max_ratio; Wilson upper bound of shadow agreement below min; Wilson upper bound of
  the canary's outcome rate below the baseline's rate - max_drop.
- ``Controller``: at most once a second, never before step_min_s and step_min_requests:
  promote to the next step when no check fails at alpha 0.05; at any time after 50 canary
  requests, fail (rollback or pause) when a check fails at alpha 0.001. State persists in
  ``<state_dir>/rollouts.json`` keyed by the rollout block's hash; every transition goes to
  the deployment history with its evidence. The controller owns the route's weights: it
  rewrites the snapshot's split (baseline first, canary last) and swaps it whole.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..config import Live, Route, Snapshot
from ..timefmt import iso
from .evidence import Arm, Evidence
from .history import History
from .judge import judge

log = logging.getLogger("model_router.rollout")

ALPHA_PROMOTE = 0.05
ALPHA_HARM = 0.001
EARLY_MIN_CANARY = 50


# -- the controller ----------------------------------------------------------------------------

RUNNING, PAUSED, PROMOTED, ROLLED_BACK, ABORTED = ("running", "paused", "promoted",
                                                   "rolled_back", "aborted")


@dataclass
class RolloutState:
    route: str
    key: str
    step: int
    weight: float
    status: str
    step_started: float
    updated: float

    def public(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Controller:
    """Owns the weights of every route with a ``rollout`` block."""

    def __init__(self, state_dir: Path, history: History, evidence: Evidence,
                 metrics: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.path = state_dir / "rollouts.json"
        self.history = history
        self.evidence = evidence
        self.metrics = metrics
        self.clock = clock
        self.states: dict[str, RolloutState] = self._load()
        self.live: Live | None = None    # the snapshot in force, set by the app
        self.refresh: Callable[[], None] | None = None  # the reloader's, set by the app
        self._last_judged: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"<Controller {[(s.route, s.weight, s.status) for s in self.states.values()]}>"

    # -- persistence -----------------------------------------------------------------------

    def _load(self) -> dict[str, RolloutState]:
        try:
            raw = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return {k: RolloutState(**v) for k, v in raw.items()}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"rollouts.json.tmp{os.getpid()}")
        tmp.write_bytes(orjson.dumps({k: s.public() for k, s in self.states.items()}))
        os.replace(tmp, self.path)

    # -- weights ---------------------------------------------------------------------------

    def transform(self, snapshot: Snapshot) -> Snapshot:
        """Set every rollout route's split from its state (new block: start at step 0)."""
        routes = []
        changed = False
        for route in snapshot.routes:
            if route.rollout is None:
                routes.append(route)
                continue
            state = self.states.get(route.name)
            if state is None or state.key != route.rollout.key:
                now = self.clock()
                state = RolloutState(route=route.name, key=route.rollout.key, step=0,
                                     weight=route.rollout.steps[0], status=RUNNING,
                                     step_started=now, updated=now)
                self.states[route.name] = state
                self.evidence.reset(route.name)
                self._save()
                self._event("rollout_step", route, state, {"started": True})
            self.evidence.watch(route)
            split, bounds = route.rollout.split(state.weight)
            routes.append(dataclasses.replace(route, split=split, bounds=bounds))
            self.metrics.rollout_step.labels(route.name).set(state.weight)
            changed = True
        if not changed:
            return snapshot
        return dataclasses.replace(snapshot, routes=tuple(routes))

    def _apply(self) -> None:
        """Swap in the live snapshot with the current weights (one reference)."""
        if self.live is not None and self.refresh is not None:
            self.refresh()  # the reloader reruns the transforms, this one included
            for route in self.live.snapshot.routes:
                if route.rollout is not None:
                    for version, weight in route.weights().items():
                        self.metrics.traffic_weight.labels(route.name, version).set(weight)

    def _event(self, event: str, route: Route, state: RolloutState,
               evidence: dict[str, Any]) -> None:
        assert route.rollout is not None  # events are only about routes with a rollout
        self.history.append({"ts": iso(self.clock()), "event": event,
                             "revision": self.live.snapshot.revision if self.live else None,
                             "source": "rollout", "routes": {route.name: {
                                 "weights": {route.rollout.baseline: 100 - state.weight,
                                             route.rollout.canary: state.weight},
                                 "step": state.step, "steps": len(route.rollout.steps),
                                 "status": state.status}},
                             "errors": [], "evidence": evidence})
        log.info("rollout %s: %s (canary %s%%, %s)", route.name, event, state.weight,
                 state.status)

    # -- judging -----------------------------------------------------------------------------

    def _due(self) -> list[tuple[Route, RolloutState, Arm, Arm]]:
        """Running rollouts not judged within the last second, with copies of their arms."""
        due: list[tuple[Route, RolloutState, Arm, Arm]] = []
        if self.live is None:
            return due
        now = self.clock()
        for route in self.live.snapshot.routes:
            state = self.states.get(route.name)
            if route.rollout is None or state is None or state.status != RUNNING:
                continue
            if now - self._last_judged.get(route.name, float("-inf")) < 1.0:
                continue
            self._last_judged[route.name] = now
            base, canary = self.evidence.arms(route.name)
            due.append((route, state, dataclasses.replace(base, latencies=list(base.latencies)),
                        dataclasses.replace(canary, latencies=list(canary.latencies))))
        return due

    def _verdict(self, route: Route, state: RolloutState, base: Arm, canary: Arm,
                 now: float) -> tuple[str, dict[str, Any]] | None:
        """("fail" | "advance", evidence) or None: pure statistics, safe in a thread."""
        rollout = route.rollout
        assert rollout is not None
        evidence = {"baseline": base.summary(), "canary": canary.summary(),
                    "step_elapsed_s": now - state.step_started}
        if canary.requests >= EARLY_MIN_CANARY:
            harm = judge(rollout, base, canary, ALPHA_HARM)
            if any(r["failed"] for r in harm):
                return "fail", {**evidence, "alpha": ALPHA_HARM, "checks": harm}
        if now - state.step_started < rollout.step_min_s or \
                canary.requests < rollout.step_min_requests:
            return None
        results = judge(rollout, base, canary, ALPHA_PROMOTE)
        kind = "fail" if any(r["failed"] for r in results) else "advance"
        return kind, {**evidence, "alpha": ALPHA_PROMOTE, "checks": results}

    def _enact(self, route: Route, state: RolloutState, key: str,
               verdict: tuple[str, dict[str, Any]] | None) -> None:
        if verdict is None or state.status != RUNNING or state.key != key:
            return  # nothing to do, or a manual action or a new block got there first
        kind, evidence = verdict
        if kind == "fail":
            self._fail(route, state, evidence)
        else:
            self._advance(route, state, evidence)

    def tick(self) -> None:
        """Judge every due rollout now, synchronously (tests drive it with a fake clock)."""
        for route, state, base, canary in self._due():
            self._enact(route, state, state.key,
                        self._verdict(route, state, base, canary, self.clock()))

    async def run(self) -> None:
        """Once a second: copy the evidence on the loop, judge in a thread, act on the loop."""
        while True:
            await asyncio.sleep(1.0)
            try:
                for route, state, base, canary in self._due():
                    key = state.key
                    verdict = await asyncio.to_thread(self._verdict, route, state, base,
                                                      canary, self.clock())
                    self._enact(route, state, key, verdict)
            except Exception:  # noqa: BLE001 - judging must not stop the router
                log.exception("rollout judging failed")

    def _advance(self, route: Route, state: RolloutState, evidence: dict[str, Any]) -> None:
        rollout = route.rollout
        assert rollout is not None
        now = self.clock()
        if state.step + 1 >= len(rollout.steps) or rollout.steps[state.step] >= 100:
            state.weight, state.status = 100.0, PROMOTED
            event = "promoted"
        else:
            state.step += 1
            state.weight = rollout.steps[state.step]
            event = "rollout_step"
        state.step_started = state.updated = now
        self.evidence.reset(route.name)
        self._save()
        self._apply()
        self._event(event, route, state, evidence)

    def _fail(self, route: Route, state: RolloutState, evidence: dict[str, Any]) -> None:
        rollout = route.rollout
        assert rollout is not None
        state.updated = self.clock()
        if rollout.on_failure == "pause":
            state.status = PAUSED
            event = "paused"
        else:
            state.status, state.weight = ROLLED_BACK, 0.0
            event = "rolled_back"
        self._save()
        self._apply()
        self._event(event, route, state, evidence)

    # -- manual actions ----------------------------------------------------------------------

    def act(self, route_name: str, action: str) -> RolloutState:
        """pause | resume | promote (to 100 now) | abort (canary to 0). KeyError if none."""
        route = self.live.snapshot.route(route_name) if self.live else None
        state = self.states.get(route_name)
        if route is None or route.rollout is None or state is None:
            raise KeyError(route_name)
        now = self.clock()
        if action == "pause":
            state.status = PAUSED
            event = "paused"
        elif action == "resume":
            if state.status not in (PAUSED, RUNNING):
                raise ValueError(f"cannot resume a rollout that is {state.status}")
            state.status, state.step_started = RUNNING, now
            self.evidence.reset(route_name)
            event = "resumed"
        elif action == "promote":
            state.status, state.weight, state.step = PROMOTED, 100.0, len(route.rollout.steps) - 1
            event = "promoted"
        elif action == "abort":
            state.status, state.weight = ABORTED, 0.0
            event = "aborted"
        else:
            raise ValueError(f"unknown action {action}")
        state.updated = now
        self._save()
        self._apply()
        base, canary = self.evidence.arms(route_name)
        self._event(event, route, state, {"manual": True, "baseline": base.summary(),
                                          "canary": canary.summary()})
        return state

    def status(self) -> list[dict[str, Any]]:
        out = []
        for route in (self.live.snapshot.routes if self.live else ()):
            state = self.states.get(route.name)
            if route.rollout is None or state is None:
                continue
            base, canary = self.evidence.arms(route.name)
            out.append({**state.public(), "baseline": route.rollout.baseline,
                        "canary": route.rollout.canary, "steps": list(route.rollout.steps),
                        "evidence": {"baseline": base.summary(), "canary": canary.summary()}})
        return out
