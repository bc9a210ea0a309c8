"""Plain helpers every tier shares: config builders, loopback upstreams, raw HTTP bytes.

Fixtures live in conftest.py; this module holds functions and classes only, so a test module
imports what it uses from here and never from another test module.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiohttp import web

from router.process.app import RouterApp

ROOT = Path(__file__).resolve().parents[1]

REGISTRY = {
    "schemas": {
        "fraud-features@1": {"fields": {
            "amount": {"type": "float", "min": 0},
            "avg_purchase_last_7_days": {"type": "float", "min": 0},
            "country": {"type": "string", "enum": ["US", "DE", "FR"]},
            "is_new_user": {"type": "bool", "required": False},
        }},
    },
    "models": {"fraud": {"versions": {
        "v1": {"schema": "fraud-features@1", "training_data": "s3://d/v1.parquet",
               "model_version": "1.0.0"},
        "v2": {"schema": "fraud-features@1", "training_data": "s3://d/v2.parquet",
               "model_version": "2.0.0"},
        "v3": {"schema": "fraud-features@1", "training_data": "s3://d/v3.parquet"},
    }}},
}


class Clock:
    """A fake clock for injected ``clock`` seams: call it for the time, move ``now`` by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- config files ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, routes: list[dict[str, Any]], registry: dict | None = None,
                 **top: Any) -> Path:
    """Write router.yaml (+ registry.yaml) with loopback ports picked by the OS."""
    folder.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "registry": "registry.yaml",
        "state_dir": "state",
        "prediction_log": {"dir": "logs"},
        "routes": routes,
    }
    doc.update(top)
    (folder / "registry.yaml").write_text(yaml.safe_dump(registry or REGISTRY, sort_keys=False))
    path = folder / "router.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def rewrite(path: Path, mutate: Any) -> None:
    """Replace the file by rename, as editors and config management tools do."""
    doc = yaml.safe_load(path.read_text())
    mutate(doc)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)


def set_split(v1: float, v2: float) -> Any:
    """A ``rewrite`` mutation: the first route's split becomes v1/v2."""
    def mutate(doc: dict) -> None:
        doc["routes"][0]["split"] = {"v1": v1, "v2": v2}
    return mutate


# -- routes ------------------------------------------------------------------------------------

def route(urls: dict[str, str], **changes: Any) -> dict[str, Any]:
    """The V2 "fraud" route over ``urls``; the first version takes all traffic."""
    out: dict[str, Any] = {
        "name": "fraud", "match": {"path_prefix": "/v2/models/fraud"}, "protocol": "v2",
        "model": "fraud", "versions": {n: {"url": u} for n, u in urls.items()},
        "split": {n: (100 if i == 0 else 0) for i, n in enumerate(urls)},
    }
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def base_route(**changes: Any) -> dict[str, Any]:
    """A validated three-version route on fixed (unused) ports, for config-only tests."""
    out: dict[str, Any] = {
        "name": "fraud", "match": {"path_prefix": "/v2/models/fraud"}, "protocol": "v2",
        "model": "fraud", "input_schema": "fraud-features@1",
        "versions": {"v1": {"url": "http://127.0.0.1:9001/m"},
                     "v2": {"url": "http://127.0.0.1:9002/m"},
                     "v3": {"url": "http://127.0.0.1:9003/m"}},
        "split": {"v1": 95, "v2": 5},
    }
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def rollout_route(v1: str, v2: str, **rollout: Any) -> dict[str, Any]:
    """A v1 -> v2 progressive rollout (10/50/100) over upstreams serving ``/m``."""
    block = {"baseline": "v1", "canary": "v2", "steps": [10, 50, 100], "step_min_s": 60,
             "step_min_requests": 100, "checks": {"error_rate": {"max_increase": 0.01}},
             "on_failure": "rollback"}
    block.update(rollout)
    return {"name": "fraud", "match": {"path_prefix": "/v2/models/fraud"}, "protocol": "v2",
            "model": "fraud", "versions": {"v1": {"url": v1 + "/m"}, "v2": {"url": v2 + "/m"}},
            "rollout": block}


# -- loopback upstreams ------------------------------------------------------------------------

