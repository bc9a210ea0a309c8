"""Fleet membership: N replicas behave as one router (DESIGN "Fleet", README "Running a fleet").

``FleetMember`` runs beside the controller on every replica (or its supervisor):

- the lease: every ``lease_s``/3 it takes the fleet's lease if free or renews its own; the
  holder is the leader and its controller acts; a replica that cannot renew within
  ``lease_s`` of its last renewal stops acting at once (its writes would fail anyway: each
  requires the lease in the same script as the compare-and-set);
- the weights: it subscribes to the store's weights channel and reads every rollout state on
  a message and once a second, and the controller adopts what is newer (generation);
- the heartbeat: once a second, this replica's revision, rollout steps and generations;
- the history: applies, rejections and rollout events recorded here also go to the fleet's
  history stream (queued, written by this task; kept for a retry while the store is down);
- ``status()``: ``GET /-/fleet``.

Redis or Prometheus down: serving goes on with the weights held, no rollout decision is made,
errors are counted, and each loop retries on its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..config import Fleet, Live, Snapshot
from ..timefmt import iso
from .rollout import Controller, RolloutState
from .store import NOT_LEADER, FleetStore

log = logging.getLogger("model_router.fleet")

REPLICA_ENV = "MODEL_ROUTER_REPLICA"
SYNC_S = 1.0
HEARTBEAT_S = 1.0
HISTORY_QUEUE_MAX = 10_000


def replica_id() -> str:
    """``MODEL_ROUTER_REPLICA`` (Kubernetes: the pod name), else host name and pid."""
    return os.environ.get(REPLICA_ENV) or f"{socket.gethostname()}-{os.getpid()}"


class FleetStates:
    """Rollout states in the fleet store (see ``rollout.States``)."""

    shared = True

    def __init__(self, store: FleetStore, member: FleetMember) -> None:
        self.store = store
        self.member = member

    def __repr__(self) -> str:
        return f"<FleetStates {self.store.prefix}>"

    def load(self) -> dict[str, RolloutState]:
        return {}  # adopted from the store once the member runs

    def save_all(self, states: Mapping[str, RolloutState]) -> None:
        pass  # only compare-and-set writes reach the fleet store

    async def write(self, state: RolloutState, expected: int, manual: bool) -> str:
        result = await self.store.write_rollout(state.route, state.public(), expected,
                                                as_leader=not manual)
        if result == NOT_LEADER:
            self.member.deposed()
        return result


class FleetMember:
    def __init__(self, fleet: Fleet, store: FleetStore, live: Live, metrics: Any,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.fleet = fleet
        self.store = store
        self.replica = store.replica
        self.live = live
        self.metrics = metrics
        self.controller: Controller | None = None
        self.refresh: Callable[[], None] | None = None   # the reloader's, set by the app
        self.prometheus: Any = None                      # its ``health``, for /-/fleet
        self.leader_since: float | None = None
        self._renewed: float | None = None  # monotonic time of the last lease renewal
        self._clock = clock
        self._history: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        metrics.fleet_info.labels(fleet.name, self.replica).set(1)
        metrics.fleet_leader.set(0)

    def __repr__(self) -> str:
        return f"<FleetMember {self.fleet.name}/{self.replica} leading={self.leading()}>"

    # -- the lease ---------------------------------------------------------------------------

    def leading(self) -> bool:
        """Holding the lease now: renewed within ``lease_s`` (measured from the request)."""
        return self._renewed is not None and \
            self._clock() - self._renewed < self.fleet.lease_s

    def deposed(self) -> None:
        """A write found another holder: stop acting at once."""
        if self._renewed is not None:
            log.warning("fleet %s: replica %s lost the lease", self.fleet.name, self.replica)
        self._renewed = None
        self.leader_since = None
        self.metrics.fleet_leader.set(0)

    async def hold_lease(self) -> None:
        """Take or renew the lease once."""
        asked = self._clock()
        held = await self.store.hold_lease(self.fleet.lease_s)
        if held is True:
            if self._renewed is None:
                self.leader_since = time.time()
                log.info("fleet %s: replica %s leads", self.fleet.name, self.replica)
                await self.sync()  # act on the newest states, never on a stale view
            self._renewed = asked
            self.metrics.fleet_leader.set(1)
        elif held is False:
            if self._renewed is not None:
                self.deposed()
        elif not self.leading():  # unreachable past the lease: another may lead by now
            self.deposed()

    # -- weights -----------------------------------------------------------------------------

    async def sync(self) -> None:
        """Read every stored rollout state and adopt what is newer."""
        stored = await self.store.rollouts()
        if stored is None or self.controller is None:
            return
        if self.controller.adopt(stored) and self.refresh is not None:
            self.refresh()
        if self.leading():  # a store that lost its data (restarted empty) gets ours back
            for name, state in list(self.controller.states.items()):
                if name not in stored and state.generation > 0:
                    log.warning("fleet %s: the store lost rollout %s; writing back "
                                "generation %d", self.fleet.name, name, state.generation)
                    await self.store.write_rollout(name, state.public(), 0, as_leader=True)

    # -- history -------------------------------------------------------------------------------

    def record(self, event: dict[str, Any]) -> None:
        """History mirror: queue one event for the fleet's stream (never blocks)."""
        if len(self._history) >= HISTORY_QUEUE_MAX:
            del self._history[0]
        self._history.append({**event, "replica": self.replica})
        self._wake.set()

    async def save_revision(self, snapshot: Snapshot) -> None:
        await self.store.save_revision(snapshot.revision, snapshot.files)

    async def _flush_history(self) -> None:
        if self._history:
            batch, self._history = self._history, []
            if not await self.store.append_history(batch):
                self._history = batch + self._history

    # -- the loops -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Every loop of the member, until cancelled; one failing round never ends a loop."""
        await asyncio.gather(
            self._every("lease", self.hold_lease, lambda: self.fleet.lease_s / 3),
            self._every("sync", self.sync, lambda: SYNC_S),
            self._every("heartbeat", self._heartbeat, lambda: HEARTBEAT_S),
            self._every("history", self._history_round, lambda: 0.0),
            self._watch_loop())

    async def _every(self, name: str, round_: Callable[[], Awaitable[None]],
                     pause: Callable[[], float]) -> None:
        while True:
            try:
                await round_()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the fleet's loops must outlive a bad round
                log.exception("fleet %s: %s round failed", self.fleet.name, name)
                await asyncio.sleep(SYNC_S)
            await asyncio.sleep(pause())

    async def _watch_loop(self) -> None:
        """Sync at once on every published change; resubscribe after a failure."""
        while True:
            pubsub = self.store.subscribe()
            try:
                await pubsub.subscribe(self.store.channel)
                while True:
                    message = await pubsub.get_message(timeout=SYNC_S)
                    if message is not None:
                        await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the 1 s poll covers the gap
                log.debug("fleet weights channel: %s", exc)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001
                    pass
            await asyncio.sleep(SYNC_S)

    async def _heartbeat(self) -> None:
        await self.store.heartbeat(self.heartbeat())
        if self.leading():
            await self._forget_gone()

    async def _history_round(self) -> None:
        await self._wake.wait()
        self._wake.clear()
        await self._flush_history()
        if self._history:  # the store is down: retry in a second
            await asyncio.sleep(SYNC_S)

    async def _forget_gone(self) -> None:
        """The leader drops replicas silent for 10 leases from the heartbeat table."""
        replicas = await self.store.replicas() or {}
        cutoff = time.time() - 10 * self.fleet.lease_s
        await self.store.forget_replicas(r for r, h in replicas.items()
                                         if h.get("last_seen", 0) < cutoff)

    # -- visibility ----------------------------------------------------------------------------

    def heartbeat(self) -> dict[str, Any]:
        snapshot = self.live.snapshot
        states = self.controller.states if self.controller else {}
        return {"replica": self.replica, "revision": snapshot.revision,
                "rollouts": {name: {"step": s.step, "weight": s.weight, "status": s.status,
                                    "generation": s.generation}
                             for name, s in states.items()},
                "leader": self.leading(), "last_seen": time.time()}

    async def live_replicas(self) -> set[str] | None:
        """Replicas whose heartbeat is younger than the lease (this one always); None when
        the store cannot say (then no evidence window opens)."""
        replicas = await self.store.replicas()
        if replicas is None:
            return None
        cutoff = time.time() - self.fleet.lease_s
        return {r for r, h in replicas.items() if h.get("last_seen", 0) >= cutoff} | \
            {self.replica}

    async def status(self) -> dict[str, Any]:
        """``GET /-/fleet``."""
        leader = await self.store.leader()
        replicas = await self.store.replicas()
        rows = []
        cutoff = time.time() - self.fleet.lease_s
        for rid, h in sorted((replicas or {self.replica: self.heartbeat()}).items()):
            rows.append({"replica": rid, "revision": h.get("revision"),
                         "live": h.get("last_seen", 0) >= cutoff,
                         "rollouts": {route: r.get("step") for route, r in
                                      (h.get("rollouts") or {}).items()},
                         "generations": {route: r.get("generation") for route, r in
                                         (h.get("rollouts") or {}).items()},
                         "last_seen": iso(h["last_seen"]) if h.get("last_seen") else None})
        prometheus = "not configured" if self.fleet.prometheus is None else \
            getattr(self.prometheus, "health", "not queried yet")
        return {"name": self.fleet.name, "replica": self.replica, "leader": leader,
                "leading": self.leading(), "replicas": rows, "store": self.store.health,
                "prometheus": prometheus}

    async def close(self) -> None:
        """Release the lease if held (a successor need not wait for it to expire)."""
        if self.leading():
            await self.store.release_lease()
            log.info("fleet %s: replica %s released the lease", self.fleet.name, self.replica)
        self._renewed = self.leader_since = None
        self.metrics.fleet_leader.set(0)
        await self._flush_history()
        await self.store.close()
