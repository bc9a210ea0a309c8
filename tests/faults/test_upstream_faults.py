"""Upstream faults against raw loopback TCP servers: resets, garbage, hangs, storms."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp import web
from helpers import (
    echo_versions,
    read_request,
    route,
    rst,
    scorer,
    url,
    write_config,
)


async def reset_before(reader, writer) -> None:
    await read_request(reader)
    rst(writer)


async def reset_mid(reader, writer) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    await writer.drain()
    rst(writer)


async def garbage(reader, writer) -> None:
    await read_request(reader)
    writer.write(b"this is not HTTP at all\r\n\r\n")
    await writer.drain()
    writer.close()


async def hang(reader, writer) -> None:
    await read_request(reader)
    await asyncio.sleep(30)  # the fault itself: never answer (the router times out first)


async def slow_body(reader, writer) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    for _ in range(10):
        writer.write(b"z")
        await writer.drain()
        await asyncio.sleep(0.1)
    writer.close()


async def trickle_stream(reader, writer) -> None:
    """A chunked answer: 8 chunks 0.12 s apart (~1 s in all), then the end."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(8):
        writer.write(b"1\r\nz\r\n")
        await writer.drain()
        await asyncio.sleep(0.12)
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    writer.close()


async def stalled_stream(reader, writer) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await writer.drain()
    await asyncio.sleep(30)  # the fault: the stream stops mid-answer


FAULTS = [
    ("reset_before_response", reset_before, 502, "reset"),
    ("reset_mid_response", reset_mid, 502, "reset"),
    ("invalid_http", garbage, 502, "protocol"),
    ("hang", hang, 504, "timeout"),
]


@pytest.mark.parametrize("handler,status,kind", [f[1:] for f in FAULTS],
                         ids=[f[0] for f in FAULTS])
async def test_fault_is_a_clean_gateway_error(tmp_path: Path, tcp, start_router, client,
                                              handler, status: int, kind: str) -> None:
    base = await tcp(handler)
    app = await start_router(write_config(tmp_path, [route({"v1": base + "/m"},
                                                           timeout_s=0.5)]))
    started = time.monotonic()
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status == status
        body = await resp.json()
    assert time.monotonic() - started < 0.5 + 0.5
    assert body["code"] == {502: "upstream_unavailable", 504: "upstream_timeout"}[status]
    text = app.metrics.render().decode()
    assert f'model_router_upstream_errors_total{{kind="{kind}",route="fraud",version="v1"}}' \
        in text


async def test_fallback_on_reset_but_not_on_timeout(tmp_path: Path, tcp, upstreams,
                                                    start_router, client) -> None:
    good = (await echo_versions(upstreams, "v1"))["v1"]
    routes = [route({"v2": await tcp(reset_before) + "/m", "v1": good}, fallback="v1"),
              route({"v2": await tcp(hang) + "/m", "v1": good}, name="h",
                    match={"path_prefix": "/h"}, fallback="v1", timeout_s=0.3)]
    app = await start_router(write_config(tmp_path, routes))
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status == 200 and resp.headers["x-model-version"] == "v1"
    async with client.post(url(app, "/h/infer"), data=b"{}") as resp:
        assert resp.status == 504 and resp.headers["x-model-version"] == "v2"


async def test_stream_cut_mid_response_closes_the_client_connection(
        tmp_path: Path, tcp, start_router, client) -> None:
    streaming = asyncio.Event()

    async def reset_mid_stream(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await streaming.wait()  # the client has the answer's head: the cut is mid-stream
        rst(writer)

    app = await start_router(write_config(tmp_path, [route({"v1": await tcp(reset_mid_stream)
                                                             + "/m"})]))
    import aiohttp
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status == 200
        streaming.set()
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    async with client.post(url(app, "/nowhere"), data=b"{}") as resp:
        assert resp.status == 404  # still serving


async def test_slow_body_within_and_beyond_timeout(tmp_path: Path, tcp, start_router,
                                                   client) -> None:
    base = await tcp(slow_body)  # 10 bytes over ~1 s
    routes = [route({"v1": base + "/m"}, timeout_s=3),
              route({"v1": base + "/m"}, name="short", match={"path_prefix": "/s"},
                    timeout_s=0.4)]
    app = await start_router(write_config(tmp_path, routes))
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status == 200 and await resp.read() == b"z" * 10
    async with client.post(url(app, "/s/infer"), data=b"{}") as resp:
        assert resp.status == 504


async def test_streamed_answer_timeout_bounds_each_gap_not_the_whole(
        tmp_path: Path, tcp, start_router, client) -> None:
    import aiohttp
    routes = [route({"v1": await tcp(trickle_stream) + "/m"}, timeout_s=0.4),
              route({"v1": await tcp(stalled_stream) + "/m"}, name="stall",
                    match={"path_prefix": "/st"}, timeout_s=0.4)]
    app = await start_router(write_config(tmp_path, routes))
    started = time.monotonic()
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status == 200 and await resp.read() == b"z" * 8
    assert time.monotonic() - started > 0.8  # longer than timeout_s in all, and served whole
    started = time.monotonic()
    async with client.post(url(app, "/st/infer"), data=b"{}") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert time.monotonic() - started < 0.4 + 0.5
    text = app.metrics.render().decode()
    assert 'model_router_upstream_errors_total{kind="timeout",route="stall",version="v1"}' \
        in text


async def test_5xx_storm_ejects_the_replica_and_probes_it_back(tmp_path: Path, upstreams,
                                                               start_router, client) -> None:
    healthy = True

    async def flapping(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok", headers={"x-upstream": "b"}) if healthy \
            else web.Response(status=500, text="storm", headers={"x-upstream": "b"})

    b_app = web.Application()
    b_app.router.add_route("*", "/{tail:.*}", flapping)
    a = await upstreams.echo("a")
    b = await upstreams.start(b_app)
    cfg = route({"v1": a}, outlier={"consecutive_failures": 3, "ejection_s": 0.5})
    cfg["versions"]["v1"] = {"urls": [a, b]}
    app = await start_router(write_config(tmp_path, [cfg]))
    from router.dataplane.upstream import Balancer
    now = [1000.0]
    app.proxy.balancer = Balancer(clock=lambda: now[0])  # the cool-down on a fake clock

    async def burst(n: int) -> list[tuple[int, str]]:
        out = []
        for _ in range(n):
            async with client.post(url(app, "/v2/models/fraud/x"), data=b"{}") as resp:
                out.append((resp.status, resp.headers.get("x-upstream", "")))
        return out

    healthy = False
    first = await burst(20)
    assert [s for s, u in first if u == "b"] == [500, 500, 500]  # then ejected
    assert all(s == 200 for s, u in first if u == "a")
    healthy = True
    now[0] += 0.6  # past ejection_s: the replica is probed again
    after = await burst(10)
    assert {u for _, u in after} == {"a", "b"} and all(s == 200 for s, _ in after)


async def test_shadow_faults_leave_the_primary_untouched(tmp_path: Path, tcp, upstreams,
                                                         start_router, client) -> None:
    primary = await upstreams.start(scorer(0.2))
    shadows = {"v2": await tcp(reset_before), "v3": await tcp(garbage)}
    cfg = route({"v1": primary + "/m", "v2": shadows["v2"] + "/m", "v3": shadows["v3"] + "/m"},
                shadow=[{"version": "v2", "percent": 100}, {"version": "v3", "percent": 100}])
    app = await start_router(write_config(tmp_path, [cfg]))
    for _ in range(20):
        async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
            assert resp.status == 200
            assert (await resp.json())["outputs"][0]["data"] == [0.2]
