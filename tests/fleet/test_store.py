"""The fleet store on a real redis-server: the lease, the rollout compare-and-set, the weights
channel, fail-static behaviour when Redis dies, feedback attribution, history and revisions.
FleetMember's lease handling runs here too (its loops are not started; each step is awaited).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from fleetkit import RedisServer

from router.config.snapshot import Fleet
from router.control.fleet import FleetMember, FleetStates
from router.control.rollout import RolloutState
from router.control.store import (
    NOT_LEADER,
    STALE,
    UNREACHABLE,
    WRITTEN,
    FleetStore,
    read_history,
)
from router.metrics import Metrics
from router.observers.attribution import Attribution
from router.records import Served

FLEET = "t-fleet"
CALL_BOUND_S = 2.5   # SOCKET_TIMEOUT_S is 1 s: a call on a dead store returns well within this


class Stores:
    """FleetStores of one fleet on the test's Redis, one per replica id, closed at teardown;
    ``errors`` counts each replica's on_error calls."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.errors: dict[str, int] = {}
        self.made: list[FleetStore] = []

    def __call__(self, replica: str) -> FleetStore:
        self.errors[replica] = 0

        def counted() -> None:
            self.errors[replica] += 1
        store = FleetStore(self.url, FLEET, replica, on_error=counted)
        self.made.append(store)
        return store


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[Stores]:
    made = Stores(redis_server.url)
    yield made
    for store in made.made:
        await store.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client to look at the keys behind the store's back."""
    client = aioredis.Redis.from_url(redis_server.url, socket_timeout=2,
                                     socket_connect_timeout=2)
    yield client
    await client.aclose()


def key(name: str) -> str:
    return f"model-router:{FLEET}:{name}"


def state(generation: int, weight: float = 10.0, route: str = "fraud") -> dict[str, Any]:
    return RolloutState(route=route, key="k1", step=0, weight=weight, status="running",
                        step_started=1.0, updated=2.0, generation=generation).public()


