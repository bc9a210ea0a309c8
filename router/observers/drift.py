"""Input and prediction drift: live values in sliding windows, PSI against the baselines.

The hot path only samples (``drift.sample``) and appends values to bounded deques
(``drift.window_rows`` per feature). Every few seconds, off the hot path, each window is
binned with its baseline's edges (numeric: values below the first edge count in the first
bin, above the last in the last; categorical: unseen values count as ``__other__``) and
compared with the baseline's fractions:

    PSI = sum((live - base) * ln(live / base)), with 1e-4 added to empty bins.

Input drift is per route and feature, against the control version's ``baseline`` (features
read by ``bodies.input_columns`` from every shape validation accepts; a single 2-D V2 tensor's
or list rows' columns named by the route's schema, else the control version's); output
drift is per route and version, against that version's ``output_baseline`` (features named
after the model's outputs; the reported figure is the largest PSI over its outputs).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..bodies import category, input_columns, output_columns
from ..config import Route, Snapshot
from ..records import Exchange, control_version

log = logging.getLogger("model_router.drift")

EPS = 1e-4
OTHER = "__other__"
INTERVAL_S = 5.0


def psi(live: list[float], base: list[float]) -> float:
    total = 0.0
    for a, b in zip(live, base):
        a, b = max(a, EPS), max(b, EPS)
        total += (a - b) * math.log(a / b)
    return total


def feature_psi(values: Iterable[Any], spec: dict[str, Any]) -> float | None:
    """PSI of live values against one baseline feature; None without enough data."""
    values = list(values)
    if not values:
        return None
    if spec.get("kind") == "numeric":
        edges = np.asarray(spec["edges"], dtype=float)
        numbers = np.asarray([v for v in values if isinstance(v, (int, float))
                              and not isinstance(v, bool)], dtype=float)
        if numbers.size == 0 or edges.size < 2:
            return None
        counts, _ = np.histogram(np.clip(numbers, edges[0], edges[-1]), bins=edges)
        live = (counts / numbers.size).tolist()
        return psi(live, list(spec["fractions"]))
    fractions: dict[str, float] = spec.get("fractions", {})
    seen: dict[str, int] = {}
    for v in values:
        key = category(v)
        key = key if key in fractions else OTHER
        seen[key] = seen.get(key, 0) + 1
    keys = list(fractions) + ([OTHER] if OTHER not in fractions else [])
    n = len(values)
    return psi([seen.get(k, 0) / n for k in keys], [fractions.get(k, 0.0) for k in keys])


def _baseline(snapshot: Snapshot, path: Path | None) -> Any:
    """The baseline at ``path`` as the config loader read and checked it (never the disk:
    this runs on the event loop)."""
    return snapshot.baselines.get(path) if path is not None else None


def schema_fields(snapshot: Snapshot, route: Route, control: str) -> tuple[str, ...]:
    """The field names, in order, that name the columns of positional request shapes: the
    route's ``input_schema``, else the control version's schema."""
    schema_id = route.input_schema
    if schema_id is None and route.model is not None:
        entry = snapshot.registry.version(route.model, control)
        schema_id = entry.schema if entry else None
    schema = snapshot.registry.schemas.get(schema_id) if schema_id else None
    return tuple(f.name for f in schema.fields) if schema else ()


class _Window:
    __slots__ = ("baseline", "fields", "values")

    def __init__(self, baseline: dict[str, Any], size: int,
                 fields: tuple[str, ...] = ()) -> None:
        self.baseline = baseline
        self.fields = fields        # columns of a 2-D V2 tensor or of list rows, in order
        self.values: dict[str, deque[Any]] = {
            name: deque(maxlen=size) for name in baseline.get("features", {})}


class DriftMonitor:
    """Windows per (route) for inputs and per (route, version) for outputs."""

    def __init__(self, metrics: Any, rand: Any = None) -> None:
        import random
        self.metrics = metrics
        self._rand = rand or random.random
        self.inputs: dict[str, _Window] = {}
        self.outputs: dict[tuple[str, str], _Window] = {}
        self._warned: set[tuple[str, str]] = set()
        self._revision = ""
        self.last: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"<DriftMonitor inputs={len(self.inputs)} outputs={len(self.outputs)}>"

    def configure(self, snapshot: Snapshot) -> None:
        """Build windows for a newly applied snapshot (from the baselines it carries)."""
        if snapshot.revision == self._revision:
            return
        self._revision = snapshot.revision
        inputs: dict[str, _Window] = {}
        outputs: dict[tuple[str, str], _Window] = {}
        for route in snapshot.routes:
            if route.model is None:
                continue
            control_name = control_version(route)
            control = snapshot.registry.version(route.model, control_name)
            base = _baseline(snapshot, control.baseline if control else None)
            if base:
                old = self.inputs.get(route.name)
                fields = schema_fields(snapshot, route, control_name)
                inputs[route.name] = old if old and old.baseline == base \
                    and old.fields == fields \
                    else _Window(base, route.drift.window_rows, fields)
            for name in route.versions:
                entry = snapshot.registry.version(route.model, name)
                out_base = _baseline(snapshot, entry.output_baseline if entry else None)
                if out_base:
                    old = self.outputs.get((route.name, name))
                    outputs[(route.name, name)] = old if old and old.baseline == out_base \
                        else _Window(out_base, route.drift.window_rows)
        self.inputs, self.outputs = inputs, outputs

    def exchange(self, ex: Exchange) -> None:
        """The observer: sample a finished, answered inference into the windows."""
        if not ex.inference or ex.status >= 400 or not self.sampled(ex.route):
            return
        doc = ex.doc
        if doc is None and ex.route.protocol != "raw":
            try:
                doc = orjson.loads(ex.request_body)
            except orjson.JSONDecodeError:
                doc = None  # not JSON (validation off): no features, the answer still counts
        self.observe(ex.route, ex.version, doc,
                     ex.response_body if ex.response_json is None else ex.response_json)

    def sampled(self, route: Route) -> bool:
        return (route.name in self.inputs or bool(self.outputs)) and \
            self._rand() < route.drift.sample

    def observe(self, route: Route, version: str | None, doc: Any,
                response: bytes | None) -> None:
        """Record one sampled exchange; called after the response, never raises."""
        window = self.inputs.get(route.name)
        if window is not None and doc is not None:
            for name, values in input_columns(doc, route.protocol, window.fields).items():
                target = window.values.get(name)
                if target is not None:
                    target.extend(values)
        if version is not None and response:
            out = self.outputs.get((route.name, version))
            if out is not None:
                try:
                    columns = output_columns(orjson.loads(response))
                except orjson.JSONDecodeError:
                    return
                for name, values in columns.items():
                    target = out.values.get(name)
                    if target is not None:
                        target.extend(values)

    def compute(self, snapshot: Snapshot) -> dict[str, float]:
        """PSI of every window; updates the gauges; warns once per crossing."""
        results: dict[str, float] = {}
        routes = {r.name: r for r in snapshot.routes}
        for route_name, window in self.inputs.items():
            route = routes.get(route_name)
            for feature, values in window.values.items():
                value = feature_psi(values, window.baseline["features"][feature])
                if value is None:
                    continue
                results[f"{route_name}/{feature}"] = value
                self.metrics.feature_drift.labels(route_name, feature).set(value)
                self._threshold(route_name, feature, value,
                                route.drift.psi_warn if route else 0.2)
        for (route_name, version), window in self.outputs.items():
            values_psi = [v for f, vals in window.values.items()
                          if (v := feature_psi(vals, window.baseline["features"][f]))
                          is not None]
            if values_psi:
                worst = max(values_psi)
                results[f"{route_name}/{version}/output"] = worst
                self.metrics.prediction_drift.labels(route_name, version).set(worst)
        self.last = results
        return results

    def _threshold(self, route: str, feature: str, value: float, limit: float) -> None:
        key = (route, feature)
        if value > limit and key not in self._warned:
            self._warned.add(key)
            log.warning("input drift on route %s feature %s: PSI %.3f > %.2f", route,
                        feature, value, limit)
        elif value <= limit and key in self._warned:
            self._warned.discard(key)
            log.info("input drift on route %s feature %s back to PSI %.3f", route, feature,
                     value)

    async def run(self, live: Any, interval: float = INTERVAL_S) -> None:
        """The periodic PSI task: computed in a thread, never on the request path."""
        while True:
            await asyncio.sleep(interval)
            snapshot = live.snapshot
            try:
                self.configure(snapshot)
                await asyncio.to_thread(self.compute, snapshot)
            except Exception:  # noqa: BLE001 - monitoring must not stop the router
                log.exception("drift computation failed")
