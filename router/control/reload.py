"""Live reload: build -> validate -> swap one reference, or keep the old snapshot serving.

Triggers: a change of router.yaml or registry.yaml (polled, so editor renames and Kubernetes
ConfigMap symlink swaps are both seen), SIGHUP, and ``POST /-/reload``. Loading runs in a
thread; the swap happens on the event loop. A request keeps the snapshot it started with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Live, Ship, Snapshot, load_snapshot
from ..errors import ConfigError
from ..metrics import Metrics
from .history import History

log = logging.getLogger("model_router.reload")

POLL_S = 0.2

# Settings a running process keeps from its start: the sockets, the prediction log (its files,
# payload policy and size caps: one log, one set of settings) and the state directory. A
# reload still applies the rest of the file; these wait for a restart and say so.
RESTART_ONLY = ("listen", "grpc", "admin", "prediction_log", "state_dir", "fleet")


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Ship):  # storage_options may hold credentials: names only
        return {"to": value.to, "every_s": value.every_s,
                "keep_local_hours": value.keep_local_hours,
                "storage_options": sorted(value.storage_options)}
    if isinstance(value, frozenset):
        return sorted(value)
    return value


def with_ports(port: int | None = None, admin_port: int | None = None,
               grpc_port: int | None = None) -> Callable[[Snapshot], Snapshot]:
    """``serve --port/--admin-port/--grpc-port``: replace the file's ports, keeping its
    revision (the files are unchanged), so replicas on one host can share one config. A gRPC
    port without a ``grpc`` block in the file opens one on the listen host."""
    def override(snapshot: Snapshot) -> Snapshot:
        changes: dict[str, Any] = {}
        if port is not None:
            changes["listen"] = dataclasses.replace(snapshot.listen, port=port)
        if admin_port is not None:
            changes["admin"] = dataclasses.replace(snapshot.admin, port=admin_port)
        if grpc_port is not None:
            changes["grpc"] = dataclasses.replace(snapshot.grpc or snapshot.listen,
                                                  port=grpc_port)
        return dataclasses.replace(snapshot, **changes) if changes else snapshot
    return override


def restart_only(snapshot: Snapshot) -> dict[str, Any]:
    return {key: getattr(snapshot, key) for key in RESTART_ONLY}


def pending_restart(running: dict[str, Any], applied: Snapshot) -> dict[str, Any]:
    """Per restart-only setting the applied file changes: what runs and what waits.

    ``{"prediction_log": {"max_payload_kb": {"running": 64, "configured": 1}}}``; empty when
    the file matches what runs. Pure.
    """
    out: dict[str, Any] = {}
    for key in RESTART_ONLY:
        old, new = running[key], getattr(applied, key)
        if old == new:
            continue
        if dataclasses.is_dataclass(old):
            out[key] = {f.name: {"running": _plain(getattr(old, f.name)),
                                 "configured": _plain(getattr(new, f.name))}
                        for f in dataclasses.fields(old)
                        if getattr(old, f.name) != getattr(new, f.name)}
        else:
            out[key] = {"running": _plain(old), "configured": _plain(new)}
    return out


Signature = tuple[tuple[int, int, int] | None, ...]


def signature(paths: list[Path]) -> Signature:
    """(inode, mtime, size) per file, following symlinks; None for a missing file."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


