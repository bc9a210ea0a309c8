"""The router's HTTP/1.1 front end: asyncio protocols with httptools (llhttp) parsing.

A general-purpose web framework spends most of a proxy's budget on request objects, stream
readers and response preparation the router does not need. This server does exactly what the
hot path needs, and the protections a public-facing proxy needs:

- one request at a time per connection, pipelined requests answered in order; a request
  the parser refuses (malformed, an upgrade, a later pipelined one) is answered after the
  ones read before it, never forwarded, and the connection closes;
- the whole body read before the handler runs, bounded by ``max_body_mb``: a larger
  Content-Length (or a chunked body growing past it) is handed to the handler at once as
  ``too_large`` (it answers 413 with a record) and the connection closes without reading on;
- ``client_timeout_s`` bounds idle keep-alive connections, slow headers (slowloris), slow
  bodies, and clients that stop reading their answers; header size, header count and URL size
  are bounded (431/414); llhttp rejects malformed requests and Content-Length/
  Transfer-Encoding conflicts (400) before anything is forwarded; only HTTP/1.0 and 1.1;
- backpressure: after each answer the worker waits until the client has taken it (the
  transport's high-water mark) before it answers the next one, and reading from the client
  pauses meanwhile; queued pipelined requests are bounded in count and bytes. A client that
  does not read costs about one answer of memory, and is cut off after ``client_timeout_s``
  without write progress;
- ``Expect: 100-continue`` answered only to HTTP/1.1 clients, only for the request being read
  once the answers before it are out, never ahead of a 413; HEAD, 204 and 304 answered without
  a body;
- graceful shutdown: stop accepting, let busy connections finish (then close), close idle
  ones, abort what is left after the grace period.

Header values are decoded as UTF-8 with surrogate escapes, so any byte sequence round-trips
exactly when forwarded.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any

import httptools

from .http import (
    HEAD_FRAMING,
    MAX_HEADER_BYTES,
    MAX_HEADER_LINES,
    Headers,
    Refusal,
    Request,
    Response,
    json_response,
)

log = logging.getLogger("model_router.server")

MAX_URL_BYTES = 16 * 1024
# All bytes of a request line and header block, framing included: counted as they arrive,
# because llhttp hands a line over only when it ends (an endless line must not grow).
MAX_HEAD_BYTES = MAX_URL_BYTES + MAX_HEADER_BYTES + HEAD_FRAMING
MAX_PIPELINE = 16          # parsed requests waiting per connection before reading pauses
MAX_PIPELINE_BYTES = 1 << 20   # ... or this many body bytes waiting
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LINGER_RESET = struct.pack("ii", 1, 0)   # SO_LINGER on, 0 s: close() sends a reset
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}
_BODYLESS = (204, 304)


def _date() -> str:
    return formatdate(usegmt=True)


class _DateCache:
    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second, self.value = now, _date()
        return self.value


_DATE = _DateCache()


Handler = Callable[[Request, "Connection"], Awaitable["Response | None"]]


class Connection(asyncio.Protocol):
    """One client connection: parse, queue, hand to the handler in order, write answers."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer: str | None = None
        self.queue: collections.deque[Request | Refusal] = collections.deque()
        self.queued_bytes = 0
        self.worker: asyncio.Task[None] | None = None
        self.closing = False
        self.busy = False
        # Loop time since when the connection waits on the client (idle, or mid-request);
        # None while a request is being answered. The server's sweep enforces the timeout.
        self.waiting_since: float | None = None
        self._next: asyncio.Future[None] | None = None  # the idle worker waits on this
        self._write_ready: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._ignore_input = False
        self._in_head = False           # between the request line and the end of the headers
        self._head_bytes = 0            # bytes received while in the head (later calls)
        self._continue_pending = False  # 100 Continue owed once the answers before are out
        self.answering: Request | None = None  # the request whose answer is being written
        self._reset()

    def __repr__(self) -> str:
        return f"<Connection {self.peer} busy={self.busy} queued={len(self.queue)}>"

    def _reset(self) -> None:
        self._url: list[bytes] = []
        self._url_size = 0
        self._headers: list[tuple[str, str]] = []
        self._header_size = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = False
        self._chunked = False
        self._content_length: int | None = None
        self._http11 = True

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        self.server.connections.add(self)
        self.waiting_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        self.waiting_since = None
        self._wake_worker()
        self.resume_writing()

    def pause_writing(self) -> None:
        self._write_ready = self.loop.create_future()
        self._flow()

    def resume_writing(self) -> None:
        ready, self._write_ready = self._write_ready, None
        if ready is not None and not ready.done():
            ready.set_result(None)
        self._flow()

    def data_received(self, data: bytes) -> None:
        if self._ignore_input:
            return
        if self._in_head:  # still in the head this data continues: count it all
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, "the request headers are too large or too many")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"invalid HTTP request: {exc}")

    def _flow(self) -> None:
        """Read from the client only while it takes its answers and the queue has room."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        stop = self._write_ready is not None or len(self.queue) >= MAX_PIPELINE \
            or self.queued_bytes > MAX_PIPELINE_BYTES
        if stop != self._paused_reading:
            self._paused_reading = stop
            if stop:
                transport.pause_reading()
            else:
                transport.resume_reading()

    # -- timeout ---------------------------------------------------------------------------

    def expire(self) -> None:
        """The client kept the router waiting past client_timeout_s: idle, slow to send, or
        not reading its answer. Cut the connection (a close would wait for the client to
        read what is buffered); the worker then gives up its answer and its slot."""
        self.waiting_since = None
        if self.transport is None:
            return
        if self._write_ready is not None or self.transport.get_write_buffer_size():
            self.abort(reset=True)
        elif not self.busy:
            self.transport.close()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self._in_head = True
        self._head_bytes = 0
        if not self.busy:
            self.waiting_since = self.loop.time()

    def on_url(self, url: bytes) -> None:
        if self._ignore_input:
            return
        self._url_size += len(url)
        if self._url_size > MAX_URL_BYTES:
            self._refuse(414, "the request URL is too long")
            return
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._ignore_input or not self._in_head:
            return  # trailers of a chunked body are not headers: never forwarded as such
        self._header_size += len(name) + len(value)
        if self._header_size > MAX_HEADER_BYTES or len(self._headers) >= MAX_HEADER_LINES:
            self._refuse(431, "the request headers are too large or too many")
            return
        self._headers.append((name.decode("latin-1"),
                              value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._ignore_input:
            return
        limit = self.server.limits().max_body_bytes
        expect = False
        for name, value in self._headers:
            lname = name.lower()
            if lname == "content-length":
                try:
                    self._content_length = int(value)
                except ValueError:
                    self._content_length = None
            elif lname == "transfer-encoding" and "chunked" in value.lower():
                self._chunked = True
            elif lname == "expect" and value.lower() == "100-continue":
                expect = True
        version = self.parser.get_http_version()
        self._http11 = version == "1.1"
        if not self._http11 and version != "1.0":
            self._refuse(505, f"HTTP/{version} is not supported")
        elif self.parser.should_upgrade():  # Connection: upgrade + Upgrade, or CONNECT
            self._refuse(400, "protocol upgrades are not supported")
        elif self._content_length is not None and self._content_length > limit:
            self._too_large = True
            self._complete()
        elif expect and self._http11:
            if self.busy or self.queue:
                self._continue_pending = True  # after the answers before it are out
            elif self.transport is not None:
                self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._ignore_input:
            return
        self._continue_pending = False  # the client did not wait for it
        self._body_size += len(body)
        if self._body_size > self.server.limits().max_body_bytes:
            self._too_large = True
            self._body.clear()
            self._complete()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._ignore_input:
            self._complete()
        # after a refusal the parser may still finish this message: nothing more to do

    # -- dispatch ----------------------------------------------------------------------------

    def _complete(self) -> None:
        """A request is ready (or refused as too large): queue it for the worker."""
        self._continue_pending = False
        method = self.parser.get_method().decode("ascii", "replace")
        raw_path = b"".join(self._url).decode("utf-8", "surrogateescape")
        body = b"" if self._too_large else b"".join(self._body)
        has_body = bool(body) or self._too_large or self._chunked or \
            bool(self._content_length)
        keep_alive = self.parser.should_keep_alive() and not self._too_large
        request = Request(method, raw_path, Headers(self._headers), body, self.peer,
                          self._too_large, has_body, self._content_length, keep_alive,
                          self._http11)
        if not keep_alive:  # too large (never read the rest: 413, then close), or closing
            self._ignore_input = True
        self._enqueue(request)
        self._reset()

    def _enqueue(self, item: Request | Refusal) -> None:
        self.queue.append(item)
        if isinstance(item, Request):
            self.queued_bytes += len(item.body)
        if len(self.queue) >= MAX_PIPELINE or self.queued_bytes > MAX_PIPELINE_BYTES:
            self._flow()  # (a shorter queue never needs reading paused)
        self.waiting_since = None
        if self.worker is None:
            self.worker = self.loop.create_task(self._work())
            self.server.working.add(self)
        else:
            self._wake_worker()

    def _wake_worker(self) -> None:
        waiter, self._next = self._next, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _work(self) -> None:
        """Answer queued requests in order; between requests, wait for the next one.

        One task per connection, not per request: waking a waiting task costs a third of
        creating one.
        """
        try:
            while True:
                if not self.queue:
                    if self.closing:
                        return
                    if self._continue_pending:
                        self._continue_pending = False
                        self._write(_CONTINUE)
                    self.waiting_since = self.loop.time()
                    self._next = self.loop.create_future()
                    await self._next
                    continue
                if self._write_ready is not None:  # the client stopped reading: no work for
                    await self.drained()            # it before it takes what it was sent
                item = self.queue.popleft()
                if isinstance(item, Refusal):
                    self.send(json_response(item.status, {"error": item.message,
                                                          "code": "bad_request"}), close=True)
                    self.close()
                    return
                self.queued_bytes -= len(item.body)
                if self._paused_reading:
                    self._flow()
                keep_alive = item.keep_alive
                self.answering = item
                self.busy = True
                try:
                    try:
                        response = await self.server.handler(item, self)
                    except Exception:  # noqa: BLE001 - a request never kills the router
                        log.exception("unhandled error answering %r", item)
                        response = json_response(500, {"error": "internal router error",
                                                       "code": "internal"}, close=True)
                    if response is not None:
                        self.send(response, item.method == "HEAD",
                                  close=not keep_alive or response.close or self.closing)
                    if self._write_ready is not None:
                        await self.drained()
                finally:
                    self.busy = False
                if not keep_alive or self.closing or (response is not None and response.close):
                    self.close()
                    return
        except ConnectionError:
            return  # cut off while the client was not reading: nothing left to answer
        finally:
            self.worker = None
            self._next = None
            self.server.working.discard(self)

    # -- writing -----------------------------------------------------------------------------

    def _head(self, status: int, headers: list[tuple[str, str]], length: int | None,
              close: bool, chunked: bool = True) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"]
        has_date = False
        for name, value in headers:
            if name.lower() == "date":
                has_date = True
            lines.append(f"{name}: {value}\r\n")
        if not has_date:
            lines.append(f"date: {_DATE.get()}\r\n")
        if status not in _BODYLESS and not (100 <= status < 200):
            if length is not None:
                lines.append(f"content-length: {length}\r\n")
            elif chunked:
                lines.append("transfer-encoding: chunked\r\n")
        if close:
            lines.append("connection: close\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape")

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drained(self) -> None:
        """Wait until the client has taken what is buffered (below the high-water mark).

        Counted as waiting on the client: the server's sweep cuts the connection after
        client_timeout_s without write progress (ConnectionResetError here then).
        """
        while self._write_ready is not None:
            self.waiting_since = self.loop.time()
            try:
                await self._write_ready
            finally:
                self.waiting_since = None
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the client went away")

    def send(self, response: Response, head_only: bool = False, close: bool = False) -> None:
        """Write a complete answer."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        body = response.body if response.status not in _BODYLESS else b""
        length = response.content_length if response.content_length is not None \
            else len(body)
        data = self._head(response.status, response.headers, length, close)
        transport.write(data if head_only or not body else data + body)

    def start_stream(self, status: int, headers: list[tuple[str, str]],
                     content_length: int | None = None) -> None:
        """Begin an answer whose body follows in ``write_chunk`` calls.

        Without a length the body is chunked for HTTP/1.1; an HTTP/1.0 client knows no
        chunks, so its body ends when the connection closes.
        """
        request = self.answering
        close = self.closing or (request is not None and not request.keep_alive)
        chunks_ok = request is None or request.chunks_ok
        self._stream_chunked = content_length is None and chunks_ok
        if content_length is None and not chunks_ok:
            close = self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self._head(status, headers, content_length, close,
                                            chunked=chunks_ok))

    async def write_chunk(self, data: bytes) -> None:
        """Write a piece of a streamed answer; waits while the client is not reading."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        if self._stream_chunked:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            transport.write(data)
        if self._write_ready is not None:
            await self.drained()

    def end_stream(self) -> None:
        if self._stream_chunked and self.transport is not None and \
                not self.transport.is_closing():
            self.transport.write(b"0\r\n\r\n")

    def _refuse(self, status: int, message: str) -> None:
        """Refuse what the client sent from here on: the requests read before it are
        answered first, in order, then this refusal, then the connection closes. Nothing
        of the refused request is forwarded."""
        if self._ignore_input:
            return
        self._ignore_input = True
        if self.transport is None or self.transport.is_closing():
            return
        self._enqueue(Refusal(status, message))

    def close(self) -> None:
        self.closing = True
        self.waiting_since = None
        self._wake_worker()
        if self.transport is not None:
            self.transport.close()

    def abort(self, reset: bool = False) -> None:
        """Cut the connection (a broken upstream stream: the status line is gone).

        ``reset`` sends a TCP reset: the kernel drops what the client never read at once,
        instead of keeping it queued (megabytes) behind a FIN the client never reaches.
        """
        self.closing = True
        if self.transport is None:
            return
        if reset:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                except OSError:
                    pass  # already gone
        self.transport.abort()

    def shutdown(self) -> None:
        """Close now if idle; otherwise close after the answer in progress."""
        self.closing = True
        self._ignore_input = True
        if not self.busy and not self.queue:
            self.close()


class HttpServer:
    def __init__(self, handler: Handler, limits: Callable[[], Any]) -> None:
        self.handler = handler
        self.limits = limits
        self.loop = asyncio.get_event_loop()
        self.connections: set[Connection] = set()
        # Connections whose worker is running: one whose client went away stays here (not in
        # ``connections``) until its request is answered, so shutdown waits for it too.
        self.working: set[Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<HttpServer connections={len(self.connections)}>"

    async def start(self, host: str, port: int, *, reuse_port: bool = False,
                    backlog: int = 1024) -> int:
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: Connection(self), host, port, reuse_port=reuse_port or None,
            backlog=backlog)
        self._sweeper = self.loop.create_task(self._sweep())
        return self._server.sockets[0].getsockname()[1]

    async def _sweep(self) -> None:
        """Close connections that kept the router waiting past client_timeout_s.

        Checked four times per period instead of a timer per request (a timestamp per
        request is all the hot path pays); a connection is closed at most a quarter of the
        timeout late.
        """
        while True:
            await asyncio.sleep(min(1.0, self.limits().client_timeout_s / 4))
            horizon = self.loop.time() - self.limits().client_timeout_s
            for conn in list(self.connections):
                since = conn.waiting_since
                if since is not None and since < horizon:
                    conn.expire()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; finish answers in progress within ``grace``; close the rest."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = self.loop.time() + grace
        while any(c.busy or c.queue for c in self.connections | self.working) \
                and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
