"""Shared fixtures: real aiohttp upstreams on 127.0.0.1, config files, a running router."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web

from router.process.app import RouterApp

REGISTRY = {
    "schemas": {
        "fraud-features@1": {"fields": {
            "amount": {"type": "float", "min": 0},
            "avg_purchase_last_7_days": {"type": "float", "min": 0},
            "country": {"type": "string", "enum": ["US", "DE", "FR"]},
            "is_new_user": {"type": "bool", "required": False},
        }},
    },
    "models": {"fraud": {"versions": {
        "v1": {"schema": "fraud-features@1", "training_data": "s3://d/v1.parquet",
               "model_version": "1.0.0"},
        "v2": {"schema": "fraud-features@1", "training_data": "s3://d/v2.parquet",
               "model_version": "2.0.0"},
        "v3": {"schema": "fraud-features@1", "training_data": "s3://d/v3.parquet"},
    }}},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, routes: list[dict[str, Any]], registry: dict | None = None,
                 **top: Any) -> Path:
    """Write router.yaml (+ registry.yaml) with loopback ports picked by the OS."""
    folder.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "registry": "registry.yaml",
        "state_dir": "state",
        "prediction_log": {"dir": "logs"},
        "routes": routes,
    }
    doc.update(top)
    (folder / "registry.yaml").write_text(yaml.safe_dump(registry or REGISTRY, sort_keys=False))
    path = folder / "router.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def echo_app(name: str) -> web.Application:
    """An upstream that reports what it received: version, path, headers, body."""

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        data = {"version": name, "method": request.method, "path": request.raw_path,
                "headers": {str(k): v for k, v in request.headers.items()}, "body": body.decode("utf-8", "replace")}
        return web.Response(body=orjson.dumps(data), content_type="application/json",
                            headers={"x-upstream": name, "Connection": "keep-alive"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


class Upstreams:
    """Starts aiohttp apps on free loopback ports and stops them at teardown."""

    def __init__(self) -> None:
        self.runners: list[web.AppRunner] = []

    async def start(self, app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def echo(self, name: str) -> str:
        return await self.start(echo_app(name))

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


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


def url(app: RouterApp, path: str) -> str:
    return f"http://127.0.0.1:{app.port}{path}"


def admin_url(app: RouterApp, path: str) -> str:
    return f"http://127.0.0.1:{app.admin_port}{path}"


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a cheap condition until true; fails the test at the timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
