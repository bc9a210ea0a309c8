"""The hot path against real aiohttp upstreams on 127.0.0.1."""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from helpers import echo_versions, free_port, route, url, wait_for, write_config

from router.analysis.audit import iter_records


async def test_forwards_path_query_headers_and_marks_response(tmp_path: Path, upstreams,
                                                               start_router, client) -> None:
    urls = await echo_versions(upstreams, "v1")
    app = await start_router(write_config(tmp_path, [route(urls)]))
    headers = {"x-request-id": "req-42", "Connection": "keep-alive, x-secret-hop",
               "x-secret-hop": "dropped", "Keep-Alive": "timeout=5",
               "X-Forwarded-For": "10.1.1.1", "x-user-note": "héllo wörld"}
    async with client.post(url(app, "/v2/models/fraud/infer?a=1&b=%20x"), data=b'{"x": 1}',
                           headers=headers) as resp:
        assert resp.status == 200
        seen = await resp.json()
        assert resp.headers["x-request-id"] == "req-42"
        assert resp.headers["x-model-version"] == "v1"
        assert resp.headers["x-model-route"] == "fraud"
    assert seen["path"] == "/base-v1/infer?a=1&b=%20x"
    assert seen["body"] == '{"x": 1}'
    got = {k.lower(): v for k, v in seen["headers"].items()}
    assert got["x-request-id"] == "req-42"
    assert got["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
    assert "x-secret-hop" not in got and "keep-alive" not in got
    assert got["x-user-note"] == "héllo wörld"


async def test_generates_request_id(tmp_path: Path, upstreams, start_router, client) -> None:
    urls = await echo_versions(upstreams, "v1")
    app = await start_router(write_config(tmp_path, [route(urls)]))
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        rid = resp.headers["x-request-id"]
        seen = await resp.json()
    assert len(rid) == 32
    assert {k.lower(): v for k, v in seen["headers"].items()}["x-request-id"] == rid


async def test_unknown_path_is_404_json(tmp_path: Path, upstreams, start_router, client) -> None:
    urls = await echo_versions(upstreams, "v1")
    app = await start_router(write_config(tmp_path, [route(urls)]))
    for path in ("/v2/models/fraudster/infer", "/nothing", "/v2/models/fraud/../../admin"):
        async with client.post(url(app, path), data=b"{}") as resp:
            assert resp.status == 404, path
            body = await resp.json()
            assert body["code"] == "no_route"
            assert body["request_id"] == resp.headers["x-request-id"]


async def test_sticky_header_cookie_and_json_field(tmp_path: Path, upstreams, start_router,
                                                   client) -> None:
    urls = await echo_versions(upstreams, "v1", "v2")
    routes = [
        route(urls, name="h", match={"path_prefix": "/h"}, split={"v1": 50, "v2": 50},
              sticky={"header": "x-user-id"}),
        route(urls, name="c", match={"path_prefix": "/c"}, split={"v1": 50, "v2": 50},
              sticky={"cookie": "uid"}),
        route(urls, name="j", match={"path_prefix": "/j"}, protocol="json",
              split={"v1": 50, "v2": 50}, sticky={"json_field": "user_id"}),
    ]
    app = await start_router(write_config(tmp_path, routes))
    from router.dataplane.routing import by_bucket, sticky_bucket
    for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
        expected = {r.name: by_bucket(r, sticky_bucket(r.sticky.salt, user))
                    for r in app.live.snapshot.routes}
        for _ in range(3):
            async with client.post(url(app, "/h/infer"), data=b"{}",
                                   headers={"x-user-id": user}) as resp:
                assert resp.headers["x-model-version"] == expected["h"]
            async with client.post(url(app, "/c/infer"), data=b"{}",
                                   headers={"Cookie": f"uid={user}; other=1"}) as resp:
                assert resp.headers["x-model-version"] == expected["c"]
            batch = {"instances": [{"user_id": user, "amount": 1}, {"user_id": "zed"}]}
            async with client.post(url(app, "/j/predict"), data=orjson.dumps(batch)) as resp:
                assert resp.headers["x-model-version"] == expected["j"]


async def test_pinned_path_override_and_weight_zero(tmp_path: Path, upstreams, start_router,
                                                    client) -> None:
    urls = await echo_versions(upstreams, "v1", "v2")
    cfg = route(urls, override={"header": "x-model-override", "allow": ["v2"]})
    app = await start_router(write_config(tmp_path, [cfg]))
    async with client.post(url(app, "/v2/models/fraud/versions/2.0.0/infer"),
                           data=b"{}") as resp:
        assert resp.headers["x-model-version"] == "v2"
        assert (await resp.json())["path"] == "/base-v2/infer"
    async with client.post(url(app, "/v2/models/fraud/versions/v9/infer"), data=b"{}") as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "version_not_found"
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}",
                           headers={"x-model-override": "v2"}) as resp:
        assert resp.headers["x-model-version"] == "v2"  # weight 0, reachable by override
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}",
                           headers={"x-model-override": "v1x"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "bad_override"


async def test_body_over_limit_is_413(tmp_path: Path, upstreams, start_router, client) -> None:
    urls = await echo_versions(upstreams, "v1")
    app = await start_router(write_config(tmp_path, [route(urls)], limits={"max_body_mb": 0.01}))
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"x" * 20_000) as resp:
        assert resp.status == 413
        assert (await resp.json())["code"] == "body_too_large"

    async def chunks():
        for _ in range(20):
            yield b"y" * 1000

    async with client.post(url(app, "/v2/models/fraud/infer"), data=chunks()) as resp:
        assert resp.status == 413
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"ok") as resp:
        assert resp.status == 200


