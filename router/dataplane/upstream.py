"""Upstream side: replica choice with outlier ejection, header hygiene, error translation.

Bookkeeping here is synchronous and does no I/O (the proxy does the I/O), so it is cheap to
call per request and easy to test with a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from ..config import Outlier, Version
from ..errors import (
    ConnectFailed,
    ConnectionReset,
    UpstreamTimeout,
    UpstreamUnavailable,
)

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "proxy-connection",
})
# Never copied from the client: recomputed by the client library or set by the router.
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "expect", "x-forwarded-for"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "x-request-id", "x-model-version",
                               "x-model-route"}


def request_headers(items: Iterable[tuple[str, str]], version: Version,
                    request_id: str, peer: str | None) -> dict[str, str]:
    """The headers sent upstream: the client's minus hop-by-hop, plus the router's own."""
    drop = _REQUEST_DROP
    out: dict[str, str] = {}
    forwarded_for = None
    connection_tokens: tuple[str, ...] = ()
    for name, value in items:
        lname = name.lower()
        if lname in drop:
            if lname == "x-forwarded-for":
                forwarded_for = value if forwarded_for is None else f"{forwarded_for}, {value}"
            elif lname == "connection":
                connection_tokens += tuple(t.strip().lower() for t in value.split(","))
            continue
        if lname in out:
            out[lname] = f"{out[lname]}, {value}"
        else:
            out[lname] = value
    for token in connection_tokens:
        out.pop(token, None)
    if peer:
        out["x-forwarded-for"] = f"{forwarded_for}, {peer}" if forwarded_for else peer
    elif forwarded_for:
        out["x-forwarded-for"] = forwarded_for
    out["x-request-id"] = request_id
    for name, value in version.headers:
        out[name] = value
    if version.host:
        out["host"] = version.host
    return out


def response_headers(upstream: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream response headers to pass back: hop-by-hop and router-owned ones removed."""
    drop = _RESPONSE_DROP
    return [(k, v) for k, v in upstream if k.lower() not in drop]


def translate(exc: BaseException, version: str) -> UpstreamUnavailable | UpstreamTimeout:
    """Client and OS exceptions -> the router's 502/504 errors, with a metric ``kind``."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"version {version} did not answer in time")
    if isinstance(exc, ConnectFailed):
        return UpstreamUnavailable(f"cannot connect to version {version}: {exc}",
                                   kind="connect")
    if isinstance(exc, (ConnectionReset, ConnectionError)):
        return UpstreamUnavailable(f"version {version} closed the connection", kind="reset")
    return UpstreamUnavailable(f"version {version} sent an invalid answer: {exc}",
                               kind="protocol")


class _Replica:
    __slots__ = ("url", "outstanding", "failures", "ejected_until")

    def __init__(self, url: str) -> None:
        self.url = url
        self.outstanding = 0
        self.failures = 0
        self.ejected_until = 0.0

    def __repr__(self) -> str:
        return (f"<Replica {self.url} outstanding={self.outstanding} failures={self.failures}"
                f" ejected_until={self.ejected_until:.1f}>")


class Balancer:
    """Least outstanding requests over a version's ``urls``, with Envoy-style ejection.

    State is keyed by URL, so it survives reloads that keep the URL. With every replica
    ejected the one due back first is used (panic mode) rather than failing the request.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._replicas: dict[str, _Replica] = {}
        self._turn = 0

    def _replica(self, url: str) -> _Replica:
        replica = self._replicas.get(url)
        if replica is None:
            replica = self._replicas[url] = _Replica(url)
        return replica

    def acquire(self, version: Version) -> str:
        """Choose a base URL and count it outstanding; pair with ``release``."""
        urls = version.urls
        if len(urls) == 1:
            replica = self._replica(urls[0])
        else:
            now = self._clock()
            # Rotate the starting point so ties (idle replicas) are shared round-robin.
            self._turn += 1
            start = self._turn % len(urls)
            candidates = [self._replica(u) for u in urls[start:] + urls[:start]]
            healthy = [r for r in candidates if r.ejected_until <= now]
            if healthy:
                replica = min(healthy, key=lambda r: r.outstanding)
            else:
                replica = min(candidates, key=lambda r: r.ejected_until)
        replica.outstanding += 1
        return replica.url

    def release(self, url: str, ok: bool, outlier: Outlier | None) -> None:
        """Record the outcome; eject after ``consecutive_failures`` failures in a row.

        ``outlier`` is None for single-URL versions: there is nothing to eject to.
        """
        replica = self._replica(url)
        replica.outstanding -= 1
        if ok or outlier is None:
            replica.failures = 0
            return
        replica.failures += 1
        if replica.failures >= outlier.consecutive_failures:
            replica.ejected_until = self._clock() + outlier.ejection_s
            replica.failures = 0

    def ejected(self, url: str) -> bool:
        replica = self._replicas.get(url)
        return replica is not None and replica.ejected_until > self._clock()

    def all_ejected(self, version: Version) -> bool:
        return all(self.ejected(u) for u in version.urls)
