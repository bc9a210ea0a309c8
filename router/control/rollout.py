"""Progressive rollout: step the canary's weight, judge it on evidence, promote or fail.

Pieces:
- ``Evidence`` (the seam, ``evidence``): per route and arm (baseline, canary) of the current
  step: this process's traffic, the supervisor's workers, or Prometheus over a fleet.
- ``judge`` (pure, SciPy; README.md "Progressive rollout"): a check *fails* when data show harm
  at the given alpha; a check without enough data is *insufficient*, never a pass.
- ``States`` (the other seam): where the states persist. ``FileStates``:
  ``<state_dir>/rollouts.json``, this process alone. ``fleet.FleetStates``: the fleet store,
  every write a compare-and-set on the state's generation, the controller's also requiring the
  lease, so only the fleet's leader acts and a deposed one cannot.
- ``Controller``: at most once a second, never before step_min_s and step_min_requests:
  promote to the next step when no check fails at alpha 0.05 and none lacks data; at any time
  after 50 canary requests, fail (rollback or pause) when a check fails at alpha 0.001;
  without enough evidence after ``max_wait_s``, pause with reason ``no_evidence``. Every
  transition goes to the deployment history with its evidence. The controller owns the
  route's weights: it rewrites the snapshot's split (baseline first, canary last) and swaps
  it whole; replicas that do not lead ``adopt`` the states the leader wrote.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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

# -- the state and where it persists ------------------------------------------------------------

STATES = RUNNING, PAUSED, PROMOTED, ROLLED_BACK, ABORTED = (
    "running", "paused", "promoted", "rolled_back", "aborted")
# The manual commands and the states each applies to (DESIGN "Progressive rollout"); any
# other pair is refused with 409 naming the state.
COMMANDS: dict[str, frozenset[str]] = {
    "pause": frozenset({RUNNING}),
    "resume": frozenset({PAUSED}),
    "promote": frozenset({RUNNING, PAUSED}),
    "abort": frozenset({RUNNING, PAUSED}),
}
# The outcome of a write (``store`` uses the same words).
WRITTEN, STALE, NOT_LEADER, UNREACHABLE = "written", "stale", "not_leader", "unreachable"


@dataclass
class RolloutState:
    route: str
    key: str                    # the rollout block's hash: another block is another rollout
    step: int
    weight: float
    status: str
    step_started: float
    updated: float
    generation: int = 0         # 0: not stored yet; every stored write adds one
    window_start: float | None = None  # evidence counts from here (None: not every replica
    #                                    serves the step yet)
    reason: str | None = None   # why it paused, rolled back or was aborted
    # The baseline's figures when the canary went to 100 % (then no baseline traffic is left
    # to compare with): {"requests", "errors"}.
    reference: dict[str, Any] | None = None

    def public(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> RolloutState:
        """From ``public()`` output, ignoring keys this version does not know; TypeError
        when a field is missing or of the wrong type (a corrupt or foreign entry)."""
        names = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in raw.items() if k in names})
        numbers = (state.weight, state.step_started, state.updated)
        if not (isinstance(state.route, str) and isinstance(state.key, str)
                and isinstance(state.status, str) and _integer(state.step)
                and _integer(state.generation)
                and all(isinstance(n, (int, float)) and not isinstance(n, bool)
                        for n in numbers)
                and (state.window_start is None or isinstance(state.window_start, (int, float)))
                and (state.reference is None or isinstance(state.reference, dict))):
            raise TypeError(f"not a rollout state: {dict(raw)!r:.300}")
        return state


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class States(Protocol):
    """Where rollout states persist. ``shared``: False for this process alone (states are
    stored as soon as they exist), True for a fleet (only the leader stores them)."""

    shared: bool

    def load(self) -> dict[str, RolloutState]: ...

    def save_all(self, states: Mapping[str, RolloutState]) -> None: ...

    async def write(self, state: RolloutState, expected: int, manual: bool) -> str:
        """Store ``state`` if the stored generation is still ``expected``: WRITTEN, STALE,
        NOT_LEADER (a controller write by a replica without the lease) or UNREACHABLE."""


class FileStates:
    """``<state_dir>/rollouts.json``, replaced atomically: one process's rollouts."""

    shared = False

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "rollouts.json"
        self._states: dict[str, RolloutState] = {}

    def __repr__(self) -> str:
        return f"<FileStates {self.path}>"

    def load(self) -> dict[str, RolloutState]:
        try:
            raw = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        self._states = {k: RolloutState.of(v) for k, v in raw.items()}
        return dict(self._states)

    def save_all(self, states: Mapping[str, RolloutState]) -> None:
        self._states = dict(states)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"rollouts.json.tmp{os.getpid()}")
        tmp.write_bytes(orjson.dumps({k: s.public() for k, s in self._states.items()}))
        os.replace(tmp, self.path)

    async def write(self, state: RolloutState, expected: int, manual: bool) -> str:
        current = self._states.get(state.route)
        if (current.generation if current else 0) != expected:
            return STALE
        self.save_all({**self._states, state.route: state})
        return WRITTEN


