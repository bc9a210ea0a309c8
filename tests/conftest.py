"""Shared fixtures: real aiohttp upstreams and raw TCP servers on 127.0.0.1, a running router.

Plain helpers live in helpers.py; test modules import them from there. The helper names
imported below also stay importable from conftest, for modules not yet moved to helpers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import (  # noqa: F401 - re-exported, see the docstring
    REGISTRY,
    Handler,
    Upstreams,
    admin_url,
    echo_app,
    free_port,
    url,
    wait_for,
    write_config,
)

from router.process.app import RouterApp

# The fixtures that open sockets: a test using any of them (directly or through another
# fixture) is in the loopback tier, marked so the pure and in-process tiers run alone.
LOOPBACK_FIXTURES = {"upstreams", "client", "start_router", "tcp"}
# The fixtures that start real engines as child processes (tests/fleet/conftest.py): seconds
# per test, so such a test is in the slow tier (and, on loopback ports, the loopback tier).
SLOW_FIXTURES = {"redis_server", "prometheus_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if (LOOPBACK_FIXTURES | SLOW_FIXTURES) & used:
            item.add_marker(pytest.mark.loopback)
        if SLOW_FIXTURES & used:
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session: pytest.Session) -> None:
    # After -m/-k deselection: when a `modelservers` test will run, build its venvs in a
    # detached process now (tests/modelservers.py), so the pip installs overlap other tests.
    if session.config.option.collectonly:
        return
    if any(item.get_closest_marker("modelservers") for item in session.items):
        import modelservers

        modelservers.start_build()


@pytest.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    ups = Upstreams()
    yield ups
    await ups.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


StartRouter = Callable[[Path], Awaitable[RouterApp]]


@pytest.fixture
async def start_router() -> AsyncIterator[StartRouter]:
    apps: list[RouterApp] = []

    async def start(path: Path, **kwargs: Any) -> RouterApp:
        app = RouterApp(path, watch_interval=kwargs.pop("watch_interval", 0.05), **kwargs)
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        if app.running:
            await app.stop()


@pytest.fixture
async def tcp() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start raw asyncio TCP servers running ``handler`` per connection; returns their URL."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        async def guarded(reader, writer) -> None:
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass

        server = await asyncio.start_server(guarded, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
