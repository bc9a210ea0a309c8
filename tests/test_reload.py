"""Hot reload: file watch (rename and symlink swap), API, bad configs keep the old snapshot."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import (
    admin_url,
    echo_versions,
    rewrite,
    route,
    set_split,
    url,
    wait_for,
    write_config,
)


async def versions_seen(client, app, n: int = 20) -> set[str]:
    seen = set()
    for _ in range(n):
        async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
            seen.add(resp.headers["x-model-version"])
    return seen


async def test_file_change_applies_and_bad_file_keeps_old(tmp_path: Path, upstreams,
                                                          start_router, client) -> None:
    urls = await echo_versions(upstreams, "v1", "v2")
    path = write_config(tmp_path, [route(urls, split={"v1": 100, "v2": 0})])
    app = await start_router(path)
    first = app.live.snapshot.revision
    assert await versions_seen(client, app) == {"v1"}

    rewrite(path, set_split(0, 100))
    await wait_for(lambda: app.live.snapshot.revision != first, timeout=1.0)
    assert await versions_seen(client, app) == {"v2"}
    good = app.live.snapshot.revision

    rewrite(path, set_split(50, 60))
    await wait_for(lambda: app.reloader.last_error is not None, timeout=1.0)
    assert app.live.snapshot.revision == good
    assert await versions_seen(client, app) == {"v2"}
    async with client.get(admin_url(app, "/-/config")) as resp:
        body = await resp.json()
    assert body["revision"] == good
    assert any("weights sum to 110" in e for e in body["last_error"]["errors"])
    assert 'model_router_config_reloads_total{result="error"} 1.0' in app.metrics.render().decode()
    events = [orjson.loads(line) for line in (tmp_path / "state" / "history.jsonl")
              .read_bytes().splitlines()]
    assert [e["event"] for e in events] == ["applied", "applied", "rejected"]
    assert events[1]["routes"]["fraud"]["weights"] == {"v1": 0, "v2": 100}
    assert (tmp_path / "state" / "revisions" / good / "router.yaml").exists()
    assert (tmp_path / "state" / "revisions" / good / "registry.yaml").exists()


async def test_configmap_symlink_swap(tmp_path: Path, upstreams, start_router, client) -> None:
    urls = await echo_versions(upstreams, "v1", "v2")
    data1 = tmp_path / "..data1"
    write_config(data1, [route(urls, split={"v1": 100, "v2": 0})])
    mount = tmp_path / "mount"
    mount.mkdir()
    (tmp_path / "..data").symlink_to(data1.name)
    for name in ("router.yaml", "registry.yaml"):
        (mount / name).symlink_to(Path("..") / "..data" / name)
    # the config refers to state relative to its own folder
    app = await start_router(mount / "router.yaml")
    first = app.live.snapshot.revision
    data2 = tmp_path / "..data2"
    write_config(data2, [route(urls, split={"v1": 0, "v2": 100})])
    tmp_link = tmp_path / "..data_tmp"
    tmp_link.symlink_to(data2.name)
    os.replace(tmp_link, tmp_path / "..data")
    await wait_for(lambda: app.live.snapshot.revision != first, timeout=1.0)
    assert await versions_seen(client, app) == {"v2"}


async def test_api_reload_and_token(tmp_path: Path, upstreams, start_router, client,
                                    monkeypatch) -> None:
    monkeypatch.setenv("TEST_ADMIN_TOKEN", "t0k3n")
    urls = await echo_versions(upstreams, "v1", "v2")
    path = write_config(tmp_path, [route(urls, split={"v1": 100, "v2": 0})],
                        admin={"host": "127.0.0.1", "port": 0, "token_env": "TEST_ADMIN_TOKEN"})
    app = await start_router(path, watch_interval=60)  # the API, not the watcher, reloads
    json = {"Content-Type": "application/json"}  # the admin API takes JSON POSTs only
    async with client.post(admin_url(app, "/-/reload"), headers=json) as resp:
        assert resp.status == 401
    auth = {"Authorization": "Bearer t0k3n", **json}
    rewrite(path, set_split(100, 5))
    async with client.post(admin_url(app, "/-/reload"), headers=auth) as resp:
        assert resp.status == 422
        body = await resp.json()
        assert any("weights sum to 105" in e for e in body["errors"])
    rewrite(path, set_split(0, 100))
    async with client.post(admin_url(app, "/-/reload"), headers=auth) as resp:
        assert resp.status == 200
        revision = (await resp.json())["revision"]
    assert app.live.snapshot.revision == revision
    assert await versions_seen(client, app) == {"v2"}
    async with client.get(admin_url(app, "/-/history")) as resp:
        events = await resp.json()
    assert [e["source"] for e in events] == ["startup", "api", "api"]
    text = (tmp_path / "state" / "history.jsonl").read_text()
    assert "t0k3n" not in text


@pytest.mark.slow
async def test_fifty_rewrites_under_load_lose_nothing(tmp_path: Path, upstreams, start_router,
                                                      client) -> None:
    urls = await echo_versions(upstreams, "v1", "v2")
    path = write_config(tmp_path, [route(urls, split={"v1": 100, "v2": 0})])
    app = await start_router(path)
    failures: list[Any] = []
    stop = asyncio.Event()
    sent = 0

    async def sender() -> None:
        nonlocal sent
        while not stop.is_set():
            async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
                await resp.read()
                sent += 1
                if resp.status != 200:
                    failures.append(resp.status)

    senders = [asyncio.ensure_future(sender()) for _ in range(8)]
    try:
        for i in range(50):
            target = "v2" if i % 2 == 0 else "v1"
            before = app.live.snapshot.revision
            rewrite(path, set_split(0, 100) if target == "v2" else set_split(100, 0))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 1.0
            await wait_for(lambda: app.live.snapshot.revision != before, timeout=1.0)
            # once applied, every new request goes to the new target
            async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
                assert resp.headers["x-model-version"] == target
            assert loop.time() <= deadline
    finally:
        stop.set()
        await asyncio.gather(*senders)
    assert failures == []
    assert sent > 100
