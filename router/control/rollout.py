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
import math
import os
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from ..config import Live, Rollout, Route, Snapshot
from ..stats import wilson
from ..timefmt import iso
from .history import History

log = logging.getLogger("model_router.rollout")

ALPHA_PROMOTE = 0.05
ALPHA_HARM = 0.001
EARLY_MIN_CANARY = 50
P99_MIN_SAMPLES = 2000
LATENCY_KEEP = 20_000       # latency samples kept per arm (uniform reservoir beyond)
RECENT_IDS = 100_000        # request ids remembered for joining outcomes


# -- evidence ----------------------------------------------------------------------------------

@dataclass
class Arm:
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    shadow_compared: int = 0
    shadow_agreed: float = 0.0
    outcome_n: int = 0
    outcome_k: int = 0
    _seen: int = 0

    def add_latency(self, value: float, rng: random.Random) -> None:
        self._seen += 1
        if len(self.latencies) < LATENCY_KEEP:
            self.latencies.append(value)
        else:
            j = rng.randrange(self._seen)
            if j < LATENCY_KEEP:
                self.latencies[j] = value

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": self.errors / self.requests if self.requests else None,
                "latency_samples": len(self.latencies), "shadow_compared": self.shadow_compared,
                "outcome_n": self.outcome_n, "outcome_k": self.outcome_k}


class Evidence(Protocol):
    def watch(self, route: Route) -> None:
        """Start (or keep) collecting for a rollout route's baseline and canary."""

    def arms(self, route: str) -> tuple[Arm, Arm]:
        """(baseline, canary) evidence of the current step."""

    def reset(self, route: str) -> None:
        """Start a new step's evidence."""


class LocalEvidence:
    """Evidence from this process's own exchanges, shadow comparisons and feedback."""

    def __init__(self) -> None:
        self._arms: dict[str, tuple[Arm, Arm]] = {}
        self._roles: dict[str, tuple[str, str, str | None]] = {}  # route -> baseline, canary, outcome
        self._recent: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"<LocalEvidence routes={list(self._arms)}>"

    def watch(self, route: Route) -> None:
        assert route.rollout is not None
        r = route.rollout
        roles = (r.baseline, r.canary, r.checks.outcome_name)
        if self._roles.get(route.name) != roles:
            self._roles[route.name] = roles
            self._arms[route.name] = (Arm(), Arm())

    def arms(self, route: str) -> tuple[Arm, Arm]:
        return self._arms.setdefault(route, (Arm(), Arm()))

    def reset(self, route: str) -> None:
        self._arms[route] = (Arm(), Arm())

    def _arm(self, route: str, version: str | None) -> tuple[Arm | None, int]:
        roles = self._roles.get(route)
        if roles is None or version is None:
            return None, -1
        if version == roles[0]:
            return self.arms(route)[0], 0
        if version == roles[1]:
            return self.arms(route)[1], 1
        return None, -1

    def exchange(self, ex: Any) -> None:
        """Proxy observer: one finished primary exchange."""
        arm, index = self._arm(ex.route.name, ex.version)
        if arm is None or ex.status == 0:
            return
        arm.requests += 1
        if ex.status >= 500:
            arm.errors += 1
        arm.add_latency(ex.latency_s, self._rng)
        self._recent[ex.request_id] = (ex.route.name, index)
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)

    def shadow(self, route: str, version: str, result: dict[str, Any] | None) -> None:
        """Shadows observer: a comparison of a shadow copy with its primary."""
        roles = self._roles.get(route)
        if roles is None or version != roles[1] or not result:
            return
        agreement = result.get("agreement")
        if agreement is None:
            agreement = 1.0 if result.get("match") else 0.0
        canary = self.arms(route)[1]
        canary.shadow_compared += 1
        canary.shadow_agreed += agreement

    def feedback(self, request_id: str, outcome: dict[str, Any]) -> None:
        found = self._recent.get(request_id)
        if found is None:
            return
        route, index = found
        name = self._roles.get(route, (None, None, None))[2]
        value = outcome.get(name) if name else None
        if isinstance(value, bool):
            arm = self.arms(route)[index]
            arm.outcome_n += 1
            arm.outcome_k += value


# -- statistics (pure) ---------------------------------------------------------------------------