async def test_sse_streams_before_upstream_finishes(tmp_path: Path, upstreams, start_router,
                                                   client) -> None:
    finished = asyncio.Event()

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(5):
            await resp.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(0.1)
        finished.set()
        await resp.write_eof()
        return resp

    app_up = web.Application()
    app_up.router.add_post("/m/stream", sse)
    base = await upstreams.start(app_up)
    app = await start_router(write_config(tmp_path, [route({"v1": base + "/m"})]))
    async with client.post(url(app, "/v2/models/fraud/stream"), data=b"{}") as resp:
        first = await resp.content.readline()
        assert first == b"data: 0\n"
        assert not finished.is_set(), "the first event waited for the whole stream"
        rest = await resp.read()
    assert rest.count(b"data:") == 4
    assert finished.is_set()


async def test_timeout_is_504_and_connect_error_502(tmp_path: Path, upstreams, start_router,
                                                    client) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(10)  # the fault: an upstream that hangs past timeout_s
        return web.Response()

    slow = web.Application()
    slow.router.add_post("/m/infer", hang)
    slow_base = await upstreams.start(slow)
    dead = f"http://127.0.0.1:{free_port()}"
    routes = [route({"v1": slow_base + "/m"}, timeout_s=0.3),
              route({"v1": dead + "/m"}, name="dead", match={"path_prefix": "/dead"})]
    app = await start_router(write_config(tmp_path, routes))
    started = time.monotonic()
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status == 504
        assert (await resp.json())["code"] == "upstream_timeout"
    assert time.monotonic() - started < 1.5
    async with client.post(url(app, "/dead/infer"), data=b"{}") as resp:
        assert resp.status == 502
        assert (await resp.json())["code"] == "upstream_unavailable"
    text = app.metrics.render().decode()
    assert 'model_router_upstream_errors_total{kind="timeout",route="fraud",version="v1"} 1.0' in text
    assert 'model_router_upstream_errors_total{kind="connect",route="dead",version="v1"} 1.0' in text


async def test_fallback_on_connect_error_and_503_not_on_timeout(tmp_path: Path, upstreams,
                                                                start_router, client) -> None:
    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, text="busy")

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(10)  # the fault: an upstream that hangs past timeout_s
        return web.Response()

    busy = web.Application()
    busy.router.add_post("/m/infer", unavailable)
    slow = web.Application()
    slow.router.add_post("/m/infer", hang)
    urls = await echo_versions(upstreams, "v1")
    busy_url, slow_url = await upstreams.start(busy), await upstreams.start(slow)
    dead = f"http://127.0.0.1:{free_port()}"
    routes = [
        route({"v2": dead + "/m", "v1": urls["v1"]}, name="a", match={"path_prefix": "/a"},
              fallback="v1"),
        route({"v2": busy_url + "/m", "v1": urls["v1"]}, name="b", match={"path_prefix": "/b"},
              fallback="v1"),
        route({"v2": slow_url + "/m", "v1": urls["v1"]}, name="c", match={"path_prefix": "/c"},
              fallback="v1", timeout_s=0.2),
    ]
    app = await start_router(write_config(tmp_path, routes))
    seen: list[Any] = []
    app.proxy.observers.append(("test", seen.append))
    for prefix, status, version in (("/a", 200, "v1"), ("/b", 200, "v1"), ("/c", 504, "v2")):
        async with client.post(url(app, f"{prefix}/infer"), data=b"{}") as resp:
            assert resp.status == status, prefix
            assert resp.headers["x-model-version"] == version
    assert [(e.fallback_from, e.reason) for e in seen] == [("v2", "fallback"),
                                                           ("v2", "fallback"), (None, "split")]


async def test_upstream_errors_pass_through(tmp_path: Path, upstreams, start_router,
                                            client) -> None:
    async def bad(request: web.Request) -> web.Response:
        return web.json_response({"error": "model says no"}, status=400)

    up = web.Application()
    up.router.add_post("/m/infer", bad)
    app = await start_router(write_config(tmp_path, [route({"v1": await upstreams.start(up)
                                                             + "/m"})]))
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status == 400
        assert await resp.json() == {"error": "model says no"}


