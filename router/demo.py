"""``model-router demo``: demo model servers, the router and simulated users in one process.

Writes a demo config directory, starts three V2 model servers (v1 production, v2 canary,
v3 shadow target) and the router on free loopback ports, drives sticky users, and prints the
live split once a second. Half-way it edits router.yaml from 95/5 to 50/50 and the change
shows up through the router's own file reload.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from .app import RouterApp
from .demo_models import MODELS, make_app

COUNTRIES = ("US", "US", "US", "DE", "FR")


def demo_registry() -> dict:
    fields = {"amount": {"type": "float", "min": 0},
              "avg_purchase_last_7_days": {"type": "float", "min": 0},
              "country": {"type": "string", "enum": ["US", "DE", "FR"]},
              "is_new_user": {"type": "bool", "required": False}}
    versions = {name: {"schema": "fraud-features@1",
                       "training_data": f"s3://demo-data/fraud/{name}.parquet",
                       "model_version": model.model_version, "created": "2026-11-01"}
                for name, model in MODELS.items()}
    return {"schemas": {"fraud-features@1": {"fields": fields}},
            "models": {"fraud": {"versions": versions}}}


def demo_config(ports: dict[str, int], split: tuple[int, int]) -> dict:
    versions = {name: {"url": f"http://127.0.0.1:{port}/v2/models/fraud"}
                for name, port in ports.items()}
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "registry": "registry.yaml",
        "state_dir": "state",
        "prediction_log": {"dir": "logs"},
        "routes": [{
            "name": "fraud", "match": {"path_prefix": "/v2/models/fraud"}, "protocol": "v2",
            "model": "fraud", "input_schema": "fraud-features@1", "versions": versions,
            "split": {"v1": split[0], "v2": split[1]}, "sticky": {"header": "x-user-id"},
            "fallback": "v1", "timeout_s": 2.0,
        }],
    }


def write_yaml(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)


def request_body(rng: random.Random) -> dict:
    amount = round(rng.lognormvariate(3.5, 1.2), 2)
    return {"inputs": [
        {"name": "amount", "datatype": "FP64", "shape": [1], "data": [amount]},
        {"name": "avg_purchase_last_7_days", "datatype": "FP64", "shape": [1],
         "data": [round(rng.lognormvariate(3.4, 0.8), 2)]},
        {"name": "country", "datatype": "BYTES", "shape": [1], "data": [rng.choice(COUNTRIES)]},
        {"name": "is_new_user", "datatype": "BOOL", "shape": [1], "data": [rng.random() < 0.2]},
    ]}


async def _users(base: str, counts: Counter, stop: asyncio.Event, seed: int) -> None:
    rng = random.Random(seed)
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            user = f"user-{rng.randrange(500)}"
            try:
                async with session.post(f"{base}/v2/models/fraud/infer",
                                        json=request_body(rng),
                                        headers={"x-user-id": user}) as resp:
                    await resp.read()
                    counts[(resp.headers.get("x-model-version", "-"), resp.status)] += 1
            except aiohttp.ClientError:
                counts[("-", 0)] += 1
            await asyncio.sleep(rng.uniform(0.005, 0.02))


async def run_demo(folder: Path, duration: float) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    runners = []
    ports: dict[str, int] = {}
    for name, model in MODELS.items():
        runner = web.AppRunner(make_app("fraud", model), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        ports[name] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    config = folder / "router.yaml"
    write_yaml(folder / "registry.yaml", demo_registry())
    write_yaml(config, demo_config(ports, (95, 5)))
    app = RouterApp(config)
    await app.start()
    base = f"http://127.0.0.1:{app.port}"
    print(f"model servers: {ports}; router {base}; admin http://127.0.0.1:{app.admin_port}")
    print(f"config: {config} (edit it while the demo runs: the router reloads it)")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    counts: Counter = Counter()
    users = [asyncio.ensure_future(_users(base, counts, stop, seed)) for seed in range(8)]
    started = time.monotonic()
    flipped = False
    try:
        while not stop.is_set() and time.monotonic() - started < duration:
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
            window = dict(counts)
            counts.clear()
            total = sum(window.values()) or 1
            share = Counter()
            errors = 0
            for (version, status), n in window.items():
                share[version] += n
                errors += n if status >= 500 or status == 0 else 0
            weights = app.live.snapshot.routes[0].weights()
            print(f"t={time.monotonic() - started:4.0f}s config v1/v2={weights['v1']:g}/"
                  f"{weights['v2']:g}  served " + "  ".join(
                      f"{v}={100 * n / total:4.1f}%" for v, n in sorted(share.items()))
                  + f"  rps={total}  errors={errors}", flush=True)
            if not flipped and time.monotonic() - started > duration / 2:
                write_yaml(config, demo_config(ports, (50, 50)))
                print("-> edited router.yaml: split 50/50 (watch the router pick it up)")
                flipped = True
    finally:
        stop.set()
        await asyncio.gather(*users, return_exceptions=True)
        await app.stop()
        for runner in runners:
            await runner.cleanup()
    return 0


def demo(folder: str = "demo", duration: float = 20.0) -> int:
    try:
        import uvloop
        return uvloop.run(run_demo(Path(folder), duration))
    except ImportError:  # pragma: no cover
        return asyncio.run(run_demo(Path(folder), duration))
