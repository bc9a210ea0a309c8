"""Framing attacks, each reproduced on a real router: answers that cross requests, refused
requests that must not reach a model, paths an upstream would decode elsewhere, and clients
that never read. Every row failed before the hardening it names."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from helpers import (
    FakeTransport,
    raw,
    read_request,
    request,
    route,
    rst,
    url,
    wait_for,
    write_config,
)

from router.analysis.audit import iter_records
from router.bodies import json_field
from router.config import Limits
from router.dataplane.client import Client
from router.dataplane.server import Connection, HttpServer

# -- upstream answers that cross requests ------------------------------------------------------
#
# Each raw upstream answers the first request on every connection with ``first`` (one write,
# one packet), and any later request on that connection with a clean "SECOND". The client must
# get ``expect`` and nothing of what followed it; the connection is never used again.

CROSSED = [
    ("204_then_smuggled_200",
     b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nX-Smuggled: EVIL\r\n"
     b"Content-Length: 4\r\n\r\nEVIL", 204, b""),
    ("200_then_302",
     b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 302 Found\r\n"
     b"Location: http://evil.example/\r\nContent-Length: 4\r\n\r\nEVIL", 200, b"hello"),
    ("200_then_garbage",
     b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEVIL\r\n\r\n", 200, b"hello"),
    ("chunked_then_second_answer",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
     b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL", 200, b"hello"),
]


@pytest.mark.parametrize("first,status,body", [c[1:] for c in CROSSED],
                         ids=[c[0] for c in CROSSED])
async def test_bytes_after_an_answer_close_the_connection(tmp_path: Path, tcp, start_router,
                                                          client, first: bytes, status: int,
                                                          body: bytes) -> None:
    connections = []

    async def upstream(reader, writer) -> None:
        connections.append(writer)
        await read_request(reader)
        writer.write(first)
        await writer.drain()
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSECOND")
            await writer.drain()

    base = await tcp(upstream)
    app = await start_router(write_config(tmp_path, [route({"v1": base + "/m"},
                                                           protocol="raw")]))
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status == status
        assert await resp.read() == body
        assert "X-Smuggled" not in resp.headers and "Location" not in resp.headers
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        # the next request gets its own answer: the connection with the extra bytes is gone
        assert await resp.read() == body and b"EVIL" not in body
    assert len(connections) == 2


async def test_bytes_on_an_idle_pooled_connection_close_it(tmp_path: Path, tcp, start_router,
                                                           client) -> None:
    stray_written = asyncio.Event()
    closed_by_router = asyncio.Event()
    first_read = asyncio.Event()
    answers = iter([b"first", b"fresh"])

    async def upstream(reader, writer) -> None:
        await read_request(reader)
        body = next(answers)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + body)
        await writer.drain()
        if body == b"first":  # then, while the connection sits idle in the pool:
            await first_read.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
            await writer.drain()
            stray_written.set()
            assert await reader.read() == b""  # the router hung up on it
            closed_by_router.set()

    base = await tcp(upstream)
    app = await start_router(write_config(tmp_path, [route({"v1": base + "/m"},
                                                           protocol="raw")]))
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert await resp.read() == b"first"
    first_read.set()
    await asyncio.wait_for(closed_by_router.wait(), 5)
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert await resp.read() == b"fresh"


async def test_a_lagging_v2_answer_is_never_handed_to_the_next_user(tmp_path: Path, tcp,
                                                                    start_router,
                                                                    client) -> None:
    """The upstream answers request 1 twice; the duplicate arrives while request 2 is on the
    wire. The router cannot tell at the HTTP layer, but the V2 ids differ: 502, and the
    lagging connection is closed, so user 3 is not handed user 2's answer either."""

    def answer(request_id: str) -> bytes:
        body = orjson.dumps({"model_name": "fraud", "id": request_id,
                             "outputs": [{"name": "p", "datatype": "FP64", "shape": [1],
                                          "data": [0.5]}]})
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)

    async def upstream(reader, writer) -> None:
        previous = None
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
            request_id = orjson.loads(await reader.readexactly(length))["id"]
            if previous is not None:
                writer.write(answer(previous))  # request 1's answer, once more
            writer.write(answer(request_id))
            await writer.drain()
            previous = request_id

    base = await tcp(upstream)
    app = await start_router(write_config(tmp_path, [route({"v1": base + "/m"})]))
    got = []
    for user in ("user0", "user1", "user2"):
        async with client.post(url(app, "/v2/models/fraud/infer"),
                               data=orjson.dumps({"id": user, "inputs": []})) as resp:
            got.append((resp.status, orjson.loads(await resp.read()).get("id"), user))
    assert got[0] == (200, "user0", "user0")
    assert got[1][0] == 502  # user0's duplicate, refused
    assert got[2] == (200, "user2", "user2")  # a new connection: no lag carried over
    assert 'kind="protocol"' in app.metrics.render().decode()


