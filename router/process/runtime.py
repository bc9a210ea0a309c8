"""The event loop of a router process: uvloop, and the interpreter settings the hot path
was measured with (loadtest/README.md)."""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Any

GC_YOUNG = 20_000


def run(coro: Any) -> Any:
    """Run a coroutine on uvloop (asyncio's loop where uvloop is unavailable)."""
    # Work sent to threads (config loads on reload, baseline reads) runs Python; a short
    # switch interval keeps such a thread from holding the GIL for the default 5 ms while
    # requests wait (tail latency).
    sys.setswitchinterval(0.0005)
    # Every request allocates a few hundred short-lived objects; with the default young
    # generation of 700 the collector runs every few requests and rescans what the requests
    # in flight hold. Freeze what startup built and collect the young generation less often.
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 10, 10)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)
