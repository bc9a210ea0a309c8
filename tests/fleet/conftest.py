"""Fleet fixtures: a real redis-server and a real Prometheus per test, on free loopback ports.

Each starts in well under two seconds in the test's tmp_path and is stopped by its PID at
teardown whatever the test did; a test using either is marked ``slow`` and ``loopback`` by
tests/conftest.py. Without the binary the test is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fleetkit import PrometheusServer, RedisServer, require


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", binary=require("redis-server"))
    try:
        await server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
async def prometheus_server(tmp_path: Path) -> AsyncIterator[PrometheusServer]:
    server = PrometheusServer(tmp_path / "prometheus", binary=require("prometheus"))
    try:
        await server.start()
        yield server
    finally:
        server.close()
