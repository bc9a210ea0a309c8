"""Prometheus metrics (prefix ``model_router_``), on a registry owned by one router.

Label values come only from the config (route, version, role) and status codes, never from
paths, user ids or request ids. Children are cached per label tuple, so the per-request cost
is a dict lookup plus the increment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from .config import Snapshot

# 0.5 ms to 10 s.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)
UNMATCHED = "_unmatched"
OUTCOME_NAMES = 32
ROLLOUT_CODES = ("200", "500", "502", "503", "504")  # created at 0 for rollout evidence
_OUTCOME_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")

# The *_created series double the exposition for no use in dashboards or alerts.
disable_created_metrics()


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("model_router_requests_total", "Requests answered.",
                                ["route", "version", "role", "code"], registry=r)
        self.duration = Histogram("model_router_request_duration_seconds",
                                  "Time from request headers to the last byte sent.",
                                  ["route", "version", "role"], buckets=DURATION_BUCKETS,
                                  registry=r)
        self.upstream_errors = Counter("model_router_upstream_errors_total",
                                       "Failed upstream attempts.",
                                       ["route", "version", "kind"], registry=r)
        self.rejected = Counter("model_router_requests_rejected_total",
                                "Requests refused before reaching a model.",
                                ["route", "code"], registry=r)
        self.traffic_weight = Gauge("model_router_traffic_weight",
                                    "Configured traffic percent per version.",
                                    ["route", "version"], registry=r)
        self.reloads = Counter("model_router_config_reloads_total", "Config reload attempts.",
                               ["result"], registry=r)
        self.config_info = Gauge("model_router_config_info", "The applied config revision.",
                                 ["revision"], registry=r)
        self.shadow_dropped = Counter("model_router_shadow_dropped_total",
                                      "Shadow copies dropped or failed.",
                                      ["route", "version", "reason"], registry=r)
        self.shadow_comparisons = Counter("model_router_shadow_comparisons_total",
                                          "Shadow answers compared with the primary's.",
                                          ["route", "version", "result"], registry=r)
        self.version_mismatch = Counter("model_router_version_mismatch_total",
                                        "Answers naming another model_version than the registry.",
                                        ["route", "version"], registry=r)
        self.schema_violations_total = Counter("model_router_schema_violations_total",
                                               "Request fields violating the input schema.",
                                               ["route", "field", "kind"], registry=r)
        self.feature_drift = Gauge("model_router_feature_drift_psi",
                                   "PSI of live inputs vs the control version's baseline.",
                                   ["route", "feature"], registry=r, multiprocess_mode="livemax")
        self.prediction_drift = Gauge("model_router_prediction_drift_psi",
                                      "Largest PSI of a version's outputs vs its output "
                                      "baseline.", ["route", "version"], registry=r,
                                      multiprocess_mode="livemax")
        self.rollout_step = Gauge("model_router_rollout_step",
                                  "Canary percent of the route's progressive rollout now.",
                                  ["route"], registry=r, multiprocess_mode="livemax")
        self.predlog_records = Counter("model_router_predlog_records_total",
                                       "Prediction log records written.", registry=r)
        self.observer_errors = Counter("model_router_observer_errors_total",
                                       "Side effects that failed (logged with a traceback).",
                                       ["observer"], registry=r)
        self.predlog_dropped = Counter("model_router_predlog_dropped_total",
                                       "Prediction log records lost (on_full: drop).",
                                       registry=r)
        self.predlog_shipped = Counter("model_router_predlog_shipped_total",
                                       "Prediction log records shipped to the store.",
                                       registry=r)
        self.predlog_ship_errors = Counter("model_router_predlog_ship_errors_total",
                                           "Failed shipping attempts (retried).", registry=r)
        self.predlog_unshipped_bytes = Gauge("model_router_predlog_unshipped_bytes",
                                             "Bytes of closed or open segments not shipped.",
                                             registry=r, multiprocess_mode="livesum")
        self.predlog_pending = Gauge("model_router_predlog_pending",
                                     "Records buffered or reserved, not yet written.",
                                     registry=r, multiprocess_mode="livesum")
        self.rollout_state = Gauge("model_router_rollout_state",
                                   "1 for the state a route's rollout is in, 0 for the others.",
                                   ["route", "state"], registry=r, multiprocess_mode="livemax")
        self.reload_ok = Gauge("model_router_config_last_reload_successful",
                               "1 when the last load or reload applied (or found the file "
                               "unchanged), 0 after a rejected one.", registry=r)
        self.outcomes_total = Counter("model_router_outcomes_total",
                                      "Business outcomes posted to /-/feedback, by the "
                                      "version that served the request.",
                                      ["route", "version", "name", "value"], registry=r)
        self.fleet_leader = Gauge("model_router_fleet_leader",
                                  "1 while this replica holds the fleet's lease.", registry=r,
                                  multiprocess_mode="livemax")
        self.fleet_info = Gauge("model_router_fleet_info",
                                "1, labelled with the fleet and this replica's id.",
                                ["fleet", "replica"], registry=r, multiprocess_mode="livemax")
        self.fleet_store_errors = Counter("model_router_fleet_store_errors_total",
                                          "Fleet store (Redis) calls that failed.", registry=r)
        self.evidence_errors = Counter("model_router_evidence_errors_total",
                                       "Rollout evidence queries that failed.", registry=r)
        self.grpc_requests = Counter("model_router_grpc_requests_total",
                                     "gRPC calls answered, by gRPC status name.",
                                     ["route", "version", "role", "code"], registry=r)
        self._outcome_names: dict[str, set[str]] = {}
        self._request_children: dict[tuple[str, str, str, int], Any] = {}
        self._duration_children: dict[tuple[str, str, str], Any] = {}
        self._counter_children: dict[tuple[Counter, tuple[str, ...]], Any] = {}

    def __repr__(self) -> str:
        return f"<Metrics {len(self._request_children)} request series>"

    def observe(self, route: str, version: str | None, role: str, code: int,
                seconds: float) -> None:
        """Count one answered request; called once per request, never raises."""
        version = version or "none"
        key = (route, version, role, code)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(
                route, version, role, str(code))
        counter.inc()
        dkey = (route, version, role)
        hist = self._duration_children.get(dkey)
        if hist is None:
            hist = self._duration_children[dkey] = self.duration.labels(route, version, role)
        hist.observe(seconds)

    def count(self, counter: Counter, *labels: str) -> None:
        """``counter.labels(*labels).inc()`` with the child cached (labels() costs ~2 us)."""
        key = (counter, labels)
        child = self._counter_children.get(key)
        if child is None:
            child = self._counter_children[key] = counter.labels(*labels)
        child.inc()

    def upstream_error(self, route: str, version: str, kind: str) -> None:
        self.count(self.upstream_errors, route, version, kind)

    def schema_violations(self, route: str, violations: list[dict[str, Any]]) -> None:
        """Count each (field, kind) once per request; fields come from the schema."""
        for field, kind in {(v["field"] or "_request", v["kind"]) for v in violations}:
            self.count(self.schema_violations_total, route, field, kind)

    def outcomes(self, route: str, version: str, outcome: Mapping[str, Any]) -> None:
        """Count a feedback's boolean outcomes for the version that served it.

        Names come from clients, so only ``OUTCOME_NAMES`` distinct ones per route become
        label values (well-formed, at most 64 characters); further names count as ``_other``.
        """
        names = self._outcome_names.setdefault(route, set())
        for name, value in outcome.items():
            if not isinstance(value, bool):
                continue
            if name not in names:
                if len(names) >= OUTCOME_NAMES or not _OUTCOME_NAME.fullmatch(name):
                    name = "_other"
                else:
                    names.add(name)
            self.count(self.outcomes_total, route, version, name, "true" if value else "false")

    def rollout_series(self, route: str, baseline: str, canary: str,
                       outcome: str | None) -> None:
        """Create a rollout's evidence series at 0 before any traffic: Prometheus's
        ``increase()`` misses the first count of a series that appears inside a window."""
        for version in (baseline, canary):
            for code in ROLLOUT_CODES:
                self.requests.labels(route, version, "primary", code)
            self.duration.labels(route, version, "primary")
            for value in ("true", "false") if outcome else ():
                self.outcomes_total.labels(route, version, outcome, value)
        for result in ("match", "mismatch"):
            self.shadow_comparisons.labels(route, canary, result)

    def observer_error(self, observer: str) -> None:
        self.count(self.observer_errors, observer)

    def reject(self, route: str, code: int) -> None:
        self.count(self.rejected, route, str(code))

    def applied(self, snapshot: Snapshot) -> None:
        """Publish a newly applied snapshot's weights and revision."""
        self.traffic_weight.clear()
        for route in snapshot.routes:
            for version, weight in route.weights().items():
                self.traffic_weight.labels(route.name, version).set(weight)
        self.config_info.clear()
        self.config_info.labels(snapshot.revision).set(1)
        self.reloads.labels("success").inc()
        self.reload_ok.set(1)

    def reload_failed(self) -> None:
        self.reloads.labels("error").inc()
        self.reload_ok.set(0)

    def render(self) -> bytes:
        return generate_latest(self.registry)

