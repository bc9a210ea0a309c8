"""The router's gRPC front end: KServe V2 ``inference.GRPCInferenceService`` on ``grpc.port``.

A ``ModelInfer`` call is routed as the HTTP request it stands for, ``POST
/v2/models/M[/versions/V]/infer`` with the call's metadata as headers: the same route table,
pins, overrides, splits, sticky keys, rollouts, validation, metrics, shadows and prediction
records as the HTTP proxy (``Proxy`` does the deciding and the observing for both). The call's
bytes go to the chosen version's ``grpc`` address with ``model_name`` and ``model_version``
set to what that server serves (``grpc_wire.renamed``: two fields appended, the tensors never
re-encoded), and the answer's bytes come back as they are. The JSON equivalents of both are
what validation, drift, shadow copies (sent over HTTP to the shadow's url) and the log read.

grpcio's asyncio server with a generic handler: no (de)serializers, so a call is bytes in
and bytes out; an unknown method is UNIMPLEMENTED, a message over ``max_body_mb`` is
RESOURCE_EXHAUSTED (grpcio's own limit, set at start), garbage is INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson
from google.protobuf.message import DecodeError

from ..config import Listen, Route, Snapshot, Version
from ..errors import (
    BadRequest,
    BodyTooLarge,
    Draining,
    NoRoute,
    Overloaded,
    PredictionLogUnavailable,
    RouterError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..metrics import UNMATCHED
from ..records import Exchange
from ..tensors import TensorError, TooManyElements, unread
from . import routing
from .checks import trace_id, unsafe_path, valid_request_id
from .grpc_wire import HTTP, SERVICE, renamed, request_json, response_json, status_of
from .http import Headers, Request
from .oip import inference_pb2 as pb
from .proxy import VERSION, Proxy
from .upstream import request_headers

log = logging.getLogger("model_router.grpc")

# What the HTTP header rules (upstream.request_headers) would pass on that gRPC owns itself
# (or, for host, the channel's :authority): never sent as metadata.
_GRPC_OWN = frozenset({"host", "content-type", "te", "user-agent", "grpc-accept-encoding",
                       "grpc-encoding", "grpc-timeout", "accept-encoding"})
Method = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


class _Abort(Exception):
    """End the call with this status (raised inside, turned into context.abort outside)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class Channels:
    """One grpc.aio channel per upstream address (and TLS), kept for the process's life."""

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._channels: dict[tuple[str, Any, str | None], grpc.aio.Channel] = {}

    def __repr__(self) -> str:
        return f"<Channels {len(self._channels)}>"

    def get(self, version: Version) -> grpc.aio.Channel:
        assert version.grpc is not None
        key = (version.grpc, version.grpc_tls, version.host)
        channel = self._channels.get(key)
        if channel is None:
            options: list[tuple[str, Any]] = [
                ("grpc.max_receive_message_length", self.max_message),
                ("grpc.max_send_message_length", self.max_message)]
            if version.host:  # as the Host header over HTTP: ingresses route on it
                options.append(("grpc.default_authority", version.host))
            if version.grpc_tls is None:
                channel = grpc.aio.insecure_channel(version.grpc, options=options)
            else:
                tls = version.grpc_tls
                creds = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
                channel = grpc.aio.secure_channel(version.grpc, creds, options=options)
            self._channels[key] = channel
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