class Reloader:
    """Owns the swap. ``reload`` returns the applied snapshot or raises ``ConfigError``."""

    def __init__(self, path: Path, live: Live, metrics: Metrics, history: History,
                 wall: Callable[[], float] = time.time,
                 overrides: Callable[[Snapshot], Snapshot] = lambda s: s) -> None:
        self.path = path
        # The command line's port flags, applied to every loaded file (not its revision).
        self.overrides = overrides
        self.live = live
        self.metrics = metrics
        self.history = history
        self.last_error: dict[str, object] | None = None
        self.on_applied: list[Callable[[Snapshot], None]] = []
        # Applied to every snapshot before it goes live (the rollout controller sets the
        # weights it owns here, so the swap is still one reference).
        self.transforms: list[Callable[[Snapshot], Snapshot]] = []
        self._wall = wall
        self._lock = asyncio.Lock()
        # Taken from the snapshot the process starts with: the restart-only settings in force.
        self.started = restart_only(live.snapshot)

    def __repr__(self) -> str:
        return f"<Reloader {self.path} revision={self.live.snapshot.revision}>"

    def pending_restart(self) -> dict[str, Any]:
        """What ``/-/config`` shows as waiting for a restart (see ``pending_restart``)."""
        return pending_restart(self.started, self.live.snapshot)

    def watched(self) -> list[Path]:
        snapshot = self.live.snapshot
        return [snapshot.path.parent / name for name in snapshot.files]

    def applied(self, snapshot: Snapshot, record: bool = True) -> None:
        """Make ``snapshot`` live and record it (also used for the first load).

        The one place that assigns the live snapshot. ``record=False`` for a worker, whose
        supervisor validated the snapshot and keeps the history and the config metrics.
        """
        for transform in self.transforms:
            snapshot = transform(snapshot)
        self.live.snapshot = snapshot
        self.last_error = None
        if record:
            self.metrics.applied(snapshot)
            self.history.applied(snapshot, snapshot.loaded_at)
        for callback in self.on_applied:
            try:
                callback(snapshot)
            except Exception:  # noqa: BLE001 - an observer never undoes or fails an apply
                log.exception("on_applied callback %r failed", callback)
        for warning in snapshot.warnings:
            log.warning("%s", warning)
        log.info("config %s applied (source %s)", snapshot.revision, snapshot.source)

    def refresh(self) -> None:
        """Run the transforms over the live snapshot again (a rollout moved its weights)."""
        snapshot = self.live.snapshot
        for transform in self.transforms:
            snapshot = transform(snapshot)
        self.live.snapshot = snapshot

    async def reload(self, source: str) -> Snapshot:
        async with self._lock:
            try:
                snapshot = self.overrides(await asyncio.to_thread(load_snapshot, self.path,
                                                                  source=source))
            except ConfigError as exc:
                now = self._wall()
                self.last_error = {"ts": now, "source": source, "errors": exc.errors}
                self.metrics.reload_failed()
                self.history.rejected(source, exc.errors, now)
                log.error("config rejected (source %s), keeping %s:\n  %s", source,
                          self.live.snapshot.revision, "\n  ".join(exc.errors))
                raise
            current = self.live.snapshot
            if snapshot.revision == current.revision:
                if self.last_error is not None:  # the bad file was put back: say so
                    self.history.applied(dataclasses.replace(current, source=source),
                                         self._wall())
                    self.metrics.reload_ok.set(1)
                    log.info("config %s in place again (source %s)", current.revision, source)
                self.last_error = None
                return current
            for key in pending_restart(self.started, snapshot):
                log.warning("%s changed; it takes effect at the next restart", key)
            self.applied(snapshot)
            return snapshot


class Watcher:
    """Polls the config files; a change stable over two polls triggers a reload."""

    def __init__(self, reloader: Reloader, interval: float = POLL_S) -> None:
        self.reloader = reloader
        self.interval = interval
        # Taken now, right after the load, not when the task first runs: a change made in
        # between must count as a change.
        self._seen = signature(reloader.watched())

    def __repr__(self) -> str:
        return f"<Watcher every {self.interval}s>"

    async def run(self) -> None:
        seen = self._seen
        pending: Signature | None = None
        while True:
            await asyncio.sleep(self.interval)
            now = signature(self.reloader.watched())
            if now == seen:
                pending = None
                continue
            if now != pending:  # still changing (or just changed): wait for it to settle
                pending = now
                continue
            seen, pending = now, None
            try:
                await self.reloader.reload("file")
            except ConfigError:
                pass  # recorded by the reloader; the old snapshot keeps serving
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad reload
                log.exception("reload from file failed")
