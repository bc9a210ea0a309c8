"""Protocol benchmarks: `python -m loadtest.protocols [--rounds 3] [--duration 5] [--smoke]`.

Two questions about model-router's V2 front ends, everything on 127.0.0.1:

1. **Binary vs JSON over HTTP.** What a request costs the router when its tensors travel in
   the binary tensor extension (``Inference-Header-Content-Length``: a JSON header, then raw
   little-endian bytes) instead of JSON ``data``. The route is router_full's (the harness's
   ``router_config``: split 95/5, sticky ``x-user-id``, drift sampling 0.1, prediction log
   ``payloads: full``, metrics) validating a 30-field float schema (``enforce``), and the
   body is one FP32 input ``features`` of shape [rows, 30] whose columns are the schema's
   fields (bodies.v2_matrix): a row (1x30) and a batch (100x30), each as ``json``, ``binary``
   (binary request, JSON answer) and ``binary_out`` (binary request asking for binary
   outputs, so the answer comes back binary too and the router decodes it for the log).
   Load: wrk (1 thread, 50 connections, a Lua script reading the body from a file) when
   installed, an aiohttp closed loop otherwise. Router CPU per request is its process CPU
   time (/proc utime + stime, all threads and child processes) over the requests served.

2. **gRPC.** ``inference.GRPCInferenceService/ModelInfer`` with the row (1x30 FP32 in
   ``raw_input_contents``) against three targets: ``direct`` (the upstream,
   ``loadtest/v2_upstream.py``), ``naive`` (``loadtest/naive_grpc_proxy.py``: the obvious
   grpc.aio byte-forwarding proxy) and ``router`` (model-router's gRPC port, the same
   router_full-like route with ``grpc:`` addresses on its versions: validation, drift, log).
   The client is ``loadtest/grpc_load.py`` (its own process, grpc.aio, one pre-serialized
   request): (i) latency at a fixed 200 calls/s, p50/p99/p999 and added vs direct; (ii) max
   throughput with 64 calls in flight, and the proxy's CPU per call and how busy its core
   was (at ~100% the proxy is the bottleneck; below it, CPU 1's client + upstream are).

The proxy under test is pinned to CPU 0, the upstreams, wrk, the gRPC client and this runner
to CPU 1 (taskset; unpinned on a one-CPU machine). Scenarios run interleaved over
``--rounds``, each on a fresh proxy process (1 s warm-up, then ``--duration`` s measured);
tables print medians and ratios measured in the same run, and per-round ratios. Before the
load, one bad value (a feature below the schema's min 0) per body form and over gRPC must be
refused (the router's schema_violation: 422 / INVALID_ARGUMENT), which shows validation
reads binary tensors too. Every process is stopped by its PID; each one's stderr goes to a
file in the run's temp dir and any line it wrote is printed. Results go to
``loadtest/results/protocols-<stamp>.json`` (git-ignored).

``--smoke`` (correctness only, well under 30 s): one router with both listeners, every body
form answered 200 with the right scores, the bad values refused, and a second of gRPC load
through each target with zero errors; exit status 1 on any error.

``--commit REV`` runs the router from ``git archive REV router`` (as
``loadtest/backpressure.py``), a fixed tree while router/ is being edited; ``--only http|grpc``
runs one part; ``--rss-seconds N`` (or ``--only rss``: 60 s) adds the
router's RSS under max gRPC load, sampled every 10 s, each sample a new client connection.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import orjson
import yaml
from tritonclient.grpc import service_pb2 as pb

from .__main__ import (
    HERE,
    PATH,
    ROOT,
    TWO_CPUS,
    Proc,
    cpu_seconds,
    free_port,
    pinned,
    ratio,
    router_config,
    rss_mb,
    spread,
    wait_port,
    wrk,
)
from .backpressure import router_tree

FIELDS = [f"f{i:02d}" for i in range(30)]
SCHEMA = "features-30@1"
REGISTRY = {
    "schemas": {SCHEMA: {"fields": {f: {"type": "float", "min": 0} for f in FIELDS}}},
    "models": {"fraud": {"versions": {
        v: {"schema": SCHEMA, "training_data": f"s3://bench/{v}.parquet",
            "model_version": "1.0.0"} for v in ("v1", "v2", "v3")}}},
}
HEADER = "Inference-Header-Content-Length"
SIZES = {"row": 1, "batch": 100}                 # rows of the [rows, 30] FP32 input
FORMS = ("json", "binary", "binary_out")
GRPC_TARGETS = ("direct", "naive", "router")
GRPC_RATE = 200                                  # calls/s for the latency figures
GRPC_INFLIGHT = 64                               # calls in flight for max throughput
METHOD = "/inference.GRPCInferenceService/ModelInfer"

WRK_LUA = """
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "{ctype}"
{extra}
local counter = 0
request = function()
  counter = counter + 1
  wrk.headers["x-user-id"] = "user-" .. (counter % 1000)
  return wrk.format()
