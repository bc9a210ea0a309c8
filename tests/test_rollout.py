"""Progressive rollout with a fake clock and real loopback upstreams."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import (
    Clock,
    admin_url,
    base_route,
    flaky,
    rewrite,
    rollout_route,
    url,
    write_config,
)

from router.config import load_snapshot
from router.control.evidence import Arm
from router.control.judge import check_error_rate, check_latency
from router.errors import ConfigError


async def send(client, app, n: int, concurrency: int = 20) -> dict[str, int]:
    seen: dict[str, int] = {}
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
                await resp.read()
                v = resp.headers.get("x-model-version", "-")
                seen[v] = seen.get(v, 0) + 1

    await asyncio.gather(*[one() for _ in range(n)])
    return seen


async def run_until_decided(client, app, clock: Clock, rounds: int, requests: int,
                            step_s: float) -> None:
    """Send traffic, advance the clock and tick, until the rollout stops running."""
    for _ in range(rounds):
        await send(client, app, requests)
        clock.now += step_s
        await app.rollouts.tick()
        if app.rollouts.states["fraud"].status != "running":
            return


def history(tmp_path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in
            (tmp_path / "state" / "history.jsonl").read_bytes().splitlines()]


def test_split_beside_rollout_names_the_rollout(tmp_path: Path) -> None:
    route = base_route(rollout={"baseline": "v1", "canary": "v2", "steps": [5, 100]})
    path = write_config(tmp_path, [route])
    with pytest.raises(ConfigError) as info:
        load_snapshot(path)
    assert any("split beside rollout" in e and "v1 -> canary v2" in e
               for e in info.value.errors), info.value.errors


def test_statistics_tables() -> None:
    base = Arm(requests=2000, errors=10)
    bad = Arm(requests=500, errors=25)
    same = Arm(requests=500, errors=3)
    assert check_error_rate(base, bad, 0.01, 0.001)["failed"] is True
    assert check_error_rate(base, same, 0.01, 0.05)["failed"] is False
    fast = Arm(latencies=[0.010 + 0.0001 * (i % 10) for i in range(300)])
    slow = Arm(latencies=[0.016 + 0.0001 * (i % 10) for i in range(300)])
    result = check_latency(fast, slow, 1.25, 0.05)
    assert result["failed"] is True and result["quantile"] == "p90"
    assert check_latency(fast, fast, 1.25, 0.05)["failed"] is False


async def test_bad_canary_is_rolled_back_early(tmp_path: Path, upstreams, start_router,
                                               client) -> None:
    v1 = await upstreams.start(flaky(200))   # 0.5% errors
    v2 = await upstreams.start(flaky(20))    # 5% errors
    clock = Clock()
    path = write_config(tmp_path, [rollout_route(v1, v2, steps=[50, 100], step_min_s=600,
                                                 step_min_requests=500)])
    app = await start_router(path, rollout_clock=clock, run_rollouts=False)
    started = clock.now
    await run_until_decided(client, app, clock, rounds=40, requests=100, step_s=1.5)
    state = app.rollouts.states["fraud"]
    assert state.status == "rolled_back" and state.weight == 0
    assert clock.now - started < 600, "rolled back long before the step would end"
    assert await send(client, app, 50) == {"v1": 50}
    event = history(tmp_path)[-1]
    assert event["event"] == "rolled_back" and event["evidence"]["alpha"] == 0.001
    check = event["evidence"]["checks"][0]
    assert check["check"] == "error_rate" and check["p_value"] < 0.001
    assert 'model_router_rollout_step{route="fraud"} 0.0' in app.metrics.render().decode()


@pytest.mark.slow
async def test_healthy_canary_walks_every_step(tmp_path: Path, upstreams, start_router,
                                               client) -> None:
    both = await upstreams.start(flaky(200))  # one server for both arms: same behaviour
    clock = Clock()
    path = write_config(tmp_path, [rollout_route(both, both, step_min_requests=30, checks={
        "error_rate": {"max_increase": 0.01}, "latency_p99": {"max_ratio": 1.5}})])
    app = await start_router(path, rollout_clock=clock, run_rollouts=False)
    weights = []
    for _ in range(12):
        weights.append(app.rollouts.states["fraud"].weight)
        seen = await send(client, app, 400)
        if weights[-1] < 100:
            assert seen.get("v2", 0) > 0
        clock.now += 61
        await app.rollouts.tick()
        if app.rollouts.states["fraud"].status == "promoted":
            break
    assert app.rollouts.states["fraud"].status == "promoted"
    # every step in order; a step may hold a round when noise keeps a check from passing at
    # alpha 0.05 (both arms are one server: holding is the contract, failing would not be)
    steps = [w for i, w in enumerate(weights) if i == 0 or w != weights[i - 1]]
    assert steps[:3] == [10, 50, 100]
    assert await send(client, app, 30) == {"v2": 30}
    events = [e["event"] for e in history(tmp_path) if e["source"] == "rollout"]
    assert events == ["rollout_step", "rollout_step", "rollout_step", "promoted"]
    async with client.get(admin_url(app, "/-/config")) as resp:
        assert (await resp.json())["routes"][0]["weights"] == {"v1": 0.0, "v2": 100.0}


async def test_slower_canary_is_stopped(tmp_path: Path, upstreams, start_router,
                                        client) -> None:
    v1 = await upstreams.start(flaky(None, delay=0.010))
    v2 = await upstreams.start(flaky(None, delay=0.035))  # ratio 3.5: clear of a busy CI
    clock = Clock()
    path = write_config(tmp_path, [rollout_route(
        v1, v2, steps=[50, 100], step_min_s=30, step_min_requests=200,
        checks={"latency_p99": {"max_ratio": 1.25}})])
    app = await start_router(path, rollout_clock=clock, run_rollouts=False)
    await run_until_decided(client, app, clock, rounds=6, requests=300, step_s=31)
    assert app.rollouts.states["fraud"].status == "rolled_back"
    check = history(tmp_path)[-1]["evidence"]["checks"][0]
    assert check["check"] == "latency" and check["quantile"] == "p90"
    assert check["ci_low"] > 1.25


async def test_restart_resumes_and_pause_holds(tmp_path: Path, upstreams, start_router,
                                               client) -> None:
    both = await upstreams.start(flaky(None))
    clock = Clock()
    path = write_config(tmp_path, [rollout_route(both, both, step_min_requests=20)])
    app = await start_router(path, rollout_clock=clock, run_rollouts=False)
    await send(client, app, 400)
    clock.now += 61
    await app.rollouts.tick()
    assert app.rollouts.states["fraud"].weight == 50
    # status shows the new step's evidence (none yet), not the step just judged
    assert app.rollouts.status()[0]["evidence"]["canary"]["requests"] == 0
    await app.stop()

    again = await start_router(path, rollout_clock=clock, run_rollouts=False)
    assert again.rollouts.states["fraud"].weight == 50  # resumed at the same step
    async with client.post(admin_url(again, "/-/rollouts/fraud/pause"), json={}) as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "paused"
    await send(client, again, 300)
    clock.now += 120
    await again.rollouts.tick()
    assert again.rollouts.states["fraud"].weight == 50  # pause holds the weights
    async with client.get(admin_url(again, "/-/rollouts")) as resp:
        status = (await resp.json())[0]
    assert status["status"] == "paused" and status["canary"] == "v2"
    async with client.post(admin_url(again, "/-/rollouts/fraud/resume"), json={}) as resp:
        assert resp.status == 200
    async with client.post(admin_url(again, "/-/rollouts/nope/abort"), json={}) as resp:
        assert resp.status == 404

    # Editing elsewhere keeps the rollout; editing the block restarts it.
    rewrite(path, lambda doc: doc["routes"][0].update(timeout_s=5))
    await again.reloader.reload("api")
    assert again.rollouts.states["fraud"].weight == 50
    rewrite(path, lambda doc: doc["routes"][0]["rollout"].update(steps=[20, 100]))
    await again.reloader.reload("api")
    assert again.rollouts.states["fraud"].weight == 20
    assert again.rollouts.states["fraud"].step == 0


async def test_rollout_cli(tmp_path: Path, upstreams, start_router) -> None:
    import sys
    both = await upstreams.start(flaky(None))
    path = write_config(tmp_path, [rollout_route(both, both)])
    app = await start_router(path, run_rollouts=False)
    admin = f"http://127.0.0.1:{app.admin_port}"

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router.cli", "rollout", *args, "-c", str(path),
            "--admin", admin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1])
        out, _ = await proc.communicate()
        return proc.returncode, out.decode()

    code, out = await cli("status")
    assert code == 0 and "fraud: v1 -> v2 running at 10% (step 1/3)" in out
    code, out = await cli("status", "nosuch")  # a route without a rollout is an error
    assert (code, out) == (1, "no rollout on route nosuch\n")
    # a command prints the rollout as status does; with --json, the admin API's answer
    code, out = await cli("pause", "fraud", "--json")
    assert code == 0 and orjson.loads(out)["status"] == "paused"
    assert orjson.loads(out)["updated"].endswith("Z")  # ISO 8601 UTC, not a Unix time
    code, out = await cli("resume", "fraud")
    assert code == 0 and out.startswith("fraud: v1 -> v2 running at 10% (step 1/3); canary ")
    code, out = await cli("abort", "fraud")
    assert code == 0 and out.startswith(
        "fraud: v1 -> v2 aborted because abort by admin API at 0% (step 1/3); canary ")
    assert app.rollouts.states["fraud"].weight == 0
    code, out = await cli("abort", "nosuch")
    assert (code, out) == (1, "404: no rollout on route nosuch\n")
    code, out = await cli("pause", "fraud", "--json")  # aborted: refused, said as JSON
    assert code == 1 and orjson.loads(out) == {
        "status": 409, "code": "conflict", "error": "cannot pause rollout fraud: it is "
        "aborted (pause applies to a rollout that is running)"}
    code, out = await cli("pause")
    assert code == 2


async def test_history_at_shows_the_rollout_weights_in_force(tmp_path: Path, upstreams,
                                                             start_router, client,
                                                             capsys) -> None:
    from router.cli import main
    from router.timefmt import iso

    both = await upstreams.start(flaky(None))
    clock = Clock()
    clock.now = time.time()  # the applies are stamped by the wall clock: keep the two in order
    path = write_config(tmp_path, [rollout_route(both, both, step_min_requests=20)])
    app = await start_router(path, rollout_clock=clock, run_rollouts=False)
    revision = app.live.snapshot.revision
    started = clock.now
    await send(client, app, 400)
    clock.now += 61
    await app.rollouts.tick()
    assert app.rollouts.states["fraud"].weight == 50
    stepped = clock.now
    clock.now += 60
    await app.rollouts.act("fraud", "abort")
    aborted = clock.now

    def at(ts: float, *flags: str) -> str:
        capsys.readouterr()
        assert main(["history", "-c", str(path), "--at", iso(ts), *flags]) == 0
        return capsys.readouterr().out

    during = orjson.loads(at(stepped + 30, "--json"))
    assert during["revision"] == revision
    assert during["routes"]["fraud"]["weights"] == {"v1": 50, "v2": 50}
    assert during["routes"]["fraud"]["set_by"] == {
        "event": "rollout_step", "ts": iso(stepped), "revision": revision,
        "source": "rollout", "step": 1, "steps": 3, "status": "running", "generation": 2}
    assert f"fraud: v1 50, v2 50 (rollout step 2/3 at {iso(stepped)})" in at(stepped + 30)

    first = orjson.loads(at(started + 30, "--json"))
    assert first["revision"] == revision
    assert first["routes"]["fraud"]["weights"] == {"v1": 90, "v2": 10}
    assert first["routes"]["fraud"]["set_by"]["event"] == "applied"

    after = orjson.loads(at(aborted + 30, "--json"))
    assert after["routes"]["fraud"]["weights"] == {"v1": 100, "v2": 0}
    assert after["routes"]["fraud"]["set_by"]["event"] == "aborted"
    assert f"(rollout aborted at {iso(aborted)}, step 2/3)" in at(aborted + 30)


@pytest.mark.parametrize("max_wait_s, advance, status", [
    (120, 119, "running"), (120, 121, "paused"), (None, 599, "running"), (None, 601, "paused")],
    ids=["before-max-wait", "after-max-wait", "default-before-10x", "default-after-10x"])
async def test_too_little_evidence_holds_then_pauses_no_evidence(
        tmp_path: Path, upstreams, start_router, client, max_wait_s, advance,
        status) -> None:
    both = await upstreams.start(flaky(None))
    clock = Clock()
    block = {"step_min_requests": 10_000, "step_min_s": 60}
    if max_wait_s is not None:
        block["max_wait_s"] = max_wait_s
    path = write_config(tmp_path, [rollout_route(both, both, **block)])
    app = await start_router(path, rollout_clock=clock, run_rollouts=False)
    await send(client, app, 200)
    clock.now += advance
    await app.rollouts.tick()
    state = app.rollouts.states["fraud"]
    assert (state.status, state.weight) == (status, 10)
    if status == "paused":
        assert state.reason.startswith("no_evidence: too little evidence")
        event = history(tmp_path)[-1]
        assert event["event"] == "paused" and event["evidence"]["no_evidence"] is True
        assert event["routes"]["fraud"]["reason"] == state.reason


async def test_the_full_canary_step_is_judged_against_the_baseline_before_it(
        tmp_path: Path, upstreams, start_router, client) -> None:
    """At 100 % no request reaches the baseline: a canary failing there is still caught,
    held to the baseline's figures of the step before (it would pass on "no data")."""
    from aiohttp import web
    failing = {"now": False}

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        if failing["now"]:
            return web.Response(status=500, text="boom")
        return web.json_response({"outputs": [{"name": "score", "shape": [1, 1],
                                               "datatype": "FP64", "data": [0.2]}]})

    canary_app = web.Application()
    canary_app.router.add_post("/m/infer", infer)
    v1 = await upstreams.start(flaky(None))
    v2 = await upstreams.start(canary_app)
    clock = Clock()
    path = write_config(tmp_path, [rollout_route(v1, v2, steps=[50, 100],
                                                 step_min_requests=100)])
    app = await start_router(path, rollout_clock=clock, run_rollouts=False)
    await send(client, app, 400)
    clock.now += 61
    await app.rollouts.tick()
    state = app.rollouts.states["fraud"]
    assert state.weight == 100 and state.status == "running"
    assert state.reference is not None and state.reference["requests"] > 100
    failing["now"] = True
    assert await send(client, app, 200) == {"v2": 200}
    clock.now += 61
    await app.rollouts.tick()
    state = app.rollouts.states["fraud"]
    assert (state.status, state.weight) == ("rolled_back", 0)
    event = history(tmp_path)[-1]
    assert event["evidence"]["baseline"]["requests"] == state.reference["requests"]
    assert event["evidence"]["canary"]["errors"] == 200


