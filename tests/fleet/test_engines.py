"""The fleet engines are real: Redis stores, dies and comes back; Prometheus scrapes loopback
servers and follows target changes. Proves tests/fleetkit.py before fleet tests rely on it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from fleetkit import PrometheusServer, RedisServer, value
from helpers import Upstreams
from redis.exceptions import ConnectionError as RedisConnectionError


def counter_app(count: int) -> web.Application:
    """A /metrics endpoint exposing ``fleet_probe_requests_total`` = count (text format)."""
    text = ("# HELP fleet_probe_requests_total Requests seen.\n"
            "# TYPE fleet_probe_requests_total counter\n"
            f'fleet_probe_requests_total{{worker="w"}} {count}\n')

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=text.encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


async def start_counter(upstreams: Upstreams, count: int) -> str:
    """A counter server on a free loopback port; its ``host:port`` target."""
    return (await upstreams.start(counter_app(count))).removeprefix("http://")


def total_is(expected: float) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda result: value(result) == expected


async def test_redis_set_get(redis_server: RedisServer) -> None:
    client = aioredis.from_url(redis_server.url)
    try:
        assert await client.set("fleet:probe", "42")
        assert await client.get("fleet:probe") == b"42"
        assert await client.incr("fleet:n") == 1
    finally:
        await client.aclose()
    assert repr(redis_server).startswith(f"<RedisServer pid={redis_server.pid} 127.0.0.1:")


async def test_redis_kill_then_restart_on_the_same_port(redis_server: RedisServer) -> None:
    client = aioredis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=1)
    try:
        await client.set("fleet:probe", "before")
        port, pid = redis_server.port, redis_server.pid
        await redis_server.kill()
        assert not redis_server.running
        with pytest.raises(RedisConnectionError):
            await client.get("fleet:probe")
        await redis_server.restart()
        assert (redis_server.port, redis_server.running) == (port, True)
        assert redis_server.pid != pid
        # The same client reconnects; the new server starts empty (no persistence).
        assert await client.get("fleet:probe") is None
        await client.set("fleet:probe", "after")
        assert await client.get("fleet:probe") == b"after"
    finally:
        await client.aclose()


async def test_redis_stop_is_by_pid_and_final(redis_server: RedisServer) -> None:
    pid = redis_server.pid
    assert pid is not None
    await redis_server.stop()
    assert not redis_server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    redis_server.close()  # the fixture's finalizer: a no-op now


async def test_prometheus_sums_a_counter_then_follows_replaced_targets(
        prometheus_server: PrometheusServer, upstreams: Upstreams) -> None:
    # One test for both: each target change costs Prometheus about 5.5 s (see fleetkit).
    a, b, c = [await start_counter(upstreams, n) for n in (3, 4, 10)]
    prometheus_server.set_targets([a, b])
    up = await prometheus_server.wait_for_targets_up(2, timeout=10)
    assert sorted(t["labels"]["instance"] for t in up) == sorted([a, b])
    assert {t["labels"]["job"] for t in up} == {"model-router"}
    total = 'sum(fleet_probe_requests_total{job="model-router"})'
    await prometheus_server.wait_for_query(total, total_is(7.0), timeout=5)

    prometheus_server.set_targets([c])
    up = await prometheus_server.wait_for_targets_up(1, timeout=10)
    assert [t["labels"]["instance"] for t in up] == [c]
    # Dropped targets' series go stale at once, so the sum is the new target's alone.
    await prometheus_server.wait_for_query(total, total_is(10.0), timeout=5)


async def test_set_targets_refuses_urls(tmp_path: Path) -> None:
    server = PrometheusServer(tmp_path, binary="prometheus")
    with pytest.raises(ValueError, match="host:port"):
        server.set_targets(["http://127.0.0.1:9090"])