end
"""


# -- bodies ---------------------------------------------------------------------------------------

def features(rows: int, bad: bool = False) -> np.ndarray:
    """[rows, 30] FP32 features in [0, 100); ``bad``: the last one is -1 (below min 0)."""
    x = np.random.default_rng(rows).uniform(0, 100, (rows, len(FIELDS))).astype("<f4")
    if bad:
        x[-1, -1] = -1.0
    return x


def http_body(form: str, x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The V2 request for ``x`` in one of FORMS, and its headers. JSON ``data`` is flat, as
    tritonclient's JSON form sends it; the binary forms are what its binary_data=True sends."""
    tensor: dict[str, Any] = {"name": "features", "datatype": "FP32", "shape": list(x.shape)}
    if form == "json":
        doc = {"id": "abc", "inputs": [{**tensor, "data": x.ravel().tolist()}]}
        return orjson.dumps(doc), {"Content-Type": "application/json"}
    raw = x.astype("<f4").tobytes()
    head: dict[str, Any] = {"id": "abc", "inputs": [
        {**tensor, "parameters": {"binary_data_size": len(raw)}}]}
    if form == "binary_out":
        head["outputs"] = [{"name": "score", "parameters": {"binary_data": True}}]
    json_head = orjson.dumps(head)
    return json_head + raw, {"Content-Type": "application/octet-stream",
                             HEADER: str(len(json_head))}


def answer_ok(form: str, x: np.ndarray, headers: Any, body: bytes) -> bool:
    """One score per row, the row's mean (the upstream's compute), in the asked form."""
    size = headers.get(HEADER)
    if (form == "binary_out") != (size is not None):
        return False
    doc = orjson.loads(body[:int(size)] if size else body)
    out = doc["outputs"][0]
    if size:
        scores = np.frombuffer(body, dtype="<f4", offset=int(size))
    else:
        scores = np.asarray(out["data"], dtype=np.float32)
    return doc.get("id") == "abc" and out["shape"] == [len(x), 1] \
        and np.allclose(scores, x.mean(axis=1), rtol=1e-5)


def grpc_body(x: np.ndarray) -> bytes:
    msg = pb.ModelInferRequest(model_name="fraud", id="abc")
    msg.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
    msg.raw_input_contents.append(x.astype("<f4").tobytes())
    return msg.SerializeToString()


# -- processes ------------------------------------------------------------------------------------

class LoggedProc(Proc):
    """A Proc whose stderr goes to a file (never an unread pipe a busy process could fill),
    waiting for each of ``ports``."""

    def __init__(self, argv: list[str], ports: list[int], stderr: Path,
                 cwd: Path = ROOT) -> None:
        self.stderr = stderr
        with stderr.open("ab") as err:
            self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        self.port = ports[0]
        try:
            for port in ports:
                wait_port(port)
        except RuntimeError:
            self.stop()
            raise

    def complaints(self) -> list[str]:
        """What the process wrote to stderr (a warning, a traceback), once it stopped."""
        return [line for line in self.stderr.read_text(errors="replace").splitlines()
                if line.strip()]


