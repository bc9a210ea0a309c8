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

import httptools

from .timers import Deadline, Deadlines

IDLE_S = 30.0            # idle connections older than this are closed, not reused
MAX_IDLE = 256           # idle connections kept per origin
MAX_HEADER_BYTES = 16 * 1024   # an answer's header block, and its number of lines: more is
MAX_HEADER_LINES = 100         # not a model server's answer (502 protocol)
MAX_HEAD_BYTES = MAX_HEADER_BYTES + 4 * MAX_HEADER_LINES + 1024  # as received, framing too
MAX_INTERIM = 10         # 1xx answers before the real one
READ_HIGH = 256 * 1024   # streamed body bytes held before reading the upstream pauses


class UpstreamError(Exception):
    kind = "protocol"


class ConnectFailed(UpstreamError):
    kind = "connect"


class ConnectionReset(UpstreamError):
    kind = "reset"


class BadResponse(UpstreamError):
    kind = "protocol"


class ResponseTimeout(UpstreamError, TimeoutError):
    kind = "timeout"


class _ExtraAnswer(Exception):
    """Raised inside the parser: an answer began after the expected one was complete."""


class Response:
    """Status and headers at once; the body buffered or read chunk by chunk."""

    __slots__ = ("status", "headers", "content_length", "_conn", "_chunks", "_done",
                 "_waiter", "_error", "_released", "_held", "_whole", "_served_by")

    def __init__(self, conn: _Connection) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.content_length: int | None = None
        self._conn: _Connection | None = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._done = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._released = False
        self._held = 0          # body bytes received and not yet taken
        self._whole = False     # read() wants the whole body: no flow control
        self._served_by = conn  # kept after release, so a bad answer can close it

    def __repr__(self) -> str:
        return f"<Response {self.status} done={self._done} held={self._held}>"

    def _take(self) -> bytes:
        chunk = self._chunks.popleft()
        self._held -= len(chunk)
        conn = self._conn
        if conn is not None and conn.paused and self._held <= READ_HIGH // 2:
            conn.resume()
        return chunk

    @property
    def complete(self) -> bool:
        """True when the whole body has arrived (the common case for small answers)."""
        return self._done

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; BadResponse if it grows past ``limit`` bytes."""
        self._whole = True
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()
        while not self._done:
            if self._error is not None:
                raise self._error
            if limit is not None and self._held > limit:
                self.reject()
                raise BadResponse(f"the answer is over {limit} bytes")
            await self._wait()
        if limit is not None and self._held > limit:
            self.reject()
            raise BadResponse(f"the answer is over {limit} bytes")
        if self._error is not None and not self._done:
            raise self._error
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._held = 0
        self.release()
        return body

    async def next_chunk(self, timeout: float | None = None) -> bytes:
        """The next body chunk as it arrives, b"" at the end; UpstreamError if cut off.

        Streaming replaces the request's overall deadline by ``timeout`` per wait.
        """
        conn = self._conn
        if conn is not None:
            conn.disarm()
        while True:
            if self._chunks:
                return self._take()
            if self._done:
                return b""
            if self._error is not None:
                raise self._error
            if conn is None or timeout is None:
                await self._wait()
                continue
            conn.arm(conn.pool.deadlines.after(timeout, conn.timed_out))
            try:
                await self._wait()
            finally:
                conn.disarm()

    def release(self) -> None:
        """Give the connection back (or close it, if the answer is not finished)."""
        if self._released:
            return
        self._released = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finished(reusable=self._done and self._error is None)

    def reject(self) -> None:
        """The answer is not the one asked for (or unusable): its connection is never reused."""
        conn = self._served_by
        self.release()
        if conn is not None:
            conn.abort()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; serves one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.headers_ready: asyncio.Future[None] | None = None
        self.closed = False
        self.keep_alive = True
        self.head = False
        self.idle_since = 0.0
        self.received = False
        self.deadline: Deadline | None = None
        self.paused = False      # reading paused: the streamed body is not being taken
        self.answered = False    # the final answer to the request in flight is complete
        self.in_head = False     # between the status line and the end of the header block
        self.header_bytes = 0
        self.head_bytes = 0      # bytes received while in the head (later data_received calls)
        self.interim = 0         # 1xx answers to the request in flight

    def __repr__(self) -> str:
        return (f"<Connection {self.pool.origin} closed={self.closed} paused={self.paused}"
                f" answered={self.answered}>")

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.response is None or self.closed:
            # Bytes nobody asked for (on an idle pooled connection, or after the answer
            # was taken): whatever they are, they must never become another request's
            # answer.
            self.abort()
            return
        self.received = True
        if self.in_head:  # llhttp hands a header line over only when it ends: count bytes
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._fail(BadResponse(f"answer headers over {MAX_HEADER_BYTES} bytes"))
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("upstream asked for a protocol upgrade"))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _ExtraAnswer):
                self.abort()
            else:
                self._fail(cause if isinstance(cause, BadResponse)
                           else BadResponse(f"invalid HTTP from upstream: {exc}"))
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"invalid HTTP from upstream: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.disarm()
        response = self.response
        if response is not None and not response._done:
            if exc is None and response.status and response.content_length is None and \
                    not self._chunked(response):
                # A body delimited by the connection closing: EOF is its end (a reset is
                # not: the answer was cut).
                response._done = True
                response._wake()
            else:
                self._fail(ConnectionReset("upstream closed the connection"))

    @staticmethod
    def _chunked(response: Response) -> bool:
        return any(k.lower() == "transfer-encoding" and "chunked" in v.lower()
                   for k, v in response.headers)

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.answered:
            # A second answer after the one expected: one answer per request, so this
            # connection is done (the first answer stands; nothing else is read).
            raise _ExtraAnswer
        self.in_head = True
        self.header_bytes = self.head_bytes = 0
        if self.response is not None:
            self.response.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        if response is None or not self.in_head:
            return  # trailers: never turned into answer headers
        # 4 bytes of framing a line: 200,000 empty headers stop here too, long before the
        # line count is checked at the end of the block
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > MAX_HEADER_BYTES:
            raise BadResponse(f"answer headers over {MAX_HEADER_BYTES} bytes")
        # the same decoding as the server's, so every byte of a header round-trips
        response.headers.append((name.decode("latin-1"),
                                 value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self.in_head = False
        response = self.response
        if response is None:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # informational: the real answer follows
            self.interim += 1
            if self.interim > MAX_INTERIM:
                raise BadResponse(f"over {MAX_INTERIM} informational answers from upstream")
            return
        if status > 599 or status < 100:
            raise BadResponse(f"invalid status {status:03d} from upstream")
        if len(response.headers) > MAX_HEADER_LINES:
            raise BadResponse(f"answer with over {MAX_HEADER_LINES} header lines")
        response.status = status
        self.keep_alive = self.parser.should_keep_alive()
        for name, value in response.headers:
            lname = name.lower()
            if lname == "content-length":
                try:
                    response.content_length = int(value)
                except ValueError:
                    raise BadResponse("invalid Content-Length from upstream") from None
            elif lname == "transfer-encoding" and \
                    [c.strip() for c in value.lower().split(",")] != ["chunked"]:
                # The router does not decode transfer-codings (gzip...): relaying the
                # coded bytes without the header would hand the client garbage.
                raise BadResponse(f"unsupported Transfer-Encoding {value!r} from upstream")
        if self.head or status in (204, 304):
            response._done = True
            self.keep_alive = self.keep_alive and not self.head
        ready = self.headers_ready
        if ready is not None and not ready.done():
            ready.set_result(None)

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None and response.status:
            response._chunks.append(body)
            response._held += len(body)
            if response._held > READ_HIGH and not response._whole and not self.paused:
                self.pause()
            response._wake()

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or not response.status:
            return  # the end of a 1xx
        self.answered = True
        self.disarm()
        response._done = True
        response._wake()

    # -- flow control ------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop reading the upstream: its answer waits in the kernel, not in memory."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
            self.paused = True

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- request lifecycle -------------------------------------------------------------------

    def arm(self, deadline: Deadline) -> None:
        self.disarm()
        self.deadline = deadline

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def timed_out(self) -> None:
        self.deadline = None
        self._fail(ResponseTimeout(f"{self.pool.origin} did not answer in time"))

    def _fail(self, error: BaseException) -> None:
        self.disarm()
        self.keep_alive = False
        ready = self.headers_ready
        if ready is not None and not ready.done():
            ready.set_exception(error)
        response = self.response
        if response is not None and not response._done:
            response._error = error
            response._wake()
        if self.transport is not None:
            self.transport.close()

    async def send(self, data: bytes, head: bool, deadline: float | None) -> Response:
        response = self.response = Response(self)
        self.head = head
        self.received = False
        self.answered = False
        self.interim = 0
        self.headers_ready = asyncio.get_running_loop().create_future()
        if deadline is not None:
            self.arm(self.pool.deadlines.at(deadline, self.timed_out))
        assert self.transport is not None
        self.transport.write(data)
        try:
            await self.headers_ready
        except BaseException:
            self.abort()
            raise
        finally:
            self.headers_ready = None
        return response

    def finished(self, reusable: bool) -> None:
        self.disarm()
        self.response = None
        if reusable and self.keep_alive and not self.closed:
            if self.paused:  # the answer is complete; the next one must be read
                self.resume()
            self.pool.put(self)
        else:
            self.abort()

    def abort(self) -> None:
        self.disarm()
        self.keep_alive = False
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Idle connections to one origin (scheme, host, port, TLS context)."""

    def __init__(self, scheme: str, host: str, port: int, tls: ssl.SSLContext | None,
                 deadlines: Deadlines) -> None:
        self.origin = f"{scheme}://{host}:{port}"
        self.deadlines = deadlines
        self.host, self.port = host, port
        self.tls = tls if scheme == "https" else None
        self.idle: collections.deque[_Connection] = collections.deque()

    def __repr__(self) -> str:
        return f"<Pool {self.origin} idle={len(self.idle)}>"

    async def acquire(self, deadline: float | None) -> tuple[_Connection, bool]:
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
                    lambda: _Connection(self), self.host, self.port, ssl=self.tls,
                    server_hostname=self.host if self.tls else None)
        except TimeoutError:
            raise ResponseTimeout(f"cannot connect to {self.origin} in time") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {self.origin}: {exc}") from None
        return conn, False

    def put(self, conn: _Connection) -> None:
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
                      timeout: float | None = None) -> Response:
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
