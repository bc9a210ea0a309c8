"""Rollout evidence from Prometheus: sums over every replica of a fleet (DESIGN "Fleet").

Every replica exports ``model_router_fleet_info{fleet, replica} 1``; each query joins on it
(``* on(instance, job) group_left(replica)``), so a Prometheus that scrapes several fleets
counts this fleet's replicas only. A step's window opens once every live replica (the fleet
store's heartbeats) reports ``rollout_step{route}`` equal to the step's weight; counts over
the window come from ``increase(...[window])``. A failed or malformed query is counted
(``evidence_errors_total``) and answers None: the rollout holds.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from ..config import Route
from .evidence import Arm, Sample, arms_from_samples

log = logging.getLogger("model_router.evidence")

QUERY_TIMEOUT_S = 3.0
# The shortest window queried: increase() needs two scrapes inside it.
MIN_WINDOW_S = 2


def _quote(value: str) -> str:
    """A PromQL string literal (label values come from the config)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class PrometheusEvidence:
    immediate = False

    def __init__(self, url: str, fleet: str,
                 live_replicas: Callable[[], Awaitable[set[str] | None]],
                 on_error: Callable[[], None] = lambda: None) -> None:
        self.url = url
        self.fleet = fleet
        self.health = "not queried yet"
        self._live_replicas = live_replicas
        self._on_error = on_error
        self._session: aiohttp.ClientSession | None = None
        self._join = f" * on(instance, job) group_left(replica) " \
                     f"model_router_fleet_info{{fleet={_quote(fleet)}}}"

    def __repr__(self) -> str:
        return f"<PrometheusEvidence {self.url} fleet={self.fleet} {self.health}>"

    def watch(self, route: Route) -> None:
        pass  # Prometheus keeps every series already

    def reset(self, route: str) -> None:
        pass  # a step's window is named by its start time

    async def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]] | None:
        """An instant vector from ``/api/v1/query``; None (counted) when that fails."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=QUERY_TIMEOUT_S))
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            async with self._session.get(f"{self.url}/api/v1/query", params=params) as resp:
                doc = await resp.json(content_type=None)
            if resp.status != 200 or doc.get("status") != "success" or \
                    doc["data"]["resultType"] != "vector":
                raise ValueError(f"HTTP {resp.status}: {str(doc)[:300]}")
            result: list[dict[str, Any]] = doc["data"]["result"]
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            self._on_error()
            if self.health == "ok":
                log.warning("prometheus %s: query failed: %s", self.url, exc)
            self.health = f"query failed: {type(exc).__name__}: {exc}"
            return None
        self.health = "ok"
        return result

    async def ready(self, route: Route, weight: float) -> bool:
        """Every live replica's latest ``rollout_step{route}`` equals ``weight``."""
        live = await self._live_replicas()
        result = await self.query(
            f"model_router_rollout_step{{route={_quote(route.name)}}}{self._join}")
        if result is None or not live:
            return False
        reported = {s["metric"].get("replica"): float(s["value"][1]) for s in result}
        return all(math.isclose(reported.get(r, math.nan), weight) for r in live)

    async def collect(self, route: Route, since: float, now: float) -> tuple[Arm, Arm] | None:
        rollout = route.rollout
        assert rollout is not None
        window = max(MIN_WINDOW_S, math.ceil(now - since))
        where = f"route={_quote(route.name)}"
        versions = "version=~" + _quote(f"{re.escape(rollout.baseline)}|"
                                        f"{re.escape(rollout.canary)}")

        def increase(metric: str, selector: str, by: str) -> str:
            return (f"sum by ({by}) (increase({metric}{{{selector}}}[{window}s])"
                    f"{self._join})")

        queries = [
            ("model_router_requests_total", increase(
                "model_router_requests_total", f'{where},{versions},role="primary"',
                "route, version, role, code")),
            ("model_router_request_duration_seconds_bucket", increase(
                "model_router_request_duration_seconds_bucket",
                f'{where},{versions},role="primary"', "route, version, role, le")),
            ("model_router_shadow_comparisons_total", increase(
                "model_router_shadow_comparisons_total",
                f"{where},version={_quote(rollout.canary)}", "route, version, result")),
        ]
        if rollout.checks.outcome_name:
            queries.append(("model_router_outcomes_total", increase(
                "model_router_outcomes_total",
                f"{where},{versions},name={_quote(rollout.checks.outcome_name)}",
                "route, version, name, value")))
        samples: list[Sample] = []
        for name, promql in queries:
            result = await self.query(promql, at=now)
            if result is None:
                return None
            samples += [(name, s["metric"], float(s["value"][1])) for s in result
                        if math.isfinite(float(s["value"][1]))]
        return arms_from_samples(route, samples)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
