"""Benchmark runner: `python -m loadtest [--rounds 3] [--duration 5] [--smoke] [--rss N]`.

Starts everything on 127.0.0.1: three benchmark upstreams (two for the 95/5 split, one as a
shadow target), each proxy under test in turn, and a load generator. The proxy is pinned to
CPU 0 and everything else to CPU 1 (taskset) where the machine has two CPUs. Scenarios run
interleaved over several rounds; the table prints medians and ratios against baselines
measured in the same run, because absolute numbers drift on shared machines. Results go to
loadtest/results/<stamp>.json.

Load: wrk with a Lua POST script when installed (max throughput), and a built-in asyncio
generator for fixed-rate latency (1,000 req/s) and for the smoke run.

router_fleet is router_full plus a ``fleet:`` block whose store is a redis-server this runner
starts on a free 127.0.0.1 port (on CPU 1, beside the upstreams); it is skipped, with a
message, where redis-server is missing. After each fleet run the runner counts the
attribution keys the router wrote and checks they cover every answered request.

router_ship is router_full plus ``prediction_log.ship`` to a ``file://`` store in the run's
temp dir (``every_s`` 5); its shipper process is the router's child, so it inherits the
router's CPU pin (one core for both, as under a one-CPU container limit) and its CPU counts in
the router's CPU per request. After each run (SIGTERM ships the last segment) the runner
counts the rows of the store's Parquet objects (pyarrow) and checks they cover every answered
request. router_ship_cpu1 is the same with the shipper process moved to CPU 1 (beside the
upstreams and wrk) once the router listens: what shipping costs the router's own core.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The V2 body's own "id" would be every request's id without an x-request-id (the contract's
# rule), so the load sends one per request, as clients and gateways do; the body keeps its id
# for the router's answer-id check (loadtest/upstream.py echoes it).
BODY = (b'{"inputs":[{"name":"amount","datatype":"FP64","shape":[1],"data":[12.5]},'
        b'{"name":"avg_purchase_last_7_days","datatype":"FP64","shape":[1],"data":[30.1]},'
        b'{"name":"country","datatype":"BYTES","shape":[1],"data":["US"]},'
        b'{"name":"is_new_user","datatype":"BOOL","shape":[1],"data":[false]}],"id":"abc"}')
PATH = "/v2/models/fraud/infer"
_IDS = itertools.count()   # request ids of the built-in load: unique within a run
TWO_CPUS = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if TWO_CPUS else argv


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads) and its live child processes, from /proc."""
    pids = [pid, *children(pid)]
    total = 0
    for p in pids:
        try:
            fields = _stat(p)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Proc:
    """A started process, stopped by its PID."""

    def __init__(self, argv: list[str], port: int, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(argv, cwd=cwd or ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.port = port
        try:
            wait_port(port)
        except RuntimeError:  # never started listening: stop it rather than leak it
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- configs -----------------------------------------------------------------------------------

REGISTRY = {
    "schemas": {"fraud-features@1": {"fields": {
        "amount": {"type": "float", "min": 0},
        "avg_purchase_last_7_days": {"type": "float", "min": 0},
        "country": {"type": "string", "enum": ["US", "DE", "FR"]},
        "is_new_user": {"type": "bool", "required": False}}}},
    "models": {"fraud": {"versions": {
        v: {"schema": "fraud-features@1", "training_data": f"s3://bench/{v}.parquet",
            "model_version": "1.0.0"} for v in ("v1", "v2", "v3")}}},
}


def router_config(folder: Path, port: int, ups: list[int], *, log: bool = True,
                  shadow: float = 0, shadow_port: int | None = None,
                  fleet: tuple[str, str] | None = None, ship: str | None = None) -> Path:
    """router.yaml for a scenario; ``fleet`` is (fleet name, redis:// store URL); ``ship`` a
    log store URL (``every_s`` 5)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "registry.yaml").write_text(yaml.safe_dump(REGISTRY, sort_keys=False))
    route: dict[str, Any] = {
        "name": "fraud", "match": {"path_prefix": "/v2/models/fraud"}, "protocol": "v2",
        "model": "fraud", "input_schema": "fraud-features@1", "validation": "enforce",
        "versions": {"v1": {"url": f"http://127.0.0.1:{ups[0]}/v2/models/fraud"},
                     "v2": {"url": f"http://127.0.0.1:{ups[1]}/v2/models/fraud"},
                     "v3": {"url": f"http://127.0.0.1:{shadow_port or ups[2]}/v2/models/fraud"}},
        "split": {"v1": 95, "v2": 5}, "sticky": {"header": "x-user-id"},
        "drift": {"sample": 0.1},
    }
    if shadow:
        route["shadow"] = [{"version": "v3", "percent": shadow, "max_inflight": 256}]
    doc = {"listen": {"host": "127.0.0.1", "port": port},
           "admin": {"host": "127.0.0.1", "port": free_port()},
           "limits": {"max_concurrency": 4096},
           "registry": "registry.yaml", "state_dir": "state",
           "prediction_log": {"dir": "logs", "payloads": "full", "enabled": log},
           "routes": [route]}
    if fleet:  # no rollout in this config, so no Prometheus is needed
        doc["fleet"] = {"name": fleet[0], "store": fleet[1]}
    if ship:
        doc["prediction_log"]["ship"] = {"to": ship, "every_s": 5}
    path = folder / "router.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


NGINX = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream v1 {{ server 127.0.0.1:{a}; keepalive 64; }}
  upstream v2 {{ server 127.0.0.1:{b}; keepalive 64; }}
  upstream v3 {{ server 127.0.0.1:{c}; keepalive 64; }}
  split_clients "$http_x_user_id" $pool {{ 95% v1; * v2; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      {mirror}
      proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_pass http://$pool;
    }}
    location = /mirror {{ internal; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_pass http://v3$request_uri; }}
  }}
}}
"""


# -- load --------------------------------------------------------------------------------------

WRK_LUA = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
local counter = 0
math.randomseed(os.time() + math.floor(os.clock() * 1000000))
local run = "wrk-" .. math.random(1, 2147483647) .. "-"   -- ids unique across wrk runs
request = function()
  counter = counter + 1
  wrk.headers["x-user-id"] = "user-" .. (counter % 1000)
  wrk.headers["x-request-id"] = run .. counter
  return wrk.format()
end
"""


def wrk(port: int, duration: float, connections: int, script: Path) -> tuple[float, int, int]:
    """(requests/s, requests, non-2xx + socket errors)."""
    out = subprocess.run(pinned(1, ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
                                    "-s", str(script), f"http://127.0.0.1:{port}{PATH}"]),
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      out):
        errors += sum(int(g) for g in m.groups())
    return rps, total, errors


async def _closed_loop(port: int, duration: float, connections: int) -> tuple[float, int, int]:
    done = errors = 0
    deadline = time.monotonic() + duration
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as s:
        async def worker(i: int) -> None:
            nonlocal done, errors
            n = 0
            while time.monotonic() < deadline:
                n += 1
                try:
                    async with s.post(f"http://127.0.0.1:{port}{PATH}", data=BODY,
                                      headers={"x-user-id": f"user-{i}-{n % 50}",
                                               "x-request-id": f"load-{next(_IDS)}",
                                               "content-type": "application/json"}) as r:
                        await r.read()
                        errors += r.status != 200
                except aiohttp.ClientError:
                    errors += 1
                done += 1
        started = time.monotonic()
        await asyncio.gather(*[worker(i) for i in range(connections)])
        return done / (time.monotonic() - started), done, errors


async def _fixed_rate(port: int, rate: float, count: int) -> list[float]:
    """Latencies (ms) of ``count`` requests sent on a fixed schedule of ``rate``/s."""
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as s:
        async def one(i: int, at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            started = time.perf_counter()
            async with s.post(f"http://127.0.0.1:{port}{PATH}", data=BODY,
                              headers={"x-user-id": f"user-{i % 1000}",
                                       "x-request-id": f"rate-{next(_IDS)}",
                                       "content-type": "application/json"}) as r:
                await r.read()
            latencies.append((time.perf_counter() - started) * 1000)
        begin = time.perf_counter() + 0.1
        await asyncio.gather(*[one(i, begin + i / rate) for i in range(count)])
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- scenarios ---------------------------------------------------------------------------------

@dataclass
class Result:
    name: str
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    errors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def median(self) -> float:
        return statistics.median(self.rps) if self.rps else float("nan")

    def cpu(self) -> float:
        return statistics.median(self.cpu_us) if self.cpu_us else float("nan")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="model-router-bench-"))
        self.ups: list[Proc] = []
        self.script = self.tmp / "post.lua"
        self.script.write_text(WRK_LUA.format(body=BODY.decode()))
        self.use_wrk = shutil.which("wrk") is not None and not args.smoke
        self.redis: Proc | None = None
        self.fleets: dict[int, str] = {}   # router port -> its fleet name
        self.stores: dict[int, Path] = {}  # router port -> its file:// log store

    def start_redis(self) -> bool:
        """A throwaway redis-server for router_fleet (no persistence); False when missing."""
        exe = shutil.which("redis-server")
        if exe is None:
            return False
        port = free_port()
        self.redis = Proc(pinned(1, [exe, "--port", str(port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no"]), port)
        return True

    def redis_client(self) -> Any:
        import redis  # the runner's own client; the router has its own (redis.asyncio)
        assert self.redis is not None
        return redis.Redis(host="127.0.0.1", port=self.redis.port, socket_timeout=10)

    def attribution_keys(self, fleet: str) -> int:
        """Feedback attributions of ``fleet`` in the store (SCAN, not KEYS)."""
        client = self.redis_client()
        try:
            return sum(1 for _ in client.scan_iter(match=f"model-router:{fleet}:attr:*",
                                                   count=10_000))
        finally:
            client.close()

    def forget_fleet(self) -> int:
        """Keys in the store (DBSIZE), then FLUSHDB so every fleet run starts empty."""
        client = self.redis_client()
        try:
            size = int(client.dbsize())
            client.flushdb()
            return size
        finally:
            client.close()

    def start_upstreams(self) -> None:
        for delay in (0, 0, 0, 200):
            port = free_port()
            argv = [sys.executable, "-m", "loadtest.upstream", str(port)]
            if delay:
                argv += ["--delay-ms", str(delay)]
            self.ups.append(Proc(pinned(1, argv), port))

    @property
    def up_ports(self) -> list[int]:
        return [u.port for u in self.ups]

    def proxy(self, name: str) -> Proc | None:
        port = free_port()
        a, b, c, slow = self.up_ports
        py = sys.executable
        if name == "direct":
            return None
        if name in ("naive", "naive_mirror"):
            argv = [py, "-m", "loadtest.naive_proxy", str(port), f"http://127.0.0.1:{a}",
                    f"http://127.0.0.1:{b}"]
            if name == "naive_mirror":
                argv += ["--mirror", f"http://127.0.0.1:{c}"]
            return Proc(pinned(0, argv), port)
        if name.startswith("nginx"):
            folder = self.tmp / f"{name}-{port}"
            for sub in ("body", "proxy", "fcgi", "uwsgi", "scgi"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            mirror = "mirror /mirror; mirror_request_body on;" if name == "nginx_mirror" else ""
            conf = folder / "nginx.conf"
            conf.write_text(NGINX.format(dir=folder, a=a, b=b, c=c, port=port, mirror=mirror))
            return Proc(pinned(0, ["nginx", "-c", str(conf), "-g", "daemon off;"]), port)
        if name in ("router_w1", "router_w2"):  # serve --workers N on every CPU
            config = router_config(self.tmp / f"{name}-{port}", port, self.up_ports)
            argv = [py, "-m", "router.cli", "--log-level", "WARNING", "serve", "-c",
                    str(config), "--workers", name[-1]]
            if TWO_CPUS:  # undo the affinity inherited from this process (CPU 1)
                argv = ["taskset", "-c", f"0-{(os.cpu_count() or 1) - 1}", *argv]
            return Proc(argv, port)
        shadow = {"router_shadow10": 10, "router_shadow100": 100, "router_slow_shadow": 100}
        fleet = None
        if name == "router_fleet":
            assert self.redis is not None
            self.fleets[port] = f"bench-{port}"
            fleet = (self.fleets[port], f"redis://127.0.0.1:{self.redis.port}/0")
        ship = None
        if name in ("router_ship", "router_ship_cpu1"):
            self.stores[port] = self.tmp / f"{name}-{port}" / "store"
            ship = f"file://{self.stores[port]}"
        config = router_config(self.tmp / f"{name}-{port}", port, self.up_ports,
                               log=name != "router_nolog", shadow=shadow.get(name, 0),
                               shadow_port=slow if name == "router_slow_shadow" else None,
                               fleet=fleet, ship=ship)
        argv = [py, "-m", "router.cli", "--log-level", "WARNING", "serve", "-c", str(config)]
        proc = Proc(pinned(0, argv), port)
        if name == "router_ship_cpu1" and TWO_CPUS:
            # the shipper (the router's child, spawned before it listens) beside the upstreams
            for child in children(proc.pid):
                os.sched_setaffinity(child, {1})
        return proc

    def load(self, port: int, duration: float | None = None) -> tuple[float, int, int]:
        duration = duration or self.args.duration
        if self.use_wrk:
            return wrk(port, duration, 50, self.script)
        return asyncio.run(_closed_loop(port, duration, 16))

    def throughput(self, names: list[str]) -> dict[str, Result]:
        results = {n: Result(n) for n in names}
        for _ in range(self.args.rounds):
            for name in names:
                proc = self.proxy(name)
                port = proc.port if proc else self.up_ports[0]
                fleet = self.fleets.get(proc.port) if proc else None
                store = self.stores.get(proc.port) if proc else None
                redis_pid = self.redis.pid if fleet and self.redis else None
                try:
                    # warm-up: connections, caches, JIT-free paths
                    _, warm, warm_errors = self.load(port, 1.0)
                    before = cpu_seconds(proc.pid) if proc else 0.0
                    redis_before = cpu_seconds(redis_pid) if redis_pid else 0.0
                    rps, total, errors = self.load(port)
                    spent = cpu_seconds(proc.pid) - before if proc else 0.0
                    redis_spent = cpu_seconds(redis_pid) - redis_before if redis_pid else 0.0
                    live = self.attribution_keys(fleet) if fleet else 0
                finally:
                    if proc:
                        proc.stop()
                r = results[name]
                r.rps.append(rps)
                r.errors += errors
                if proc and total:
                    r.cpu_us.append(spent / total * 1e6)
                line = f"  {name:<20} {rps:>9.0f} req/s  errors {errors}"
                if fleet:
                    errors = self.check_attributions(r, fleet, warm + total,
                                                     warm_errors + errors, live,
                                                     redis_spent / max(total, 1) * 1e6)
                    r.errors += errors
                    line += "  " + r.extra["lines"][-1]
                if store:
                    r.errors += self.check_shipped(r, store, warm + total, warm_errors + errors)
                    line += "  " + r.extra["lines"][-1]
                print(line, flush=True)
        return results

    def check_attributions(self, r: Result, fleet: str, answered: int, failed: int,
                           live: int, redis_us: float) -> int:
        """Count ``fleet``'s attribution keys after its router stopped (its last batch is
        flushed on shutdown); 1 error when fewer than the requests answered with 200."""
        keys = self.attribution_keys(fleet)
        size = self.forget_fleet()
        # wrk counts the requests it completed; the router may also have answered a few that
        # were in flight when wrk stopped, so keys may exceed the count, never fall short.
        need = answered - failed
        ok = keys >= need
        x = r.extra
        for key, value in (("attribution_keys", keys), ("answered", need),
                           ("keys_before_stop", live), ("dbsize", size),
                           ("redis_cpu_us_per_request", redis_us)):
            x.setdefault(key, []).append(value)
        x.setdefault("lines", []).append(
            f"redis: {keys} attribution keys for {need} answered"
            f"{'' if ok else ' - MISSING ' + str(need - keys)}"
            f" ({live} before the router stopped), dbsize {size}, redis CPU "
            f"{redis_us:.1f} us/req")
        return 0 if ok else 1

    def check_shipped(self, r: Result, store: Path, answered: int, failed: int) -> int:
        """Count the rows shipped to ``store`` after its router stopped (SIGTERM ships the
        open segment); 1 error when fewer than the requests answered with 200."""
        import pyarrow.parquet as pq

        objects = sorted(store.glob("date=*/hour=*/*.parquet"))
        rows = sum(pq.read_metadata(p).num_rows for p in objects)
        need = answered - failed  # as for attributions: rows may exceed it, never fall short
        x = r.extra
        for key, value in (("shipped_rows", rows), ("answered", need),
                           ("objects", len(objects))):
            x.setdefault(key, []).append(value)
        x.setdefault("lines", []).append(
            f"store: {rows} rows in {len(objects)} objects for {need} answered"
            f"{'' if rows >= need else ' - MISSING ' + str(need - rows)}")
        return 0 if rows >= need else 1

    def latency(self, names: list[str], rate: float, count: int) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, list[float]]] = {n: {"p50": [], "p99": [], "p999": []}
                                                  for n in names}
        for _ in range(self.args.rounds):
            for name in names:
                proc = self.proxy(name)
                port = proc.port if proc else self.up_ports[0]
                try:
                    asyncio.run(_fixed_rate(port, rate, min(count, 500)))  # warm-up
                    lat = asyncio.run(_fixed_rate(port, rate, count))
                finally:
                    if proc:
                        proc.stop()
                for q, key in ((0.5, "p50"), (0.99, "p99"), (0.999, "p999")):
                    out[name][key].append(pct(lat, q))
                print(f"  {name:<20} p50 {pct(lat, .5):.3f} ms  p99 {pct(lat, .99):.3f} ms",
                      flush=True)
        return {n: {k: statistics.median(v) for k, v in d.items()} for n, d in out.items()}

    def reload_storm(self) -> dict[str, Any]:
        """Max load while router.yaml is rewritten every 100 ms: errors must be 0."""
        proc = self.proxy("router_full")
        assert proc is not None
        config = next(self.tmp.glob(f"router_full-{proc.port}/router.yaml"))
        doc = yaml.safe_load(config.read_text())
        stop = False
        rewrites = 0

        async def rewriter() -> None:
            nonlocal rewrites
            while not stop:
                doc["routes"][0]["split"] = {"v1": 95, "v2": 5} if rewrites % 2 \
                    else {"v1": 90, "v2": 10}
                tmp = config.with_suffix(".tmp")
                tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
                os.replace(tmp, config)
                rewrites += 1
                await asyncio.sleep(0.1)

        async def run() -> tuple[float, int, int]:
            nonlocal stop
            task = asyncio.ensure_future(rewriter())
            try:
                return await asyncio.to_thread(self.load, proc.port)
            finally:
                stop = True
                await task

        try:
            rps, total, errors = asyncio.run(run())
        finally:
            proc.stop()
        print(f"  reload every 100 ms: {rps:.0f} req/s, {total} requests, {rewrites} rewrites, "
              f"{errors} errors", flush=True)
        return {"rps": rps, "requests": total, "rewrites": rewrites, "errors": errors}

    def rss(self, requests: int) -> dict[str, float]:
        proc = self.proxy("router_full")
        assert proc is not None
        try:
            asyncio.run(_closed_loop(proc.port, 2, 16))
            before = rss_mb(proc.pid)
            sent = 0
            samples = []
            while sent < requests:
                if self.use_wrk:
                    _, total, _ = wrk(proc.port, 10, 50, self.script)
                else:
                    _, total, _ = asyncio.run(_closed_loop(proc.port, 10, 16))
                sent += total
                samples.append((sent, rss_mb(proc.pid)))
            after = rss_mb(proc.pid)
            print("  RSS samples: " + ", ".join(f"{n // 1000}k {m:.1f}" for n, m in samples))
        finally:
            proc.stop()
        print(f"  RSS {before:.1f} MB -> {after:.1f} MB after {sent} requests", flush=True)
        return {"before_mb": before, "after_mb": after, "requests": sent, "samples": samples}

    def close(self) -> None:
        for u in self.ups:
            u.stop()
        if self.redis is not None:
            self.redis.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and b == b else "n/a"


def spread(ratios: list[float]) -> str:
    """Per-round ratios: median, range and the values in round order."""
    if not ratios:
        return "n/a"
    return (f"median {statistics.median(ratios):.2f}x, {min(ratios):.2f}-{max(ratios):.2f} "
            f"({', '.join(f'{x:.2f}' for x in ratios)})")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long correctness run: zero errors, record counts")
    parser.add_argument("--rss", type=int, default=0, help="requests for the RSS scenario")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--only", help="comma-separated throughput scenarios to run")
    parser.add_argument("--workers", action="store_true",
                        help="also router_full with serve --workers 1 and 2, unpinned")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.duration = 1, 1.0
    if TWO_CPUS:  # this process generates the fixed-rate load: keep it off the proxy's CPU
        os.sched_setaffinity(0, {1})
    bench = Bench(args)
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "pinned": TWO_CPUS,
                                          "python": sys.version.split()[0],
                                          "load": "wrk" if bench.use_wrk else "asyncio"}}
    try:
        bench.start_upstreams()
        names = ["router_full", "router_fleet", "router_ship", "router_nolog",
                 "router_shadow10", "router_shadow100"]
        if not args.smoke:
            names = ["direct", "naive", "naive_mirror"] + names
            if shutil.which("nginx"):
                names += ["nginx_split", "nginx_mirror"]
            else:
                print("nginx not installed: nginx scenarios skipped (apt-get install nginx)")
        if args.workers:
            names += ["router_w1", "router_w2"]
        if args.only:
            names = [n for n in args.only.split(",") if n]
        if "router_fleet" in names and not bench.start_redis():
            print("redis-server not installed: router_fleet skipped (apt-get install redis-server)")
            names.remove("router_fleet")
        print("throughput (50 connections, 311-byte POST, split 95/5 + sticky):")
        tp = bench.throughput(names)
        report["throughput"] = {n: {"rps": r.rps, "median_rps": r.median(),
                                    "cpu_us_per_request": r.cpu(), "errors": r.errors,
                                    **{k: v for k, v in r.extra.items() if k != "lines"}}
                                for n, r in tp.items()}
        for variant, key in (("router_fleet", "fleet_vs_full"), ("router_ship", "ship_vs_full"),
                             ("router_ship_cpu1", "ship_cpu1_vs_full")):
            if variant in tp and "router_full" in tp:
                on, off = tp[variant], tp["router_full"]
                report[key] = {
                    "rps_ratio_per_round": [a / b for a, b in zip(on.rps, off.rps)],
                    "cpu_ratio_per_round": [a / b for a, b in zip(on.cpu_us, off.cpu_us)]}
        if not args.smoke and not args.skip_latency:
            print("latency at 1,000 req/s:")
            report["latency_1000rps"] = bench.latency(["direct", "router_full"], 1000, 5000)
            print("primary latency with a 200 ms shadow of every request (200 req/s):")
            report["slow_shadow"] = bench.latency(["router_full", "router_slow_shadow"], 200,
                                                  2000)
        print("reload storm:")
        report["reload"] = bench.reload_storm()
        if args.rss:
            print(f"RSS over {args.rss} requests:")
            report["rss"] = bench.rss(args.rss)
    finally:
        bench.close()

    print()
    med = {n: r["median_rps"] for n, r in report["throughput"].items()}
    cpu = {n: r["cpu_us_per_request"] for n, r in report["throughput"].items()}
    print(f"{'scenario':<20} {'req/s':>9} {'CPU us/req':>11}  ratios")
    for n in med:
        extra = []
        if "naive" in med and n.startswith("router"):
            base = "naive_mirror" if n == "router_shadow100" else "naive"
            extra.append(f"{ratio(med[n], med[base])} vs {base}")
        if n == "router_shadow100" and "nginx_mirror" in med:
            extra.append(f"{ratio(med[n], med['nginx_mirror'])} vs nginx_mirror")
        if n == "router_w2" and "router_w1" in med:
            extra.append(f"{ratio(med[n], med['router_w1'])} vs router_w1")
        # Scenarios judged against router_full: their paired ratios, and what they check.
        versus = {"router_fleet": ("fleet_vs_full", "attribution_keys", "redis keys"),
                  "router_ship": ("ship_vs_full", "shipped_rows", "store rows"),
                  "router_ship_cpu1": ("ship_cpu1_vs_full", "shipped_rows", "store rows")}
        if n in versus and "router_full" in med:
            key, counted, label = versus[n]
            f = report[key]
            rr, cr = f["rps_ratio_per_round"], f["cpu_ratio_per_round"]
            extra.append(f"{ratio(med[n], med['router_full'])} vs router_full, CPU "
                         f"{ratio(cpu[n], cpu['router_full'])}; per round "
                         f"{spread(rr)}, CPU {spread(cr)}")
            t = report["throughput"][n]
            extra.append(f"{label} {sum(t[counted])} for {sum(t['answered'])} answered")
        if n == "router_full" and "router_nolog" in med:
            extra.append(f"log cost {100 * (1 - med[n] / med['router_nolog']):.1f}%")
        print(f"{n:<20} {med[n]:>9.0f} {cpu[n]:>11.1f}  {'; '.join(extra)}")
    if "latency_1000rps" in report:
        d, r = report["latency_1000rps"]["direct"], report["latency_1000rps"]["router_full"]
        print(f"added latency at 1,000 req/s: p50 +{r['p50'] - d['p50']:.3f} ms, "
              f"p99 +{r['p99'] - d['p99']:.3f} ms, p999 +{r['p999'] - d['p999']:.3f} ms")
        s0, s1 = report["slow_shadow"]["router_full"], report["slow_shadow"]["router_slow_shadow"]
        print(f"primary p99 with 200 ms shadow: {s1['p99']:.3f} ms vs {s0['p99']:.3f} ms "
              f"without ({ratio(s1['p99'], s0['p99'])})")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"results: {path}")
    errors = sum(r["errors"] for r in report["throughput"].values()) + report["reload"]["errors"]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
