"""The control plane's wiring, shared by a router process and a supervisor: which rollout
states, which evidence, and the fleet membership when the config has a ``fleet:`` block.

| process                    | rollout states    | evidence                        |
|----------------------------|-------------------|---------------------------------|
| one process                | ``FileStates``    | ``LocalEvidence`` (its traffic) |
| supervisor (``--workers``) | ``FileStates``    | ``MetricsEvidence`` (workers)   |
| either, in a fleet         | ``FleetStates``   | ``PrometheusEvidence``          |
| a worker                   | ``Following``     | none: it adopts its supervisor's|
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from ..config import Live, Snapshot
from ..control.evidence import Evidence, LocalEvidence
from ..control.fleet import REPLICA_ENV, FleetMember, FleetStates, replica_id
from ..control.history import History
from ..control.prometheus import PrometheusEvidence
from ..control.reload import Reloader
from ..control.rollout import Controller, FileStates, Following, States
from ..control.store import FleetStore
from ..metrics import Metrics
from .lifecycle import TaskSet


def ship_replica() -> str:
    """The replica id in shipped object names: ``MODEL_ROUTER_REPLICA``, else the host name
    (stable across restarts, so a segment shipped again after a crash keeps its names; the
    segment's own name carries the writer's pid)."""
    return os.environ.get(REPLICA_ENV) or socket.gethostname()


def fleet_store(snapshot: Snapshot, metrics: Metrics) -> FleetStore | None:
    fleet = snapshot.fleet
    if fleet is None:
        return None
    return FleetStore(fleet.store, fleet.name, replica_id(),
                      on_error=metrics.fleet_store_errors.inc)


def control_plane(snapshot: Snapshot, live: Live, reloader: Reloader, history: History,
                  metrics: Metrics, store: FleetStore | None, evidence: Evidence,
                  refresh: Callable[[], None], clock: Callable[[], float] = time.time,
                  ) -> tuple[Controller, FleetMember | None]:
    """The rollout controller (and the fleet member, in a fleet), hooked to the reloader:
    the controller's transform sets the weights of every snapshot that goes live, and
    ``refresh`` swaps them in after a rollout moves. ``evidence`` is the local source,
    replaced by Prometheus in a fleet."""
    member: FleetMember | None = None
    states: States = FileStates(snapshot.state_dir)
    fleet = snapshot.fleet
    if fleet is not None and store is not None:
        member = FleetMember(fleet, store, live, metrics)
        states = FleetStates(store, member)
        if fleet.prometheus is not None:
            evidence = member.prometheus = PrometheusEvidence(
                fleet.prometheus, fleet.name, member.live_replicas,
                on_error=metrics.evidence_errors.inc)
        history.mirrors.append(member.record)
    controller = Controller(states, history, evidence, metrics, clock=clock)
    controller.live = live
    controller.refresh = refresh
    if member is not None:
        controller.leading = member.leading
        member.controller = controller
        member.refresh = refresh
    reloader.transforms.append(controller.transform)
    return controller, member


def follower(live: Live, reloader: Reloader, history: History, metrics: Metrics,
             ) -> Controller:
    """A worker's controller: applies the weights its supervisor sends, never acts."""
    controller = Controller(Following(), history, LocalEvidence(), metrics)
    controller.leading = lambda: False
    controller.live = live
    controller.refresh = reloader.refresh
    reloader.transforms.append(controller.transform)
    return controller


async def join_fleet(member: FleetMember, reloader: Reloader, tasks: TaskSet) -> None:
    """Start a process's fleet membership: every applied revision's files go to the store;
    the lease is taken at once when free and the fleet's weights read before serving; the
    member's loops run in ``tasks``."""
    def save_revision(applied: Snapshot) -> None:
        tasks.spawn(member.save_revision(applied))
    reloader.on_applied.append(save_revision)
    await member.hold_lease()
    await member.sync()
    tasks.spawn(member.run())


async def close_fleet(member: FleetMember | None, evidence: Any,
                      store: FleetStore | None) -> None:
    """Close what ``control_plane`` and ``fleet_store`` opened (the member closes the store;
    a worker has a store and no member)."""
    if isinstance(evidence, PrometheusEvidence):
        await evidence.close()
    if member is not None:
        await member.close()
    elif store is not None:
        await store.close()
