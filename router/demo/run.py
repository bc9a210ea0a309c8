"""``model-router demo``: the whole product in one process tree, with nothing to install.

Starts three Open Inference Protocol (V2) model servers on free loopback ports (v1
production, v2 canary, v3 shadow; small logistic models with their own weights), writes a
demo config directory (router.yaml, registry.yaml, baselines), starts the router on it, and
drives simulated users (sticky ids) plus simulated business outcomes posted to
``/-/feedback``. A live view shows, every second, each version's share, rps, p50/p99,
errors, shadow agreement and the drift of one feature. The users speak every protocol the
router serves (``--protocol``, default ``mixed``): V2 JSON over HTTP, V2 binary tensors over
HTTP (as tritonclient sends them) and gRPC; each model server answers on both its HTTP and
gRPC ports, and every request is routed, validated, shadowed and logged the same way.

The story (``--no-story`` skips it): a 95/5 canary; the demo edits router.yaml to 50/50 and
the view shows it within a second (the router's own file reload); a bad deploy (a v4 trained
on a renamed feature) is attempted and refused while traffic keeps flowing; a blue/green
flip; at the end, the audit of one request and the report table, and commands to try next.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import orjson
import yaml
from aiohttp import web

from ..analysis.baseline import build_baseline
from ..config.registry import Field, Schema
from ..dataplane.grpc_wire import SERVICE
from ..dataplane.oip import inference_pb2 as pb
from ..process.app import RouterApp
from .models import MODELS, make_app, start_grpc

COUNTRIES = ("US", "DE", "FR")
COUNTRY_WEIGHTS = (0.6, 0.3, 0.1)
CONVERSION = {"v1": 0.10, "v2": 0.12, "v3": 0.10}   # the canary really is better
PROTOCOLS = ("json", "binary", "grpc")                # what the users speak, in turn
TYPES = {"amount": "FP64", "avg_purchase_last_7_days": "FP64", "country": "BYTES",
         "is_new_user": "BOOL"}
SCHEMA = Schema("fraud-features@1", (
    Field("amount", "float", min=0), Field("avg_purchase_last_7_days", "float", min=0),
    Field("country", "string", enum=COUNTRIES), Field("is_new_user", "bool", required=False)))


# -- files ---------------------------------------------------------------------------------------

def features(rng: random.Random, amount_scale: float = 1.0) -> dict[str, Any]:
    return {"amount": round(rng.lognormvariate(3.5, 1.0) * amount_scale, 2),
            "avg_purchase_last_7_days": round(rng.lognormvariate(3.4, 0.8), 2),
            "country": rng.choices(COUNTRIES, COUNTRY_WEIGHTS)[0],
            "is_new_user": rng.random() < 0.2}


def registry_doc(with_v4: bool = False) -> dict[str, Any]:
    fields = {"amount": {"type": "float", "min": 0},
              "avg_purchase_last_7_days": {"type": "float", "min": 0},
              "country": {"type": "string", "enum": list(COUNTRIES)},
              "is_new_user": {"type": "bool", "required": False}}
    doc: dict[str, Any] = {"schemas": {"fraud-features@1": {"fields": fields}}, "models": {
        "fraud": {"versions": {name: {
            "schema": "fraud-features@1",
            "training_data": f"s3://demo-data/fraud/{name}-2026-11.parquet",
            "metrics": {"auc": {"v1": 0.912, "v2": 0.927, "v3": 0.921}[name]},
            "baseline": "baselines/fraud-v1.json" if name == "v1" else None,
            "created": "2026-11-0" + name[1], "model_version": model.model_version}
            for name, model in MODELS.items()}}}}
    for entry in doc["models"]["fraud"]["versions"].values():
        if entry["baseline"] is None:
            del entry["baseline"]
    if with_v4:
        renamed = dict(fields)
        renamed["avg_purchase_last_10_days"] = renamed.pop("avg_purchase_last_7_days")
        doc["schemas"]["fraud-features@2"] = {"fields": renamed}
        doc["models"]["fraud"]["versions"]["v4"] = {
            "schema": "fraud-features@2", "training_data": "s3://demo-data/fraud/v4.parquet",
            "model_version": "4.0.0"}
    return doc


def router_doc(ports: dict[str, int], *, split: tuple[int, int] | None = (95, 5),
               active: str | None = None, with_v4: bool = False,
               grpc_ports: dict[str, int] | None = None) -> dict[str, Any]:
    """The demo's router.yaml: HTTP ports by version, and their gRPC ports (with which the
    router opens its own gRPC port)."""
    versions: dict[str, dict[str, Any]] = {
        name: {"url": f"http://127.0.0.1:{port}/v2/models/fraud"} for name, port in ports.items()}
    for name, port in (grpc_ports or {}).items():
        versions[name]["grpc"] = f"127.0.0.1:{port}"
    if with_v4:
        versions["v4"] = {"url": f"http://127.0.0.1:{ports['v2']}/v2/models/fraud"}
    route: dict[str, Any] = {
        "name": "fraud", "match": {"path_prefix": "/v2/models/fraud"}, "protocol": "v2",
        "model": "fraud", "input_schema": "fraud-features@1", "validation": "enforce",
        "versions": versions}
    if active:
        route["blue_green"] = {"blue": "v1", "green": "v2", "active": active}
    else:
        route["split"] = {"v1": split[0], "v2": split[1]}  # type: ignore[index]
    route.update({"sticky": {"header": "x-user-id"},
                  "override": {"header": "x-model-override", "allow": ["v2", "v3"]},
                  "shadow": [{"version": "v3", "percent": 50, "timeout_s": 1.0}],
                  "drift": {"window_rows": 2000, "sample": 1.0, "psi_warn": 0.2},
                  "fallback": "v1", "timeout_s": 2.0})
    doc: dict[str, Any] = {"listen": {"host": "127.0.0.1", "port": 0}}
    if grpc_ports:
        doc["grpc"] = {"host": "127.0.0.1", "port": 0}
    return {**doc, "admin": {"host": "127.0.0.1", "port": 0},
            "registry": "registry.yaml", "state_dir": "state",
            "prediction_log": {"dir": "logs", "payloads": "full", "flush_ms": 200},
            "routes": [route]}


def write_yaml(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)


def v2_body(row: dict[str, Any]) -> bytes:
    return orjson.dumps({"inputs": [{"name": k, "datatype": TYPES[k], "shape": [1],
                                     "data": [v]} for k, v in row.items()]})


def _raw(datatype: str, value: Any) -> bytes:
    """One element as the binary forms carry it (little-endian; BYTES length-prefixed)."""
    if datatype == "BYTES":
        data = str(value).encode()
        return len(data).to_bytes(4, "little") + data
    return np.array([value], dtype={"FP64": "<f8", "BOOL": "?"}[datatype]).tobytes()


def v2_binary_body(row: dict[str, Any]) -> tuple[bytes, int]:
    """The row in the binary tensor extension, as tritonclient's HTTP client sends it: the
    body and its JSON header's length (``Inference-Header-Content-Length``)."""
    raws = {k: _raw(TYPES[k], v) for k, v in row.items()}
    header = orjson.dumps({"inputs": [
        {"name": k, "datatype": TYPES[k], "shape": [1],
         "parameters": {"binary_data_size": len(raw)}} for k, raw in raws.items()]})
    return header + b"".join(raws.values()), len(header)


