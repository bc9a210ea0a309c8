"""Rollout evidence: per route and arm (baseline, canary) since the step began, the requests,
errors (status >= 500), latencies, shadow comparisons of the canary and outcomes attributed
to the version that served. ``Evidence`` is the seam (docs/architecture.md "Evidence for
rollouts"); three sources implement it and the statistics (``judge``) do not know which:

- ``LocalEvidence``: this process's own traffic, as an observer (one process);
- ``MetricsEvidence``: the supervisor's sum of its workers' metrics (``--workers N``);
- ``prometheus.PrometheusEvidence``: Prometheus's sums over every replica (a fleet).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import Route
from ..records import Served

LATENCY_KEEP = 20_000       # latency samples kept per arm (uniform reservoir beyond)


@dataclass
class Arm:
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    # Or, where only a histogram exists (a metrics source): cumulative (upper bound, count)
    # pairs in ascending order, +Inf last, as Prometheus keeps request_duration_seconds.
    buckets: tuple[tuple[float, float], ...] = ()
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
                "latency_samples": len(self.latencies) or int(self.buckets[-1][1]
                                                              if self.buckets else 0),
                "shadow_compared": self.shadow_compared,
                "outcome_n": self.outcome_n, "outcome_k": self.outcome_k}


class Evidence(Protocol):
    """Where a rollout's evidence comes from; the controller and the statistics do not know.

    ``immediate``: the evidence of a new step counts from the moment it is set (one process,
    or a supervisor whose workers get the weights at once); otherwise the controller asks
    ``ready`` until every replica serves the step, and counts from then.
    """

    immediate: bool

    def watch(self, route: Route) -> None:
        """Start (or keep) collecting for a rollout route's baseline and canary."""

    def reset(self, route: str) -> None:
        """Start a new step's evidence."""

    async def ready(self, route: Route, weight: float) -> bool:
        """Whether every replica now serves the canary at ``weight`` percent."""

    async def collect(self, route: Route, since: float, now: float) -> tuple[Arm, Arm] | None:
        """(baseline, canary) of the step, counted from ``since``: copies the caller may
        judge in a thread. None when the source cannot answer now (counted, and the
        rollout holds)."""


class LocalEvidence:
    """Evidence from this process's own exchanges, shadow comparisons and feedback."""

    immediate = True

    def __init__(self) -> None:
        self._arms: dict[str, tuple[Arm, Arm]] = {}
        self._roles: dict[str, tuple[str, str, str | None]] = {}  # route -> baseline, canary, outcome
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

    async def ready(self, route: Route, weight: float) -> bool:
        return True

    async def collect(self, route: Route, since: float, now: float) -> tuple[Arm, Arm] | None:
        base, canary = self.arms(route.name)
        return (dataclasses.replace(base, latencies=list(base.latencies)),
                dataclasses.replace(canary, latencies=list(canary.latencies)))

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
        arm, _ = self._arm(ex.route.name, ex.version)
        if arm is None or ex.status == 0:
            return
        arm.requests += 1
        if ex.status >= 500:
            arm.errors += 1
        arm.add_latency(ex.latency_s, self._rng)

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

    def feedback(self, request_id: str, outcome: Mapping[str, Any],
                 served: Served | None) -> None:
        """Feedback observer: the outcome counts for the arm of the version that served."""
        if served is None:
            return
        arm, _ = self._arm(served.route, served.version)
        name = self._roles.get(served.route, (None, None, None))[2]
        value = outcome.get(name) if name else None
        if arm is not None and isinstance(value, bool):
            arm.outcome_n += 1
            arm.outcome_k += value


# -- evidence from metrics ---------------------------------------------------------------------

# (metric name, labels, value): a sample as prometheus_client collects it, or a PromQL result.
Sample = tuple[str, Mapping[str, str], float]


def arms_from_samples(route: Route, samples: Iterable[Sample]) -> tuple[Arm, Arm]:
    """(baseline, canary) of a rollout route from counter and histogram samples over a window:
    ``requests_total`` (role primary; errors are codes 5xx), ``request_duration_seconds``
    buckets, the canary's ``shadow_comparisons_total`` (match or mismatch) and
    ``outcomes_total`` for the rollout's outcome name. Pure."""
    rollout = route.rollout
    assert rollout is not None
    arms = {rollout.baseline: Arm(), rollout.canary: Arm()}
    buckets: dict[str, dict[float, float]] = {rollout.baseline: {}, rollout.canary: {}}
    outcome = rollout.checks.outcome_name
    for name, labels, value in samples:
        if labels.get("route") != route.name or value <= 0:
            continue
        version = labels.get("version", "")
        arm = arms.get(version)
        if arm is None:
            continue
        if name == "model_router_requests_total" and labels.get("role") == "primary":
            arm.requests += round(value)
            if labels.get("code", "").startswith("5"):
                arm.errors += round(value)
        elif name == "model_router_request_duration_seconds_bucket" and \
                labels.get("role") == "primary":
            le = float(labels["le"])
            buckets[version][le] = buckets[version].get(le, 0.0) + value
        elif name == "model_router_shadow_comparisons_total" and version == rollout.canary \
                and labels.get("result") in ("match", "mismatch"):
            arm.shadow_compared += round(value)
            if labels["result"] == "match":
                arm.shadow_agreed += round(value)
        elif name == "model_router_outcomes_total" and outcome and \
                labels.get("name") == outcome:
            arm.outcome_n += round(value)
            if labels.get("value") == "true":
                arm.outcome_k += round(value)
    for version, arm in arms.items():
        arm.buckets = tuple(sorted(buckets[version].items()))
    return arms[rollout.baseline], arms[rollout.canary]


class MetricsEvidence:
    """Evidence from cumulative metric samples read in this process: the supervisor's sum of
    its workers' ``/metrics`` (``--workers N``). A step's evidence is the samples now minus
    the samples when the step began."""

    immediate = True

    def __init__(self, read: Callable[[], list[Sample]]) -> None:
        self._read = read
        self._start: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}

    def __repr__(self) -> str:
        return f"<MetricsEvidence routes={list(self._start)}>"

    def _totals(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(name, tuple(sorted(labels.items()))): value
                for name, labels, value in self._read()}

    def watch(self, route: Route) -> None:
        if route.name not in self._start:
            self.reset(route.name)

    def reset(self, route: str) -> None:
        self._start[route] = {k: v for k, v in self._totals().items()
                              if dict(k[1]).get("route") == route}

    async def ready(self, route: Route, weight: float) -> bool:
        return True

    async def collect(self, route: Route, since: float, now: float) -> tuple[Arm, Arm] | None:
        start = self._start.get(route.name, {})
        # A counter below its start value was reset (a worker restarted): count from zero.
        window = [(name, dict(labels), value - start.get((name, labels), 0.0)
                   if value >= start.get((name, labels), 0.0) else value)
                  for (name, labels), value in self._totals().items()
                  if dict(labels).get("route") == route.name]
        return arms_from_samples(route, window)
