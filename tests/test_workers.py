"""`serve --workers 2`: shared port, per-worker logs, aggregated metrics, reload to all."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import (
    ROOT,
    Served,
    echo_versions,
    flaky,
    free_port,
    rewrite,
    rollout_route,
    route,
    set_split,
    wait_ready,
    write_config,
)
from prometheus_client.parser import text_string_to_metric_families

from router.analysis.audit import iter_records
from router.config import load_snapshot
from router.dataplane.routing import by_bucket, sticky_bucket
from router.process.workers import MULTIPROC_ENV, Supervisor


async def test_stop_on_a_never_started_supervisor_does_nothing(tmp_path: Path) -> None:
    supervisor = Supervisor(write_config(tmp_path, [route({"v1": "http://127.0.0.1:1/a"})]), 2)
    await supervisor.stop()
    await supervisor.stop()
    assert not supervisor.running


@pytest.mark.slow
async def test_a_failed_supervisor_start_stops_its_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    path = write_config(tmp_path, [route({"v1": "http://127.0.0.1:1/a"})],
                        listen={"host": "127.0.0.1", "port": free_port()},
                        admin={"host": "127.0.0.1", "port": blocker.getsockname()[1]})
    supervisor = Supervisor(path, 2)
    try:
        with pytest.raises(OSError):  # the admin port is taken, after both workers started
            await supervisor.start()
    finally:
        blocker.close()
    assert len(supervisor.processes) == 2
    assert [p.is_alive() for p in supervisor.processes] == [False, False]
    assert len(supervisor.tasks) == 0 and not supervisor.running
    assert MULTIPROC_ENV not in os.environ  # a later child must not inherit a removed folder


@pytest.mark.slow

async def test_two_workers(tmp_path: Path, upstreams, client) -> None:
    urls = await echo_versions(upstreams, "v1", "v2")
    port, admin = free_port(), free_port()
    path = write_config(tmp_path, [route(urls, split={"v1": 50, "v2": 50},
                                         sticky={"header": "x-user-id"})],
                        listen={"host": "127.0.0.1", "port": port},
                        admin={"host": "127.0.0.1", "port": admin})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router.cli", "serve", "-c", str(path), "--workers", "2",
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    served = Served(proc, port, admin)
    try:
        # Three interpreters import the package: on a busy two-core machine that took >10 s.
        await wait_ready(served, client, timeout=60)
        compiled = load_snapshot(path).routes[0]
        sent = 0

        async def one(user: str, session: aiohttp.ClientSession) -> str:
            async with session.post(served.url("/v2/models/fraud/infer"), data=b"{}",
                                    headers={"x-user-id": user}) as resp:
                assert resp.status == 200
                return resp.headers["x-model-version"]

        # fresh connections spread over both workers; stickiness agrees in all of them
        for i in range(40):
            async with aiohttp.ClientSession() as fresh:
                for user in (f"u{i}", f"w{i}"):
                    got = await one(user, fresh)
                    assert got == by_bucket(compiled, sticky_bucket("fraud", user))
                    sent += 1

        rewrite(path, set_split(0, 100))
        for _ in range(100):
            async with aiohttp.ClientSession() as fresh:
                versions = {await one(f"x{k}", fresh) for k in range(4)}
            sent += 4
            if versions == {"v2"}:
                break
            await asyncio.sleep(0.05)
        for _ in range(20):  # every worker took the reload: new connections all see v2
            async with aiohttp.ClientSession() as fresh:
                assert await one("anyone", fresh) == "v2"
                sent += 1

        async with client.get(served.admin_url("/metrics")) as resp:
            text = await resp.text()
        total = sum(s.value for f in text_string_to_metric_families(text)
                    if f.name == "model_router_requests" for s in f.samples
                    if s.name == "model_router_requests_total")
        assert total == sent
        assert 'model_router_traffic_weight{route="fraud",version="v2"} 100.0' in text

        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    logs = list((tmp_path / "logs").glob("predictions-*.jsonl"))
    assert len(logs) == 2, "one log file per worker"
    assert len([r for r in iter_records(tmp_path / "logs") if r["role"] == "primary"]) == sent


@pytest.mark.slow
@pytest.mark.parametrize("every, outcome", [(500, "promoted"), (5, "rolled_back")],
                         ids=["healthy-canary-promoted", "failing-canary-rolled-back"])
async def test_two_workers_run_a_rollout(tmp_path: Path, upstreams, client, every: int,
                                         outcome: str) -> None:
    """The supervisor judges the sum of both workers' traffic; both serve its weights."""
    v1 = await upstreams.start(flaky(500))
    v2 = await upstreams.start(flaky(every))
    port, admin = free_port(), free_port()
    path = write_config(tmp_path, [rollout_route(v1, v2, steps=[20, 100], step_min_s=1,
                                                 step_min_requests=100)],
                        listen={"host": "127.0.0.1", "port": port},
                        admin={"host": "127.0.0.1", "port": admin})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router.cli", "serve", "-c", str(path), "--workers", "2",
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    served = Served(proc, port, admin)
    try:
        await wait_ready(served, client, timeout=60)
        versions: dict[str, int] = {}
        status: dict[str, Any] = {}
        for _ in range(120):  # bounded: up to 120 rounds of 40 requests on fresh connections
            for _ in range(4):
                async with aiohttp.ClientSession() as fresh:
                    for _ in range(10):
                        async with fresh.post(served.url("/v2/models/fraud/infer"),
                                              data=b"{}") as resp:
                            version = resp.headers.get("x-model-version", "-")
                            versions[version] = versions.get(version, 0) + 1
            async with client.get(served.admin_url("/-/rollouts")) as resp:
                status = (await resp.json())[0]
            if status["status"] != "running":
                break
        assert status["status"] == outcome, status
        assert versions.get("v2", 0) > 0  # the workers served the canary its share
        evidence = status["evidence"]["canary"]
        assert evidence["requests"] >= 20  # judged on metrics summed over the workers
        expected = "v2" if outcome == "promoted" else "v1"
        for _ in range(10):  # every worker took the final weights
            async with aiohttp.ClientSession() as fresh:
                async with fresh.post(served.url("/v2/models/fraud/infer"), data=b"{}") as resp:
                    assert resp.headers["x-model-version"] == expected
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
