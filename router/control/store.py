"""The fleet store: what replicas share, in Redis (README.md "Running a fleet").

Keys live under ``model-router:<fleet name>:``:

- ``leader``: the lease, the leader's replica id with a TTL of ``lease_s`` (SET NX PX; renewed
  and released by scripts that first check the holder, so a replica never extends or drops a
  lease it lost);
- ``rollouts``: route -> rollout state (JSON with its ``generation``). Every write is a
  compare-and-set on the generation in one script; the controller's writes also require
  that the writer still holds the lease, so a deposed leader's write fails. A successful
  write publishes the route on the ``weights`` channel;
- ``replicas``: replica id -> its heartbeat (revision, rollout generations and steps, time);
- ``history``: a stream of applies, rejections and rollout events, with the replica;
- ``revision:<rev>``: the files of each revision any replica applied;
- ``attr:<request id>``: route, version and revision that served it, with a TTL.

Every call is bounded by a short socket timeout. A failure is counted
(``fleet_store_errors_total``), remembered for ``/-/fleet``, and answered with the caller's
fallback: the fleet fails static, it never fails a request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("model_router.fleet")

T = TypeVar("T")

SOCKET_TIMEOUT_S = 1.0
HISTORY_MAXLEN = 100_000

# KEYS: rollouts hash, leader key. ARGV: route, expected generation, new state JSON,
# "1" when the writer must hold the lease, replica id, channel.
_CAS = """
if ARGV[4] == '1' and redis.call('GET', KEYS[2]) ~= ARGV[5] then return -1 end
local current = redis.call('HGET', KEYS[1], ARGV[1])
local generation = 0
if current then generation = tonumber(cjson.decode(current)['generation']) or 0 end
if generation ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', ARGV[6], ARGV[1])
return 1
"""
# KEYS: leader key. ARGV: replica id, lease in ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: attribution keys. ARGV: TTL in ms, then one value per key. One command per batch:
# a pipeline of SETs costs ~10x more client CPU per entry (measured in loadtest/README.md).
_ATTRIBUTE = """
for i, key in ipairs(KEYS) do redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1]) end
return #KEYS
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# The outcome of a compare-and-set.
WRITTEN, STALE, NOT_LEADER, UNREACHABLE = "written", "stale", "not_leader", "unreachable"