STATES = ("running", "paused", "promoted", "rolled_back", "aborted")
ALLOWED = {("pause", "running"): "paused", ("resume", "paused"): "running",
           ("promote", "running"): "promoted", ("promote", "paused"): "promoted",
           ("abort", "running"): "aborted", ("abort", "paused"): "aborted"}


@pytest.mark.parametrize("state, command", [(s, c) for s in STATES
                                            for c in ("pause", "resume", "promote", "abort")],
                         ids=lambda v: v)
async def test_every_command_in_every_state(tmp_path: Path, upstreams, start_router, client,
                                            state: str, command: str) -> None:
    import dataclasses
    both = await upstreams.start(flaky(None))
    path = write_config(tmp_path, [rollout_route(both, both)])
    app = await start_router(path, run_rollouts=False)
    held = app.rollouts.states["fraud"]
    app.rollouts.states["fraud"] = dataclasses.replace(held, status=state)
    async with client.post(admin_url(app, f"/-/rollouts/fraud/{command}"), json={}) as resp:
        body = await resp.json()
        code = resp.status
    after = ALLOWED.get((command, state))
    if after is None:
        assert code == 409, body
        assert f"it is {state}" in body["error"] and body["code"] == "conflict"
        assert app.rollouts.states["fraud"].status == state  # nothing changed
    else:
        assert code == 200 and body["status"] == after, body
        event = history(tmp_path)[-1]
        assert event["routes"]["fraud"]["status"] == after
        if after != "running":
            assert event["routes"]["fraud"]["reason"] == f"{command} by admin API"