def _wilson(k: float, n: int, alpha: float) -> tuple[float, float]:
    """Two-sided (1 - 2 alpha) Wilson interval: each bound is a one-sided alpha test."""
    bounds = wilson(k, n, 1 - 2 * alpha)
    assert bounds is not None  # callers check n > 0
    return bounds


def check_error_rate(base: Arm, canary: Arm, max_increase: float, alpha: float,
                     ) -> dict[str, Any]:
    """One-sided two-proportion z-test of H0: canary <= baseline + max_increase."""
    if not base.requests or not canary.requests:
        return {"check": "error_rate", "failed": False, "reason": "no data"}
    pb, pc = base.errors / base.requests, canary.errors / canary.requests
    se = math.sqrt(max(pb * (1 - pb), 1e-12) / base.requests
                   + max(pc * (1 - pc), 1e-12) / canary.requests)
    z = (pc - pb - max_increase) / se
    from scipy import stats  # loaded when a rollout is first judged, not by serving
    p_value = float(stats.norm.sf(z))
    return {"check": "error_rate", "failed": p_value < alpha, "baseline": pb, "canary": pc,
            "max_increase": max_increase, "z": z, "p_value": p_value}


def check_latency(base: Arm, canary: Arm, max_ratio: float, alpha: float,
                  seed: int = 0) -> dict[str, Any]:
    """Bootstrap CI of the p99 ratio (p90 below 2,000 samples per arm): fail above max_ratio."""
    nb, nc = len(base.latencies), len(canary.latencies)
    if nb < 20 or nc < 20:
        return {"check": "latency", "failed": False, "reason": "fewer than 20 samples"}
    q = 99 if min(nb, nc) >= P99_MIN_SAMPLES else 90
    from scipy import stats

    def ratio(c: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.percentile(c, q, axis=axis) / np.maximum(np.percentile(b, q, axis=axis),
                                                           1e-9)

    c, b = np.asarray(canary.latencies), np.asarray(base.latencies)
    result = stats.bootstrap((c, b), ratio, n_resamples=999, confidence_level=1 - 2 * alpha,
                             method="percentile", vectorized=True,
                             random_state=np.random.default_rng(seed))
    low = float(result.confidence_interval.low)
    return {"check": "latency", "quantile": f"p{q}", "failed": low > max_ratio,
            "ratio": float(ratio(c, b)), "ci_low": low,
            "ci_high": float(result.confidence_interval.high), "max_ratio": max_ratio}


def check_agreement(canary: Arm, minimum: float, alpha: float) -> dict[str, Any]:
    if not canary.shadow_compared:
        return {"check": "shadow_agreement", "failed": False, "reason": "no shadow of canary"}
    low, high = _wilson(canary.shadow_agreed, canary.shadow_compared, alpha)
    rate = canary.shadow_agreed / canary.shadow_compared
    return {"check": "shadow_agreement", "failed": high < minimum, "agreement": rate,
            "wilson_low": low, "wilson_high": high, "min": minimum,
            "n": canary.shadow_compared}


def check_outcome(base: Arm, canary: Arm, name: str, max_drop: float,
                  alpha: float) -> dict[str, Any]:
    if not base.outcome_n or not canary.outcome_n:
        return {"check": "outcome", "name": name, "failed": False, "reason": "no feedback"}
    rate_b = base.outcome_k / base.outcome_n
    low, high = _wilson(canary.outcome_k, canary.outcome_n, alpha)
    return {"check": "outcome", "name": name, "failed": high < rate_b - max_drop,
            "baseline": rate_b, "canary": canary.outcome_k / canary.outcome_n,
            "wilson_low": low, "wilson_high": high, "max_drop": max_drop,
            "n": canary.outcome_n}


def judge(rollout: Rollout, base: Arm, canary: Arm, alpha: float) -> list[dict[str, Any]]:
    """Every configured check at ``alpha``; each result says whether it failed."""
    c = rollout.checks
    results = []
    if c.error_rate_max_increase is not None:
        results.append(check_error_rate(base, canary, c.error_rate_max_increase, alpha))
    if c.latency_p99_max_ratio is not None:
        results.append(check_latency(base, canary, c.latency_p99_max_ratio, alpha))
    if c.shadow_agreement_min is not None:
        results.append(check_agreement(canary, c.shadow_agreement_min, alpha))
    if c.outcome_name is not None and c.outcome_max_drop is not None:
        results.append(check_outcome(base, canary, c.outcome_name, c.outcome_max_drop, alpha))
    return results


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
