"""``serve --workers N``: one supervisor process and N worker processes on one port.

- The supervisor owns the admin port, the file watch, SIGHUP, the history, the revisions and
  the rollout controller (judging the sum of its workers' metrics; the workers adopt its weights).
  It validates each config once; on success it sends the exact file bytes it validated to
  every worker, which compiles them (``load_snapshot(files=...)``) and swaps, so all workers
  serve the same revision whatever the disk holds by then.
- Workers share the listen port (SO_REUSEPORT: the kernel spreads connections), each writes
  its own prediction-log file (the name carries the pid), and records metrics in
  prometheus_client's multiprocess files, which the supervisor's ``/metrics`` aggregates.
- SIGTERM/SIGINT: the supervisor turns not-ready, waits ``drain_delay_s``, then tells every
  worker to drain (finish in-flight, flush the log) and waits for them.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry, generate_latest

from ..config import Live, Snapshot, load_snapshot
from ..control.admin import Administered, AdminServer
from ..control.evidence import MetricsEvidence, Sample
from ..control.fleet import FleetMember
from ..control.history import History
from ..control.reload import Reloader, Watcher, with_ports
from ..control.rollout import Controller
from ..control.store import FleetStore
from ..errors import ConfigError
from ..metrics import Metrics
from ..observers.ship import SHIPPER_DOWN_S, ShipProcess
from .lifecycle import Lifecycle
from .wiring import close_fleet, control_plane, fleet_store, join_fleet, ship_replica

log = logging.getLogger("model_router.workers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# What the supervisor itself knows (every other series is the sum of its workers').
SUPERVISOR_SERIES = ["model_router_traffic_weight", "model_router_config_reloads_total",
                     "model_router_config_info", "model_router_config_last_reload_successful",
                     "model_router_fleet_info",
                     "model_router_fleet_leader", "model_router_fleet_store_errors_total",
                     "model_router_evidence_errors_total", "model_router_predlog_shipped_total",
                     "model_router_predlog_ship_errors_total",
                     "model_router_predlog_unshipped_bytes"]


class _Without:
    """A collector's families except the named ones (the supervisor exports its own)."""

    def __init__(self, collector: Any, names: set[str]) -> None:
        self.collector = collector
        self.names = names

    def collect(self) -> Any:
        return (f for f in self.collector.collect() if f.name not in self.names)


def worker_main(config_path: str, conn: multiprocessing.connection.Connection,
                files: dict[str, bytes], log_level: int, port: int | None = None,
                grpc_port: int | None = None) -> None:
    """Entry of a worker process (spawned: a fresh interpreter)."""
    logging.basicConfig(level=log_level,
                        format=f"%(asctime)s %(levelname)s worker-{os.getpid()} %(name)s: "
                               "%(message)s")
    from .runtime import run
    run(_worker(Path(config_path), conn, files, port, grpc_port))


async def _worker(path: Path, conn: multiprocessing.connection.Connection,
                  files: dict[str, bytes], port: int | None, grpc_port: int | None) -> None:
    from .app import RouterApp

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    snapshot = await asyncio.to_thread(load_snapshot, path, source="startup", files=files)
    app = RouterApp(path, worker=True, port=port, grpc_port=grpc_port)
    await app.start(snapshot)
    reloader, rollouts = app.reloader, app.rollouts
    assert reloader is not None and rollouts is not None  # start() built them
    conn.send(("ready", os.getpid()))

    async def apply(files: dict[str, bytes], source: str) -> None:
        try:
            new = await asyncio.to_thread(load_snapshot, path, source=source, files=files)
        except ConfigError as exc:  # validated by the supervisor; only a changed env gets here
            log.error("cannot compile the supervisor's config: %s", exc.errors)
            return
        reloader.applied(reloader.overrides(new), record=False)

    def on_message() -> None:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the supervisor is gone: drain and exit
            loop.remove_reader(conn.fileno())
            stop.set()
            return
        if message[0] == "apply":
            app.tasks.spawn(apply(message[1], message[2]))
        elif message[0] == "store_full" and app.predlog is not None:
            app.predlog.set_store_full(message[1])
        elif message[0] == "rollouts":  # the supervisor's controller moved a rollout
            if rollouts.adopt(message[1]):
                reloader.refresh()
        elif message[0] == "stop":
            stop.set()

    loop.add_reader(conn.fileno(), on_message)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides
    await stop.wait()
    await app.stop(drain_delay=False)


