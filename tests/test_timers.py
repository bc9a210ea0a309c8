"""Coarse deadlines on a real event loop: never early, at most one slot late, cancellable."""

from __future__ import annotations

import asyncio

from router.dataplane.timers import Deadlines


async def test_fires_once_never_early_and_within_a_slot() -> None:
    deadlines = Deadlines(resolution=0.05)
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    start = loop.time()
    done = asyncio.Event()
    deadlines.after(0.12, lambda: fired.append(loop.time()))
    deadlines.after(0.3, done.set)  # a later slot: fires after the first, and after a repeat
    await asyncio.wait_for(done.wait(), 2)
    assert len(fired) == 1
    assert 0.12 <= fired[0] - start < 0.12 + 0.05 + 0.1  # slot rounding + scheduling slack


async def test_cancelled_deadlines_never_fire_and_share_slots() -> None:
    deadlines = Deadlines(resolution=0.05)
    fired: list[int] = []
    handles = [deadlines.after(0.05, lambda i=i: fired.append(i)) for i in range(100)]
    assert len(deadlines._slots) <= 2  # 100 deadlines, one or two loop timers
    for handle in handles[::2]:
        handle.cancel()
        handle.cancel()  # idempotent
    done = asyncio.Event()
    deadlines.after(0.15, done.set)  # a later slot: fires once the 0.05 s ones had their turn
    await asyncio.wait_for(done.wait(), 2)
    assert sorted(fired) == list(range(1, 100, 2))
    assert not deadlines._slots


async def test_a_callback_may_cancel_a_sibling_or_arm_a_new_deadline() -> None:
    deadlines = Deadlines(resolution=0.05)
    fired: list[str] = []
    done = asyncio.Event()

    def rearmed() -> None:
        fired.append("re-armed")
        done.set()

    # Two siblings of one slot, each cancelling the other: whichever the slot's set order runs
    # first, the other must not run (it would if a cancelled sibling still fired).
    def one() -> None:
        fired.append("one")
        two.cancel()
        deadlines.after(0, rearmed)

    def other() -> None:
        fired.append("two")
        first.cancel()
        deadlines.after(0, rearmed)

    def boom() -> None:
        raise RuntimeError("a failing callback does not stop the others")

    deadlines.after(0.05, boom)
    first = deadlines.after(0.05, one)
    two = deadlines.after(0.05, other)
    assert first.slot is two.slot  # siblings: fired by one loop timer
    await asyncio.wait_for(done.wait(), 2)
    assert fired in (["one", "re-armed"], ["two", "re-armed"])
    assert not deadlines._slots


async def test_long_delays_share_coarse_slots_and_cancelled_slots_are_freed() -> None:
    deadlines = Deadlines(resolution=0.01)
    handles = []
    for _ in range(50):  # 30 s timeouts armed over ~100 ms: 160 ms slots, not 10 ms ones
        handles.append(deadlines.after(30, lambda: None))
        await asyncio.sleep(0.002)
    assert len(deadlines._slots) <= 2
    for handle in handles:
        handle.cancel()
    assert not deadlines._slots  # nothing armed: no slot, no loop timer left behind
