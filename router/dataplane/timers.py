"""Coarse deadlines: many timeouts sharing few event-loop timers.

Every request arms a timeout (its upstream answer's) that almost never fires.
``asyncio.timeout`` costs ~9 us per use and ``loop.call_later`` + ``cancel`` ~2 us. Here a
deadline is rounded up to a slot: 10 ms, or for long delays the power-of-two multiple of
10 ms closest below 1% of the delay (160 ms for 30 s). Deadlines of one slot share one loop
timer; arming or cancelling one is a set operation (~1 us). A slot whose deadlines were all
cancelled is dropped with its timer, so memory follows the deadlines still armed. A deadline
never fires early, and at most one slot late.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

log = logging.getLogger("model_router.timers")


class _Slot:
    """The deadlines due at one slot time, and the loop timer that fires them."""

    __slots__ = ("owner", "key", "members", "timer")

    def __init__(self, owner: Deadlines, key: int) -> None:
        self.owner = owner
        self.key = key
        self.members: set[Deadline] = set()
        self.timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<Slot {self.key} {len(self.members)} deadlines>"

    def drop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.owner._slots.get(self.key) is self:
            del self.owner._slots[self.key]


class Deadline:
    """One armed deadline; ``cancel`` is idempotent and O(1)."""

    __slots__ = ("slot", "callback")

    def __init__(self, slot: _Slot, callback: Callable[[], None]) -> None:
        self.slot: _Slot | None = slot
        self.callback = callback

    def __repr__(self) -> str:
        return f"<Deadline armed={self.slot is not None}>"

    def cancel(self) -> None:
        slot = self.slot
        if slot is not None:
            self.slot = None
            slot.members.discard(self)
            if not slot.members:
                slot.drop()


class Deadlines:
    """Deadlines on the running loop (bound at first use), grouped in slots."""

    def __init__(self, resolution: float = 0.01) -> None:
        self.resolution = resolution
        self.loop: asyncio.AbstractEventLoop | None = None
        self._slots: dict[int, _Slot] = {}

    def __repr__(self) -> str:
        return f"<Deadlines slots={len(self._slots)}>"

    def _running(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        return self.loop

    def now(self) -> float:
        return self._running().time()

    def after(self, delay: float, callback: Callable[[], None]) -> Deadline:
        """Call ``callback`` once, ``delay`` seconds from now (rounded up to its slot)."""
        return self.at(self.now() + delay, callback)

    def at(self, when: float, callback: Callable[[], None]) -> Deadline:
        """Call ``callback`` once at loop time ``when`` (rounded up to its slot)."""
        loop = self._running()
        base = self.resolution
        shift = 0
        delay = when - loop.time()
        if delay > 200 * base:  # slots of about 1% of the delay, a power-of-two multiple
            shift = int(math.log2(delay / (100 * base)))
        # Slot keys count base units; ceiling so a deadline never fires early.
        key = -int(-when // (base * (1 << shift))) << shift
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(self, key)
            slot.timer = loop.call_at(key * base, self._fire, slot)
        deadline = Deadline(slot, callback)
        slot.members.add(deadline)
        return deadline

    def _fire(self, slot: _Slot) -> None:
        slot.timer = None
        slot.drop()
        for deadline in list(slot.members):  # a callback may cancel a sibling
            if deadline.slot is None:
                continue
            deadline.slot = None
            try:
                deadline.callback()
            except Exception:  # noqa: BLE001 - one failing callback must not skip the rest
                log.exception("deadline callback %r failed", deadline.callback)
        slot.members.clear()
