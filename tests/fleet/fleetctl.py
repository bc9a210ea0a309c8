"""Driving a fleet of real ``model-router serve`` processes in tests.

``Fleet`` starts replicas of one config on free loopback ports (``--port/--admin-port``,
``MODEL_ROUTER_REPLICA``), each logging to a file, stopped by PID; ``Traffic`` spreads bounded
load across the live replicas and counts every answer and every failure; ``Watch`` polls each
replica's ``/-/config`` and records when each rollout generation reached it.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from fleetkit import free_port

ROOT = Path(__file__).resolve().parents[2]
INFER = "/v2/models/fraud/infer"
BODY = b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 1], "data": [1.0]}]}'


@dataclass
class Replica:
    id: str
    port: int
    admin: int
    log: Path
    proc: asyncio.subprocess.Process | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin}{path}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Fleet:
    def __init__(self, config: Path, folder: Path, client: aiohttp.ClientSession) -> None:
        self.config = config
        self.folder = folder
        self.client = client
        self.replicas: list[Replica] = []

    def add(self, rid: str) -> Replica:
        replica = Replica(rid, free_port(), free_port(), self.folder / f"{rid}.log")
        self.replicas.append(replica)
        return replica

    async def start(self, replica: Replica, *extra: str) -> None:
        env = {**os.environ, "MODEL_ROUTER_REPLICA": replica.id}
        with open(replica.log, "ab") as log:
            replica.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "router.cli", "serve", "-c", str(self.config),
                "--port", str(replica.port), "--admin-port", str(replica.admin), *extra,
                stdout=log, stderr=asyncio.subprocess.STDOUT, cwd=ROOT, env=env)
        await self.wait_ready(replica)

    async def wait_ready(self, replica: Replica, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not replica.alive:
                raise AssertionError(f"{replica.id} exited:\n{self.tail(replica)}")
            try:
                async with self.client.get(replica.admin_url("/-/ready")) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(f"{replica.id} never became ready:\n{self.tail(replica)}")

    def tail(self, replica: Replica, chars: int = 3000) -> str:
        try:
            return replica.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    async def get(self, replica: Replica, path: str) -> Any:
        async with self.client.get(replica.admin_url(path)) as resp:
            return await resp.json()

    async def leader(self) -> Replica | None:
        for replica in self.live():
            if (await self.get(replica, "/-/fleet"))["leading"]:
                return replica
        return None

    async def kill(self, replica: Replica) -> None:
        assert replica.proc is not None
        replica.proc.send_signal(signal.SIGKILL)
        await replica.proc.wait()

    async def stop(self) -> None:
        for replica in self.replicas:
            if replica.alive:
                assert replica.proc is not None
                replica.proc.send_signal(signal.SIGTERM)
        for replica in self.replicas:
            if replica.proc is not None:
                try:
                    await asyncio.wait_for(replica.proc.wait(), 15)
                except TimeoutError:
                    replica.proc.kill()
                    await replica.proc.wait()


@dataclass
class Traffic:
    """Bounded load over the live replicas: ``rate`` requests a second, up to ``limit``."""

    fleet: Fleet
    rate: float = 150.0
    limit: int = 100_000
    users: int = 500
    codes: dict[int, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    served: list[tuple[str, str, str]] = field(default_factory=list)  # (request id, replica, version)
    sent: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def one(self, replica: Replica, user: str) -> None:
        headers = {"x-user-id": user, "content-type": "application/json"}
        try:
            async with self.fleet.client.post(replica.url(INFER), data=BODY,
                                              headers=headers) as resp:
                await resp.read()
                self.codes[resp.status] = self.codes.get(resp.status, 0) + 1
                version = resp.headers.get("x-model-version", "-")
                self.versions[version] = self.versions.get(version, 0) + 1
                if resp.status == 200:
                    self.served.append((resp.headers.get("x-request-id", ""), replica.id,
                                        version))
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failures.append(f"{replica.id}: {type(exc).__name__}: {exc}")

    async def run(self, seconds: float) -> None:
        """Send until ``stop``, ``seconds`` or ``limit``; every request awaited at the end."""
        pending: set[asyncio.Task[None]] = set()
        deadline = time.monotonic() + seconds
        interval = 1.0 / self.rate
        rng = random.Random(7)
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < deadline and \
                self.sent < self.limit:
            live = self.fleet.live()
            if live:
                replica = live[self.sent % len(live)]
                task = asyncio.create_task(self.one(replica, f"u{rng.randrange(self.users)}"))
                pending.add(task)
                task.add_done_callback(pending.discard)
                self.sent += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if pending:
            await asyncio.wait(pending, timeout=30)

    def stop(self) -> None:
        self._stop.set()


class Watch:
    """When did each rollout generation of ``route`` reach each replica (``/-/config``)."""

    def __init__(self, fleet: Fleet, route: str = "fraud") -> None:
        self.fleet = fleet
        self.route = route
        self.seen: dict[int, dict[str, float]] = {}  # generation -> replica -> first seen
        self.weights: dict[int, float] = {}
        self._stop = asyncio.Event()

    async def run(self, seconds: float, every: float = 0.05) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            for replica in self.fleet.live():
                try:
                    config = await self.fleet.get(replica, "/-/config")
                except (aiohttp.ClientError, TimeoutError):
                    continue
                state = config.get("rollouts", {}).get(self.route)
                if state:
                    gen = state["generation"]
                    self.weights.setdefault(gen, state["weight"])
                    self.seen.setdefault(gen, {}).setdefault(replica.id, time.time())
            await asyncio.sleep(every)

    def stop(self) -> None:
        self._stop.set()

    def lag(self, replicas: list[str]) -> dict[int, float]:
        """Per generation seen by every one of ``replicas``: last minus first sighting."""
        out = {}
        for gen, when in sorted(self.seen.items()):
            if all(r in when for r in replicas):
                times = [when[r] for r in replicas]
                out[gen] = max(times) - min(times)
        return out
