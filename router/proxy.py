"""The hot path: one aiohttp low-level handler per request.

Per request: read the live snapshot once, match the route, read the body (bounded), extract
the routing facts, decide (routing.py, pure), forward over the pooled client with fallback,
stream or buffer the answer back, then hand a finished ``Exchange`` to the observers
(prediction log, metrics). Observers run after the last byte is sent and can never break the
response: their exceptions are logged and counted at one boundary.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from . import routing
from .client import Client, Response, UpstreamError
from .config import Limits, Route, Snapshot
from .drift import DriftMonitor
from .errors import (BadRequest, BodyTooLarge, Draining, NoRoute, Overloaded,
                     PredictionLogUnavailable, RouterError, SchemaViolation, UpstreamTimeout,
                     UpstreamUnavailable)
from .metrics import UNMATCHED, Metrics
from .predlog import Entry, PredictionLog
from .shadow import Shadows
from .upstream import Balancer, request_headers, response_headers, translate

log = logging.getLogger("model_router.proxy")

BUFFER_MAX = 1 << 20          # answers up to 1 MiB with a Content-Length are buffered whole
_FALLBACK_KINDS = ("connect", "reset")
_MAX_REQUEST_ID = 200
_UNPARSED = object()


class Live:
    """The one mutable reference to the applied snapshot; swapped whole, never edited."""

    __slots__ = ("snapshot",)

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def __repr__(self) -> str:
        return f"<Live revision={self.snapshot.revision}>"


@dataclass(slots=True)
class Exchange:
    """One finished request on a route, handed to observers after the last byte went out."""

    ts: float                      # wall clock when the request headers arrived
    request_id: str
    snapshot: Snapshot
    route: Route
    method: str
    version: str | None
    reason: str | None
    upstream: str | None
    status: int
    latency_s: float
    request_body: bytes
    response_body: bytes | None
    response_truncated: bool
    fallback_from: str | None
    error: str | None
    sticky_key: str | None
    trace_id: str | None
    headers: Any                   # the client's headers (immutable), for shadow copies
    peer: str | None
    suffix: str = ""               # forwarded path remainder + query
    response_total: int | None = None
    violations: list[dict[str, Any]] | None = None
    doc: Any = None                # the parsed request body, when something parsed it


Observer = Callable[[Exchange], None]


def error_response(err: RouterError, request_id: str, route: str | None = None,
                   ) -> web.Response:
    headers = {"x-request-id": request_id, **err.headers}
    if route:
        headers["x-model-route"] = route
    return web.Response(status=err.status, body=orjson.dumps(err.body(request_id)),
                        content_type="application/json", headers=headers)


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` (version-traceid-parentid-flags)."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) >= 4 and len(parts[1]) == 32 else None


def _has_dot_segment(raw_path: str) -> bool:
    if "." not in raw_path and "%2" not in raw_path.lower():
        return False
    for segment in raw_path.split("/"):
        lowered = segment.lower().replace("%2e", ".")
        if lowered in (".", ".."):
            return True
    return False


def json_field(doc: Any, key: str) -> str | None:
    """A sticky key from a JSON body: top level, first row of instances/inputs, or a V2 input."""
    if isinstance(doc, dict):
        if key in doc and not isinstance(doc[key], (dict, list)):
            return str(doc[key])
        for rows_key in ("instances", "inputs"):
            rows = doc.get(rows_key)
            if isinstance(rows, list) and rows:
                first = rows[0]
                if isinstance(first, dict):
                    if first.get("name") == key and isinstance(first.get("data"), list) \
                            and first["data"]:
                        value = first["data"][0]
                        while isinstance(value, list) and value:
                            value = value[0]
                        return None if isinstance(value, (list, dict)) else str(value)
                    for row in rows:
                        if isinstance(row, dict) and row.get("name") == key:
                            return json_field({"inputs": [row]}, key)
                    if key in first and not isinstance(first[key], (dict, list)):
                        return str(first[key])
            elif isinstance(rows, dict) and key in rows:
                return json_field(rows, key)
    return None


class Proxy:
    """The request handler; ``handle`` is what aiohttp's low-level server calls."""

    def __init__(self, live: Live, client: Client, metrics: Metrics, *,
                 balancer: Balancer | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 wall: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random) -> None:
        self.live = live
        self.client = client
        self.metrics = metrics
        self.balancer = balancer or Balancer()
        self.predlog: PredictionLog | None = None
        self.shadows: Shadows | None = None
        self.drift: DriftMonitor | None = None
        self.observers: list[Observer] = []
        self.feedback_observers: list[Callable[[str, dict[str, Any]], None]] = []
        self.inflight = 0
        self.draining = False
        self.observer_errors = 0
        self._clock = clock
        self._wall = wall
        self._rand = rand
        # Request ids: a random per-process prefix and a counter; unique, and no syscall.
        prefix = secrets.token_hex(8)
        counter = itertools.count()
        self._next_id = lambda: f"{prefix}{next(counter):016x}"

    def __repr__(self) -> str:
        return f"<Proxy inflight={self.inflight} draining={self.draining}>"

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = self._clock()
        ts = self._wall()
        snapshot = self.live.snapshot
        request_id = request.headers.get("x-request-id") or ""
        if not request_id or len(request_id) > _MAX_REQUEST_ID:
            request_id = self._next_id()
        if self.draining:
            return error_response(Draining("the router is shutting down"), request_id)
        if self.inflight >= snapshot.limits.max_concurrency:
            self.metrics.reject(UNMATCHED, 503)
            return error_response(Overloaded("too many requests in flight"), request_id)
        self.inflight += 1
        try:
            return await self._serve(request, snapshot, request_id, started, ts)
        finally:
            self.inflight -= 1

    async def _serve(self, request: web.BaseRequest, snapshot: Snapshot, request_id: str,
                     started: float, ts: float) -> web.StreamResponse:
        raw_path = request.raw_path.partition("?")[0]
        if raw_path == "/-/feedback":
            return await self._feedback(request, snapshot, request_id, ts)
        found = routing.match(snapshot.routes, raw_path) \
            if not _has_dot_segment(raw_path) else None
        if found is None:
            local = self._v2_server_endpoint(snapshot, request, raw_path)
            if local is not None:
                return local
            self.metrics.observe(UNMATCHED, None, "primary", 404, self._clock() - started)
            return error_response(NoRoute(f"no route matches {raw_path[:200]}"), request_id)
        route, rest = found
        inference = request.body_exists
        reserved = False
        if inference and self.predlog is not None and \
                self.predlog.settings.on_full == "block":
            reserved = self.predlog.try_reserve() or await self.predlog.reserve()
            if not reserved:
                self.metrics.reject(route.name, 503)
                return error_response(PredictionLogUnavailable(
                    "the prediction log cannot take the record; not forwarded"),
                    request_id, route.name)
        ex = Exchange(ts=ts, request_id=request_id, snapshot=snapshot, route=route,
                      method=request.method, version=None, reason=None, upstream=None,
                      status=0, latency_s=0.0, request_body=b"", response_body=None,
                      response_truncated=False, fallback_from=None, error=None,
                      sticky_key=None, trace_id=trace_id(request.headers.get("traceparent")),
                      headers=request.headers, peer=request.remote)
        try:
            response = await self._exchange(request, route, rest, ex)
        finally:
            ex.latency_s = self._clock() - started
            if ex.status == 0:  # cancelled (shutdown grace ran out) before any answer
                ex.error = ex.error or "cancelled before an answer"
            self._notify(ex, inference, reserved)
        return response

    async def _exchange(self, request: web.BaseRequest, route: Route, rest: str,
                        ex: Exchange) -> web.StreamResponse:
        response: web.StreamResponse
        snapshot = ex.snapshot
        try:
            ex.request_body = await self._read_body(request, snapshot.limits)
            doc = self._validate(route, ex) if route.validator is not None \
                and ex.request_body else _UNPARSED
            if doc is not _UNPARSED:
                ex.doc = doc
            decision = self._decide(request, route, rest, ex, doc)
            ex.version, ex.reason = decision.version, decision.reason
            response = await self._forward(request, route, decision, ex)
        except RouterError as err:
            if isinstance(err, BodyTooLarge):
                self.metrics.reject(route.name, 413)
            ex.status, ex.error = err.status, err.message
            response = error_response(err, ex.request_id, route.name)
            if isinstance(err, BodyTooLarge):
                response.force_close()
            if ex.version is not None:
                response.headers["x-model-version"] = ex.version
        return response

    # -- steps ------------------------------------------------------------------------------

    async def _read_body(self, request: web.BaseRequest, limits: Limits) -> bytes:
        """The whole body, refused with 413 from its Content-Length before reading it."""
        if not request.body_exists:
            return b""
        length = request.content_length
        head = b""
        if length is not None and length <= limits.max_body_bytes:
            # Fast path: a small body usually arrived with the headers; no timer needed.
            head = request.content.read_nowait(length)
            if len(head) == length:
                return head
        try:
            async with asyncio.timeout(limits.client_timeout_s):
                return head + await self._read_bounded(request, limits.max_body_bytes,
                                                       len(head))
        except TimeoutError:
            raise BadRequest("the request body did not arrive within client_timeout_s") \
                from None
        except ConnectionError:
            raise BadRequest("the client closed the connection before the body ended") \
                from None

    async def _read_bounded(self, request: web.BaseRequest, limit: int, have: int) -> bytes:
        """The rest of the body (``have`` bytes were read already)."""
        length = request.content_length
        if length is not None and length > limit:
            raise BodyTooLarge(f"body of {length} bytes is over the {limit}-byte limit")
        content = request.content
        if length is not None:
            try:
                return await content.readexactly(length - have)
            except asyncio.IncompleteReadError as exc:
                raise BadRequest("the request body ended early") from exc
        chunks, size = [], 0
        while chunk := await content.readany():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"body is over the {limit}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    def _validate(self, route: Route, ex: Exchange) -> Any:
        """Check the body against the route's input_schema; returns the parsed body.

        ``enforce`` raises SchemaViolation (422) with every violation; ``log`` keeps them on
        the exchange for the prediction log and the metrics.
        """
        assert route.validator is not None
        try:
            doc = orjson.loads(ex.request_body)
        except orjson.JSONDecodeError as exc:
            if route.validation == "enforce":
                raise BadRequest(f"the body is not JSON: {exc}") from None
            violations = [{"field": None, "kind": "format", "expected": "JSON",
                           "got": str(exc)[:80], "row": None}]
            doc = _UNPARSED
        else:
            violations = route.validator.validate(doc)
        if violations:
            ex.violations = violations
            self.metrics.schema_violations(route.name, violations)
            if route.validation == "enforce":
                raise SchemaViolation(
                    f"{len(violations)} violation(s) of schema {route.input_schema}",
                    details=violations)
        return doc

    def _decide(self, request: web.BaseRequest, route: Route, rest: str,
                ex: Exchange, doc: Any) -> routing.Decision:
        override = None
        if route.override is not None:
            override = request.headers.get(route.override.header) or None
        key = None
        sticky = route.sticky
        if sticky is not None:
            if sticky.kind == "header":
                key = request.headers.get(sticky.key) or None
            elif sticky.kind == "cookie":
                key = request.cookies.get(sticky.key) or None
            elif ex.request_body:
                try:
                    if doc is _UNPARSED:
                        doc = orjson.loads(ex.request_body)
                    key = json_field(doc, sticky.key)
                except orjson.JSONDecodeError:
                    key = None
        ex.sticky_key = key
        return routing.decide(route, rest, override=override, sticky_key=key,
                              rand=self._rand())

    async def _forward(self, request: web.BaseRequest, route: Route,
                       decision: routing.Decision, ex: Exchange) -> web.StreamResponse:
        attempts = [decision.version]
        if route.fallback is not None and route.fallback != decision.version:
            attempts.append(route.fallback)
        query = request.raw_path.partition("?")[2]
        suffix = ex.suffix = decision.rest + ("?" + query if query else "")
        for attempt, name in enumerate(attempts):
            last = attempt == len(attempts) - 1
            version = route.versions[name]
            base = self.balancer.acquire(version)
            outlier = route.outlier if len(version.urls) > 1 else None
            ex.version, ex.upstream = name, base
            headers = request_headers(request.headers.items(), version, ex.request_id,
                                      request.remote)
            try:
                async with asyncio.timeout(route.timeout_s):
                    upstream = await self.client.request(
                        request.method, base, suffix, headers.items(),
                        ex.request_body if request.body_exists else None, version.tls)
                    length = upstream.content_length
                    buffered = upstream.complete or (length is not None and length <= BUFFER_MAX)
                    body = await upstream.read() if buffered else None
            except (UpstreamError, OSError, TimeoutError) as exc:
                self.balancer.release(base, False, outlier)
                err = translate(exc, name)
                self.metrics.upstream_error(route.name, name, err.kind)
                if not last and isinstance(err, UpstreamUnavailable) \
                        and err.kind in _FALLBACK_KINDS:
                    ex.fallback_from, ex.reason = name, "fallback"
                    continue
                raise err from None
            if upstream.status == 503 and not last:
                upstream.release()
                self.balancer.release(base, False, outlier)
                ex.fallback_from, ex.reason = name, "fallback"
                continue
            headers_out = CIMultiDict(response_headers(upstream.headers))
            headers_out["x-request-id"] = ex.request_id
            headers_out["x-model-version"] = name
            headers_out["x-model-route"] = route.name
            ex.status = upstream.status
            if body is not None:
                self.balancer.release(base, upstream.status < 500, outlier)
                ex.response_body = body
                return web.Response(status=upstream.status, body=body, headers=headers_out)
            return await self._stream(request, upstream, headers_out, base, outlier, ex)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _stream(self, request: web.BaseRequest, upstream: Response,
                      headers: CIMultiDict[str], base: str, outlier: Any,
                      ex: Exchange) -> web.StreamResponse:
        """Pass a chunked or large answer through as it arrives, keeping a bounded copy."""
        response = web.StreamResponse(status=upstream.status, headers=headers)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        cap = int(ex.snapshot.prediction_log.max_payload_kb * 1024)
        copied: list[bytes] = []
        kept = total = 0
        ok = upstream.status < 500
        try:
            await response.prepare(request)
            while True:
                try:
                    async with asyncio.timeout(ex.route.timeout_s):
                        chunk = await upstream.next_chunk()
                except (UpstreamError, OSError, TimeoutError) as exc:
                    err = translate(exc, ex.version or "")
                    self.metrics.upstream_error(ex.route.name, ex.version or "", err.kind)
                    ex.error, ok = f"{err.message} mid-response", False
                    # The status line is gone; closing is the only honest signal left.
                    if request.transport is not None:
                        request.transport.close()
                    return response
                if not chunk:
                    break
                total += len(chunk)
                room = cap - kept
                if room > 0:
                    copied.append(chunk[:room])
                    kept += min(len(chunk), room)
                if len(chunk) > room:
                    ex.response_truncated = True
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError:
            ex.error = "client disconnected"
        finally:
            upstream.release()
            self.balancer.release(base, ok, outlier)
            ex.response_body = b"".join(copied)
            ex.response_total = total
        return response

    def _v2_server_endpoint(self, snapshot: Snapshot, request: web.BaseRequest,
                            path: str) -> web.Response | None:
        """V2 server health and metadata, answered by the router when no route claims them."""
        if request.method not in ("GET", "HEAD") or \
                path not in ("/v2", "/v2/health/live", "/v2/health/ready"):
            return None
        if not any(r.protocol == "v2" for r in snapshot.routes):
            return None
        if path == "/v2":
            body = {"name": "model-router", "version": "0.1.0", "extensions": []}
            return web.Response(body=orjson.dumps(body), content_type="application/json")
        ready = path == "/v2/health/live" or not self.draining
        return web.Response(status=200 if ready else 503,
                            body=orjson.dumps({"live": True} if path.endswith("live")
                                              else {"ready": ready}),
                            content_type="application/json")

    async def _feedback(self, request: web.BaseRequest, snapshot: Snapshot, request_id: str,
                        ts: float) -> web.Response:
        """``POST /-/feedback {"request_id", "outcome"}``: a feedback record, joined later."""
        if request.method != "POST":
            return error_response(BadRequest("feedback is POST {request_id, outcome}"),
                                  request_id)
        try:
            body = await self._read_body(request, snapshot.limits)
            doc = orjson.loads(body)
        except RouterError as err:
            return error_response(err, request_id)
        except orjson.JSONDecodeError as exc:
            return error_response(BadRequest(f"feedback is not JSON: {exc}"), request_id)
        if not isinstance(doc, dict) or not isinstance(doc.get("request_id"), str) \
                or not doc["request_id"] or not isinstance(doc.get("outcome"), dict):
            return error_response(BadRequest(
                'feedback needs {"request_id": "<id>", "outcome": {...}}'), request_id)
        if self.predlog is not None:
            reserved = self.predlog.try_reserve() or await self.predlog.reserve()
            if not reserved:
                return error_response(PredictionLogUnavailable(
                    "the prediction log cannot take the feedback"), request_id)
            self.predlog.add(Entry(
                ts=ts, request_id=doc["request_id"], route=None,
                revision=snapshot.revision, role="feedback", version=None, reason=None,
                upstream=None, status=202, latency_ms=0.0, sticky_key=None,
                request_body=None, response_body=None, outcome=doc["outcome"]), reserved=True)
        for observer in self.feedback_observers:
            try:
                observer(doc["request_id"], doc["outcome"])
            except Exception:  # noqa: BLE001
                log.exception("feedback observer %r failed", observer)
        return web.Response(status=202, body=orjson.dumps({"request_id": doc["request_id"],
                                                          "accepted": True}),
                            content_type="application/json")

    def _notify(self, ex: Exchange, inference: bool, reserved: bool) -> None:
        """Record a finished exchange: metrics, prediction log, shadows, observers.

        Called exactly once per matched request, after the last byte went out; side effects
        fail here, are logged and counted, and never reach the client.
        """
        self.metrics.observe(ex.route.name, ex.version, "primary", ex.status, ex.latency_s)
        if self.predlog is not None and inference:
            try:
                self.predlog.add(Entry(
                    ts=ex.ts, request_id=ex.request_id, route=ex.route,
                    revision=ex.snapshot.revision, role="primary", version=ex.version,
                    reason=ex.reason, upstream=ex.upstream, status=ex.status,
                    latency_ms=ex.latency_s * 1000, sticky_key=ex.sticky_key,
                    request_body=ex.request_body, response_body=ex.response_body,
                    response_truncated=ex.response_truncated,
                    response_total=ex.response_total, fallback_from=ex.fallback_from,
                    error=ex.error, trace_id=ex.trace_id, violations=ex.violations),
                    reserved)
            except Exception:  # noqa: BLE001
                self.observer_errors += 1
                log.exception("prediction log entry failed for %s", ex.request_id)
        elif reserved and self.predlog is not None:
            self.predlog.release()
        if self.drift is not None and inference and ex.status < 400 \
                and self.drift.sampled(ex.route):
            try:
                doc = ex.doc
                if doc is None and ex.route.protocol != "raw":
                    doc = orjson.loads(ex.request_body)
                self.drift.observe(ex.route, ex.version, doc, ex.response_body)
            except Exception:  # noqa: BLE001
                self.observer_errors += 1
                log.exception("drift sampling failed for %s", ex.request_id)
        if self.shadows is not None and inference and ex.route.shadows \
                and ex.upstream is not None:
            try:
                self.shadows.mirror(ex)
            except Exception:  # noqa: BLE001
                self.observer_errors += 1
                log.exception("shadow mirroring failed for %s", ex.request_id)
        for observer in self.observers:
            try:
                observer(ex)
            except Exception:  # noqa: BLE001 - side effects never break the response
                self.observer_errors += 1
                log.exception("observer %r failed for request %s", observer, ex.request_id)


__all__ = ["BUFFER_MAX", "Exchange", "Live", "Proxy", "UpstreamTimeout", "error_response"]
