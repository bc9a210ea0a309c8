"""The lifecycle: start builds in order and undoes itself when a step fails; stop works in
any state; the real process (`model-router serve`): SIGHUP reload, SIGTERM drain, exit codes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from helpers import (
    Served,
    free_port,
    route,
    scorer,
    set_split,
    start_serve,
    wait_for,
    wait_ready,
    write_config,
)

from router.analysis.audit import iter_records
from router.process.app import RouterApp
from router.process.lifecycle import TaskSet

# -- in process: start, a failed start, stop ---------------------------------------------------


def other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


def open_files_under(folder: Path) -> list[str]:
    """Files this process holds open below ``folder`` (Linux: /proc/self/fd)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            out.append(target)
    return out


def taken_port() -> socket.socket:
    """A loopback port some other program listens on (the caller closes it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def test_stop_on_a_never_started_app_does_nothing(tmp_path: Path) -> None:
    app = RouterApp(write_config(tmp_path, [route({"v1": "http://127.0.0.1:1/a"})]))
    assert app.live is None and app.server is None and app.predlog is None
    await app.stop()
    await app.stop()  # idempotent
    assert not app.running and not app.ready
    with pytest.raises(RuntimeError, match="can start only once"):
        await app.start()


async def test_stop_twice_on_a_started_app(tmp_path: Path, start_router, client) -> None:
    path = write_config(tmp_path, [route({"v1": "http://127.0.0.1:1/a"})])
    before = other_tasks()
    app = await start_router(path)
    assert app.running and app.ready and other_tasks() - before
    await app.stop()
    await app.stop()
    assert not app.running
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.get(f"http://127.0.0.1:{app.admin_port}/-/healthy")
    assert other_tasks() <= before  # the flush, drift, rollout and watch tasks are gone


@pytest.mark.parametrize("taken", ["listen", "admin"], ids=["listen-port", "admin-port"])
async def test_a_failed_start_stops_what_it_started(tmp_path: Path, taken: str) -> None:
    blocker = taken_port()
    port = blocker.getsockname()[1]
    listen = port if taken == "listen" else free_port()
    admin = port if taken == "admin" else free_port()
    path = write_config(tmp_path, [route({"v1": "http://127.0.0.1:1/a"})],
                        listen={"host": "127.0.0.1", "port": listen},
                        admin={"host": "127.0.0.1", "port": admin})
    app = RouterApp(path, watch_interval=0.05)
    before = other_tasks()
    try:
        with pytest.raises(OSError):
            await app.start()
    finally:
        blocker.close()
    assert other_tasks() - before == set(), "a task of the failed start is still running"
    assert open_files_under(tmp_path) == []
    assert not app.running and not app.ready
    if taken == "admin":  # the proxy port had been bound: it is released again
        assert port_is_free(listen)
    await app.stop()  # and stop after a failed start is a no-op


async def test_task_set_drains_then_cancels(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet()
    finished, cancelled = asyncio.Event(), asyncio.Event()

    async def quick() -> None:
        await asyncio.sleep(0)
        finished.set()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def crash() -> None:
        raise ValueError("boom")

    tasks.spawn(quick())
    tasks.spawn(forever())
    with caplog.at_level(logging.ERROR, logger="model_router"):
        crashed = tasks.spawn(crash())
        await asyncio.wait([crashed])
        await asyncio.sleep(0)  # the done callback runs on the next loop iteration
    assert "background task" in caplog.text and "boom" in caplog.text
    await tasks.close(grace=1.0)
    assert finished.is_set() and cancelled.is_set() and len(tasks) == 0


# -- the real process ------------------------------------------------------------------------


class HeldUpstream:
    """An upstream that holds every request until released, and counts what arrived."""

    def __init__(self) -> None:
        self.arrived = 0
        self.release = asyncio.Event()
        self.base = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrived += 1
        if request.query.get("hold"):
            await self.release.wait()
        return web.Response(text="ok")


@pytest.fixture
async def held(upstreams) -> AsyncIterator[HeldUpstream]:
    upstream = HeldUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    upstream.base = await upstreams.start(app)
    yield upstream
    upstream.release.set()


async def serve(tmp_path: Path, base: str, **top: Any) -> tuple[Served, Path]:
    port, admin = free_port(), free_port()
    path = write_config(tmp_path, [route({"v1": base + "/a", "v2": base + "/b"},
                                         split={"v1": 100, "v2": 0})],
                        listen={"host": "127.0.0.1", "port": port},
                        admin={"host": "127.0.0.1", "port": admin}, **top)
    return Served(await start_serve(path), port, admin), path


async def poll(fetch: Callable[[], Awaitable[Any]], until: Callable[[Any], bool],
               timeout: float = 10.0) -> Any:
    """Await ``fetch()`` until ``until(result)``; fails the test at the timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await fetch()
        if until(result):
            return result
        if loop.time() > deadline:
            raise AssertionError(f"still {result!r} after {timeout} s")
        await asyncio.sleep(0.02)


