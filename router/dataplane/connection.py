"""One upstream HTTP/1.1 connection and the answer read on it (asyncio protocol + httptools).

One request at a time per connection; one answer per request: bytes nobody asked for, a
second answer, headers past their limits, an odd status or transfer-coding all end the
connection (``BadResponse``, 502 ``protocol``). Content-Length, chunked and close-delimited
bodies, 1xx skipped (at most ``MAX_INTERIM``), ``Connection: close`` honoured. A streamed
body is read with flow control: reading pauses while ``READ_HIGH`` bytes wait untaken and
resumes before the connection is reused. The pool and the client are in ``client``.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING

import httptools

from ..errors import BadResponse, ConnectionReset, ResponseTimeout
from .http import HEAD_FRAMING, MAX_HEADER_BYTES, MAX_HEADER_LINES
from .timers import Deadline

if TYPE_CHECKING:
    from .client import Pool

# an answer's header block over the shared limits is not a model server's (502 protocol)
MAX_HEAD_BYTES = MAX_HEADER_BYTES + HEAD_FRAMING  # as received, framing too
MAX_INTERIM = 10         # 1xx answers before the real one
READ_HIGH = 256 * 1024   # streamed body bytes held before reading the upstream pauses


class _ExtraAnswer(Exception):
    """Raised inside the parser: an answer began after the expected one was complete."""


class UpstreamResponse:
    """Status and headers at once; the body buffered or read chunk by chunk."""

    __slots__ = ("status", "headers", "content_length", "_conn", "_chunks", "_done",
                 "_waiter", "_error", "_released", "_held", "_whole", "_served_by")

    def __init__(self, conn: UpstreamConnection) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.content_length: int | None = None
        self._conn: UpstreamConnection | None = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._done = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._released = False
        self._held = 0          # body bytes received and not yet taken
        self._whole = False     # read() wants the whole body: no flow control
        self._served_by = conn  # kept after release, so a bad answer can close it

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} done={self._done} held={self._held}>"

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


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection; serves one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
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
        return (f"<UpstreamConnection {self.pool.origin} closed={self.closed} paused={self.paused}"
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
    def _chunked(response: UpstreamResponse) -> bool:
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

    async def send(self, data: bytes, head: bool, deadline: float | None) -> UpstreamResponse:
        response = self.response = UpstreamResponse(self)
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