BAD_ANSWERS = [
    ("101_header_lines", b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i
                                                          for i in range(101))
     + b"Content-Length: 2\r\n\r\nok"),
    ("headers_over_16k", b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 17_000
     + b"\r\nContent-Length: 2\r\n\r\nok"),
    ("status_099", b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok"),
    ("status_600", b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok"),
    ("1000_informational_answers", b"HTTP/1.1 100 Continue\r\n\r\n" * 1000
     + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("transfer_encoding_gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
     b"2\r\n\x1f\x8b\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize("answer", [b[1] for b in BAD_ANSWERS], ids=[b[0] for b in BAD_ANSWERS])
async def test_an_answer_the_router_cannot_relay_faithfully_is_502(tmp_path: Path, tcp,
                                                                   start_router, client,
                                                                   answer: bytes) -> None:
    async def upstream(reader, writer) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()

    base = await tcp(upstream)
    app = await start_router(write_config(tmp_path, [route({"v1": base + "/m"},
                                                           protocol="raw")]))
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status == 502
        assert (await resp.json())["code"] == "upstream_unavailable"


async def test_trailers_never_become_answer_headers(tmp_path: Path, tcp, start_router,
                                                    client) -> None:
    async def upstream(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                     b"0\r\nSet-Cookie: session=stolen\r\nX-Trailer: t\r\n\r\n")
        await writer.drain()

    base = await tcp(upstream)
    app = await start_router(write_config(tmp_path, [route({"v1": base + "/m"},
                                                           protocol="raw")]))
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert await resp.read() == b"hello"
        assert "Set-Cookie" not in resp.headers and "X-Trailer" not in resp.headers


# -- requests the router refuses -----------------------------------------------------------------


@pytest.fixture
async def recorded(tmp_path: Path, upstreams, start_router):
    """A router with a validated V2 route and a raw route; ``seen`` lists what upstreams got."""
    seen: list[tuple[str, bytes]] = []

    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append((request.raw_path, body))
        if request.raw_path.endswith("/slow-stream"):
            resp = web.StreamResponse()
            await resp.prepare(request)
            for _ in range(4):
                await resp.write(b"x" * 1000)
                await asyncio.sleep(0.05)
            await resp.write_eof()
            return resp
        return web.json_response({"path": request.raw_path, "headers": dict(request.headers)})

    app_up = web.Application()
    app_up.router.add_route("*", "/{tail:.*}", record)
    base = await upstreams.start(app_up)
    routes = [route({"v1": base + "/m"}, input_schema="fraud-features@1",
                    validation="enforce"),
              route({"v1": base + "/raw"}, name="raw", match={"path_prefix": "/raw"},
                    protocol="raw")]
    app = await start_router(write_config(tmp_path, routes,
                                          limits={"max_body_mb": 0.01,
                                                  "client_timeout_s": 1}))
    return app, seen


VALID = request("/raw/first", b"one")
REFUSED = [
    # (id, bytes, statuses in order, paths the upstream may see)
    ("upgrade_h2c_to_validated_route",
     request("/v2/models/fraud/infer", b'{"inputs": []}',
             b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
             b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"), [400], []),
    ("upgrade_websocket", b"GET /raw/ws HTTP/1.1\r\nHost: r\r\nConnection: Upgrade\r\n"
     b"Upgrade: websocket\r\n\r\n", [400], []),
    ("valid_then_garbage", VALID + b"THIS IS NOT HTTP\r\n\r\n", [200, 400], ["/raw/first"]),
    ("valid_then_upgrade", VALID + request("/raw/up", b"x", b"Connection: upgrade\r\n"
                                           b"Upgrade: h2c\r\n"), [200, 400], ["/raw/first"]),
    ("valid_close_then_more",
     request("/raw/first", b"one", b"Connection: close\r\n") + request("/raw/second"),
     [200], ["/raw/first"]),
    ("valid_then_bad_chunk", VALID + b"POST /raw/x HTTP/1.1\r\nHost: r\r\n"
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", [200, 400], ["/raw/first"]),
    ("http_0_9", b"GET /raw/old\r\n\r\n", [505], []),
    ("http_2_0_request_line", b"GET /raw/new HTTP/2.0\r\nHost: r\r\n\r\n", [505], []),
    ("101_header_lines", b"GET /raw/h HTTP/1.1\r\nHost: r\r\n"
     + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n", [431], []),
]


def statuses(answer: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)]


@pytest.mark.parametrize("data,expected,forwarded", [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])
async def test_refused_requests_are_never_forwarded_and_earlier_ones_are_answered(
        recorded, client, data: bytes, expected: list[int], forwarded: list[str]) -> None:
    app, seen = recorded
    answer = await raw(app.port, data)
    assert statuses(answer) == expected, answer[:300]
    assert [path for path, _ in seen] == forwarded
    assert b"Traceback" not in answer
    async with client.post(url(app, "/raw/ok"), data=b"ping") as resp:
        assert resp.status == 200


UNSAFE_PATHS = ["/raw/..%2f..%2fadmin", "/raw/%2e%2e%2fadmin", "/raw/..;/admin",
                "/raw/..\\admin", "/raw/a%5cb", "/raw/a%00b", "/raw/.%2E/admin",
                "/raw/%252e%252e/admin", "/raw/a%252fb", "/raw/./admin", "/raw/x/..#/admin"]


@pytest.mark.parametrize("path", UNSAFE_PATHS, ids=UNSAFE_PATHS)
async def test_paths_an_upstream_could_decode_elsewhere_are_400(recorded, path: str) -> None:
    app, seen = recorded
    answer = await raw(app.port, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: r\r\n"
                       b"Connection: close\r\n\r\n")
    assert statuses(answer) == [400], answer[:200]
    assert b'"code":"bad_request"' in answer
    assert seen == []


# -- Expect: 100-continue --------------------------------------------------------------------------


async def test_100_continue_only_for_the_request_being_read(recorded) -> None:
    """A pipelined request's 100 Continue waits until the answer before it is complete."""
    app, _ = recorded
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"GET /raw/slow-stream HTTP/1.1\r\nHost: r\r\n\r\n"
                 b"POST /raw/later HTTP/1.1\r\nHost: r\r\nExpect: 100-continue\r\n"
                 b"Content-Length: 3\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head
    streamed = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
    assert b"100 Continue" not in streamed  # not inside the chunked answer
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"abc")
    await writer.drain()
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
        b"HTTP/1.1 200")
    writer.close()


EXPECT = [
    ("http_1_0", b"POST /raw/x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
     b"abc", b"HTTP/1.1 200"),
    ("expect_before_oversize_length", b"POST /raw/x HTTP/1.1\r\nHost: r\r\n"
     b"Expect: 100-continue\r\nContent-Length: 20000\r\n\r\n", b"", b"HTTP/1.1 413"),
]


@pytest.mark.parametrize("head,body,first", [e[1:] for e in EXPECT], ids=[e[0] for e in EXPECT])
async def test_no_100_continue_where_it_does_not_belong(recorded, head: bytes, body: bytes,
                                                        first: bytes) -> None:
    app, _ = recorded
    answer = await raw(app.port, head + body)
    assert answer.startswith(first), answer[:100]
    assert b"100 Continue" not in answer


# -- request ids that cannot be logged ----------------------------------------------------------

BAD_IDS = [("invalid_byte", b"abc\xffdef"), ("space", b"a b"), ("too_long", b"a" * 201)]


@pytest.mark.parametrize("value", [b[1] for b in BAD_IDS], ids=[b[0] for b in BAD_IDS])
async def test_a_request_id_that_is_not_visible_ascii_is_replaced(recorded, value) -> None:
    app, _ = recorded
    answer = await raw(app.port, b"POST /raw/id HTTP/1.1\r\nHost: r\r\nContent-Length: 2\r\n"
                       b"Connection: close\r\nX-Request-Id: " + value + b"\r\n\r\nhi")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    echoed = re.search(rb"x-request-id: ([^\r]*)\r\n", answer).group(1)
    assert re.fullmatch(rb"[0-9a-f]{32}", echoed), echoed


# -- clients that never read ----------------------------------------------------------------------

MIB = 1 << 20


@pytest.fixture
async def big(tmp_path: Path, upstreams, start_router):
    """Answers of 1 MiB (with a length) and a 200 MB stream, counting what upstreams wrote."""
    sent = {"stream": 0, "requests": 0, "stream_done": False}

    async def one_mib(request: web.Request) -> web.Response:
        sent["requests"] += 1
        return web.Response(body=b"m" * MIB)

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        chunk = b"s" * 65536
        try:
            for _ in range(200 * MIB // len(chunk)):
                await resp.write(chunk)  # waits while the router does not read
                sent["stream"] += len(chunk)
        finally:
            sent["stream_done"] = True
        return resp

    app_up = web.Application()
    app_up.router.add_get("/m/one", one_mib)
    app_up.router.add_get("/m/stream", stream)
    base = await upstreams.start(app_up)
    cfg = route({"v1": base + "/m"}, protocol="raw", timeout_s=30)
    app = await start_router(write_config(tmp_path, [cfg], limits={
        "client_timeout_s": 1, "max_concurrency": 4}))
    return app, sent


async def connection_of(app, port: int):
    """The router's side of the client connection from local ``port``."""
    def find():
        return next((c for c in app.server.connections
                     if c.transport.get_extra_info("peername")[1] == port), None)
    await wait_for(lambda: find() is not None)
    return find()


async def test_pipelined_big_answers_to_a_client_that_never_reads(big, client) -> None:
    app, sent = big
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the kernel holds little
    sock.connect(("127.0.0.1", app.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.transport.set_write_buffer_limits(high=64 * MIB)
    writer.write(b"GET /v2/models/fraud/one HTTP/1.1\r\nHost: r\r\n\r\n" * 150)
    await writer.drain()
    conn = await connection_of(app, writer.get_extra_info("sockname")[1])
    await wait_for(lambda: conn._write_ready is not None)  # the client is not reading
    await asyncio.sleep(0.3)  # the router gets every chance to answer more than it should
    assert conn.transport.get_write_buffer_size() <= 2 * MIB
    # it stopped taking pipelined requests: a few answers fit in the kernel's socket buffers
    assert sent["requests"] <= 8
    async with client.get(url(app, "/v2/models/fraud/one")) as resp:  # others are served
        assert resp.status == 200 and len(await resp.read()) == MIB
    # no write progress for client_timeout_s (1 s): cut off with a reset, so the kernel
    # drops what is queued for it as well
    await wait_for(lambda: conn not in app.server.connections, timeout=5)
    with pytest.raises(ConnectionResetError):
        while await asyncio.wait_for(reader.read(MIB), 5):
            pass
    writer.close()


async def test_a_streamed_answer_never_read_holds_neither_memory_nor_a_slot(big, client
                                                                          ) -> None:
    app, sent = big
    hostile = []
    for _ in range(4):  # max_concurrency is 4: every slot taken by a client that never reads
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(b"GET /v2/models/fraud/stream HTTP/1.1\r\nHost: r\r\n\r\n")
        await writer.drain()
        hostile.append(writer)
    await wait_for(lambda: app.proxy.inflight == 4)
    await wait_for(lambda: all(c._write_ready is not None for c in app.server.connections))
    streamed = sent["stream"]
    await asyncio.sleep(0.3)
    # reading the upstream paused: what it wrote is bounded by socket buffers, not 800 MB
    assert sent["stream"] - streamed < 8 * MIB and sent["stream"] < 4 * 40 * MIB
    # cut off after client_timeout_s without progress: slots and upstream connections freed
    await wait_for(lambda: app.proxy.inflight == 0, timeout=5)
    await wait_for(lambda: sent["stream_done"], timeout=5)
    async with client.get(url(app, "/v2/models/fraud/one")) as resp:
        assert resp.status == 200
    for writer in hostile:
        writer.close()


async def test_request_trailers_are_never_forwarded_as_headers(recorded) -> None:
    app, seen = recorded
    answer = await raw(app.port, b"POST /raw/t HTTP/1.1\r\nHost: r\r\nConnection: close\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
                       b"X-Trailer-Injected: yes\r\nAuthorization: Bearer forged\r\n\r\n")
    assert statuses(answer) == [200], answer[:200]
    assert seen == [("/raw/t", b"abc")]
    assert b'"Host"' in answer  # the upstream's echo of the headers it got
    assert b"forged" not in answer and b"injected" not in answer.lower()


def test_a_sticky_json_field_in_a_deep_body_never_recurses() -> None:
    doc: dict = {}
    for _ in range(5000):  # far past the interpreter's recursion limit
        doc = {"user_id": {}, "inputs": doc}
    assert json_field(doc, "user_id") is None
    assert json_field({"inputs": {"user_id": 7}}, "user_id") == "7"


async def test_a_shadow_answer_over_max_body_is_dropped_not_buffered(tmp_path: Path, upstreams,
                                                                      start_router,
                                                                      client) -> None:
    async def huge(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"h" * MIB)

    shadow_app = web.Application()
    shadow_app.router.add_post("/m/infer", huge)
    primary = await upstreams.echo("v1")
    shadow = await upstreams.start(shadow_app)
    cfg = route({"v1": primary + "/m", "v2": shadow + "/m"}, protocol="raw",
                split={"v1": 100, "v2": 0}, shadow=[{"version": "v2", "percent": 100}])
    app = await start_router(write_config(tmp_path, [cfg], limits={"max_body_mb": 0.5}))
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status == 200
    dropped = 'model_router_shadow_dropped_total{reason="error",route="fraud",version="v2"} 1.0'
    await wait_for(lambda: dropped in app.metrics.render().decode())


# -- found by the red-team pass over the hardening ---------------------------------------------


async def test_an_endless_request_header_line_is_431() -> None:
    """llhttp hands a header line over only when it ends: the bytes are counted as they come,
    so a line that never ends is refused at about 34 KB, not read for ever."""
    handled = []

    async def handler(request, conn):
        handled.append(request)
        return None

    server = HttpServer(handler, lambda: Limits())
    conn = Connection(server)
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.data_received(b"GET /raw/x HTTP/1.1\r\nHost: r\r\nX-Big: ")
    fed = 0
    while fed < 4 * MIB and not conn._ignore_input:
        conn.data_received(b"A" * 4096)
        fed += 4096
    assert fed <= 40 * 1024  # refused within the head limit, not after megabytes
    await wait_for(lambda: transport.closed)
    assert statuses(bytes(transport.written)) == [431] and handled == []


async def test_an_endless_upstream_header_line_is_502_not_a_timeout(tmp_path: Path, tcp,
                                                                    start_router,
                                                                    client) -> None:
    async def upstream(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: ")
        for _ in range(1024):  # up to 4 MiB, never a line end (stops when the router hangs up)
            writer.write(b"A" * 4096)
            await writer.drain()

    base = await tcp(upstream)
    app = await start_router(write_config(tmp_path, [route({"v1": base + "/m"},
                                                           protocol="raw", timeout_s=30)]))
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status == 502  # not 504 after timeout_s: refused past 16 KB
        assert (await resp.json())["code"] == "upstream_unavailable"


async def test_a_reset_inside_a_close_delimited_answer_is_not_a_complete_answer(
        tmp_path: Path, tcp, start_router, client) -> None:
    streaming = asyncio.Event()

    async def upstream(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npartial-data-")
        await writer.drain()
        await streaming.wait()  # the router has started streaming the answer
        rst(writer)

    base = await tcp(upstream)
    app = await start_router(write_config(tmp_path, [route({"v1": base + "/m"},
                                                           protocol="raw")]))
    with pytest.raises(aiohttp.ClientPayloadError):  # the client sees the answer cut
        async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
            assert resp.status == 200
            streaming.set()
            await resp.read()
    await app.predlog.flush()
    record = next(iter(iter_records(tmp_path / "logs")))
    assert record["error"] and "mid-response" in record["error"]


async def test_a_paused_upstream_connection_is_resumed_before_it_is_reused() -> None:
    """An answer can be complete while reading its connection is paused (a streamed answer
    whose client stopped taking it); back in the pool the connection must read again, or the
    next request on it waits for an answer it never reads: a 504 for another user."""
    async def upstream(reader, writer) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    pool_client = Client()
    try:
        first = await pool_client.request("GET", base, "/one", [], None, None, 5)
        await wait_for(lambda: first.complete)
        first._served_by.pause()  # as the flow control leaves it when the client stops
        first.release()
        second = await pool_client.request("GET", base, "/two", [], None, None, 2)
        assert await second.read() == b"ok"
    finally:
        pool_client.close()
        server.close()