def write_config(folder: Path, port: int, http_ups: list[int],
                 grpc_ups: list[int] | None = None, grpc_port: int | None = None) -> Path:
    """router_full's router.yaml (the harness's ``router_config``) with the 30-field schema,
    and with ``grpc_port``: a ``grpc:`` listener and each version's ``grpc`` address."""
    path = router_config(folder, port, [http_ups[0], http_ups[1], http_ups[0]])
    (folder / "registry.yaml").write_text(yaml.safe_dump(REGISTRY, sort_keys=False))
    doc = yaml.safe_load(path.read_text())
    route = doc["routes"][0]
    route["input_schema"] = SCHEMA
    if grpc_port is not None:
        assert grpc_ups is not None
        doc = {"listen": doc.pop("listen"), "grpc": {"host": "127.0.0.1", "port": grpc_port},
               **doc}
        for name, up in zip(("v1", "v2", "v3"), (grpc_ups[0], grpc_ups[1], grpc_ups[0])):
            route["versions"][name]["grpc"] = f"127.0.0.1:{up}"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# -- HTTP load ------------------------------------------------------------------------------------

async def http_closed_loop(port: int, body: bytes, headers: dict[str, str], duration: float,
                           connections: int, check: Callable[[Any, bytes], bool] | None = None,
                           ) -> tuple[float, int, int]:
    """(requests/s, requests, errors): ``connections`` workers POSTing ``body`` for
    ``duration`` s; with ``check``, an answer it rejects is an error too."""
    done = errors = 0
    deadline = time.monotonic() + duration
    url = f"http://127.0.0.1:{port}{PATH}"
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections),
                                     timeout=timeout) as s:
        async def worker(i: int) -> None:
            nonlocal done, errors
            n = 0
            while time.monotonic() < deadline:
                n += 1
                try:
                    async with s.post(url, data=body,
                                      headers={**headers, "x-user-id": f"user-{i}-{n % 50}"}
                                      ) as r:
                        data = await r.read()
                        errors += r.status != 200 or (check is not None and
                                                      not check(r.headers, data))
                except (TimeoutError, aiohttp.ClientError):
                    errors += 1
                done += 1
        started = time.monotonic()
        await asyncio.gather(*[worker(i) for i in range(connections)])
        return done / (time.monotonic() - started), done, errors