def rewrite_unseen(path: Path, mutate: Callable[[dict[str, Any]], None]) -> None:
    """Change the file so that the file watcher cannot tell (same inode, size and mtime):
    only a SIGHUP can apply the change."""
    before = path.stat()
    doc = yaml.safe_load(path.read_text())
    mutate(doc)
    text = yaml.safe_dump(doc, sort_keys=False).encode()
    assert len(text) == before.st_size, "the change must keep the file's size"
    with open(path, "r+b") as f:  # in place: the same inode
        f.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.slow
async def test_sighup_reload_and_sigterm_drain(tmp_path: Path, held: HeldUpstream,
                                               client: aiohttp.ClientSession) -> None:
    served, path = await serve(tmp_path, held.base)

    async def config() -> dict[str, Any]:
        async with client.get(served.admin_url("/-/config")) as resp:
            return await resp.json()

    async def ready() -> int:
        async with client.get(served.admin_url("/-/ready")) as resp:
            return resp.status

    try:
        await wait_ready(served, client)
        rewrite_unseen(path, set_split(0, 100))
        served.proc.send_signal(signal.SIGHUP)
        applied = await poll(config, lambda c: c["source"] != "startup")
        assert applied["source"] == "sighup"
        assert applied["routes"][0]["weights"]["v2"] == 100

        inflight = [asyncio.ensure_future(client.post(served.url("/v2/models/fraud/x?hold=1"),
                                                      data=b"{}")) for _ in range(10)]
        await wait_for(lambda: held.arrived == 10)  # all ten are at the upstream, held
        served.proc.send_signal(signal.SIGTERM)
        await poll(ready, lambda status: status == 503)  # draining, the ten still in flight
        held.release.set()
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


@pytest.mark.slow
async def test_drain_delay_keeps_serving_while_not_ready(tmp_path: Path, held: HeldUpstream,
                                                         client: aiohttp.ClientSession) -> None:
    served, _ = await serve(tmp_path, held.base,
                            limits={"drain_delay_s": 1.0, "shutdown_grace_s": 5})

    async def ready() -> int:
        async with client.get(served.admin_url("/-/ready")) as resp:
            return resp.status

    try:
        await wait_ready(served, client)
        served.proc.send_signal(signal.SIGTERM)
        await poll(ready, lambda status: status == 503)
        async with client.post(served.url("/v2/models/fraud/x"), data=b"{}") as resp:
            assert resp.status == 200  # not ready, still serving during drain_delay_s
        assert await asyncio.wait_for(served.proc.wait(), 10) == 0
    finally:
        if served.proc.returncode is None:
            served.proc.kill()
            await served.proc.wait()


@pytest.mark.slow
async def test_invalid_config_exits_1(tmp_path: Path) -> None:
    path = write_config(tmp_path, [route({"v1": "http://127.0.0.1:1/a"}, split={"v1": 90})])
    proc = await start_serve(path)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert b"weights sum to 90, expected 100" in out


@pytest.mark.slow
async def test_listen_port_taken_exits_1(tmp_path: Path) -> None:
    blocker = taken_port()
    try:
        path = write_config(tmp_path, [route({"v1": "http://127.0.0.1:1/a"})],
                            listen={"host": "127.0.0.1", "port": blocker.getsockname()[1]})
        proc = await start_serve(path)
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        blocker.close()
    assert proc.returncode == 1
    assert b"cannot start" in out


async def test_stop_waits_for_requests_whose_client_went_away(tmp_path: Path, upstreams,
                                                               start_router) -> None:
    """A client that sends and hangs up does not take its request's record with it: the
    router answers (to nobody), logs it, and only then stops."""
    slow = await upstreams.start(scorer(0.5, delay=0.3))
    app = await start_router(write_config(tmp_path, [route({"v1": slow + "/m"})]))
    for i in range(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        body = b'{"inputs": []}'
        writer.write(b"POST /v2/models/fraud/infer HTTP/1.1\r\nhost: x\r\n"
                     b"x-request-id: gone-%d\r\ncontent-length: %d\r\n\r\n%s"
                     % (i, len(body), body))
        await writer.drain()
        writer.close()
    await wait_for(lambda: app.proxy.inflight == 10)
    await app.stop()
    ids = {r["request_id"] for r in iter_records(tmp_path / "logs")}
    assert ids == {f"gone-{i}" for i in range(10)}


async def test_close_never_drops_a_batch_queued_for_the_writer(tmp_path: Path) -> None:
    """``close`` cancels the periodic flush; a batch it had handed to a busy writer thread
    is still written."""
    import concurrent.futures
    import time

    from router.config import PredictionLogSettings
    from router.observers.predlog import PredictionLog

    written: list[bytes] = []
    log = PredictionLog(PredictionLogSettings(dir=tmp_path, flush_ms=10), b"k" * 32,
                        sink=written.append)
    loop = asyncio.get_running_loop()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(pool)
    try:
        log._entries = [b'{"n": %d}\n' % i for i in range(750)]
        loop.run_in_executor(pool, time.sleep, 0.2)   # the writer thread is busy
        log.start()
        await asyncio.sleep(0.05)                       # the flush's batch waits for it
        await log.close()
    finally:
        pool.shutdown(wait=True)
    assert b"".join(written).count(b"\n") == 750