class Following:
    """A worker's states: it never stores any, it adopts its supervisor's."""

    shared = True

    def __repr__(self) -> str:
        return "<Following>"

    def load(self) -> dict[str, RolloutState]:
        return {}

    def save_all(self, states: Mapping[str, RolloutState]) -> None:
        pass

    async def write(self, state: RolloutState, expected: int, manual: bool) -> str:
        return NOT_LEADER


class Conflict(Exception):
    """A manual action that cannot apply now (HTTP 409), or the store is unreachable (503)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


# -- the controller ----------------------------------------------------------------------------

class Controller:
    """Owns the weights of every route with a ``rollout`` block."""

    def __init__(self, states: States, history: History, evidence: Evidence,
                 metrics: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.store = states
        self.history = history
        self.evidence = evidence
        self.metrics = metrics
        self.clock = clock
        self.states: dict[str, RolloutState] = states.load()
        self.leading: Callable[[], bool] = lambda: True  # the fleet replaces it: the lease
        self.live: Live | None = None    # the snapshot in force, set by the app
        self.refresh: Callable[[], None] | None = None  # the reloader's, set by the app
        self._last_judged: dict[str, float] = {}
        self._arms: dict[str, tuple[Arm, Arm]] = {}  # the last evidence seen, for status
        self._series: dict[str, str] = {}  # route -> rollout key whose series exist at 0

    def __repr__(self) -> str:
        return f"<Controller {[(s.route, s.weight, s.status) for s in self.states.values()]}>"

    # -- weights ---------------------------------------------------------------------------

    def transform(self, snapshot: Snapshot) -> Snapshot:
        """Set every rollout route's split from its state (a new block starts at step 0)."""
        routes = []
        changed = False
        rolling = {r.name for r in snapshot.routes if r.rollout is not None}
        for name in [n for n in self._series if n not in rolling]:
            del self._series[name]  # the block is gone: so are its gauges
            self._forget_series(name)
        for route in snapshot.routes:
            if route.rollout is None:
                routes.append(route)
                continue
            state = self.states.get(route.name)
            if state is None or state.key != route.rollout.key:
                # A new block: this process stores it now; in a fleet the leader's next
                # tick does, and until then every replica serves step 0 (the same weights).
                weight = self._begin(route, snapshot.revision).weight \
                    if not self.store.shared else route.rollout.steps[0]
            else:
                weight = state.weight
            self.evidence.watch(route)
            if self._series.get(route.name) != route.rollout.key:
                self._series[route.name] = route.rollout.key
                self.metrics.rollout_series(route.name, route.rollout.baseline,
                                            route.rollout.canary, route.rollout.checks.outcome_name)
            split, bounds = route.rollout.split(weight)
            routes.append(dataclasses.replace(route, split=split, bounds=bounds))
            self.metrics.rollout_step.labels(route.name).set(weight)
            status = state.status if state is not None and state.key == route.rollout.key \
                else RUNNING
            for name in STATES:
                self.metrics.rollout_state.labels(route.name, name).set(name == status)
            changed = True
        if not changed:
            return snapshot
        return dataclasses.replace(snapshot, routes=tuple(routes))

    def _forget_series(self, route: str) -> None:
        for gauge, labels in [(self.metrics.rollout_step, (route,))] + [
                (self.metrics.rollout_state, (route, name)) for name in STATES]:
            try:
                gauge.remove(*labels)
            except KeyError:
                pass

    def _fresh(self, route: Route) -> RolloutState:
        """A new rollout at step 0, one generation past the state it replaces."""
        assert route.rollout is not None
        now = self.clock()
        old = self.states.get(route.name)
        return RolloutState(route=route.name, key=route.rollout.key, step=0,
                            weight=route.rollout.steps[0], status=RUNNING, step_started=now,
                            updated=now, generation=old.generation if old else 0,
                            window_start=now if self.evidence.immediate else None)

    def _begin(self, route: Route, revision: str) -> RolloutState:
        """Start a new rollout and store it now (this process alone: a file). ``revision``:
        the config that starts it (not yet live while its snapshot is transformed)."""
        state = self._fresh(route)
        state.generation += 1
        self.states[route.name] = state
        self.evidence.reset(route.name)
        self.store.save_all(self.states)
        self._event("rollout_step", route, state, {"started": True}, revision=revision)
        return state

    def adopt(self, stored: Mapping[str, Mapping[str, Any]]) -> bool:
        """Take the states another process wrote (the fleet's leader, or a supervisor) where
        their generation is newer than ours; True when one changed (the caller refreshes)."""
        changed = False
        for name, raw in stored.items():
            try:
                theirs = RolloutState.of(raw)
            except TypeError:  # a state missing a field (another version wrote it?)
                log.warning("rollout %s: stored state %r is incomplete; ignored", name, raw)
                continue
            ours = self.states.get(name)
            if ours is not None and ours.generation >= theirs.generation:
                continue
            self.states[name] = theirs
            if ours is None or ours.weight != theirs.weight or ours.status != theirs.status:
                self.evidence.reset(name)
            changed = True
        return changed

    def _apply(self) -> None:
        """Swap in the live snapshot with the current weights (one reference)."""
        if self.live is not None and self.refresh is not None:
            self.refresh()  # the reloader reruns the transforms, this one included
            for route in self.live.snapshot.routes:
                if route.rollout is not None:
                    for version, weight in route.weights().items():
                        self.metrics.traffic_weight.labels(route.name, version).set(weight)

    def _event(self, event: str, route: Route, state: RolloutState,
               evidence: dict[str, Any], revision: str | None = None) -> None:
        assert route.rollout is not None  # events are only about routes with a rollout
        if revision is None and self.live is not None:
            revision = self.live.snapshot.revision
        self.history.append({"ts": iso(self.clock()), "event": event, "revision": revision,
                             "source": "rollout", "routes": {route.name: {
                                 "weights": {route.rollout.baseline: 100 - state.weight,
                                             route.rollout.canary: state.weight},
                                 "step": state.step, "steps": len(route.rollout.steps),
                                 "status": state.status, "generation": state.generation,
                                 "rollout": route.rollout.key,
                                 **({"reason": state.reason} if state.reason else {})}},
                             "errors": [], "evidence": evidence})
        log.info("rollout %s: %s (canary %s%%, %s%s)", route.name, event, state.weight,
                 state.status, f", {state.reason}" if state.reason else "")

    async def _write(self, route: Route, old: RolloutState, new: RolloutState, event: str | None,
                     evidence: dict[str, Any], manual: bool = False) -> str:
        """Store ``new`` in place of ``old`` (compare-and-set); on success make it live and
        record ``event``."""
        new.generation = old.generation + 1
        new.updated = self.clock()
        result = await self.store.write(new, old.generation, manual)
        if result != WRITTEN:
            log.warning("rollout %s: %s not written (%s)", route.name, event or "state", result)
            return result
        if self.states.get(route.name) is old:
            self.states[route.name] = new
        if new.step != old.step or new.status != old.status or new.weight != old.weight:
            self.evidence.reset(route.name)
            if new.status == RUNNING:  # a new step: status shows its evidence, not the last
                self._arms.pop(route.name, None)  # (an end keeps what it was decided on)
        self._apply()  # every stored change goes live (a supervisor sends it to its workers)
        if event is not None:
            self._event(event, route, new, evidence)
        return result

    # -- judging -----------------------------------------------------------------------------

    def _verdict(self, route: Route, state: RolloutState, base: Arm, canary: Arm,
                 now: float) -> tuple[str, dict[str, Any]] | None:
        """("fail" | "advance", evidence) or None (hold): pure statistics, safe in a thread."""
        rollout = route.rollout
        assert rollout is not None and state.window_start is not None
        if state.weight >= 100 and not base.requests and state.reference is not None:
            # No baseline traffic at 100 %: the canary's error rate is held to the baseline's
            # of the step before. Latency is not compared across time (load changes between
            # the two periods would decide it); the steps before judged it side by side.
            base = Arm(requests=int(state.reference.get("requests", 0)),
                       errors=int(state.reference.get("errors", 0)))
            rollout = dataclasses.replace(rollout, checks=dataclasses.replace(
                rollout.checks, latency_p99_max_ratio=None))
        evidence = {"baseline": base.summary(), "canary": canary.summary(),
                    "step_elapsed_s": now - state.window_start}
        if canary.requests >= EARLY_MIN_CANARY:
            harm = judge(rollout, base, canary, ALPHA_HARM)
            if any(r["failed"] for r in harm):
                return "fail", {**evidence, "alpha": ALPHA_HARM, "checks": harm}
        if now - state.window_start < rollout.step_min_s or \
                canary.requests < rollout.step_min_requests:
            return None
        results = judge(rollout, base, canary, ALPHA_PROMOTE)
        if any(r["failed"] for r in results):
            return "fail", {**evidence, "alpha": ALPHA_PROMOTE, "checks": results}
        if any(r.get("insufficient") for r in results):
            return None  # too little data is never a pass
        return "advance", {**evidence, "alpha": ALPHA_PROMOTE, "checks": results}

    async def tick(self) -> None:
        """One round: store new rollouts, open windows, judge what is due, act on verdicts.
        Only while leading; tests drive it with a fake clock."""
        if self.live is None or not self.leading():
            return
        for route in self.live.snapshot.routes:
            if route.rollout is None:
                continue
            try:
                await self._tick_route(route)
            except Exception:  # noqa: BLE001 - one route's failure must not stop the others
                log.exception("rollout %s: judging failed", route.name)
            if not self.leading():
                return

    async def _tick_route(self, route: Route) -> None:
        rollout = route.rollout
        assert rollout is not None
        now = self.clock()
        state = self.states.get(route.name)
        if state is None or state.key != rollout.key or state.generation == 0:
            # A new block, in a fleet: the leader stores it.
            fresh = self._fresh(route)
            placeholder = dataclasses.replace(fresh)  # what the compare-and-set expects
            self.states.setdefault(route.name, placeholder)
            await self._write(route, self.states[route.name], fresh, "rollout_step",
                              {"started": True})
            return
        if state.status != RUNNING:
            return
        if now - self._last_judged.get(route.name, float("-inf")) < 1.0:
            return
        self._last_judged[route.name] = now
        waited = now - state.step_started
        if state.window_start is None:
            if await self.evidence.ready(route, state.weight):
                await self._write(route, state, dataclasses.replace(state, window_start=now),
                                  None, {})
            elif waited >= rollout.wait_limit_s:
                await self._no_evidence(route, state, waited, "not every replica serves "
                                        f"the step's weight {state.weight:g}")
            return
        arms = await self.evidence.collect(route, state.window_start, now)
        if arms is None:
            return  # the source is down: no decision (counted by the source)
        self._arms[route.name] = arms
        verdict = await asyncio.to_thread(self._verdict, route, state, *arms, now)
        if self.states.get(route.name) is not state or not self.leading():
            return  # a manual action, a new block or a lost lease got there first
        if verdict is None:
            if waited >= rollout.wait_limit_s:
                await self._no_evidence(route, state, waited, "too little evidence: canary "
                                        f"{arms[1].requests} requests, baseline "
                                        f"{arms[0].requests}")
            return
        kind, evidence = verdict
        if kind == "fail":
            await self._fail(route, state, evidence)
        else:
            await self._advance(route, state, evidence)

    async def run(self) -> None:
        """Once a second: ``tick`` (judging runs in a thread)."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - judging must not stop the router
                log.exception("rollout judging failed")

    async def _advance(self, route: Route, state: RolloutState, evidence: dict[str, Any]) -> None:
        rollout = route.rollout
        assert rollout is not None
        now = self.clock()
        new = dataclasses.replace(state, step_started=now,
                                  window_start=now if self.evidence.immediate else None)
        if state.step + 1 >= len(rollout.steps) or rollout.steps[state.step] >= 100:
            new.weight, new.status = 100.0, PROMOTED
            event = "promoted"
        else:
            new.step += 1
            new.weight = rollout.steps[new.step]
            event = "rollout_step"
            if new.weight >= 100:
                base = self._arms.get(route.name, (Arm(), Arm()))[0]
                new.reference = {"requests": base.requests, "errors": base.errors}
        await self._write(route, state, new, event, evidence)

    async def _fail(self, route: Route, state: RolloutState, evidence: dict[str, Any]) -> None:
        rollout = route.rollout
        assert rollout is not None
        failed = [r for r in evidence.get("checks", []) if r.get("failed")]
        reason = "; ".join(_describe_check(r) for r in failed) or "a check failed"
        if rollout.on_failure == "pause":
            new = dataclasses.replace(state, status=PAUSED, reason=reason)
            event = "paused"
        else:
            new = dataclasses.replace(state, status=ROLLED_BACK, weight=0.0, reason=reason)
            event = "rolled_back"
        await self._write(route, state, new, event, evidence)

    async def _no_evidence(self, route: Route, state: RolloutState, waited: float,
                           detail: str) -> None:
        new = dataclasses.replace(state, status=PAUSED, reason=f"no_evidence: {detail} "
                                  f"after {waited:.0f} s")
        await self._write(route, state, new, "paused", {"no_evidence": True, "waited_s": waited,
                                                        "detail": detail})

    # -- manual actions ----------------------------------------------------------------------

    async def act(self, route_name: str, action: str, who: str = "admin API") -> RolloutState:
        """pause | resume | promote (to 100 now) | abort (canary to 0). KeyError if the route
        has no rollout; ``Conflict`` when the action does not apply to its state (409) or the
        store cannot be written (503)."""
        route = self.live.snapshot.route(route_name) if self.live else None
        state = self.states.get(route_name)
        if route is None or route.rollout is None or state is None:
            raise KeyError(route_name)
        if state.key != route.rollout.key or state.generation == 0:
            raise Conflict(f"rollout {route_name} is starting: try again in a second")
        if action not in COMMANDS:
            raise Conflict(f"unknown command {action}")
        if state.status not in COMMANDS[action]:
            allowed = " or ".join(sorted(COMMANDS[action]))
            raise Conflict(f"cannot {action} rollout {route_name}: it is {state.status} "
                           f"({action} applies to a rollout that is {allowed})")
        now = self.clock()
        reason = f"{action} by {who}"
        if action == "pause":
            new = dataclasses.replace(state, status=PAUSED, reason=reason)
            event = "paused"
        elif action == "resume":
            new = dataclasses.replace(state, status=RUNNING, step_started=now, reason=None,
                                      window_start=now if self.evidence.immediate else None)
            event = "resumed"
        elif action == "promote":
            new = dataclasses.replace(state, status=PROMOTED, weight=100.0, reason=reason,
                                      step=len(route.rollout.steps) - 1)
            event = "promoted"
        else:
            new = dataclasses.replace(state, status=ABORTED, weight=0.0, reason=reason)
            event = "aborted"
        base, canary = self._arms.get(route_name, (Arm(), Arm()))
        result = await self._write(route, state, new, event, {
            "manual": True, "baseline": base.summary(), "canary": canary.summary()},
            manual=True)
        if result == STALE:
            raise Conflict(f"rollout {route_name} changed meanwhile: look again and retry")
        if result != WRITTEN:
            raise Conflict(f"the fleet store cannot be written ({result}): nothing changed",
                           503)
        return new

    def status(self) -> list[dict[str, Any]]:
        out = []
        for route in (self.live.snapshot.routes if self.live else ()):
            state = self.states.get(route.name)
            if route.rollout is None or state is None:
                continue
            base, canary = self._arms.get(route.name) or _local_arms(self.evidence, route.name)
            out.append({**state.public(), "baseline": route.rollout.baseline,
                        "canary": route.rollout.canary, "steps": list(route.rollout.steps),
                        "evidence": {"baseline": base.summary(), "canary": canary.summary()}})
        return out


def _local_arms(evidence: Evidence, route: str) -> tuple[Arm, Arm]:
    arms = getattr(evidence, "arms", None)  # LocalEvidence shows its running counts
    return arms(route) if arms is not None else (Arm(), Arm())


def _describe_check(result: Mapping[str, Any]) -> str:
    """A failed check in one line, e.g. ``error_rate: canary 0.05 vs baseline 0.005``."""
    name = result.get("check")
    if name == "error_rate":
        return (f"error_rate: canary {result['canary']:.4f} vs baseline "
                f"{result['baseline']:.4f} + {result['max_increase']} (p={result['p_value']:.2g})")
    if name == "latency":
        return (f"latency {result.get('quantile')}: ratio {result['ratio']:.2f}, CI low "
                f"{result['ci_low']:.2f} > {result['max_ratio']}")
    if name == "shadow_agreement":
        return f"shadow_agreement {result['agreement']:.3f} < {result['min']}"
    if name == "outcome":
        return (f"outcome {result.get('name')}: canary {result['canary']:.3f} vs baseline "
                f"{result['baseline']:.3f} - {result['max_drop']}")
    return str(name)
