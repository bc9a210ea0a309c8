"""Owning the log shipper: a child process (``shipper.run``) per router or supervisor.

``ShipProcess.start`` spawns it; its status messages are read on the event loop and become
the metrics (``predlog_shipped_total``, ``predlog_ship_errors_total``,
``predlog_unshipped_bytes``) and the disk verdict: unshipped segments over
``retain.max_total_gb`` make the log full (``on_full`` applies) until the store takes them.
``finish`` asks it to ship what is left (the open segment was closed first by the log's
owner) within a time, then stops it; what it could not ship stays on disk for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import PredictionLogSettings

log = logging.getLogger("model_router.ship")

SHIPPER_DOWN_S = 10.0  # a shipper gone longer than this (restarting) makes /-/ready 503


class ShipProcess:
    def __init__(self, settings: PredictionLogSettings, replica: str, state_dir: Path,
                 metrics: Any, on_full: Callable[[bool], None] = lambda full: None) -> None:
        assert settings.ship is not None
        self.settings = settings
        self.ship = settings.ship
        self.replica = replica
        self.state_dir = state_dir
        self.metrics = metrics
        self.on_full = on_full
        self.status: dict[str, Any] = {}
        self.restarts = 0
        self._proc: Any = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._exited = asyncio.Event()
        self._finishing = False
        self._down_since: float | None = None
        self._restart: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<ShipProcess {self.ship.to} pid={self._proc.pid if self._proc else None}>"

    def down_for(self) -> float:
        """Seconds the shipper process has been gone (0 while it runs)."""
        if self._down_since is None:
            return 0.0
        return time.monotonic() - self._down_since

    def start(self) -> None:
        self._exited.clear()
        self._down_since = None
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        from . import shipper
        self._proc = ctx.Process(
            target=shipper.run, daemon=True, name="model-router-shipper",
            args=(child, str(self.settings.dir), self.ship.to, dict(self.ship.storage_options),
                  self.replica, str(self.state_dir), logging.getLogger().level))
        self._proc.start()
        child.close()
        self._conn = parent
        asyncio.get_running_loop().add_reader(parent.fileno(), self._on_message)

    def _on_message(self) -> None:
        assert self._conn is not None
        try:
            kind, body = self._conn.recv()
        except (EOFError, OSError):
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._conn.fileno())
            self._conn.close()
            self._exited.set()
            if not self._finishing:  # it died: start another, backing off
                self._down_since = time.monotonic()
                delay = min(2.0 ** self.restarts, 60.0)
                self.restarts += 1
                log.error("the log shipper exited (pid %s); restarting in %.0f s",
                          self._proc.pid if self._proc else None, delay)
                self._restart = loop.call_later(delay, self.start)
            return
        if kind == "status":
            self._update(body)

    def _update(self, status: dict[str, Any]) -> None:
        before = self.status
        m = self.metrics
        if before.get("pid") != status.get("pid"):  # a restarted shipper counts from zero
            before = {}
        m.predlog_shipped.inc(max(0, status["shipped_records"] - before.get("shipped_records",
                                                                             0)))
        m.predlog_ship_errors.inc(max(0, status["errors"] - before.get("errors", 0)))
        m.predlog_unshipped_bytes.set(status["unshipped_bytes"])
        self.status = status
        cap = self.settings.retain_max_total_gb
        self.on_full(cap is not None and status["unshipped_bytes"] > cap * 1024 ** 3)

    async def finish(self, seconds: float) -> None:
        """Ship what is left within ``seconds``, then stop the process (killed at the
        deadline: an upload cut short is shipped again, whole, by the next start)."""
        self._finishing = True
        if self._restart is not None:
            self._restart.cancel()
        if self._proc is None or self._conn is None:
            return
        if not self._exited.is_set():
            try:
                self._conn.send(("final", max(0.0, seconds - 0.5)))
            except (BrokenPipeError, OSError):
                pass
            try:
                await asyncio.wait_for(self._exited.wait(), seconds)
            except TimeoutError:
                log.error("the log shipper did not finish in %.0f s; stopping it", seconds)
        if self._proc.is_alive():
            self._proc.kill()
        await asyncio.to_thread(self._proc.join, 5)
        left = self.status.get("unshipped_bytes")
        if left:
            log.warning("%d bytes of prediction log are not shipped yet; the next start with "
                        "replica id %s ships them", left, self.replica)