class GrpcFront:
    """The gRPC listener; ``start`` binds it, ``shutdown`` drains it."""

    def __init__(self, proxy: Proxy, live_limit: Callable[[], int]) -> None:
        self.proxy = proxy
        self.live_limit = live_limit           # max_body_bytes now (a reload may lower it)
        self.channels = Channels(live_limit())
        self.server: grpc.aio.Server | None = None
        self.methods: dict[str, Method] = {
            SERVICE + "ModelInfer": self.model_infer,
            SERVICE + "ModelMetadata": self.model_metadata,
            SERVICE + "ModelReady": self.model_ready,
            SERVICE + "ServerLive": self.server_live,
            SERVICE + "ServerReady": self.server_ready,
            SERVICE + "ServerMetadata": self.server_metadata,
        }

    def __repr__(self) -> str:
        return f"<GrpcFront {self.server is not None}>"

    async def start(self, listen: Listen, *, reuse_port: bool = False) -> int:
        limit = self.live_limit()
        self.server = server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if reuse_port else 0)])
        handlers = {path.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(method)
                    for path, method in self.methods.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE.strip("/"), handlers),))
        port: int = server.add_insecure_port(f"{listen.host}:{listen.port}")
        if port == 0:
            raise OSError(f"cannot bind the gRPC port {listen.host}:{listen.port}")
        await server.start()
        return port

    async def shutdown(self, grace: float) -> None:
        """Refuse new calls, let those in flight finish within ``grace``, cancel the rest."""
        if self.server is not None:
            await self.server.stop(grace)
        await self.channels.close()

    # -- the server's own answers -----------------------------------------------------------

    async def server_live(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerReadyResponse(ready=not self.proxy.draining).SerializeToString()

    async def server_metadata(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerMetadataResponse(name="model-router", version=VERSION,
                                         extensions=[]).SerializeToString()

    # -- routed calls -------------------------------------------------------------------------
    #
    # A failed call ends with ``_end`` (status, details and the marks as trailing metadata)
    # and returns, never by raising through ``context.abort``: the traceback would keep the
    # call's frames, its message and tensors included, alive after the call.

    async def model_metadata(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._routed(data, context, pb.ModelMetadataRequest, "ModelMetadata")

    async def model_ready(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._routed(data, context, pb.ModelReadyRequest, "ModelReady")

    async def _routed(self, data: bytes, context: grpc.aio.ServicerContext, message: Any,
                      method: str) -> bytes:
        """ModelMetadata / ModelReady: routed like ``GET /v2/models/M[/versions/V]``, under
        the same in-flight limit; counted, not logged."""
        proxy = self.proxy
        snapshot = proxy.live.snapshot
        headers, request_id = self._headers(context, "")
        refused = self._admission(snapshot)
        if refused is not None:
            return self._fail(context, refused, request_id, UNMATCHED, None)
        route_name, version_name = UNMATCHED, None
        proxy.inflight += 1
        try:
            try:
                msg = message.FromString(data)
            except DecodeError as exc:
                raise BadRequest(f"not a {message.__name__}: {exc}") from None
            route, rest = self._match(snapshot, msg.name, msg.version, "")
            route_name = route.name
            request = self._request(context, headers, b"", "GET")
            decision = proxy._decide(request, route, rest, None)
            version_name = decision.version
            version = self._reachable(route, decision.version)
            name, pinned = version.grpc_model
            call = self.channels.get(version).unary_unary(SERVICE + method)
            answer: bytes = await call(renamed(data, name, pinned),
                                       timeout=self._timeout(route, context),
                                       metadata=self._metadata(headers, version, request_id,
                                                               _peer(context.peer())))
        except RouterError as err:
            return self._fail(context, err, request_id, route_name, version_name)
        except grpc.aio.AioRpcError as err:
            self._count(route_name, version_name, err.code())
            return _end(context, err.code(), err.details() or "",
                        _marks(request_id, version_name, route_name))
        finally:
            proxy.inflight -= 1
        self._count(route_name, version_name, grpc.StatusCode.OK)
        await context.send_initial_metadata(_marks(request_id, version_name, route_name))
        return answer

    async def model_infer(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        proxy = self.proxy
        started, ts = proxy._clock(), proxy._wall()
        snapshot = proxy.live.snapshot
        try:
            msg = pb.ModelInferRequest.FromString(data)
        except DecodeError as exc:
            return self._fail(context, BadRequest(f"not a ModelInferRequest: {exc}"),
                              proxy._next_id(), UNMATCHED, None)
        headers, request_id = self._headers(context, msg.id)
        refused = self._admission(snapshot)
        if refused is not None:
            return self._fail(context, refused, request_id, UNMATCHED, None)
        proxy.inflight += 1
        try:
            return await self._infer(data, msg, context, snapshot, headers, request_id,
                                     started, ts)
        finally:
            proxy.inflight -= 1

    async def _infer(self, data: bytes, msg: pb.ModelInferRequest,
                     context: grpc.aio.ServicerContext, snapshot: Snapshot, headers: Headers,
                     request_id: str, started: float, ts: float) -> bytes:
        proxy = self.proxy
        try:
            route, rest = self._match(snapshot, msg.model_name, msg.model_version, "/infer")
        except RouterError as err:
            proxy.metrics.observe(UNMATCHED, None, "primary", err.status,
                                  proxy._clock() - started)
            return self._fail(context, err, request_id, UNMATCHED, None)
        reserved = False
        if proxy.predlog is not None and proxy.predlog.settings.on_full == "block":
            reserved = proxy.predlog.try_reserve() or await proxy.predlog.reserve()
            if not reserved:
                proxy.metrics.reject(route.name, 503)
                return self._fail(context, PredictionLogUnavailable(
                    "the prediction log cannot take the record; not forwarded"),
                    request_id, route.name, None)
        ex = Exchange(ts=ts, request_id=request_id, snapshot=snapshot, route=route,
                      method="POST", version=None, reason=None, upstream=None, status=0,
                      latency_s=0.0, request_body=b"", response_body=None,
                      response_truncated=False, fallback_from=None, error=None,
                      sticky_key=None, trace_id=trace_id(headers.get("traceparent")),
                      headers=headers, peer=_peer(context.peer()), inference=True)
        answer: Answer | None = None
        code, details = grpc.StatusCode.OK, ""
        try:
            answer = await self._exchange(data, msg, context, route, rest, ex)
        except RouterError as err:
            ex.status, ex.error = err.status, err.message
            code, details = status_of(err), err.message
            if isinstance(err, BodyTooLarge):
                proxy.metrics.reject(route.name, 413)
        except _Abort as abort:
            code, details = abort.code, abort.details
        finally:
            ex.latency_s = proxy._clock() - started
            if ex.status == 0:  # cancelled (the client went, or shutdown) before an answer
                ex.error = ex.error or "cancelled before an answer"
                code = grpc.StatusCode.CANCELLED
            asyncio.get_running_loop().call_soon(self._notify, ex, reserved, answer, code)
        marks = _marks(ex.request_id, ex.version, route.name)
        if answer is None:
            return _end(context, code, details, marks)
        await context.send_initial_metadata(marks)
        return answer.data

    async def _exchange(self, data: bytes, msg: pb.ModelInferRequest,
                        context: grpc.aio.ServicerContext, route: Route, rest: str,
                        ex: Exchange) -> Answer:
        """Read, check, decide and forward one ModelInfer; its answer."""
        proxy = self.proxy
        limit = self.live_limit()
        if len(data) > limit:
            raise BodyTooLarge(f"the message is over the {limit}-byte limit")
        doc = None
        if route.protocol == "v2":
            try:
                doc = request_json(msg)
            except TooManyElements as exc:
                if route.validator is not None and route.validation == "enforce":
                    raise BodyTooLarge(f"tensors: {exc} to validate; not forwarded") from None
                doc = None
                ex.request_body, ex.mirror = orjson.dumps(unread(data, exc.count)), False
            except TensorError as exc:
                raise BadRequest(f"tensors: {exc}; not forwarded") from None
            if doc is not None:
                ex.request_body = orjson.dumps(doc)   # what an HTTP client would have sent
                ex.doc, ex.valid_json = doc, True
                if route.validator is not None:
                    proxy._check(route, ex, doc)
        else:
            ex.request_body, ex.mirror = data, False   # no HTTP form to copy to a shadow
        request = self._request(context, ex.headers, ex.request_body, "POST")
        decision = proxy._decide(request, route, rest, ex, doc)
        ex.version, ex.reason, ex.suffix = decision.version, decision.reason, decision.rest
        attempts = [decision.version]
        if route.fallback is not None and route.fallback != decision.version:
            attempts.append(route.fallback)
        for attempt, name in enumerate(attempts):
            last = attempt == len(attempts) - 1
            version = self._reachable(route, name)
            ex.version, ex.upstream = name, f"grpc://{version.grpc}"
            model, pinned = version.grpc_model
            call = self.channels.get(version).unary_unary(SERVICE + "ModelInfer")
            try:
                raw: bytes = await call(
                    renamed(data, model, pinned), timeout=self._timeout(route, context),
                    metadata=self._metadata(ex.headers, version, ex.request_id, ex.peer))
            except grpc.aio.AioRpcError as err:
                code = err.code()
                if code is grpc.StatusCode.UNAVAILABLE:
                    proxy.metrics.upstream_error(route.name, name, "connect")
                    if not last:
                        ex.fallback_from, ex.reason = name, "fallback"
                        continue
                    raise UpstreamUnavailable(f"version {name} over gRPC: "
                                              f"{err.details()}") from None
                if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                    proxy.metrics.upstream_error(route.name, name, "timeout")
                    raise UpstreamTimeout(f"version {name} over gRPC did not answer in time"
                                          ) from None
                # The upstream's own status passes through unchanged.
                ex.status, ex.error = HTTP.get(code, 500), f"{code.name}: {err.details()}"
                raise _Abort(code, err.details() or "") from None
            answer = Answer(raw)
            if msg.id and answer.message is not None and answer.message.id \
                    and answer.message.id != msg.id:
                # Another call's answer: never hand it to this caller.
                proxy.metrics.upstream_error(route.name, name, "protocol")
                raise UpstreamUnavailable(
                    f"version {name} over gRPC answered id {answer.message.id[:64]!r} to "
                    f"request {msg.id[:64]!r}")
            ex.status = 200
            return answer
        raise AssertionError("unreachable: the last attempt returns or raises")

    # -- pieces -------------------------------------------------------------------------------

    def _match(self, snapshot: Snapshot, model: str, version: str, tail: str,
               ) -> tuple[Route, str]:
        """The route of ``/v2/models/{model}[/versions/{version}]{tail}``: NoRoute unless one
        matches and at least one of its versions has a gRPC address."""
        if not model:
            raise BadRequest("model_name is empty")
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + tail
        if "/" in model or "/" in version or unsafe_path(path) is not None:
            raise BadRequest(f"model_name or model_version is not a path segment: "
                             f"{path[:200]!r}")
        found = routing.match(snapshot.routes, path)
        if found is None:
            raise NoRoute(f"no route matches {path[:200]}")
        route, rest = found
        if not any(v.grpc for v in route.versions.values()):
            raise NoRoute(f"route {route.name} is not served over gRPC: no version has a "
                          f"grpc address")
        return route, rest

    @staticmethod
    def _reachable(route: Route, name: str) -> Version:
        version = route.versions[name]
        if version.grpc is None:
            raise NoRoute(f"version {name} of route {route.name} has no grpc address: it "
                          f"is not reachable over gRPC")
        return version

    def _headers(self, context: grpc.aio.ServicerContext, own_id: str) -> tuple[Headers, str]:
        """The call's text metadata as headers, and its request id: ``x-request-id``, else
        the message's own ``id``, else a generated one."""
        items = [(k, v) for k, v in context.invocation_metadata() or ()
                 if isinstance(v, str) and not k.startswith(":") and k != "content-type"]
        headers = Headers(items + [("content-type", "application/json")])
        request_id = headers.get("x-request-id") or ""
        if not valid_request_id(request_id):
            request_id = own_id if valid_request_id(own_id) else self.proxy._next_id()
        return headers, request_id

    @staticmethod
    def _request(context: grpc.aio.ServicerContext, headers: Headers, body: bytes,
                 method: str) -> Request:
        """The HTTP request a call stands for, as routing reads it (headers, cookies, body)."""
        return Request(method, "", headers, body, _peer(context.peer()), False, bool(body),
                       len(body))

    @staticmethod
    def _metadata(headers: Headers, version: Version, request_id: str,
                  peer: str | None) -> list[tuple[str, str]]:
        """The call's metadata upstream: the HTTP rules (hop-by-hop dropped, x-forwarded-for
        appended, the router's x-request-id, the version's headers replacing the client's),
        less what gRPC owns. Repeated keys are joined with ", ", which gRPC reads as the
        same metadata."""
        sent = request_headers(headers.raw, version, request_id, peer)
        return [(k, v) for k, v in sent.items() if k not in _GRPC_OWN]

    @staticmethod
    def _timeout(route: Route, context: grpc.aio.ServicerContext) -> float:
        """The route's timeout_s, or less when the caller's deadline comes first."""
        remaining = context.time_remaining()
        if remaining is None or math.isinf(remaining):
            return route.timeout_s
        return max(0.001, min(route.timeout_s, remaining))

    def _admission(self, snapshot: Snapshot) -> RouterError | None:
        """Draining, or over ``limits.max_concurrency`` (shared with HTTP): the refusal."""
        if self.proxy.draining:
            return Draining("the router is shutting down")
        if self.proxy.inflight >= snapshot.limits.max_concurrency:
            self.proxy.metrics.reject(UNMATCHED, 503)
            return Overloaded("too many requests in flight")
        return None

    def _fail(self, context: grpc.aio.ServicerContext, err: RouterError, request_id: str,
              route: str, version: str | None) -> bytes:
        """End a call the router refuses: counted, its status code, the marks."""
        code = status_of(err)
        self._count(route, version, code)
        return _end(context, code, err.message, _marks(request_id, version, route))

    def _count(self, route: str, version: str | None, code: grpc.StatusCode) -> None:
        self.proxy.metrics.count(self.proxy.metrics.grpc_requests, route, version or "none",
                                 "primary", code.name)

    def _notify(self, ex: Exchange, reserved: bool, answer: Answer | None,
                code: grpc.StatusCode) -> None:
        """After the call ended: the answer as JSON for the observers, then the proxy's
        observers (metrics, log, drift, shadows, rollout evidence)."""
        self._count(ex.route.name, ex.version, code)
        if answer is not None and ex.route.protocol == "v2":
            message = answer.message
            try:
                if message is None:
                    message = pb.ModelInferResponse.FromString(answer.data)
                ex.answer = response_json(message)
                ex.response_body = orjson.dumps(ex.answer)
            except TooManyElements as exc:   # a marker, and the served version
                ex.response_body = orjson.dumps({**unread(answer.data, exc.count),
                                                 "model_version": exc.doc.get("model_version")})
            except (DecodeError, TensorError) as exc:
                ex.error = ex.error or f"the answer's tensors: {exc}"
                ex.response_body = answer.data
        elif answer is not None:
            ex.response_body = answer.data
        self.proxy._notify(ex, reserved)


class Answer:
    """An upstream's ModelInferResponse: its bytes (passed on as they are), and the message
    when it was parsed already (to check its id)."""

    __slots__ = ("data", "_message", "_parsed")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._message: pb.ModelInferResponse | None = None
        self._parsed = False

    def __repr__(self) -> str:
        return f"<Answer {len(self.data)} bytes>"

    @property
    def message(self) -> pb.ModelInferResponse | None:
        """The parsed message (once); None when the bytes are not one."""
        if not self._parsed:
            self._parsed = True
            try:
                self._message = pb.ModelInferResponse.FromString(self.data)
            except DecodeError:
                self._message = None
        return self._message


def _end(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str,
         marks: tuple[tuple[str, str], ...]) -> bytes:
    """End a call with ``code``: its details, and the marks as trailing metadata."""
    context.set_code(code)
    context.set_details(details)
    context.set_trailing_metadata(marks)
    return b""


def _marks(request_id: str, version: str | None, route: str) -> tuple[tuple[str, str], ...]:
    """What every answer carries, as initial metadata (HTTP: response headers)."""
    return (("x-request-id", request_id), ("x-model-version", version or ""),
            ("x-model-route", route))


def _peer(peer: str | None) -> str | None:
    """``ipv4:127.0.0.1:5555`` / ``ipv6:[::1]:5555`` -> the address."""
    if not peer:
        return None
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return None
