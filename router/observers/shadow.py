"""Shadow mirroring: sampled, fire-and-forget copies whose answers are compared and logged.

``Shadows.mirror`` is called once per finished primary exchange and never awaits: each
sampled copy becomes a task owned by a set, capped per (route, shadow version) by
``max_inflight`` (over the cap it is dropped and counted, never queued), bounded by the
entry's ``timeout_s``, and drained at shutdown. A copy's failure is logged as a shadow record
with ``error`` and counted in ``shadow_dropped_total``; it never touches the primary.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from ..bodies import prediction_rows
from ..config import Route, Shadow
from ..dataplane.client import Client
from ..dataplane.upstream import Balancer, request_headers, translate
from ..errors import UpstreamError
from ..records import Entry, Exchange, RecordSink
from ..tensors import binary_answer

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger("model_router.shadow")


# -- comparison (pure): the rows of each answer come from bodies.prediction_rows ---------------

def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _label(row: list[Any]) -> Any:
    numbers = [v for v in row if _number(v)]
    if len(numbers) == len(row) and numbers:
        if len(numbers) == 1:
            return numbers[0] >= 0.5
        return max(range(len(numbers)), key=numbers.__getitem__)
    return tuple(row)


def compare(primary: Any, shadow: Any, against: str, atol: float, rtol: float,
            ) -> dict[str, Any]:
    """``match`` (every element within tolerance), ``max_abs_diff``, label ``agreement``."""
    p_rows, s_rows = prediction_rows(primary), prediction_rows(shadow)
    result: dict[str, Any] = {"against": against, "match": False, "max_abs_diff": None,
                              "agreement": None}
    if p_rows is None or s_rows is None:
        return result
    p_flat = [v for row in p_rows for v in row]
    s_flat = [v for row in s_rows for v in row]
    same_shape = len(p_rows) == len(s_rows) and len(p_flat) == len(s_flat)
    max_diff = None
    within = same_shape
    if same_shape:
        for a, b in zip(p_flat, s_flat):
            if _number(a) and _number(b):
                diff = abs(a - b)
                if math.isnan(diff):
                    within = False
                    continue
                max_diff = diff if max_diff is None else max(max_diff, diff)
                if diff > atol + rtol * abs(a):
                    within = False
            elif a != b:
                within = False
    result["match"] = within
    result["max_abs_diff"] = max_diff
    if len(p_rows) == len(s_rows) and p_rows:
        agree = sum(1 for a, b in zip(p_rows, s_rows) if _label(a) == _label(b))
        result["agreement"] = agree / len(p_rows)
    return result


# -- mirroring ---------------------------------------------------------------------------------

class Shadows:
    def __init__(self, client: Client, metrics: Metrics,
                 predlog: RecordSink | None, balancer: Balancer, *,
                 rand: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.client = client
        self.metrics = metrics
        self.predlog = predlog
        self.balancer = balancer
        self.tasks: set[asyncio.Task[None]] = set()
        self.inflight: dict[tuple[str, str], int] = {}
        # Called with (route, shadow version, compare result or None) after each copy.
        self.observers: list[Callable[[str, str, dict[str, Any] | None], None]] = []
        self._rand = rand
        self._clock = clock

    def __repr__(self) -> str:
        return f"<Shadows tasks={len(self.tasks)} inflight={self.inflight}>"

    def exchange(self, ex: Exchange) -> None:
        """The observer: start the sampled copies of a finished inference; never awaits."""
        if not ex.inference or ex.upstream is None or not ex.mirror:
            return
        route = ex.route
        for shadow in route.shadows:
            if self._rand() * 100 >= shadow.percent:
                continue
            if shadow.version == ex.version:  # it served the primary: never its own mirror
                self.metrics.count(self.metrics.shadow_dropped, route.name, shadow.version,
                                   "same_version")
                continue
            key = (route.name, shadow.version)
            if self.inflight.get(key, 0) >= shadow.max_inflight:
                self.metrics.count(self.metrics.shadow_dropped, route.name, shadow.version, "cap")
                continue
            version = route.versions[shadow.version]
            headers = request_headers(ex.headers.items(), version, ex.request_id, ex.peer)
            headers["x-shadow"] = "true"
            self.inflight[key] = self.inflight.get(key, 0) + 1
            task = asyncio.ensure_future(self._copy(ex, route, shadow, key, headers))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _copy(self, ex: Exchange, route: Route, shadow: Shadow,
                    key: tuple[str, str], headers: dict[str, str]) -> None:
        ts, started = time.time(), self._clock()
        version = route.versions[shadow.version]
        base = self.balancer.acquire(version)
        status, body, error, reason = 0, None, None, None
        answer: Any = None   # the copy's answer in binary tensors, read as JSON
        try:
            resp = await self.client.request(ex.method, base, ex.suffix, headers.items(),
                                             ex.request_body, version.tls, shadow.timeout_s)
            try:
                status = resp.status
                body = await resp.read(ex.snapshot.limits.max_body_bytes)
                if route.protocol == "v2":
                    answer = binary_answer(resp.headers, body)
            finally:
                resp.release()
        except (UpstreamError, OSError, TimeoutError) as exc:
            err = translate(exc, shadow.version)
            reason = "timeout" if err.status == 504 else "error"
            error, status = err.message, err.status
            self.metrics.upstream_error(route.name, shadow.version, err.kind)
        except Exception as exc:  # noqa: BLE001 - a shadow never breaks anything else
            reason, error = "error", f"{type(exc).__name__}: {exc}"
            log.exception("shadow copy to %s failed", shadow.version)
        finally:
            self.inflight[key] -= 1
            self.balancer.release(base, reason is None and status < 500, None)
        latency = self._clock() - started
        if reason is None and status >= 500:
            reason, error = "error", f"shadow answered {status}"
        if reason is not None:
            self.metrics.count(self.metrics.shadow_dropped, route.name, shadow.version, reason)
        result = self._compare(ex, route, shadow, body if answer is None else answer, reason)
        for observer in self.observers:
            try:
                observer(route.name, shadow.version, result)
            except Exception:  # noqa: BLE001
                log.exception("shadow observer %r failed", observer)
        try:  # side effects of a copy fail here, logged, never as an unretrieved task error
            self.metrics.observe(route.name, shadow.version, "shadow", status, latency)
            if self.predlog is not None:
                self.predlog.add(Entry(
                    ts=ts, request_id=ex.request_id, route=route,
                    revision=ex.snapshot.revision, role="shadow", version=shadow.version,
                    reason="shadow", upstream=base, status=status, latency_ms=latency * 1000,
                    sticky_key=ex.sticky_key, request_body=ex.request_body, response_body=body,
                    compare=result, error=error, trace_id=ex.trace_id,
                    request_json=ex.request_json,
                    response_json=orjson.dumps(answer) if answer is not None else None,
                    answer=answer), reserved=False)
        except Exception:  # noqa: BLE001
            log.exception("recording the shadow copy of %s failed", ex.request_id)

    def _compare(self, ex: Exchange, route: Route, shadow: Shadow, body: Any,
                 failed: str | None) -> dict[str, Any] | None:
        """The ``compare`` field; None when either side has no comparable answer. ``body``
        is the copy's answer: bytes, or already read as JSON (binary tensors)."""
        if failed is not None:
            self.metrics.count(self.metrics.shadow_comparisons, route.name, shadow.version,
                               "error")
            return None
        if body is None or ex.response_body is None or ex.response_truncated \
                or ex.status >= 400:
            return None
        against = ex.version or ""
        result = None
        if route.protocol != "raw":
            try:
                primary = ex.answer if ex.answer is not None else orjson.loads(ex.response_body)
                copy = body if not isinstance(body, bytes) else orjson.loads(body)
                result = compare(primary, copy, against, shadow.atol, shadow.rtol)
            except orjson.JSONDecodeError:
                result = None
        if result is None:  # raw, or not JSON: byte equality
            result = {"against": against, "match": body == ex.response_body,
                      "max_abs_diff": None, "agreement": None}
        label = "match" if result["match"] else "mismatch"
        self.metrics.count(self.metrics.shadow_comparisons, route.name, shadow.version, label)
        return result

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for copies in flight, then cancel the rest."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