class Supervisor(Lifecycle):
    """Admin, watch and history for N workers; the same admin API as a single process.

    Parts exist from ``__init__`` (None or empty until ``start`` builds them, in order);
    a failed start stops the workers already running (see ``Lifecycle``).
    """

    def __init__(self, config_path: str | Path, workers: int, *,
                 watch_interval: float = 0.2, port: int | None = None,
                 admin_port: int | None = None, grpc_port: int | None = None) -> None:
        super().__init__()
        self.config_path = Path(config_path)
        self.count = workers
        self.watch_interval = watch_interval
        self.port_override = port
        self.grpc_port_override = grpc_port
        self.overrides = with_ports(port, admin_port, grpc_port)
        self.metrics = Metrics()
        self.port = 0
        self.admin_port = 0
        # Built by start(), in this order.
        self.live: Live | None = None
        self.history: History | None = None
        self.reloader: Reloader | None = None
        self.rollouts: Controller | None = None
        self.fleet: FleetMember | None = None
        self._store: FleetStore | None = None
        self.shipper: ShipProcess | None = None
        self._metrics_dir: Path | None = None
        self.processes: list[Any] = []  # the workers, in the order they were started
        self._conns: list[multiprocessing.connection.Connection] = []
        self.admin: AdminServer | None = None

    def __repr__(self) -> str:
        return f"<Supervisor {self.config_path} workers={self.count} ready={self.ready}>"

    async def start(self) -> None:
        await self._start(self._startup())

    async def _startup(self) -> None:
        snapshot = self.overrides(await asyncio.to_thread(load_snapshot, self.config_path,
                                                          source="startup"))
        self.live = live = Live(snapshot)
        self.history = History(snapshot.state_dir)
        self.reloader = reloader = Reloader(self.config_path, live, self.metrics,
                                            self.history, overrides=self.overrides)
        reloader.on_applied.append(self._broadcast)
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="model-router-metrics-"))
        # The rollouts are judged here, on the sum of the workers' metrics (in a fleet, on
        # Prometheus's); the workers adopt the weights this controller sets.
        self._store = fleet_store(snapshot, self.metrics)
        self.rollouts, self.fleet = control_plane(
            snapshot, live, reloader, self.history, self.metrics, self._store,
            MetricsEvidence(self._worker_samples), self._refresh)
        if self.fleet is not None:
            await join_fleet(self.fleet, reloader, self.tasks)
        reloader.applied(snapshot)
        self.tasks.spawn(self.rollouts.run())
        # Workers are fresh interpreters: they import prometheus_client in multiprocess mode,
        # from the environment they start with. Only they get the variable: with it in this
        # process's environment, its own (in-memory) metrics would warn at every reload that
        # clearing labels is not implemented in multi-process mode, and a later child (the
        # shipper) would inherit a folder removed at shutdown.
        os.environ[MULTIPROC_ENV] = str(self._metrics_dir)
        try:
            ctx = multiprocessing.get_context("spawn")
            for _ in range(self.count):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=worker_main, daemon=True,
                                   args=(str(self.config_path), child, dict(snapshot.files),
                                         logging.getLogger().level, self.port_override,
                                         self.grpc_port_override))
                proc.start()
                child.close()
                self.processes.append(proc)
                self._conns.append(parent)
        finally:
            del os.environ[MULTIPROC_ENV]
        for conn, proc in zip(self._conns, self.processes):
            if not await asyncio.to_thread(self._wait_ready, conn, proc):
                raise RuntimeError(f"worker {proc.pid} did not start (see its log above)")
        self._send_rollouts()
        if snapshot.prediction_log.enabled and snapshot.prediction_log.ship is not None:
            # One shipper for every worker's segments (the workers write, it ships).
            self.shipper = ShipProcess(snapshot.prediction_log, ship_replica(),
                                       snapshot.state_dir, self.metrics, on_full=self._full)
            self.shipper.start()
        self.port = snapshot.listen.port
        # Typed for what the admin API reads, which exists by now.
        self.admin = AdminServer(cast(Administered, self))
        self.admin_port = await self.admin.start(snapshot.admin.host, snapshot.admin.port)
        self.tasks.spawn(Watcher(reloader, self.watch_interval).run())
        self.ready = True
        log.info("supervisor: %d workers on %s:%d, admin on %s:%d", self.count,
                 snapshot.listen.host, self.port, snapshot.admin.host, self.admin_port)

    @staticmethod
    def _wait_ready(conn: multiprocessing.connection.Connection, proc: Any,
                    timeout: float = 60.0) -> bool:
        """Block (in a thread) until the worker reports it is listening."""
        try:
            if conn.poll(timeout):
                return conn.recv()[0] == "ready"
        except (EOFError, OSError):
            pass
        return False

    def _broadcast(self, snapshot: Snapshot) -> None:
        for conn in self._conns:
            try:
                conn.send(("apply", dict(snapshot.files), snapshot.source))
            except (BrokenPipeError, OSError):
                log.error("a worker is gone; it did not get revision %s", snapshot.revision)
        self._send_rollouts()

    def _full(self, full: bool) -> None:
        for conn in self._conns:
            try:
                conn.send(("store_full", full))
            except (BrokenPipeError, OSError):
                pass

    def _refresh(self) -> None:
        """A rollout moved: swap the weights in here and send them to every worker."""
        assert self.reloader is not None
        self.reloader.refresh()
        self._send_rollouts()

    def _send_rollouts(self) -> None:
        if self.rollouts is None:
            return
        states = {name: s.public() for name, s in self.rollouts.states.items()}
        for conn in self._conns:
            try:
                conn.send(("rollouts", states))
            except (BrokenPipeError, OSError):
                log.error("a worker is gone; it did not get the rollout weights")

    def _worker_samples(self) -> list[Sample]:
        """Every sample of the workers' metrics, summed across them (for the evidence)."""
        from prometheus_client import multiprocess

        if self._metrics_dir is None:
            return []
        collector = multiprocess.MultiProcessCollector(None, path=str(self._metrics_dir))
        return [(s.name, s.labels, s.value) for family in collector.collect()
                for s in family.samples]

    def render_metrics(self) -> bytes:
        from prometheus_client import multiprocess

        workers = CollectorRegistry()
        if self._metrics_dir is not None:
            workers.register(_Without(
                multiprocess.MultiProcessCollector(None, path=str(self._metrics_dir)),
                {n.removesuffix("_total") for n in SUPERVISOR_SERIES}))
        own = self.metrics.registry.restricted_registry(
            [n + s for n in SUPERVISOR_SERIES for s in ("", "_total")])
        return generate_latest(own) + generate_latest(workers)

    def readiness_problems(self) -> list[str]:
        problems = [] if self.ready else ["not started or draining"]
        dead = [p.pid for p in self.processes if not p.is_alive()]
        if dead:
            problems.append(f"workers exited: {dead}")
        if self.shipper is not None and self.shipper.down_for() > SHIPPER_DOWN_S:
            problems.append("the log shipper is not running (restarting)")
        return problems

    async def _shutdown(self, drain_delay: bool) -> None:
        grace = 0.0
        deadline = time.monotonic()
        if self.live is not None:
            limits = self.live.snapshot.limits
            deadline += limits.drain_delay_s + limits.shutdown_grace_s
            if limits.drain_delay_s and drain_delay:
                await asyncio.sleep(limits.drain_delay_s)
            grace = limits.shutdown_grace_s
        for conn in self._conns:
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for proc in self.processes:
            await asyncio.to_thread(proc.join, grace + 10)
            if proc.is_alive():
                proc.kill()
        if self.shipper is not None:  # every worker closed its segment: ship them
            await self.shipper.finish(max(1.0, deadline - time.monotonic()))
        await self.tasks.close()
        await close_fleet(self.fleet, self.rollouts.evidence if self.rollouts else None,
                          self._store)
        if self.admin is not None:
            await self.admin.close()
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        log.info("supervisor stopped")
