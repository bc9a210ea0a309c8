"""``serve --workers N``: one supervisor process and N worker processes on one port.

- The supervisor owns the admin port, the file watch, SIGHUP, the history and the revisions.
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
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from ..config import Live, Snapshot, load_snapshot
from ..control.admin import build_admin
from ..control.history import History
from ..control.reload import Reloader, Watcher
from ..errors import ConfigError
from ..metrics import Metrics

log = logging.getLogger("model_router.workers")

CONFIG_SERIES = ["model_router_traffic_weight", "model_router_config_reloads_total",
                 "model_router_config_info"]


def worker_main(config_path: str, conn: multiprocessing.connection.Connection,
                files: dict[str, bytes], log_level: int) -> None:
    """Entry of a worker process (spawned: a fresh interpreter)."""
    logging.basicConfig(level=log_level,
                        format=f"%(asctime)s %(levelname)s worker-{os.getpid()} %(name)s: "
                               "%(message)s")
    from .runtime import run
    run(_worker(Path(config_path), conn, files))


async def _worker(path: Path, conn: multiprocessing.connection.Connection,
                  files: dict[str, bytes]) -> None:
    from .app import RouterApp

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    snapshot = await asyncio.to_thread(load_snapshot, path, source="startup", files=files)
    app = RouterApp(path, worker=True)
    await app.start(snapshot)
    conn.send(("ready", os.getpid()))
    tasks: set[asyncio.Task[None]] = set()

    async def apply(files: dict[str, bytes], source: str) -> None:
        try:
            new = await asyncio.to_thread(load_snapshot, path, source=source, files=files)
        except ConfigError as exc:  # validated by the supervisor; only a changed env gets here
            log.error("cannot compile the supervisor's config: %s", exc.errors)
            return
        app.reloader.applied(new, record=False)

    def on_message() -> None:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the supervisor is gone: drain and exit
            loop.remove_reader(conn.fileno())
            stop.set()
            return
        if message[0] == "apply":
            task = asyncio.ensure_future(apply(message[1], message[2]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif message[0] == "stop":
            stop.set()

    loop.add_reader(conn.fileno(), on_message)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides
    await stop.wait()
    await app.stop(drain_delay=False)


class Supervisor:
    """Admin, watch and history for N workers; the same admin API as a single process."""

    def __init__(self, config_path: str | Path, workers: int, *,
                 watch_interval: float = 0.2) -> None:
        self.config_path = Path(config_path)
        self.count = workers
        self.watch_interval = watch_interval
        self.metrics = Metrics()
        self.ready = False
        self.port = 0
        self.admin_port = 0
        self._procs: list[Any] = []
        self._conns: list[multiprocessing.connection.Connection] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="model-router-metrics-"))

    def __repr__(self) -> str:
        return f"<Supervisor {self.config_path} workers={self.count} ready={self.ready}>"

    async def start(self) -> None:
        snapshot = await asyncio.to_thread(load_snapshot, self.config_path, source="startup")
        rollouts = [r.name for r in snapshot.routes if r.rollout is not None]
        if rollouts:
            raise RuntimeError(f"routes {rollouts} have a rollout: run them with --workers 1 "
                               "(each process judges its own traffic; see README)")
        self.live = Live(snapshot)
        self.history = History(snapshot.state_dir)
        self.reloader = Reloader(self.config_path, self.live, self.metrics, self.history)
        self.reloader.on_applied.append(self._broadcast)
        self.reloader.applied(snapshot)
        # Workers are fresh interpreters: they import prometheus_client in multiprocess mode.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self._metrics_dir)
        ctx = multiprocessing.get_context("spawn")
        for _ in range(self.count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, daemon=True,
                               args=(str(self.config_path), child, dict(snapshot.files),
                                     logging.getLogger().level))
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)
        for conn, proc in zip(self._conns, self._procs):
            if not await asyncio.to_thread(self._wait_ready, conn, proc):
                await self.stop(drain_delay=False)
                raise RuntimeError(f"worker {proc.pid} did not start (see its log above)")
        self.port = snapshot.listen.port
        self._runner = web.AppRunner(build_admin(self), access_log=None)  # type: ignore[arg-type]
        await self._runner.setup()
        site = web.TCPSite(self._runner, snapshot.admin.host, snapshot.admin.port)
        await site.start()
        self.admin_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        task = asyncio.ensure_future(Watcher(self.reloader, self.watch_interval).run())
        self._tasks.add(task)
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

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def render_metrics(self) -> bytes:
        from prometheus_client import multiprocess

        workers = CollectorRegistry()
        multiprocess.MultiProcessCollector(workers, path=str(self._metrics_dir))
        own = self.metrics.registry.restricted_registry(
            CONFIG_SERIES + [n + s for n in CONFIG_SERIES for s in ("", "_total")])
        return generate_latest(own) + generate_latest(workers)

    def readiness_problems(self) -> list[str]:
        problems = [] if self.ready else ["not started or draining"]
        dead = [p.pid for p in self._procs if not p.is_alive()]
        if dead:
            problems.append(f"workers exited: {dead}")
        return problems

    async def stop(self, drain_delay: bool = True) -> None:
        limits = self.live.snapshot.limits
        self.ready = False
        if limits.drain_delay_s and drain_delay:
            await asyncio.sleep(limits.drain_delay_s)
        for conn in self._conns:
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        deadline = limits.shutdown_grace_s + 10
        for proc in self._procs:
            await asyncio.to_thread(proc.join, deadline)
            if proc.is_alive():
                proc.kill()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        shutil.rmtree(self._metrics_dir, ignore_errors=True)
        log.info("supervisor stopped")
