"""Wiring and lifecycle: load -> start servers -> serve -> drain -> stop.

``RouterApp`` owns every long-lived piece (snapshot, client pool, servers, watcher task) and
stops them in reverse order. ``serve`` is the process entry: uvloop, signals, exit code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from ..config import Live, Snapshot, load_snapshot
from ..control.admin import build_admin
from ..control.history import History
from ..control.reload import Reloader, Watcher
from ..control.rollout import Controller, LocalEvidence
from ..dataplane.client import Client
from ..dataplane.proxy import Proxy
from ..dataplane.server import HttpServer
from ..metrics import Metrics
from ..observers.drift import DriftMonitor
from ..observers.predlog import PredictionLog, load_log_key
from ..observers.shadow import Shadows

log = logging.getLogger("model_router")

SHADOW_DRAIN_S = 5.0


class RouterApp:
    """One router process. ``start`` raises ConfigError when the config is invalid."""

    def __init__(self, config_path: str | Path, *, watch_interval: float = 0.2,
                 worker: bool = False, rollout_clock: Callable[[], float] = time.time,
                 run_rollouts: bool = True) -> None:
        self.config_path = Path(config_path)
        self.watch_interval = watch_interval
        # A worker serves traffic only: its supervisor owns admin, watch and history.
        self.worker = worker
        # Tests drive rollouts with a fake clock and ``rollouts.tick()`` instead of the task.
        self.rollout_clock = rollout_clock
        self.run_rollouts = run_rollouts
        self.metrics = Metrics()
        self.ready = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._runners: list[web.BaseRunner] = []
        self._serving = False
        self.port = 0
        self.admin_port = 0

    def __repr__(self) -> str:
        return f"<RouterApp {self.config_path} port={self.port} ready={self.ready}>"

    async def start(self, snapshot: Snapshot | None = None) -> None:
        snapshot = snapshot or await asyncio.to_thread(load_snapshot, self.config_path,
                                                       source="startup")
        self.live = Live(snapshot)
        self.history = History(snapshot.state_dir)
        self.client = Client()
        self.proxy = Proxy(self.live, self.client, self.metrics)
        self.predlog = None
        if snapshot.prediction_log.enabled:
            secret = await asyncio.to_thread(load_log_key, snapshot.state_dir)
            self.predlog = PredictionLog(snapshot.prediction_log, secret, metrics=self.metrics)
            self.predlog.start()
        self.proxy.predlog = self.predlog
        self.shadows = Shadows(self.client, self.metrics, self.predlog, self.proxy.balancer)
        self.drift = DriftMonitor(self.metrics)
        self.drift.configure(snapshot)
        self.proxy.observers += [("drift", self.drift.exchange),
                                 ("shadow", self.shadows.exchange)]
        self._spawn(self.drift.run(self.live))
        self.reloader = Reloader(self.config_path, self.live, self.metrics, self.history)
        self.reloader.on_applied.append(self.drift.configure)
        self.rollouts: Controller | None = None
        if not self.worker:
            evidence = LocalEvidence()
            self.rollouts = Controller(snapshot.state_dir, self.history, evidence,
                                       self.metrics, clock=self.rollout_clock)
            self.rollouts.live = self.live
            self.rollouts.refresh = self.reloader.refresh
            self.reloader.transforms.append(self.rollouts.transform)
            self.proxy.observers.append(("rollout", evidence.exchange))
            self.shadows.observers.append(evidence.shadow)
            self.proxy.feedback_observers.append(("rollout", evidence.feedback))
            if self.run_rollouts:
                self._spawn(self.rollouts.run())
            self.reloader.applied(snapshot)

        self.server = HttpServer(self.proxy.handle, lambda: self.live.snapshot.limits)
        self.port = await self.server.start(snapshot.listen.host, snapshot.listen.port,
                                            reuse_port=self.worker)
        self._serving = True
        if self.worker:
            self.ready = True
            return

        admin_runner = web.AppRunner(build_admin(self), access_log=None)
        await admin_runner.setup()
        self._runners.append(admin_runner)
        admin_site = web.TCPSite(admin_runner, snapshot.admin.host, snapshot.admin.port)
        await admin_site.start()
        self.admin_port = admin_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        self._spawn(Watcher(self.reloader, self.watch_interval).run())
        self.ready = True
        log.info("serving on http://%s:%d (admin http://%s:%d), config %s",
                 snapshot.listen.host, self.port, snapshot.admin.host, self.admin_port,
                 snapshot.revision)

    @property
    def running(self) -> bool:
        return self._serving or bool(self._runners)

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def render_metrics(self) -> bytes:
        return self.metrics.render()

    def readiness_problems(self) -> list[str]:
        problems = []
        if not self.ready:
            problems.append("not started or draining")
        if self.predlog is not None and not self.predlog.healthy:
            problems.append(f"prediction log not writable: {self.predlog.last_error}")
        for route in self.live.snapshot.routes:
            if all(self.proxy.balancer.all_ejected(v) for v in route.versions.values()):
                problems.append(f"route {route.name}: every version is ejected")
        return problems

    async def stop(self, drain_delay: bool = True) -> None:
        """Drain: not-ready, wait drain_delay_s, 503 new requests, finish in-flight, close."""
        limits = self.live.snapshot.limits
        self.ready = False
        if limits.drain_delay_s and drain_delay:
            await asyncio.sleep(limits.drain_delay_s)
        self.proxy.draining = True
        if self._serving:
            await self.server.shutdown(limits.shutdown_grace_s)
            self._serving = False
        await self.shadows.drain(min(SHADOW_DRAIN_S, limits.shutdown_grace_s))
        if self.predlog is not None:
            await self.predlog.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.client.close()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        log.info("stopped")