class FleetStore:
    """One fleet's keys in Redis. ``errors`` counts failed calls; ``health`` is "ok" or the
    last error, for ``/-/fleet``."""

    def __init__(self, url: str, fleet: str, replica: str,
                 on_error: Callable[[], None] = lambda: None) -> None:
        self.url = url
        self.fleet = fleet
        self.replica = replica
        self.prefix = f"model-router:{fleet}:"
        self.channel = self.prefix + "weights"
        self.health = "not connected yet"
        self._on_error = on_error
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry_on_timeout=False, health_check_interval=0)
        self._cas = self._redis.register_script(_CAS)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._attribute = self._redis.register_script(_ATTRIBUTE)

    def __repr__(self) -> str:
        return f"<FleetStore {self.prefix} replica={self.replica} {self.health}>"

    def key(self, name: str) -> str:
        return self.prefix + name

    async def call(self, what: str, op: Awaitable[T], fallback: T) -> T:
        """Await ``op``; on a Redis or network error count it and return ``fallback``."""
        try:
            result = await op
        except (RedisError, OSError) as exc:
            self._on_error()
            if self.health == "ok":
                log.warning("fleet store %s: %s failed: %s", self.url, what, exc)
            self.health = f"{what}: {type(exc).__name__}: {exc}"
            return fallback
        self.health = "ok"
        return result

    async def close(self) -> None:
        await self._redis.aclose()

    # -- the lease ---------------------------------------------------------------------------

    async def hold_lease(self, lease_s: float) -> bool | None:
        """Take the lease if free, renew it if ours; True when ours now, None unreachable."""
        ms = int(lease_s * 1000)

        async def attempt() -> bool:
            # Renew first, also when this replica believes it lost the lease: a key that
            # still names it is its own (say, a renewal answered after its deadline).
            if await self._renew(keys=[self.key("leader")], args=[self.replica, ms]):
                return True
            return bool(await self._redis.set(self.key("leader"), self.replica, nx=True, px=ms))
        return await self.call("lease", attempt(), None)

    async def leader(self) -> str | None:
        value = await self.call("leader", self._redis.get(self.key("leader")), None)
        return _text(value) if value is not None else None

    async def release_lease(self) -> None:
        await self.call("release", self._release(keys=[self.key("leader")],
                                                 args=[self.replica]), 0)

    # -- rollout state -----------------------------------------------------------------------

    async def rollouts(self) -> dict[str, dict[str, Any]] | None:
        """Every route's stored rollout state; None when the store is unreachable."""
        raw = await self.call("read rollouts", self._redis.hgetall(self.key("rollouts")), None)
        return None if raw is None else _documents(raw, "rollouts")

    async def write_rollout(self, route: str, state: Mapping[str, Any], expected: int,
                            as_leader: bool) -> str:
        """Compare-and-set ``state`` (whose generation is ``expected`` + 1) for ``route``."""
        result = await self.call("write rollout", self._cas(
            keys=[self.key("rollouts"), self.key("leader")],
            args=[route, expected, orjson.dumps(state), "1" if as_leader else "0",
                  self.replica, self.channel]), None)
        if result is None:
            return UNREACHABLE
        return {1: WRITTEN, 0: STALE, -1: NOT_LEADER}[int(result)]

    def subscribe(self) -> Any:
        """A pub/sub of the weights channel (the caller reads and closes it)."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        return pubsub

    # -- replicas ----------------------------------------------------------------------------

    async def heartbeat(self, status: Mapping[str, Any]) -> bool:
        return await self.call("heartbeat", self._redis.hset(
            self.key("replicas"), self.replica, orjson.dumps(status)), None) is not None

    async def replicas(self) -> dict[str, dict[str, Any]] | None:
        raw = await self.call("read replicas", self._redis.hgetall(self.key("replicas")), None)
        return None if raw is None else _documents(raw, "replicas")

    async def forget_replicas(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if ids:
            await self.call("forget replicas", self._redis.hdel(self.key("replicas"), *ids), 0)

    # -- history and revisions -----------------------------------------------------------------

    async def append_history(self, events: list[dict[str, Any]]) -> bool:
        """Append events to the fleet's history stream (one round trip); False if it failed."""
        async def write() -> bool:
            async with self._redis.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.xadd(self.key("history"), {"event": orjson.dumps(event)},
                              maxlen=HISTORY_MAXLEN, approximate=True)
                await pipe.execute()
            return True
        return await self.call("append history", write(), False)

    async def save_revision(self, revision: str, files: Mapping[str, bytes]) -> bool:
        key = self.key(f"revision:{revision}")

        async def write() -> bool:
            if not await self._redis.exists(key):
                await self._redis.hset(key, mapping=dict(files))  # type: ignore[arg-type]
            return True
        return await self.call("save revision", write(), False)

    # -- feedback attribution ------------------------------------------------------------------

    async def attribute(self, entries: Mapping[str, bytes], ttl_s: float) -> bool:
        """Write request id -> attribution for a batch, each with a TTL (one command)."""
        async def write() -> bool:
            prefix = self.key("attr:")
            await self._attribute(keys=[prefix + rid for rid in entries],
                                  args=[max(1, int(ttl_s * 1000)), *entries.values()])
            return True
        return await self.call("attribute", write(), False)

    async def attribution(self, request_id: str) -> bytes | None:
        value = await self.call("read attribution",
                                self._redis.get(self.key(f"attr:{request_id}")), None)
        return value.encode() if isinstance(value, str) else value


def read_history(url: str, fleet: str) -> list[dict[str, Any]]:
    """The fleet's history stream, oldest first (for the CLI; blocking). Raises RedisError."""
    import redis
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        entries: Any = client.xrange(f"model-router:{fleet}:history")
    finally:
        client.close()
    return [orjson.loads(fields[b"event"]) for _, fields in entries]


def _documents(raw: Mapping[Any, Any], what: str) -> dict[str, dict[str, Any]]:
    """A hash of JSON objects; an entry that is not one is skipped with a warning."""
    out = {}
    for key, value in raw.items():
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            out[_text(key)] = doc
        else:
            log.warning("fleet store: %s[%s] is not a JSON object; ignored", what, _text(key))
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