def echo_app(name: str) -> web.Application:
    """An upstream that reports what it received: version, path, headers, body."""

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        data = {"version": name, "method": request.method, "path": request.raw_path,
                "headers": {str(k): v for k, v in request.headers.items()},
                "body": body.decode("utf-8", "replace")}
        return web.Response(body=orjson.dumps(data), content_type="application/json",
                            headers={"x-upstream": name, "Connection": "keep-alive"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


class Upstreams:
    """Starts aiohttp apps on free loopback ports and stops them at teardown."""

    def __init__(self) -> None:
        self.runners: list[web.AppRunner] = []

    async def start(self, app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def echo(self, name: str) -> str:
        return await self.start(echo_app(name))

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


async def echo_versions(upstreams: Upstreams, *names: str) -> dict[str, str]:
    """One echo upstream per version name, each under its own base path ``/base-<name>``."""
    return {n: await upstreams.echo(n) + f"/base-{n}" for n in names}


def v2_answer(scores: list[float], model_version: str = "1.0.0") -> dict[str, Any]:
    return {"model_name": "fraud", "model_version": model_version,
            "outputs": [{"name": "score", "datatype": "FP64", "shape": [len(scores), 1],
                         "data": scores}]}


def scorer(score: float, delay: float = 0.0, model_version: str = "1.0.0",
           seen: list | None = None) -> web.Application:
    """A V2 model at ``/m/infer`` answering ``score`` after ``delay``; records headers in seen."""
    async def infer(request: web.Request) -> web.Response:
        await request.read()
        if seen is not None:
            seen.append(dict(request.headers))
        if delay:
            await asyncio.sleep(delay)
        return web.Response(body=orjson.dumps(v2_answer([score], model_version)),
                            content_type="application/json")

    app = web.Application()
    app.router.add_post("/m/infer", infer)
    return app


def flaky(every: int | None, delay: float = 0.0) -> web.Application:
    """A V2 model at ``/m/infer`` failing one request in ``every`` (deterministically) with a
    500, after ``delay``."""
    counter = itertools.count(1)

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        if delay:
            await asyncio.sleep(delay)
        if every and next(counter) % every == 0:
            return web.Response(status=500, text="boom")
        return web.json_response({"outputs": [{"name": "score", "shape": [1, 1],
                                               "datatype": "FP64", "data": [0.2]}]})

    app = web.Application()
    app.router.add_post("/m/infer", infer)
    return app


# -- raw TCP, both sides -----------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), not a clean FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def read_request(reader: asyncio.StreamReader) -> None:
    """Consume one request (head and Content-Length body) on a raw upstream connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))


async def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes on a fresh connection; everything the router answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except asyncio.TimeoutError:
        return b"<still open>"
    finally:
        writer.close()


def request(path: str, body: bytes = b"{}", extra: bytes = b"",
            content_type: bytes = b"application/json") -> bytes:
    """The bytes of one POST with a Content-Length body; ``extra`` are more header lines."""
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: router\r\nContent-Type: "
            + content_type + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
            + extra + b"\r\n" + body)


# -- a running router --------------------------------------------------------------------------

def url(app: RouterApp, path: str) -> str:
    return f"http://127.0.0.1:{app.port}{path}"


def admin_url(app: RouterApp, path: str) -> str:
    return f"http://127.0.0.1:{app.admin_port}{path}"


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a cheap condition until true; fails the test at the timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class Served:
    """A `model-router serve` subprocess and the loopback ports it was configured with."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, admin: int) -> None:
        self.proc, self.port, self.admin = proc, port, admin

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin}{path}"


async def start_serve(path: Path) -> asyncio.subprocess.Process:
    """Start ``model-router serve -c path`` (stdout and stderr piped together)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router.cli", "serve", "-c", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT)


async def wait_ready(served: Served, client: aiohttp.ClientSession,
                     timeout: float = 10.0) -> None:
    """Poll /-/ready until 200; fails at the timeout or if the process exits first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if served.proc.returncode is not None:
            assert served.proc.stdout is not None
            raise AssertionError(f"router exited: {(await served.proc.stdout.read()).decode()}")
        try:
            async with client.get(served.admin_url("/-/ready")) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("router never became ready")


async def serve_logged(path: Path, port: int, admin: int, client: aiohttp.ClientSession,
                       *args: str, replica: str = "r1",
                       env: dict[str, str] | None = None) -> Served:
    """``model-router serve -c path *args`` as replica ``replica`` (environment ``env``,
    default this process's), its output in a log file beside the config; ready when
    returned."""
    log = path.parent / f"serve-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router.cli", "serve", "-c", str(path), *args, cwd=ROOT,
            stdout=out, stderr=asyncio.subprocess.STDOUT,
            env={**(os.environ if env is None else env), "MODEL_ROUTER_REPLICA": replica})
    served = Served(proc, port, admin)
    await wait_ready(served, client, timeout=60)
    return served


async def send_numbered(served: Served, n: int, prefix: str) -> list[str]:
    """``n`` inference requests one after another, with request ids ``<prefix>-<i>``; each
    must be answered 200. Returns the ids."""
    ids = []
    async with aiohttp.ClientSession() as session:
        for i in range(n):
            rid = f"{prefix}-{i}"
            async with session.post(served.url("/v2/models/fraud/infer"), data=b"{}",
                                    headers={"x-request-id": rid}) as resp:
                await resp.read()
                assert resp.status == 200, (rid, resp.status)
            ids.append(rid)
    return ids


class FakeTransport(asyncio.Transport):
    """Collects what the connection writes; records pauses and the close."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = self.aborted = self.reading_paused = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def get_write_buffer_size(self) -> int:
        return 0
