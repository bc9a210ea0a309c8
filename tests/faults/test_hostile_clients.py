"""Hostile clients and open-proxy attempts, over raw sockets; fuzzing with Hypothesis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from helpers import raw, request, route, url, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.config import load_snapshot
from router.config.registry import Field, Schema
from router.errors import ConfigError
from router.validation import Validator


@pytest.fixture
async def app_and_log(tmp_path: Path, upstreams, start_router):
    """A validated V2 route, an unvalidated raw route, and a log of what upstreams got."""
    seen: list[tuple[str, str, bytes]] = []

    from aiohttp import web

    async def record(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((request.raw_path, request.headers.get("Host", ""), body))
        return web.json_response({"ok": True, "path": request.raw_path})

    up = web.Application()
    up.router.add_route("*", "/{tail:.*}", record)
    base = await upstreams.start(up)
    routes = [route({"v1": base + "/m"}, input_schema="fraud-features@1"),
              route({"v1": base + "/raw"}, name="raw", match={"path_prefix": "/raw"},
                    protocol="raw")]
    app = await start_router(write_config(tmp_path, routes,
                                          limits={"max_body_mb": 0.01,
                                                  "client_timeout_s": 1}))
    return app, seen, base


async def still_serving(app, client) -> None:
    async with client.post(url(app, "/raw/ok"), data=b"ping") as resp:
        assert resp.status == 200


HOSTILE = [
    ("malformed_json", request("/v2/models/fraud/infer", b'{"inputs": [1,'), b"400"),
    ("not_json_content_type", request("/v2/models/fraud/infer", b"hello", b"",
                                      b"text/plain"), b"400"),
    ("invalid_utf8", request("/v2/models/fraud/infer", b'{"inputs": "\xff\xfe"}'),
     b"400"),
    ("body_too_large", request("/raw/x", b"a" * 20_000), b"413"),
    ("header_too_large", b"GET /raw/x HTTP/1.1\r\nHost: r\r\nX-Big: " + b"a" * 70_000
     + b"\r\n\r\n", b"431"),
    ("url_too_long", b"GET /raw/" + b"a" * 17_000 + b" HTTP/1.1\r\nHost: r\r\n\r\n", b"414"),
    ("bare_cr_in_header", b"GET /raw/x HTTP/1.1\r\nHost: r\r\nX-Evil: a\rInjected: 1\r\n\r\n",
     b"400"),
    ("cl_te_conflict", b"POST /raw/x HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /raw/smuggled HTTP/1.1\r\nHost: r\r\n\r\n",
     b"400"),
    ("absolute_form_uri", b"GET http://evil.example/steal HTTP/1.1\r\nHost: evil.example"
     b"\r\n\r\n", b"404"),
    ("dot_dot_path", b"GET /raw/../../etc/passwd HTTP/1.1\r\nHost: r\r\n\r\n", b"400"),
    ("encoded_dot_dot", b"GET /raw/%2e%2e/%2E%2E/admin HTTP/1.1\r\nHost: r\r\n\r\n",
     b"400"),
]


@pytest.mark.parametrize("data,expected", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
async def test_hostile_request_gets_a_clean_4xx(app_and_log, client, data: bytes,
                                                expected: bytes) -> None:
    app, seen, _ = app_and_log
    answer = await raw(app.port, data)
    # The router's JSON errors, or aiohttp's own 400 (HTTP/1.0) for unparseable requests.
    assert answer[:9] in (b"HTTP/1.1 ", b"HTTP/1.0 ") and answer[9:].startswith(expected), \
        answer[:120]
    assert b"Traceback" not in answer
    assert not any(p.startswith(("/raw/smuggled", "/etc", "/admin", "/steal"))
                   or "evil" in h for p, h, _ in seen), seen
    await still_serving(app, client)


async def test_odd_host_never_picks_the_upstream(app_and_log, client) -> None:
    app, seen, base = app_and_log
    answer = await raw(app.port, b"POST /raw/x HTTP/1.1\r\nHost: evil.example:666\r\n"
                                 b"Content-Length: 2\r\n\r\nhi")
    assert answer.startswith(b"HTTP/1.1 200")
    assert seen[-1][0] == "/raw/x" and seen[-1][1] == base.split("://")[1]


async def test_pipelined_requests_are_answered_in_order(app_and_log) -> None:
    app, seen, _ = app_and_log
    one = b"POST /raw/first HTTP/1.1\r\nHost: r\r\nContent-Length: 1\r\n\r\na"
    two = b"POST /raw/second HTTP/1.1\r\nHost: r\r\nContent-Length: 1\r\nConnection: close" \
          b"\r\n\r\nb"
    answer = await raw(app.port, one + two)
    assert answer.count(b"HTTP/1.1 200") == 2
    assert answer.index(b"/raw/first") < answer.index(b"/raw/second")


async def test_slowloris_is_cut_off(app_and_log, client) -> None:
    app, _, _ = app_and_log
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"POST /raw/x HTTP/1.1\r\nHost: r\r\n")
    await writer.drain()
    loop = asyncio.get_running_loop()
    started = loop.time()
    data = await asyncio.wait_for(reader.read(), 5)  # closed by client_timeout_s (1 s)
    assert data == b"" and loop.time() - started < 3
    writer.close()
    await still_serving(app, client)


@pytest.mark.slow
async def test_busy_keep_alive_stays_open_idle_one_is_closed(app_and_log) -> None:
    app, _, _ = app_and_log
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(6):  # a request every 0.4 s: 2.4 s in all, over client_timeout_s (1 s)
        writer.write(b"POST /raw/k HTTP/1.1\r\nHost: r\r\nContent-Length: 1\r\n\r\nk")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200"), (i, head)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        await asyncio.sleep(0.4)
    assert loop.time() - started > 2
    idle_from = loop.time()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # then idle: closed
    assert 0.9 <= loop.time() - idle_from + 0.4 < 3  # idle since the answer: ~1 s, not sooner
    writer.close()


SCHEMA = Schema("f@1", (Field("amount", "float", min=0), Field("country", "string",
                                                             enum=("US", "DE")),
                        Field("n", "int", required=False)))
JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers()
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=25)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(doc=JSON | st.fixed_dictionaries({"inputs": st.lists(st.fixed_dictionaries(
    {"name": st.sampled_from(["amount", "country", "x"]), "datatype": st.text(max_size=5),
     "shape": st.lists(st.integers(-2, 5), max_size=3), "data": JSON}), max_size=3)}))
def test_validators_never_raise(doc: Any) -> None:
    for protocol in ("v2", "json"):
        violations = Validator(SCHEMA, protocol).validate(doc)
        assert isinstance(violations, list)
        orjson.dumps(violations)  # always reportable as JSON


@pytest.mark.slow
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(st.sampled_from(["listen", "limits", "routes", "admin", "registry",
                                            "prediction_log", "state_dir", "junk"]),
                           JSON, max_size=5)
       | st.fixed_dictionaries({"routes": st.lists(st.dictionaries(
           st.sampled_from(["name", "match", "versions", "split", "rollout", "shadow",
                            "sticky", "blue_green", "override", "fallback"]), JSON,
           max_size=6), max_size=2)}))
def test_config_loader_only_answers_with_validation_errors(tmp_path_factory, doc: Any) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "router.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        load_snapshot(path, env={})
    except ConfigError as exc:
        assert exc.errors and all(e.startswith(("router.yaml", "registry.yaml"))
                                  for e in exc.errors), exc.errors