async def test_the_first_rollout_event_names_the_revision_that_starts_it(
        tmp_path: Path, upstreams, start_router) -> None:
    both = await upstreams.start(flaky(None))
    path = write_config(tmp_path, [base_route()])  # a plain split first
    app = await start_router(path, run_rollouts=False)
    first = app.live.snapshot.revision
    rewrite(path, lambda doc: doc["routes"].__setitem__(0, rollout_route(both, both)))
    applied = await app.reloader.reload("api")
    started = [e for e in history(tmp_path) if e["event"] == "rollout_step"]
    assert applied.revision != first
    assert [e["revision"] for e in started] == [applied.revision]


async def test_rollout_state_gauges_follow_the_state_and_go_with_the_block(
        tmp_path: Path, upstreams, start_router, client) -> None:
    both = await upstreams.start(flaky(None))
    path = write_config(tmp_path, [rollout_route(both, both)])
    app = await start_router(path, run_rollouts=False)

    def states() -> dict[str, float]:
        text = app.metrics.render().decode()
        return {s: float(line.rsplit(" ", 1)[1]) for s in ("running", "paused", "promoted",
                                                            "rolled_back", "aborted")
                for line in text.splitlines()
                if line.startswith(f'model_router_rollout_state{{route="fraud",state="{s}"}}')}

    assert states() == {"running": 1, "paused": 0, "promoted": 0, "rolled_back": 0,
                        "aborted": 0}
    async with client.post(admin_url(app, "/-/rollouts/fraud/pause"), json={}) as resp:
        assert resp.status == 200
    assert states()["paused"] == 1 and states()["running"] == 0
    assert app.metrics.render().decode().count("model_router_config_last_reload_successful 1.0")
    rewrite(path, lambda doc: doc["routes"][0].update(rollout={"oops": 1}))
    with pytest.raises(ConfigError):
        await app.reloader.reload("api")
    assert "model_router_config_last_reload_successful 0.0" in app.metrics.render().decode()
    rewrite(path, lambda doc: doc["routes"].__setitem__(0, base_route()))
    await app.reloader.reload("api")  # the rollout block is gone: so are its gauges
    text = app.metrics.render().decode()
    assert "model_router_rollout_state{" not in text
    assert 'model_router_rollout_step{route="fraud"}' not in text
    assert "model_router_config_last_reload_successful 1.0" in text
