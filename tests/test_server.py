"""The HTTP server's connection handling in-process: bytes in through ``data_received``, bytes
out into a fake transport, the handler a plain coroutine. No sockets: the state machine as
h11 and httpcore test theirs."""

from __future__ import annotations

import asyncio
import re

import pytest
from helpers import FakeTransport, wait_for

from router.config import Limits
from router.dataplane.http import Request, Response
from router.dataplane.server import MAX_PIPELINE, Connection, HttpServer


def statuses(data: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def echo_path(paths: list[str], gate: asyncio.Event | None = None):
    async def handler(request: Request, conn: Connection) -> Response:
        paths.append(request.raw_path)
        if gate is not None:
            await gate.wait()
        return Response(200, request.raw_path.encode())
    return handler


def connection(handler, **limits) -> tuple[Connection, FakeTransport]:
    server = HttpServer(handler, lambda: Limits(**limits))
    conn = Connection(server)
    transport = FakeTransport()
    conn.connection_made(transport)
    return conn, transport


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: r\r\n" + extra + b"\r\n"


async def test_pipelined_requests_are_answered_one_at_a_time_in_order() -> None:
    paths: list[str] = []
    conn, transport = connection(echo_path(paths))
    conn.data_received(get("/a") + get("/b") + get("/c", b"Connection: close\r\n"))
    await wait_for(lambda: transport.closed)
    assert paths == ["/a", "/b", "/c"]
    assert statuses(bytes(transport.written)) == [200, 200, 200]
    assert bytes(transport.written).index(b"/a") < bytes(transport.written).index(b"/c")


REFUSALS = [
    ("garbage", b"NOT HTTP\r\n\r\n", 400),
    ("upgrade", get("/u", b"Connection: upgrade\r\nUpgrade: h2c\r\n"), 400),
    ("http_2_0", b"GET /x HTTP/2.0\r\nHost: r\r\n\r\n", 505),
    ("too_many_headers", get("/h", b"".join(b"X-%d: v\r\n" % i for i in range(101))), 431),
]


@pytest.mark.parametrize("bad,status", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
async def test_a_refusal_waits_for_the_answers_before_it(bad: bytes, status: int) -> None:
    paths: list[str] = []
    gate = asyncio.Event()
    conn, transport = connection(echo_path(paths, gate))
    conn.data_received(get("/first") + bad + get("/never"))
    await wait_for(lambda: paths == ["/first"])
    assert transport.written == b""  # the refusal is not written over the answer in progress
    gate.set()
    await wait_for(lambda: transport.closed)
    assert statuses(bytes(transport.written)) == [200, status]
    assert paths == ["/first"]  # neither the refused request nor what followed it


async def test_reading_pauses_while_the_queue_is_full_and_resumes_as_it_drains() -> None:
    paths: list[str] = []
    gate = asyncio.Event()
    conn, transport = connection(echo_path(paths, gate))
    conn.data_received(b"".join(get(f"/{i}") for i in range(MAX_PIPELINE + 2)))
    await wait_for(lambda: bool(paths))
    assert transport.reading_paused
    gate.set()
    await wait_for(lambda: len(paths) == MAX_PIPELINE + 2)
    assert not transport.reading_paused


async def test_a_client_that_stops_reading_pauses_the_worker_until_it_reads() -> None:
    paths: list[str] = []
    conn, transport = connection(echo_path(paths))
    conn.data_received(get("/one"))
    await wait_for(lambda: paths == ["/one"])
    conn.pause_writing()  # the transport's buffer passed its high-water mark
    conn.data_received(get("/two"))
    assert transport.reading_paused  # no more requests taken while answers pile up
    await asyncio.sleep(0)  # (one loop turn: the worker would have run if it could)
    assert paths == ["/one"]
    conn.resume_writing()
    await wait_for(lambda: paths == ["/one", "/two"])
    assert not transport.reading_paused


async def test_no_write_progress_for_the_timeout_aborts_the_connection() -> None:
    paths: list[str] = []
    conn, transport = connection(echo_path(paths))
    conn.data_received(get("/one"))
    await wait_for(lambda: paths == ["/one"])
    conn.pause_writing()
    await wait_for(lambda: conn.waiting_since is not None)  # waiting on the client
    conn.expire()  # what the sweep does after client_timeout_s
    assert transport.aborted
    conn.connection_lost(None)
    await wait_for(lambda: conn.worker is None)  # the worker ended, nothing left running


async def test_100_continue_only_after_the_answers_before_it() -> None:
    paths: list[str] = []
    gate = asyncio.Event()
    conn, transport = connection(echo_path(paths, gate))
    conn.data_received(get("/first") + b"POST /second HTTP/1.1\r\nHost: r\r\n"
                       b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    await wait_for(lambda: paths == ["/first"])
    assert b"100 Continue" not in transport.written
    gate.set()
    await wait_for(lambda: b"100 Continue" in transport.written)
    assert bytes(transport.written).index(b"/first") < bytes(transport.written).index(b"100")
    conn.data_received(b"ok")
    await wait_for(lambda: paths == ["/first", "/second"])


async def test_an_http_1_0_stream_of_unknown_length_ends_with_the_connection() -> None:
    async def stream(request: Request, conn: Connection) -> None:
        conn.start_stream(200, [])
        await conn.write_chunk(b"part")
        conn.end_stream()
        return None

    conn, transport = connection(stream)
    conn.data_received(b"GET /s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    await wait_for(lambda: transport.closed)
    head, _, body = bytes(transport.written).partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"connection: close" in head
    assert body == b"part"