async def bounded(op: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(op, CALL_BOUND_S)


# -- the lease ----------------------------------------------------------------------------------

async def test_first_replica_takes_the_lease_the_second_cannot(stores: Stores) -> None:
    a, b = stores("a"), stores("b")
    assert await a.hold_lease(10) is True
    assert await b.hold_lease(10) is False
    assert await b.hold_lease(10) is False   # believing it holds changes nothing
    assert await a.leader() == "a" and await b.leader() == "a"


async def test_holder_renews_and_extends(stores: Stores, raw: aioredis.Redis) -> None:
    a = stores("a")
    assert await a.hold_lease(1) is True
    assert 0 < await raw.pttl(key("leader")) <= 1000
    assert await a.hold_lease(30) is True
    assert 10_000 < await raw.pttl(key("leader")) <= 30_000
    assert await a.leader() == "a"


async def test_a_holder_that_forgot_it_leads_renews_its_own_lease(stores: Stores) -> None:
    # a replica deposed on a timeout whose key still names it takes it back at once (the
    # fleet is not left without an acting leader until the key expires); others cannot
    a, b = stores("a"), stores("b")
    assert await a.hold_lease(10) is True
    assert await a.hold_lease(10) is True
    assert await b.hold_lease(10) is False


async def test_non_holder_renew_does_nothing(stores: Stores, raw: aioredis.Redis) -> None:
    a, b = stores("a"), stores("b")
    assert await a.hold_lease(5) is True
    assert await b.hold_lease(60) is False
    assert 0 < await raw.pttl(key("leader")) <= 5000
    assert await raw.get(key("leader")) == b"a"


async def test_release_only_by_the_holder(stores: Stores) -> None:
    a, b = stores("a"), stores("b")
    assert await a.hold_lease(10) is True
    await b.release_lease()
    assert await a.leader() == "a"
    await a.release_lease()
    assert await a.leader() is None
    assert await b.hold_lease(10) is True
    assert await a.leader() == "b"


async def test_expired_lease_is_taken_by_another(stores: Stores) -> None:
    a, b = stores("a"), stores("b")
    assert await a.hold_lease(1) is True
    taken_at = time.monotonic()
    assert await b.hold_lease(1) is False
    deadline = taken_at + 3.0
    while not await b.hold_lease(1):
        assert time.monotonic() < deadline, "the lease never expired"
        await asyncio.sleep(0.05)
    assert time.monotonic() - taken_at >= 0.9   # not before the lease ran out
    assert await a.leader() == "b"
    assert await a.hold_lease(1) is False   # the old holder cannot renew it


# -- rollout state: compare-and-set -------------------------------------------------------------

# (id, generation stored (None: nothing), lease holder, writer, as_leader, expected, outcome)
CAS = [
    ("create", None, "a", "a", True, 0, WRITTEN),
    ("next_generation", 2, "a", "a", True, 2, WRITTEN),
    ("create_needs_0", None, "a", "a", True, 1, STALE),
    ("stale_expected", 2, "a", "a", True, 1, STALE),
    ("expected_ahead", 2, "a", "a", True, 3, STALE),
    ("leader_write_without_lease", 2, "a", "b", True, 2, NOT_LEADER),
    ("leader_write_nobody_holds", 2, None, "a", True, 2, NOT_LEADER),
    ("create_without_lease", None, "a", "b", True, 0, NOT_LEADER),
    ("manual_without_lease", 2, "a", "b", False, 2, WRITTEN),
    ("manual_nobody_holds", None, None, "b", False, 0, WRITTEN),
    ("manual_stale", 2, "a", "b", False, 1, STALE),
]


async def read_channel(pubsub: Any, until: str, timeout: float = 3.0) -> list[str]:
    """The routes published on the weights channel up to and including ``until``."""
    seen: list[str] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while until not in seen:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, f"no {until!r} on the channel; saw {seen}"
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            seen.append(message["data"].decode())
    return seen


@pytest.mark.parametrize("stored, holder, writer, as_leader, expected, outcome",
                         [c[1:] for c in CAS], ids=[c[0] for c in CAS])
async def test_compare_and_set(stores: Stores, raw: aioredis.Redis, stored: int | None,
                               holder: str | None, writer: str, as_leader: bool,
                               expected: int, outcome: str) -> None:
    replicas = {"a": stores("a"), "b": stores("b")}
    if stored is not None:
        await raw.hset(key("rollouts"), "fraud", orjson.dumps(state(stored)))
    if holder is not None:
        assert await replicas[holder].hold_lease(10) is True
    store = replicas[writer]
    pubsub = raw.pubsub()
    await pubsub.subscribe(store.channel)
    try:
        new = state(expected + 1, weight=50.0)
        assert await store.write_rollout("fraud", new, expected, as_leader) == outcome
        # a sentinel write on another route closes the sequence of messages to read
        assert await store.write_rollout("sentinel", state(1, route="sentinel"), 0,
                                         as_leader=False) == WRITTEN
        published = await read_channel(pubsub, "sentinel")
    finally:
        await pubsub.aclose()
    after = (await store.rollouts() or {}).get("fraud")
    if outcome == WRITTEN:
        assert after == new and published == ["fraud", "sentinel"]
    else:
        assert after == (state(stored) if stored is not None else None)
        assert published == ["sentinel"]
    assert stores.errors == {"a": 0, "b": 0}


async def test_successive_writes_walk_the_generations(stores: Stores) -> None:
    a = stores("a")
    assert await a.hold_lease(10) is True
    for generation in range(1, 4):
        assert await a.write_rollout("fraud", state(generation, weight=generation * 10),
                                     generation - 1, as_leader=True) == WRITTEN
    assert await a.write_rollout("fraud", state(2), 1, as_leader=True) == STALE
    assert await a.rollouts() == {"fraud": state(3, weight=30)}


# -- FleetMember: who leads, and a deposed leader stops at once ----------------------------------

def member(store: FleetStore, clock: Callable[[], float] = time.monotonic,
           lease_s: float = 10) -> FleetMember:
    fleet = Fleet(name=FLEET, store=store.url, lease_s=lease_s)
    live = SimpleNamespace(snapshot=SimpleNamespace(revision="rev000000001"))
    return FleetMember(fleet, store, live, Metrics(), clock=clock)  # type: ignore[arg-type]


def leader_gauge(m: FleetMember) -> float | None:
    return m.metrics.registry.get_sample_value("model_router_fleet_leader")


async def test_exactly_one_member_leads(stores: Stores) -> None:
    a, b = member(stores("a")), member(stores("b"))
    await a.hold_lease()
    await b.hold_lease()
    await a.hold_lease()   # a renewal
    await b.hold_lease()
    assert (a.leading(), b.leading()) == (True, False)
    assert (leader_gauge(a), leader_gauge(b)) == (1.0, 0.0)
    assert "leading=True" in repr(a) and "leading=False" in repr(b)


async def test_deposed_leader_write_answers_not_leader_and_stops_at_once(
        stores: Stores, raw: aioredis.Redis) -> None:
    a, b = member(stores("a")), member(stores("b"))
    await a.hold_lease()
    states_a, states_b = FleetStates(a.store, a), FleetStates(b.store, b)
    first = RolloutState.of(state(1))
    assert await states_a.write(first, 0, manual=False) == WRITTEN
    # the lease is lost behind a's back (it expired while a stalled) and b takes it
    await raw.delete(key("leader"))
    await b.hold_lease()
    assert b.leading()
    assert a.leading()   # a has not noticed yet: only its next write or renewal tells it
    second = RolloutState.of(state(2, weight=50.0))
    assert await states_a.write(second, 1, manual=False) == NOT_LEADER
    assert not a.leading() and a.leader_since is None and leader_gauge(a) == 0.0
    assert await a.store.rollouts() == {"fraud": state(1)}   # nothing changed
    assert await states_b.write(second, 1, manual=False) == WRITTEN
    assert b.leading()


async def test_renewal_finding_another_holder_deposes(stores: Stores,
                                                      raw: aioredis.Redis) -> None:
    a = member(stores("a"))
    await a.hold_lease()
    assert a.leading()
    await raw.set(key("leader"), "c", px=10_000)   # a's lease expired and c took it
    await a.hold_lease()
    assert not a.leading() and leader_gauge(a) == 0.0
    assert await a.store.leader() == "c"


async def test_manual_write_by_a_follower_does_not_depose_it(stores: Stores) -> None:
    a, b = member(stores("a")), member(stores("b"))
    await a.hold_lease()
    await b.hold_lease()
    assert await FleetStates(b.store, b).write(RolloutState.of(state(1)), 0,
                                               manual=True) == WRITTEN
    assert a.leading() and not b.leading()


async def test_unreachable_store_leads_until_the_lease_runs_out(
        stores: Stores, redis_server: RedisServer) -> None:
    now = [1000.0]
    a = member(stores("a"), clock=lambda: now[0], lease_s=3)
    await a.hold_lease()
    assert a.leading()
    await redis_server.kill()
    now[0] += 2.0
    await bounded(a.hold_lease())   # unreachable: still within the lease of the last renewal
    assert a.leading()
    now[0] += 1.0                   # lease_s since the last renewal
    assert not a.leading()
    await bounded(a.hold_lease())
    assert not a.leading() and leader_gauge(a) == 0.0


# -- fail static ----------------------------------------------------------------------------------

# (id, call, its fallback, the word of ``health`` naming it)
CALLS: list[tuple[str, Callable[[FleetStore], Awaitable[Any]], Any, str]] = [
    ("hold_lease", lambda s: s.hold_lease(10), None, "lease"),
    ("renew_lease", lambda s: s.hold_lease(10), None, "lease"),
    ("leader", lambda s: s.leader(), None, "leader"),
    ("release", lambda s: s.release_lease(), None, "release"),
    ("rollouts", lambda s: s.rollouts(), None, "read rollouts"),
    ("write_rollout", lambda s: s.write_rollout("fraud", state(1), 0, as_leader=False),
     UNREACHABLE, "write rollout"),
    ("heartbeat", lambda s: s.heartbeat({"replica": "a", "last_seen": 1.0}), False,
     "heartbeat"),
    ("replicas", lambda s: s.replicas(), None, "read replicas"),
    ("forget_replicas", lambda s: s.forget_replicas(["x"]), None, "forget replicas"),
    ("append_history", lambda s: s.append_history([{"event": "applied"}]), False,
     "append history"),
    ("save_revision", lambda s: s.save_revision("r1", {"router.yaml": b"x"}), False,
     "save revision"),
    ("attribute", lambda s: s.attribute({"req": b"{}"}, 60), False, "attribute"),
    ("attribution", lambda s: s.attribution("req"), None, "read attribution"),
]


@pytest.mark.parametrize("call, fallback, what", [c[1:] for c in CALLS],
                         ids=[c[0] for c in CALLS])
async def test_dead_store_answers_the_fallback_then_recovers(
        stores: Stores, redis_server: RedisServer, call: Callable[[FleetStore], Awaitable[Any]],
        fallback: Any, what: str) -> None:
    a = stores("a")
    assert await a.heartbeat({"replica": "a"}) is True   # connected once
    assert a.health == "ok"
    await redis_server.kill()
    started = time.monotonic()
    assert await bounded(call(a)) == fallback
    assert time.monotonic() - started < 2.0
    assert a.health.startswith(f"{what}: ConnectionError"), a.health
    assert stores.errors["a"] == 1
    assert a.health in repr(a)
    await redis_server.restart()
    await bounded(call(a))
    assert a.health == "ok" and stores.errors["a"] == 1
    assert await a.heartbeat({"replica": "a"}) is True


async def test_stalled_store_times_out_instead_of_hanging(stores: Stores,
                                                          redis_server: RedisServer) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP): bounded by the socket
    timeout, not by the OS."""
    a = stores("a")
    assert await a.hold_lease(10) is True
    assert redis_server.pid is not None
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        for call, fallback in [(a.hold_lease(10), None),
                               (a.write_rollout("fraud", state(1), 0, as_leader=True),
                                UNREACHABLE)]:
            started = time.monotonic()
            assert await bounded(call) == fallback
            assert time.monotonic() - started < 2.0
        assert "TimeoutError" in a.health and stores.errors["a"] == 2
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    assert await bounded(a.leader()) == "a" and a.health == "ok"


# -- feedback attribution through the store -------------------------------------------------------

def exchange(request_id: str, version: str | None = "v2", inference: bool = True) -> Any:
    """What ``Attribution.exchange`` reads of a proxy ``Exchange``."""
    return SimpleNamespace(request_id=request_id, version=version, inference=inference,
                           route=SimpleNamespace(name="fraud"), revision="0123456789ab")


SERVED = Served("fraud", "v2", "0123456789ab")


async def test_another_replica_finds_the_attribution(stores: Stores,
                                                     raw: aioredis.Redis) -> None:
    here, there = Attribution(stores("a"), ttl_s=600), Attribution(stores("b"), ttl_s=600)
    here.exchange(exchange("req-1"))
    here.exchange(exchange("req-shadowless", version=None))      # refused: no version
    here.exchange(exchange("req-health", inference=False))       # not an inference
    assert await there.find("req-1") is None                     # not flushed yet
    await here.flush()
    assert "pending=0" in repr(here)
    assert await there.find("req-1") == SERVED
    assert await here.find("req-1") == SERVED
    assert await there.find("req-shadowless") is None and await there.find("req-health") is None
    assert 590 <= await raw.ttl(key("attr:req-1")) <= 600


async def test_malformed_attribution_is_not_found(stores: Stores, raw: aioredis.Redis) -> None:
    await raw.set(key("attr:req-9"), b'{"route": "fraud"}')
    assert await Attribution(stores("b")).find("req-9") is None


async def test_attribution_waits_out_a_dead_store(stores: Stores, redis_server: RedisServer,
                                                  ) -> None:
    here, there = Attribution(stores("a"), ttl_s=600), Attribution(stores("b"), ttl_s=600)
    here.exchange(exchange("req-1"))
    await redis_server.kill()
    await bounded(here.flush())
    here.exchange(exchange("req-2"))
    await bounded(here.flush())
    assert "pending=2" in repr(here) and here.dropped == 0
    assert await bounded(there.find("req-1")) is None
    await redis_server.restart()   # empty: nothing was written while it was down
    await here.flush()
    assert "pending=0" in repr(here)
    assert [await there.find(r) for r in ("req-1", "req-2")] == [SERVED, SERVED]


async def test_sub_second_ttl_is_still_written(stores: Stores) -> None:
    here, there = Attribution(stores("a"), ttl_s=0.5), Attribution(stores("b"))
    here.exchange(exchange("req-1"))
    await here.flush()
    assert "pending=0" in repr(here) and stores.errors["a"] == 0
    assert await there.find("req-1") == SERVED


# -- heartbeats, history, revisions ---------------------------------------------------------------

async def test_heartbeats_and_forgetting(stores: Stores) -> None:
    a, b = stores("a"), stores("b")
    assert await a.heartbeat({"replica": "a", "revision": "r1", "last_seen": 1.0})
    assert await a.heartbeat({"replica": "a", "revision": "r2", "last_seen": 2.0})  # replaces
    assert await b.heartbeat({"replica": "b", "revision": "r1", "last_seen": 3.0})
    assert await a.replicas() == {"a": {"replica": "a", "revision": "r2", "last_seen": 2.0},
                                  "b": {"replica": "b", "revision": "r1", "last_seen": 3.0}}
    await a.forget_replicas(["b"])
    await a.forget_replicas([])
    assert list(await a.replicas() or {}) == ["a"]


async def test_history_stream_in_order(stores: Stores, redis_server: RedisServer) -> None:
    a, b = stores("a"), stores("b")
    events = [{"ts": f"2026-05-01T10:00:0{i}.000Z", "event": "applied", "revision": f"r{i}",
               "replica": "a" if i % 2 else "b"} for i in range(5)]
    assert await a.append_history(events[:2]) is True
    assert await b.append_history(events[2:3]) is True
    assert await a.append_history(events[3:]) is True
    assert await asyncio.to_thread(read_history, redis_server.url, FLEET) == events
    assert await asyncio.to_thread(read_history, redis_server.url, "another-fleet") == []


async def test_revision_files_are_stored_once(stores: Stores, raw: aioredis.Redis) -> None:
    a, b = stores("a"), stores("b")
    files = {"router.yaml": b"routes: []\n", "registry.yaml": b"models: {}\n"}
    assert await a.save_revision("0123456789ab", files) is True
    assert await b.save_revision("0123456789ab", {"router.yaml": b"something else"}) is True
    assert await raw.hgetall(key("revision:0123456789ab")) == {
        b"router.yaml": b"routes: []\n", b"registry.yaml": b"models: {}\n"}
    assert await raw.ttl(key("revision:0123456789ab")) == -1   # kept for audits


async def test_malformed_entries_in_the_store_are_skipped(stores: Stores,
                                                          raw: aioredis.Redis) -> None:
    a = stores("a")
    assert await a.write_rollout("fraud", state(1), 0, as_leader=False) == "written"
    await raw.hset(key("rollouts"), mapping={"bad-json": b"{not json", "a-list": b"[1, 2]"})
    await raw.hset(key("replicas"), mapping={"r9": b"\xff\xfe"})
    assert list(await a.rollouts() or {}) == ["fraud"]
    assert await a.replicas() == {}
    assert a.health == "ok"
