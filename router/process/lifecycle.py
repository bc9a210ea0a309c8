"""What a router process and a supervisor share about their lifecycle.

- ``TaskSet`` owns background tasks: every task is held until it ends, a crash is logged,
  and ``close`` drains, then cancels, whatever is left.
- ``Lifecycle`` reads top-down like uvicorn's server: ``start`` runs the start-up steps in
  order; when one fails, ``stop`` undoes what the earlier ones built, and the error goes on
  to the caller. ``stop`` works on a never-started, half-started or started object, and a
  second call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Literal

log = logging.getLogger("model_router")

State = Literal["new", "starting", "started", "stopped"]


class TaskSet:
    """Background tasks with an owner (fire-and-forget still has one)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"<TaskSet {len(self._tasks)} running>"

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task held by this set until it ends; never raises."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %r failed", task, exc_info=task.exception())

    async def close(self, grace: float = 0.0) -> None:
        """Wait up to ``grace`` seconds for the tasks to end, then cancel the rest and wait
        until they have (their ``finally`` blocks have run when this returns)."""
        if self._tasks and grace > 0:
            await asyncio.wait(list(self._tasks), timeout=grace)
        while self._tasks:  # a task may spawn another while it unwinds
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


class Lifecycle:
    """``start`` -> serve -> ``stop``, once. Subclasses write ``_startup`` (every step in
    order, each assigning its attribute as it succeeds) and ``_shutdown`` (every attribute
    that is not None, stopped; it must cope with any prefix of ``_startup`` having run)."""

    def __init__(self) -> None:
        self.tasks = TaskSet()
        self.ready = False
        self.state: State = "new"
        self._stop_lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        """Started (or starting) and not yet stopped."""
        return self.state in ("starting", "started")

    async def _start(self, startup: Coroutine[Any, Any, None]) -> None:
        if self.state != "new":
            startup.close()
            raise RuntimeError(f"{self!r} can start only once (state {self.state})")
        self.state = "starting"
        try:
            await startup
        except BaseException:
            try:
                await self.stop(drain_delay=False)
            except Exception:  # the start-up error is the one to report
                log.exception("cleaning up after a failed start")
            raise
        self.state = "started"

    async def stop(self, drain_delay: bool = True) -> None:
        """Stop what runs, in reverse order of start-up; safe in any state, runs once."""
        async with self._stop_lock:
            if self.state == "stopped":
                return
            started = self.state == "started"
            self.state = "stopped"
            self.ready = False
            await self._shutdown(drain_delay and started)

    async def _shutdown(self, drain_delay: bool) -> None:
        raise NotImplementedError
