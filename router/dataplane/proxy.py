"""The hot path: the handler the HTTP server calls once per request.

Per request: read the live snapshot once, match the route, read the body (bounded), extract
the routing facts, decide (routing.py, pure), forward over the pooled client with fallback,
stream or buffer the answer back, then hand a finished ``Exchange`` to the observers
(prediction log, metrics). Observers run after the last byte is sent and can never break the
response: their exceptions are logged and counted at one boundary.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import itertools
import logging
import random
import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson

from .. import __version__, tensors
from ..bodies import json_field
from ..config import Live, Route, Snapshot
from ..errors import (
    BadRequest,
    BadResponse,
    BodyTooLarge,
    Draining,
    NoRoute,
    Overloaded,
    PredictionLogUnavailable,
    RouterError,
    SchemaViolation,
    UpstreamError,
    UpstreamUnavailable,
)
from ..metrics import UNMATCHED, Metrics
from ..records import Attributor, Entry, Exchange, FeedbackObserver, Observer, RecordSink, Served
from ..tensors import (
    HEADER,
    MAX_ELEMENTS,
    TensorError,
    TooManyElements,
    binary_header,
    binary_json,
    header_length,
    unread,
)
from . import routing
from .checks import id_mismatch, inflated, parsed, trace_id, unsafe_path, valid_request_id
from .client import Client
from .connection import UpstreamResponse
from .http import Request, Response, error_response, json_response
from .server import Connection
from .upstream import Balancer, request_headers, response_headers, translate

log = logging.getLogger("model_router.proxy")

BUFFER_MAX = 1 << 20          # answers up to 1 MiB with a Content-Length are buffered whole
_FALLBACK_KINDS = ("connect", "reset")
try:
    VERSION = importlib.metadata.version("model-router")
except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
    VERSION = __version__
_UNPARSED = object()
_UNREAD = object()     # binary tensors over the elements the router reads: forwarded unread




def read_binary_answer(ex: Exchange) -> None:
    """Read a binary answer (already sent as it came) as its JSON equivalent, for the log,
    drift and shadow comparison; an answer whose sizes do not add up keeps its bytes and
    says why in ``error``."""
    assert ex.answer_header is not None and ex.response_body is not None
    try:
        ex.answer = binary_json(ex.response_body, ex.answer_header, "outputs")
    except TooManyElements as exc:   # the log keeps a marker (and the served version)
        ex.response_json = orjson.dumps({**unread(ex.response_body, exc.count), "binary": True,
                                         "model_version": exc.doc.get("model_version")})
        return
    except TensorError as exc:
        ex.error = ex.error or f"the answer's binary tensors: {exc}"
        return
    ex.response_json = orjson.dumps(ex.answer)


class Proxy:
    """The request handler; ``handle`` is what the HTTP server calls."""

    def __init__(self, live: Live, client: Client, metrics: Metrics, *,
                 balancer: Balancer | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 wall: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random) -> None:
        self.live = live
        self.client = client
        self.metrics = metrics
        self.balancer = balancer or Balancer()
        # Wired at start-up (process/app): the log's sink and the named observers.
        self.predlog: RecordSink | None = None
        self.observers: list[tuple[str, Observer]] = []
        # Who served a request id, for feedback (observers.attribution); None: unattributed.
        self.attribution: Attributor | None = None
        self.feedback_observers: list[tuple[str, FeedbackObserver]] = []
        self.inflight = 0
        self.draining = False
        self._clock = clock
        self._wall = wall
        self._rand = rand
        # Request ids: a random per-process prefix and a counter; unique, and no syscall.
        prefix = secrets.token_hex(8)
        counter = itertools.count()
        self._next_id = lambda: f"{prefix}{next(counter):016x}"

    def __repr__(self) -> str:
        return f"<Proxy inflight={self.inflight} draining={self.draining}>"

    async def handle(self, request: Request, conn: Connection) -> Response | None:
        """Answer one request: a Response, or None when the answer was streamed on ``conn``."""
        started = self._clock()
        ts = self._wall()
        snapshot = self.live.snapshot
        request_id = request.headers.get("x-request-id") or ""
        if not valid_request_id(request_id):
            request_id = self._next_id()
        if self.draining:
            return error_response(Draining("the router is shutting down"), request_id)
        if self.inflight >= snapshot.limits.max_concurrency:
            self.metrics.reject(UNMATCHED, 503)
            return error_response(Overloaded("too many requests in flight"), request_id)
        self.inflight += 1
        try:
            return await self._serve(request, conn, snapshot, request_id, started, ts)
        finally:
            self.inflight -= 1

    async def _serve(self, request: Request, conn: Connection, snapshot: Snapshot,
                     request_id: str, started: float, ts: float) -> Response | None:
        raw_path = request.raw_path.partition("?")[0]
        if raw_path == "/-/feedback":
            return await self._feedback(request, snapshot, request_id, ts)
        unsafe = unsafe_path(raw_path)
        if unsafe is not None:
            self.metrics.observe(UNMATCHED, None, "primary", 400, self._clock() - started)
            return error_response(BadRequest(f"{unsafe}: not forwarded"), request_id)
        found = routing.match(snapshot.routes, raw_path)
        if found is None:
            local = self._v2_server_endpoint(snapshot, request, raw_path)
            if local is not None:
                return local
            self.metrics.observe(UNMATCHED, None, "primary", 404, self._clock() - started)
            return error_response(NoRoute(f"no route matches {raw_path[:200]}"), request_id)
        route, rest = found
        inference = request.has_body or request.method == "POST"  # an empty POST too
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
                      headers=request.headers, peer=request.remote, inference=inference)
        try:
            response = await self._exchange(request, conn, route, rest, ex)
        finally:
            ex.latency_s = self._clock() - started
            if ex.status == 0:  # cancelled (shutdown grace ran out) before any answer
                ex.error = ex.error or "cancelled before an answer"
            # After this task step, i.e. once the server wrote the answer: the record and
            # the metrics never delay the response.
            asyncio.get_running_loop().call_soon(self._notify, ex, reserved)
        return response

    async def _exchange(self, request: Request, conn: Connection, route: Route, rest: str,
                        ex: Exchange) -> Response | None:
        try:
            if request.too_large:
                limit = ex.snapshot.limits.max_body_bytes
                raise BodyTooLarge(f"the body is over the {limit}-byte limit")
            ex.request_body = body = request.body
            doc = _UNPARSED
            v2 = route.protocol == "v2"
            if body:
                # Read as sent (gzip/deflate inflated); the bytes forwarded are the client's.
                readable = self._readable(request, route, ex)
                if readable is not None and v2:
                    doc = self._binary(request, route, ex, readable)
                if readable is not None and doc is _UNPARSED and (
                        route.validator is not None or v2 and b'"id"' in readable):
                    doc = self._parse(route, ex, readable)
                if doc is not _UNPARSED and doc is not _UNREAD:
                    ex.doc, ex.valid_json = doc, True
                    if readable is not body and ex.request_json is None:
                        ex.request_json = readable   # the log keeps what it parsed
                    if v2 and not valid_request_id(request.headers.get("x-request-id") or ""):
                        self._own_id(ex, doc)
                    if route.validator is not None:
                        self._check(route, ex, doc)
            elif route.validator is not None and request.method == "POST" \
                    and route.validation == "enforce":
                raise BadRequest("the body is empty: this route validates every "
                                 "inference request; not forwarded")
            decision = self._decide(request, route, rest, ex,
                                    _UNPARSED if doc is _UNREAD else doc)
            ex.version, ex.reason = decision.version, decision.reason
            return await self._forward(request, conn, route, decision, ex)
        except RouterError as err:
            if isinstance(err, BodyTooLarge):
                self.metrics.reject(route.name, 413)
            ex.status, ex.error = err.status, err.message
            return error_response(err, ex.request_id, route.name, ex.version)

    # -- steps ------------------------------------------------------------------------------

    def _readable(self, request: Request, route: Route, ex: Exchange) -> bytes | None:
        """The body to read: as sent, or inflated when gzip/deflate-encoded (over
        ``max_body_mb`` inflated: 413). None when it cannot be read (another encoding, a
        corrupt stream): forwarded unread, or refused on a route that must validate it."""
        encoding = request.headers.get("content-encoding")
        if not encoding or encoding.strip().lower() == "identity" or route.protocol == "raw":
            return ex.request_body   # (nothing reads a raw route's body)
        limit = ex.snapshot.limits.max_body_bytes
        try:
            body = inflated(ex.request_body, encoding, limit)
        except ValueError as exc:
            if route.validator is not None:
                if route.validation == "enforce":
                    raise BadRequest(f"{exc}: this route validates every inference "
                                     f"request; not forwarded") from None
                self._violations(route, ex, [{
                    "field": None, "kind": "format", "expected": "identity, gzip or deflate",
                    "got": str(exc)[:80], "row": None}])
            return None
        if body is None:
            raise BodyTooLarge(f"the body is over the {limit}-byte limit once inflated")
        return body

    def _binary(self, request: Request, route: Route, ex: Exchange, body: bytes) -> Any:
        """A V2 body in the binary tensor extension, read as its JSON equivalent (kept for
        the log as ``request_json``); ``_UNPARSED`` for a JSON body; ``_UNREAD`` for tensors
        with more elements than the router reads (forwarded unread; refused on a route that
        enforces its schema). A malformed one is 400."""
        try:
            size = header_length(request.headers.get(HEADER), len(body))
            if size is None:
                return _UNPARSED
            header = binary_header(body, size, "inputs")
            if not valid_request_id(request.headers.get("x-request-id") or ""):
                self._own_id(ex, header)   # before the tensors: a 400 names the client's id
            doc = binary_json(body, size, "inputs", header)
        except TooManyElements as exc:
            if route.validator is not None:
                if route.validation == "enforce":
                    raise BodyTooLarge(f"binary tensors: {exc} to validate; not forwarded"
                                       ) from None
                self._violations(route, ex, [{
                    "field": None, "kind": "format", "expected": f"at most {MAX_ELEMENTS} "
                    "tensor elements", "got": exc.count, "row": None}])
            ex.request_json = orjson.dumps({**unread(body, exc.count), "binary": True})
            return _UNREAD
        except TensorError as exc:
            raise BadRequest(f"binary tensors: {exc}; not forwarded") from None
        ex.request_json = orjson.dumps(doc)
        return doc

    @staticmethod
    def _own_id(ex: Exchange, doc: Any) -> None:
        """Without an ``x-request-id``, a V2 request's own ``id`` is its request id (when it
        is 1-200 visible ASCII characters): the id a client set is the one an auditor types."""
        own = doc.get("id") if isinstance(doc, dict) else None
        if isinstance(own, str) and valid_request_id(own):
            ex.request_id = own

    def _parse(self, route: Route, ex: Exchange, body: bytes) -> Any:
        """The JSON body, or ``_UNPARSED``: on a validated route a body that is not JSON is
        400 (``enforce``) or a ``format`` violation (``log``)."""
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if route.validator is None:
                return _UNPARSED
            if route.validation == "enforce":
                raise BadRequest(f"the body is not JSON: {exc}") from None
            self._violations(route, ex, [{"field": None, "kind": "format", "expected": "JSON",
                                          "got": str(exc)[:80], "row": None}])
            return _UNPARSED

    def _check(self, route: Route, ex: Exchange, doc: Any) -> None:
        """Check a parsed body against the route's input_schema.

        ``enforce`` raises SchemaViolation (422) with every violation; ``log`` keeps them on
        the exchange for the prediction log and the metrics.
        """
        assert route.validator is not None
        self._violations(route, ex, route.validator.validate(doc))

    def _violations(self, route: Route, ex: Exchange, violations: list[dict[str, Any]],
                    ) -> None:
        if violations:
            ex.violations = violations
            self.metrics.schema_violations(route.name, violations)
            if route.validation == "enforce":
                raise SchemaViolation(
                    f"{len(violations)} violation(s) of schema {route.input_schema}",
                    details=violations)

    def _decide(self, request: Request, route: Route, rest: str, ex: Exchange | None,
                doc: Any = _UNPARSED) -> routing.Decision:
        """The version for ``request`` (routing.decide with its override and sticky key);
        the key is kept on ``ex``. The gRPC front end calls this too, with the request its
        call stands for (``ex`` None for a call that is not recorded)."""
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
            elif request.body:
                try:
                    if doc is _UNPARSED or doc is None:
                        doc = orjson.loads(request.body)
                    key = json_field(doc, sticky.key)
                except orjson.JSONDecodeError:
                    key = None
        if ex is not None:
            ex.sticky_key = key
        return routing.decide(route, rest, override=override, sticky_key=key,
                              rand=self._rand())

    async def _forward(self, request: Request, conn: Connection, route: Route,
                       decision: routing.Decision, ex: Exchange) -> Response | None:
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
                upstream = await self.client.request(
                    request.method, base, suffix, headers.items(),
                    ex.request_body if request.has_body else None, version.tls,
                    route.timeout_s)
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
            answer_header = None
            if body is not None and route.protocol == "v2":
                answer_header = tensors.answer_header(upstream.headers, len(body))
                ex.answer_header = answer_header  # decoded after the answer went out
            if body is not None and route.protocol == "v2" and b'"id"' in ex.request_body:
                # Parsed here for the id check, and kept: the log reads the same answer.
                if answer_header is None:
                    ex.answer = parsed(body)
                    got = ex.answer
                else:
                    got = parsed(body[:answer_header])
                mismatch = id_mismatch(ex.doc if ex.valid_json else parsed(ex.request_body),
                                       got)
                if mismatch is not None:
                    # Another request's answer (a lagging or duplicated one on a reused
                    # connection): never hand it to this client, never reuse the connection.
                    upstream.reject()
                    self.balancer.release(base, False, outlier)
                    err = translate(BadResponse(f"the answer's id is not the request's: "
                                                f"{mismatch}"), name)
                    self.metrics.upstream_error(route.name, name, err.kind)
                    raise err
            headers_out = response_headers(upstream.headers)
            headers_out += (("x-request-id", ex.request_id), ("x-model-version", name),
                            ("x-model-route", route.name))
            ex.status = upstream.status
            if body is not None:
                self.balancer.release(base, upstream.status < 500, outlier)
                ex.response_body = body
                return Response(upstream.status, body, headers_out, content_length=length
                                if request.method == "HEAD" else None)
            await self._stream(conn, upstream, headers_out, base, outlier, ex)
            return None
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _stream(self, conn: Connection, upstream: UpstreamResponse,
                      headers: list[tuple[str, str]], base: str, outlier: Any,
                      ex: Exchange) -> None:
        """Pass a chunked or large answer through as it arrives, keeping a bounded copy."""
        # The running log's cap, not the snapshot's: prediction_log changes wait for a restart.
        settings = ex.snapshot.prediction_log if self.predlog is None else self.predlog.settings
        cap = int(settings.max_payload_kb * 1024)
        copied: list[bytes] = []
        kept = total = 0
        ok = upstream.status < 500
        try:
            conn.start_stream(upstream.status, headers, upstream.content_length)
            while True:
                try:
                    chunk = await upstream.next_chunk(ex.route.timeout_s)
                except (UpstreamError, OSError, TimeoutError) as exc:
                    err = translate(exc, ex.version or "")
                    self.metrics.upstream_error(ex.route.name, ex.version or "", err.kind)
                    ex.error, ok = f"{err.message} mid-response", False
                    conn.abort()  # the status line is gone; cutting is the only signal left
                    return
                if not chunk:
                    break
                total += len(chunk)
                room = cap - kept
                if room > 0:
                    copied.append(chunk[:room])
                    kept += min(len(chunk), room)
                if len(chunk) > room:
                    ex.response_truncated = True
                await conn.write_chunk(chunk)
            conn.end_stream()
        except ConnectionError:
            ex.error = "client disconnected"
        finally:
            upstream.release()
            self.balancer.release(base, ok, outlier)
            ex.response_body = b"".join(copied)
            ex.response_total = total
            if ex.route.protocol == "v2" and not ex.response_truncated:  # decoded later
                ex.answer_header = tensors.answer_header(upstream.headers, total)

    def _v2_server_endpoint(self, snapshot: Snapshot, request: Request,
                            path: str) -> Response | None:
        """V2 server health and metadata, answered by the router when no route claims them."""
        if request.method not in ("GET", "HEAD") or \
                path not in ("/v2", "/v2/health/live", "/v2/health/ready"):
            return None
        if not any(r.protocol == "v2" for r in snapshot.routes):
            return None
        if path == "/v2":
            return json_response(200, {"name": "model-router", "version": VERSION,
                                       "extensions": []})
        ready = path == "/v2/health/live" or not self.draining
        return json_response(200 if ready else 503,
                             {"live": True} if path.endswith("live") else {"ready": ready})

    async def _feedback(self, request: Request, snapshot: Snapshot, request_id: str,
                        ts: float) -> Response:
        """``POST /-/feedback {"request_id", "outcome"}``: a feedback record, joined later."""
        if request.method != "POST":
            return error_response(BadRequest("feedback is POST {request_id, outcome}"),
                                  request_id)
        if request.too_large:
            return error_response(BodyTooLarge("the feedback body is too large"), request_id)
        try:
            doc = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            return error_response(BadRequest(f"feedback is not JSON: {exc}"), request_id)
        if not isinstance(doc, dict) or not isinstance(doc.get("request_id"), str) \
                or not doc["request_id"] or not isinstance(doc.get("outcome"), dict):
            return error_response(BadRequest(
                'feedback needs {"request_id": "<id>", "outcome": {...}}'), request_id)
        served = await self._served(doc["request_id"])
        if self.predlog is not None:
            reserved = self.predlog.try_reserve() or await self.predlog.reserve()
            if not reserved:
                return error_response(PredictionLogUnavailable(
                    "the prediction log cannot take the feedback"), request_id)
            self._guarded("predlog", self.predlog.add, Entry(
                ts=ts, request_id=doc["request_id"],
                route=snapshot.route(served.route) if served else None,
                revision=served.revision if served else snapshot.revision, role="feedback",
                version=served.version if served else None, reason=None, upstream=None,
                status=202, latency_ms=0.0, sticky_key=None, request_body=None,
                response_body=None, outcome=doc["outcome"]), True)
        if served is not None:
            self._guarded("outcomes", self.metrics.outcomes, served.route, served.version,
                          doc["outcome"])
        for name, observer in self.feedback_observers:
            self._guarded(name, observer, doc["request_id"], doc["outcome"], served)
        return json_response(202, {"request_id": doc["request_id"], "accepted": True})

    async def _served(self, request_id: str) -> Served | None:
        """Who served ``request_id`` (None: not known here, or the lookup failed)."""
        if self.attribution is None:
            return None
        try:
            return await self.attribution.find(request_id)
        except Exception:  # noqa: BLE001 - an unattributed outcome is still logged
            self._failed("attribution")
            return None

    def _notify(self, ex: Exchange, reserved: bool) -> None:
        """Hand a finished exchange to the metrics, the prediction log and every observer.

        Called exactly once per matched request, after the last byte went out (call_soon);
        never raises: each side effect fails alone, into ``_failed``.
        """
        self.metrics.observe(ex.route.name, ex.version, "primary", ex.status, ex.latency_s)
        if ex.answer_header is not None:
            self._guarded("binary", read_binary_answer, ex)
        if self.predlog is not None:
            if ex.inference:
                try:
                    self.predlog.add(ex, reserved)
                except Exception:  # noqa: BLE001 - side effects never break the response
                    self._failed("predlog")
            elif reserved:
                self.predlog.release()
        for name, observer in self.observers:  # (the try is inline: no call per observer)
            try:
                observer(ex)
            except Exception:  # noqa: BLE001
                self._failed(name)

    def _guarded(self, name: str, effect: Callable[..., Any], *args: Any) -> None:
        """``effect(*args)``, failing into ``_failed`` (the feedback path's side effects)."""
        try:
            effect(*args)
        except Exception:  # noqa: BLE001 - side effects never break the response
            self._failed(name)

    def _failed(self, name: str) -> None:
        """The one boundary of side effects (called from an ``except``): the failure is logged
        with its traceback and counted in ``observer_errors_total{observer}``; it never
        reaches a client."""
        self.metrics.observer_error(name)
        log.exception("observer %s failed", name)