async def http_status(port: int, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as s, \
            s.post(f"http://127.0.0.1:{port}{PATH}", data=body, headers=headers) as r:
        await r.read()
        return r.status


def grpc_code(port: int, body: bytes) -> grpc.StatusCode:
    """The status of one ModelInfer call (a blocking channel: the runner has no loop here)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            channel.unary_unary(METHOD)(body, timeout=10)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


# -- the runner -----------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="model-router-protocols-"))
        # The router's code: the working tree, or `git archive COMMIT router` (--commit)
        self.router_cwd, self.code = router_tree(args.commit, self.tmp)
        self.use_wrk = shutil.which("wrk") is not None and not args.smoke
        self.ups: list[LoggedProc] = []
        self.http_ups: list[int] = []
        self.grpc_ups: list[int] = []
        self.complaints: list[str] = []     # stderr lines of every stopped process
        self.x = {size: features(rows) for size, rows in SIZES.items()}
        self.bodies: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.scripts: dict[str, Path] = {}
        for size, x in self.x.items():
            for form in FORMS:
                name = f"{size}_{form}"
                body, headers = self.bodies[name] = http_body(form, x)
                (self.tmp / f"{name}.body").write_bytes(body)
                extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()
                                  if k != "Content-Type")
                self.scripts[name] = self.tmp / f"{name}.lua"
                self.scripts[name].write_text(WRK_LUA.format(
                    body=self.tmp / f"{name}.body", ctype=headers["Content-Type"], extra=extra))

    def start(self, label: str, argv: list[str], ports: list[int], cpu: int,
              cwd: Path = ROOT) -> LoggedProc:
        return LoggedProc(pinned(cpu, argv), ports, self.tmp / f"{label}-{ports[0]}.stderr",
                          cwd)

    def stop(self, proc: LoggedProc, label: str) -> None:
        proc.stop()
        lines = proc.complaints()
        if lines:
            self.complaints += [f"{label}: {line}" for line in lines]
            print(f"  ! {label} (pid {proc.pid}, exit {proc.proc.returncode}) wrote "
                  f"{len(lines)} stderr lines; first: {lines[0][:200]}", flush=True)

    def start_upstreams(self) -> None:
        """Two V2 upstreams (the split's v1 and v2), each on an HTTP and a gRPC port."""
        for i in range(2):
            http, grpc_port = free_port(), free_port()
            self.ups.append(self.start(f"upstream{i}", [
                sys.executable, "-m", "loadtest.v2_upstream", "--http", str(http),
                "--grpc", str(grpc_port)], [http, grpc_port], 1))
            self.http_ups.append(http)
            self.grpc_ups.append(grpc_port)

    def router(self, grpc_on: bool) -> tuple[LoggedProc, int | None]:
        """model-router on CPU 0; with ``grpc_on`` its gRPC port too."""
        port = free_port()
        grpc_port = free_port() if grpc_on else None
        config = write_config(self.tmp / f"router-{port}", port, self.http_ups,
                              self.grpc_ups, grpc_port)
        argv = [sys.executable, "-m", "router.cli", "--log-level", "WARNING", "serve",
                "-c", str(config)]
        ports = [port] + ([grpc_port] if grpc_port else [])
        return self.start("router", argv, ports, 0, self.router_cwd), grpc_port

    def naive(self) -> LoggedProc:
        port = free_port()
        return self.start("naive", [sys.executable, "-m", "loadtest.naive_grpc_proxy",
                                    str(port), f"127.0.0.1:{self.grpc_ups[0]}"], [port], 0)

    def close(self) -> None:
        for i, u in enumerate(self.ups):
            self.stop(u, f"upstream{i}")
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- correctness ------------------------------------------------------------------------------

    def check_refusals(self, port: int, grpc_port: int | None) -> int:
        """One bad value per form is refused (validation reads binary tensors too), the good
        body is answered right; the number of failures."""
        failures = 0
        for size, rows in SIZES.items():
            bad = features(rows, bad=True)
            for form in FORMS:
                status = asyncio.run(http_status(port, *http_body(form, bad)))
                if status != 422:
                    failures += 1
                    print(f"  ! {size} {form} with a feature below min: {status}, not 422")
        if grpc_port is not None:
            code = grpc_code(grpc_port, grpc_body(features(1, bad=True)))
            if code is not grpc.StatusCode.INVALID_ARGUMENT:
                failures += 1
                print(f"  ! gRPC with a feature below min: {code.name}, not INVALID_ARGUMENT")
        return failures

    def smoke_http(self, port: int) -> int:
        errors = 0
        for name, (body, headers) in self.bodies.items():
            size, form = name.split("_", 1)
            x = self.x[size]
            _, total, bad = asyncio.run(http_closed_loop(
                port, body, headers, 0.5, 8, functools.partial(answer_ok, form, x)))
            print(f"  http {name:<18} {total:>6} requests, errors {bad}", flush=True)
            errors += bad
        return errors

    # -- HTTP: binary vs JSON ---------------------------------------------------------------------

    def http(self) -> dict[str, dict[str, Any]]:
        names = list(self.bodies)
        out: dict[str, dict[str, Any]] = {n: {"rps": [], "cpu_us": [], "requests": [],
                                              "errors": 0, "rss_mb": []} for n in names}
        for r in range(self.args.rounds):
            for name in names:
                proc, _ = self.router(grpc_on=False)
                try:
                    self.http_load(name, proc.port, 1.0)  # warm-up
                    before = cpu_seconds(proc.pid)
                    rps, total, errors = self.http_load(name, proc.port, self.args.duration)
                    spent = cpu_seconds(proc.pid) - before
                    rss = rss_mb(proc.pid)
                finally:
                    self.stop(proc, "router")
                o = out[name]
                o["rps"].append(rps)
                o["requests"].append(total)
                o["cpu_us"].append(spent / max(total, 1) * 1e6)
                o["rss_mb"].append(rss)
                o["errors"] += errors
                print(f"  round {r + 1} {name:<18} {rps:>8.0f} req/s  "
                      f"{o['cpu_us'][-1]:>7.1f} us/req  errors {errors}  RSS {rss:.1f} MB",
                      flush=True)
        return out

    def http_load(self, name: str, port: int, duration: float) -> tuple[float, int, int]:
        if self.use_wrk:
            return wrk(port, duration, 50, self.scripts[name])
        body, headers = self.bodies[name]
        return asyncio.run(http_closed_loop(port, body, headers, duration, 16))

    # -- gRPC -------------------------------------------------------------------------------------

    def grpc_client(self, port: int, mode: str, duration: float, warmup: float,
                    cpu_pid: int | None = None) -> dict[str, Any]:
        argv = [sys.executable, "-m", "loadtest.grpc_load", f"127.0.0.1:{port}", "--mode", mode,
                "--duration", str(duration), "--warmup", str(warmup),
                "--concurrency", str(GRPC_INFLIGHT), "--rate", str(GRPC_RATE)]
        if cpu_pid:
            argv += ["--cpu-pid", str(cpu_pid)]
        done = subprocess.run(pinned(1, argv), cwd=ROOT, capture_output=True, text=True,
                              timeout=duration + warmup + 60, check=False)
        if done.returncode != 0:
            print(f"  ! grpc_load exited {done.returncode}: {done.stderr.strip()[-600:]}")
            return {"calls": 0, "errors": 1, "codes": {"CLIENT_FAILED": 1}, "rps": 0.0,
                    "p50_ms": float("nan"), "p99_ms": float("nan"),
                    "p999_ms": float("nan"), "cpu_s": None}
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def grpc_target(self, name: str) -> tuple[LoggedProc | None, int]:
        """(the proxy process or None, the port the client calls)."""
        if name == "direct":
            return None, self.grpc_ups[0]
        if name == "naive":
            proc = self.naive()
            return proc, proc.port
        proc, grpc_port = self.router(grpc_on=True)
        assert grpc_port is not None
        return proc, grpc_port

    def grpc(self) -> dict[str, dict[str, Any]]:
        keys = ("p50_ms", "p99_ms", "p999_ms", "rps", "cpu_us", "busy", "rss_before_mb",
                "rss_after_mb")
        out: dict[str, dict[str, Any]] = {n: {**{k: [] for k in keys}, "errors": 0,
                                              "codes": {}} for n in GRPC_TARGETS}
        d = self.args.duration
        for r in range(self.args.rounds):
            for name in GRPC_TARGETS:
                proc, port = self.grpc_target(name)
                o = out[name]
                try:
                    lat = self.grpc_client(port, "rate", d, 1.0)
                    rss_before = rss_mb(proc.pid) if proc else 0.0
                    top = self.grpc_client(port, "max", d, 1.0, proc.pid if proc else None)
                    rss_after = rss_mb(proc.pid) if proc else 0.0
                finally:
                    if proc:
                        self.stop(proc, name)
                for res in (lat, top):
                    o["errors"] += res["errors"]
                    for code, n in res["codes"].items():
                        o["codes"][code] = o["codes"].get(code, 0) + n
                for k in ("p50_ms", "p99_ms", "p999_ms"):
                    o[k].append(lat[k])
                o["rps"].append(top["rps"])
                line = (f"  round {r + 1} {name:<7} {GRPC_RATE}/s: p50 {lat['p50_ms']:.3f} ms "
                        f"p99 {lat['p99_ms']:.3f} ms; max {top['rps']:>6.0f} calls/s")
                if proc and top["cpu_s"] is not None and top["calls"]:
                    o["cpu_us"].append(top["cpu_s"] / top["calls"] * 1e6)
                    o["busy"].append(top["cpu_s"] / top["seconds"])
                    o["rss_before_mb"].append(rss_before)
                    o["rss_after_mb"].append(rss_after)
                    line += (f", {o['cpu_us'][-1]:.0f} us/call, core {100 * o['busy'][-1]:.0f}% "
                             f"busy, RSS {rss_before:.1f} -> {rss_after:.1f} MB")
                line += f"  errors {lat['errors'] + top['errors']}"
                print(line, flush=True)
        return out

    def grpc_rss(self, seconds: float) -> dict[str, Any]:
        """The router's RSS under max gRPC load for ``seconds``, sampled every 10 s (each
        sample a new client process: a new connection too)."""
        proc, port = self.grpc_target("router")
        assert proc is not None
        samples: list[tuple[int, float]] = []
        calls = errors = 0
        try:
            self.grpc_client(port, "max", 2.0, 0.0)   # warm-up
            before = rss_mb(proc.pid)
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                res = self.grpc_client(port, "max", 10.0, 0.0)
                calls += res["calls"]
                errors += res["errors"]
                samples.append((calls, rss_mb(proc.pid)))
            after = rss_mb(proc.pid)
        finally:
            self.stop(proc, "router")
        print("  RSS samples (calls, MB): " + ", ".join(f"{n // 1000}k {m:.1f}"
                                                        for n, m in samples))
        print(f"  router RSS {before:.1f} MB -> {after:.1f} MB over {calls} gRPC calls, "
              f"errors {errors}", flush=True)
        return {"before_mb": before, "after_mb": after, "calls": calls, "errors": errors,
                "samples": samples}

    def smoke_grpc(self, router_grpc: int) -> int:
        errors = 0
        naive = self.naive()
        try:
            for name, port in (("direct", self.grpc_ups[0]), ("naive", naive.port),
                               ("router", router_grpc)):
                res = self.grpc_client(port, "max", 1.0, 0.0)
                print(f"  grpc {name:<7} {res['calls']:>6} calls, errors {res['errors']} "
                      f"{res['codes'] or ''}", flush=True)
                errors += res["errors"]
        finally:
            self.stop(naive, "naive")
        return errors


# -- report ---------------------------------------------------------------------------------------

def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def per_round(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b) if y]


def http_table(res: dict[str, dict[str, Any]], bodies: dict[str, tuple[bytes, Any]]) -> None:
    print(f"{'body':<18} {'bytes':>7} {'req/s':>8} {'CPU us/req':>11}  vs json of the same "
          f"size (req/s; CPU per request)")
    for name, r in res.items():
        size = name.split("_", 1)[0]
        line = (f"{name:<18} {len(bodies[name][0]):>7} {med(r['rps']):>8.0f} "
                f"{med(r['cpu_us']):>11.1f}")
        base = res[f"{size}_json"]
        if base is not r:
            line += (f"  {ratio(med(r['rps']), med(base['rps']))} req/s, "
                     f"{ratio(med(r['cpu_us']), med(base['cpu_us']))} CPU; per round "
                     f"{spread(per_round(r['rps'], base['rps']))}, CPU "
                     f"{spread(per_round(r['cpu_us'], base['cpu_us']))}")
        print(line)


def grpc_table(res: dict[str, dict[str, Any]]) -> None:
    d = res["direct"]
    print(f"{'target':<7} {'p50 ms':>7} {'p99 ms':>7} {'p999 ms':>8} {'+p50':>7} {'+p99':>7}"
          f" {'calls/s':>8} {'CPU us/call':>11} {'core busy':>9}")
    for name, r in res.items():
        added = (f"{med(r['p50_ms']) - med(d['p50_ms']):>+7.3f} "
                 f"{med(r['p99_ms']) - med(d['p99_ms']):>+7.3f}") if r is not d else f"{'':>15}"
        cpu = f"{med(r['cpu_us']):>11.1f} {100 * med(r['busy']):>8.0f}%" if r["cpu_us"] \
            else ""
        print(f"{name:<7} {med(r['p50_ms']):>7.3f} {med(r['p99_ms']):>7.3f} "
              f"{med(r['p999_ms']):>8.3f} {added} {med(r['rps']):>8.0f} {cpu}")
    rt, nv = res["router"], res["naive"]
    print(f"router vs naive: {ratio(med(rt['rps']), med(nv['rps']))} calls/s (per round "
          f"{spread(per_round(rt['rps'], nv['rps']))}), CPU per call "
          f"{ratio(med(rt['cpu_us']), med(nv['cpu_us']))} (per round "
          f"{spread(per_round(rt['cpu_us'], nv['cpu_us']))})")
    print(f"router vs direct: {ratio(med(rt['rps']), med(d['rps']))} calls/s; "
          f"naive vs direct: {ratio(med(nv['rps']), med(d['rps']))}")


# -- main -----------------------------------------------------------------------------------------

def smoke(bench: Bench) -> int:
    proc, grpc_port = bench.router(grpc_on=True)
    try:
        failures = bench.check_refusals(proc.port, grpc_port)
        errors = bench.smoke_http(proc.port)
        assert grpc_port is not None
        errors += bench.smoke_grpc(grpc_port)
    finally:
        bench.stop(proc, "router")
    print(f"smoke: {errors} errors, {failures} refusal failures, "
          f"{len(bench.complaints)} stderr lines")
    return 1 if errors or failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.protocols")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long correctness run: zero errors")
    parser.add_argument("--only", choices=("http", "grpc", "rss"), help="one part only")
    parser.add_argument("--commit", help="run the router from `git archive COMMIT router` "
                                         "(default: the working tree)")
    parser.add_argument("--rss-seconds", type=float, default=0,
                        help="also the router's RSS under max gRPC load for this long "
                             "(60 with --only rss)")
    args = parser.parse_args()
    if args.only == "rss" and not args.rss_seconds:
        args.rss_seconds = 60.0
    if not 1 <= args.rounds <= 20 or not 0.5 <= args.duration <= 120:
        parser.error("--rounds 1-20, --duration 0.5-120")
    if TWO_CPUS:  # keep the runner off the proxy's CPU
        os.sched_setaffinity(0, {1})
    bench = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop every process
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "pinned": TWO_CPUS,
                                          "python": sys.version.split()[0],
                                          "grpcio": grpc.__version__,
                                          "load": "wrk" if bench.use_wrk else "asyncio"},
                              "router_code": bench.code,
                              "args": vars(args)}
    print(f"router: {bench.code}")
    try:
        bench.start_upstreams()
        if args.smoke:
            return smoke(bench)
        proc, grpc_port = bench.router(grpc_on=True)
        try:
            failures = bench.check_refusals(proc.port, grpc_port)
        finally:
            bench.stop(proc, "router")
        report["refusal_failures"] = failures
        if args.only in (None, "http"):
            load = "wrk 1 thread, 50 connections" if bench.use_wrk \
                else "aiohttp, 16 connections"
            print(f"HTTP V2, router_full route with a 30-field schema ({load}):")
            report["http"] = bench.http()
        if args.only in (None, "grpc"):
            print(f"gRPC ModelInfer, 1x30 FP32 raw: {GRPC_RATE} calls/s for latency, "
                  f"{GRPC_INFLIGHT} in flight for max throughput:")
            report["grpc"] = bench.grpc()
        if args.rss_seconds:
            print(f"router RSS under max gRPC load for {args.rss_seconds:.0f} s:")
            report["grpc_rss"] = bench.grpc_rss(min(args.rss_seconds, 3600))
    finally:
        bench.close()
    report["stderr"] = bench.complaints
    print()
    if "http" in report:
        print(f"HTTP binary vs JSON through model-router, medians of {args.rounds} rounds:")
        http_table(report["http"], bench.bodies)
        print()
    if "grpc" in report:
        print(f"gRPC, medians of {args.rounds} rounds (latency at {GRPC_RATE} calls/s; "
              f"max with {GRPC_INFLIGHT} in flight, proxy on CPU 0, client + upstream on "
              f"CPU 1):")
        grpc_table(report["grpc"])
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    path = out / f"protocols-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"results: {path}")
    errors = report["refusal_failures"] + report.get("grpc_rss", {}).get("errors", 0) + sum(
        r["errors"] for part in ("http", "grpc") for r in report.get(part, {}).values())
    if errors or bench.complaints:
        print(f"errors: {errors}; stderr lines: {len(bench.complaints)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
