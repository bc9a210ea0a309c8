"""Wiring and lifecycle: load -> start servers -> serve -> drain -> stop.

``RouterApp`` owns every long-lived piece (snapshot, client pool, servers, watcher task) and
stops them in reverse order. ``serve`` is the process entry: uvloop, signals, exit code.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .admin import build_admin
from .client import Client
from .config import Snapshot, load_snapshot
from .drift import DriftMonitor
from .errors import ConfigError
from .history import History
from .metrics import Metrics
from .predlog import PredictionLog, load_log_key
from .proxy import Live, Proxy
from .reload import Reloader, Watcher
from .rollout import Controller, LocalEvidence
from .server import HttpServer
from .shadow import Shadows

if TYPE_CHECKING:
    from .workers import Supervisor

log = logging.getLogger("model_router")

SHADOW_DRAIN_S = 5.0
GC_YOUNG = 20_000


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
        self.proxy.shadows = self.shadows
        self.drift = DriftMonitor(self.metrics)
        self.drift.configure(snapshot)
        self.proxy.drift = self.drift
        self._spawn(self.drift.run(self.live))
        self.reloader = Reloader(self.config_path, self.live, self.metrics, self.history)
        self.reloader.on_applied.append(self.drift.configure)
        self.rollouts: Controller | None = None
        if not self.worker:
            evidence = LocalEvidence()
            self.rollouts = Controller(snapshot.state_dir, self.history, evidence,
                                       self.metrics, clock=self.rollout_clock)
            self.rollouts.live = self.live
            self.reloader.transforms.append(self.rollouts.transform)
            self.proxy.observers.append(evidence.exchange)
            self.shadows.observers.append(evidence.shadow)
            self.proxy.feedback_observers.append(evidence.feedback)
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


async def _serve(config_path: Path, workers: int = 1) -> int:
    app: RouterApp | Supervisor
    if workers > 1:
        from .workers import Supervisor
        app = Supervisor(config_path, workers)
    else:
        app = RouterApp(config_path)
    try:
        await app.start()
    except ConfigError as exc:
        for line in exc.errors:
            log.error("%s", line)
        return 1
    except (OSError, RuntimeError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_sighup() -> None:
        app._spawn(_reload_quietly(app))

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await stop.wait()
    log.info("signal received: draining")
    await app.stop()
    return 0


async def _reload_quietly(app: RouterApp) -> None:
    try:
        await app.reloader.reload("sighup")
    except ConfigError:
        pass  # logged, counted and kept in history by the reloader


def run(coro: Any) -> Any:
    """Run a coroutine on uvloop (asyncio's loop where uvloop is unavailable)."""
    # Work sent to threads (config loads on reload, baseline reads) runs Python; a short
    # switch interval keeps such a thread from holding the GIL for the default 5 ms while
    # requests wait (tail latency).
    sys.setswitchinterval(0.0005)
    # Every request allocates a few hundred short-lived objects; with the default young
    # generation of 700 the collector runs every few requests and rescans what the requests
    # in flight hold. Freeze what startup built and collect the young generation less often.
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 10, 10)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


def serve(config_path: str | Path, workers: int = 1) -> int:
    """Run the router until SIGTERM/SIGINT; returns the process exit code."""
    return int(run(_serve(Path(config_path), workers)))
