"""Hostile files and admin callers: what a config, a registry, a baseline or a web page gets.

Contract: DESIGN.md "Hardening rules" (Admin; Files from config). Every hostile file is a config
error in the usual "file: path: reason" form, found quickly, before anything serves it: `check`
exits 1, a reload is rejected with the old config still serving (on both ports) and nothing
recorded as applied. Admin POSTs that a web page could send (another Origin, a "simple"
content type) are refused, and a token that is named but missing never opens the API.
"""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import (
    REGISTRY,
    admin_url,
    rewrite,
    rollout_route,
    url,
    wait_for,
    write_config,
)

from router.config import load_snapshot
from router.errors import ConfigError
from router.process.app import RouterApp

ROOT = Path(__file__).resolve().parents[2]
BASELINE_LIMIT = 64 * 1024 * 1024  # DESIGN.md: a baseline is at most 64 MB

GOOD_BASELINE = {"schema": "fraud-features@1", "rows": 10, "features": {
    "amount": {"kind": "numeric", "edges": [0, 10, 100], "fractions": [0.5, 0.5]},
    "country": {"kind": "categorical", "fractions": {"US": 0.6, "DE": 0.4}}}}


def plain_route(**version: Any) -> dict[str, Any]:
    return {"name": "fraud", "match": {"path_prefix": "/v2/models/fraud"}, "protocol": "v2",
            "model": "fraud", "input_schema": "fraud-features@1",
            "versions": {"v1": {"url": "http://127.0.0.1:9001/m", **version}},
            "split": {"v1": 100}}


def with_baseline(folder: Path, key: str, target: str) -> dict[str, Any]:
    """REGISTRY with v1's ``key`` (baseline or output_baseline) naming ``target``."""
    registry = copy.deepcopy(REGISTRY)
    registry["models"]["fraud"]["versions"]["v1"][key] = target
    (folder / "baselines").mkdir(parents=True, exist_ok=True)
    return registry


# -- hostile files: each builder writes one into a folder, returns (router.yaml, env) -----------

Made = tuple[Path, dict[str, str]]


def admin(spec: dict[str, Any], env: dict[str, str] | None = None) -> Callable[[Path], Made]:
    def make(folder: Path) -> Made:
        return write_config(folder, [plain_route()], admin={"port": 0, **spec}), env or {}
    return make


def version(env: dict[str, str] | None = None, **spec: Any) -> Callable[[Path], Made]:
    def make(folder: Path) -> Made:
        route = plain_route(**spec)
        if "urls" in spec:
            del route["versions"]["v1"]["url"]
        return write_config(folder, [route]), env or {}
    return make


def baseline(content: bytes | Callable[[Path], None] | None, key: str = "baseline",
             target: str = "baselines/v1.json") -> Callable[[Path], Made]:
    """A baseline file: these bytes, or made by a function of its path, or absent (None)."""
    def make(folder: Path) -> Made:
        registry = with_baseline(folder, key, target)
        path = folder / target
        if callable(content):
            content(path)
        elif content is not None:
            path.write_bytes(content)
        return write_config(folder, [plain_route()], registry=registry), {}
    return make


def shaped(**changes: Any) -> bytes:
    """GOOD_BASELINE with features replaced."""
    return orjson.dumps({**GOOD_BASELINE, "features": changes})


