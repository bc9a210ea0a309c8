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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import PredictionLogSettings

log = logging.getLogger("model_router.ship")


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
        self._proc: Any = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._exited = asyncio.Event()

    def __repr__(self) -> str:
        return f"<ShipProcess {self.ship.to} pid={self._proc.pid if self._proc else None}>"

    def start(self) -> None:
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
            asyncio.get_running_loop().remove_reader(self._conn.fileno())
            self._exited.set()
            return
        if kind == "status":
            self._update(body)

    def _update(self, status: dict[str, Any]) -> None:
        before = self.status
        m = self.metrics
        m.predlog_shipped.inc(status["shipped_records"] - before.get("shipped_records", 0))
        m.predlog_ship_errors.inc(status["errors"] - before.get("errors", 0))
        m.predlog_unshipped_bytes.set(status["unshipped_bytes"])
        self.status = status
        cap = self.settings.retain_max_total_gb
        self.on_full(cap is not None and status["unshipped_bytes"] > cap * 1024 ** 3)

    async def finish(self, seconds: float) -> None:
        """Ship what is left within ``seconds``, then stop the process."""
        if self._proc is None or self._conn is None:
            return
        try:
            self._conn.send(("final", max(0.0, seconds)))
        except (BrokenPipeError, OSError):
            pass
        try:
            await asyncio.wait_for(self._exited.wait(), seconds + 5)
        except TimeoutError:
            log.error("the log shipper did not finish in %.0f s; stopping it", seconds)
        await asyncio.to_thread(self._proc.join, 5)
        if self._proc.is_alive():
            self._proc.kill()
            await asyncio.to_thread(self._proc.join, 5)
        left = self.status.get("unshipped_bytes")
        if left:
            log.warning("%d bytes of prediction log are not shipped yet; the next start with "
                        "replica id %s ships them", left, self.replica)
