"""The prediction log: one JSONL line per primary request, shadow copy and feedback.

The hot path only reserves a slot (``try_reserve``/``reserve``) and hands over an entry
(``add``), which encodes it (payload policy, redaction, hashing, orjson) into a JSONL line
once the answer is out. Every ``flush_ms`` the buffered lines are written by a worker
thread. Files are
``<dir>/predictions-<UTC yyyymmddThhmmss>-<pid>.jsonl``, rotated by size, never rewritten once
closed, and pruned by ``retain`` (oldest closed files first).

``on_full: block``: a request reserves its slot before it is forwarded, so an answered
prediction always has its record; with no slot within ``block_ms`` it is answered 503.
``on_full: drop``: the request is served and the lost record counted.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ..config import PredictionLogSettings
from ..logstore import marker, writer_file
from ..records import Record
from .encode import KeyedHash, build_record, safe_line

log = logging.getLogger("model_router.predlog")

BUFFER_RECORDS = 8192      # entries buffered or reserved at most (bounded memory)


# -- files -------------------------------------------------------------------------------------

def file_name(now: float, pid: int) -> str:
    return f"predictions-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{pid}.jsonl"


class LogFiles:
    """The current file, rotation by size and retention; used from the writer thread only."""

    def __init__(self, settings: PredictionLogSettings, wall: Callable[[], float] = time.time,
                 replica: str = "") -> None:
        self.settings = settings
        self.dir = settings.dir
        self.replica = replica      # named beside each segment when shipping
        self._wall = wall
        self._used: set[str] = set()  # names this process opened: never reused
        self._file: BinaryIO | None = None
        self.path: Path | None = None
        self._size = 0
        self._opened = 0.0

    def __repr__(self) -> str:
        return f"<LogFiles {self.path} size={self._size}>"

    def _open(self) -> BinaryIO:
        # Full payloads are personal data: owner and group only (umask may narrow further).
        self.dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        name = file_name(self._wall(), os.getpid())
        path = self.dir / name
        n = 0
        # Two rotations within one second; a name this process used before stays used even
        # once retention deleted it (its shipped objects carry that name).
        while path.exists() or path.name in self._used:
            n += 1
            path = self.dir / name.replace(".jsonl", f"-{n}.jsonl")
        self._used.add(path.name)
        if self.settings.ship is None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        else:
            # Who wrote it, then the segment itself, created locked under a name the shipper
            # does not see and renamed into place: the shipper takes a segment only once it
            # can lock it exclusively (closed, or its writer is gone).
            writer_file(path).write_text(self.replica)
            hidden = path.with_name("." + path.name + ".opening")
            fd = os.open(hidden, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o640)
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.rename(hidden, path)
        self._file = os.fdopen(fd, "ab")  # kept open across batches
        self.path = path
        self._size = 0
        self._opened = self._wall()
        self.prune()
        return self._file

    def write(self, data: bytes) -> None:
        f = self._file or self._open()
        f.write(data)
        f.flush()
        self._size += len(data)
        if self._size >= self.settings.rotate_mb * 1024 * 1024 or self.due():
            self.close()

    def due(self) -> bool:
        """An open segment older than ``ship.every_s`` (it is closed, to be shipped)."""
        ship = self.settings.ship
        return ship is not None and self._file is not None and \
            self._wall() - self._opened >= ship.every_s

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def prune(self) -> list[Path]:
        """Delete closed files older than ``retain.days``, then oldest while over the cap.

        When shipping, only segments shipped (marked) at least ``keep_local_hours`` ago may
        go: retention never deletes an unshipped segment.
        """
        files = sorted(self.dir.glob("predictions-*.jsonl"), key=lambda p: p.stat().st_mtime)
        closed = [p for p in files if p != self.path]
        ship = self.settings.ship
        if ship is not None:
            kept_until = self._wall() - ship.keep_local_hours * 3600
            closed = [p for p in closed if _shipped_before(p, kept_until)]
        removed = []
        if self.settings.retain_days:
            horizon = self._wall() - self.settings.retain_days * 86400
            for p in list(closed):
                if p.stat().st_mtime < horizon:
                    p.unlink(missing_ok=True)
                    closed.remove(p)
                    removed.append(p)
        if self.settings.retain_max_total_gb:
            cap = self.settings.retain_max_total_gb * 1024 ** 3
            total = sum(p.stat().st_size for p in files if p.exists())
            for p in list(closed):
                if total <= cap:
                    break
                total -= p.stat().st_size
                p.unlink(missing_ok=True)
                removed.append(p)
        for p in removed:
            marker(p).unlink(missing_ok=True)
            writer_file(p).unlink(missing_ok=True)
            log.info("retention removed %s", p.name)
        return removed


def _shipped_before(segment: Path, ts: float) -> bool:
    try:
        return marker(segment).stat().st_mtime <= ts
    except OSError:
        return False


# -- the writer --------------------------------------------------------------------------------

Sink = Callable[[bytes], None]


class PredictionLog:
    """Bounded buffer of encoded lines + a flush task + writes in a worker thread."""

    def __init__(self, settings: PredictionLogSettings, secret: bytes, *,
                 sink: Sink | None = None, metrics: Any = None,
                 wall: Callable[[], float] = time.time,
                 capacity: int = BUFFER_RECORDS, replica: str = "") -> None:
        self.settings = settings
        self.capacity = capacity
        self.sticky_hash = KeyedHash(secret)
        self.files = LogFiles(settings, wall, replica)
        self.sink: Sink = sink or self.files.write
        self.metrics = metrics
        self._entries: list[bytes] = []      # encoded JSONL lines
        self._reserved = 0          # slots promised to requests in flight
        self._writing = 0           # entries of the batch being written right now
        self._room = asyncio.Event()
        self._room.set()
        self._lock = threading.Lock()  # serializes sink calls (flush thread vs close)
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.healthy = True
        self.last_error: str | None = None
        self.written = 0
        self.dropped = 0
        # Set by the shipper's owner: unshipped segments fill ``retain.max_total_gb`` (the
        # store is down): no room, so ``on_full`` rules (block: 503; drop: counted).
        self.store_full = False

    def __repr__(self) -> str:
        return (f"<PredictionLog pending={self.pending} written={self.written} "
                f"dropped={self.dropped} healthy={self.healthy}>")

    @property
    def pending(self) -> int:
        """Entries buffered, being written, or reserved: what counts against capacity."""
        return len(self._entries) + self._writing + self._reserved

    # -- hot path ---------------------------------------------------------------------------

    def try_reserve(self) -> bool:
        """Reserve a slot without waiting; False when the buffer (or the disk) is full."""
        if self.pending >= self.capacity or self.store_full:
            self._room.clear()
            return False
        self._reserved += 1
        return True

    async def reserve(self) -> bool:
        """Reserve a slot, waiting up to ``block_ms`` for room (on_full: block)."""
        if self.try_reserve():
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.block_ms / 1000
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._room.wait(), remaining)
            except TimeoutError:
                return False
            if self.try_reserve():
                return True

    def release(self) -> None:
        """Give back a reservation that will not be used."""
        self._reserved -= 1

    def add(self, entry: Record, reserved: bool) -> bool:
        """Encode a record and queue its line; without a reservation it is dropped (and
        counted) when full.

        Encoding here, once per finished exchange (~7 us), keeps only bytes in the buffer:
        nothing per request stays alive for the garbage collector to rescan, and the flush
        only writes.
        """
        if not reserved and (self.pending >= self.capacity or self.store_full):
            self._drop()
            return False
        try:
            record, served = build_record(entry, self.settings, self.sticky_hash)
            try:
                line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
            except orjson.JSONEncodeError:
                line = safe_line(record, entry)
        finally:
            if reserved:
                self._reserved -= 1
        self._entries.append(line)
        route, version = entry.route, entry.version
        if served is not None and route is not None and version is not None \
                and version in route.versions and self.metrics is not None:
            expected = route.versions[version].model_version
            if expected is not None and served != expected:
                self.metrics.count(self.metrics.version_mismatch, route.name, version)
        return True

    def set_store_full(self, full: bool) -> None:
        """The shipper's verdict on the disk (see ``store_full``); room again wakes waiters."""
        if full and not self.store_full:
            log.error("prediction log: unshipped segments fill retain.max_total_gb; "
                      "on_full: %s applies until the store takes them", self.settings.on_full)
        self.store_full = full
        if not full and self.pending < self.capacity:
            self._room.set()

    def _drop(self) -> None:
        self.dropped += 1
        if self.metrics is not None:
            self.metrics.predlog_dropped.inc()

    # -- background -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        interval = self.settings.flush_ms / 1000
        while True:
            await asyncio.sleep(interval)
            # Shielded: ``close`` cancels this loop, and a batch taken out of the buffer and
            # queued for the writer thread would be lost with the cancelled wait.
            await asyncio.shield(self.flush())
            if self.files.due():  # an idle segment is closed too, to be shipped
                await asyncio.to_thread(self._close_segment)

    def _close_segment(self) -> None:
        with self._lock:
            if self.files.due():
                self.files.close()

    async def flush(self) -> None:
        """Write what is buffered; on failure keep it for the next flush (and mark unhealthy).

        Flushes run one at a time: a flush called while another writes waits for it, then
        writes what is left (a failed batch included).
        """
        async with self._flush_lock:
            await self._flush()

    async def _flush(self) -> None:
        if self.metrics is not None:
            self.metrics.predlog_pending.set(self.pending)
        if not self._entries:
            return
        batch, self._entries = self._entries, []
        self._writing = len(batch)
        try:
            await asyncio.to_thread(self._write, b"".join(batch))
        except Exception as exc:  # noqa: BLE001 - a failing disk must not kill the router
            self._entries[:0] = batch
            if self.healthy:
                log.error("prediction log write failed, keeping %d records: %s",
                          len(batch), exc)
            self.healthy = False
            self.last_error = f"{type(exc).__name__}: {exc}"
            return
        finally:
            self._writing = 0
        self.written += len(batch)
        if self.metrics is not None:
            self.metrics.predlog_records.inc(len(batch))
        if not self.healthy:
            log.warning("prediction log writable again")
        self.healthy = True
        self.last_error = None
        if not self._room.is_set() and self.pending < self.capacity:
            self._room.set()

    def _write(self, data: bytes) -> None:
        with self._lock:
            self.sink(data)

    async def close(self) -> None:
        """Flush everything (called at shutdown, after in-flight requests finished)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _ in range(3):
            await self.flush()
            if not self._entries:
                break
        if self._entries:
            log.error("prediction log: %d records could not be written at shutdown",
                      len(self._entries))
        await asyncio.to_thread(self.files.close)
