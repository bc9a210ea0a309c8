"""A lean HTTP/1.1 upstream client on asyncio protocols, with httptools (llhttp) parsing.

The proxy spends most of its time in the upstream client; a general-purpose client does
much the router does not need (cookies, redirects, decompression, multipart). This one does
exactly: keep-alive pools per origin, one request at a time per connection, Content-Length
and chunked answers, 1xx skipped, ``Connection: close`` honoured, streaming bodies, TLS
(system CAs or a per-version context). Errors come out as one of three ``UpstreamError``
kinds (connect | reset | protocol) or ``ResponseTimeout`` for the proxy to translate. A
request's ``timeout`` bounds connect + headers + a body read whole with ``read``; while a body
is streamed with ``next_chunk`` it bounds each wait for the next chunk. A timed-out or
cancelled request closes its connection.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from ..errors import ConnectFailed, ConnectionReset, ResponseTimeout
from .connection import UpstreamConnection, UpstreamResponse
from .timers import Deadlines

IDLE_S = 30.0            # idle connections older than this are closed, not reused
MAX_IDLE = 256           # idle connections kept per origin


class Pool:
    """Idle connections to one origin (scheme, host, port, TLS context)."""

    def __init__(self, scheme: str, host: str, port: int, tls: ssl.SSLContext | None,
                 deadlines: Deadlines) -> None:
        self.origin = f"{scheme}://{host}:{port}"
        self.deadlines = deadlines
        self.host, self.port = host, port
        self.tls = tls if scheme == "https" else None
        self.idle: collections.deque[UpstreamConnection] = collections.deque()

    def __repr__(self) -> str:
        return f"<Pool {self.origin} idle={len(self.idle)}>"

    async def acquire(self, deadline: float | None) -> tuple[UpstreamConnection, bool]:
        """An idle connection (reused=True) or a new one, connected before ``deadline``."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_S:
                return conn, True
            conn.abort()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port, ssl=self.tls,
                    server_hostname=self.host if self.tls else None)
        except TimeoutError:
            raise ResponseTimeout(f"cannot connect to {self.origin} in time") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {self.origin}: {exc}") from None
        return conn, False

    def put(self, conn: UpstreamConnection) -> None:
        if len(self.idle) >= MAX_IDLE:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().abort()


_DEFAULT_TLS: ssl.SSLContext | None = None


def _default_tls() -> ssl.SSLContext:
    global _DEFAULT_TLS
    if _DEFAULT_TLS is None:
        _DEFAULT_TLS = ssl.create_default_context()
    return _DEFAULT_TLS


class Client:
    """Pools by origin; ``request`` sends one request and returns once headers arrived."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, str, int, int], Pool] = {}
        self._origins: dict[str, tuple[str, str, int, str]] = {}
        self.deadlines = Deadlines()

    def __repr__(self) -> str:
        return f"<Client pools={len(self._pools)}>"

    def _split(self, base: str) -> tuple[str, str, int, str]:
        """(scheme, host, port, path prefix) of a version's base URL, cached."""
        found = self._origins.get(base)
        if found is None:
            parts = urlsplit(base)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            found = (parts.scheme, parts.hostname or "", port, parts.path)
            self._origins[base] = found
        return found

    def _pool(self, scheme: str, host: str, port: int, tls: ssl.SSLContext | None) -> Pool:
        ctx = tls if tls is not None else (_default_tls() if scheme == "https" else None)
        key = (scheme, host, port, id(ctx))
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(scheme, host, port, ctx, self.deadlines)
        return pool

    async def request(self, method: str, base: str, suffix: str,
                      headers: Iterable[tuple[str, str]], body: bytes | None,
                      tls: ssl.SSLContext | None = None,
                      timeout: float | None = None) -> UpstreamResponse:
        """Send ``method base+suffix``; ``headers`` must not carry Content-Length.

        ``timeout`` (seconds) bounds connecting, the answer's headers, and its body when it is
        read whole; ``ResponseTimeout`` when it runs out.
        """
        deadline = None if timeout is None else self.deadlines.now() + timeout
        scheme, host, port, prefix = self._split(base)
        pool = self._pool(scheme, host, port, tls)
        path = prefix + suffix
        if not path.startswith("/"):
            path = "/" + path
        lines = [f"{method} {path} HTTP/1.1\r\n"]
        has_host = False
        for name, value in headers:
            if name == "host":
                has_host = True
            lines.append(f"{name}: {value}\r\n")
        if not has_host:
            default_port = 443 if scheme == "https" else 80
            lines.append(f"host: {host}\r\n" if port == default_port
                         else f"host: {host}:{port}\r\n")
        if body is not None:
            lines.append(f"content-length: {len(body)}\r\n")
        lines.append("\r\n")
        data = "".join(lines).encode("utf-8", "surrogateescape")
        if body:
            data += body
        head = method == "HEAD"
        for _ in range(2):
            conn, reused = await pool.acquire(deadline)
            try:
                return await conn.send(data, head, deadline)
            except ConnectionReset:
                # A pooled connection the server had already closed: safe to resend once,
                # since no byte of an answer came back.
                if reused and not conn.received:
                    continue
                raise
        raise ConnectionReset(f"{pool.origin} closed two connections in a row")

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
