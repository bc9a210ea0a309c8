"""A fleet of three real ``serve`` processes sharing one config, a real Redis and a real
Prometheus scraping them every second; loopback upstreams; traffic spread across replicas.

Each scenario prints what it measured (failover, propagation lag, decision lag, failures);
run with ``-s`` to see it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from fleetctl import ROOT, Fleet, Traffic, Watch
from helpers import flaky, rollout_route, write_config

pytestmark = pytest.mark.slow

LEASE_S = 3


def fleet_config(tmp_path: Path, v1: str, v2: str, redis_url: str, prometheus_url: str,
                 **rollout: Any) -> Path:
    block = {"steps": [10, 50, 100], "step_min_s": 3, "step_min_requests": 60,
             "checks": {"error_rate": {"max_increase": 0.05}}}
    block.update(rollout)
    route = {**rollout_route(v1, v2, **block), "sticky": {"header": "x-user-id"}}
    return write_config(tmp_path / "cfg", [route],
                        fleet={"name": "t", "store": redis_url, "prometheus": prometheus_url,
                               "lease_s": LEASE_S})


@pytest.fixture
async def client():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture
async def fleet_of(tmp_path: Path, client, prometheus_server):
    fleets: list[Fleet] = []

    async def make(config: Path, n: int = 3) -> Fleet:
        fleet = Fleet(config, tmp_path, client)
        fleets.append(fleet)
        replicas = [fleet.add(f"r{i + 1}") for i in range(n)]
        prometheus_server.set_targets([f"127.0.0.1:{r.admin}" for r in replicas])
        for replica in replicas:
            await fleet.start(replica)
        await prometheus_server.wait_for_targets_up(n, timeout=20)
        return fleet

    yield make
    for fleet in fleets:
        await fleet.stop()


def events(redis_url: str) -> list[dict[str, Any]]:
    from router.control.store import read_history
    return read_history(redis_url, "t")


async def until(predicate, timeout: float, every: float = 0.2) -> float:
    """Await ``predicate()`` (async) until true; the seconds it took. Fails at the timeout."""
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(every)
    return time.monotonic() - started


async def rollout_of(fleet: Fleet) -> dict[str, Any]:
    return (await fleet.get(fleet.live()[0], "/-/rollouts"))[0]


async def test_a_rollout_walks_every_step_on_every_replica_through_a_leader_kill(
        tmp_path: Path, upstreams, redis_server, prometheus_server, fleet_of) -> None:
    v1 = await upstreams.start(flaky(200))
    v2 = await upstreams.start(flaky(200))
    fleet = await fleet_of(fleet_config(tmp_path, v1, v2, redis_server.url,
                                        prometheus_server.url))
    traffic = Traffic(fleet, rate=120)
    watch = Watch(fleet)
    load = asyncio.create_task(traffic.run(150))
    watching = asyncio.create_task(watch.run(150))
    try:
        # One leader; it stores the rollout; every replica serves step 1.
        leader = await fleet.leader()
        assert leader is not None
        await until(lambda: _at_step(fleet, 0), 10)

        # Step 1 -> 2 decided on Prometheus's sums over all three replicas.
        await until(lambda: _at_step(fleet, 1), 60)
        stepped = time.time()

        # The leader dies mid-rollout; another replica takes over within lease_s + a few s.
        await fleet.kill(leader)
        killed = time.monotonic()
        new_leader = None

        async def led() -> bool:
            nonlocal new_leader
            new_leader = await fleet.leader()
            return new_leader is not None
        failover = await until(led, LEASE_S + 5, every=0.1)
        assert new_leader is not None and new_leader.id != leader.id
        print(f"\nfailover: new leader {new_leader.id} {failover:.2f} s after SIGKILL "
              f"(lease_s {LEASE_S})")

        # It resumes at step 2 (never back to step 1), then walks on to the end.
        state = await rollout_of(fleet)
        assert state["step"] >= 1 and state["status"] == "running", state
        await until(lambda: _status(fleet, "promoted"), 90)
        decided = time.monotonic() - killed
        print(f"promoted {decided:.1f} s after the kill")
    finally:
        traffic.stop()
        watch.stop()
        await asyncio.gather(load, watching)

    # Every survivor applied every generation; the lag between replicas stayed under 1 s.
    survivors = [r.id for r in fleet.live()]
    lags = watch.lag(survivors)
    print(f"propagation lag per generation (s): "
          f"{ {g: round(v, 3) for g, v in lags.items()} }")
    assert lags and max(lags.values()) < 1.0 + 0.2  # + the watcher's own polling period
    final = {r.id: (await fleet.get(r, "/-/config"))["rollouts"]["fraud"] for r in fleet.live()}
    assert len({(s["generation"], s["weight"], s["status"]) for s in final.values()}) == 1
    assert next(iter(final.values()))["weight"] == 100

    # History: each step once, in order, whoever led; the kill did not restart or repeat one.
    rollout_events = [(e["event"], e["routes"]["fraud"]["step"]) for e in events(
        redis_server.url) if e.get("source") == "rollout"]
    assert rollout_events == [("rollout_step", 0), ("rollout_step", 1), ("rollout_step", 2),
                              ("promoted", 2)], rollout_events
    steps_by = {e["replica"] for e in events(redis_server.url)
                if e.get("source") == "rollout" and e["routes"]["fraud"]["step"] >= 2}
    assert leader.id not in steps_by  # the dead leader wrote nothing after its death
    print(f"traffic: {traffic.sent} sent, codes {traffic.codes}, "
          f"{len(traffic.failures)} failed (the killed replica's in-flight requests)")
    assert traffic.codes.get(200, 0) > 0.95 * traffic.sent
    times = [e["ts"] for e in events(redis_server.url) if e.get("source") == "rollout"]
    print(f"rollout events at {times} (step_min_s 3, scrapes every 1 s)")

    # history --at, fleet-wide: every replica's revision and the weights in force then.
    from router.cli import main
    from router.timefmt import iso
    out = await asyncio.to_thread(_cli_json, main, ["history", "-c", str(fleet.config),
                                                     "--at", iso(stepped + 0.5), "--json"])
    assert set(out["replicas"]) == {"r1", "r2", "r3"}
    for replica in out["replicas"].values():
        assert replica["revision"] == final_revision(fleet.config)
        assert replica["routes"]["fraud"]["weights"] == {"v1": 50, "v2": 50}
        assert replica["routes"]["fraud"]["set_by"]["step"] == 1


def _cli_json(main, argv: list[str]) -> Any:
    import contextlib
    import io
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    return orjson.loads(buffer.getvalue())


def final_revision(config: Path) -> str:
    from router.config import load_snapshot
    return load_snapshot(config).revision


async def _at_step(fleet: Fleet, step: int) -> bool:
    states = [(await fleet.get(r, "/-/config"))["rollouts"].get("fraud") for r in fleet.live()]
    return all(s is not None and s["step"] == step and s["generation"] > 0 for s in states)


async def _status(fleet: Fleet, status: str) -> bool:
    states = [(await fleet.get(r, "/-/config"))["rollouts"].get("fraud") for r in fleet.live()]
    return all(s is not None and s["status"] == status for s in states)


async def test_a_failing_canary_is_rolled_back_on_every_replica(
        tmp_path: Path, upstreams, redis_server, prometheus_server, fleet_of) -> None:
    v1 = await upstreams.start(flaky(200))   # 0.5 % errors
    v2 = await upstreams.start(flaky(4))     # 25 % errors
    fleet = await fleet_of(fleet_config(tmp_path, v1, v2, redis_server.url,
                                        prometheus_server.url, steps=[50, 100],
                                        step_min_s=60))
    traffic = Traffic(fleet, rate=120)
    load = asyncio.create_task(traffic.run(60))
    try:
        took = await until(lambda: _status(fleet, "rolled_back"), 50)
    finally:
        traffic.stop()
        await load
    print(f"\nrolled back on every replica {took:.1f} s after start (step_min_s 60: early "
          "failure at alpha 0.001)")
    state = await rollout_of(fleet)
    assert state["weight"] == 0 and "error_rate" in (state["reason"] or "")
    for replica in fleet.live():
        async with fleet.client.post(replica.url("/v2/models/fraud/infer"), data=b"{}") as resp:
            assert resp.headers["x-model-version"] == "v1"
    rolled = [e for e in events(redis_server.url) if e.get("event") == "rolled_back"]
    assert len(rolled) == 1 and rolled[0]["evidence"]["alpha"] == 0.001


async def test_redis_down_and_back_under_load_fails_no_request(
        tmp_path: Path, upstreams, redis_server, prometheus_server, fleet_of) -> None:
    v1 = await upstreams.start(flaky(None))
    v2 = await upstreams.start(flaky(None))
    fleet = await fleet_of(fleet_config(tmp_path, v1, v2, redis_server.url,
                                        prometheus_server.url, step_min_s=600))
    await until(lambda: _at_step(fleet, 0), 10)
    traffic = Traffic(fleet, rate=150)
    load = asyncio.create_task(traffic.run(60))
    try:
        await asyncio.sleep(2)
        await redis_server.kill()
        await asyncio.sleep(4)
        for replica in fleet.live():  # fail static: ready, serving, the store error shown
            async with fleet.client.get(replica.admin_url("/-/ready")) as resp:
                assert resp.status == 200
            status = await fleet.get(replica, "/-/fleet")
            assert status["store"] != "ok"
            assert not status["leading"]
        metrics = await _metrics(fleet, fleet.live()[0])
        assert _value(metrics, "model_router_fleet_store_errors_total") > 0
        down = dict(traffic.codes)
        await redis_server.restart()

        async def recovered() -> bool:
            states = [await fleet.get(r, "/-/fleet") for r in fleet.live()]
            return all(s["store"] == "ok" for s in states) and \
                sum(s["leading"] for s in states) == 1
        took = await until(recovered, LEASE_S + 5)
        # The restarted Redis is empty: the new leader writes the rollout back at its step.
        await until(lambda: _at_step(fleet, 0), 5)
        await asyncio.sleep(1)
    finally:
        traffic.stop()
        await load
    print(f"\nRedis down 4 s under {traffic.rate:.0f} req/s: codes while down {down}, "
          f"total {traffic.codes}, failures {len(traffic.failures)}; recovered {took:.1f} s "
          "after restart")
    assert traffic.failures == [] and set(traffic.codes) == {200}, traffic.codes


async def _metrics(fleet: Fleet, replica) -> str:
    async with fleet.client.get(replica.admin_url("/metrics")) as resp:
        return await resp.text()


def _value(text: str, metric: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(metric) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_feedback_to_other_replicas_and_sticky_users_agree(
        tmp_path: Path, upstreams, redis_server, prometheus_server, fleet_of) -> None:
    v1 = await upstreams.start(flaky(None))
    v2 = await upstreams.start(flaky(None))
    fleet = await fleet_of(fleet_config(tmp_path, v1, v2, redis_server.url,
                                        prometheus_server.url, steps=[50, 100],
                                        step_min_s=600))
    await until(lambda: _at_step(fleet, 0), 10)
    replicas = fleet.live()

    # The same user gets the same version on every replica.
    for user in range(40):
        seen = set()
        for replica in replicas:
            async with fleet.client.post(replica.url("/v2/models/fraud/infer"), data=b"{}",
                                         headers={"x-user-id": f"user-{user}"}) as resp:
                seen.add(resp.headers["x-model-version"])
        assert len(seen) == 1, (user, seen)

    # Served by r1, feedback posted to r2 and r3: attributed to the version that served.
    served = []
    for i in range(30):
        async with fleet.client.post(replicas[0].url("/v2/models/fraud/infer"), data=b"{}",
                                     headers={"x-request-id": f"fb-{i}"}) as resp:
            served.append((f"fb-{i}", resp.headers["x-model-version"]))
    await asyncio.sleep(0.5)  # within the attribution's batching (100 ms) + a round trip
    for i, (rid, _) in enumerate(served):
        target = replicas[1 + i % 2]
        async with fleet.client.post(target.url("/-/feedback"), json={
                "request_id": rid, "outcome": {"converted": i % 3 == 0}}) as resp:
            assert resp.status == 202
    counted: dict[str, float] = {}
    for replica in replicas[1:]:
        text = await _metrics(fleet, replica)
        for version in ("v1", "v2"):
            counted[version] = counted.get(version, 0) + _value(
                text, "model_router_outcomes_total", version=version, name="converted")
    expected = {v: sum(1 for _, s in served if s == v) for v in ("v1", "v2")}
    assert counted == {v: float(n) for v, n in expected.items()}, (counted, expected)
    # and the feedback records (written within flush_ms) carry the serving version
    def logged() -> dict[str, str]:
        out = {}
        for path in (tmp_path / "cfg" / "logs").glob("predictions-*.jsonl"):
            for line in path.read_bytes().splitlines():
                record = orjson.loads(line)
                if record.get("role") == "feedback":
                    out[record["request_id"]] = record["version"]
        return out

    async def all_logged() -> bool:
        return len(logged()) >= len(served)
    await until(all_logged, 5)
    assert logged() == dict(served)


async def test_prometheus_down_holds_the_rollout_until_it_returns(
        tmp_path: Path, upstreams, redis_server, prometheus_server, fleet_of) -> None:
    v1 = await upstreams.start(flaky(200))
    v2 = await upstreams.start(flaky(4))     # 25 % errors: rolled back once judged
    fleet = await fleet_of(fleet_config(tmp_path, v1, v2, redis_server.url,
                                        prometheus_server.url, steps=[50, 100],
                                        step_min_s=60))
    await prometheus_server.stop()
    traffic = Traffic(fleet, rate=120)
    load = asyncio.create_task(traffic.run(80))
    try:
        await asyncio.sleep(8)
        leader = await fleet.leader()
        assert leader is not None
        status = await fleet.get(leader, "/-/fleet")
        assert status["prometheus"] != "ok" and status["store"] == "ok", status
        assert _value(await _metrics(fleet, leader), "model_router_evidence_errors_total") > 0
        state = await rollout_of(fleet)
        assert state["status"] == "running" and state["weight"] == 50  # no decision made
        for replica in fleet.live():
            async with fleet.client.get(replica.admin_url("/-/ready")) as resp:
                assert resp.status == 200
        await prometheus_server.start()
        took = await until(lambda: _status(fleet, "rolled_back"), 40)
    finally:
        traffic.stop()
        await load
    print(f"\nPrometheus down 8 s: the rollout held; rolled back {took:.1f} s after it returned")
    assert traffic.failures == []


async def test_a_command_to_any_replica_and_fleet_status(
        tmp_path: Path, upstreams, redis_server, prometheus_server, fleet_of) -> None:
    v1 = await upstreams.start(flaky(None))
    v2 = await upstreams.start(flaky(None))
    fleet = await fleet_of(fleet_config(tmp_path, v1, v2, redis_server.url,
                                        prometheus_server.url, step_min_s=600))
    await until(lambda: _at_step(fleet, 0), 10)
    leader = await fleet.leader()
    follower = next(r for r in fleet.live() if r is not leader)

    # pause through a replica that does not lead: every replica serves the paused state
    async with fleet.client.post(follower.admin_url("/-/rollouts/fraud/pause"),
                                 json={}) as resp:
        assert resp.status == 200, await resp.text()
    took = await until(lambda: _status(fleet, "paused"), 2, every=0.05)
    print(f"\npause via {follower.id} (leader {leader.id}) on every replica in {took:.2f} s")
    assert took < 1.0 + 0.2
    async with fleet.client.post(leader.admin_url("/-/rollouts/fraud/pause"),
                                 json={}) as resp:
        assert resp.status == 409  # the leader adopted it: pause applies to running only
    async with fleet.client.post(follower.admin_url("/-/rollouts/fraud/resume"),
                                 json={}) as resp:
        assert resp.status == 200
    await until(lambda: _status(fleet, "running"), 2, every=0.05)
    paused = [e for e in events(redis_server.url) if e.get("event") == "paused"]
    assert paused[0]["replica"] == follower.id
    assert paused[0]["routes"]["fraud"]["reason"] == "pause by admin API"

    # model-router fleet status, asking any replica
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router.cli", "fleet", "status", "-c", str(fleet.config),
        "--admin", f"http://127.0.0.1:{follower.admin}", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, cwd=ROOT)
    out = (await proc.communicate())[0].decode()
    assert proc.returncode == 0, out
    assert f"fleet t: leader {leader.id}; store ok; prometheus" in out
    for replica in fleet.live():
        mark = "*" if replica is leader else " "
        assert f" {mark} {replica.id}: revision " in out, out


async def test_replicas_with_workers_walk_a_rollout_together(
        tmp_path: Path, client, upstreams, redis_server, prometheus_server) -> None:
    """Two replicas, each a supervisor with two workers: every worker reports the step
    (Prometheus sees it through its supervisor's /metrics) and serves the leader's weights."""
    v1 = await upstreams.start(flaky(None))
    v2 = await upstreams.start(flaky(None))
    fleet = Fleet(fleet_config(tmp_path, v1, v2, redis_server.url, prometheus_server.url,
                               steps=[50, 100], step_min_s=2, step_min_requests=40),
                  tmp_path, client)
    replicas = [fleet.add("w1"), fleet.add("w2")]
    prometheus_server.set_targets([f"127.0.0.1:{r.admin}" for r in replicas])
    traffic = Traffic(fleet, rate=80)
    try:
        for replica in replicas:
            await fleet.start(replica, "--workers", "2")
        await prometheus_server.wait_for_targets_up(2, timeout=20)
        load = asyncio.create_task(traffic.run(60))
        try:
            took = await until(lambda: _status(fleet, "promoted"), 50)
        finally:
            traffic.stop()
            await load
    finally:
        await fleet.stop()
    print(f"\n2 replicas x 2 workers: promoted {took:.1f} s after the load began; "
          f"traffic {traffic.codes}, {len(traffic.failures)} failures")
    steps = [(e["event"], e["routes"]["fraud"]["step"]) for e in events(redis_server.url)
             if e.get("source") == "rollout"]
    assert steps == [("rollout_step", 0), ("rollout_step", 1), ("promoted", 1)], steps
    assert traffic.failures == []