def v2_grpc_request(row: dict[str, Any]) -> bytes:
    """The row as a serialized ModelInferRequest with raw contents (tritonclient's way)."""
    request = pb.ModelInferRequest(model_name="fraud")
    for name, value in row.items():
        request.inputs.add(name=name, datatype=TYPES[name], shape=[1])
        request.raw_input_contents.append(_raw(TYPES[name], value))
    return request.SerializeToString()


# -- traffic and the view ------------------------------------------------------------------------

class Stats:
    """Client-side view of the last second, per version."""

    def __init__(self) -> None:
        self.window: deque[tuple[float, str, int, float]] = deque()
        self.sample_ids: list[str] = []
        self.protocols: dict[str, int] = dict.fromkeys(PROTOCOLS, 0)   # requests, in all

    def add(self, version: str, status: int, latency: float, protocol: str = "json") -> None:
        self.window.append((time.monotonic(), version, status, latency))
        self.protocols[protocol] += 1

    def recent(self, seconds: float = 1.0) -> list[tuple[float, str, int, float]]:
        cutoff = time.monotonic() - seconds
        while self.window and self.window[0][0] < cutoff - 5:
            self.window.popleft()
        return [w for w in self.window if w[0] >= cutoff]


async def users(base: str, stats: Stats, stop: asyncio.Event, seed: int,
                drift: dict[str, float], protocol: str = "json",
                grpc_target: str | None = None) -> None:
    """One simulated user stream speaking ``protocol``: pick a user, send a row, post the
    business outcome of what the router served."""
    rng = random.Random(seed)
    channel = grpc.aio.insecure_channel(grpc_target) if grpc_target else None
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            user = f"user-{rng.randrange(2000)}"
            row = features(rng, drift["amount"])
            started = time.perf_counter()
            try:
                if protocol == "grpc" and channel is not None:
                    status, version, rid = await _grpc_call(channel, row, user)
                else:
                    status, version, rid = await _http_call(session, base, row, user,
                                                            protocol == "binary")
                stats.add(version, status, time.perf_counter() - started, protocol)
                if status == 200:
                    if len(stats.sample_ids) < 5:
                        stats.sample_ids.append(rid)
                    converted = rng.random() < CONVERSION.get(version, 0.1)
                    async with session.post(f"{base}/-/feedback", json={
                            "request_id": rid, "outcome": {"converted": converted}}) as fb:
                        await fb.read()
            except (aiohttp.ClientError, grpc.aio.AioRpcError):
                stats.add("-", 0, time.perf_counter() - started, protocol)
            await asyncio.sleep(rng.uniform(0.01, 0.04))
    if channel is not None:
        await channel.close()


