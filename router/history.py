"""Deployment history and applied revisions under ``state_dir``.

``history.jsonl`` gets one line per event (applied, rejected, and later rollout events);
``revisions/<rev>/`` keeps the exact files of every applied revision, so an audit years later
reads the config and registry that really served.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from .config import Snapshot

log = logging.getLogger("model_router.history")


_second: tuple[int, str] = (-1, "")


def iso(ts: float) -> str:
    """UTC ISO 8601 with milliseconds and a Z, the log's timestamp format.

    The formatted second is cached: records arrive thousands per second.
    """
    global _second
    second = int(ts)
    cached = _second  # one read of one tuple: safe from the writer thread too
    if cached[0] != second:
        cached = _second = (second, datetime.fromtimestamp(second, timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{int((ts - second) * 1000):03d}Z"


def route_states(snapshot: Snapshot) -> dict[str, Any]:
    """Per route: effective weights, or the active colour of a blue/green route."""
    out: dict[str, Any] = {}
    for route in snapshot.routes:
        if route.blue_green is not None:
            bg = route.blue_green
            out[route.name] = {"active": bg.active, "version": bg.active_version}
        else:
            out[route.name] = {"weights": dict(route.split)}
    return out


class History:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "history.jsonl"

    def __repr__(self) -> str:
        return f"<History {self.path}>"

    def append(self, event: dict[str, Any]) -> None:
        """Append one event line; small and rare, so written synchronously and fsynced."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        line = orjson.dumps(event) + b"\n"
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def applied(self, snapshot: Snapshot, ts: float) -> None:
        self.save_revision(snapshot)
        self.append({"ts": iso(ts), "event": "applied", "revision": snapshot.revision,
                     "source": snapshot.source, "routes": route_states(snapshot),
                     "errors": []})

    def rejected(self, source: str, errors: list[str], ts: float) -> None:
        self.append({"ts": iso(ts), "event": "rejected", "revision": None, "source": source,
                     "routes": {}, "errors": errors})

    def save_revision(self, snapshot: Snapshot) -> Path:
        folder = self.state_dir / "revisions" / snapshot.revision
        if not folder.is_dir():
            tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
            tmp.mkdir(parents=True, exist_ok=True)
            for name, data in snapshot.files.items():
                (tmp / name).write_bytes(data)
            try:
                tmp.rename(folder)
            except OSError:  # another process saved the same revision first
                for child in tmp.iterdir():
                    child.unlink()
                tmp.rmdir()
        return folder

    def read(self) -> list[dict[str, Any]]:
        """Every readable event in order; a torn line is skipped with a warning."""
        if not self.path.exists():
            return []
        events = []
        for number, line in enumerate(self.path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                log.warning("%s line %d is not JSON; skipped", self.path, number)
        return events
