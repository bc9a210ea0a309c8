"""Feedback attribution: request id -> (route, version, revision) of recent primary answers.

``/-/feedback`` may reach any process (another worker, another replica) than the one that
answered. ``Attribution`` remembers this process's recent answers (an LRU); in a fleet it also
writes them to the fleet store in batches (every ``FLUSH_S`` or ``BATCH`` answers, each with
the store's TTL), so a replica that did not serve a request finds it there. The exchange hook
only appends to a list: the encoding and the round trip happen in the flush task.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

import orjson

from ..records import Exchange, Served

log = logging.getLogger("model_router.attribution")

RECENT = 100_000        # answers remembered in this process
FLUSH_S = 0.1           # a served request id is in the store within ~FLUSH_S + a round trip
BATCH = 1_000           # or sooner, when this many wait
CHUNK = 5_000           # ids per write (a catch-up after an outage goes in chunks)
BACKOFF_MAX_S = 5.0     # while the store fails, retries back off up to this
PENDING_MAX = 100_000   # while the store is down, the oldest pending ids are dropped
LOOKUP_TIMEOUT_S = 0.25  # a feedback waits at most this for the store


class Remote(Protocol):
    """The fleet store's side (``control.store.FleetStore``)."""

    async def attribute(self, entries: Mapping[str, bytes], ttl_s: float) -> bool: ...

    async def attribution(self, request_id: str) -> bytes | None: ...


class Attribution:
    def __init__(self, remote: Remote | None = None, ttl_s: float = 86400.0) -> None:
        self.remote = remote
        self.ttl_s = ttl_s
        self.dropped = 0   # pending ids given up while the store was unreachable
        self._recent: OrderedDict[str, Served] = OrderedDict()
        self._pending: list[tuple[str, Served]] = []   # answered since the last flush
        self._unwritten: dict[str, bytes] = {}          # encoded, not yet in the store
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        return (f"<Attribution recent={len(self._recent)} "
                f"pending={len(self._pending) + len(self._unwritten)} "
                f"remote={self.remote is not None}>")

    def exchange(self, ex: Exchange) -> None:
        """Proxy observer: remember who answered; called once per primary, never awaits."""
        if ex.version is None or not ex.inference:
            return
        served = Served(ex.route.name, ex.version, ex.revision)
        recent = self._recent
        recent[ex.request_id] = served
        if len(recent) > RECENT:
            recent.popitem(last=False)
        if self.remote is not None:
            self._pending.append((ex.request_id, served))
            if len(self._pending) >= BATCH:
                self._wake.set()

    async def find(self, request_id: str) -> Served | None:
        """Who served ``request_id``: this process's memory first, then the fleet store."""
        served = self._recent.get(request_id)
        if served is not None or self.remote is None:
            return served
        try:
            raw = await asyncio.wait_for(self.remote.attribution(request_id), LOOKUP_TIMEOUT_S)
        except TimeoutError:
            return None  # a stalled store must not hold a feedback for long
        if raw is None:
            return None
        try:
            doc: Any = orjson.loads(raw)
            return Served(str(doc["route"]), str(doc["version"]), str(doc["revision"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("attribution of %r in the store is malformed: %r", request_id, raw[:200])
            return None

    async def flush(self) -> bool:
        """Write what waits to the store, in chunks; False when the store failed (what was
        not written stays, up to ``PENDING_MAX`` ids, the oldest dropped first). Each id is
        encoded once, however many retries it takes."""
        if self.remote is None:
            return True
        if self._pending:
            fresh, self._pending = self._pending, []
            self._unwritten.update((rid, orjson.dumps({"route": s.route, "version": s.version,
                                                        "revision": s.revision}))
                                   for rid, s in fresh)
            excess = len(self._unwritten) - PENDING_MAX
            if excess > 0:
                for rid in list(itertools.islice(self._unwritten, excess)):
                    del self._unwritten[rid]
                self.dropped += excess
        while self._unwritten:
            chunk = dict(itertools.islice(self._unwritten.items(), CHUNK))
            if not await self.remote.attribute(chunk, self.ttl_s):
                return False
            for rid in chunk:  # removed only once written: a cancelled write keeps them
                self._unwritten.pop(rid, None)
        return True

    async def run(self) -> None:
        """Flush every ``FLUSH_S`` (sooner when a batch is full); while the store fails, back
        off up to ``BACKOFF_MAX_S``. Runs until cancelled."""
        pause = FLUSH_S
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), pause)
            except TimeoutError:
                pass
            self._wake.clear()
            pause = FLUSH_S if await self.flush() else min(pause * 2, BACKOFF_MAX_S)
