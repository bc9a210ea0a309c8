"""Coarse deadlines: many timeouts sharing few event-loop timers.

Every request arms two or three timeouts (the client connection's, the upstream answer's)
that almost never fire. ``asyncio.timeout`` costs ~9 us per use and ``loop.call_later`` +
``cancel`` ~2 us; a deadline here is rounded up to ``resolution`` (10 ms), deadlines in the
same slot share one loop timer, and arming or cancelling one is a set operation (~1 us).
A deadline never fires early; it fires at most ``resolution`` late.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("model_router.timers")


class Deadline:
    """One armed deadline; ``cancel`` is idempotent and O(1)."""

    __slots__ = ("slot", "callback")

    def __init__(self, slot: set[Deadline], callback: Callable[[], None]) -> None:
        self.slot: set[Deadline] | None = slot
        self.callback = callback

    def __repr__(self) -> str:
        return f"<Deadline armed={self.slot is not None}>"

    def cancel(self) -> None:
        slot = self.slot
        if slot is not None:
            slot.discard(self)
            self.slot = None


class Deadlines:
    """Deadlines on the running loop (bound at first use), grouped in slots of ``resolution``."""

    def __init__(self, resolution: float = 0.01) -> None:
        self.resolution = resolution
        self.loop: asyncio.AbstractEventLoop | None = None
        self._slots: dict[int, set[Deadline]] = {}

    def __repr__(self) -> str:
        return f"<Deadlines slots={len(self._slots)}>"

    def now(self) -> float:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        return self.loop.time()

    def after(self, delay: float, callback: Callable[[], None]) -> Deadline:
        """Call ``callback`` once, ``delay`` seconds from now (rounded up to the slot)."""
        return self.at(self.now() + delay, callback)

    def at(self, when: float, callback: Callable[[], None]) -> Deadline:
        """Call ``callback`` once at loop time ``when`` (rounded up to the slot)."""
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        key = -int(-when // self.resolution)  # ceiling: never early
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = set()
            loop.call_at(key * self.resolution, self._fire, key)
        deadline = Deadline(slot, callback)
        slot.add(deadline)
        return deadline

    def _fire(self, key: int) -> None:
        slot = self._slots.pop(key, None)
        if not slot:
            return
        for deadline in list(slot):  # a callback may cancel another deadline of this slot
            if deadline.slot is None:
                continue
            deadline.slot = None
            try:
                deadline.callback()
            except Exception:  # noqa: BLE001 - one failing callback must not skip the rest
                log.exception("deadline callback %r failed", deadline.callback)