async def _http_call(session: aiohttp.ClientSession, base: str, row: dict[str, Any],
                     user: str, binary: bool) -> tuple[int, str, str]:
    headers = {"x-user-id": user, "content-type": "application/json"}
    if binary:
        body, size = v2_binary_body(row)
        headers = {"x-user-id": user, "content-type": "application/octet-stream",
                   "inference-header-content-length": str(size)}
    else:
        body = v2_body(row)
    async with session.post(f"{base}/v2/models/fraud/infer", data=body,
                            headers=headers) as resp:
        await resp.read()
        return (resp.status, resp.headers.get("x-model-version", "-"),
                resp.headers.get("x-request-id", ""))


async def _grpc_call(channel: grpc.aio.Channel, row: dict[str, Any],
                     user: str) -> tuple[int, str, str]:
    call = channel.unary_unary(SERVICE + "ModelInfer")(
        v2_grpc_request(row), metadata=(("x-user-id", user),), timeout=5)
    await call
    marks = dict(await call.initial_metadata())
    return 200, str(marks.get("x-model-version", "-")), str(marks.get("x-request-id", ""))


def view_rows(stats: Stats, weights: dict[str, float], agreement: list[float],
              drift: float | None) -> list[str]:
    recent = stats.recent()
    total = len(recent) or 1
    lines = []
    for version in sorted(set(weights) | {v for _, v, _, _ in recent}):
        mine = [w for w in recent if w[1] == version]
        lat = sorted(w[3] * 1000 for w in mine)
        p50 = lat[len(lat) // 2] if lat else 0.0
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else 0.0
        errors = sum(1 for w in mine if w[2] >= 500 or w[2] == 0)
        lines.append(f"{version:<4} weight {weights.get(version, 0):>5.1f}%  served "
                     f"{100 * len(mine) / total:>5.1f}%  rps {len(mine):>4}  p50 {p50:6.2f} ms"
                     f"  p99 {p99:6.2f} ms  errors {errors}")
    agree = f"{sum(agreement) / len(agreement):.3f}" if agreement else "-"
    lines.append(f"shadow v3 label agreement {agree} over the last {len(agreement)} copies   "
                 f"input drift PSI(amount) {'-' if drift is None else f'{drift:.3f}'}")
    spoken = {k: v for k, v in stats.protocols.items() if v}
    if len(spoken) > 1:
        lines.append("requests so far by protocol: " + ", ".join(
            f"{name} {count}" for name, count in spoken.items()))
    return lines


async def start_models() -> tuple[list[web.AppRunner], dict[str, int]]:
    """The demo model servers (v1, v2, v3) on free 127.0.0.1 ports in this process: their
    runners (the caller cleans them up) and ports by version."""
    runners: list[web.AppRunner] = []
    ports: dict[str, int] = {}
    for name, model in MODELS.items():
        runner = web.AppRunner(make_app("fraud", model), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        ports[name] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runners, ports


async def start_grpc_models() -> tuple[list[grpc.aio.Server], dict[str, int]]:
    """The same models' gRPC ports: the servers (the caller stops them), ports by version."""
    servers, ports = [], {}
    for name, model in MODELS.items():
        server, ports[name] = await start_grpc("fraud", model)
        servers.append(server)
    return servers, ports


def write_registry(folder: Path) -> None:
    """registry.yaml and the v1 baseline it names, in ``folder``."""
    (folder / "baselines").mkdir(parents=True, exist_ok=True)
    rng = random.Random(42)
    training = [features(rng) for _ in range(5000)]
    (folder / "baselines" / "fraud-v1.json").write_bytes(
        orjson.dumps(build_baseline(training, SCHEMA), option=orjson.OPT_INDENT_2))
    write_yaml(folder / "registry.yaml", registry_doc())


async def run_demo(folder: Path, duration: float, story: bool,
                   protocol: str = "mixed") -> int:
    folder.mkdir(parents=True, exist_ok=True)
    runners, ports = await start_models()
    grpc_servers, grpc_ports = await start_grpc_models()
    write_registry(folder)
    config = folder / "router.yaml"
    write_yaml(config, router_doc(ports, grpc_ports=grpc_ports))
    app = RouterApp(config, watch_interval=0.1)
    await app.start()
    base = f"http://127.0.0.1:{app.port}"
    say = print
    say(f"model servers v1/v2/v3 on ports {ports['v1']}/{ports['v2']}/{ports['v3']} (gRPC "
        f"{grpc_ports['v1']}/{grpc_ports['v2']}/{grpc_ports['v3']}); router {base}, gRPC "
        f"127.0.0.1:{app.grpc_port} (admin http://127.0.0.1:{app.admin_port}); config in "
        f"{folder}/")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stats = Stats()
    agreement: deque[float] = deque(maxlen=500)

    def on_shadow(route: str, version: str, result: dict[str, Any] | None) -> None:
        if result and result.get("agreement") is not None:
            agreement.append(result["agreement"])

    assert app.shadows is not None and app.drift is not None and app.live is not None
    app.shadows.observers.append(on_shadow)
    drift = {"amount": 1.0}
    spoken = PROTOCOLS if protocol == "mixed" else (protocol,)
    tasks = [asyncio.ensure_future(users(base, stats, stop, seed, drift,
                                         spoken[seed % len(spoken)],
                                         f"127.0.0.1:{app.grpc_port}"))
             for seed in range(6)]

    async def to_50_50() -> str:
        write_yaml(config, router_doc(ports, split=(50, 50), grpc_ports=grpc_ports))
        return "the router reloads the file by itself: watch the served shares move"

    async def shift_amounts() -> str:
        drift["amount"] = 2.5
        return "amounts are 2.5x the training data now: the PSI of amount climbs"

    async def flip() -> str:
        write_yaml(config, router_doc(ports, split=None, active="green",
                                      grpc_ports=grpc_ports))
        return "every user now on v2 (green); flip back by editing active: blue"

    steps = [(0.2, "edit router.yaml: canary 95/5 -> 50/50", to_50_50),
             (0.4, "attempt a bad deploy: v4 was trained on avg_purchase_last_10_days",
              lambda: bad_deploy(folder, ports)),
             (0.55, "traffic shifts", shift_amounts),
             (0.7, "blue/green: v1 blue, v2 green, flip to green", flip)] if story else []
    started = time.monotonic()
    tty = sys.stdout.isatty()
    notes: list[str] = []
    try:
        while not stop.is_set() and time.monotonic() - started < duration:
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
            elapsed = time.monotonic() - started
            while steps and elapsed >= steps[0][0] * duration:
                _, label, action = steps.pop(0)
                note = await action()
                notes.append(f"t={elapsed:4.0f}s {label}" + (f"\n      {note}" if note
                                                              else ""))
                if not tty:
                    say(f"-> {notes[-1]}")
            weights = app.live.snapshot.routes[0].weights()
            psi = app.drift.compute(app.live.snapshot).get("fraud/amount") \
                if int(elapsed) % 2 == 0 else app.drift.last.get("fraud/amount")
            rows = view_rows(stats, weights, list(agreement), psi)
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")
                say(f"model-router demo  t={elapsed:4.0f}s of {duration:g}s  revision "
                    f"{app.live.snapshot.revision}  (Ctrl-C stops)\n")
                say("\n".join(rows))
                say("\n" + "\n".join(notes[-4:]))
            else:
                say(f"t={elapsed:4.0f}s " + " | ".join(rows))
            sys.stdout.flush()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await app.stop()
        for runner in runners:
            await runner.cleanup()
        for server in grpc_servers:
            await server.stop(0)
    if story:
        finale(folder, stats)
    return 0


async def bad_deploy(folder: Path, ports: dict[str, int]) -> str:
    """Write a registry and config adding v4; the router refuses them; put the old back."""
    registry = folder / "registry.yaml"
    config = folder / "router.yaml"
    old_registry, old_config = registry.read_bytes(), config.read_bytes()
    current = yaml.safe_load(old_config)
    route = current["routes"][0]
    write_yaml(registry, registry_doc(with_v4=True))
    route["versions"]["v4"] = {"url": f"http://127.0.0.1:{ports['v2']}/v2/models/fraud"}
    write_yaml(config, current)
    await asyncio.sleep(0.8)  # the router's own watcher picks the change up and refuses it
    history = (folder / "state" / "history.jsonl").read_bytes().splitlines()
    last = orjson.loads(history[-1]) if history else {}
    registry.write_bytes(old_registry)
    config.write_bytes(old_config)
    if last.get("event") == "rejected":
        gate = [e for e in last["errors"] if "requires" in e]
        return "refused, traffic keeps flowing on the old config: " + \
            (gate[0] if gate else last["errors"][0])
    return "the router did not report a rejection (see demo/state/history.jsonl)"


def finale(folder: Path, stats: Stats) -> None:
    from ..analysis.audit import LogQuery, revision_context
    from ..analysis.report import build_report, render_table

    logs, state = folder / "logs", folder / "state"
    print("\n== audit of one request: which model made this prediction? ==")
    if stats.sample_ids:
        rid = stats.sample_ids[0]
        records = LogQuery(logs).by_request(rid)
        primary = next((r for r in records if r["role"] == "primary"), None)
        if primary:
            ctx = revision_context(state, primary["config_revision"], primary["route"],
                                   primary["model"], primary["version"])
            entry = ctx["registry_entry"] or {}
            print(f"request {rid}: {len(records)} records "
                  f"({', '.join(r['role'] for r in records)})")
            print(f"  served by {primary['version']} (model_version "
                  f"{primary['served_model_version']}), reason {primary['reason']}, status "
                  f"{primary['status']}, {primary['latency_ms']} ms")
            print(f"  trained on {entry.get('training_data')} (schema {entry.get('schema')}), "
                  f"config revision {primary['config_revision']}")
    print("\n== report ==")
    print(render_table(build_report(logs, state)))
    print(f"""
Try next:
  model-router audit -c {folder}/router.yaml {stats.sample_ids[0] if stats.sample_ids else 'REQUEST_ID'}
  model-router report -c {folder}/router.yaml --html report.html
  model-router history -c {folder}/router.yaml
  model-router check -c {folder}/router.yaml
  model-router check -c config/router.yaml   # then point its versions at your model servers""")


def demo(folder: str = "demo", duration: float = 40.0, story: bool = True,
         protocol: str = "mixed") -> int:
    from ..process.runtime import run
    return int(run(run_demo(Path(folder), duration, story, protocol)))
