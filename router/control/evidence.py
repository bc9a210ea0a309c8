"""Rollout evidence: per route and arm (baseline, canary) since the step began, the requests,
errors (status >= 500), latency samples, shadow comparisons of the canary and outcomes joined
by request id. ``Evidence`` is the seam; ``LocalEvidence`` collects it from this process's
traffic as an observer (docs/architecture.md "Evidence for rollouts")."""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import Route

LATENCY_KEEP = 20_000       # latency samples kept per arm (uniform reservoir beyond)
RECENT_IDS = 100_000        # request ids remembered for joining outcomes


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
                "latency_samples": len(self.latencies) or int(self.buckets[-1][1] if self.buckets else 0),
                "shadow_compared": self.shadow_compared,
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
