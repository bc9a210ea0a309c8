"""The admin API's answers as a person reads them: times in ISO 8601 UTC, converted at the
boundary (the rollout states and the file they persist to keep Unix floats), and a rollout
command answered with the rollout as ``GET /-/rollouts`` shows it."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from helpers import Clock, admin_url, flaky, rewrite, rollout_route, set_split, write_config

from router.errors import ConfigError

ROLLOUT_TIMES = ("step_started", "updated", "window_start")


async def test_rollout_times_read_as_iso_8601_and_are_stored_as_floats(
        tmp_path: Path, upstreams, start_router, client) -> None:
    both = await upstreams.start(flaky(None))
    clock = Clock(1_800_000_000.0)
    path = write_config(tmp_path, [rollout_route(both, both)])
    app = await start_router(path, rollout_clock=clock, run_rollouts=False)

    async with client.get(admin_url(app, "/-/rollouts")) as resp:
        row = (await resp.json())[0]
    assert {k: row[k] for k in ROLLOUT_TIMES} == dict.fromkeys(
        ROLLOUT_TIMES, "2027-01-15T08:00:00.000Z")

    clock.now += 90.5
    async with client.post(admin_url(app, "/-/rollouts/fraud/pause"), json={}) as resp:
        assert resp.status == 200
        paused = await resp.json()
    # the command's answer is the rollout as /-/rollouts shows it, after the command
    assert paused["status"] == "paused" and paused["reason"] == "pause by admin API"
    assert (paused["baseline"], paused["canary"], paused["steps"]) == ("v1", "v2", [10, 50, 100])
    assert set(paused["evidence"]) == {"baseline", "canary"}
    assert paused["step_started"] == "2027-01-15T08:00:00.000Z"
    assert paused["updated"] == "2027-01-15T08:01:30.500Z"
    async with client.get(admin_url(app, "/-/rollouts")) as resp:
        assert (await resp.json()) == [paused]

    # inside and on disk: Unix floats, as the fleet store and a restart read them
    stored = orjson.loads((tmp_path / "state" / "rollouts.json").read_bytes())["fraud"]
    assert (stored["step_started"], stored["updated"]) == (1_800_000_000.0, 1_800_000_090.5)
    assert app.rollouts.states["fraud"].updated == 1_800_000_090.5


@pytest.mark.parametrize("command", ["abort", "pause"])
async def test_a_command_on_a_route_without_a_rollout_says_so(
        tmp_path: Path, upstreams, start_router, client, command: str) -> None:
    both = await upstreams.start(flaky(None))
    app = await start_router(write_config(tmp_path, [rollout_route(both, both)]),
                             run_rollouts=False)
    async with client.post(admin_url(app, f"/-/rollouts/nosuch/{command}"), json={}) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "no rollout on route nosuch",
                                     "code": "no_rollout"}


def _iso_near_now(text: str) -> bool:
    """An ISO 8601 UTC time with milliseconds and a Z, within a minute of now."""
    if len(text) != len("2026-11-28T10:00:00.000Z") or not text.endswith("Z"):
        return False
    return abs(datetime.fromisoformat(text[:-1] + "+00:00").timestamp() - time.time()) < 60


async def test_config_times_read_as_iso_8601(tmp_path: Path, upstreams, start_router,
                                             client) -> None:
    from router.timefmt import iso

    v1, v2 = await upstreams.start(flaky(None)), await upstreams.start(flaky(None))
    path = write_config(tmp_path, [{
        "name": "fraud", "match": {"path_prefix": "/v2/models/fraud"}, "protocol": "v2",
        "model": "fraud", "versions": {"v1": {"url": v1 + "/m"}, "v2": {"url": v2 + "/m"}},
        "split": {"v1": 100, "v2": 0}}])
    app = await start_router(path)
    async with client.get(admin_url(app, "/-/config")) as resp:
        body = await resp.json()
    assert body["loaded_at"] == iso(app.live.snapshot.loaded_at)
    assert _iso_near_now(body["loaded_at"]), body["loaded_at"]
    assert body["last_error"] is None

    rewrite(path, set_split(50, 60))
    with pytest.raises(ConfigError):
        await app.reloader.reload("api")
    async with client.get(admin_url(app, "/-/config")) as resp:
        error = (await resp.json())["last_error"]
    assert _iso_near_now(error["ts"]), error
    assert error["source"] == "api" and any("weights sum to 110" in e for e in error["errors"])
    assert isinstance(app.reloader.last_error["ts"], float)  # inside: a Unix time
