"""The real process: `model-router serve`, SIGHUP reload, SIGTERM drain, exit codes."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import free_port, write_config
from test_proxy import route
from test_reload import rewrite, set_split


class Served:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, admin: int) -> None:
        self.proc, self.port, self.admin = proc, port, admin

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin}{path}"


async def start_serve(path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router.cli", "serve", "-c", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[1])


async def wait_ready(served: Served, client: aiohttp.ClientSession) -> None:
    for _ in range(200):
        if served.proc.returncode is not None:
            raise AssertionError(f"router exited: {await served.proc.stdout.read()}")
        try:
            async with client.get(served.admin_url("/-/ready")) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("router never became ready")


@pytest.fixture
async def slow_upstream(upstreams) -> AsyncIterator[str]:
    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(float(request.query.get("delay", "0")))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    yield await upstreams.start(app)


async def serve(tmp_path: Path, base: str, **top) -> tuple[Served, Path]:
    port, admin = free_port(), free_port()
    path = write_config(tmp_path, [route({"v1": base + "/a", "v2": base + "/b"},
                                         split={"v1": 100, "v2": 0})],
                        listen={"host": "127.0.0.1", "port": port},
                        admin={"host": "127.0.0.1", "port": admin}, **top)
    return Served(await start_serve(path), port, admin), path


async def test_sighup_reload_and_sigterm_drain(tmp_path: Path, slow_upstream, client) -> None:
    served, path = await serve(tmp_path, slow_upstream)
    try:
        await wait_ready(served, client)
        rewrite(path, set_split(0, 100))
        served.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            async with client.get(served.admin_url("/-/config")) as resp:
                config = await resp.json()
            if config["source"] in ("sighup", "file"):
                break
            await asyncio.sleep(0.02)
        assert config["routes"][0]["weights"]["v2"] == 100

        inflight = [asyncio.ensure_future(client.post(served.url("/v2/models/fraud/x?delay=0.5"),
                                                      data=b"{}")) for _ in range(10)]
        await asyncio.sleep(0.2)  # let the requests reach the upstream before the signal
        served.proc.send_signal(signal.SIGTERM)
        responses = await asyncio.gather(*inflight)
        assert [r.status for r in responses] == [200] * 10
        for r in responses:
            r.release()
        assert await asyncio.wait_for(served.proc.wait(), 10) == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as fresh:
                await fresh.post(served.url("/v2/models/fraud/x"), data=b"{}")
    finally:
        if served.proc.returncode is None:
            served.proc.kill()
            await served.proc.wait()


async def test_drain_delay_keeps_serving_while_not_ready(tmp_path: Path, slow_upstream,
                                                         client) -> None:
    served, _ = await serve(tmp_path, slow_upstream,
                            limits={"drain_delay_s": 1.0, "shutdown_grace_s": 5})
    try:
        await wait_ready(served, client)
        served.proc.send_signal(signal.SIGTERM)
        status = 200
        for _ in range(50):
            async with client.get(served.admin_url("/-/ready")) as resp:
                status = resp.status
            if status == 503:
                break
            await asyncio.sleep(0.02)
        assert status == 503
        async with client.post(served.url("/v2/models/fraud/x"), data=b"{}") as resp:
            assert resp.status == 200  # not ready, still serving during drain_delay_s
        assert await asyncio.wait_for(served.proc.wait(), 10) == 0
    finally:
        if served.proc.returncode is None:
            served.proc.kill()
            await served.proc.wait()


async def test_invalid_config_exits_1(tmp_path: Path) -> None:
    path = write_config(tmp_path, [route({"v1": "http://127.0.0.1:1/a"}, split={"v1": 90})])
    proc = await start_serve(path)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert b"weights sum to 90, expected 100" in out