async def test_overload_is_503_with_retry_after(tmp_path: Path, upstreams, start_router,
                                                client) -> None:
    release = asyncio.Event()

    async def wait(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="done")

    up = web.Application()
    up.router.add_post("/m/infer", wait)
    base = await upstreams.start(up)
    app = await start_router(write_config(tmp_path, [route({"v1": base + "/m"})],
                                          limits={"max_concurrency": 2}))
    held = [asyncio.ensure_future(client.post(url(app, "/v2/models/fraud/infer"), data=b"{}"))
            for _ in range(2)]
    await wait_for(lambda: app.proxy.inflight == 2)
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["code"] == "overloaded"
    release.set()
    for resp in await asyncio.gather(*held):
        assert resp.status == 200
        resp.release()


async def test_v2_server_endpoints(tmp_path: Path, upstreams, start_router, client) -> None:
    urls = await echo_versions(upstreams, "v1")
    app = await start_router(write_config(tmp_path, [route(urls)]))
    for path in ("/v2/health/live", "/v2/health/ready", "/v2"):
        async with client.get(url(app, path)) as resp:
            assert resp.status == 200, path
    async with client.get(url(app, "/v2/models/fraud")) as resp:  # metadata goes upstream
        assert (await resp.json())["path"] == "/base-v1"


async def test_v2_server_metadata_reports_the_installed_version(tmp_path: Path, upstreams,
                                                                start_router, client,
                                                                monkeypatch) -> None:
    import router.dataplane.proxy
    assert router.dataplane.proxy.VERSION == importlib.metadata.version("model-router")
    monkeypatch.setattr(router.dataplane.proxy, "VERSION", "9.8.7")  # as if another release ran
    app = await start_router(write_config(tmp_path, [route(await echo_versions(upstreams,
                                                                                "v1"))]))
    async with client.get(url(app, "/v2")) as resp:
        assert (await resp.json())["version"] == "9.8.7"


async def test_an_empty_post_on_an_enforce_route_is_400_and_never_forwarded(
        tmp_path: Path, upstreams, start_router, client) -> None:
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({})

    up = web.Application()
    up.router.add_route("*", "/{tail:.*}", record)
    base = await upstreams.start(up)
    app = await start_router(write_config(tmp_path, [route(
        {"v1": base + "/m"}, input_schema="fraud-features@1", validation="enforce")]))
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"") as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "bad_request"
    async with client.get(url(app, "/v2/models/fraud")) as resp:  # metadata: no body, fine
        assert resp.status == 200
    assert seen == ["/m"]
    await app.predlog.flush()
    records = list(iter_records(tmp_path / "logs"))
    assert [(r["status"], r["version"]) for r in records] == [(400, None)]


async def test_replicas_spread_and_eject(tmp_path: Path, upstreams, start_router,
                                         client) -> None:
    a = await upstreams.echo("a")
    b = await upstreams.echo("b")
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = route({"v1": a}, outlier={"consecutive_failures": 2, "ejection_s": 60})
    cfg["versions"]["v1"] = {"urls": [a, b, dead]}
    app = await start_router(write_config(tmp_path, [cfg]))
    answered: dict[str, int] = {}
    statuses = []
    for _ in range(30):
        async with client.post(url(app, "/v2/models/fraud/x"), data=b"{}") as resp:
            statuses.append(resp.status)
            if resp.status == 200:
                name = resp.headers["x-upstream"]
                answered[name] = answered.get(name, 0) + 1
    assert statuses.count(502) == 2, statuses  # ejected after two failures in a row
    assert statuses[-10:] == [200] * 10
    assert answered["a"] > 5 and answered["b"] > 5


async def test_truncated_body_is_clean(tmp_path: Path, upstreams, start_router, client,
                                      caplog) -> None:
    urls = await echo_versions(upstreams, "v1")
    app = await start_router(write_config(tmp_path, [route(urls)]))
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                 b"\r\nabc")
    await writer.drain()
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data == b"" or data.startswith(b"HTTP/1.1 400"), data[:100]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    async with aiohttp.ClientSession() as fresh:
        async with fresh.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
            assert resp.status == 200


async def test_draining_answers_503_with_close(tmp_path: Path, upstreams, start_router,
                                               client) -> None:
    urls = await echo_versions(upstreams, "v1")
    app = await start_router(write_config(tmp_path, [route(urls)]))
    app.proxy.draining = True
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status == 503
        assert resp.headers["Connection"] == "close"
        assert (await resp.json())["code"] == "draining"


async def test_header_bytes_round_trip_both_ways(tmp_path: Path, upstreams, start_router) -> None:
    async def odd(request: web.Request) -> web.Response:
        await request.read()
        resp = web.Response(text="ok")
        resp.headers["x-bytes"] = "caf\u00e9 \u65e5\u672c"  # sent as UTF-8 by aiohttp
        return resp

    up = web.Application()
    up.router.add_route("*", "/{tail:.*}", odd)
    app = await start_router(write_config(tmp_path, [route({"v1": await upstreams.start(up)})]))
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"GET /v2/models/fraud/x HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert "x-bytes: caf\u00e9 \u65e5\u672c".encode() in data