def sparse(size: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        with open(path, "wb") as f:
            f.truncate(size)
    return make


def bomb(levels: int, where: str = "router.yaml") -> Callable[[Path], Made]:
    """The billion laughs in YAML: level k is 10 aliases of level k-1, 10^levels leaves."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        prev, this = chr(96 + i), chr(97 + i)
        lines.append(f"{this}: &{this} [" + ", ".join([f"*{prev}"] * 10) + "]")
    text = "\n".join(lines) + "\n"

    def make(folder: Path) -> Made:
        path = write_config(folder, [plain_route()])
        target = folder / where
        target.write_text(text + target.read_text())
        return path, {}
    return make


def cycle(folder: Path) -> Made:
    path = write_config(folder, [plain_route()])
    path.write_text("loop: &loop [*loop]\n" + path.read_text())
    return path, {}


V1 = "registry.yaml: models.fraud.versions.v1"
ROUTE = "router.yaml: routes[fraud].versions.v1"

HOSTILE_FILES = [
    # Admin fails closed
    pytest.param(admin({"host": "127.0.0.1", "token_env": "HOSTILE_UNSET_TOKEN"}),
                 "router.yaml: admin.token_env: environment variable HOSTILE_UNSET_TOKEN is "
                 "not set", id="admin-token_env-unset"),
    pytest.param(admin({"host": "127.0.0.1", "token_env": "HOSTILE_EMPTY_TOKEN"},
                       {"HOSTILE_EMPTY_TOKEN": ""}),
                 "router.yaml: admin.token_env: environment variable HOSTILE_EMPTY_TOKEN is "
                 "empty", id="admin-token_env-empty"),
    pytest.param(admin({"host": "0.0.0.0"}),
                 "router.yaml: admin.host: 0.0.0.0 is not a loopback address",
                 id="admin-0.0.0.0-without-token"),
    pytest.param(admin({"host": "::"}), "router.yaml: admin.host: :: is not a loopback",
                 id="admin-ipv6-any-without-token"),
    pytest.param(admin({"host": "admin.example.com"}),
                 "router.yaml: admin.host: admin.example.com is not a loopback",
                 id="admin-hostname-without-token"),
    # CR, LF, NUL in what is written into every upstream request
    pytest.param(version({"HOSTILE_V1_TOKEN": "t\r\nX-Injected: yes"},
                         headers={"authorization": "Bearer ${HOSTILE_V1_TOKEN}"}),
                 f"{ROUTE}.headers.authorization: header value contains CR",
                 id="header-value-crlf-from-env"),
    pytest.param(version(headers={"x-tenant": "a\x00b"}),
                 f"{ROUTE}.headers.x-tenant: header value contains NUL", id="header-value-nul"),
    pytest.param(version(headers={"x-a\r\nX-Injected": "yes"}),
                 f"{ROUTE}.headers.'x-a\\r\\nX-Injected': header name must be a token",
                 id="header-name-crlf"),
    pytest.param(version(headers={"x-a: yes\nx-b": "v"}), "header name must be a token",
                 id="header-name-colon-lf"),
    pytest.param(version(host="fraud.example.com\r\nX-Injected: yes"),
                 f"{ROUTE}.host: must be a host[:port], got CR", id="host-crlf"),
    pytest.param(version(host="fraud.example.com\x00"),
                 f"{ROUTE}.host: must be a host[:port], got NUL", id="host-nul"),
    pytest.param(version(url="http://127.0.0.1:9001/m\r\nX-Injected: yes"),
                 f"{ROUTE}.url: URL contains CR", id="url-crlf"),
    pytest.param(version(urls=["http://127.0.0.1:9001/m", "http://127.0.0.1:9002/m\nX: 1"]),
                 f"{ROUTE}.urls[1]: URL contains LF", id="urls-item-lf"),
    pytest.param(version(url="http://127.0.0.1:9001/m\x00"), f"{ROUTE}.url: URL contains NUL",
                 id="url-nul"),
    pytest.param(version(url="http://127.0.0.1:9001/m HTTP/1.0\tx"),
                 f"{ROUTE}.url: URL contains whitespace", id="url-space"),
    # Baselines: a regular file, at most 64 MB, the documented shape
    pytest.param(baseline(lambda p: os.mkfifo(p)), "is a FIFO, not a regular file",
                 id="baseline-fifo"),
    pytest.param(baseline(None, target="/dev/zero"),
                 f"{V1}.baseline: /dev/zero is a character device", id="baseline-dev-zero"),
    pytest.param(baseline(lambda p: p.symlink_to("/dev/zero")),
                 "v1.json is a character device", id="baseline-symlink-to-dev-zero"),
    pytest.param(baseline(lambda p: p.mkdir()), "is a directory", id="baseline-directory"),
    pytest.param(baseline(sparse(BASELINE_LIMIT + 1)),
                 f"bytes, over the {BASELINE_LIMIT} byte limit", id="baseline-over-64MB"),
    pytest.param(baseline(None), f"{V1}.baseline: cannot read", id="baseline-missing"),
    pytest.param(baseline(b"[1]"),
                 f"{V1}.baseline: v1.json: expected a JSON object with features, got a list",
                 id="baseline-[1]"),
    pytest.param(baseline(b'{"features": '), "v1.json is not JSON", id="baseline-not-json"),
    pytest.param(baseline(b'{"features": {"amount": 1}}'),
                 "features.amount: expected an object with kind numeric or categorical",
                 id="baseline-feature-not-an-object"),
    pytest.param(baseline(shaped(amount={"kind": "numeric", "edges": [10, 0],
                                         "fractions": [1]})),
                 "v1.json: features.amount.edges: must increase", id="baseline-edges-decrease"),
    pytest.param(baseline(shaped(amount={"kind": "numeric", "edges": [0, 1, 2],
                                         "fractions": [1]})),
                 "features.amount.fractions: expected 2 fractions",
                 id="baseline-fraction-per-bin-missing"),
    pytest.param(baseline(shaped(amount={"kind": "numeric", "edges": [0, "1e400"],
                                         "fractions": [1]})),
                 "features.amount.edges: expected a list of at least 2 finite numbers",
                 id="baseline-edge-not-a-number"),
    pytest.param(baseline(shaped(score={"kind": "categorical", "fractions": [0.5]}),
                          key="output_baseline"),
                 f"{V1}.output_baseline: v1.json: features.score.fractions: expected an object",
                 id="output_baseline-categorical-list"),
    # YAML aliases: capped, and never a cycle
    pytest.param(bomb(6), "router.yaml: invalid YAML: aliases expand this document by more "
                 "than 100000 values", id="alias-bomb-1e6-leaves"),
    pytest.param(bomb(8), "router.yaml: invalid YAML: aliases expand this document by more "
                 "than 100000 values", id="alias-bomb-1e8-leaves"),
    pytest.param(bomb(8, where="registry.yaml"), "registry.yaml: invalid YAML: aliases expand",
                 id="alias-bomb-in-registry"),
    pytest.param(cycle, "router.yaml: invalid YAML: an alias refers to a value that contains it",
                 id="alias-cycle"),
]


@pytest.mark.parametrize("make, expected", HOSTILE_FILES)
def test_hostile_file_is_a_config_error(tmp_path: Path, make: Callable[[Path], Made],
                                        expected: str) -> None:
    path, env = make(tmp_path)
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_snapshot(path, env=env)
    assert time.monotonic() - started < 2.0  # refused before any expensive work
    assert any(expected in e for e in info.value.errors), info.value.errors
    assert all(e.startswith(("router.yaml: ", "registry.yaml: ")) for e in info.value.errors)


@pytest.mark.parametrize("make, expected", [
    p for p in HOSTILE_FILES if p.id in ("admin-token_env-unset", "admin-0.0.0.0-without-token",
                                         "header-name-crlf", "baseline-fifo", "baseline-[1]",
                                         "alias-bomb-1e8-leaves")])
def test_check_exits_1_on_hostile_file(tmp_path: Path, make: Callable[[Path], Made],
                                       expected: str) -> None:
    path, env = make(tmp_path)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HOSTILE_")}
    done = subprocess.run([sys.executable, "-m", "router.cli", "check", "-c", str(path)],
                          capture_output=True, text=True, cwd=ROOT, env={**environ, **env},
                          timeout=60)
    assert done.returncode == 1, done.stdout
    assert expected in done.stderr, done.stderr
    assert done.stderr.splitlines()[1:] == ["1 error(s)"]  # one error, on one line


# -- admin POSTs a web page could send -----------------------------------------------------------

def headers_for(**given: str) -> Callable[[int], dict[str, str]]:
    """Request headers; {port} in a value is the admin port."""
    return lambda port: {k.replace("_", "-"): v.format(port=port) for k, v in given.items()}


ADMIN_POSTS = [
    # (path, headers, status, the canary's weight afterwards: 10 = untouched, 100 = promoted)
    pytest.param("/-/rollouts/fraud/promote",
                 headers_for(Origin="http://evil.example", Content_Type="text/plain"), 403, 10,
                 id="cross-origin-simple-post-text/plain"),
    pytest.param("/-/rollouts/fraud/promote",
                 headers_for(Origin="http://evil.example",
                             Content_Type="application/x-www-form-urlencoded"), 403, 10,
                 id="cross-origin-form"),
    pytest.param("/-/rollouts/fraud/promote",
                 headers_for(Origin="http://evil.example", Content_Type="application/json"),
                 403, 10, id="cross-origin-json"),
    pytest.param("/-/rollouts/fraud/promote",
                 headers_for(Origin="null", Content_Type="application/json"), 403, 10,
                 id="origin-null-sandboxed-page"),
    pytest.param("/-/rollouts/fraud/promote",
                 headers_for(Origin="http://127.0.0.1:1", Content_Type="application/json"),
                 403, 10, id="origin-another-local-port"),
    pytest.param("/-/rollouts/fraud/promote",
                 headers_for(Origin="http://rebound.example:{port}",
                             Host="rebound.example:{port}", Content_Type="application/json"),
                 403, 10, id="dns-rebinding-origin-equals-host"),
    pytest.param("/-/reload",
                 headers_for(Origin="http://evil.example", Content_Type="text/plain"), 403, 10,
                 id="reload-cross-origin-simple-post"),
    pytest.param("/-/rollouts/fraud/promote",
                 headers_for(Origin="http://127.0.0.1:{port}", Content_Type="text/plain"),
                 415, 10, id="own-origin-text/plain"),
    pytest.param("/-/rollouts/fraud/promote",
                 headers_for(Content_Type="application/x-www-form-urlencoded"), 415, 10,
                 id="no-origin-form"),
    pytest.param("/-/rollouts/fraud/promote", headers_for(), 415, 10,
                 id="no-content-type"),
    pytest.param("/-/rollouts/fraud/promote", headers_for(Content_Type="application/json"),
                 200, 100, id="ok-cli-json-without-origin"),
    pytest.param("/-/rollouts/fraud/promote",
                 headers_for(Origin="http://localhost:{port}",
                             Content_Type="application/json; charset=utf-8"), 200, 100,
                 id="ok-own-origin-localhost-json"),
]


@pytest.mark.parametrize("path, headers, status, weight", ADMIN_POSTS)
async def test_admin_post_from_a_web_page_is_refused(
        tmp_path: Path, upstreams, start_router, client, path: str,
        headers: Callable[[int], dict[str, str]], status: int, weight: float) -> None:
    v1, v2 = await upstreams.echo("v1"), await upstreams.echo("v2")
    app = await start_router(write_config(tmp_path, [rollout_route(v1, v2)]),
                             run_rollouts=False)
    assert app.rollouts.states["fraud"].weight == 10
    async with client.post(admin_url(app, path), data=b"{}",
                           headers=headers(app.admin_port)) as resp:
        assert resp.status == status, await resp.text()
    assert app.rollouts.states["fraud"].weight == weight


async def test_admin_token_that_vanishes_fails_closed(tmp_path: Path, upstreams, start_router,
                                                      client, monkeypatch) -> None:
    monkeypatch.setenv("HOSTILE_ADMIN_TOKEN", "t0k3n")
    v1, v2 = await upstreams.echo("v1"), await upstreams.echo("v2")
    app = await start_router(write_config(
        tmp_path, [rollout_route(v1, v2)],
        admin={"host": "127.0.0.1", "port": 0, "token_env": "HOSTILE_ADMIN_TOKEN"}),
        run_rollouts=False)
    monkeypatch.delenv("HOSTILE_ADMIN_TOKEN")
    async with client.post(admin_url(app, "/-/rollouts/fraud/promote"), json={}) as resp:
        assert resp.status == 401
    assert app.rollouts.states["fraud"].weight == 10


# -- bad baselines by reload: rejected, old config serving, nothing applied -----------------------

def registry_naming(path: Path, target: Path) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        doc["models"]["fraud"]["versions"]["v1"]["baseline"] = str(target)
    return mutate


async def serving_with_baseline(tmp_path: Path, upstreams, start_router,
                                **kwargs: Any) -> RouterApp:
    registry = with_baseline(tmp_path, "baseline", "baselines/good.json")
    (tmp_path / "baselines" / "good.json").write_bytes(orjson.dumps(GOOD_BASELINE))
    v1 = await upstreams.echo("v1")
    route = {**plain_route(), "versions": {"v1": {"url": v1 + "/m"}}}
    app = await start_router(write_config(tmp_path, [route], registry=registry), **kwargs)
    assert app.drift.inputs  # the good baseline is in use
    return app


async def assert_old_config_serves(app: RouterApp, client, revision: str) -> None:
    assert app.live.snapshot.revision == revision
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status in (200, 422)
        assert resp.headers.get("x-model-route") == "fraud"
    async with client.get(admin_url(app, "/-/config")) as resp:
        assert (await resp.json())["revision"] == revision
    assert [e["event"] for e in app.history.read()].count("applied") == 1


@pytest.mark.parametrize("make, reason", [
    pytest.param(lambda p: p.write_bytes(b"[1]"), "expected a JSON object with features",
                 id="[1]"),
    pytest.param(sparse(BASELINE_LIMIT + 1), f"over the {BASELINE_LIMIT} byte limit",
                 id="over-64MB"),
    pytest.param(lambda p: p.write_bytes(shaped(amount={"kind": "numeric"})),
                 "features.amount.edges: expected a list", id="numeric-without-edges"),
])
async def test_bad_baseline_by_api_reload_is_rejected(tmp_path: Path, upstreams, start_router,
                                                      client, make: Callable[[Path], None],
                                                      reason: str) -> None:
    app = await serving_with_baseline(tmp_path, upstreams, start_router, watch_interval=60)
    revision = app.live.snapshot.revision
    bad = tmp_path / "baselines" / "bad.json"
    make(bad)
    rewrite(tmp_path / "registry.yaml", registry_naming(tmp_path, bad))
    async with client.post(admin_url(app, "/-/reload"), json={}) as resp:
        assert resp.status == 422, await resp.text()
        errors = (await resp.json())["errors"]
    assert any(e.startswith(f"{V1}.baseline: ") and reason in e for e in errors), errors
    await assert_old_config_serves(app, client, revision)
    assert app.history.read()[-1]["event"] == "rejected"
    with pytest.raises(ConfigError):  # a restart says why, rather than crashing
        await RouterApp(tmp_path / "router.yaml").start()


async def test_fifo_baseline_by_hot_reload_never_stalls_either_port(
        tmp_path: Path, upstreams, start_router, client) -> None:
    app = await serving_with_baseline(tmp_path, upstreams, start_router)
    revision = app.live.snapshot.revision
    probes = [f"http://127.0.0.1:{app.admin_port}/-/healthy",
              f"http://127.0.0.1:{app.port}/v2/health/live"]
    slow: list[tuple[str, float | str]] = []
    done = threading.Event()

    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def probe() -> None:  # a thread: it gets answers only while the event loop runs
        while not done.is_set():
            for target in probes:
                started = time.monotonic()
                try:
                    with direct.open(target, timeout=1.0) as resp:
                        resp.read()
                except OSError as exc:
                    slow.append((target, repr(exc)))
                    continue
                if time.monotonic() - started > 0.5:
                    slow.append((target, time.monotonic() - started))
            time.sleep(0.02)

    fifo = tmp_path / "baselines" / "fifo.json"
    os.mkfifo(fifo)

    def unblock() -> None:  # should a reader block on the FIFO, end the test instead of hanging
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return  # nobody is reading it: the fix held
        os.write(fd, orjson.dumps(GOOD_BASELINE))
        os.close(fd)

    safety = threading.Timer(3.0, unblock)
    prober = threading.Thread(target=probe)
    prober.start()
    safety.start()
    rejected = True
    try:
        rewrite(tmp_path / "registry.yaml", registry_naming(tmp_path, fifo))
        try:
            await wait_for(lambda: app.reloader.last_error is not None, timeout=5.0)
        except AssertionError:
            rejected = False
        await asyncio.sleep(0.3)  # probes keep running after the rejection
    finally:
        done.set()
        safety.cancel()
        await asyncio.to_thread(prober.join)
    assert not slow, slow  # both ports answered all along
    assert rejected
    errors = app.reloader.last_error["errors"]
    assert any(e.startswith(f"{V1}.baseline: ") and "is a FIFO, not a regular file" in e
               for e in errors), errors
    await assert_old_config_serves(app, client, revision)


# -- header injection by reload: rejected, the upstream never sees it ----------------------------

@pytest.mark.parametrize("change, where", [
    pytest.param({"host": "up.example\r\nX-Injected: yes"}, "versions.v1.host", id="host-crlf"),
    pytest.param({"headers": {"x-a\r\nX-Injected": "yes"}}, "versions.v1.headers",
                 id="header-name-crlf"),
    pytest.param({"headers": {"x-a": "1\nX-Injected: yes"}}, "versions.v1.headers.x-a",
                 id="header-value-lf"),
])
async def test_injecting_config_by_reload_is_rejected(tmp_path: Path, upstreams, start_router,
                                                      client, change: dict[str, Any],
                                                      where: str) -> None:
    v1 = await upstreams.echo("v1")
    path = write_config(tmp_path, [{**plain_route(), "versions": {"v1": {"url": v1 + "/m"}}}])
    app = await start_router(path, watch_interval=60)
    revision = app.live.snapshot.revision

    def mutate(doc: dict) -> None:
        doc["routes"][0]["versions"]["v1"].update(change)
    rewrite(path, mutate)
    async with client.post(admin_url(app, "/-/reload"), json={}) as resp:
        assert resp.status == 422, await resp.text()
        errors = (await resp.json())["errors"]
    assert any(e.startswith(f"router.yaml: routes[fraud].{where}") for e in errors), errors
    body = {"inputs": [{"name": "amount", "datatype": "FP64", "shape": [1], "data": [1.0]},
                       {"name": "avg_purchase_last_7_days", "datatype": "FP64", "shape": [1],
                        "data": [1.0]},
                       {"name": "country", "datatype": "BYTES", "shape": [1], "data": ["US"]}]}
    async with client.post(url(app, "/v2/models/fraud/infer"), data=orjson.dumps(body)) as resp:
        assert resp.status == 200, await resp.text()
        seen = orjson.loads(await resp.read())
    assert "x-injected" not in {k.lower() for k in seen["headers"]}
    assert app.live.snapshot.revision == revision



def test_aliases_of_an_env_string_are_expanded_once() -> None:
    """99,000 aliases of a 100 KB string holding ${VAR} once cost 39 s and 6 GB: each alias
    was expanded into a new string. An alias is its anchor's object: expanded once, shared."""
    from router.config.load import _expand_env
    from router.config.problems import Problems

    anchor = "A" * 100_000 + "${HOME}"
    tree = {"pad": anchor, "bomb": [anchor] * 2_000, "nested": [{"k": anchor}] * 3}
    out = _expand_env(Problems("router.yaml"), "", tree, {"HOME": "/root"})
    assert out["pad"].endswith("/root")
    assert all(item is out["pad"] for item in out["bomb"])
    assert out["nested"][0] is out["nested"][2]
