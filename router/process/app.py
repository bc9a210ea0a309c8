"""Wiring and lifecycle: load -> start servers -> serve -> drain -> stop.

``RouterApp`` owns every long-lived piece (snapshot, client pool, servers, watcher task),
builds them in order in ``start`` and stops them in reverse order (``lifecycle.Lifecycle``).
``main.serve`` is the process entry: uvloop, signals, exit code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from ..config import Live, Snapshot, load_snapshot
from ..control.admin import Administered, AdminServer
from ..control.evidence import LocalEvidence
from ..control.fleet import FleetMember
from ..control.history import History
from ..control.reload import Reloader, Watcher, with_ports
from ..control.rollout import Controller
from ..control.store import FleetStore
from ..dataplane.client import Client
from ..dataplane.grpc_front import GrpcFront
from ..dataplane.proxy import Proxy
from ..dataplane.server import HttpServer
from ..metrics import Metrics
from ..observers.attribution import Attribution
from ..observers.drift import DriftMonitor
from ..observers.encode import load_log_key
from ..observers.predlog import PredictionLog
from ..observers.shadow import Shadows
from ..observers.ship import SHIPPER_DOWN_S, ShipProcess
from .lifecycle import Lifecycle
from .wiring import (
    close_fleet,
    control_plane,
    fleet_store,
    follower,
    join_fleet,
    ship_replica,
)

log = logging.getLogger("model_router")

SHADOW_DRAIN_S = 5.0


class RouterApp(Lifecycle):
    """One router process. ``start`` raises ConfigError when the config is invalid.

    Every part exists from ``__init__`` (None until ``start`` builds it); ``start`` builds
    them in the order below and, if a step fails, stops those already built before the
    error goes on; ``stop`` drains and closes whatever exists (see ``Lifecycle``).
    """

    def __init__(self, config_path: str | Path, *, watch_interval: float = 0.2,
                 worker: bool = False, rollout_clock: Callable[[], float] = time.time,
                 run_rollouts: bool = True, port: int | None = None,
                 admin_port: int | None = None, grpc_port: int | None = None) -> None:
        super().__init__()
        self.config_path = Path(config_path)
        self.watch_interval = watch_interval
        # A worker serves traffic only: its supervisor owns admin, watch, history, rollouts.
        self.worker = worker
        # Tests drive rollouts with a fake clock and ``rollouts.tick()`` instead of the task.
        self.rollout_clock = rollout_clock
        self.run_rollouts = run_rollouts
        self.overrides = with_ports(port, admin_port, grpc_port)
        self.metrics = Metrics()
        self.port = 0
        self.admin_port = 0
        self.grpc_port = 0         # 0: no gRPC listener
        # Built by start(), in this order.
        self.live: Live | None = None
        self.history: History | None = None
        self.client: Client | None = None
        self.proxy: Proxy | None = None
        self.predlog: PredictionLog | None = None
        self.shipper: ShipProcess | None = None
        self.shadows: Shadows | None = None
        self.drift: DriftMonitor | None = None
        self.store: FleetStore | None = None
        self.attribution: Attribution | None = None
        self.reloader: Reloader | None = None
        self.rollouts: Controller | None = None
        self.fleet: FleetMember | None = None
        self.server: HttpServer | None = None
        self.grpc: GrpcFront | None = None
        self.admin: AdminServer | None = None

    def __repr__(self) -> str:
        return f"<RouterApp {self.config_path} port={self.port} ready={self.ready}>"

    async def start(self, snapshot: Snapshot | None = None) -> None:
        await self._start(self._startup(snapshot))

    async def _startup(self, given: Snapshot | None) -> None:
        snapshot = self.overrides(given if given is not None else await asyncio.to_thread(
            load_snapshot, self.config_path, source="startup"))
        self.live = live = Live(snapshot)
        self.history = History(snapshot.state_dir)
        self.client = Client()
        self.proxy = proxy = Proxy(live, self.client, self.metrics)
        if snapshot.prediction_log.enabled:
            secret = await asyncio.to_thread(load_log_key, snapshot.state_dir)
            self.predlog = PredictionLog(snapshot.prediction_log, secret, metrics=self.metrics,
                                         replica=ship_replica())
            self.predlog.start()
            if snapshot.prediction_log.ship is not None and not self.worker:
                self.shipper = ShipProcess(snapshot.prediction_log, ship_replica(),
                                           snapshot.state_dir, self.metrics,
                                           on_full=self.predlog.set_store_full)
                self.shipper.start()
        proxy.predlog = self.predlog
        self.shadows = shadows = Shadows(self.client, self.metrics, self.predlog,
                                         proxy.balancer)
        self.drift = drift = DriftMonitor(self.metrics)
        drift.configure(snapshot)
        proxy.observers += [("drift", drift.exchange), ("shadow", shadows.exchange)]
        self.tasks.spawn(drift.run(live))
        # Feedback may reach another process than the one that served: in a fleet, who
        # served each request goes to the fleet store.
        self.store = store = fleet_store(snapshot, self.metrics)
        self.attribution = attribution = Attribution(
            store, snapshot.fleet.feedback_ttl_s if snapshot.fleet else 0.0)
        proxy.attribution = attribution
        proxy.observers.append(("attribution", attribution.exchange))
        if store is not None:
            self.tasks.spawn(attribution.run())
        self.reloader = reloader = Reloader(self.config_path, live, self.metrics,
                                            self.history, overrides=self.overrides)
        reloader.on_applied.append(drift.configure)
        if self.worker:
            self.rollouts = follower(live, reloader, self.history, self.metrics)
            reloader.refresh()  # serve (and report) step 0 until the supervisor's weights come
        else:
            evidence = LocalEvidence()
            self.rollouts, self.fleet = control_plane(
                snapshot, live, reloader, self.history, self.metrics, store, evidence,
                reloader.refresh, clock=self.rollout_clock)
            if isinstance(self.rollouts.evidence, LocalEvidence):
                proxy.observers.append(("rollout", evidence.exchange))
                shadows.observers.append(evidence.shadow)
                proxy.feedback_observers.append(("rollout", evidence.feedback))
            if self.fleet is not None:
                await join_fleet(self.fleet, reloader, self.tasks)
            if self.run_rollouts:
                self.tasks.spawn(self.rollouts.run())
            reloader.applied(snapshot)

        server = HttpServer(proxy.handle, lambda: live.snapshot.limits)
        self.port = await server.start(snapshot.listen.host, snapshot.listen.port,
                                       reuse_port=self.worker)
        self.server = server
        if snapshot.grpc is not None:
            self.grpc = GrpcFront(proxy, lambda: live.snapshot.limits.max_body_bytes)
            self.grpc_port = await self.grpc.start(snapshot.grpc, reuse_port=self.worker)
        if self.worker:
            self.ready = True
            return

        # Typed for what the admin API reads, which exists by now.
        self.admin = AdminServer(cast(Administered, self))
        self.admin_port = await self.admin.start(snapshot.admin.host, snapshot.admin.port)
        self.tasks.spawn(Watcher(reloader, self.watch_interval).run())
        self.ready = True
        log.info("serving on http://%s:%d%s (admin http://%s:%d), config %s%s",
                 snapshot.listen.host, self.port,
                 f", gRPC {snapshot.grpc.host}:{self.grpc_port}" if snapshot.grpc else "",
                 snapshot.admin.host, self.admin_port, snapshot.revision,
                 f", fleet {self.fleet.fleet.name} as {self.fleet.replica}" if self.fleet else "")

    def render_metrics(self) -> bytes:
        return self.metrics.render()

    def readiness_problems(self) -> list[str]:
        problems = []
        if not self.ready:
            problems.append("not started or draining")
        if self.predlog is not None and not self.predlog.healthy:
            problems.append(f"prediction log not writable: {self.predlog.last_error}")
        if self.shipper is not None and self.shipper.down_for() > SHIPPER_DOWN_S:
            problems.append("the log shipper is not running (restarting)")
        if self.live is not None and self.proxy is not None:
            balancer = self.proxy.balancer
            for route in self.live.snapshot.routes:
                if all(balancer.all_ejected(v) for v in route.versions.values()):
                    problems.append(f"route {route.name}: every version is ejected")
        return problems

    async def _shutdown(self, drain_delay: bool) -> None:
        """Drain: not-ready, wait drain_delay_s, 503 new requests, finish in-flight, close.

        The admin port closes last: it answers "not ready" while the rest drains.
        """
        if self.live is None:
            return  # nothing was built
        limits = self.live.snapshot.limits
        deadline = time.monotonic() + limits.drain_delay_s + limits.shutdown_grace_s
        if limits.drain_delay_s and drain_delay:
            await asyncio.sleep(limits.drain_delay_s)
        if self.proxy is not None:
            self.proxy.draining = True
        await asyncio.gather(*(
            part.shutdown(limits.shutdown_grace_s) for part in (self.server, self.grpc)
            if part is not None))
        if self.shadows is not None:
            await self.shadows.drain(min(SHADOW_DRAIN_S, limits.shutdown_grace_s))
        if self.predlog is not None:
            await self.predlog.close()  # closes the open segment: the shipper takes it now
        if self.shipper is not None:  # what is left of the one shutdown grace
            await self.shipper.finish(max(1.0, deadline - time.monotonic()))
        await self.tasks.close()
        if self.attribution is not None:
            await self.attribution.flush()
        await close_fleet(self.fleet, self.rollouts.evidence if self.rollouts else None,
                          self.store)
        if self.client is not None:
            self.client.close()
        if self.admin is not None:
            await self.admin.close()
        log.info("stopped")
